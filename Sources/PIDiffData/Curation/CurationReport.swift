import Foundation
import PIDiffModel
import PIDiffNative
import PIDiffCatalog

/// One finding as `pidiff-data curate report --json` prints it (one object per line).
public struct CurationReportLine: Codable, Sendable, Equatable {
    public var kind: String
    /// Source image paths involved: the duplicate then the kept photo; the impostor; for
    /// `same_person`, the photos of both identities.
    public var paths: [String]
    /// The two identities of a `same_person` candidate; the identity of an impostor.
    public var identities: [String]?
    /// The kept photo (duplicates).
    public var kept: String?
    /// Hamming bits (near duplicates), 0 (exact), descriptor distance (impostor, same_person).
    public var score: Double
    public var reason: String
    /// Duplicate group: lines sharing it belong to one group.
    public var group: Int?
}

/// `pidiff-data curate report`: the latest completed curate run's decisions as a text table,
/// JSON lines or CSV.
public struct CurationReport: Sendable {
    public var runID: Int64
    public var lines: [CurationReportLine]
    /// Identity aliases recorded so far (alias → canonical).
    public var aliases: [String: String]

    public init(catalog: Catalog) throws {
        guard let run = try catalog.latestCurationRun() else {
            throw CurationError.artefact(catalog.path, "no completed curate run; run pidiff-data curate first")
        }
        runID = run
        let findings = try catalog.curationFindings(runID: run)
        let names = Set(findings.filter { $0.kind == .samePerson }.flatMap { [$0.identity, $0.otherIdentity].compactMap { $0 } })
        let pathsOf = try catalog.filePaths(identities: names)
        lines = findings.map { f in
            switch f.kind {
            case .exactDuplicate, .nearDuplicate:
                return CurationReportLine(kind: f.kind.rawValue, paths: [f.path, f.keptPath].compactMap { $0 }, identities: nil,
                                          kept: f.keptPath, score: f.score, reason: f.reason, group: f.groupID)
            case .impostor:
                return CurationReportLine(kind: f.kind.rawValue, paths: [f.path].compactMap { $0 }, identities: f.identity.map { [$0] },
                                          kept: nil, score: f.score, reason: f.reason, group: nil)
            case .samePerson:
                let ids = [f.identity, f.otherIdentity].compactMap { $0 }
                return CurationReportLine(kind: f.kind.rawValue, paths: ids.flatMap { pathsOf[$0] ?? [] }, identities: ids,
                                          kept: nil, score: f.score, reason: f.reason, group: nil)
            }
        }
        aliases = try catalog.identityAliases()
    }

    public func jsonLines() throws -> [String] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return try lines.map { String(decoding: try encoder.encode($0), as: UTF8.self) }
    }

    /// RFC 4180 CSV; list fields are joined with ';'.
    public func csv() -> String {
        func field(_ s: String) -> String {
            s.contains(where: { ",\"\n\r".contains($0) }) ? "\"" + s.replacingOccurrences(of: "\"", with: "\"\"") + "\"" : s
        }
        var out = "kind,score,group,path,kept,identities,paths,reason\r\n"
        for l in lines {
            let row = [l.kind, String(format: "%.4f", l.score), l.group.map(String.init) ?? "", l.paths.first ?? "", l.kept ?? "",
                       (l.identities ?? []).joined(separator: ";"), l.paths.joined(separator: ";"), l.reason]
            out += row.map(field).joined(separator: ",") + "\r\n"
        }
        return out
    }

    /// A table for people: counts, then one row per finding.
    public func table() -> String {
        var counts: [String: Int] = [:]
        for l in lines { counts[l.kind, default: 0] += 1 }
        var out = "curate run \(runID): " + CurationDecision.Kind.allCases.map { "\($0.rawValue) \(counts[$0.rawValue] ?? 0)" }
            .joined(separator: ", ") + "\n"
        if !aliases.isEmpty {
            out += "aliases: " + aliases.sorted { $0.key < $1.key }.map { "\($0.key) → \($0.value)" }.joined(separator: ", ") + "\n"
        }
        guard !lines.isEmpty else { return out + "no findings\n" }
        let header = ["KIND", "SCORE", "PATH", "KEPT / IDENTITIES", "REASON"]
        let rows = lines.map { l in
            [l.kind, String(format: "%.3f", l.score), l.kind == "same_person" ? "\(l.paths.count) photos" : (l.paths.first ?? ""),
             l.kept ?? (l.identities ?? []).joined(separator: " + "), l.reason]
        }
        let widths = (0..<4).map { c in min(60, ([header] + rows).map { $0[c].count }.max()!) }
        func format(_ r: [String]) -> String {
            (0..<4).map { c in
                let s = r[c].count > widths[c] ? "…" + r[c].suffix(widths[c] - 1) : r[c]
                return s.padding(toLength: widths[c], withPad: " ", startingAt: 0)
            }.joined(separator: "  ") + "  " + r[4]
        }
        out += format(header) + "\n"
        for r in rows { out += format(r) + "\n" }
        return out
    }
}

import CSV
import Foundation
import PIDiffModel

/// Reads a URL list line by line (memory does not grow with the list): CSV (`.csv`), TSV
/// (`.tsv`, `.tab`) with a header row, or JSON lines (`.jsonl`, `.ndjson`), with the fields
/// `identity` and `url` and optionally `license` and `source`.
final class FetchListReader {
    enum Event: Equatable {
        case entry(FetchListEntry)
        case problem(location: String, reason: String)
    }
    enum Format { case delimited(UnicodeScalar), jsonLines }

    let path: String
    private let format: Format
    private var csv: CSVReader?
    private var header: [String: Int] = [:]
    private var lines: LineReader?
    private var number = 0

    /// Opens `path`; refuses a list it cannot read at all (unknown extension, no header with the
    /// required columns), naming the list and why.
    init(path: String) throws {
        self.path = path
        switch URL(fileURLWithPath: path).pathExtension.lowercased() {
        case "csv": format = .delimited(",")
        case "tsv", "tab": format = .delimited("\t")
        case "jsonl", "ndjson": format = .jsonLines
        case let other:
            throw ScanProblem(location: path, reason: "unknown list format \(other.isEmpty ? "(no extension)" : ".\(other)"); use .csv, .tsv or .jsonl")
        }
        var isFolder: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isFolder), !isFolder.boolValue else {
            throw ScanProblem(location: path, reason: isFolder.boolValue ? "a folder, not a URL list" : "no such file")
        }
        switch format {
        case .jsonLines:
            guard let reader = LineReader(path: path) else { throw ScanProblem(location: path, reason: "cannot open") }
            lines = reader
        case .delimited(let delimiter):
            guard let stream = InputStream(fileAtPath: path) else { throw ScanProblem(location: path, reason: "cannot open") }
            let reader: CSVReader
            do { reader = try CSVReader(stream: stream, hasHeaderRow: true, delimiter: delimiter) } catch {
                throw ScanProblem(location: path, reason: "no header row (\(error))")
            }
            var names = reader.headerRow ?? []
            if let first = names.first, first.hasPrefix("\u{FEFF}") { names[0] = String(first.dropFirst()) }
            names = names.map { $0.trimmingCharacters(in: .whitespaces).lowercased() }
            if let twice = Dictionary(grouping: names, by: { $0 }).first(where: { $1.count > 1 && !$0.isEmpty })?.key {
                throw ScanProblem(location: path, reason: "column `\(twice)` appears twice in the header")
            }
            for column in ["identity", "url"] where !names.contains(column) {
                throw ScanProblem(location: path, reason: "no column `\(column)` (columns present: \(names.isEmpty ? "none" : names.joined(separator: ", ")))")
            }
            header = Dictionary(names.enumerated().map { ($0.element, $0.offset) }, uniquingKeysWith: { first, _ in first })
            csv = reader
            number = 1
        }
    }

    /// The next entry or problem; nil at the end of the list.
    func next() throws -> Event? {
        while true {
            number += 1
            let location = "\(path):\(number)"
            if let csv {
                guard let row = csv.next() else {
                    if let error = csv.error, !Scanner.isEndOfFile(error) {
                        throw ScanProblem(location: location, reason: "cannot read on (\(error)); lines before it were read")
                    }
                    return nil
                }
                if let error = csv.error, !Scanner.isEndOfFile(error) {
                    throw ScanProblem(location: location, reason: "cannot read on (\(error)); lines before it were read")
                }
                if row == [""] { continue }
                guard row.count == header.count else {
                    return .problem(location: location, reason: "\(row.count) fields, the header has \(header.count)")
                }
                return Self.entry({ header[$0].map { row[$0] } }, location: location)
            }
            guard let line = lines?.next() else { return nil }
            switch line {
            case .tooLong(let n): return .problem(location: location, reason: "line longer than \(n - 1) bytes, skipped")
            case .text(let text):
                let trimmed = text.trimmingCharacters(in: .whitespaces)
                if trimmed.isEmpty { continue }
                guard let object = (try? JSONSerialization.jsonObject(with: Data(trimmed.utf8))) as? [String: Any] else {
                    return .problem(location: location, reason: trimmed.hasPrefix("[") && number == 1
                                    ? "a JSON array, not JSON lines (one object per line)" : "not a JSON object")
                }
                return Self.entry({ key in
                    switch object[key] {
                    case let s as String: return s
                    case let n as NSNumber: return n.stringValue
                    default: return nil
                    }
                }, location: location)
            }
        }
    }

    /// An entry from a line's fields, or the problem that keeps it from being one.
    static func entry(_ field: (String) -> String?, location: String) -> Event {
        func value(_ key: String) -> String? {
            field(key).map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }.flatMap { $0.isEmpty ? nil : $0 }
        }
        guard let url = value("url") else { return .problem(location: location, reason: "no url") }
        if url.utf8.count > maxURLBytes { return .problem(location: location, reason: "url longer than \(maxURLBytes) bytes") }
        if url.unicodeScalars.contains(where: { $0.properties.generalCategory == .control || $0 == " " }) {
            return .problem(location: location, reason: "url \(url.debugDescription) contains spaces or control characters (percent-encode them)")
        }
        if let parsed = URLComponents(string: url), parsed.user != nil || parsed.password != nil {
            return .problem(location: location, reason: "url carries credentials (user:password@); they would be stored as its provenance")
        }
        guard let raw = value("identity") else { return .problem(location: location, reason: "no identity for \(url)") }
        // Checked as stored: NFC can change a name's length and make it another folder's name.
        let identity = IdentityName.normalized(raw)
        if let why = InboxName.problem(identity) { return .problem(location: location, reason: "identity \(raw.debugDescription): \(why)") }
        return .entry(FetchListEntry(identity: identity, url: url, license: value("license"), source: value("source"), location: location))
    }

    /// Longer URLs are list mistakes (or attacks on the catalog's size), not images.
    static let maxURLBytes = 8192
}

/// Identity names become inbox folder names, which ingest reads back as identities.
enum InboxName {
    /// Why `identity` cannot name a folder of the inbox (nil: it can).
    static func problem(_ identity: String) -> String? {
        if identity == "." || identity == ".." { return "not a folder name" }
        if identity.hasPrefix(".") { return "starts with `.` (a hidden folder, which ingest skips)" }
        if identity.contains("/") { return "contains `/`" }
        if identity.unicodeScalars.contains(where: { [.control, .format, .lineSeparator, .paragraphSeparator].contains($0.properties.generalCategory) }) {
            return "contains control or invisible formatting characters"
        }
        if identity.utf8.count > 200 { return "longer than 200 bytes" }
        return nil
    }
}

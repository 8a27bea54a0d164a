import Foundation
import PIDiffModel
import PIDiffNative
import PIDiffCatalog

/// `pidiff-data labels classify`: runs a user-supplied FairFace-style ONNX model (224², ImageNet
/// normalisation) on every selected face's aligned crop and stores the probabilities.
public struct LabelClassifier: Sendable {
    public var catalogPath: String
    public var modelPath: String
    public var inputSize = 224
    /// How the run reports progress on stderr (faces classified of those pending).
    public var progress: ProgressMode

    public init(catalogPath: String, modelPath: String, progress: ProgressMode = .off) {
        self.catalogPath = catalogPath
        self.modelPath = modelPath
        self.progress = progress
    }

    public func run() throws -> Int {
        let lock = try CatalogLock(catalogPath: catalogPath)
        defer { withExtendedLifetime(lock) {} }
        let catalog = try Catalog(path: catalogPath)
        let fingerprint = try Hashing.sha256Hex(fileAt: URL(fileURLWithPath: modelPath))
        let net = try FaceParser(onnxPath: modelPath, inputSize: inputSize, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225])
        let store = ArtefactStore(root: try catalog.dataRoot())
        var results: [(sha256: String, faceIndex: Int, race: [Double], gender: [Double], age: [Double])] = []
        let pending = try catalog.pendingClassifierFaces(modelFingerprint: fingerprint)
        var progress = Progress(stage: "labels classify", unit: "faces", total: pending.count, mode: pending.isEmpty ? .off : self.progress)
        for face in pending {
            let crop = try NativeImage.decode(Data(contentsOf: store.url(face.crop256)), maxPixels: 1 << 24)
            let p = try FairFace.probabilities(net.forward(crop))
            results.append((face.sha256, face.faceIndex, p.race, p.gender, p.age))
            progress.update(done: results.count)
        }
        progress.finish()
        try catalog.storeClassifierResults(results, modelFingerprint: fingerprint)
        return results.count
    }
}

/// A problem in an input file the user wrote (a CSV of corrections): every bad line is listed,
/// and nothing is stored.
public struct InputFileError: Error, CustomStringConvertible {
    public var file: String
    public var problems: [String]
    public init(file: String, problems: [String]) {
        self.file = file
        self.problems = problems
    }
    public var description: String {
        let shown = problems.prefix(20).map { "  " + $0 }.joined(separator: "\n")
        let more = problems.count > 20 ? "\n  … and \(problems.count - 20) more" : ""
        return "\(file): \(problems.count) problem\(problems.count == 1 ? "" : "s"), nothing imported:\n" + shown + more
    }
}

/// `labels import FILE.csv`: header with `identity` and any of `race`, `age`, `gender`, `path`.
public enum ManualLabelCSV {
    /// `labels import FILE`: reads and checks the file against the mapping and the catalog's
    /// identities, then stores the labels under the catalog lock. Returns how many were imported.
    public static func importFile(_ file: String, catalogPath: String, mapping: LabelMapping) throws -> Int {
        let text: String
        do { text = try String(contentsOfFile: file, encoding: .utf8) } catch {
            throw InputFileError(file: file, problems: ["cannot read it (\(error.localizedDescription))"])
        }
        let lock = try CatalogLock(catalogPath: catalogPath)
        defer { withExtendedLifetime(lock) {} }
        let catalog = try Catalog(path: catalogPath)
        let labels = try parse(text, file: file, mapping: mapping, knownIdentities: Set(try catalog.identityNames()))
        _ = try catalog.importManualLabels(labels, source: URL(fileURLWithPath: file).lastPathComponent)
        return labels.count
    }

    /// Parses and checks the file: each value must mean something under `mapping` (or be
    /// `unknown`, to clear a wrong label on purpose), and with `knownIdentities` each identity
    /// must be in the catalog. A typo would otherwise be stored as a manual "unknown" that
    /// outranks the manifest's correct label.
    public static func parse(_ text: String, file: String, mapping: LabelMapping = LabelMapping(),
                             knownIdentities: Set<String>? = nil) throws -> [ManualLabel] {
        let rows = csvRows(text)
        guard let header = rows.first?.map({ $0.trimmingCharacters(in: .whitespaces).lowercased() }) else {
            throw InputFileError(file: file, problems: ["empty CSV"])
        }
        guard let idCol = header.firstIndex(of: "identity") else {
            throw InputFileError(file: file, problems: ["no `identity` column in the header"])
        }
        let pathCol = header.firstIndex(of: "path")
        var out: [ManualLabel] = []
        var problems: [String] = []
        for (n, row) in rows.dropFirst().enumerated() where !(row.count == 1 && row[0].isEmpty) {
            let line = "\(file):\(n + 2)"
            guard row.count == header.count else {
                problems.append("\(line): \(row.count) fields, header has \(header.count)")
                continue
            }
            let identity = IdentityName.normalized(row[idCol].trimmingCharacters(in: .whitespaces))
            guard !identity.isEmpty else { problems.append("\(line): empty identity"); continue }
            if let knownIdentities, !knownIdentities.contains(identity) {
                problems.append("\(line): identity \(identity.debugDescription) is not in the catalog")
                continue
            }
            for attr in LabelAttribute.allCases {
                guard let col = header.firstIndex(of: attr.rawValue) else { continue }
                let value = row[col].trimmingCharacters(in: .whitespaces)
                if value.isEmpty { continue }
                guard value.lowercased() == "unknown" || mapping.normalise(attr, value) != nil else {
                    problems.append("\(line): \(attr.rawValue) \(value.debugDescription) is not a value the label mapping knows "
                                    + "(add it under labels: in the pipeline file, or write unknown)")
                    continue
                }
                out.append(ManualLabel(identity: identity, path: pathCol.map { row[$0] } ?? "", attribute: attr, value: value))
            }
        }
        if !problems.isEmpty { throw InputFileError(file: file, problems: problems) }
        return out
    }

    /// RFC 4180 fields: commas, quoted fields with "" escapes and embedded newlines.
    static func csvRows(_ text: String) -> [[String]] {
        var rows: [[String]] = [], row: [String] = [], field = "", quoted = false
        var chars = Array(text.replacingOccurrences(of: "\r\n", with: "\n"))[...]
        while let c = chars.popFirst() {
            if quoted {
                if c == "\"" {
                    if chars.first == "\"" { field.append("\""); chars.removeFirst() } else { quoted = false }
                } else { field.append(c) }
            } else if c == "\"" { quoted = true }
            else if c == "," { row.append(field); field = "" }
            else if c == "\n" { row.append(field); rows.append(row); row = []; field = "" }
            else { field.append(c) }
        }
        if !field.isEmpty || !row.isEmpty { row.append(field); rows.append(row) }
        return rows
    }
}

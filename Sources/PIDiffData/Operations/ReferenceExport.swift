import Foundation
import PIDiffModel
import PIDiffCatalog

/// `pidiff-data refs`: a split's reference photos as the `REFS/<identity>/` layout `pidiff eval`
/// reads — the 512 aligned crop of each reference (what generations are compared with), and
/// `refs.json` with each file's identity, role, source path, SHA-256 and labels (for per race ×
/// age results).
public struct ReferenceExport: Sendable {
    public struct Entry: Codable, Sendable {
        public var identity: String
        public var role: String
        public var file: String
        public var sourcePath: String
        public var sourceSHA256: String
        public var labels: [String: String]
        enum CodingKeys: String, CodingKey {
            case identity, role, file, sourcePath = "source_path", sourceSHA256 = "source_sha256", labels
        }
    }

    public var catalogPath: String
    public var split: String
    public var out: URL
    public var labelMapping: LabelMapping

    public init(catalogPath: String, split: String, out: URL, labelMapping: LabelMapping = LabelMapping()) {
        self.catalogPath = catalogPath
        self.split = split
        self.out = out
        self.labelMapping = labelMapping
    }

    public func run() throws -> [Entry] {
        let catalog = try Catalog(path: catalogPath)
        let store = ArtefactStore(root: try catalog.dataRoot())
        let samples = try catalog.exportSamples(split: split).filter { $0.role == "reference" }
        guard !samples.isEmpty else {
            throw ExportError.invalid("split \(split) holds no reference photos (draw it with --reference-images 1 or more)")
        }
        let labels = Dictionary(try catalog.identityLabels(mapping: labelMapping, classifierFingerprint: try catalog.currentClassifierFingerprint())
            .map { ($0.identity, $0) }, uniquingKeysWith: { first, _ in first })
        let lock = try CatalogLock(outputFolder: out)
        defer { withExtendedLifetime(lock) {} }
        try OutputPath.markAsOutput(out)
        var entries: [Entry] = []
        for s in samples {
            guard let crop = s.crop512 else {
                throw ExportError.missingArtefact("\(s.path): no aligned crop under the current ingest parameters")
            }
            let name = Self.folder(for: s.identity) + "/" + s.sha256.prefix(16) + ".png"
            let data: Data
            do { data = try Data(contentsOf: store.url(crop)) } catch {
                throw ExportError.missingArtefact("\(s.path): artefact \(store.url(crop).path) unreadable; run pidiff-data verify --repair")
            }
            try OutputPath.write(data, to: out.appendingPathComponent(name))
            let l = labels[s.identity]
            entries.append(Entry(identity: s.identity, role: s.role, file: name, sourcePath: s.path, sourceSHA256: s.sha256,
                                 labels: ["race": l?.race.value ?? "unknown", "age": l?.age.value ?? "unknown", "gender": l?.gender.value ?? "unknown"]))
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        try OutputPath.write(try encoder.encode(RefsFile(split: split, references: entries)), to: out.appendingPathComponent("refs.json"))
        return entries
    }

    struct RefsFile: Codable { var split: String; var references: [Entry] }

    /// The identity's folder: the identity itself when it is a safe file name, else an ASCII slug
    /// and 10 hex digits of its SHA-256 (refs.json maps files to identities either way).
    static func folder(for identity: String) -> String {
        let safe = identity.unicodeScalars.allSatisfy { $0.isASCII && (CharacterSet.alphanumerics.contains($0) || "._-".unicodeScalars.contains($0)) }
        if safe, !identity.isEmpty, !identity.hasPrefix("."), identity.count <= 100 { return identity }
        let slug = String(identity.unicodeScalars.map { $0.isASCII && CharacterSet.alphanumerics.contains($0) ? Character($0) : "-" }.prefix(60))
        return slug + "-" + Hashing.sha256Hex(Data(identity.utf8)).prefix(10)
    }
}

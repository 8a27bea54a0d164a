import Foundation

/// Kinds of photo collections ingest reads.
public enum SourceKind: String, Codable, Sendable {
    /// `root/<identity>/**/*.{jpg,jpeg,png,webp,bmp}`
    case folders
    /// JSONL lines `{identity, path, caption?, race?, age?, gender?, source?}` (Manifests/manifest.schema.json)
    case manifest
    /// CrossFaceID training JSONL: `image_file`, `additional_feature`, `bbox`, `landmarks`, …
    case crossfaceid
    /// Hugging Face `imagefolder`: a folder whose root holds `metadata.csv` or `metadata.jsonl`
    /// (`file_name` relative to that folder, an identity column, label columns) (Docs/sources.md)
    case imagefolder
    /// Hugging Face Parquet: rows with an `Image` column (`{bytes, path}`) and an identity column;
    /// each image is extracted, content-addressed, into the data root's `sources/` (Docs/sources.md)
    case parquet
}

/// Labels as a source states them, before normalisation.
public struct RawLabels: Codable, Equatable, Sendable {
    public var race: String?
    public var age: String?
    public var gender: String?
    package init(race: String? = nil, age: String? = nil, gender: String? = nil) {
        self.race = race
        self.age = age
        self.gender = gender
    }
}

/// One photo found by the scan stage.
public struct ScanItem: Sendable {
    public var path: String
    public var identity: String
    public var sourceKind: SourceKind
    public var sourceLocation: String
    public var caption: String?
    public var labels = RawLabels()
    public var origin: String?
    /// Source-provided hints (CrossFaceID bbox and 5 landmarks) as JSON, kept for later stages.
    public var hint: String?

    /// Where a problem with this photo is reported: its path, and for a Parquet row (whose path is
    /// the image stored in the data root) the file and row it came from first.
    public var problemLocation: String {
        guard sourceKind == .parquet, let origin else { return path }
        return "\(origin) (stored as \(path))"
    }

    public init(path: String, identity: String, sourceKind: SourceKind, sourceLocation: String) {
        self.path = path
        self.identity = IdentityName.normalized(identity)
        self.sourceKind = sourceKind
        self.sourceLocation = sourceLocation
    }
}

/// Identity names as stored: Unicode NFC. Swift compares strings by canonical equivalence but
/// SQLite compares bytes, so "José" typed precomposed in one manifest and decomposed in a folder
/// name would otherwise become two identities that Swift code then cannot tell apart.
public enum IdentityName {
    public static func normalized(_ name: String) -> String { name.precomposedStringWithCanonicalMapping }
}

/// Something the scan could not turn into an item (bad manifest line, symlink loop…).
public struct ScanProblem: Sendable, Error {
    public var location: String
    public var reason: String
    package init(location: String, reason: String) {
        self.location = location
        self.reason = reason
    }
}

public enum ScanEvent: Sendable {
    case item(ScanItem)
    case problem(ScanProblem)
    /// A folder the scan does not enter on purpose (the catalog's own data or outputs), and why.
    case skipped(ScanProblem)
}

/// A path as the file system and SQLite see it: its bytes. Swift's `String` equality is canonical
/// equivalence, so NFC `Café` and NFD `Café` are equal as Strings but are two different files:
/// sets and dictionaries of paths key on this instead.
public struct PathKey: Hashable, Sendable {
    public let bytes: [UInt8]
    public init(_ path: String) { bytes = Array(path.utf8) }
}

/// One of N partitions of a collection (`ingest --partition K/N`, K from 1): each item belongs to
/// exactly one, by a stable hash of its path relative to its source, so N machines can ingest a
/// collection in parallel and `catalog merge` puts the parts together.
public struct Partition: Sendable, Equatable, CustomStringConvertible {
    public let index: Int
    public let count: Int

    /// Parses "K/N" with 1 ≤ K ≤ N.
    public init?(_ text: String) {
        let parts = text.split(separator: "/")
        guard parts.count == 2, let k = Int(parts[0]), let n = Int(parts[1]), n >= 1, (1...n).contains(k) else { return nil }
        index = k
        count = n
    }

    public var description: String { "\(index)/\(count)" }

    /// Whether `item` falls in this partition: SHA-256 of its path relative to its source (the
    /// source's folder for a manifest), first 8 bytes as an integer, modulo N. A Parquet row's path
    /// is its image stored in this machine's data root, so its origin (`file.parquet#row=N`,
    /// relative to the file's folder) decides instead; the Parquet reader applies the same rule to
    /// its rows (`ParquetRows`) so that it stores only this partition's images.
    public func contains(_ item: ScanItem) -> Bool {
        owns(item.sourceKind == .parquet ? (item.origin ?? item.path) : item.path, kind: item.sourceKind, source: item.sourceLocation)
    }

    /// Whether this partition reports a problem the scan of `source` met at `location` (a file, a
    /// manifest line): every machine scans every source, so each problem is given to one of them by
    /// its location, as items are. A Parquet reader already reports only its partition's rows.
    public func reports(problemAt location: String, kind: SourceKind, source: String) -> Bool {
        kind == .parquet || owns(location, kind: kind, source: source)
    }

    private func owns(_ key: String, kind: SourceKind, source: String) -> Bool {
        let base = [.folders, .imagefolder].contains(kind) ? source : (source as NSString).deletingLastPathComponent
        let relative = key.hasPrefix(base + "/") ? String(key.dropFirst(base.count + 1)) : key
        let digest = Hashing.sha256Hex(Data(relative.utf8))
        let value = UInt64(digest.prefix(16), radix: 16) ?? 0
        return Int(value % UInt64(count)) == index - 1
    }
}

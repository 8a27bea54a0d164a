import Foundation
import PIDiffModel
import PIDiffNative
import PIDiffCatalog

/// The scan stage: turns sources into a deterministic stream of items, in sorted order, never
/// holding more than one directory listing or one manifest line in memory.
public struct Scanner: Sendable {
    public static let imageExtensions: Set<String> = ["jpg", "jpeg", "png", "webp", "bmp"]

    public var crossFaceID: CrossFaceIDParameters
    /// Column names of Hugging Face imagefolder and Parquet sources.
    public var huggingFace: HuggingFaceParameters
    /// The Python (with pyarrow) that reads Parquet sources, as `TrainerProcess` finds it.
    public var python: String
    /// Where images extracted from Parquet rows are stored, content-addressed (the data root's
    /// `sources/`); nil: Parquet sources are refused.
    public var sourceCache: String?
    /// Folders never entered, with the reason (the catalog's data root and work folder): a catalog
    /// kept inside the photo folder it ingests would otherwise ingest its own crops, growing on
    /// every run. Folders holding an `outputMarker` file (reports, shards, samples) are skipped too.
    public var skipping: [String: String]
    /// Under `ingest --partition K/N`: the Parquet reader stores only this partition's images.
    public var partition: Partition?

    /// The file pidiff-data writes into every output folder it creates.
    public static let outputMarker = ".pidiff-output"

    public init(crossFaceID: CrossFaceIDParameters = CrossFaceIDParameters(), huggingFace: HuggingFaceParameters = HuggingFaceParameters(),
                python: String? = nil, sourceCache: String? = nil, skipping: [String: String] = [:], partition: Partition? = nil) {
        self.crossFaceID = crossFaceID
        self.huggingFace = huggingFace
        self.python = python ?? TrainerProcess().python
        self.sourceCache = sourceCache
        self.partition = partition
        self.skipping = Dictionary(skipping.map { (URL(fileURLWithPath: $0.key).standardizedFileURL.path, $0.value) }, uniquingKeysWith: { a, _ in a })
    }

    /// Why the scan does not enter `dir`, or nil.
    func skipReason(_ dir: String) -> String? {
        if let reason = skipping[URL(fileURLWithPath: dir).standardizedFileURL.path] { return reason }
        if FileManager.default.fileExists(atPath: dir + "/" + Scanner.outputMarker) { return "a pidiff-data output folder (it holds \(Scanner.outputMarker))" }
        return nil
    }

    /// A Parquet file met while walking identity folders (a Hugging Face download's `data/` folder):
    /// said, rather than silently passed over as "not a photo".
    static let parquetInFolders = "a Parquet file inside identity folders is not read; give the .parquet file itself as a source (Docs/sources.md)"

    /// Decides what a source path is.
    public static func kind(of source: String) throws -> SourceKind {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: source, isDirectory: &isDir) else {
            throw ScanProblem(location: source, reason: "source does not exist")
        }
        if isDir.boolValue { return try HuggingFace.isImageFolder(source) ? .imagefolder : .folders }
        let name = (source as NSString).lastPathComponent
        if HuggingFace.metadataNames.contains(name) {
            throw ScanProblem(location: source, reason: "a Hugging Face imagefolder's metadata file: give the folder holding it as the source")
        }
        if (source as NSString).pathExtension.lowercased() == "parquet" { return .parquet }
        if imageExtensions.contains((source as NSString).pathExtension.lowercased()) {
            throw ScanProblem(location: source, reason: "a photo is not a source: give the folder holding <identity>/ folders of photos, or a JSONL manifest")
        }
        guard let reader = LineReader(path: source) else {
            throw ScanProblem(location: source, reason: "cannot open source file")
        }
        while let next = reader.next() {
            guard case .text(let line) = next else {
                throw ScanProblem(location: source, reason: "first line is longer than \(LineReader.defaultMaxLineBytes >> 20) MiB; "
                                  + "expected a JSONL manifest (one JSON object per line)")
            }
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if trimmed.isEmpty { continue }
            if trimmed.hasPrefix("[") {
                throw ScanProblem(location: source, reason: "a JSON array, not JSON lines: write one JSON object per line (JSONL)")
            }
            guard let obj = try? JSONSerialization.jsonObject(with: Data(trimmed.utf8)) as? [String: Any] else {
                throw ScanProblem(location: source, reason: "first line is not a JSON object; expected a JSONL manifest")
            }
            if obj["image_file"] != nil { return .crossfaceid }
            if obj["path"] != nil { return .manifest }
            throw ScanProblem(location: source, reason: "JSONL lines carry neither `path` (manifest) nor `image_file` (CrossFaceID)")
        }
        throw ScanProblem(location: source, reason: "empty manifest")
    }

    /// Streams the items of one source to `emit`.
    public func scan(_ source: String, emit: (ScanEvent) async throws -> Void) async throws {
        let location = URL(fileURLWithPath: source).standardizedFileURL.path
        switch try Scanner.kind(of: location) {
        case .folders: try await scanFolders(location, emit: emit)
        case .manifest: try await scanManifest(location, emit: emit)
        case .crossfaceid: try await scanCrossFaceID(location, emit: emit)
        case .imagefolder: try await scanImageFolder(location, emit: emit)
        case .parquet: try await scanParquet(location, emit: emit)
        }
    }

    // MARK: identity folders

    /// A directory's entry names, read as bytes. Foundation decodes names lossily, so a name that is
    /// not UTF-8 came back altered and then "did not exist"; such entries are returned apart, as
    /// their byte-escaped names, to be reported rather than silently lost.
    static func directoryEntries(_ dir: String) throws -> (names: [String], undecodable: [String]) {
        guard let handle = opendir(dir) else {
            throw CocoaError(.fileReadNoPermission, userInfo: [NSLocalizedDescriptionKey: String(cString: strerror(errno))])
        }
        defer { closedir(handle) }
        var names: [String] = [], undecodable: [String] = []
        while let entry = readdir(handle) {
            let bytes = withUnsafeBytes(of: entry.pointee.d_name) { raw in Array(raw.prefix { $0 != 0 }) }
            if bytes == Array(".".utf8) || bytes == Array("..".utf8) { continue }
            if let name = String(validating: bytes, as: UTF8.self) { names.append(name) }
            else if bytes.first != UInt8(ascii: ".") {  // a hidden one is skipped like any dot name
                undecodable.append(bytes.map { (0x20..<0x7f).contains($0) && $0 != UInt8(ascii: "\\") ? String(UnicodeScalar($0)) : String(format: "\\x%02x", $0) }.joined())
            }
        }
        return (names.sorted(), undecodable.sorted())
    }

    private func reportUndecodable(_ names: [String], in dir: String, emit: (ScanEvent) async throws -> Void) async throws {
        for name in names {
            try await emit(.problem(ScanProblem(location: dir + "/" + name, reason: "name is not valid UTF-8; skipped (rename it)")))
        }
    }

    private func scanFolders(_ root: String, emit: (ScanEvent) async throws -> Void) async throws {
        let fm = FileManager.default
        let (identities, undecodable) = try Self.directoryEntries(root)
        try await reportUndecodable(undecodable, in: root, emit: emit)
        for name in identities where !name.hasPrefix(".") {
            let dir = root + "/" + name
            var isDir: ObjCBool = false
            guard fm.fileExists(atPath: dir, isDirectory: &isDir), isDir.boolValue else {
                if Scanner.imageExtensions.contains((name as NSString).pathExtension.lowercased()) {
                    try await emit(.problem(ScanProblem(location: dir, reason: "photo outside an identity folder (no identity); move it into <source>/<identity>/")))
                } else if (name as NSString).pathExtension.lowercased() == "parquet" {
                    try await emit(.problem(ScanProblem(location: dir, reason: Scanner.parquetInFolders)))
                }
                continue
            }
            if let reason = skipReason(dir) {
                try await emit(.skipped(ScanProblem(location: dir, reason: reason)))
                continue
            }
            // The walk's ancestors, starting with the root: a link back to any of them is a loop.
            var ancestors = Set<DirectoryID>()
            var rootStat = stat()
            if stat(root, &rootStat) == 0 { ancestors.insert(DirectoryID(device: UInt64(rootStat.st_dev), inode: UInt64(rootStat.st_ino))) }
            try await walk(dir, identity: name, root: root, visited: &ancestors, emit: emit)
        }
    }

    private struct DirectoryID: Hashable { var device: UInt64; var inode: UInt64 }

    private func walk(_ dir: String, identity: String, root: String, visited: inout Set<DirectoryID>,
                      emit: (ScanEvent) async throws -> Void) async throws {
        var st = stat()
        guard stat(dir, &st) == 0 else {
            try await emit(.problem(ScanProblem(location: dir, reason: "cannot stat directory: \(String(cString: strerror(errno)))")))
            return
        }
        let id = DirectoryID(device: UInt64(st.st_dev), inode: UInt64(st.st_ino))
        guard visited.insert(id).inserted else {
            try await emit(.problem(ScanProblem(location: dir, reason: "symlink loop: links back to a parent directory")))
            return
        }
        defer { visited.remove(id) }
        let entries: [String]
        do {
            let listed = try Self.directoryEntries(dir)
            entries = listed.names
            try await reportUndecodable(listed.undecodable, in: dir, emit: emit)
        } catch {
            try await emit(.problem(ScanProblem(location: dir, reason: "cannot list directory: \(error.localizedDescription)")))
            return
        }
        for entry in entries where !entry.hasPrefix(".") {
            let path = dir + "/" + entry
            var est = stat()
            if stat(path, &est) != 0 {
                // Dangling links and link loops (ELOOP) land here; record them only when the
                // name looks like a photo, so stray non-image junk stays out of the catalog.
                if Scanner.imageExtensions.contains((entry as NSString).pathExtension.lowercased()) {
                    try await emit(.item(ScanItem(path: path, identity: identity, sourceKind: .folders, sourceLocation: root)))
                } else {
                    try await emit(.problem(ScanProblem(location: path, reason: String(cString: strerror(errno)))))
                }
                continue
            }
            if (est.st_mode & S_IFMT) == S_IFDIR {
                if let reason = skipReason(path) {
                    try await emit(.skipped(ScanProblem(location: path, reason: reason)))
                    continue
                }
                try await walk(path, identity: identity, root: root, visited: &visited, emit: emit)
            } else if Scanner.imageExtensions.contains((entry as NSString).pathExtension.lowercased()) {
                try await emit(.item(ScanItem(path: path, identity: identity, sourceKind: .folders, sourceLocation: root)))
            } else if (entry as NSString).pathExtension.lowercased() == "parquet" {
                try await emit(.problem(ScanProblem(location: path, reason: Scanner.parquetInFolders)))
            }
        }
    }

    // MARK: JSONL manifests

    func jsonLines(_ path: String, emit: (ScanEvent) async throws -> Void,
                           body: (Int, [String: Any]) async throws -> Void) async throws {
        guard let reader = LineReader(path: path) else {
            try await emit(.problem(ScanProblem(location: path, reason: "cannot open manifest")))
            return
        }
        var number = 0
        while let next = reader.next() {
            number += 1
            guard case .text(let line) = next else {
                try await emit(.problem(ScanProblem(location: "\(path):\(number)",
                                                    reason: "line longer than \(LineReader.defaultMaxLineBytes >> 20) MiB; skipped")))
                continue
            }
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if trimmed.isEmpty { continue }
            guard let obj = try? JSONSerialization.jsonObject(with: Data(trimmed.utf8)) as? [String: Any] else {
                try await emit(.problem(ScanProblem(location: "\(path):\(number)", reason: "line is not a JSON object")))
                continue
            }
            try await body(number, obj)
        }
    }

    static func text(_ value: Any?) -> String? {
        switch value {
        case let s as String: return s.isEmpty ? nil : s
        case let n as NSNumber: return n.stringValue
        default: return nil
        }
    }

    private static func resolve(_ relative: String, against manifest: String) -> String {
        if relative.hasPrefix("/") { return URL(fileURLWithPath: relative).standardizedFileURL.path }
        let base = URL(fileURLWithPath: manifest).deletingLastPathComponent()
        return base.appendingPathComponent(relative).standardizedFileURL.path
    }

    private func scanManifest(_ manifest: String, emit: (ScanEvent) async throws -> Void) async throws {
        try await jsonLines(manifest, emit: emit) { number, obj in
            guard let rel = Scanner.text(obj["path"]), let identity = Scanner.text(obj["identity"]) else {
                try await emit(.problem(ScanProblem(location: "\(manifest):\(number)", reason: "missing required field `identity` or `path`")))
                return
            }
            var item = ScanItem(path: Scanner.resolve(rel, against: manifest), identity: identity,
                                sourceKind: .manifest, sourceLocation: manifest)
            item.caption = Scanner.text(obj["caption"])
            item.labels = RawLabels(race: Scanner.text(obj["race"]), age: Scanner.text(obj["age"]), gender: Scanner.text(obj["gender"]))
            item.origin = Scanner.text(obj["source"])
            try await emit(.item(item))
        }
    }

    private func scanCrossFaceID(_ manifest: String, emit: (ScanEvent) async throws -> Void) async throws {
        try await jsonLines(manifest, emit: emit) { number, obj in
            guard let rel = Scanner.text(obj["image_file"]) else {
                try await emit(.problem(ScanProblem(location: "\(manifest):\(number)", reason: "missing `image_file`")))
                return
            }
            let path = Scanner.resolve(rel, against: manifest)
            let identity: String?
            if let field = crossFaceID.identityField {
                identity = Scanner.text(obj[field])
            } else {
                identity = URL(fileURLWithPath: path).deletingLastPathComponent().lastPathComponent
            }
            guard let identity, !identity.isEmpty else {
                try await emit(.problem(ScanProblem(location: "\(manifest):\(number)",
                                                    reason: "no identity (field \(crossFaceID.identityField ?? "parent folder"))")))
                return
            }
            var item = ScanItem(path: path, identity: identity, sourceKind: .crossfaceid, sourceLocation: manifest)
            item.caption = Scanner.text(obj["additional_feature"])
            var hint: [String: Any] = [:]
            for key in ["bbox", "landmarks", "insightface_feature_file"] where obj[key] != nil { hint[key] = obj[key] }
            if !hint.isEmpty, let data = try? JSONSerialization.data(withJSONObject: hint, options: [.sortedKeys]) {
                item.hint = String(decoding: data, as: UTF8.self)
            }
            try await emit(.item(item))
        }
    }
}

/// Reads a text file line by line in 64 KiB chunks. Each byte is searched for a newline once
/// (a long line costs linear time, not a rescan per chunk), and a line longer than `maxLineBytes`
/// is skipped without being held whole: it comes back as `.tooLong`.
final class LineReader {
    enum Line: Equatable {
        case text(String)
        /// A line over the limit (its length so far, at least `maxLineBytes + 1`), skipped.
        case tooLong(Int)
    }

    static let defaultMaxLineBytes = 1 << 20
    private let handle: FileHandle
    private let maxLineBytes: Int
    private var buffer = [UInt8]()
    /// Where the current line starts in `buffer`, and how far it has been searched for a newline.
    private var start = 0
    private var searched = 0
    private var eof = false

    init?(path: String, maxLineBytes: Int = LineReader.defaultMaxLineBytes) {
        guard let h = FileHandle(forReadingAtPath: path) else { return nil }
        handle = h
        self.maxLineBytes = maxLineBytes
    }

    /// Lines from an open handle (a child process's stdout), read as they arrive.
    init(handle: FileHandle, maxLineBytes: Int = LineReader.defaultMaxLineBytes) {
        self.handle = handle
        self.maxLineBytes = maxLineBytes
    }
    deinit { try? handle.close() }

    func next() -> Line? {
        while true {
            if let nl = buffer[searched...].firstIndex(of: 0x0A) {
                defer { start = nl + 1; searched = start }
                if nl - start > maxLineBytes { return .tooLong(nl - start) }
                return .text(String(decoding: buffer[start..<nl], as: UTF8.self))
            }
            searched = buffer.count
            if buffer.count - start > maxLineBytes { return skipLongLine() }
            if eof {
                guard start < buffer.count else { return nil }
                defer { buffer.removeAll(); start = 0; searched = 0 }
                return .text(String(decoding: buffer[start...], as: UTF8.self))
            }
            refill()
        }
    }

    /// Reads on to the end of the current line, dropping what it reads.
    private func skipLongLine() -> Line {
        var length = buffer.count - start
        while true {
            if let nl = buffer[searched...].firstIndex(of: 0x0A) {
                length += nl - searched
                start = nl + 1
                searched = start
                return .tooLong(length)
            }
            length += buffer.count - searched
            buffer.removeAll(keepingCapacity: true)
            start = 0
            searched = 0
            if eof { return .tooLong(length) }
            refill()
        }
    }

    private func refill() {
        // Drop consumed bytes once they are the larger part, so the buffer stays about one line.
        if start > 0 && start >= buffer.count / 2 {
            buffer.removeSubrange(0..<start)
            searched -= start
            start = 0
        }
        let chunk = (try? handle.read(upToCount: 64 * 1024)) ?? nil
        if let chunk, !chunk.isEmpty { buffer.append(contentsOf: chunk) } else { eof = true }
    }
}

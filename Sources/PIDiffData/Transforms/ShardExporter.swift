import Foundation
import PIDiffModel
import PIDiffNative
import PIDiffCatalog

/// Minimal, deterministic POSIX ustar writer: fixed mtime/uid/gid/mode, so the same members give
/// byte-identical archives. WebDataset and Python's tarfile both read it. Bytes go to `sink` as
/// they are made (a file, a hasher): a shard is never held in memory.
struct TarWriter {
    let sink: (Data) throws -> Void

    static func memberSize(_ bytes: Int) -> Int { 512 + (bytes + 511) / 512 * 512 }
    static let trailerSize = 1024

    func add(name: String, contents: Data) throws {
        let nameBytes = Array(name.utf8)
        guard nameBytes.count <= 100 else { throw ExportError.invalid("tar member name longer than 100 bytes: \(name)") }
        var header = [UInt8](repeating: 0, count: 512)
        func put(_ s: String, at offset: Int) { for (i, b) in s.utf8.enumerated() { header[offset + i] = b } }
        for (i, b) in nameBytes.enumerated() { header[i] = b }
        put("0000644", at: 100)
        put("0000000", at: 108)
        put("0000000", at: 116)
        put(String(format: "%011o", contents.count), at: 124)
        put("00000000000", at: 136)
        for i in 148..<156 { header[i] = 0x20 } // checksum counts as spaces
        header[156] = UInt8(ascii: "0")
        put("ustar", at: 257)
        put("00", at: 263)
        let sum = header.reduce(0) { $0 + Int($1) }
        put(String(format: "%06o", sum), at: 148)
        header[154] = 0
        header[155] = 0x20
        try sink(Data(header))
        try sink(contents)
        let pad = (512 - contents.count % 512) % 512
        if pad > 0 { try sink(Data(count: pad)) }
    }

    func finish() throws { try sink(Data(count: TarWriter.trailerSize)) }
}

public enum ExportError: Error, CustomStringConvertible {
    case invalid(String)
    case missingArtefact(String)
    public var description: String {
        switch self {
        case .invalid(let s): return "export: \(s)"
        case .missingArtefact(let s): return "export: \(s)"
        }
    }
}

/// `pidiff-data export`: a split as WebDataset shards `NAME-000000.tar`… plus `NAME.index.json`.
/// Deterministic (same split → same bytes), atomic (temporary name, fsync, rename), resumable
/// (complete shards are verified, not rewritten) and confined to the output folder.
public struct ShardExporter: Sendable {
    public enum Grouping: String, Codable, Sendable { case identity, mixed }
    /// The 512 training image: `aligned`, the FFHQ crop (e4e's framing), or `context`, a square
    /// twice the quad's side around the same centre (head, shoulders and surroundings), resized
    /// to 512, with the mask carried into the same frame. The e4e input is the aligned 256 face
    /// either way: it carries the identity.
    public enum View: String, Codable, Sendable, CaseIterable { case aligned, context }

    public var catalogPath: String
    public var split: String
    public var outDirectory: URL
    public var grouping: Grouping = .identity
    public var maxShardBytes: Int = 1_000_000_000
    public var seed: Int = 0
    public var labelMapping = LabelMapping()
    public var view: View = .aligned
    /// How the export reports progress on stderr: samples written (and, for the context view,
    /// context views made while planning).
    public var progress: ProgressMode = .off
    /// Side of the context square in quad sides.
    public static let contextScale = 2.0

    public init(catalogPath: String, split: String, outDirectory: URL) {
        self.catalogPath = catalogPath
        self.split = split
        self.outDirectory = outDirectory
    }

    public struct ShardEntry: Codable, Sendable, Equatable {
        public var name: String
        public var samples: Int
        public var bytes: Int
        public var sha256: String
        /// SHA-256 of what the shard is made from (keys, sample JSON, artefact names, which are
        /// content addresses): an export whose plan gives the same value, and whose file still has
        /// `bytes` and `sha256`, keeps the shard without reading any artefact.
        public var inputsSHA256: String?
        enum CodingKeys: String, CodingKey { case name, samples, bytes, sha256, inputsSHA256 = "inputs_sha256" }
    }

    public struct Index: Codable, Sendable {
        public var split: String
        public var format = "pidiff-shards/1"
        public var grouping: String
        public var samples: Int
        public var shards: [ShardEntry]
        public var ingestFingerprint: String
        public var maskFingerprint: String
        public var view: String = View.aligned.rawValue
        public var written: Int
        public var reused: Int
        /// Sample key → source SHA-256, in shard order (in memory only; the shards' JSON has it).
        public var sources: [(key: String, sha256: String)] = []
        enum CodingKeys: String, CodingKey {
            case split, format, grouping, samples, shards, ingestFingerprint = "ingest_fingerprint", maskFingerprint = "mask_fingerprint", view
            case written, reused
        }
    }

    /// A sample key: position, a readable slug of the identity and a hash, with no dots (WebDataset
    /// splits extensions at the first dot) and nothing a path could use to escape.
    static func key(index: Int, identity: String, sha256: String) -> String {
        let slug = String(identity.unicodeScalars.map { CharacterSet.alphanumerics.contains($0) && $0.isASCII ? Character($0) : "_" }.prefix(40))
        return String(format: "%06d", index) + "_" + slug + "_" + sha256.prefix(12)
    }

    /// The shard of each member (in order; shard numbers start at 0 and never go back), cutting by
    /// size. With identity grouping an identity's members stay in one shard: a shard closes before
    /// an identity that would not fit in what is left but fits in an empty shard, and closes
    /// mid-identity only when that identity alone is larger than a shard.
    static func shardPlan(_ members: [(identity: String, bytes: Int)], grouping: Grouping, maxShardBytes: Int) -> [Int] {
        var identityBytes: [String: Int] = [:]
        for m in members { identityBytes[m.identity, default: 0] += m.bytes }
        var shards: [Int] = []
        var shard = 0, size = TarWriter.trailerSize, inShard = 0
        for (i, m) in members.enumerated() {
            var cut = false
            if inShard > 0 {
                cut = size + m.bytes > maxShardBytes
                if grouping == .identity, members[i - 1].identity != m.identity, let whole = identityBytes[m.identity] {
                    cut = cut || (size + whole > maxShardBytes && TarWriter.trailerSize + whole <= maxShardBytes)
                }
            }
            if cut {
                shard += 1
                size = TarWriter.trailerSize
                inShard = 0
            }
            shards.append(shard)
            size += m.bytes
            inShard += 1
        }
        return shards
    }

    /// Removes `SPLIT-NNNNNN.EXT` files in `directory` whose shard `SPLIT-NNNNNN.tar` is not in `keeping`. Nothing else is touched.
    public static func removeStaleShards(of split: String, in directory: URL, keeping: Set<String>, ext: String) throws {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: directory.path) else { return }
        let pattern = try NSRegularExpression(pattern: "^" + NSRegularExpression.escapedPattern(for: split) + "-[0-9]{6}\\."
                                              + NSRegularExpression.escapedPattern(for: ext) + "$")
        for name in names where pattern.firstMatch(in: name, range: NSRange(name.startIndex..., in: name)) != nil {
            let stem = String(name.dropLast(ext.count + 1))
            guard !keeping.contains(stem + ".tar") else { continue }
            try FileManager.default.removeItem(at: directory.appendingPathComponent(name))
        }
    }

    /// One sample as planned: its JSON and the artefacts (relative to the data root) to read when its shard is written.
    struct Member {
        var key: String
        var sha256: String
        var identity: String
        var path: String
        var json: Data
        var artefacts: [(name: String, relative: String)]
        var bytes: Int
    }

    /// The data root's folder of context views and their masks (derived, named by their inputs).
    static let contextFolder = "context"

    /// The context view of one sample: the source photo (checked to still hold the split's
    /// content) cut around the quad scaled by `contextScale` about its centre, at 512. Stored in
    /// the data root under a name derived from its inputs (content, quad, scale), so it is made
    /// once and every later export finds it.
    static func contextCrop(_ s: ExportSample, store: ArtefactStore) throws -> String {
        let corners = s.quad.map { Point(x: $0[0], y: $0[1]) }
        guard corners.count == 4 else { throw ExportError.missingArtefact("\(s.path): no alignment quad under the current ingest parameters") }
        let key = Hashing.sha256Hex(Data("context-1 \(s.sha256) \(s.quad) \(contextScale) 512".utf8))
        let relative = "\(contextFolder)/\(key.prefix(2))/\(key).png"
        if FileManager.default.fileExists(atPath: store.url(relative).path) { return relative }
        let bytes: FileBytes
        do { bytes = try ReadStage.read(s.path) } catch {
            throw ExportError.missingArtefact("\(s.path): the context view needs the source photo, which cannot be read (\(error))")
        }
        guard bytes.sha256 == s.sha256 else {
            throw ExportError.missingArtefact("\(s.path): the file changed since the split was drawn; the context view needs the original photo")
        }
        // The photo was accepted by ingest under its own gates: decode it without them.
        var permissive = IngestParameters()
        permissive.maxPixels = Int.max
        permissive.minSide = 1
        let image: NativeImage
        do { (image, _) = try DecodeStage.decode(bytes.data, parameters: permissive) } catch let refusal as DecodeStage.Refusal {
            throw ExportError.missingArtefact("\(s.path): the context view cannot decode the source photo (\(refusal.reason))")
        }
        let centre = Point.mean(corners)
        let wide = AlignmentQuad(corners: corners.map { centre + ($0 - centre) * contextScale })
        let (crop, _) = try image.aligned(quad: wide, size: 512)
        try store.put(named: relative, data: try crop.pngData())
        return relative
    }

    /// The 512 mask in the context view's frame: the aligned mask zoomed out by `contextScale`
    /// about the centre, as `contextCrop` zooms out the quad, so that it lines up with the context
    /// crop pixel for pixel (to the fraction of a pixel fn_align's pre-shrink of very large
    /// photos leaves); 0 outside the aligned area. Stored once per mask under a derived name.
    static func contextMask(_ mask512: String, sample s: ExportSample, store: ArtefactStore) throws -> String {
        let key = Hashing.sha256Hex(Data("context-mask-1 \(mask512) \(contextScale) 512".utf8))
        let relative = "\(contextFolder)/\(key.prefix(2))/\(key).png"
        if FileManager.default.fileExists(atPath: store.url(relative).path) { return relative }
        let aligned: NativeImage
        do { aligned = try NativeImage.decodeMask(Data(contentsOf: store.url(mask512))) } catch {
            throw ExportError.missingArtefact("\(s.path): artefact \(store.url(mask512).path) unreadable (\(error)); run pidiff-data verify --repair")
        }
        try store.put(named: relative, data: try aligned.maskZoomedOut(scale: contextScale).pngData())
        return relative
    }

    /// What a shard is made from, as one digest: each member's key, JSON and artefact names.
    static func inputsDigest(_ shard: [Member]) -> String {
        var hasher = SHA256Stream()
        hasher.update(Data("pidiff-shards/1\n".utf8))
        for m in shard {
            hasher.update(Data("\(m.key)\n".utf8))
            hasher.update(m.json)
            for (name, rel) in m.artefacts { hasher.update(Data("\n\(name) \(rel)".utf8)) }
            hasher.update(Data("\n".utf8))
        }
        return hasher.finish().sha256
    }

    /// The shards the split's index in `directory` lists, by name (none when there is no readable index).
    static func previousEntries(of split: String, in directory: URL) -> [String: ShardEntry] {
        struct Listed: Decodable { var shards: [ShardEntry] }
        guard let data = try? Data(contentsOf: directory.appendingPathComponent("\(split).index.json")),
              let listed = try? JSONDecoder().decode(Listed.self, from: data) else { return [:] }
        return Dictionary(listed.shards.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
    }

    /// The tar of one shard, member by member into `sink`: json, png, e4e.png, mask.png per
    /// sample; `sampleDone` after each sample.
    static func writeTar(_ shard: [Member], store: ArtefactStore, to sink: @escaping (Data) throws -> Void,
                         sampleDone: () -> Void = {}) throws {
        let tar = TarWriter(sink: sink)
        for m in shard {
            try tar.add(name: "\(m.key).json", contents: m.json)
            for (name, rel) in m.artefacts {
                let data: Data
                do { data = try Data(contentsOf: store.url(rel)) } catch {
                    throw ExportError.missingArtefact("\(m.path): artefact \(store.url(rel).path) unreadable (\(error.localizedDescription)); run pidiff-data verify --repair")
                }
                try tar.add(name: name, contents: data)
            }
            sampleDone()
        }
        try tar.finish()
    }

    public func run() throws -> Index {
        guard SplitName.isValid(split) else { throw SplitError.invalidName(split) }
        // The folder first: another export or encode writing it is refused before any work.
        let lock = try CatalogLock(outputFolder: outDirectory)
        defer { withExtendedLifetime(lock) {} }
        let catalog = try Catalog(path: catalogPath)
        let store = ArtefactStore(root: try catalog.dataRoot())
        var samples = try catalog.exportSamples(split: split)
        guard !samples.isEmpty else { throw ExportError.invalid("split \(split) has no photos") }
        if grouping == .mixed {
            samples.sort { BalancedSelection.rank($0.sha256, seed: seed) < BalancedSelection.rank($1.sha256, seed: seed) }
        }
        let labels = Dictionary(try catalog.identityLabels(mapping: labelMapping, classifierFingerprint: try catalog.currentClassifierFingerprint()).map { ($0.identity, $0) },
                                uniquingKeysWith: { first, _ in first }) // see IdentityName

        // Plan every sample's members from the catalog alone (artefact sizes from the file system),
        // cut shards by size, then build one shard at a time, streaming: memory holds one sample's
        // files, whatever the split's size.
        var members: [Member] = []
        members.reserveCapacity(samples.count)
        // The context view decodes every source photo once (later exports find its crops): count it.
        var planning = Progress(stage: "export", unit: "context views", total: samples.count, mode: view == .context ? self.progress : .off)
        for (i, s) in samples.enumerated() {
            guard let crop = s.crop512 else { throw ExportError.missingArtefact("\(s.path): no aligned crop under the current ingest parameters") }
            guard let mask = s.mask512, let e4e = s.e4eInput else {
                throw ExportError.missingArtefact("\(s.path): no passing mask under the current mask parameters; run pidiff-data masks")
            }
            let key = Self.key(index: i, identity: s.identity, sha256: s.sha256)
            let l = labels[s.identity]
            var meta: [String: Any] = [
                "key": key, "identity": s.identity, "role": s.role, "source_path": s.path, "source_sha256": s.sha256,
                "caption": s.caption ?? NSNull(),
                "labels": ["race": l?.race.value ?? "unknown", "age": l?.age.value ?? "unknown", "gender": l?.gender.value ?? "unknown"],
                "landmarks68": s.landmarks68, "quad": s.quad, "quality": s.quality,
                "fingerprints": ["ingest": s.faceFingerprint, "mask": s.maskFingerprint ?? ""] as [String: String],
            ]
            // Only a non-default framing, and provenance where a source gives one (a Parquet row, a
            // manifest's `source`, a fetched URL with its licence), are written: other exports stay byte-identical to earlier ones.
            if view != .aligned { meta["view"] = view.rawValue }
            if let origin = s.origin { meta["origin"] = origin }
            if let fetched = s.fetched {
                var provenance = ["url": fetched.url]
                provenance["license"] = fetched.license
                provenance["source"] = fetched.source
                meta["provenance"] = provenance
            }
            let json = try JSONSerialization.data(withJSONObject: meta, options: [.sortedKeys, .withoutEscapingSlashes])
            let image = view == .aligned ? crop : try Self.contextCrop(s, store: store)
            let imageMask = view == .aligned ? mask : try Self.contextMask(mask, sample: s, store: store)
            let artefacts = [("\(key).png", image), ("\(key).e4e.png", e4e), ("\(key).mask.png", imageMask)]
            var bytes = TarWriter.memberSize(json.count)
            for (_, rel) in artefacts {
                let url = store.url(rel)
                guard let size = (try? FileManager.default.attributesOfItem(atPath: url.path)[.size]) as? Int else {
                    throw ExportError.missingArtefact("\(s.path): artefact \(url.path) is missing; run pidiff-data verify --repair")
                }
                bytes += TarWriter.memberSize(size)
            }
            members.append(Member(key: key, sha256: s.sha256, identity: s.identity, path: s.path, json: json, artefacts: artefacts, bytes: bytes))
            planning.update(done: i + 1)
        }
        planning.finish()
        var plan: [[Member]] = []
        for (m, shard) in zip(members, Self.shardPlan(members.map { ($0.identity, $0.bytes) }, grouping: grouping, maxShardBytes: maxShardBytes)) {
            if shard == plan.count { plan.append([]) }
            plan[shard].append(m)
        }

        try OutputPath.prepareFolder(outDirectory)
        try OutputPath.markAsOutput(outDirectory)
        // Temporaries of a writer that was killed (none is running: the folder is locked).
        for name in (try? FileManager.default.contentsOfDirectory(atPath: outDirectory.path)) ?? []
        where name.hasPrefix(".\(split)-") || name.hasPrefix(".\(split).index.json") {
            if name.hasSuffix(".tmp") { try? FileManager.default.removeItem(at: outDirectory.appendingPathComponent(name)) }
        }
        let previous = Self.previousEntries(of: split, in: outDirectory)
        var entries: [ShardEntry] = []
        var written = 0, reused = 0
        // Samples of the shards kept or written so far, then sample by sample in the one that is written.
        var progress = Progress(stage: "export", unit: "samples", total: members.count, mode: self.progress)
        var finished = 0
        for (n, shard) in plan.enumerated() {
            let name = String(format: "%@-%06d.tar", split, n)
            let url = outDirectory.appendingPathComponent(name)
            let inputs = Self.inputsDigest(shard)
            // Up to date: the index already describes this shard from these inputs, and the file
            // still is what the index says.
            if let known = previous[name], known.inputsSHA256 == inputs,
               (try? FileManager.default.attributesOfItem(atPath: url.path)[.size] as? Int) == known.bytes,
               (try? Hashing.sha256Hex(fileAt: url)) == known.sha256 {
                reused += 1
                entries.append(known)
                finished += shard.count
                progress.update(done: finished)
                continue
            }
            // A file in place (a complete shard of an interrupted run, or an outdated one): hash
            // the shard as it would be written, keep an identical file. Otherwise write the shard
            // once, hashing it as it goes.
            var kept: (sha256: String, bytes: Int)?
            if let existing = try? FileManager.default.attributesOfItem(atPath: url.path)[.size] as? Int {
                var hasher = SHA256Stream()
                try Self.writeTar(shard, store: store, to: { hasher.update($0) })
                let planned = hasher.finish()
                if existing == planned.bytes, (try? Hashing.sha256Hex(fileAt: url)) == planned.sha256 { kept = planned }
            }
            let made: (sha256: String, bytes: Int)
            if let kept {
                made = kept
                reused += 1
            } else {
                var hasher = SHA256Stream()
                var inShard = 0
                try AtomicFile.write(to: url) { sink in
                    try Self.writeTar(shard, store: store, to: { hasher.update($0); try sink($0) }, sampleDone: {
                        inShard += 1
                        progress.update(done: finished + inShard)
                    })
                }
                made = hasher.finish()
                written += 1
            }
            entries.append(ShardEntry(name: name, samples: shard.count, bytes: made.bytes, sha256: made.sha256, inputsSHA256: inputs))
            finished += shard.count
            progress.update(done: finished)
        }
        progress.finish()
        // Shards an earlier export of this split wrote beyond the new plan would be read as part of it.
        try Self.removeStaleShards(of: split, in: outDirectory, keeping: Set(entries.map(\.name)), ext: "tar")
        let index = Index(split: split, grouping: grouping.rawValue, samples: members.count, shards: entries,
                          ingestFingerprint: samples[0].faceFingerprint, maskFingerprint: samples[0].maskFingerprint ?? "",
                          view: view.rawValue, written: written, reused: reused, sources: members.map { ($0.key, $0.sha256) })
        var stable = index
        stable.written = 0
        stable.reused = 0
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        // The index on disk leaves out the run-dependent counts so it is byte-identical too.
        let json = try JSONSerialization.jsonObject(with: encoder.encode(stable)) as! [String: Any]
        let trimmed = json.filter { $0.key != "written" && $0.key != "reused" }
        try AtomicFile.write(try JSONSerialization.data(withJSONObject: trimmed, options: [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]),
                             to: outDirectory.appendingPathComponent("\(split).index.json"))
        return index
    }
}

/// Write to a temporary name in the same folder, fsync, rename: readers see the old file or the
/// whole new one, and a SIGKILL leaves at most a temporary file (removed on the next write).
enum AtomicFile {
    static func write(_ data: Data, to url: URL) throws {
        try write(to: url) { sink in try sink(data) }
    }

    /// Streams what `produce` hands its sink into the temporary file, then fsyncs and renames.
    static func write(to url: URL, _ produce: (@escaping (Data) throws -> Void) throws -> Void) throws {
        let dir = url.deletingLastPathComponent()
        // Unique per writer: two processes writing one name never share (or delete) a temporary.
        let tmp = dir.appendingPathComponent(".\(url.lastPathComponent).\(getpid()).\(UUID().uuidString.prefix(8)).tmp")
        guard FileManager.default.createFile(atPath: tmp.path, contents: nil) else {
            throw ExportError.invalid("cannot create \(tmp.path)")
        }
        let handle = try FileHandle(forWritingTo: tmp)
        do {
            try produce { try handle.write(contentsOf: $0) }
            try handle.synchronize()
            try handle.close()
        } catch let error as ExportError {
            try? handle.close()
            try? FileManager.default.removeItem(at: tmp)
            throw error
        } catch {
            try? handle.close()
            try? FileManager.default.removeItem(at: tmp)
            throw ExportError.invalid("cannot write \(tmp.path): \(error.localizedDescription)")
        }
        guard rename(tmp.path, url.path) == 0 else {
            throw ExportError.invalid("cannot rename \(tmp.path) to \(url.path): \(String(cString: strerror(errno)))")
        }
    }
}

import Foundation
import PIDiffModel
import PIDiffCatalog

/// `pidiff-data encode`: export the split if needed, run `pidiff encode`, record every encoding in
/// the catalog keyed on (source SHA-256, preprocessing fingerprint, model fingerprint). A second
/// run finds everything recorded and encodes nothing; a changed model or input re-encodes exactly
/// what depends on it (the Python side also skips shards whose inputs and models are unchanged).
public struct EncodeDriver: Sendable {
    public var catalogPath: String
    public var split: String
    public var outDirectory: URL
    public var e4e: String
    public var sd: String
    public var extraArguments: [String] = []
    public var trainer = TrainerProcess()
    /// How the split is exported into `shardDirectory` first (grouping, shard size, label mapping):
    /// the same settings as the caller's own export, or it would rewrite those shards differently.
    public var exporter: ShardExporter

    public var shardDirectory: URL { outDirectory.appendingPathComponent("shards") }
    public var encodedDirectory: URL { outDirectory.appendingPathComponent("encoded") }

    public init(catalogPath: String, split: String, outDirectory: URL, e4e: String, sd: String) {
        self.catalogPath = catalogPath
        self.split = split
        self.outDirectory = outDirectory
        self.e4e = e4e
        self.sd = sd
        self.exporter = ShardExporter(catalogPath: catalogPath, split: split, outDirectory: outDirectory.appendingPathComponent("shards"))
    }

    /// The Python side's VAE fingerprint rule: one weight file → its SHA-256; several → SHA-256 of
    /// their `name:sha256` lines.
    static func vaeFingerprint(sd: String) throws -> String {
        let dir = URL(fileURLWithPath: sd).appendingPathComponent("vae")
        let files = try FileManager.default.contentsOfDirectory(atPath: dir.path)
            .filter { $0.hasSuffix(".safetensors") || $0.hasSuffix(".bin") }.sorted()
        guard !files.isEmpty else { throw TrainerError.output("\(dir.path): no VAE weights (.safetensors or .bin)") }
        let digests = try files.map { try Hashing.sha256Hex(fileAt: dir.appendingPathComponent($0)) }
        if files.count == 1 { return digests[0] }
        return Hashing.sha256Hex(Data(zip(files, digests).map { "\($0):\($1)\n" }.joined().utf8))
    }

    static func modelFingerprint(e4eSHA: String, vaeSHA: String) -> String { Hashing.fingerprint(["e4e": e4eSHA, "vae": vaeSHA]) }

    public struct Summary: Codable, Sendable {
        public var samples: Int
        public var alreadyEncoded: Int
        public var recorded: Int
        public var shards: [String]
        public var encodedDirectory: String
        enum CodingKeys: String, CodingKey {
            case samples, alreadyEncoded = "already_encoded", recorded, shards, encodedDirectory = "encoded_directory"
        }
    }

    public func run() throws -> Summary {
        let shardDir = shardDirectory, encodedDir = encodedDirectory
        guard exporter.outDirectory.standardizedFileURL.path == shardDir.standardizedFileURL.path, exporter.split == split else {
            throw TrainerError.output("encode: the exporter must write split \(split) into \(shardDir.path)")
        }
        let index = try exporter.run()
        // Encodings of shards the split no longer has (it now fits in fewer) would be trained on.
        try ShardExporter.removeStaleShards(of: split, in: encodedDir, keeping: Set(index.shards.map(\.name)), ext: "safetensors")
        let catalog = try Catalog(path: catalogPath)
        let sourceOfKey = Dictionary(uniqueKeysWithValues: index.sources.map { ($0.key, $0.sha256) })
        let preprocessing = Hashing.fingerprint(["ingest": index.ingestFingerprint, "mask": index.maskFingerprint])
        let e4eSHA = try Hashing.sha256Hex(fileAt: URL(fileURLWithPath: e4e)), vaeSHA = try Self.vaeFingerprint(sd: sd)
        let model = Self.modelFingerprint(e4eSHA: e4eSHA, vaeSHA: vaeSHA)
        let keys = index.sources.map { (sha256: $0.sha256, preprocessing: preprocessing) }
        let done = try catalog.encodedCount(keys, model: model)
        let shardPaths = index.shards.map { shardDir.appendingPathComponent($0.name).path }
        // The catalog remembers every model a sample was encoded with, but the folder holds one
        // encoding per shard: skip only when the files there are this model's too.
        let filesCurrent = index.shards.allSatisfy { shard in
            let file = encodedDir.appendingPathComponent(shard.name.replacingOccurrences(of: ".tar", with: ".safetensors"))
            guard let meta = try? SafetensorsHeader.metadata(file) else { return false }
            // …made from this very tar: a re-export may reuse a shard's name for other samples.
            return meta["e4e_sha256"] == e4eSHA && meta["vae_sha256"] == vaeSHA && meta["source_sha256"] == shard.sha256
        }
        // Arguments for `pidiff encode` (--force, another storage dtype…) may change the files: let it decide.
        if done == index.samples && filesCurrent && extraArguments.isEmpty {
            return Summary(samples: index.samples, alreadyEncoded: done, recorded: 0, shards: shardPaths, encodedDirectory: encodedDir.path)
        }
        try trainer.run(["encode", "--shards"] + shardPaths + ["--e4e", e4e, "--sd", sd, "--out", encodedDir.path] + extraArguments)

        // Record what the Python side wrote, from its own metadata.
        var rows: [(sha256: String, preprocessing: String, model: String, file: String, key: String)] = []
        for shard in index.shards {
            let file = encodedDir.appendingPathComponent(shard.name.replacingOccurrences(of: ".tar", with: ".safetensors"))
            let meta = try SafetensorsHeader.metadata(file)
            guard let keysJSON = meta["keys"], let e4eSHA = meta["e4e_sha256"], let vaeSHA = meta["vae_sha256"],
                  let keys = try JSONSerialization.jsonObject(with: Data(keysJSON.utf8)) as? [String] else {
                throw TrainerError.output("\(file.path): metadata lacks keys/e4e_sha256/vae_sha256")
            }
            let m = Self.modelFingerprint(e4eSHA: e4eSHA, vaeSHA: vaeSHA)
            for key in keys {
                guard let sha256 = sourceOfKey[key] else { throw TrainerError.output("\(file.path): unknown sample key \(key)") }
                rows.append((sha256, preprocessing, m, file.lastPathComponent, key))
            }
        }
        let recorded = try catalog.recordEncodings(rows)
        return Summary(samples: index.samples, alreadyEncoded: done, recorded: recorded, shards: shardPaths, encodedDirectory: encodedDir.path)
    }
}

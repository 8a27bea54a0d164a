import Foundation
import PIDiffModel
import PIDiffCatalog

/// `pidiff-data encode`: export the split unless the export is up to date, run `pidiff encode`
/// (which reuses every encoded shard whose inputs and models are unchanged: the model
/// fingerprints are computed on the Python side only), then record every encoding in the catalog
/// keyed on (source SHA-256, preprocessing fingerprint, model fingerprint), read from the files'
/// metadata.
public struct EncodeDriver: Sendable {
    public var catalogPath: String
    public var split: String
    public var outDirectory: URL
    public var e4e: String
    public var sd: String
    public var extraArguments: [String] = []
    /// Encoding processes (one per GPU) through `pidiff launch`; shards are spread over them.
    public var processes: Int = 1
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
        // An up-to-date export (same plan, shards verified against the index) is kept as it is.
        let index = try exporter.run()
        // Encodings of shards the split no longer has (it now fits in fewer) would be trained on.
        try ShardExporter.removeStaleShards(of: split, in: encodedDir, keeping: Set(index.shards.map(\.name)), ext: "safetensors")
        let shardPaths = index.shards.map { shardDir.appendingPathComponent($0.name).path }
        // `pidiff encode` decides what is up to date (it alone hashes the models) and reuses it.
        try trainer.run(["encode", "--shards"] + shardPaths + ["--e4e", e4e, "--sd", sd, "--out", encodedDir.path] + extraArguments,
                        processes: processes)

        // Record what the Python side wrote, from its own metadata.
        let catalog = try Catalog(path: catalogPath)
        let sourceOfKey = Dictionary(uniqueKeysWithValues: index.sources.map { ($0.key, $0.sha256) })
        let preprocessing = Hashing.fingerprint(["ingest": index.ingestFingerprint, "mask": index.maskFingerprint])
        var rows: [(sha256: String, preprocessing: String, model: String, file: String, key: String)] = []
        for shard in index.shards {
            let file = encodedDir.appendingPathComponent(shard.name.replacingOccurrences(of: ".tar", with: ".safetensors"))
            let meta = try SafetensorsHeader.metadata(file)
            guard let keysJSON = meta["keys"], let e4eSHA = meta["e4e_sha256"], let vaeSHA = meta["vae_sha256"],
                  let keys = try JSONSerialization.jsonObject(with: Data(keysJSON.utf8)) as? [String] else {
                throw TrainerError.output("\(file.path): metadata lacks keys/e4e_sha256/vae_sha256")
            }
            guard meta["source_sha256"] == shard.sha256 else {
                throw TrainerError.output("\(file.path): encodes another version of \(shard.name) (source_sha256 differs); run encode again")
            }
            let model = Self.modelFingerprint(e4eSHA: e4eSHA, vaeSHA: vaeSHA)
            for key in keys {
                guard let sha256 = sourceOfKey[key] else { throw TrainerError.output("\(file.path): unknown sample key \(key)") }
                rows.append((sha256, preprocessing, model, file.lastPathComponent, key))
            }
        }
        let alreadyRecorded = try Dictionary(grouping: rows, by: \.model).reduce(0) { n, group in
            n + (try catalog.encodedCount(group.value.map { (sha256: $0.sha256, preprocessing: $0.preprocessing) }, model: group.key))
        }
        let recorded = try catalog.recordEncodings(rows)
        return Summary(samples: index.samples, alreadyEncoded: alreadyRecorded, recorded: recorded, shards: shardPaths,
                       encodedDirectory: encodedDir.path)
    }
}

import Foundation
import PIDiffModel
import PIDiffCatalog

/// `train`: per-identity PIDiff customisation (mapper + Style Cross-Attention) with `pidiff train`
/// on the split's encoded files; weights under `train/<identity folder>/pidiff.safetensors`. The
/// run is recorded in the catalog.
public struct TrainStage: PipelineStage {
    public static let name = "train"
    public struct Parameters: Sendable {
        public var split: String
        /// Extra `pidiff train` flags.
        public var arguments: [String] = []
        /// Training processes, one per GPU, through `accelerate launch`.
        public var processes: Int = 1
        /// Skip when the split's encoded files (by their recorded sources and models), the flags
        /// and the base model are those the weights in `out` were trained from: a `run` from cron
        /// does not retrain every identity when nothing changed. New photos reach training through
        /// a new split (splits are immutable); new encodings of the same split retrain it.
        public var skipUnchanged: Bool = false
        /// Encoded folder and output folder (`nil`: the workspace's `encoded/` and `train/`).
        public var encoded: URL?
        public var out: URL?
        public init(split: String, arguments: [String] = [], processes: Int = 1, encoded: URL? = nil, out: URL? = nil) {
            self.split = split
            self.arguments = arguments
            self.processes = processes
            self.encoded = encoded
            self.out = out
        }
    }
    public var parameters: Parameters

    public init(_ parameters: Parameters) { self.parameters = parameters }
    /// From a pipeline file (cron): skip training when nothing it reads changed since the last run
    /// (see `skipUnchanged`).
    public init(pipeline: PipelineConfig, run: RunSpec) throws {
        var parameters = Parameters(split: try run.splitName(), arguments: run.trainArguments, processes: run.trainProcesses)
        parameters.skipUnchanged = true
        self.init(parameters)
    }

    public func run(in workspace: Workspace) async throws -> StageReport {
        let p = parameters, started = Date()
        let catalog = try workspace.catalog()
        _ = try catalog.splitItems(p.split) // the split must exist
        let sd = try workspace.sdModel(for: Self.name)
        let encoded = p.encoded ?? workspace.encoded, out = p.out ?? workspace.train
        let lock = try CatalogLock(outputFolder: out)
        defer { withExtendedLifetime(lock) {} }
        try OutputPath.markAsOutput(out)
        let record = InputsRecord(file: out.appendingPathComponent(".pidiff-data-trained.json"),
                                  inputs: try Self.inputs(encoded: encoded, split: p.split, arguments: p.arguments, sd: sd))
        if p.skipUnchanged && record.isCurrent {
            return StageReport(stage: Self.name, lines: ["split \(p.split): nothing changed since the weights in \(out.path) were trained; not retrained"],
                               counts: ["split": p.split, "unchanged": "1"], artefacts: ["weights": out.path])
        }
        try record.making {
            try workspace.trainer.run(["train", "--encoded", encoded.path, "--split", p.split, "--sd", sd, "--out", out.path] + p.arguments,
                                      processes: p.processes)
        }
        try catalog.recordTrainingRun(split: p.split, outDirectory: out.path, started: started, arguments: p.arguments, processes: p.processes)
        return StageReport(stage: Self.name, lines: ["trained split \(p.split) → \(out.path)"], counts: ["split": p.split, "unchanged": "0"],
                           artefacts: ["weights": out.path])
    }

    /// What training reads, as the encoded files' own metadata says (sources, models, format),
    /// plus the flags and the base model (its path, and its files' sizes and times).
    static func inputs(encoded: URL, split: String, arguments: [String], sd: String) throws -> [String: String] {
        var inputs = ["split": split, "arguments": arguments.joined(separator: "\u{1f}"), "sd": sd, "sd_files": InputsRecord.baseModel(sd)]
        let files = ((try? FileManager.default.contentsOfDirectory(atPath: encoded.path)) ?? [])
            .filter { $0.hasPrefix(split + "-") && $0.hasSuffix(".safetensors") }.sorted()
        for file in files {
            let meta = try SafetensorsHeader.metadata(encoded.appendingPathComponent(file))
            inputs["encoded/" + file] = ["format", "source_sha256", "e4e_sha256", "vae_sha256", "storage_dtype", "count"]
                .map { meta[$0] ?? "" }.joined(separator: " ")
        }
        return inputs
    }
}

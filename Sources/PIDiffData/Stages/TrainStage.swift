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
    public init(pipeline: PipelineConfig, run: RunSpec) throws {
        self.init(Parameters(split: try run.splitName(), arguments: run.trainArguments, processes: run.trainProcesses))
    }

    public func run(in workspace: Workspace) async throws -> StageReport {
        let p = parameters, started = Date()
        let catalog = try workspace.catalog()
        _ = try catalog.splitItems(p.split) // the split must exist
        let sd = try workspace.sdModel(for: Self.name)
        let encoded = p.encoded ?? workspace.encoded, out = p.out ?? workspace.train
        let lock = try CatalogLock(outputFolder: out)
        defer { withExtendedLifetime(lock) {} }
        try workspace.trainer.run(["train", "--encoded", encoded.path, "--split", p.split, "--sd", sd, "--out", out.path] + p.arguments,
                                  processes: p.processes)
        try catalog.recordTrainingRun(split: p.split, outDirectory: out.path, started: started, arguments: p.arguments, processes: p.processes)
        return StageReport(stage: Self.name, lines: ["trained split \(p.split) → \(out.path)"], counts: ["split": p.split],
                           artefacts: ["weights": out.path])
    }
}

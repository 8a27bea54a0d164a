import Foundation
import PIDiffModel
import PIDiffCatalog

/// `sample`: pictures from every trained identity with `pidiff sample` — one prompt, the weights
/// under `train/<identity folder>/`, into `samples/<identity folder>/`.
public struct SampleStage: PipelineStage {
    public static let name = "sample"
    public struct Parameters: Sendable {
        public var prompt: String = "a photo of S* reading in the library"
        /// Extra `pidiff sample` flags.
        public var arguments: [String] = []
        /// Trained weights, encoded files and output (`nil`: the workspace's `train/`, `encoded/`, `samples/`).
        public var weights: URL?
        public var encoded: URL?
        public var out: URL?
        public init(prompt: String = "a photo of S* reading in the library", arguments: [String] = [], weights: URL? = nil, encoded: URL? = nil, out: URL? = nil) {
            self.prompt = prompt
            self.arguments = arguments
            self.weights = weights
            self.encoded = encoded
            self.out = out
        }
    }
    public var parameters: Parameters

    public init(_ parameters: Parameters) { self.parameters = parameters }
    public init(pipeline: PipelineConfig, run: RunSpec) throws {
        self.init(Parameters(prompt: run.samplePrompt, arguments: run.sampleArguments))
    }

    public func run(in workspace: Workspace) async throws -> StageReport {
        let p = parameters
        let trained = p.weights ?? workspace.train, encoded = p.encoded ?? workspace.encoded, out = p.out ?? workspace.samples
        let lock = try CatalogLock(outputFolder: out)
        defer { withExtendedLifetime(lock) {} }
        let sd = try workspace.sdModel(for: Self.name)
        // `pidiff train --split` writes one folder per identity: TRAIN/<folder>/pidiff.safetensors.
        let folders = ((try? FileManager.default.contentsOfDirectory(atPath: trained.path)) ?? []).sorted().filter {
            FileManager.default.fileExists(atPath: trained.appendingPathComponent("\($0)/pidiff.safetensors").path)
        }
        guard !folders.isEmpty else {
            throw PipelineError.invalid("sample", "no trained weights (*/pidiff.safetensors) under \(trained.path): run the train stage first")
        }
        for folder in folders {
            try workspace.trainer.run(["sample", "--sd", sd, "--weights", trained.appendingPathComponent("\(folder)/pidiff.safetensors").path,
                                       "--prompt", p.prompt, "--out", out.appendingPathComponent(folder).path, "--encoded", encoded.path] + p.arguments)
        }
        return StageReport(stage: Self.name, lines: ["sampled \(folders.count) identities → \(out.path)"],
                           counts: ["identities": "\(folders.count)"], artefacts: ["samples": out.path])
    }
}

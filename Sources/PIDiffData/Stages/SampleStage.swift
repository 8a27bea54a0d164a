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
        /// Skip an identity sampled before from the same weights (by SHA-256), prompt, flags and base
        /// model (a pipeline file's run does; a command samples again).
        public var skipUnchanged: Bool = false
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
        var parameters = Parameters(prompt: run.samplePrompt, arguments: run.sampleArguments)
        parameters.skipUnchanged = true
        self.init(parameters)
    }

    public func run(in workspace: Workspace) async throws -> StageReport {
        let p = parameters
        let trained = p.weights ?? workspace.train, encoded = p.encoded ?? workspace.encoded, out = p.out ?? workspace.samples
        let lock = try CatalogLock(outputFolder: out)
        defer { withExtendedLifetime(lock) {} }
        try OutputPath.markAsOutput(out) // generated pictures are never ingested as photos
        let sd = try workspace.sdModel(for: Self.name)
        // `pidiff train --split` writes one folder per identity: TRAIN/<folder>/pidiff.safetensors.
        let folders = ((try? FileManager.default.contentsOfDirectory(atPath: trained.path)) ?? []).sorted().filter {
            FileManager.default.fileExists(atPath: trained.appendingPathComponent("\($0)/pidiff.safetensors").path)
        }
        guard !folders.isEmpty else {
            throw PipelineError.invalid("sample", "no trained weights (*/pidiff.safetensors) under \(trained.path): run the train stage first")
        }
        var skipped = 0
        for folder in folders {
            let weights = trained.appendingPathComponent("\(folder)/pidiff.safetensors")
            // What the pictures were made from: unchanged, they are not made again.
            let record = InputsRecord(file: out.appendingPathComponent("\(folder)/.pidiff-data-sampled.json"), inputs: [
                                          "weights_sha256": try Hashing.sha256Hex(fileAt: weights), "prompt": p.prompt,
                                          "arguments": p.arguments.joined(separator: "\u{1f}"), "sd": sd, "sd_files": InputsRecord.baseModel(sd),
                                          "encoded": encoded.path])
            if p.skipUnchanged && record.isCurrent {
                skipped += 1
                continue
            }
            try record.making {
                try workspace.trainer.run(["sample", "--sd", sd, "--weights", weights.path, "--prompt", p.prompt,
                                           "--out", out.appendingPathComponent(folder).path, "--encoded", encoded.path] + p.arguments)
            }
        }
        return StageReport(stage: Self.name, lines: ["sampled \(folders.count - skipped) identities, \(skipped) unchanged since their last samples → \(out.path)"],
                           counts: ["identities": "\(folders.count - skipped)", "unchanged": "\(skipped)"], artefacts: ["samples": out.path])
    }
}

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
        /// does not retrain every identity when nothing changed. When something did, the trainer
        /// runs with `--skip-unchanged` and keeps each identity whose weights were trained from the
        /// same samples, recipe and base model (a style photo added to one identity retrains that
        /// one). New photos reach training through a new split (splits are immutable).
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
        let identities = Set(try catalog.splitItems(p.split).map(\.identity)) // the split must exist
        let sd = try workspace.sdModel(for: Self.name)
        let encoded = p.encoded ?? workspace.encoded, out = p.out ?? workspace.train
        let lock = try CatalogLock(outputFolder: out)
        defer { withExtendedLifetime(lock) {} }
        try OutputPath.markAsOutput(out)
        let record = InputsRecord(file: out.appendingPathComponent(".pidiff-data-trained.json"),
                                  inputs: try Self.inputs(encoded: encoded, split: p.split, arguments: p.arguments, sd: sd))
        if p.skipUnchanged && record.isCurrent {
            return StageReport(stage: Self.name, lines: ["split \(p.split): nothing changed since the weights in \(out.path) were trained; "
                                                         + "\(identities.count) identities not retrained"],
                               counts: ["split": p.split, "trained": "0", "unchanged": "\(identities.count)"], artefacts: ["weights": out.path])
        }
        // (Not with --resume, which keeps finished weights itself: the trainer refuses the pair.)
        let skipFlag = p.skipUnchanged && !p.arguments.contains("--skip-unchanged") && !p.arguments.contains("--resume") ? ["--skip-unchanged"] : []
        // The split's weights in `out` before and after, by file identity and time: written by
        // this run, or kept from an earlier one (not by the clock, which a shared file system skews).
        func weights() -> [String: String] {
            var found: [String: String] = [:]
            for folder in (try? FileManager.default.contentsOfDirectory(atPath: out.path)) ?? [] {
                let file = out.appendingPathComponent("\(folder)/pidiff.safetensors")
                var info = stat()
                guard stat(file.path, &info) == 0, let identity = (try? SafetensorsHeader.metadata(file))?["identity"],
                      identities.contains(identity) else { continue }
                found[identity] = "\(info.st_ino) \(info.st_size) \(info.st_mtim.tv_sec) \(info.st_mtim.tv_nsec)"
            }
            return found
        }
        let before = weights()
        try record.making {
            try workspace.trainer.run(["train", "--encoded", encoded.path, "--split", p.split, "--sd", sd, "--out", out.path]
                                      + skipFlag + p.arguments, processes: p.processes)
        }
        try catalog.recordTrainingRun(split: p.split, outDirectory: out.path, started: started, arguments: p.arguments, processes: p.processes)
        let after = weights()
        let kept = after.filter { before[$0.key] == $0.value }.count, trained = after.count - kept
        return StageReport(stage: Self.name, lines: ["split \(p.split): \(trained) identities trained, \(kept) kept unchanged → \(out.path)"],
                           counts: ["split": p.split, "trained": "\(trained)", "unchanged": "\(kept)"], artefacts: ["weights": out.path])
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

import Foundation
import PIDiffModel
import PIDiffCatalog

/// `encode`: exports the split into the workspace's `shards/` where the export there is not up to
/// date, runs `pidiff encode` (e4e w+ and VAE latent distributions, one safetensors per shard, into
/// `encoded/`) and records every encoding in the catalog.
public struct EncodeStage: PipelineStage {
    public static let name = "encode"
    public struct Parameters: Sendable {
        /// How the split is exported first (its `out` is ignored: shards go to the workspace).
        public var export: ExportStage.Parameters
        /// Extra `pidiff encode` flags.
        public var arguments: [String] = []
        /// Encoding processes, one per GPU (shards are spread over them).
        public var processes: Int = 1
        public init(export: ExportStage.Parameters, arguments: [String] = [], processes: Int = 1) {
            self.export = export
            self.arguments = arguments
            self.processes = processes
        }
    }
    public var parameters: Parameters

    public init(_ parameters: Parameters) { self.parameters = parameters }
    public init(pipeline: PipelineConfig, run: RunSpec) throws {
        self.init(Parameters(export: ExportStage.Parameters(split: try run.splitName()), processes: run.trainProcesses))
    }

    public func run(in workspace: Workspace) async throws -> StageReport {
        let lock = try CatalogLock(outputFolder: workspace.work)
        defer { withExtendedLifetime(lock) {} }
        try OutputPath.markAsOutput(workspace.work)
        var driver = EncodeDriver(catalogPath: workspace.catalogPath, split: parameters.export.split, outDirectory: workspace.work,
                                  e4e: try workspace.e4eModel(for: Self.name), sd: try workspace.sdModel(for: Self.name))
        driver.exporter = ExportStage(parameters.export).exporter(in: workspace, folder: workspace.shards)
        driver.trainer = workspace.trainer
        driver.extraArguments = parameters.arguments
        driver.processes = parameters.processes
        let s = try driver.run()
        return StageReport(stage: Self.name,
                           lines: ["encode \(parameters.export.split): \(s.samples) samples, \(s.alreadyEncoded) already encoded, \(s.recorded) recorded or moved → \(s.encodedDirectory)"],
                           counts: ["samples": "\(s.samples)", "recorded": "\(s.recorded)"],
                           artefacts: ["shards": workspace.shards.path, "encoded": s.encodedDirectory], json: s)
    }
}

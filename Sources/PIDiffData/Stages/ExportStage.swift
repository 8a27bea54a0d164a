import Foundation
import PIDiffModel
import PIDiffCatalog

/// `export`: a split as deterministic WebDataset shards `NAME-000000.tar`… plus `NAME.index.json`
/// (Docs/shard-format.md), written atomically; complete shards are kept.
public struct ExportStage: PipelineStage {
    public static let name = "export"
    public struct Parameters: Sendable {
        public var split: String
        public var grouping: ShardExporter.Grouping = .identity
        public var maxShardBytes: Int = 1_000_000_000
        /// Seed of the mixed order.
        public var seed: Int = 0
        /// Shard folder (`nil`: the workspace's `shards/`).
        public var out: URL?
        /// The 512 training image's framing.
        public var view: ShardExporter.View = .aligned
        public init(split: String, grouping: ShardExporter.Grouping = .identity, maxShardBytes: Int = 1_000_000_000, seed: Int = 0, out: URL? = nil,
                    view: ShardExporter.View = .aligned) {
            self.view = view
            self.split = split
            self.grouping = grouping
            self.maxShardBytes = maxShardBytes
            self.seed = seed
            self.out = out
        }
    }
    public var parameters: Parameters

    public init(_ parameters: Parameters) { self.parameters = parameters }
    public init(pipeline: PipelineConfig, run: RunSpec) throws { self.init(Parameters(split: try run.splitName())) }

    /// The exporter these parameters describe, writing into `folder`.
    func exporter(in workspace: Workspace, folder: URL) -> ShardExporter {
        var exporter = ShardExporter(catalogPath: workspace.catalogPath, split: parameters.split, outDirectory: folder)
        exporter.grouping = parameters.grouping
        exporter.maxShardBytes = parameters.maxShardBytes
        exporter.seed = parameters.seed
        exporter.labelMapping = workspace.config.labels
        exporter.view = parameters.view
        exporter.progress = workspace.progress
        return exporter
    }

    public func run(in workspace: Workspace) async throws -> StageReport {
        let folder = parameters.out ?? workspace.shards
        let index = try exporter(in: workspace, folder: folder).run()
        return StageReport(stage: Self.name,
                           lines: ["exported \(index.samples) samples in \(index.shards.count) shards to \(folder.path) (\(index.written) written, \(index.reused) already complete)"],
                           counts: ["shards": "\(index.shards.count)", "samples": "\(index.samples)"], artefacts: ["shards": folder.path], json: index)
    }
}

extension RunSpec {
    /// The split export, encode and train work on: `run.select.name`.
    func splitName() throws -> String {
        guard let name = select?.name else { throw PipelineError.invalid("run.select", "export/encode/train need run.select.name") }
        return name
    }
}

import Foundation
import PIDiffModel

/// `ingest`: sources → scan → read → decode → detect → landmarks → align → quality → crops →
/// catalog (the worker pipeline in `Workers/IngestPipeline.swift`).
public struct IngestStage: PipelineStage {
    public static let name = "ingest"
    public struct Parameters: Sendable {
        public var sources: [String]
        public init(sources: [String]) { self.sources = sources }
    }
    public var parameters: Parameters

    public init(sources: [String]) { parameters = Parameters(sources: sources) }
    public init(pipeline: PipelineConfig, run: RunSpec) throws {
        self.init(sources: try run.sources.map(RunSpec.expand))
    }

    public func run(in workspace: Workspace) async throws -> StageReport {
        let summary = try await IngestPipeline(
            sources: parameters.sources, catalogPath: workspace.catalogPath, config: workspace.config,
            models: workspace.faceModels, dataRoot: workspace.dataRoot, showProgress: workspace.showProgress).run()
        let counts = summary.counts.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        let head = String(format: "ingest run %lld: %@ in %.1f s (%.2f images/s)", summary.runID, counts, summary.seconds, summary.imagesPerSecond)
        return StageReport(stage: Self.name, outcome: summary.errorCount > 0 ? .partial : .success,
                           lines: [head] + listed(summary.problems, more: "pidiff-data status"),
                           warnings: summary.replacementWarning.map { [$0] } ?? [],
                           counts: summary.counts.asCounts, artefacts: ["catalog": workspace.catalogPath, "data_root": summary.dataRoot],
                           json: summary)
    }
}

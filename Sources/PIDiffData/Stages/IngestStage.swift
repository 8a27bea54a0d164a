import Foundation
import PIDiffModel

/// `ingest`: sources → scan → read → decode → detect → landmarks → align → quality → crops →
/// catalog (the worker pipeline in `Workers/IngestPipeline.swift`).
public struct IngestStage: PipelineStage {
    public static let name = "ingest"
    public struct Parameters: Sendable {
        public var sources: [String]
        /// Only this partition's items (`--partition K/N`).
        public var partition: Partition?
        public init(sources: [String], partition: Partition? = nil) { self.sources = sources; self.partition = partition }
    }
    public var parameters: Parameters

    public init(sources: [String], partition: Partition? = nil) { parameters = Parameters(sources: sources, partition: partition) }
    public init(pipeline: PipelineConfig, run: RunSpec) throws {
        self.init(sources: try run.sources.map(RunSpec.expand))
    }

    public func run(in workspace: Workspace) async throws -> StageReport {
        var pipeline = IngestPipeline(sources: parameters.sources, catalogPath: workspace.catalogPath, config: workspace.config,
                                      models: workspace.faceModels, dataRoot: workspace.dataRoot, progress: workspace.progress)
        pipeline.partition = parameters.partition
        let summary = try await pipeline.run()
        let counts = summary.counts.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        let head = String(format: "ingest run %lld: %@ in %.1f s (%.2f images/s)", summary.runID, counts, summary.seconds, summary.imagesPerSecond)
        var lines = [head] + summary.problems.prefix(20).map { "  \($0)" }
        if summary.problemCount > 20 { lines.append("  … \(summary.problemCount - 20) more problems (pidiff-data status --problems lists them all)") }
        let outcome: StageReport.Outcome = !summary.rejectedSources.isEmpty ? .failed : summary.errorCount > 0 ? .partial : .success
        return StageReport(stage: Self.name, outcome: outcome, lines: lines,
                           warnings: summary.warnings + (summary.replacementWarning.map { [$0] } ?? [])
                               + summary.skippedFolders.map { "not scanned: \($0)" }
                               + summary.rejectedSources.map { "source rejected: \($0)" },
                           counts: summary.counts.asCounts, artefacts: ["catalog": workspace.catalogPath, "data_root": summary.dataRoot],
                           json: summary)
    }
}

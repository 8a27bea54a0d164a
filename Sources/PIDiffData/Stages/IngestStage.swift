import Foundation
import PIDiffModel
import PIDiffCatalog

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
                                      models: workspace.faceModels, dataRoot: workspace.dataRoot, progress: workspace.progress,
                                      python: workspace.trainer.python)
        pipeline.partition = parameters.partition
        let existed = FileManager.default.fileExists(atPath: workspace.catalogPath)
        let rootExisted = FileManager.default.fileExists(atPath: workspace.dataRoot ?? workspace.catalogPath + ".data")
        let summary = try await pipeline.run()
        var discarded: [String] = []
        if !existed && summary.rejectedSources.count == parameters.sources.count {
            try Catalog.discardUnused(path: workspace.catalogPath, removeDataRoot: !rootExisted)
            discarded.append("no source could be read: the new catalog \(workspace.catalogPath) was not kept")
        }
        // Every number says what it counts: files (paths), images (distinct contents), faces.
        let c = summary.counts
        let files = ["analysed", "unchanged", "reused", "unreadable"].reduce(0) { $0 + (c[$1] ?? 0) }
        let outcomes = ImageOutcome.allCases.compactMap { o in c[o.rawValue].map { "\(o.rawValue) \($0)" } }.joined(separator: ", ")
        var head = String(format: "ingest run %lld: %d files: %d analysed, %d unchanged, %d reused (content known), %d unreadable",
                          summary.runID, files, c["analysed"] ?? 0, c["unchanged"] ?? 0, c["reused"] ?? 0, c["unreadable"] ?? 0)
        if let problems = c["scan_problems"] { head += "; \(problems) scan problems" }
        if let vanished = c["vanished"] { head += "; \(vanished) vanished" }
        if let others = c["other_partitions"] { head += "; \(others) in other partitions" }
        head += "; analysed images: " + (outcomes.isEmpty ? "none" : outcomes)
        head += "; \(c["faces_recorded"] ?? 0) faces detected in the analysed files (a copy counts again; status counts faces per distinct image), "
            + "\(c["quality_failed"] ?? 0) analysed files whose selected face fails a quality gate"
        head += String(format: "; %.1f s, %.2f images/s", summary.seconds, summary.imagesPerSecond)
        var lines = [head] + summary.problems.prefix(20).map { "  \($0)" }
        if summary.problemCount > 20 { lines.append("  … \(summary.problemCount - 20) more problems (pidiff-data status --problems lists them all)") }
        let outcome: StageReport.Outcome = !summary.rejectedSources.isEmpty ? .failed : summary.errorCount > 0 ? .partial : .success
        return StageReport(stage: Self.name, outcome: outcome, lines: lines,
                           warnings: summary.warnings + (summary.replacementWarning.map { [$0] } ?? [])
                               + summary.skippedFolders.map { "not scanned: \($0)" }
                               + summary.rejectedSources.map { "source rejected: \($0)" } + discarded,
                           counts: summary.counts.asCounts, artefacts: ["catalog": workspace.catalogPath, "data_root": summary.dataRoot],
                           json: summary)
    }
}

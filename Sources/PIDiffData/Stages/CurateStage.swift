import Foundation
import PIDiffModel

/// `curate`: features for new content, then exact/near duplicates, identity purity and one person
/// under two ids, recorded as decisions (nothing is deleted).
public struct CurateStage: PipelineStage {
    public static let name = "curate"
    public struct Parameters: Sendable {
        /// Record same-person candidates as identity aliases.
        public var applyMerges: Bool
    }
    public var parameters: Parameters

    public init(applyMerges: Bool = false) { parameters = Parameters(applyMerges: applyMerges) }
    public init(pipeline: PipelineConfig, run: RunSpec) throws { self.init() }

    public func run(in workspace: Workspace) async throws -> StageReport {
        let s = try await CurationPipeline(catalogPath: workspace.catalogPath, config: workspace.config, models: workspace.faceModels,
                                           applyMerges: parameters.applyMerges, progress: workspace.progress).run()
        func list(_ d: [String: Int]) -> String { d.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ") }
        let lines = [String(format: "curate run %lld: %d files in %.1f s", s.runID, s.files, s.seconds),
                     "  computed: \(list(s.computed))", "  reused:   \(list(s.reused))",
                     "  findings: \(list(s.decisions))" + (parameters.applyMerges ? "  aliases recorded: \(s.aliasesRecorded)" : "")]
            + listed(s.problems) + ["  see: pidiff-data curate report --catalog \(workspace.catalogPath)"]
        return StageReport(stage: Self.name, lines: lines, counts: s.decisions.asCounts, json: s)
    }
}

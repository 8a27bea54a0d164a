import Foundation
import PIDiffModel

/// `masks`: background removal for every selected face that has no mask under the current mask
/// parameters (GrabCut seeded from the landmarks, or a face-parsing ONNX model), and the e4e input.
public struct MasksStage: PipelineStage {
    public static let name = "masks"
    public struct Parameters: Sendable {
        /// Workers (0: one per core).
        public var workers: Int
    }
    public var parameters: Parameters

    public init(workers: Int = 0) { parameters = Parameters(workers: workers) }
    public init(pipeline: PipelineConfig, run: RunSpec) throws { self.init() }

    public func run(in workspace: Workspace) async throws -> StageReport {
        let s = try await MaskPipeline(catalogPath: workspace.catalogPath, parameters: workspace.config.mask, workers: parameters.workers,
                                   progress: workspace.progress).run()
        let head = String(format: "masks run %lld: %d selected faces masked (%d of them flagged), %.1f s (%.2f faces/s)",
                          s.runID, s.masked, s.failed, s.seconds, s.masksPerSecond)
            + (s.skipped > 0 ? ", \(s.skipped) skipped (crops unreadable)" : "")
        return StageReport(stage: Self.name, outcome: s.failed > 0 || s.skipped > 0 ? .partial : .success,
                           lines: [head] + listed(s.errors, total: s.failed + s.skipped),
                           counts: ["masked": "\(s.masked)", "flagged": "\(s.failed)", "skipped": "\(s.skipped)"], json: s)
    }
}

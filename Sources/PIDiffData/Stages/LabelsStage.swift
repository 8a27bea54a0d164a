import Foundation
import PIDiffModel
import PIDiffCatalog

/// `labels`: the labels per identity as they resolve now (manual > manifest > classifier). Adding
/// labels is `labels import` and `labels classify`; this stage changes nothing.
public struct LabelsStage: PipelineStage {
    public static let name = "labels"
    public struct Parameters: Sendable {}
    public var parameters = Parameters()

    public init() {}
    public init(pipeline: PipelineConfig, run: RunSpec) throws {}

    public func run(in workspace: Workspace) async throws -> StageReport {
        let catalog = try workspace.catalog()
        let labels = try catalog.identityLabels(mapping: workspace.config.labels, classifierFingerprint: try catalog.currentClassifierFingerprint())
        let unknownRace = labels.filter { $0.race.value == "unknown" }.count
        return StageReport(stage: Self.name,
                           lines: ["labels: \(labels.count) identities, \(unknownRace) with unknown race"]
                               + labels.map { "  " + Self.line($0) },
                           counts: ["identities": "\(labels.count)", "unknown_race": "\(unknownRace)"], json: labels)
    }

    /// One identity's labels with where each came from, as `labels show` prints them.
    public static func line(_ l: IdentityLabels) -> String {
        func f(_ r: ResolvedLabel) -> String { r.provenance.map { "\(r.value) (\($0.rawValue), \(String(format: "%.2f", r.confidence)))" } ?? r.value }
        return "\(l.identity): race \(f(l.race)), age \(f(l.age)), gender \(f(l.gender))"
    }
}

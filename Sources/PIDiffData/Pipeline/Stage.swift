import Foundation
import PIDiffModel

/// One step of the pipeline: typed parameters in, a report out, everything else through the
/// workspace. Commands build a stage from their flags and print its report; `pidiff-data run`
/// builds the stages a pipeline file lists and runs them in order. Neither knows what a stage does.
public protocol Stage: Sendable {
    associatedtype Parameters: Sendable
    /// The name a pipeline file's `run.stages` and the logs use.
    static var name: String { get }
    var parameters: Parameters { get }
    func run(in workspace: Workspace) async throws -> StageReport
}

/// A stage that a pipeline file's `run:` section can declare: it knows how to read its parameters
/// from the file.
public protocol PipelineStage: Stage {
    init(pipeline: PipelineConfig, run: RunSpec) throws
}

/// What a stage did: one summary line and details for people, counts for logs, artefact paths for
/// the next stage and the user, and the object `--json` prints.
public struct StageReport: Sendable {
    /// `partial`: the stage finished but recorded some items as failed (they have reasons).
    /// `failed`: it finished what it could, but part of its input was refused as a whole (a
    /// source that is neither a folder nor a manifest): commands exit 1, `run` stops there.
    public enum Outcome: String, Codable, Sendable { case success, partial, failed }

    public var stage: String
    public var outcome: Outcome
    /// The first line sums the stage up; the others detail it (problems, cells, …).
    public var lines: [String]
    /// Said on stderr by commands and as warnings in `run`'s log.
    public var warnings: [String]
    public var counts: [String: String]
    public var artefacts: [String: String]
    /// What `--json` prints (`nil`: the stage has no JSON form beyond its counts).
    public var json: (any Encodable & Sendable)?

    public init(stage: String, outcome: Outcome = .success, lines: [String], warnings: [String] = [],
                counts: [String: String] = [:], artefacts: [String: String] = [:], json: (any Encodable & Sendable)? = nil) {
        self.stage = stage
        self.outcome = outcome
        self.lines = lines
        self.warnings = warnings
        self.counts = counts
        self.artefacts = artefacts
        self.json = json
    }
}

/// Every stage a pipeline file may list, by name; `run` looks stages up here instead of switching
/// over them.
public enum StageRegistry {
    public static let pipelineStages: [any PipelineStage.Type] = [
        FetchStage.self, IngestStage.self, CurateStage.self, MasksStage.self, LabelsStage.self, BalanceReportStage.self,
        SelectStage.self, ExportStage.self, EncodeStage.self, TrainStage.self, SampleStage.self,
    ]

    public static func stage(named name: String) -> (any PipelineStage.Type)? {
        pipelineStages.first { $0.name == name }
    }
}

/// Counts as log metadata.
extension Dictionary where Key == String, Value == Int {
    var asCounts: [String: String] { mapValues(String.init) }
}

/// Human lines for at most `limit` items, and a last line that says how many were left out, of
/// `total` when the items are themselves only the first of more (a capped error list).
func listed(_ items: [String], total: Int? = nil, limit: Int = 20, indent: String = "  ") -> [String] {
    var lines = items.prefix(limit).map { indent + $0 }
    let all = max(total ?? items.count, items.count)
    if all > lines.count { lines.append("\(indent)… \(all - lines.count) more") }
    return lines
}

import Foundation
import PIDiffModel
import PIDiffCatalog

/// `select`: draws a balanced, immutable named split — equal identities per race × age cell,
/// best-then-varied photos per identity, references held out. A split of that name that exists is
/// kept (splits are immutable) unless `refuseExisting`; different drawing parameters are a warning.
public struct SelectStage: PipelineStage {
    public static let name = "select"
    public typealias Parameters = RunSpec.Select
    public var parameters: Parameters
    /// A command refuses an existing name; `run` keeps the split it drew before.
    public var refuseExisting: Bool

    public init(_ parameters: Parameters, refuseExisting: Bool = true) {
        self.parameters = parameters
        self.refuseExisting = refuseExisting
    }
    public init(pipeline: PipelineConfig, run: RunSpec) throws {
        guard let select = run.select else { throw PipelineError.invalid("run.select", "the select stage needs run.select {name, identities}") }
        self.init(select, refuseExisting: false)
    }

    public func run(in workspace: Workspace) async throws -> StageReport {
        let p = parameters
        guard SplitName.isValid(p.name) else { throw SplitError.invalidName(p.name) }
        let lock = try workspace.lock()
        defer { withExtendedLifetime(lock) {} }
        let catalog = try workspace.catalog()
        if !refuseExisting, let stored = try catalog.splitParameters(name: p.name) {
            let differences = p.differences(fromStored: stored)
            let warnings = differences.isEmpty ? [] : [
                "split \(p.name) exists, drawn with other select parameters (\(differences.joined(separator: "; "))); "
                    + "splits are immutable, so it is kept: give select.name a new name to draw another"]
            return StageReport(stage: Self.name, lines: ["split \(p.name) exists; splits are immutable, keeping it"], warnings: warnings,
                               counts: ["split": p.name], artefacts: ["split": p.name])
        }
        let mapping = workspace.config.labels
        let selection = BalancedSelection.select(try catalog.balanceInputs(mapping: mapping), races: mapping.raceCategories,
                                                 ages: mapping.ageCategories, count: p.identities, imagesPerIdentity: p.imagesPerIdentity,
                                                 referenceImages: p.referenceImages, seed: p.seed)
        let recorded = String(decoding: try JSONEncoder.sorted.encode(p), as: UTF8.self)
        try catalog.storeSplit(name: p.name, seed: p.seed, parameters: recorded, selection: selection)
        var lines = ["split \(p.name): \(Set(selection.items.map(\.identity)).count) identities, \(selection.items.count) photos"]
        for q in selection.quotas {
            let note = q.selected < q.quota ? " (short by \(q.quota - q.selected))" : q.selected > q.quota ? " (+\(q.selected - q.quota) redistributed)" : ""
            lines.append("  \(q.race) × \(q.age): \(q.selected) of quota \(q.quota), \(q.available) available\(note)")
        }
        if selection.shortfall > 0 { lines.append("  \(selection.shortfall) identities could not be drawn from any cell") }
        return StageReport(stage: Self.name, lines: lines, counts: ["split": p.name, "photos": "\(selection.items.count)"],
                           artefacts: ["split": p.name], json: selection.quotas)
    }
}

import Foundation
import PIDiffModel
import PIDiffNative

/// `balance_report`: identities and usable images per race × age (and gender) cell, with shares and
/// the shortfall against a target; written to `balance.json` in the work folder (and a heatmap).
public struct BalanceReportStage: PipelineStage {
    public static let name = "balance_report"
    public struct Parameters: Sendable {
        public var target: Int
        public var minImages: Int
        public var byGender: Bool
        /// Write the cells as JSON to the workspace's `balance.json` (the run stage does).
        public var writeReport: Bool
        public var heatmap: URL?
    }
    public var parameters: Parameters

    public init(target: Int = 500, minImages: Int = 6, byGender: Bool = false, writeReport: Bool = false, heatmap: URL? = nil) {
        parameters = Parameters(target: target, minImages: minImages, byGender: byGender, writeReport: writeReport, heatmap: heatmap)
    }
    public init(pipeline: PipelineConfig, run: RunSpec) throws {
        self.init(target: run.target, minImages: run.minImages, writeReport: true)
    }

    public func run(in workspace: Workspace) async throws -> StageReport {
        let p = parameters, mapping = workspace.config.labels
        let catalog = try workspace.catalog()
        let inputs = try catalog.balanceInputs(mapping: mapping)
        var warnings: [String] = []
        let unmapped = try catalog.unmappedManifestLabels(mapping: mapping)
        if !unmapped.isEmpty {
            let named = unmapped.prefix(10).map { "\($0.attribute.rawValue) \($0.value.debugDescription) (\($0.identities) identities, \($0.photos) photos)" }
            warnings.append("manifest labels the `labels:` mapping does not place, counted as unknown: " + named.joined(separator: "; ")
                            + (unmapped.count > 10 ? "; … \(unmapped.count - 10) more" : "") + " (map them in the pipeline file's labels: section)")
        }
        let cells = BalanceReport.cells(inputs, races: mapping.raceCategories, ages: mapping.ageCategories,
                                        target: p.target, minImages: p.minImages, byGender: p.byGender)
        var artefacts: [String: String] = [:]
        if p.writeReport {
            try OutputPath.write(try JSONEncoder.sorted.encode(cells), to: workspace.balanceReport)
            artefacts["balance_report"] = workspace.balanceReport.path
        }
        if let heatmap = p.heatmap {
            try OutputPath.write(BalanceReport.heatmap(cells, minImages: p.minImages, target: p.target).pngData(), to: heatmap)
            artefacts["heatmap"] = heatmap.path
        }
        // The first line sums the report up (run's log shows it); the table follows.
        let grid = cells.filter { $0.gender == "all" && $0.race != "all" && $0.shortfall != nil }
        let short = grid.filter { ($0.shortfall ?? 0) > 0 }.count
        let summary = "balance report: \(cells.last?.identities ?? 0) identities with at least \(p.minImages) usable photos; "
            + "\(short) of \(grid.count) known race × age cells short of their share of \(p.target) identities"
        return StageReport(stage: Self.name, lines: [summary] + BalanceReport.table(cells), warnings: warnings,
                           counts: ["identities": "\(cells.last?.identities ?? 0)"], artefacts: artefacts, json: cells)
    }
}

import ArgumentParser
import Foundation
import PIDiffModel

struct PipelineFileCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pipeline",
        abstract: "Pipeline files: print the defaults, or check a file.",
        subcommands: [PipelineDefaultsCommand.self, PipelineCheckCommand.self])
}

struct PipelineDefaultsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "defaults",
        abstract: "Print every stage parameter at its default, with help (this is Pipelines/default.yaml).",
        discussion: "Example: pidiff-data pipeline defaults > my-pipeline.yaml")
    func run() async throws { Swift.print(PipelineConfig.defaultYAML(), terminator: "") }
}

struct PipelineCheckCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Read a pipeline file as the stages would; print the parameters that differ from the defaults.",
        discussion: "Example: pidiff-data pipeline check Pipelines/cron.yaml")
    @Argument(help: "Pipeline file (YAML).") var file: String
    func run() async throws {
        try await runCommand {
            let config = try PipelineConfig.load(URL(fileURLWithPath: file))
            let defaults = PipelineConfig()
            func differences<S: ParameterSection>(_ value: S, _ base: S) -> [String] {
                let now = value.fingerprintPayloadAll, before = base.fingerprintPayloadAll
                return now.keys.sorted().compactMap { now[$0] == before[$0] ? nil : "\(S.section).\($0): \(now[$0] ?? "unset")" }
            }
            let changed = differences(config.ingest, defaults.ingest) + differences(config.crossfaceid, defaults.crossfaceid)
                + differences(config.huggingface, defaults.huggingface)
                + differences(config.mask, defaults.mask) + differences(config.curate, defaults.curate)
                + (config.labels == defaults.labels ? [] : ["labels: mapping differs from the default"])
            print("\(file): valid" + (config.run.map { ", run: \($0.stages.map(\.rawValue).joined(separator: " → "))" } ?? ""))
            changed.forEach { print("  \($0)") }
        }
    }
}

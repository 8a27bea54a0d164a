import ArgumentParser
import Foundation
import PIDiffModel
import PIDiffNative
import PIDiffCatalog
import PIDiffData

struct RunCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run the stages a pipeline file declares (its `run:` section), for cron and the demo flow.",
        discussion: """
            Logs are JSON lines on stderr with a run id. Exit status: 0 success, 3 partial (some items were
            recorded as errors), 1 failure (a stage stopped), 75 another run holds the run lock or another command the catalog.
            Example (cron): pidiff-data run --pipeline Pipelines/cron.yaml
            """)
    @Option(help: "Pipeline file with a `run:` section.") var pipeline: String
    @Option(help: "Python with the pidiff package (train/encode/sample stages).") var python: String?
    @Flag(help: "Print the run report (stages, artefact paths) as JSON on stdout.") var json = false

    func run() async throws {
        do {
            let config = try PipelineConfig.load(URL(fileURLWithPath: pipeline))
            guard let spec = config.run else { throw PipelineError.invalid(pipeline, "no `run:` section") }
            let (outcome, report) = try await RunPipeline(config: config, spec: spec, python: python).run()
            if json {
                try report.printJSON()
            } else {
                print("run \(report.runID): \(report.outcome)")
                for s in report.stages { print("  \(s.stage): \(s.result)") }
                for (name, path) in report.artefacts.sorted(by: { $0.key < $1.key }) { print("  \(name): \(path)") }
            }
            if outcome != .success { throw ExitCode(ExitStatus(outcome).rawValue) }
        } catch let exit as ExitCode {
            throw exit
        } catch {
            fail(error)
        }
    }
}

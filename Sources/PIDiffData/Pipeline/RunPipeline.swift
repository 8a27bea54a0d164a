import Foundation
import PIDiffModel
import PIDiffNative
import PIDiffCatalog
import Logging

/// `pidiff-data run`: the declared stages in order, for cron and for the demo. One exclusive run
/// lock per catalog (a second run exits 75 at once), JSON-line logs carrying the run id, and an
/// exit status that tells success (0), partial success (3: some items recorded as errors) and
/// failure (1: a stage stopped).
public struct RunPipeline: Sendable {
    /// `busy`: a stage found the catalog locked by another pidiff-data command (a manual `masks`
    /// while cron runs): the run stops there, like a second run turned away at its lock.
    public enum Outcome: Sendable { case success, failure, partial, busy }

    public var config: PipelineConfig
    public var spec: RunSpec
    public var python: String?

    public init(config: PipelineConfig, spec: RunSpec, python: String? = nil) {
        self.config = config
        self.spec = spec
        self.python = python
    }

    public struct StageResult: Codable, Sendable {
        public var stage: String
        public var result: String
    }

    public struct Report: Codable, Sendable {
        public var runID: String
        public var outcome: String
        public var stages: [StageResult]
        public var artefacts: [String: String]
        enum CodingKeys: String, CodingKey { case runID = "run_id", outcome, stages, artefacts }
    }

    public func run() async throws -> (Outcome, Report) {
        let catalog = try RunSpec.expand(spec.catalog)
        let runLock = try CatalogLock(catalogPath: catalog, scope: "run") // whole-run exclusivity (stages take the catalog lock)
        defer { withExtendedLifetime(runLock) {} }
        let runID = String(UUID().uuidString.lowercased().prefix(12))
        var log = Logger(label: "pidiff-data.run") { JSONLogHandler(label: $0) }
        log[metadataKey: "run_id"] = "\(runID)"
        // stderr stays JSON lines even where native libraries print to it themselves.
        let native = StderrAsJSONLines(metadata: ["run_id": runID])
        defer { native?.stop() }
        let workspace = Workspace(catalogPath: catalog, work: URL(fileURLWithPath: try RunSpec.expand(spec.work ?? (catalog + ".work"))),
                                  config: config, trainerModels: spec.models, trainer: TrainerProcess(python: python), progress: .jsonLines)
        var outcome = Outcome.success
        var stages: [StageResult] = []
        var artefacts: [String: String] = ["catalog": catalog]
        log.info("run started", metadata: ["stages": .array(spec.stages.map { .string($0.rawValue) }), "catalog": "\(catalog)"])

        for name in spec.stages.map(\.rawValue) {
            var stageLog = log
            stageLog[metadataKey: "stage"] = "\(name)"
            native?.set("stage", name)
            let t0 = Date()
            do {
                guard let type = StageRegistry.stage(named: name) else { throw PipelineError.invalid("run.stages", "unknown stage \(name)") }
                // Trainer output (progress bars, library warnings) goes to a log file per stage,
                // named in the log: stderr stays JSON lines.
                var stageWorkspace = workspace
                let trainerLog = workspace.work.appendingPathComponent("logs/\(runID)-\(name).log")
                stageWorkspace.trainer.logFile = trainerLog
                let report = try await type.init(pipeline: config, run: spec).run(in: stageWorkspace)
                if FileManager.default.fileExists(atPath: trainerLog.path) {
                    stageLog.info("trainer output", metadata: ["log": "\(trainerLog.path)"])
                    artefacts["\(name)_log"] = trainerLog.path
                }
                for warning in report.warnings { stageLog.warning("\(warning)") }
                stageLog.info("\(report.lines.first ?? name)", metadata: ["counts": .dictionary(report.counts.mapValues { .string($0) })])
                artefacts.merge(report.artefacts) { $1 }
                if report.outcome == .failed { return finish(failed: name, PipelineError.invalid("run.sources", report.warnings.joined(separator: "; "))) }
                if report.outcome == .partial { outcome = .partial }
                stages.append(StageResult(stage: name, result: String(format: "ok %.1fs", Date().timeIntervalSince(t0))))
            } catch let error as CatalogError {
                switch error { case .locked, .outputLocked: break; default: return finish(failed: name, error) }
                stages.append(StageResult(stage: name, result: "not run: \(error)"))
                stageLog.warning("catalog busy; stopping here, the next run continues", metadata: ["error": "\(error)"])
                log.info("run finished", metadata: ["outcome": "busy"])
                return (.busy, Report(runID: runID, outcome: "busy", stages: stages, artefacts: artefacts))
            } catch {
                return finish(failed: name, error)
            }

            func finish(failed stage: String, _ error: any Error) -> (Outcome, Report) {
                stages.append(StageResult(stage: stage, result: "failed: \(error)"))
                stageLog.error("stage failed", metadata: ["error": "\(error)"])
                log.info("run finished", metadata: ["outcome": "failure"])
                return (.failure, Report(runID: runID, outcome: "failure", stages: stages, artefacts: artefacts))
            }
        }
        let name = outcome == .success ? "success" : "partial"
        log.info("run finished", metadata: ["outcome": "\(name)"])
        return (outcome, Report(runID: runID, outcome: name, stages: stages, artefacts: artefacts))
    }
}

extension RunSpec {
    /// `${VAR}` and `~` expansion; an unset variable is an error naming it.
    static func expand(_ s: String) throws -> String {
        var out = s
        let env = ProcessInfo.processInfo.environment
        while let start = out.range(of: "${"), let end = out.range(of: "}", range: start.upperBound..<out.endIndex) {
            let name = String(out[start.upperBound..<end.lowerBound])
            var value = env[name]
            if value == nil && name == "PIDIFF_CACHE" { value = ModelStore.cacheDirectory.path }
            guard let value else { throw PipelineError.invalid("run", "environment variable \(name) is not set") }
            out.replaceSubrange(start.lowerBound..<end.upperBound, with: value)
        }
        if out.hasPrefix("~/") { out = (env["HOME"] ?? NSHomeDirectory()) + out.dropFirst(1) }
        return out
    }
}

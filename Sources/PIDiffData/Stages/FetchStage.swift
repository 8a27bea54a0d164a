import Foundation
import PIDiffModel

/// `fetch`: URL lists (the web supplement of an identity) → `INBOX/<identity>/<sha256 prefix>.<ext>`
/// and a state row per URL in the catalog (`Workers/FetchPipeline.swift`). Ingest then reads the
/// inbox like any identity-folder source; provenance joins by content.
public struct FetchStage: PipelineStage {
    public static let name = "fetch"
    public struct Parameters: Sendable {
        public var lists: [String]
        public var inbox: String
        /// Fetch again the URLs earlier runs rejected (after a setting that rejected them changed).
        public var retryRejected = false
    }
    public var parameters: Parameters

    public init(lists: [String], inbox: String, retryRejected: Bool = false) {
        parameters = Parameters(lists: lists, inbox: inbox, retryRejected: retryRejected)
    }
    public init(pipeline: PipelineConfig, run: RunSpec) throws {
        guard let fetch = run.fetch else { throw PipelineError.invalid("run.fetch", "the fetch stage needs run.fetch (lists, inbox)") }
        let inbox = try RunSpec.expand(fetch.inbox)
        if run.stages.contains(.ingest) {
            let sources = try run.sources.map { URL(fileURLWithPath: try RunSpec.expand($0)).standardizedFileURL.path }
            guard sources.contains(URL(fileURLWithPath: inbox).standardizedFileURL.path) else {
                throw PipelineError.invalid("run.fetch.inbox", "\(inbox) is not among run.sources, so ingest would not read what fetch stores")
            }
        }
        self.init(lists: try fetch.lists.map(RunSpec.expand), inbox: inbox)
    }

    public func run(in workspace: Workspace) async throws -> StageReport {
        let s = try await FetchPipeline(lists: parameters.lists, inbox: parameters.inbox, catalogPath: workspace.catalogPath,
                                        parameters: workspace.config.fetch, progress: workspace.progress,
                                        retryRejected: parameters.retryRejected).run()
        var head = "fetch run \(s.runID): \(s.listed) URLs listed: \(s.downloaded) downloaded ("
            + String(format: "%.1f MB", Double(s.bytes) / 1e6) + "), \(s.sameContent) same content as a stored image, "
            + "\(s.alreadyDone) stored by earlier runs, \(s.failed) failed (a later run retries them), \(s.rejected) rejected"
        if s.rejectedEarlier > 0 { head += ", \(s.rejectedEarlier) rejected by earlier runs (--retry-rejected fetches them again)" }
        if s.givenUp > 0 { head += ", \(s.givenUp) given up (fetch.max_attempts)" }
        if s.repeatedLines > 0 { head += ", \(s.repeatedLines) repeated lines" }
        head += "; \(s.attempts) HTTP attempts"
        if s.problemCount > 0 { head += "; \(s.problemCount) list problems" }
        head += String(format: "; %.1f s, %.1f images/s", s.seconds, s.downloadsPerSecond)
        var lines = [head] + s.problems.prefix(20).map { "  \($0)" }
        if s.problemCount > 20 { lines.append("  … \(s.problemCount - 20) more problems (pidiff-data status --problems lists them all)") }
        if s.failed + s.rejected > 0 { lines.append("  per-URL errors: pidiff-data fetch --catalog C --failures") }
        let outcome: StageReport.Outcome = !s.rejectedLists.isEmpty ? .failed : (s.failed + s.rejected + s.problemCount > 0 ? .partial : .success)
        return StageReport(stage: Self.name, outcome: outcome, lines: lines,
                           warnings: s.rejectedLists.map { "list rejected: \($0)" },
                           counts: s.counts.asCounts, artefacts: ["inbox": URL(fileURLWithPath: parameters.inbox).standardizedFileURL.path], json: s)
    }
}

import ArgumentParser
import Foundation
import PIDiffModel
import PIDiffCatalog
import PIDiffData

struct FetchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fetch",
        abstract: "Download the photos of URL lists into an inbox of identity folders, with per-URL state in the catalog.",
        discussion: """
            LIST is CSV (.csv), TSV (.tsv) or JSON lines (.jsonl) with the fields identity and url, and
            optionally license and source. Each image is stored once, by content, as
            INBOX/<identity>/<sha256 prefix>.<ext>; `pidiff-data ingest INBOX` then reads it like any photo
            folder, and the URL, licence and source follow the photo into the report and the shards.
            A rerun skips stored URLs and retries failed ones (timeouts, 429, 5xx) up to fetch.max_attempts.
            Loopback, private and link-local addresses are refused unless --allow-private. Parameters:
            the pipeline file's `fetch:` section (Docs/sources.md).

            Examples:
              pidiff-data fetch web.csv --inbox data/inbox --catalog data/catalog.sqlite
              pidiff-data ingest data/inbox --catalog data/catalog.sqlite
              pidiff-data fetch --catalog data/catalog.sqlite --failures
            """
    )

    @Argument(help: "URL lists (.csv, .tsv, .jsonl).")
    var lists: [String] = []

    @Option(help: "Folder the images go to, one folder per identity (created if missing).")
    var inbox: String?

    @OptionGroup var catalogOptions: NewCatalogOptions
    var catalog: String { catalogOptions.catalog }

    @Option(help: "Pipeline file (its `fetch:` section).")
    var pipeline: String?

    @Option(help: "Override fetch.concurrency (downloads at once).")
    var concurrency: Int?

    @Flag(name: .customLong("allow-private"), help: "Fetch from loopback, private and link-local addresses too.")
    var allowPrivate = false

    @Flag(name: .customLong("retry-rejected"), help: "Fetch again the URLs earlier runs rejected (after changing the setting that refused them: --allow-private, fetch.max_bytes, …).")
    var retryRejected = false

    @Flag(help: "List the URLs that failed or were rejected, with their errors, instead of fetching.")
    var failures = false

    @Flag(help: "Print the run summary (or the failures) as JSON.")
    var json = false

    @Flag(help: "Exit non-zero (3) when any URL failed or was rejected.")
    var strict = false

    func validate() throws {
        if failures {
            guard lists.isEmpty, inbox == nil else { throw ValidationError("--failures lists what the catalog holds; give no LIST or --inbox") }
            guard FileManager.default.fileExists(atPath: catalog) else { throw ValidationError("catalog \(catalog): no such catalog") }
            return
        }
        guard !lists.isEmpty else { throw ValidationError("give at least one URL list") }
        guard let inbox, !inbox.isEmpty else { throw ValidationError("give --inbox DIR: the folder the images go to") }
        if let concurrency, concurrency < 1 { throw ValidationError("--concurrency must be at least 1") }
    }

    func run() async throws {
        if failures {
            try await runCommand {
                let rows = try Catalog(path: catalog).fetchFailures()
                if json { try rows.printJSON(); return }
                print("\(rows.count) URLs failed or rejected")
                for r in rows {
                    print("  \(r.status.rawValue) \(r.url) (\(r.identity), \(r.attempts) attempts\(r.httpStatus.map { ", HTTP \($0)" } ?? "")): \(r.error ?? "")")
                }
            }
            return
        }
        try await runCommand {
            var workspace = Workspace(catalogPath: catalog, config: try PipelineConfig.load(pipeline.map { URL(fileURLWithPath: $0) }),
                                      progress: .forStandardError)
            if let concurrency { workspace.config.fetch.concurrency = concurrency }
            if allowPrivate { workspace.config.fetch.allowPrivate = true }
            try await execute(FetchStage(lists: lists, inbox: inbox ?? "", retryRejected: retryRejected), in: workspace, json: json, partialFails: strict)
        }
    }
}

import ArgumentParser
import Foundation
import PIDiffModel
import PIDiffNative
import PIDiffCatalog
import PIDiffData

struct CurateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "curate",
        abstract: "Find exact and near duplicates, impostors and one person under two identities; record decisions.",
        discussion: """
            Nothing is ever deleted: every finding is a decision row with a kind, a reason and a
            score (Docs/catalog.md). Re-running computes features only for new content.

            Examples:
              pidiff-data curate --catalog data/catalog.sqlite
              pidiff-data curate --catalog data/catalog.sqlite --pipeline Pipelines/default.yaml --apply-merges
              pidiff-data curate --catalog data/catalog.sqlite --reset
              pidiff-data curate report --catalog data/catalog.sqlite --json
              pidiff-data curate report --catalog data/catalog.sqlite --sheets review/
            """,
        subcommands: [CurateRunCommand.self, CurateReportCommand.self, CurateOverrideCommand.self],
        defaultSubcommand: CurateRunCommand.self)
}

struct CurateRunCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Curate the catalog (the default of `pidiff-data curate`).")

    @OptionGroup var catalog: CatalogOptions
    @Option(help: "Pipeline file (YAML); its `curate:` section sets radius and thresholds.") var pipeline: String?
    @Option(help: "Folder holding the dlib models (default: $PIDIFF_MODELS or $PIDIFF_CACHE/models).") var models: String?
    @Option(help: "Override the number of workers (default: one per core).") var workers: Int?
    @Flag(name: .customLong("apply-merges"), help: "Record same-person candidates as identity aliases (never rewrites identities).")
    var applyMerges = false
    @Flag(help: "Remove every curation decision and alias, then stop.") var reset = false

    func validate() throws { try validateWorkers(workers) }
    @Flag(help: "Print the run summary as JSON.") var json = false

    func run() async throws {
        do {
            if reset {
                let removed = try CurationPipeline.reset(catalogPath: catalog.catalog)
                print("removed \(removed.decisions) curation decisions and \(removed.aliases) identity aliases")
                return
            }
            var workspace = try catalog.workspace(pipeline: pipeline, models: models)
            if let workers { workspace.config.curate.workers = workers }
            try await execute(CurateStage(applyMerges: applyMerges), in: workspace, json: json)
        } catch let exit as ExitCode { throw exit } catch { fail(error) }
    }
}

struct CurateReportCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "report",
        abstract: "Print the latest curate run's findings; optionally write contact sheets for review.",
        discussion: """
            --json prints one object per finding per line with kind, paths, kept, identities,
            score, reason and group. --csv prints the same as CSV.
            Example: pidiff-data curate report --catalog data/catalog.sqlite --json --sheets review/
            """)

    @OptionGroup var catalog: CatalogOptions
    @Flag(help: "One JSON object per finding per line.") var json = false
    @Flag(help: "CSV with a header row.") var csv = false
    @Option(help: "Write PNG contact sheets of duplicate groups, impostors and merge candidates into this folder.")
    var sheets: String?

    func validate() throws {
        if json && csv { throw ValidationError("choose one of --json and --csv") }
    }

    func run() async throws {
        do {
            let db = try catalog.open()
            let report = try CurationReport(catalog: db)
            if json { try report.jsonLines().forEach { Swift.print($0) } } else if csv { report.csv().split(separator: "\r\n").forEach { print(String($0), terminator: "\r\n") } } else {
                report.table().split(separator: "\n", omittingEmptySubsequences: false).forEach { print(String($0), terminator: $0.isEmpty ? "" : "\n") }
            }
            if let sheets {
                let identities = Set(report.lines.flatMap { $0.identities ?? [] })
                let writer = ContactSheetWriter(crops: try db.reviewCrops(), photosOf: try db.filePaths(identities: identities))
                let written = try writer.write(report, to: URL(fileURLWithPath: sheets))
                FileHandle.standardError.write(Data("wrote \(written.count) contact sheet(s) to \(sheets)\n".utf8))
            }
        } catch { fail(error) }
    }
}

struct CurateOverrideCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "override",
        abstract: "Overrule curation for one photo or one identity pair, with who and why; later runs honour it.",
        discussion: """
            --keep PATH keeps a photo curation marked a duplicate or impostor; --reject PATH leaves a photo out of
            every selection; --accept-merge A=B records identity A as an alias of B on every curate run. The latest
            override of a photo wins. --list shows them all.
            Example: pidiff-data curate override --keep photos/ann/3.jpg --reason "not a duplicate: other day" --catalog c.sqlite
            """)
    @OptionGroup var catalog: CatalogOptions
    @Option(help: "Keep this photo whatever curation concluded.") var keep: String?
    @Option(help: "Leave this photo out of every selection.") var reject: String?
    @Option(name: .customLong("accept-merge"), help: "A=B: identity A is the same person as B.") var acceptMerge: String?
    @Option(help: "Why (recorded with the override).") var reason: String?
    @Option(help: "Who decides (default: $USER).") var by: String?
    @Flag(help: "List the recorded overrides.") var list = false

    func validate() throws {
        let given = [keep, reject, acceptMerge].compactMap { $0 }.count
        if list { guard given == 0 else { throw ValidationError("--list takes no other override") }; return }
        guard given == 1 else { throw ValidationError("give one of --keep, --reject, --accept-merge (or --list)") }
        guard let reason, !reason.trimmingCharacters(in: .whitespaces).isEmpty else { throw ValidationError("--reason is required: say why") }
        if let acceptMerge, acceptMerge.split(separator: "=").count != 2 { throw ValidationError("--accept-merge takes A=B") }
    }

    func run() async throws {
        try await runCommand {
            if list {
                for o in try catalog.open().curationOverrides() {
                    let target = o.path ?? "\(o.identity ?? "") = \(o.canonicalIdentity ?? "")"
                    print("\(o.createdAt ?? "")  \(o.kind.rawValue)  \(target)  by \(o.who): \(o.reason)")
                }
                return
            }
            let who = by ?? ProcessInfo.processInfo.environment["USER"] ?? "unknown"
            let override: CurationOverride
            if let keep { override = CurationOverride(kind: .keep, path: keep, reason: reason!, who: who) }
            else if let reject { override = CurationOverride(kind: .reject, path: reject, reason: reason!, who: who) }
            else {
                let pair = acceptMerge!.split(separator: "=").map { String($0).trimmingCharacters(in: .whitespaces) }
                override = CurationOverride(kind: .acceptMerge, identity: pair[0], canonicalIdentity: pair[1], reason: reason!, who: who)
            }
            try CurationOverrides.record(override, catalogPath: catalog.catalog)
            print("recorded: \(override.kind.rawValue) \(override.path ?? "\(override.identity!) = \(override.canonicalIdentity!)") by \(who)")
        }
    }
}

import ArgumentParser
import Foundation
import PIDiffModel
import PIDiffNative
import PIDiffCatalog
import PIDiffData

struct VerifyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Check the catalog file, every artefact it names (present, content matches its SHA-256 name), and list orphans.",
        discussion: """
            Exit status 0 when the catalog is sound and every referenced artefact is intact, 2 when
            anything is missing, corrupt or inconsistent (orphaned files are listed but do not
            count: a killed run leaves them by design), 1 when verify itself cannot run.
            --repair re-derives missing or corrupt crops and masks from the source photos with the
            recorded parameters and installs them only when the result hashes to the recorded name.

            Examples:
              pidiff-data verify --catalog data/catalog.sqlite
              pidiff-data verify --catalog data/catalog.sqlite --repair --json
            """)

    @OptionGroup var catalog: CatalogOptions
    @Flag(help: "Re-derive missing or corrupt artefacts from their sources.") var repair = false
    @Option(help: "Folder holding the dlib models, for --repair (default: $PIDIFF_MODELS or $PIDIFF_CACHE/models).") var models: String?
    @Flag(help: "Print the report as JSON.") var json = false

    func run() async throws {
        let report: VerifyReport
        do {
            report = try CatalogVerifier(catalogPath: catalog.catalog, models: ModelStore(directory: models.map { URL(fileURLWithPath: $0) }),
                                     progress: .forStandardError)
                .run(repair: repair)
        } catch { fail(error) }
        if json {
            try report.printJSON()
        } else {
            print("catalog \(report.catalog) (data root \(report.dataRoot)): \(report.clean ? "clean" : "PROBLEMS")")
            print("  integrity_check: \(report.integrity.isEmpty ? "ok" : report.integrity.joined(separator: "; "))")
            print("  foreign keys: \(report.foreignKeys.isEmpty ? "ok" : report.foreignKeys.joined(separator: "; "))")
            print("  artefacts checked \(report.artefactsChecked): missing \(report.missing.count), corrupt \(report.mismatched.count), orphaned files \(report.orphans.count)"
                  + (report.contextViews > 0 ? ", context views kept for export \(report.contextViews)" : ""))
            for p in report.missing + report.mismatched {
                print("  \(p.path): \(p.problem) (referenced by \(p.referencedBy.joined(separator: ", ")))")
            }
            for o in report.orphans { print("  orphan: \(o)") }
            for r in report.repairs { print("  \(r.repaired ? "repaired" : "NOT repaired") \(r.path): \(r.detail)") }
        }
        if !report.clean { throw ExitCode(ExitStatus.partial.rawValue) }
    }
}

import ArgumentParser
import Foundation
import PIDiffModel
import PIDiffNative
import PIDiffCatalog
import PIDiffData

struct BackupCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "backup",
        abstract: "Copy the catalog consistently while other commands may be writing to it.",
        discussion: """
            Uses SQLite's online backup API on one read snapshot; the copy is checked with
            integrity_check before it appears under FILE, and an existing FILE is never replaced.
            Artefacts under the data root are not copied (they are immutable, content-addressed files).
            Example: pidiff-data backup --catalog data/catalog.sqlite --to backups/catalog-2024-06-01.sqlite
            """)

    @OptionGroup var catalog: CatalogOptions
    @Option(help: "Where to write the copy (must not exist).") var to: String
    @Flag(help: "Print the summary as JSON.") var json = false

    func run() async throws {
        do {
            let summary = try CatalogBackup(catalogPath: catalog.catalog, destination: to).run()
            if json { try summary.printJSON(); return }
            print(String(format: "backup of %@ written to %@ (%d bytes, %.2f s); artefacts stay in %@", summary.catalog, summary.backup,
                         summary.bytes, summary.seconds, summary.dataRoot))
        } catch { fail(error) }
    }
}

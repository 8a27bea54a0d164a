import ArgumentParser
import Foundation
import PIDiffModel
import PIDiffData

struct CatalogCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "catalog",
        abstract: "Catalog-level operations across machines.",
        subcommands: [CatalogMergeCommand.self])
}

struct CatalogMergeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "merge",
        abstract: "Merge partition catalogs (ingest --partition K/N, then masks) into one.",
        discussion: """
            Files, faces, masks, features, labels, encodings, runs and problems are copied; artefacts are hard-linked
            (or copied) into the target's data root once each. Idempotent. Parts made with other parameters or models
            are refused, naming the parameter. Curate, labels, balance and export then run on the merged catalog.
            Example: pidiff-data catalog merge part-1.sqlite part-2.sqlite part-3.sqlite --into data/catalog.sqlite
            """)
    @Argument(help: "Partition catalogs.") var parts: [String]
    @Option(help: "The merged catalog (created if missing).") var into: String
    @Flag(help: "One JSON summary per part.") var json = false

    func run() async throws {
        try await runCommand {
            for summary in try CatalogMergeOperation(parts: parts, into: into).run() {
                if json { try summary.printJSON(pretty: false); continue }
                print("merged \(summary.part): \(summary.files) files, \(summary.faces) faces, \(summary.masks) masks, \(summary.runs) runs added; "
                      + "\(summary.artefactsLinked) artefacts linked")
            }
        }
    }
}

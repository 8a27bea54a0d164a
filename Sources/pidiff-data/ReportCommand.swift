import ArgumentParser
import Foundation
import PIDiffModel
import PIDiffNative
import PIDiffCatalog
import PIDiffData

struct ReportCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "report",
        abstract: "Write a static HTML site to browse the catalog: identities, balance, curation, splits.",
        discussion: """
            Pages: index.html (counts, runs, balance heatmap), identities.html (every photo with a
            thumbnail: kept, duplicate, impostor or rejected, and why), curation.html, splits.html.
            Open DIR/index.html in a browser; no server is needed and all links are relative.
            Example: pidiff-data report --catalog data/catalog.sqlite --html report/
            """)

    @OptionGroup var catalog: CatalogOptions
    @Option(help: "Folder to write the site into (created if missing).") var html: String
    @Option(help: "Pipeline file (its `labels:` mapping).") var pipeline: String?
    @Option(help: "Balance target: identities over the known race × age cells.") var target = 500
    @Option(name: .customLong("min-images"), help: "Usable photos an identity needs to count in the balance.") var minImages = 6
    @Flag(help: "Print the summary as JSON.") var json = false

    func run() async throws {
        do {
            let config = try PipelineConfig.load(pipeline.map { URL(fileURLWithPath: $0) })
            let summary = try HTMLReport(catalogPath: catalog.catalog, directory: URL(fileURLWithPath: html), labels: config.labels,
                                         minImages: minImages, target: target, progress: .forStandardError).write()
            if json { try summary.printJSON(); return }
            print("wrote \(summary.pages.count) pages and \(summary.thumbnails) thumbnails for \(summary.photos) photos of "
                  + "\(summary.identities) identities: \(URL(fileURLWithPath: html).appendingPathComponent("index.html").path)")
        } catch { fail(error) }
    }
}

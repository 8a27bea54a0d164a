import ArgumentParser
import Foundation
import PIDiffModel
import PIDiffNative
import PIDiffCatalog
import PIDiffData

struct MasksCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "masks",
        abstract: "Background removal for aligned faces and the e4e input (white background).",
        subcommands: [MasksRunCommand.self, MasksReportCommand.self],
        defaultSubcommand: MasksRunCommand.self)
}

struct MasksRunCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Mask every selected face that has no mask under the current mask parameters.",
        discussion: """
            Default method: GrabCut seeded from the 68 landmarks (no model file). With `mask: {method: onnx,
            onnx_path: FILE}` in the pipeline file, a face-parsing network (BiSeNet-style, 19 classes) is run
            through OpenCV DNN instead. Example: pidiff-data masks --catalog data/catalog.sqlite
            """)

    @OptionGroup var catalog: CatalogOptions
    @Option(help: "Pipeline file (its `mask:` section).") var pipeline: String?
    @Option(help: "Workers (default: one per core).") var workers: Int?
    @Flag(help: "Print the run summary as JSON.") var json = false

    func validate() throws { try validateWorkers(workers) }

    func run() async throws {
        try await runCommand {
            try await execute(MasksStage(workers: workers ?? 0), in: try catalog.workspace(pipeline: pipeline), json: json)
        }
    }
}

struct MasksReportCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "report",
        abstract: "Mask coverage statistics, and a contact sheet (crop | mask | e4e input) as PNG.",
        discussion: "Example: pidiff-data masks report --catalog data/catalog.sqlite --sheet masks.png")

    @OptionGroup var catalog: CatalogOptions
    @Option(help: "Write a contact sheet PNG here.") var sheet: String?
    @Option(help: "At most this many faces on the sheet.") var limit = 48
    @Flag(help: "Print JSON (statistics and one entry per face).") var json = false

    struct Report: Codable {
        var faces: Int
        var ok: Int
        var flagged: Int
        var coverage: [String: Double]
        var entries: [MaskReportRow]
    }

    func run() async throws {
        do {
            let rows = try catalog.open().maskReport()
            let cov = rows.compactMap(\.coverage).sorted()
            var stats: [String: Double] = [:]
            if !cov.isEmpty {
                stats = ["min": cov.first!, "max": cov.last!, "mean": cov.reduce(0, +) / Double(cov.count), "median": cov[cov.count / 2]]
            }
            let report = Report(faces: rows.count, ok: rows.filter(\.ok).count, flagged: rows.filter { !$0.ok }.count, coverage: stats, entries: rows)
            if let sheet {
                // A row per face: crop | mask | e4e input, framed green (ok) or red (flagged).
                var tiles: [ContactSheetTile] = []
                for (index, row) in rows.prefix(limit).enumerated() {
                    let frame: (UInt8, UInt8, UInt8) = row.ok ? (60, 180, 60) : (50, 50, 220)
                    let captions = [URL(fileURLWithPath: row.path).lastPathComponent,
                                    row.coverage.map { String(format: "coverage %.2f", $0) } ?? (row.reason ?? "no mask"), "e4e input"]
                    for (column, path) in [row.crop256, row.mask256, row.e4eInput].enumerated() {
                        guard let path, let data = FileManager.default.contents(atPath: path) else { continue }
                        tiles.append(ContactSheetTile(image: try NativeImage.decode(data, maxPixels: 1 << 24), row: index,
                                                      column: column, frameBGR: frame, caption: captions[column]))
                    }
                }
                guard !tiles.isEmpty else { throw ValidationError("no masks to show; run pidiff-data masks first") }
                try OutputPath.write(NativeImage.contactSheet(tiles, rows: min(rows.count, limit), columns: 3, tileSize: 192).pngData(),
                                     to: URL(fileURLWithPath: sheet))
            }
            if json { try report.printJSON(); return }
            print("masks: \(report.faces) faces, \(report.ok) ok, \(report.flagged) flagged")
            if !stats.isEmpty {
                print(String(format: "coverage of the 256 crop: min %.2f  median %.2f  mean %.2f  max %.2f",
                             stats["min"]!, stats["median"]!, stats["mean"]!, stats["max"]!))
            }
            for row in rows where !row.ok { print("  flagged \(row.path): \(row.reason ?? "")") }
            if let sheet { print("contact sheet: \(sheet)") }
        } catch let e as ValidationError { throw e } catch { fail(error) }
    }
}

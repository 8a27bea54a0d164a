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

    func run() async throws {
        do {
            let report = try MaskReport(catalog: catalog.open())
            if let sheet {
                guard report.faces > 0 else { throw ValidationError("no masks to show; run pidiff-data masks first") }
                try report.writeSheet(to: URL(fileURLWithPath: sheet), limit: limit)
            }
            let stats = report.coverage
            if json { try report.printJSON(); return }
            print("masks: \(report.faces) selected faces with a mask (one per distinct image), \(report.ok) ok, \(report.flagged) flagged"
                  + (report.files != report.faces ? "; listed under \(report.files) file paths (copies of one photo share its face)" : ""))
            if !stats.isEmpty {
                print(String(format: "coverage of the 256 crop: min %.2f  median %.2f  mean %.2f  max %.2f",
                             stats["min"]!, stats["median"]!, stats["mean"]!, stats["max"]!))
            }
            for row in report.entries where !row.ok { print("  flagged \(row.path): \(row.reason ?? "")") }
            if let sheet { print("contact sheet: \(sheet)") }
        } catch let e as ValidationError { throw e } catch { fail(error) }
    }
}

import ArgumentParser
import Foundation
import PIDiffModel
import PIDiffNative
import PIDiffCatalog
import PIDiffData

struct LabelsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "labels",
        abstract: "Demographic labels (race, age bracket, gender) with provenance: manifest, classifier, manual.",
        subcommands: [LabelsShowCommand.self, LabelsImportCommand.self, LabelsClassifyCommand.self],
        defaultSubcommand: LabelsShowCommand.self)
}

struct LabelsShowCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "show", abstract: "Resolved labels per identity (manual > manifest > classifier).",
        discussion: "Example: pidiff-data labels show --catalog data/catalog.sqlite --json")
    @OptionGroup var catalog: CatalogOptions
    @Option(help: "Pipeline file (its `labels:` mapping).") var pipeline: String?
    @Flag(help: "One JSON object per identity per line.") var json = false

    func run() async throws {
        do {
            let config = try PipelineConfig.load(pipeline.map { URL(fileURLWithPath: $0) })
            let cat = try catalog.open()
            let labels = try cat.identityLabels(mapping: config.labels, classifierFingerprint: try cat.currentClassifierFingerprint())
            for l in labels {
                if json { try l.printJSON(pretty: false); continue }
                print(LabelsStage.line(l))
            }
        } catch { fail(error) }
    }
}

struct LabelsImportCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "import", abstract: "Import manual corrections from CSV; they override every other source.",
        discussion: """
            Header: identity and any of race, age, gender; an optional path column makes a row apply to one photo
            (per-image age). Example: pidiff-data labels import fixes.csv --catalog data/catalog.sqlite
            """)
    @Argument(help: "CSV file.") var file: String
    @OptionGroup var catalog: CatalogOptions
    @Option(help: "Pipeline file whose labels: mapping the values must fit (default: the built-in mapping).")
    var pipeline: String?

    func run() async throws {
        do {
            let mapping = try PipelineConfig.load(pipeline.map { URL(fileURLWithPath: $0) }).labels
            let count = try ManualLabelCSV.importFile(file, catalogPath: catalog.catalog, mapping: mapping)
            print("imported \(count) manual labels from \(file)")
        } catch { fail(error) }
    }
}

struct LabelsClassifyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "classify", abstract: "Run a FairFace-style ONNX classifier (18 logits, 224², ImageNet norm) on aligned crops.",
        discussion: "Example: pidiff-data labels classify --model fairface.onnx --catalog data/catalog.sqlite")
    @Option(help: "ONNX model with 18 logits: 7 race, 2 gender, 9 age bins.") var model: String
    @OptionGroup var catalog: CatalogOptions

    func run() async throws {
        do {
            let n = try LabelClassifier(catalogPath: catalog.catalog, modelPath: model, progress: .forStandardError).run()
            print("classified \(n) faces")
        } catch { fail(error) }
    }
}

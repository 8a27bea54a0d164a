import ArgumentParser
import Foundation
import PIDiffModel
import PIDiffNative
import PIDiffCatalog
import PIDiffData

@main
struct PIDiffDataCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pidiff-data",
        abstract: "Dataset curation and preprocessing for identity-personalised image generation (PIDiff).",
        subcommands: [IngestCommand.self, CurateCommand.self, MasksCommand.self, LabelsCommand.self, BalanceCommand.self, SplitsCommand.self,
                      ExportCommand.self, EncodeCommand.self, TrainCommand.self, SampleCommand.self, RunCommand.self,
                      StatusCommand.self, FacesCommand.self, VerifyCommand.self, BackupCommand.self,
                      ReportCommand.self, FaceCommand.self, PipelineFileCommand.self, BenchCommand.self]
    )
}

/// Options shared by every command that opens a catalog.
struct CatalogOptions: ParsableArguments {
    @Option(name: .long, help: "Path of the SQLite catalog (ingest creates it).")
    var catalog: String

    /// Only ingest creates a catalog: for every other command a mistyped path is an error, not a
    /// new empty catalog.
    func validate() throws {
        guard FileManager.default.fileExists(atPath: catalog) else {
            throw ValidationError("catalog \(catalog): no such catalog (pidiff-data ingest or run creates one)")
        }
        // SQLite takes an empty file for an empty database, and the migrations would make it one.
        let size = (try? FileManager.default.attributesOfItem(atPath: catalog)[.size] as? Int) ?? nil
        guard size != 0 else { throw ValidationError("catalog \(catalog): an empty file, not a catalog (pidiff-data ingest creates one)") }
    }

    func open() throws -> Catalog { try Catalog(path: catalog) }

    /// The workspace of a command on this catalog.
    func workspace(pipeline: String? = nil, work: URL? = nil, python: String? = nil, models: String? = nil) throws -> Workspace {
        Workspace(catalogPath: catalog, work: work, config: try PipelineConfig.load(pipeline.map { URL(fileURLWithPath: $0) }),
                  faceModels: ModelStore(directory: models.map { URL(fileURLWithPath: $0) }),
                  trainer: TrainerProcess(python: python), showProgress: isatty(STDERR_FILENO) == 1)
    }
}

extension Encodable {
    func printJSON(pretty: Bool = true) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = pretty ? [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes] : [.sortedKeys, .withoutEscapingSlashes]
        print(String(decoding: try encoder.encode(self), as: UTF8.self))
    }
}

/// `--workers` of ingest, masks and curate: each worker holds its own models, so an absurd count
/// exhausts memory before doing anything.
func validateWorkers(_ workers: Int?) throws {
    if let workers, !(0...IngestParameters.maxWorkers).contains(workers) {
        throw ValidationError("--workers must be 0 (one per core) to \(IngestParameters.maxWorkers), not \(workers)")
    }
}

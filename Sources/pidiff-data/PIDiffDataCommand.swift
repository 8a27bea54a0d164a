import ArgumentParser
import Foundation
import PIDiffData

@main
struct PIDiffDataCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pidiff-data",
        abstract: "Dataset curation and preprocessing for identity-personalised image generation (PIDiff).",
        subcommands: [IngestCommand.self, CurateCommand.self, MasksCommand.self, LabelsCommand.self, BalanceCommand.self, SplitsCommand.self,
                      ExportCommand.self, EncodeCommand.self, TrainCommand.self, RunCommand.self,
                      StatusCommand.self, FacesCommand.self, VerifyCommand.self, BackupCommand.self,
                      ReportCommand.self, BenchCommand.self]
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
}

extension Encodable {
    func printJSON(pretty: Bool = true) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = pretty ? [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes] : [.sortedKeys, .withoutEscapingSlashes]
        print(String(decoding: try encoder.encode(self), as: UTF8.self))
    }
}

/// A warning on stderr, one line, as every command words them.
func warn(_ message: String) {
    FileHandle.standardError.write(Data("pidiff-data: warning: \(message)\n".utf8))
}

/// Reports a failure on stderr the way every command does: one line naming the item and reason.
func fail(_ error: Error) -> Never {
    FileHandle.standardError.write(Data("pidiff-data: error: \(error)\n".utf8))
    if case CatalogError.locked = error { Foundation.exit(75) } // EX_TEMPFAIL: another run holds the lock
    Foundation.exit(1)
}

/// `--workers` of ingest, masks and curate: each worker holds its own models, so an absurd count
/// exhausts memory before doing anything.
func validateWorkers(_ workers: Int?) throws {
    if let workers, !(0...IngestParameters.maxWorkers).contains(workers) {
        throw ValidationError("--workers must be 0 (one per core) to \(IngestParameters.maxWorkers), not \(workers)")
    }
}

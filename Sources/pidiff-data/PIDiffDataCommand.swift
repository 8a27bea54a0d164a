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
        subcommands: [FetchCommand.self, IngestCommand.self, CurateCommand.self, MasksCommand.self, LabelsCommand.self, BalanceCommand.self, SplitsCommand.self,
                      ExportCommand.self, RefsCommand.self, EncodeCommand.self, TrainCommand.self, SampleCommand.self, RunCommand.self,
                      StatusCommand.self, FacesCommand.self, VerifyCommand.self, BackupCommand.self,
                      ReportCommand.self, FaceCommand.self, CatalogCommand.self, PipelineFileCommand.self, BenchCommand.self]
    )

    static func main() async {
        SignalHandling.install()
        do {
            var command = try parseAsRoot()
            if var command = command as? AsyncParsableCommand { try await command.run() } else { try command.run() }
        } catch {
            hintTrainerFlags(error)
            exit(withError: error)
        }
    }

    /// `pidiff-data train --steps 600` is refused as an unknown option: say that the trainer's
    /// own flags go after `--`.
    static func hintTrainerFlags(_ error: Error) {
        let arguments = Array(CommandLine.arguments.dropFirst())
        guard let command = arguments.first, ["train", "encode", "sample"].contains(command), !arguments.contains("--"),
              fullMessage(for: error).contains("Unknown option") else { return }
        FileHandle.standardError.write(Data("pidiff-data: hint: flags of `pidiff \(command)` go after `--`, e.g. pidiff-data \(command) … -- --steps 600\n".utf8))
    }
}

/// SIGTERM, SIGINT and SIGHUP end the process as they would have (it dies of the signal, so a
/// calling shell sees it), after marking the runs it began as interrupted: a service manager's
/// stop or a Ctrl-C must not leave a run "running" until the next command notices. A signal the
/// process inherited as ignored (nohup, a background job) stays ignored.
enum SignalHandling {
    nonisolated(unsafe) private static var sources: [DispatchSourceSignal] = []

    static func install() {
        for sig in [SIGTERM, SIGINT, SIGHUP] {
            var inherited = sigaction()
            guard sigaction(sig, nil, &inherited) == 0 else { continue }
            let ignored = unsafeBitCast(inherited.__sigaction_handler.sa_handler, to: Int.self) == unsafeBitCast(SIG_IGN, to: Int.self)
            if ignored { continue }
            signal(sig, SIG_IGN) // delivered to the dispatch source instead of killing the process at once
            let source = DispatchSource.makeSignalSource(signal: sig, queue: DispatchQueue(label: "pidiff-data.signal"))
            source.setEventHandler {
                // Under `run`, stderr is a pipe read by a thread of this process: drain it and put
                // stderr back first, and say it as a JSON line there.
                let capture = StderrAsJSONLines.stopActive()
                if RunRecorder.markActiveRunsInterrupted() > 0 {
                    let message = "stopped by signal \(sig); the run is recorded as interrupted and the next run continues it"
                    FileHandle.standardError.write(capture.flatMap { JSONLogHandler.line(level: "warning", label: "pidiff-data.run", message: message, metadata: $0) }
                                                   ?? Data("pidiff-data: \(message)\n".utf8))
                }
                signal(sig, SIG_DFL)
                var set = sigset_t()
                sigemptyset(&set)
                sigaddset(&set, sig)
                pthread_sigmask(SIG_UNBLOCK, &set, nil)
                raise(sig)
                _exit(128 + sig) // not reached: the default action ends the process
            }
            source.resume()
            sources.append(source)
        }
    }
}

/// Options shared by every command that opens a catalog.
struct CatalogOptions: ParsableArguments {
    @Option(name: .customLong("catalog"), help: "Path of the SQLite catalog (default: $PIDIFF_CATALOG; ingest creates it).")
    var catalogFlag: String?

    /// `--catalog`, else `$PIDIFF_CATALOG`.
    var catalog: String { catalogFlag ?? Self.environmentCatalog ?? "" }
    static var environmentCatalog: String? { ProcessInfo.processInfo.environment["PIDIFF_CATALOG"].flatMap { $0.isEmpty ? nil : $0 } }

    /// Only ingest creates a catalog: for every other command a mistyped path is an error, not a
    /// new empty catalog.
    func validate() throws {
        guard !catalog.isEmpty else { throw ValidationError("no catalog: give --catalog PATH or set PIDIFF_CATALOG") }
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
                  trainer: TrainerProcess(python: python), progress: .forStandardError)
    }
}

/// `--catalog` of the commands that create a catalog when it is missing (ingest, fetch).
struct NewCatalogOptions: ParsableArguments {
    @Option(name: .customLong("catalog"), help: "Path of the SQLite catalog (created if missing; default: $PIDIFF_CATALOG).")
    var catalogFlag: String?

    var catalog: String { catalogFlag ?? CatalogOptions.environmentCatalog ?? "" }

    func validate() throws {
        guard !catalog.isEmpty else { throw ValidationError("no catalog: give --catalog PATH or set PIDIFF_CATALOG") }
    }
}

extension Encodable {
    func printJSON(pretty: Bool = true) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = pretty ? [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes] : [.sortedKeys, .withoutEscapingSlashes]
        Swift.print(String(decoding: try encoder.encode(self), as: UTF8.self)) // JSON escapes control characters itself
    }
}

/// Human output: names and paths come from photo collections and manifests, and a control
/// character in one (an escape sequence, a newline) must not reach the terminal raw. Every
/// `print` of the CLI goes through here; JSON and YAML, which escape their own strings, use
/// `Swift.print`.
func print(_ items: Any..., separator: String = " ", terminator: String = "\n") {
    Swift.print(items.map { Terminal.escaped("\($0)") }.joined(separator: separator), terminator: terminator)
}

enum Terminal {
    /// `s` with every control character (C0, DEL, C1) written as `\u{…}`; tabs kept.
    static func escaped(_ s: String) -> String {
        guard s.unicodeScalars.contains(where: isControl) else { return s }
        var out = ""
        for scalar in s.unicodeScalars {
            if isControl(scalar) { out += "\\u{" + String(scalar.value, radix: 16) + "}" } else { out.unicodeScalars.append(scalar) }
        }
        return out
    }

    private static func isControl(_ c: Unicode.Scalar) -> Bool {
        (c.value < 0x20 && c != "\t") || (0x7f...0x9f).contains(c.value)
    }
}

/// `--workers` of ingest, masks and curate: each worker holds its own models, so an absurd count
/// exhausts memory before doing anything.
func validateWorkers(_ workers: Int?) throws {
    if let workers, !(0...IngestParameters.maxWorkers).contains(workers) {
        throw ValidationError("--workers must be 0 (one per core) to \(IngestParameters.maxWorkers), not \(workers)")
    }
}

import ArgumentParser
import Foundation
import PIDiffCatalog
import PIDiffData
import PIDiffModel

/// Every command's exit status, decided here and nowhere else:
/// 0 success; 1 failure (the command stopped: the message says why); 3 partial (it finished but
/// some items were recorded as failed, or problems remain); 64 usage (a bad flag or value: a
/// pipeline file that cannot be read or names unknown keys, an invalid or unknown split name, an
/// override naming no catalogued photo or identity, a catalog that does not exist); 75 the catalog
/// is locked by another run (try again later).
enum ExitStatus: Int32 {
    case success = 0, failure = 1, partial = 3, usage = 64, locked = 75

    init(for error: Error) {
        switch error {
        case CatalogError.locked, CatalogError.outputLocked: self = .locked
        case is ValidationError, OverrideError.unknownPhoto, OverrideError.unknownIdentity, PipelineError.unreadable, PipelineError.unknownKeys,
             SplitError.invalidName, SplitError.missing: self = .usage
        default: self = .failure
        }
    }

    /// A `run`'s outcome as every command's status.
    init(_ outcome: RunPipeline.Outcome) {
        switch outcome {
        case .success: self = .success
        case .partial: self = .partial
        case .failure: self = .failure
        case .busy: self = .locked
        }
    }
}

/// A warning on stderr, one line, as every command words them.
func warn(_ message: String) {
    FileHandle.standardError.write(Data("pidiff-data: warning: \(Terminal.escaped(message))\n".utf8))
}

/// Reports a failure on stderr the way every command does: one line naming the item and reason,
/// then exits with the status that error maps to.
func fail(_ error: Error) -> Never {
    FileHandle.standardError.write(Data("pidiff-data: error: \(Terminal.escaped("\(error)"))\n".utf8))
    Foundation.exit(ExitStatus(for: error).rawValue)
}

/// Runs a command's body; an error ends the process with its one-line message and exit status.
/// `ExitCode`s thrown on purpose pass through to the argument parser.
func runCommand(_ body: () async throws -> Void) async throws {
    do { try await body() } catch let exit as ExitCode { throw exit } catch { fail(error) }
}

/// Runs one stage for a command and prints its report: warnings on stderr, then its lines, or
/// `--json`. A failed outcome exits 1 after the report; a partial one exits 3 when `partialFails`
/// (`--strict`, or commands whose partial result needs attention).
func execute<S: Stage>(_ stage: S, in workspace: Workspace, json: Bool, partialFails: Bool = false) async throws {
    try await runCommand {
        let report = try await stage.run(in: workspace)
        for warning in report.warnings { warn(warning) }
        if json, let value = report.json { try AnyEncodable(value).printJSON() } else { report.lines.forEach { print($0) } }
        if report.outcome == .failed { throw ExitCode(ExitStatus.failure.rawValue) }
        if partialFails && report.outcome == .partial { throw ExitCode(ExitStatus.partial.rawValue) }
    }
}

/// Lets `printJSON` take a report's type-erased JSON value.
struct AnyEncodable: Encodable {
    let value: any Encodable
    init(_ value: any Encodable) { self.value = value }
    func encode(to encoder: Encoder) throws { try value.encode(to: encoder) }
}

import Foundation
import PIDiffModel
import PIDiffNative
import PIDiffCatalog
#if canImport(Glibc)
import Glibc
#endif

/// Runs the Python side (`pidiff …`) as a subprocess: the contract between the two halves is
/// files (shards in, safetensors out), so this only builds arguments, streams the child's output
/// and reports its exit status.
public struct TrainerProcess: Sendable {
    public var python: String
    /// Where the trainer's output goes (appended); nil: straight through to our stderr. `run`
    /// sets one per stage, so its stderr stays JSON lines only.
    public var logFile: URL?

    /// `python`, else `$PIDIFF_PYTHON`, else `.venv/bin/python` in the working directory, else the
    /// `.venv/bin/python` of the repository this executable was built in (found by walking up from
    /// it: `.build/release/pidiff-data` → the checkout, so cron jobs need no particular working
    /// directory), else `python3` on PATH.
    public init(python: String? = nil, executable: URL? = Bundle.main.executableURL) {
        let env = ProcessInfo.processInfo.environment
        if let python { self.python = python }
        else if let p = env["PIDIFF_PYTHON"], !p.isEmpty { self.python = p }
        else if let venv = Self.virtualEnvironment(workingDirectory: URL(fileURLWithPath: FileManager.default.currentDirectoryPath),
                                                   executable: executable) { self.python = venv }
        else { self.python = "/usr/bin/env" }
    }

    /// The first `.venv/bin/python` in the working directory, then in the executable's folder and
    /// its ancestors (at most five levels up).
    static func virtualEnvironment(workingDirectory: URL, executable: URL?) -> String? {
        var candidates = [workingDirectory]
        if var folder = executable?.resolvingSymlinksInPath().deletingLastPathComponent() {
            for _ in 0..<6 where folder.path != "/" {
                candidates.append(folder)
                folder = folder.deletingLastPathComponent()
            }
        }
        return candidates.map { $0.appendingPathComponent(".venv/bin/python").standardizedFileURL.path }
            .first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    /// Runs `pidiff <arguments>`, its stdout/stderr passed straight through (progress bars and
    /// errors reach the user as they happen). Throws with the exit status on failure.
    /// `processes` > 1 starts that many ranks through `pidiff launch` (accelerate, one rank per GPU;
    /// CPU ranks over gloo where there is no GPU): `pidiff train` spreads its identity groups over
    /// them, `pidiff encode` its shards.
    ///
    /// The child stops when pidiff-data dies, even by SIGKILL: `pidiff.cli` asks the kernel for a
    /// SIGTERM on its parent's death (PIDIFF_PARENT_PID). Under `pidiff launch` that process execs
    /// the accelerate launcher, which keeps the request and stops its ranks on the SIGTERM; the
    /// ranks in turn end with the launcher.
    public func run(_ arguments: [String], processes: Int = 1) throws {
        let status = try Self.spawn(python, Self.commandLine(python: python, arguments, processes: processes),
                                    environment: ["PIDIFF_PARENT_PID": "\(getpid())"], logFile: logFile)
        guard status == 0 else { throw TrainerError.failed(arguments.first ?? "", status, log: logFile?.path) }
    }

    /// The arguments after `python`: `-m pidiff.cli <arguments>`, or under `processes` > 1
    /// `-m pidiff.cli launch --processes N -- <arguments>`.
    static func commandLine(python: String, _ arguments: [String], processes: Int) -> [String] {
        let launcher = processes > 1 ? ["launch", "--processes", "\(processes)", "--"] : []
        return (python == "/usr/bin/env" ? ["python3"] : []) + ["-m", "pidiff.cli"] + launcher + arguments
    }

    /// Starts `executable` with its stdout on our stderr, waits for it and returns its exit status
    /// (128 + N when killed by signal N). posix_spawn with an empty signal mask and default
    /// handlers: a child started from one of our threads would otherwise inherit that thread's
    /// blocked SIGINT/SIGTERM/SIGHUP and ignore Ctrl-C and a service manager's stop.
    static func spawn(_ executable: String, _ arguments: [String], environment: [String: String] = [:], logFile: URL? = nil) throws -> Int32 {
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var unblocked = sigset_t(), defaults = sigset_t()
        sigemptyset(&unblocked)
        sigemptyset(&defaults)
        for signal in [SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE] { sigaddset(&defaults, signal) }
        posix_spawnattr_setsigmask(&attributes, &unblocked)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        if let logFile {
            try OutputPath.prepareFolder(logFile.deletingLastPathComponent())
            posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, logFile.path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
            posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO)
        } else {
            posix_spawn_file_actions_adddup2(&actions, STDERR_FILENO, STDOUT_FILENO)
        }

        let inherited = ProcessInfo.processInfo.environment.filter { environment[$0.key] == nil }
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        let envp = (inherited.merging(environment) { $1 }).map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { (argv + envp).forEach { free($0) } }
        var pid = pid_t()
        let started = posix_spawn(&pid, executable, &actions, &attributes, argv, envp)
        guard started == 0 else { throw TrainerError.launch(executable, String(cString: strerror(started))) }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) == -1 {
            guard errno == EINTR else { throw TrainerError.launch(executable, "waitpid: \(String(cString: strerror(errno)))") }
        }
        let signal = status & 0x7f
        return signal == 0 ? (status >> 8) & 0xff : 128 + signal
    }
}

public enum TrainerError: Error, CustomStringConvertible {
    case launch(String, String)
    case failed(String, Int32, log: String?)
    case output(String)
    public var description: String {
        switch self {
        case .launch(let py, let why): return "cannot start the trainer with \(py): \(why) (set PIDIFF_PYTHON or --python)"
        case .failed(let cmd, let code, let log):
            return "pidiff \(cmd) failed with exit status \(code) (its messages are " + (log.map { "in \($0)" } ?? "above") + ")"
        case .output(let s): return s
        }
    }
}

/// Reads the JSON header of a safetensors file (8-byte little-endian length, then JSON).
enum SafetensorsHeader {
    static func metadata(_ url: URL) throws -> [String: String] {
        let handle = try FileHandle(forReadingFrom: url)
        defer { try? handle.close() }
        guard let lenData = try handle.read(upToCount: 8), lenData.count == 8 else { throw TrainerError.output("\(url.path): not a safetensors file") }
        let length = lenData.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }.littleEndian
        guard length < 100_000_000, let json = try handle.read(upToCount: Int(length)), json.count == Int(length),
              let obj = try JSONSerialization.jsonObject(with: json) as? [String: Any] else {
            throw TrainerError.output("\(url.path): unreadable safetensors header")
        }
        return obj["__metadata__"] as? [String: String] ?? [:]
    }
}

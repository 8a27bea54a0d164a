import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Runs the Python side (`pidiff …`) as a subprocess: the contract between the two halves is
/// files (shards in, safetensors out), so this only builds arguments, streams the child's output
/// and reports its exit status.
public struct TrainerProcess: Sendable {
    public var python: String

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
    /// `processes` > 1 starts that many ranks through `accelerate launch` (one per GPU; CPU ranks
    /// over gloo where there is no GPU); `pidiff train` spreads its identity groups over them.
    public func run(_ arguments: [String], processes: Int = 1) throws {
        let launcher = processes > 1
            ? ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "\(processes)", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no"]
            : []
        // One process: it stops when pidiff-data dies, even by SIGKILL (pidiff.cli asks the kernel
        // for a signal on its parent's death). Under accelerate the ranks' parent is the launcher.
        let environment = processes > 1 ? [:] : ["PIDIFF_PARENT_PID": "\(getpid())"]
        let status = try Self.spawn(python, (python == "/usr/bin/env" ? ["python3"] : []) + launcher + ["-m", "pidiff.cli"] + arguments,
                                    environment: environment)
        guard status == 0 else { throw TrainerError.failed(arguments.first ?? "", status) }
    }

    /// Starts `executable` with its stdout on our stderr, waits for it and returns its exit status
    /// (128 + N when killed by signal N). posix_spawn with an empty signal mask and default
    /// handlers: a child started from one of our threads would otherwise inherit that thread's
    /// blocked SIGINT/SIGTERM/SIGHUP and ignore Ctrl-C and a service manager's stop.
    static func spawn(_ executable: String, _ arguments: [String], environment: [String: String] = [:]) throws -> Int32 {
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
        posix_spawn_file_actions_adddup2(&actions, STDERR_FILENO, STDOUT_FILENO)

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
    case failed(String, Int32)
    case output(String)
    public var description: String {
        switch self {
        case .launch(let py, let why): return "cannot start the trainer with \(py): \(why) (set PIDIFF_PYTHON or --python)"
        case .failed(let cmd, let code): return "pidiff \(cmd) failed with exit status \(code) (its messages are above)"
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

/// `pidiff-data encode`: export the split if needed, run `pidiff encode`, record every encoding in
/// the catalog keyed on (source SHA-256, preprocessing fingerprint, model fingerprint). A second
/// run finds everything recorded and encodes nothing; a changed model or input re-encodes exactly
/// what depends on it (the Python side also skips shards whose inputs and models are unchanged).
public struct EncodeDriver: Sendable {
    public var catalogPath: String
    public var split: String
    public var outDirectory: URL
    public var e4e: String
    public var sd: String
    public var extraArguments: [String] = []
    public var trainer = TrainerProcess()
    /// How the split is exported into `shardDirectory` first (grouping, shard size, label mapping):
    /// the same settings as the caller's own export, or it would rewrite those shards differently.
    public var exporter: ShardExporter

    public var shardDirectory: URL { outDirectory.appendingPathComponent("shards") }
    public var encodedDirectory: URL { outDirectory.appendingPathComponent("encoded") }

    public init(catalogPath: String, split: String, outDirectory: URL, e4e: String, sd: String) {
        self.catalogPath = catalogPath
        self.split = split
        self.outDirectory = outDirectory
        self.e4e = e4e
        self.sd = sd
        self.exporter = ShardExporter(catalogPath: catalogPath, split: split, outDirectory: outDirectory.appendingPathComponent("shards"))
    }

    /// The Python side's VAE fingerprint rule: one weight file → its SHA-256; several → SHA-256 of
    /// their `name:sha256` lines.
    static func vaeFingerprint(sd: String) throws -> String {
        let dir = URL(fileURLWithPath: sd).appendingPathComponent("vae")
        let files = try FileManager.default.contentsOfDirectory(atPath: dir.path)
            .filter { $0.hasSuffix(".safetensors") || $0.hasSuffix(".bin") }.sorted()
        guard !files.isEmpty else { throw TrainerError.output("\(dir.path): no VAE weights (.safetensors or .bin)") }
        let digests = try files.map { try Hashing.sha256Hex(fileAt: dir.appendingPathComponent($0)) }
        if files.count == 1 { return digests[0] }
        return Hashing.sha256Hex(Data(zip(files, digests).map { "\($0):\($1)\n" }.joined().utf8))
    }

    static func modelFingerprint(e4eSHA: String, vaeSHA: String) -> String { Hashing.fingerprint(["e4e": e4eSHA, "vae": vaeSHA]) }

    public struct Summary: Codable, Sendable {
        public var samples: Int
        public var alreadyEncoded: Int
        public var recorded: Int
        public var shards: [String]
        public var encodedDirectory: String
        enum CodingKeys: String, CodingKey {
            case samples, alreadyEncoded = "already_encoded", recorded, shards, encodedDirectory = "encoded_directory"
        }
    }

    public func run() throws -> Summary {
        let shardDir = shardDirectory, encodedDir = encodedDirectory
        guard exporter.outDirectory.standardizedFileURL.path == shardDir.standardizedFileURL.path, exporter.split == split else {
            throw TrainerError.output("encode: the exporter must write split \(split) into \(shardDir.path)")
        }
        let index = try exporter.run()
        // Encodings of shards the split no longer has (it now fits in fewer) would be trained on.
        try ShardExporter.removeStaleShards(of: split, in: encodedDir, keeping: Set(index.shards.map(\.name)), ext: "safetensors")
        let catalog = try Catalog(path: catalogPath)
        let sourceOfKey = Dictionary(uniqueKeysWithValues: index.sources.map { ($0.key, $0.sha256) })
        let preprocessing = Hashing.fingerprint(["ingest": index.ingestFingerprint, "mask": index.maskFingerprint])
        let e4eSHA = try Hashing.sha256Hex(fileAt: URL(fileURLWithPath: e4e)), vaeSHA = try Self.vaeFingerprint(sd: sd)
        let model = Self.modelFingerprint(e4eSHA: e4eSHA, vaeSHA: vaeSHA)
        let keys = index.sources.map { (sha256: $0.sha256, preprocessing: preprocessing) }
        let done = try catalog.encodedCount(keys, model: model)
        let shardPaths = index.shards.map { shardDir.appendingPathComponent($0.name).path }
        // The catalog remembers every model a sample was encoded with, but the folder holds one
        // encoding per shard: skip only when the files there are this model's too.
        let filesCurrent = index.shards.allSatisfy { shard in
            let file = encodedDir.appendingPathComponent(shard.name.replacingOccurrences(of: ".tar", with: ".safetensors"))
            guard let meta = try? SafetensorsHeader.metadata(file) else { return false }
            // …made from this very tar: a re-export may reuse a shard's name for other samples.
            return meta["e4e_sha256"] == e4eSHA && meta["vae_sha256"] == vaeSHA && meta["source_sha256"] == shard.sha256
        }
        // Arguments for `pidiff encode` (--force, another storage dtype…) may change the files: let it decide.
        if done == index.samples && filesCurrent && extraArguments.isEmpty {
            return Summary(samples: index.samples, alreadyEncoded: done, recorded: 0, shards: shardPaths, encodedDirectory: encodedDir.path)
        }
        try trainer.run(["encode", "--shards"] + shardPaths + ["--e4e", e4e, "--sd", sd, "--out", encodedDir.path] + extraArguments)

        // Record what the Python side wrote, from its own metadata.
        var rows: [(sha256: String, preprocessing: String, model: String, file: String, key: String)] = []
        for shard in index.shards {
            let file = encodedDir.appendingPathComponent(shard.name.replacingOccurrences(of: ".tar", with: ".safetensors"))
            let meta = try SafetensorsHeader.metadata(file)
            guard let keysJSON = meta["keys"], let e4eSHA = meta["e4e_sha256"], let vaeSHA = meta["vae_sha256"],
                  let keys = try JSONSerialization.jsonObject(with: Data(keysJSON.utf8)) as? [String] else {
                throw TrainerError.output("\(file.path): metadata lacks keys/e4e_sha256/vae_sha256")
            }
            let m = Self.modelFingerprint(e4eSHA: e4eSHA, vaeSHA: vaeSHA)
            for key in keys {
                guard let sha256 = sourceOfKey[key] else { throw TrainerError.output("\(file.path): unknown sample key \(key)") }
                rows.append((sha256, preprocessing, m, file.lastPathComponent, key))
            }
        }
        let recorded = try catalog.recordEncodings(rows)
        return Summary(samples: index.samples, alreadyEncoded: done, recorded: recorded, shards: shardPaths, encodedDirectory: encodedDir.path)
    }
}

import Foundation
import XCTest
@testable import PIDiffData
@testable import PIDiffModel
@testable import PIDiffCatalog
#if canImport(Glibc)
import Glibc
#endif

/// The trainer under several processes: how it is started, and that it ends with pidiff-data.
final class TrainerProcessTests: XCTestCase {
    func testSeveralProcessesGoThroughPidiffLaunch() {
        XCTAssertEqual(TrainerProcess.commandLine(python: "/venv/bin/python", ["encode", "--out", "e"], processes: 1),
                       ["-m", "pidiff.cli", "encode", "--out", "e"])
        XCTAssertEqual(TrainerProcess.commandLine(python: "/venv/bin/python", ["encode", "--out", "e"], processes: 3),
                       ["-m", "pidiff.cli", "launch", "--processes", "3", "--", "encode", "--out", "e"])
        XCTAssertEqual(TrainerProcess.commandLine(python: "/usr/bin/env", ["train"], processes: 2),
                       ["python3", "-m", "pidiff.cli", "launch", "--processes", "2", "--", "train"])
    }

    /// `pidiff-data train --processes 2` SIGKILLed while both ranks train: within a few seconds no
    /// process of that run (launcher or rank) is left.
    func testKilledPidiffDataStopsTheLauncherAndItsRanks() async throws {
        let dir = try TestSupport.temporaryDirectory()
        let catalog = try await Self.splitCatalog(dir)
        let models = dir.appendingPathComponent("models"), encoded = dir.appendingPathComponent("encoded")
        let made = try TestSupport.run(TestSupport.python, ["-m", "pidiff.cli", "random-model", "--out", models.path, "--tiny"])
        XCTAssertEqual(made.status, 0, made.stderr)
        let wrote = try TestSupport.run(TestSupport.python, ["-c", Self.writeEncodedSplit, encoded.appendingPathComponent("t-000000.safetensors").path])
        XCTAssertEqual(wrote.status, 0, wrote.stderr)

        let out = dir.appendingPathComponent("killed-run")
        let log = dir.appendingPathComponent("train.log")
        FileManager.default.createFile(atPath: log.path, contents: nil)
        let handle = try FileHandle(forWritingTo: log)
        defer { try? handle.close() }
        let p = Process()
        p.executableURL = TestSupport.cli
        p.arguments = ["train", "--catalog", catalog.path, "--split", "t", "--encoded", encoded.path,
                       "--sd", models.appendingPathComponent("sd").path, "--out", out.path, "--python", TestSupport.python,
                       "--processes", "2", "--", "--steps", "100000", "--group-size", "1", "--device", "cpu",
                       "--checkpoint-every", "0", "--log-every", "1"]
        p.environment = ProcessInfo.processInfo.environment.merging(["OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""]) { $1 }
        p.standardOutput = handle
        p.standardError = handle
        try p.run()
        defer { for pid in Self.processes(holding: out.path) { kill(pid, SIGKILL) } }

        let started = Date()
        func logText() -> String { (try? String(contentsOf: log, encoding: .utf8)) ?? "" }
        while !(logText().contains("[rank 0] step") && logText().contains("[rank 1] step")) {
            XCTAssertTrue(p.isRunning, logText())
            guard p.isRunning, Date().timeIntervalSince(started) < 240 else { return XCTFail("ranks never trained: \(logText())") }
            try await Task.sleep(nanoseconds: 100_000_000)
        }
        XCTAssertGreaterThanOrEqual(Self.processes(holding: out.path).count, 3, "the launcher and two ranks")
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
        var left = Self.processes(holding: out.path)
        let killed = Date()
        while !left.isEmpty, Date().timeIntervalSince(killed) < 10 {
            try await Task.sleep(nanoseconds: 100_000_000)
            left = Self.processes(holding: out.path)
        }
        XCTAssertEqual(left, [], "still running after pidiff-data's SIGKILL")
    }

    /// Live (not zombie) processes whose command line holds `marker`.
    static func processes(holding marker: String) -> [pid_t] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap { name -> pid_t? in
            guard let pid = pid_t(name),
                  let command = FileManager.default.contents(atPath: "/proc/\(name)/cmdline"),
                  let stat = try? String(contentsOfFile: "/proc/\(name)/stat", encoding: .utf8) else { return nil }
            let text = String(decoding: command.map { $0 == 0 ? 32 : $0 }, as: UTF8.self)
            let state = stat.split(separator: ")").last?.split(separator: " ").first
            return text.contains(marker) && state != "Z" ? pid : nil
        }.sorted()
    }

    /// Two identities ("a", "b") of one train sample each, in `pidiff encode`'s format, 8×8 latents.
    static let writeEncodedSplit = """
        import json, sys, torch
        from pathlib import Path
        from safetensors.torch import save_file
        g = torch.Generator().manual_seed(0)
        path = Path(sys.argv[1]); path.parent.mkdir(parents=True, exist_ok=True)
        keys = ["a_000", "b_000"]
        save_file({"w_plus": torch.randn(2, 18, 512, generator=g), "latent_mean": torch.randn(2, 4, 8, 8, generator=g),
                   "latent_std": torch.rand(2, 4, 8, 8, generator=g)}, str(path),
                  metadata={"format": "pidiff-encoded/2", "keys": json.dumps(keys), "count": "2", "scaling_factor": "0.18215",
                            "e4e_sha256": "e4e-0", "vae_sha256": "vae-0", "latent_size": "8",
                            "samples": json.dumps([{"identity": k[0], "role": "train", "labels": {}} for k in keys])})
        """

    /// A catalog with the split "t" (train only checks that the split exists; the encoded folder is
    /// made separately).
    static func splitCatalog(_ dir: URL) async throws -> URL {
        try TestSupport.requireAssets()
        let photos = ["obama/obama.jpg", "obama/obama2.jpg", "biden/biden.jpg"].map { TestSupport.sampleIdentities.appendingPathComponent($0) }
        let corpus = dir.appendingPathComponent("corpus")
        try IngestBenchmark.generateCorpus(from: photos, count: 6, into: corpus)
        let files = try FileManager.default.subpathsOfDirectory(atPath: corpus.path).filter { $0.hasSuffix(".jpg") }.sorted()
        var manifest = ""
        for (i, f) in files.enumerated() {
            let obj: [String: Any] = ["identity": ["a", "b"][i % 2], "path": "corpus/\(f)", "race": ["White", "Black"][i % 2], "age": 30]
            manifest += String(decoding: try JSONSerialization.data(withJSONObject: obj), as: UTF8.self) + "\n"
        }
        let m = dir.appendingPathComponent("m.jsonl")
        try manifest.write(to: m, atomically: true, encoding: .utf8)
        let catalog = dir.appendingPathComponent("c.sqlite")
        _ = try await TestSupport.ingest([m], catalog: catalog)
        let c = try Catalog(path: catalog.path)
        let selection = BalancedSelection.select(try c.balanceInputs(mapping: LabelMapping()), races: ["Black", "White"], ages: ["21-50"],
                                                 count: 2, imagesPerIdentity: 1, referenceImages: 1, seed: 1)
        try c.storeSplit(name: "t", seed: 1, parameters: "{}", selection: selection)
        return catalog
    }
}

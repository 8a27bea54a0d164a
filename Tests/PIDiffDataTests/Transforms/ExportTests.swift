import GRDB
import XCTest
@testable import PIDiffData
@testable import PIDiffModel
@testable import PIDiffNative
@testable import PIDiffCatalog

/// Shards: deterministic, readable by tarfile and webdataset, safe for any identity name,
/// resumable after SIGKILL; encodings recorded so a second encode does nothing.
final class ExportTests: XCTestCase {
    /// A catalog with masks and a split over identities with awkward names.
    private func splitCatalog(_ dir: URL, identities: [String], photosEach: Int = 3) async throws -> URL {
        try TestSupport.requireAssets()
        let photos = ["obama/obama.jpg", "obama/obama2.jpg", "obama/obama3.jpg", "biden/biden.jpg"].map { TestSupport.sampleIdentities.appendingPathComponent($0) }
        let corpus = dir.appendingPathComponent("corpus")
        try IngestBenchmark.generateCorpus(from: photos, count: identities.count * photosEach, into: corpus)
        let files = try FileManager.default.subpathsOfDirectory(atPath: corpus.path).filter { $0.hasSuffix(".jpg") }.sorted()
        var manifest = ""
        for (i, f) in files.enumerated() {
            let name = identities[i % identities.count]
            let obj: [String: Any] = ["identity": name, "path": "corpus/\(f)", "race": ["White", "Black", "Asian"][i % identities.count % 3], "age": 30]
            manifest += String(decoding: try JSONSerialization.data(withJSONObject: obj), as: UTF8.self) + "\n"
        }
        let m = dir.appendingPathComponent("m.jsonl")
        try manifest.write(to: m, atomically: true, encoding: .utf8)
        let catalog = dir.appendingPathComponent("c.sqlite")
        _ = try await TestSupport.ingest([m], catalog: catalog)
        _ = try await MaskPipeline(catalogPath: catalog.path, parameters: MaskParameters()).run()
        let c = try Catalog(path: catalog.path)
        let selection = BalancedSelection.select(try c.balanceInputs(mapping: LabelMapping()), races: ["Asian", "Black", "White"], ages: ["21-50"],
                                                 count: identities.count, imagesPerIdentity: 2, referenceImages: 1, seed: 1)
        try c.storeSplit(name: "t", seed: 1, parameters: "{}", selection: selection)
        return catalog
    }

    /// Cron runs `pidiff-data run` from anywhere: the trainer's Python is found beside the
    /// executable's checkout when the working directory has no `.venv`.
    func testTrainerPythonIsFoundFromTheWorkingDirectoryThenFromTheExecutable() throws {
        let dir = try TestSupport.temporaryDirectory().resolvingSymlinksInPath()
        let fm = FileManager.default
        func venv(_ root: URL) throws -> String {
            let bin = root.appendingPathComponent(".venv/bin")
            try fm.createDirectory(at: bin, withIntermediateDirectories: true)
            let python = bin.appendingPathComponent("python")
            try "#!/bin/sh\n".write(to: python, atomically: true, encoding: .utf8)
            try fm.setAttributes([.posixPermissions: 0o755], ofItemAtPath: python.path)
            return python.path
        }
        let checkout = dir.appendingPathComponent("checkout"), elsewhere = dir.appendingPathComponent("elsewhere")
        let executable = checkout.appendingPathComponent(".build/x86_64-unknown-linux-gnu/release/pidiff-data")
        try fm.createDirectory(at: executable.deletingLastPathComponent(), withIntermediateDirectories: true)
        try fm.createDirectory(at: elsewhere, withIntermediateDirectories: true)
        XCTAssertNil(TrainerProcess.virtualEnvironment(workingDirectory: elsewhere, executable: executable))
        let checkoutPython = try venv(checkout)
        XCTAssertEqual(TrainerProcess.virtualEnvironment(workingDirectory: elsewhere, executable: executable), checkoutPython)
        let localPython = try venv(elsewhere)
        XCTAssertEqual(TrainerProcess.virtualEnvironment(workingDirectory: elsewhere, executable: executable), localPython)
        XCTAssertEqual(TrainerProcess(python: "/opt/py").python, "/opt/py")
    }

    /// The trainer must stop on Ctrl-C or a service manager's SIGTERM: it starts with no signal
    /// blocked even when the thread starting it blocks some, and learns our pid (to end with us).
    func testTrainerStartsWithSignalsUnblockedAndKnowsItsParent() throws {
        let dir = try TestSupport.temporaryDirectory()
        let script = dir.appendingPathComponent("fake-python")
        try """
            #!/usr/bin/python3
            import os, sys
            blocked = next(line for line in open("/proc/self/status") if line.startswith("SigBlk:"))
            with open(os.path.join(os.path.dirname(sys.argv[0]), "report"), "w") as report:
                report.write(f"{blocked}parent={os.environ.get('PIDIFF_PARENT_PID')}\\nargs={' '.join(sys.argv[1:])}\\n")
            sys.exit(3)
            """.write(to: script, atomically: true, encoding: .utf8)
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: script.path)
        var blocked = sigset_t(), previous = sigset_t()
        sigemptyset(&blocked)
        for signal in [SIGINT, SIGTERM, SIGHUP] { sigaddset(&blocked, signal) }
        pthread_sigmask(SIG_BLOCK, &blocked, &previous)
        defer { pthread_sigmask(SIG_SETMASK, &previous, nil) }
        XCTAssertThrowsError(try TrainerProcess(python: script.path).run(["train", "--steps", "1"])) {
            XCTAssertTrue("\($0)".contains("exit status 3"), "\($0)")
        }
        let report = try String(contentsOf: dir.appendingPathComponent("report"), encoding: .utf8)
        let mask = try XCTUnwrap(report.split(separator: "\n").first?.split(separator: "\t").last.flatMap { UInt64($0, radix: 16) })
        for signal in [SIGINT, SIGTERM, SIGHUP] { XCTAssertEqual(mask & (1 << UInt64(signal - 1)), 0, "signal \(signal) blocked: \(report)") }
        XCTAssertTrue(report.contains("parent=\(getpid())"), report)
        XCTAssertTrue(report.contains("args=-m pidiff.cli train --steps 1"), report)
    }

    func testShardsAreDeterministicReadableAndConfinedWhateverTheNames() async throws {
        let dir = try TestSupport.temporaryDirectory()
        let hostile = ["../../escape", "dots.in.name", "quote'\"name", "名前 ünï"]
        let catalog = try await splitCatalog(dir, identities: hostile)
        let a = dir.appendingPathComponent("out-a"), b = dir.appendingPathComponent("out-b")
        var exporter = ShardExporter(catalogPath: catalog.path, split: "t", outDirectory: a)
        exporter.maxShardBytes = 1_500_000 // several shards
        let index = try exporter.run()
        exporter.outDirectory = b
        _ = try exporter.run()
        XCTAssertEqual(index.samples, 12)
        XCTAssertGreaterThan(index.shards.count, 1)
        // Byte-identical, and nothing outside the output folders.
        for name in index.shards.map(\.name) + ["t.index.json"] {
            XCTAssertEqual(try Data(contentsOf: a.appendingPathComponent(name)), try Data(contentsOf: b.appendingPathComponent(name)), name)
        }
        let written = try FileManager.default.contentsOfDirectory(atPath: dir.path).sorted()
        let expected: Set = ["c.sqlite", "c.sqlite-shm", "c.sqlite-wal", "c.sqlite.data", "c.sqlite.lock", "corpus", "m.jsonl", "out-a", "out-b"]
        XCTAssertTrue(Set(written).isSubset(of: expected), "unexpected files: \(Set(written).subtracting(expected))")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: a.path).filter { !$0.hasSuffix(".tar") && $0 != "t.index.json" }.sorted(), [Scanner.outputMarker, ".pidiff-output.lock"])
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir.deletingLastPathComponent().appendingPathComponent("escape").path))
        for entry in index.shards {
            XCTAssertEqual(Hashing.sha256Hex(try Data(contentsOf: a.appendingPathComponent(entry.name))), entry.sha256)
        }
        // Both Python readers see every sample with its four files; keys carry no dots.
        let read = try TestSupport.run(TestSupport.python, [TestSupport.fixtures.appendingPathComponent("read_shards.py").path, a.appendingPathComponent("t.index.json").path])
        XCTAssertEqual(read.status, 0, read.stderr)
        let summary = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(read.stdout.utf8)) as? [String: Any])
        let tarKeys = try XCTUnwrap(summary["tarfile"] as? [[String]])
        let wds = try XCTUnwrap(summary["webdataset"] as? [[String: Any]])
        XCTAssertEqual(tarKeys.count, 12)
        XCTAssertEqual(wds.count, 12)
        XCTAssertEqual(Set(tarKeys.map { $0[1] }), Set(hostile))
        for s in wds {
            XCTAssertEqual(s["fields"] as? [String], ["e4e.png", "json", "mask.png", "png"])
            XCTAssertFalse((s["key"] as! String).contains("."))
        }
        XCTAssertEqual(Set(wds.map { $0["key"] as! String }), Set(tarKeys.map { $0[0] }))
        XCTAssertThrowsError(try ShardExporter(catalogPath: catalog.path, split: "../x", outDirectory: a).run())
    }

    /// Splits are immutable: overwriting a selected photo and ingesting again must not mix the new
    /// photo's crop and landmarks with the old mask, nor break the export.
    func testExportKeepsTheContentTheSplitRecordedWhenAPhotoIsOverwritten() async throws {
        let dir = try TestSupport.temporaryDirectory()
        let catalog = try await splitCatalog(dir, identities: ["ann", "bob"])
        let c = try Catalog(path: catalog.path)
        let before = try c.exportSamples(split: "t")
        let victim = try XCTUnwrap(before.first), donor = try XCTUnwrap(before.last { $0.sha256 != victim.sha256 })
        try FileManager.default.removeItem(atPath: victim.path)
        try FileManager.default.copyItem(atPath: donor.path, toPath: victim.path)
        _ = try await TestSupport.ingest([dir.appendingPathComponent("m.jsonl")], catalog: catalog)
        let after = try c.exportSamples(split: "t")
        XCTAssertEqual(after.map(\.sha256), before.map(\.sha256))
        XCTAssertEqual(after.map(\.crop512), before.map(\.crop512))
        XCTAssertEqual(after.map(\.mask512), before.map(\.mask512))
        XCTAssertEqual(after.map(\.landmarks68), before.map(\.landmarks68))
        XCTAssertTrue(after.allSatisfy { $0.crop512 != nil && $0.mask512 != nil })
    }

    /// A photo that `fetch` downloaded carries its URL, licence and source into its shard JSON; the
    /// others are written as before (no key).
    func testFetchedProvenanceReachesTheShardJSONOnlyWhereThereIsOne() async throws {
        let dir = try TestSupport.temporaryDirectory()
        let catalog = try await splitCatalog(dir, identities: ["ann", "bob"])
        let c = try Catalog(path: catalog.path)
        let fetched = try XCTUnwrap(c.exportSamples(split: "t").first)
        var record = FetchURLRecord(entry: FetchListEntry(identity: fetched.identity, url: "https://example.org/p/1.jpg", license: "CC-BY-4.0",
                                                          source: "example.org", location: "web.csv:2"), runID: nil)
        record.status = .done
        record.sha256 = fetched.sha256
        record.path = "\(fetched.identity)/\(fetched.sha256.prefix(16)).jpg"
        try c.saveFetchStates([record])
        let out = dir.appendingPathComponent("out")
        let index = try ShardExporter(catalogPath: catalog.path, split: "t", outDirectory: out).run()
        let dump = try TestSupport.run(TestSupport.python, ["-c", """
            import json, sys, tarfile
            rows = []
            for shard in sys.argv[1:]:
                with tarfile.open(shard) as t:
                    rows += [json.load(t.extractfile(m)) for m in t.getmembers() if m.name.endswith(".json")]
            print(json.dumps(rows))
            """] + index.shards.map { out.appendingPathComponent($0.name).path })
        XCTAssertEqual(dump.status, 0, dump.stderr)
        let rows = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(dump.stdout.utf8)) as? [[String: Any]])
        let with = rows.filter { $0["provenance"] != nil }
        XCTAssertEqual(with.count, 1)
        XCTAssertEqual(with.first?["source_sha256"] as? String, fetched.sha256)
        XCTAssertEqual(with.first?["provenance"] as? [String: String],
                       ["url": "https://example.org/p/1.jpg", "license": "CC-BY-4.0", "source": "example.org"])
    }

    func testIdentityGroupingKeepsAnIdentityWholeWhenItFitsAShard() {
        let kB = 1000, max = 1000 * kB
        // A: 6 × 100 kB, B: 3 × 150 kB. B does not fit after A but fits alone: it starts shard 1.
        let members = Array(repeating: ("A", 100 * kB), count: 6) + Array(repeating: ("B", 150 * kB), count: 3)
        XCTAssertEqual(ShardExporter.shardPlan(members.map { (identity: $0.0, bytes: $0.1) }, grouping: .identity, maxShardBytes: max),
                       [0, 0, 0, 0, 0, 0, 1, 1, 1])
        // Mixed order only cuts by size.
        XCTAssertEqual(ShardExporter.shardPlan(members.map { (identity: $0.0, bytes: $0.1) }, grouping: .mixed, maxShardBytes: max),
                       [0, 0, 0, 0, 0, 0, 0, 0, 1])
        // An identity larger than a shard is split, filling shards in order.
        let big = Array(repeating: (identity: "C", bytes: 400 * kB), count: 5)
        XCTAssertEqual(ShardExporter.shardPlan([(identity: "A", bytes: 100 * kB)] + big, grouping: .identity, maxShardBytes: max),
                       [0, 0, 0, 1, 1, 2])
    }

    func testAnExportNeedingFewerShardsRemovesTheLeftoversAndEncodeTheirEncodings() async throws {
        let dir = try TestSupport.temporaryDirectory()
        let catalog = try await splitCatalog(dir, identities: ["a", "b"], photosEach: 3)
        let out = dir.appendingPathComponent("shards")
        var exporter = ShardExporter(catalogPath: catalog.path, split: "t", outDirectory: out)
        exporter.maxShardBytes = 4096 // one sample per shard
        let many = try exporter.run()
        XCTAssertEqual(many.shards.count, 6)
        // Encodings of those shards, and another split's files, which must survive.
        let encoded = dir.appendingPathComponent("encoded")
        try FileManager.default.createDirectory(at: encoded, withIntermediateDirectories: true)
        for name in ["t-000005.safetensors", "t2-000007.safetensors"] {
            try Data("x".utf8).write(to: encoded.appendingPathComponent(name))
        }
        try Data("x".utf8).write(to: out.appendingPathComponent("t2-000009.tar"))

        exporter.maxShardBytes = 1_000_000_000
        let one = try exporter.run()
        XCTAssertEqual(one.shards.map(\.name), ["t-000000.tar"])
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: out.path).sorted(), [".pidiff-output", ".pidiff-output.lock", "t-000000.tar", "t.index.json", "t2-000009.tar"])
        try ShardExporter.removeStaleShards(of: "t", in: encoded, keeping: Set(one.shards.map(\.name)), ext: "safetensors")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: encoded.path).sorted(), ["t2-000007.safetensors"])
    }

    func testExportResumesAfterSigkillToTheSameBytes() async throws {
        let dir = try TestSupport.temporaryDirectory()
        let catalog = try await splitCatalog(dir, identities: ["a", "b", "c", "d"])
        let reference = dir.appendingPathComponent("ref")
        var exporter = ShardExporter(catalogPath: catalog.path, split: "t", outDirectory: reference)
        exporter.maxShardBytes = 1_000_000
        let index = try exporter.run()
        XCTAssertGreaterThan(index.shards.count, 2)

        let out = dir.appendingPathComponent("killed")
        let p = Process()
        p.executableURL = TestSupport.cli
        p.arguments = ["export", "--split", "t", "--out", out.path, "--catalog", catalog.path, "--max-shard-bytes", "1000000"]
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        let first = out.appendingPathComponent("t-000000.tar")
        let deadline = Date().addingTimeInterval(60)
        while p.isRunning && !FileManager.default.fileExists(atPath: first.path) && Date() < deadline { usleep(2000) }
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
        // Whatever was left: at most complete shards and a temporary file, never a partial shard
        // under a final name. Simulate the worst case too: a truncated temporary file.
        try Data(count: 1000).write(to: out.appendingPathComponent(".t-000001.tar.tmp"))
        exporter.outDirectory = out
        _ = try exporter.run()
        for name in index.shards.map(\.name) + ["t.index.json"] {
            XCTAssertEqual(try Data(contentsOf: out.appendingPathComponent(name)), try Data(contentsOf: reference.appendingPathComponent(name)), name)
        }
        // A shard damaged on disk is rewritten, an intact one reused.
        try Data("garbage".utf8).write(to: out.appendingPathComponent("t-000001.tar"))
        let again = try exporter.run()
        XCTAssertEqual(again.written, 1)
        XCTAssertEqual(again.reused, index.shards.count - 1)
    }

    func testEncodeRecordsEncodingsAndASecondRunEncodesNothing() async throws {
        let dir = try TestSupport.temporaryDirectory()
        let catalog = try await splitCatalog(dir, identities: ["a", "b"], photosEach: 3)
        let models = dir.appendingPathComponent("models")
        let made = try TestSupport.run(TestSupport.python, ["-m", "pidiff.cli", "random-model", "--out", models.path, "--tiny"])
        XCTAssertEqual(made.status, 0, made.stderr)
        var driver = EncodeDriver(catalogPath: catalog.path, split: "t", outDirectory: dir.appendingPathComponent("work"),
                                  e4e: models.appendingPathComponent("e4e.pt").path, sd: models.appendingPathComponent("sd").path)
        driver.trainer = TrainerProcess(python: TestSupport.python)
        let first = try driver.run()
        XCTAssertEqual(first.samples, 6)
        XCTAssertEqual(first.recorded, 6)
        let second = try driver.run()
        XCTAssertEqual(second.alreadyEncoded, 6)
        XCTAssertEqual(second.recorded, 0)
        let rows = try await Catalog(path: catalog.path).pool.read { try Int.fetchOne($0, sql: "SELECT COUNT(*) FROM encodings") }
        XCTAssertEqual(rows, 6)
        // Another e4e checkpoint (other random weights, same layout) is another model: everything
        // is encoded and recorded again, beside the first model's rows.
        let models2 = dir.appendingPathComponent("models2")
        let made2 = try TestSupport.run(TestSupport.python, ["-m", "pidiff.cli", "random-model", "--out", models2.path, "--tiny", "--seed", "1"])
        XCTAssertEqual(made2.status, 0, made2.stderr)
        var otherModel = driver
        otherModel.e4e = models2.appendingPathComponent("e4e.pt").path
        let third = try otherModel.run()
        XCTAssertEqual(third.alreadyEncoded, 0)
        XCTAssertEqual(third.recorded, 6)
        let modelsRecorded = try await Catalog(path: catalog.path).pool.read {
            try Int.fetchOne($0, sql: "SELECT COUNT(DISTINCT model_fingerprint) FROM encodings")
        }
        XCTAssertEqual(modelsRecorded, 2)
        // Back to the first model: the catalog has it all, but the files now hold the second
        // model's codes, so they are encoded again (and nothing new is recorded).
        let fourth = try driver.run()
        XCTAssertEqual(fourth.alreadyEncoded, 6)
        XCTAssertEqual(fourth.recorded, 0)
        let e4eSHA = try Hashing.sha256Hex(fileAt: models.appendingPathComponent("e4e.pt"))
        func encodedMetadata(_ key: String) throws -> [String?] {
            try fourth.shards.map { shard in
                try SafetensorsHeader.metadata(URL(fileURLWithPath: first.encodedDirectory).appendingPathComponent(
                    URL(fileURLWithPath: shard).lastPathComponent.replacingOccurrences(of: ".tar", with: ".safetensors")))[key]
            }
        }
        XCTAssertEqual(try encodedMetadata("e4e_sha256"), fourth.shards.map { _ in e4eSHA })
        // Arguments for `pidiff encode` are never dropped because the catalog is complete.
        var half = driver
        half.extraArguments = ["--storage-dtype", "float16"]
        _ = try half.run()
        XCTAssertEqual(try encodedMetadata("storage_dtype"), fourth.shards.map { _ in "float16" })

        // Smaller shards (and keys) after a re-export: the rows follow the encodings to their new
        // files instead of naming files that no longer hold them.
        var resharded = driver
        resharded.exporter.maxShardBytes = 4096
        let fifth = try resharded.run()
        XCTAssertGreaterThan(fifth.shards.count, fourth.shards.count)
        XCTAssertGreaterThan(fifth.recorded, 0)
        let model = EncodeDriver.modelFingerprint(e4eSHA: e4eSHA, vaeSHA: try XCTUnwrap(try encodedMetadata("vae_sha256").first ?? nil))
        let files = try await Catalog(path: catalog.path).pool.read {
            try Set(String.fetchAll($0, sql: "SELECT encoded_file FROM encodings WHERE model_fingerprint = ?", arguments: [model]))
        }
        XCTAssertEqual(files, Set(fifth.shards.map { URL(fileURLWithPath: $0).lastPathComponent.replacingOccurrences(of: ".tar", with: ".safetensors") }))
        // Back to one large shard: its name is reused for other samples, so the encoded file (made
        // from the small first shard) is not current; it is encoded again and the rows follow.
        let sixth = try driver.run()
        XCTAssertEqual(sixth.shards.count, fourth.shards.count)
        let encodedKeys = try sixth.shards.flatMap { shard -> [String] in
            let meta = try SafetensorsHeader.metadata(URL(fileURLWithPath: sixth.encodedDirectory).appendingPathComponent(
                URL(fileURLWithPath: shard).lastPathComponent.replacingOccurrences(of: ".tar", with: ".safetensors")))
            return try XCTUnwrap(JSONSerialization.jsonObject(with: Data(try XCTUnwrap(meta["keys"]).utf8)) as? [String])
        }
        XCTAssertEqual(encodedKeys.count, 6)
        let filesAfter = try await Catalog(path: catalog.path).pool.read {
            try Set(String.fetchAll($0, sql: "SELECT encoded_file FROM encodings WHERE model_fingerprint = ?", arguments: [model]))
        }
        XCTAssertEqual(filesAfter, Set(sixth.shards.map { URL(fileURLWithPath: $0).lastPathComponent.replacingOccurrences(of: ".tar", with: ".safetensors") }))

        // Training the split over two launched processes (CPU ranks): each identity trained once.
        let trainOut = dir.appendingPathComponent("train")
        let trained = try TestSupport.runCLI(["train", "--catalog", catalog.path, "--split", "t", "--encoded", first.encodedDirectory,
                                              "--sd", models.appendingPathComponent("sd").path, "--out", trainOut.path,
                                              "--python", TestSupport.python, "--processes", "2",
                                              "--", "--steps", "1", "--group-size", "1", "--device", "cpu"])
        XCTAssertEqual(trained.status, 0, trained.stderr)
        for identity in ["a", "b"] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: trainOut.appendingPathComponent("\(identity)/pidiff.safetensors").path))
        }
        let log = trained.stdout + trained.stderr
        XCTAssertTrue(log.contains("[rank 0] group 0: training a") && log.contains("[rank 1] group 1: training b"), log)
        let runs = try await Catalog(path: catalog.path).pool.read {
            try String.fetchAll($0, sql: "SELECT parameters FROM runs WHERE command = 'train'")
        }
        XCTAssertEqual(runs.count, 1)
        XCTAssertTrue(runs.first?.contains("\"processes\":2") == true, "\(runs)")
    }
}

extension ExportTests {
    /// encode (and a repeated export) keep an export whose plan is unchanged and whose shards
    /// still match the index, without reading the artefacts again; other options rewrite it.
    func testAnUpToDateExportIsKeptWithoutReadingArtefacts() async throws {
        let dir = try TestSupport.temporaryDirectory()
        let catalog = try await splitCatalog(dir, identities: ["a", "b"], photosEach: 3)
        let out = dir.appendingPathComponent("shards")
        var exporter = ShardExporter(catalogPath: catalog.path, split: "t", outDirectory: out)
        let first = try exporter.run()
        XCTAssertEqual(first.written, first.shards.count)
        let before = try Data(contentsOf: out.appendingPathComponent(first.shards[0].name))
        // Same size, other bytes: an export that read the crop would write a different shard.
        let crop = try XCTUnwrap(try Catalog(path: catalog.path).exportSamples(split: "t").first?.crop512)
        let cropURL = ArtefactStore(root: try Catalog(path: catalog.path).dataRoot()).url(crop)
        let original = try Data(contentsOf: cropURL)
        try Data(repeating: 7, count: original.count).write(to: cropURL)
        let second = try exporter.run()
        XCTAssertEqual(second.reused, first.shards.count)
        XCTAssertEqual(second.written, 0)
        XCTAssertEqual(try Data(contentsOf: out.appendingPathComponent(first.shards[0].name)), before)
        try original.write(to: cropURL)
        // A shard that no longer matches its index entry is rebuilt.
        try Data("garbage".utf8).write(to: out.appendingPathComponent(first.shards[0].name))
        XCTAssertEqual(try exporter.run().written, 1)
        XCTAssertEqual(try Data(contentsOf: out.appendingPathComponent(first.shards[0].name)), before)
        // Other options, other plan: rewritten.
        exporter.grouping = .mixed
        exporter.seed = 3
        XCTAssertEqual(try exporter.run().written, first.shards.count)
    }
}

extension ExportTests {
    /// A split `t` of two identities × 3 photos exported to `dir/aligned` and then `dir/context`
    /// (`--view context`); the exporter is left set for the context view.
    func alignedAndContextExports(_ dir: URL) async throws -> (catalog: URL, exporter: ShardExporter, aligned: ShardExporter.Index,
                                                               context: ShardExporter.Index) {
        let catalog = try await splitCatalog(dir, identities: ["a", "b"], photosEach: 3)
        var exporter = ShardExporter(catalogPath: catalog.path, split: "t", outDirectory: dir.appendingPathComponent("aligned"))
        let aligned = try exporter.run()
        exporter.view = .context
        exporter.outDirectory = dir.appendingPathComponent("context")
        return (catalog, exporter, aligned, try exporter.run())
    }

    /// `--view context`: the 512 training image is a wider square around the same face (the e4e
    /// input stays the aligned face), recorded in the sample JSON and the index; made once.
    func testTheContextViewIsAWiderCropOfTheSameFaceRecordedAsSuch() async throws {
        let dir = try TestSupport.temporaryDirectory()
        let (catalog, exporter, aligned, context) = try await alignedAndContextExports(dir)
        XCTAssertEqual(context.view, "context")
        XCTAssertEqual(aligned.view, "aligned")
        let read = try TestSupport.run(TestSupport.python, ["-c", """
            import io, json, sys, tarfile
            from PIL import Image
            def members(path):
                with tarfile.open(path) as t:
                    return {m.name: t.extractfile(m).read() for m in t.getmembers()}
            a, c = members(sys.argv[1]), members(sys.argv[2])
            key = sorted(n for n in a if n.endswith(".e4e.png"))[0][:-len(".e4e.png")]
            out = {"e4e_same": a[key + ".e4e.png"] == c[key + ".e4e.png"], "png_same": a[key + ".png"] == c[key + ".png"],
                   "size": Image.open(io.BytesIO(c[key + ".png"])).size, "view": json.loads(c[key + ".json"]).get("view"),
                   "aligned_view": json.loads(a[key + ".json"]).get("view")}
            print(json.dumps(out))
            """, dir.appendingPathComponent("aligned/t-000000.tar").path, dir.appendingPathComponent("context/t-000000.tar").path])
        let out = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(read.stdout.utf8)) as? [String: Any], read.stderr)
        XCTAssertEqual(out["e4e_same"] as? Bool, true, "the identity input is the aligned face either way")
        XCTAssertEqual(out["png_same"] as? Bool, false)
        XCTAssertEqual(out["size"] as? [Int], [512, 512])
        XCTAssertEqual(out["view"] as? String, "context")
        XCTAssertTrue(out["aligned_view"] is NSNull || out["aligned_view"] == nil, "aligned samples carry no view key, as before")
        // A second export reuses the context crops it made.
        XCTAssertEqual(try exporter.run().written, 0)
    }
}

extension ExportTests {
    /// `--view context`: `<key>.mask.png` is the mask of the context image, not of the aligned
    /// crop: foreground where the face is in the wider frame, 0 beyond what the aligned crop
    /// covered, and the aligned mask 2×2-averaged in the central square, where the context image
    /// itself is the aligned crop at half scale. The aligned view still ships the stored crop and
    /// mask byte for byte.
    func testTheContextViewsMaskLinesUpWithItsImageAndTheAlignedViewIsUnchanged() async throws {
        let dir = try TestSupport.temporaryDirectory()
        let (catalog, exporter, aligned, context) = try await alignedAndContextExports(dir)
        XCTAssertEqual(aligned.shards.count, 1)
        XCTAssertEqual(context.shards.count, 1)
        // The context views and masks kept in the data root are not orphans to verify.
        let verified = try CatalogVerifier(catalogPath: catalog.path).run()
        XCTAssertEqual(verified.orphans, [])
        XCTAssertEqual(verified.contextViews, 2 * context.sources.count, "a context crop and a context mask per sample")

        // The aligned view: the catalog's crop and mask, as stored.
        let c = try Catalog(path: catalog.path)
        let store = ArtefactStore(root: try c.dataRoot())
        let stored = Dictionary(try c.exportSamples(split: "t").map { ($0.sha256, $0) }, uniquingKeysWith: { first, _ in first })
        let members = try TarMembers.read(dir.appendingPathComponent("aligned/t-000000.tar"))
        for (key, sha) in aligned.sources {
            let s = try XCTUnwrap(stored[sha])
            XCTAssertEqual(members["\(key).png"], try Data(contentsOf: store.url(try XCTUnwrap(s.crop512))), key)
            XCTAssertEqual(members["\(key).mask.png"], try Data(contentsOf: store.url(try XCTUnwrap(s.mask512))), key)
        }

        let check = try TestSupport.run(TestSupport.python, ["-c", """
            import io, json, sys, tarfile
            import numpy as np
            from PIL import Image
            def members(path):
                with tarfile.open(path) as t:
                    return {m.name: t.extractfile(m).read() for m in t.getmembers()}
            def grey(b): return np.asarray(Image.open(io.BytesIO(b)).convert("L"), dtype=np.float64)
            a, c = members(sys.argv[1]), members(sys.argv[2])
            out = []
            for name in sorted(n for n in c if n.endswith(".json")):
                key = name[:-len(".json")]
                meta = json.loads(c[name])
                mask, image = grey(c[key + ".mask.png"]), grey(c[key + ".png"])
                amask, aimage = grey(a[key + ".mask.png"]), grey(a[key + ".png"])
                S = 512
                # Landmarks (photo pixels) into the context crop: fn_align maps pixel x to
                # u = (x + 1/2)/S along the quad; the context quad is the quad doubled about its centre.
                q = np.array(meta["quad"], dtype=np.float64)
                ctr = q.mean(axis=0)
                w = ctr + 2.0 * (q - ctr)
                A = np.stack([w[3] - w[0], w[1] - w[0]], axis=1)
                lm = np.array(meta["landmarks68"], dtype=np.float64)
                uv = np.linalg.solve(A, (lm - w[0]).T).T
                xy = uv * S - 0.5
                inner = xy[27:48]  # nose and eyes
                values = [mask[int(round(y)), int(round(x))] for x, y in inner]
                ys, xs = np.nonzero(mask > 127)
                ring = np.ones_like(mask, dtype=bool)
                ring[128:384, 128:384] = False
                # The context image's central square is the aligned crop at half scale: it matches
                # there better than one pixel off in any direction.
                half = aimage.reshape(256, 2, 256, 2).mean(axis=(1, 3))
                def psnr(dx, dy):
                    mse = ((image[128 + dy:384 + dy, 128 + dx:384 + dx] - half) ** 2).mean()
                    return float(10 * np.log10(255 ** 2 / max(mse, 1e-9)))
                shifts = {(dx, dy): psnr(dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1)}
                expected = np.floor(amask.reshape(256, 2, 256, 2).sum(axis=(1, 3)) / 4 + 0.5)
                out.append({
                    "key": key,
                    "min_at_landmarks": float(min(values)),
                    "outside_max": float(mask[ring].max()),
                    "aligned_outside_max": float(amask[ring].max()),
                    "centroid_to_landmarks": float(np.hypot(xs.mean() - inner[:, 0].mean(), ys.mean() - inner[:, 1].mean())),
                    "foreground_extent": [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())],
                    "zoom_error": float(np.abs(mask[128:384, 128:384] - expected).max()),
                    "image_psnr": shifts[(0, 0)],
                    "best_shift": list(max(shifts, key=shifts.get)),
                })
            print(json.dumps(out))
            """, dir.appendingPathComponent("aligned/t-000000.tar").path, dir.appendingPathComponent("context/t-000000.tar").path])
        XCTAssertEqual(check.status, 0, check.stderr)
        let samples = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(check.stdout.utf8)) as? [[String: Any]], check.stderr)
        XCTAssertEqual(samples.count, context.samples)
        for s in samples {
            let key = s["key"] as! String
            XCTAssertGreaterThanOrEqual(s["min_at_landmarks"] as! Double, 128, "the face is foreground where the context image shows it: \(s)")
            XCTAssertEqual(s["outside_max"] as! Double, 0, "nothing beyond the aligned area: \(s)")
            XCTAssertGreaterThan(s["aligned_outside_max"] as! Double, 0, "\(key): the aligned mask reaches there, so this checks the zoom")
            XCTAssertLessThan(s["centroid_to_landmarks"] as! Double, 40, "\(s)")
            let extent = s["foreground_extent"] as! [Int]
            XCTAssertTrue(extent[0] >= 128 && extent[1] >= 128 && extent[2] < 384 && extent[3] < 384, "\(s)")
            XCTAssertLessThanOrEqual(s["zoom_error"] as! Double, 1, "the aligned mask, 2×2-averaged: \(s)")
            XCTAssertGreaterThan(s["image_psnr"] as! Double, 30, "the image is zoomed out the same way (so mask and image line up): \(s)")
            XCTAssertEqual(s["best_shift"] as? [Int], [0, 0], "\(s)")
        }
        // Made once: a second export finds the context masks.
        XCTAssertEqual(try exporter.run().written, 0)
    }
}

/// The members of an uncompressed ustar file by name.
enum TarMembers {
    static func read(_ url: URL) throws -> [String: Data] {
        let data = try Data(contentsOf: url)
        var out: [String: Data] = [:]
        var offset = 0
        while offset + 512 <= data.count {
            let header = data[data.startIndex + offset ..< data.startIndex + offset + 512]
            guard header.contains(where: { $0 != 0 }) else { break }
            let name = String(decoding: header.prefix(100).prefix { $0 != 0 }, as: UTF8.self)
            let sizeField = String(decoding: header.dropFirst(124).prefix(11), as: UTF8.self)
            guard let size = Int(sizeField, radix: 8) else { throw ExportError.invalid("bad tar header at \(offset)") }
            out[name] = data.subdata(in: data.startIndex + offset + 512 ..< data.startIndex + offset + 512 + size)
            offset += 512 + (size + 511) / 512 * 512
        }
        return out
    }
}

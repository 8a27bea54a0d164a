import XCTest
import Yams
@testable import PIDiffData
@testable import PIDiffModel
@testable import PIDiffNative
@testable import PIDiffCatalog

/// `pidiff-data run` as cron runs it: twice, concurrently, with JSON-line logs and exit statuses.
final class RunPipelineTests: XCTestCase {
    private func cronPipeline(_ dir: URL, inbox: URL) throws -> URL {
        let file = dir.appendingPathComponent("cron.yaml")
        try """
        run:
          catalog: \(dir.path)/c.sqlite
          sources: ["\(inbox.path)"]
          stages: [ingest, curate, masks, labels]
        """.write(to: file, atomically: true, encoding: .utf8)
        return file
    }

    func testCronPipelineTwiceThenConcurrentlyThenPartial() throws {
        try TestSupport.requireAssets()
        let dir = try TestSupport.temporaryDirectory()
        let inbox = dir.appendingPathComponent("inbox")
        try FileManager.default.copyItem(at: TestSupport.sampleIdentities, to: inbox)
        let pipeline = try cronPipeline(dir, inbox: inbox)

        let first = try TestSupport.runCLI(["run", "--pipeline", pipeline.path, "--json"])
        XCTAssertEqual(first.status, 0, first.stderr)
        let logs = first.stderr.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        XCTAssertFalse(logs.isEmpty)
        let runIDs = Set(logs.compactMap { $0["run_id"] as? String })
        XCTAssertEqual(runIDs.count, 1, "every log line carries the run id")
        XCTAssertTrue(logs.contains { ($0["stage"] as? String) == "masks" })

        // Second run: nothing new, nothing re-read.
        let second = try TestSupport.runCLI(["run", "--pipeline", pipeline.path])
        XCTAssertEqual(second.status, 0, second.stderr)
        XCTAssertTrue(second.stderr.contains("\"unchanged\":\"7\"") || second.stderr.contains("\"unchanged\":7"), second.stderr)
        XCTAssertNotEqual(Set(second.stderr.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
                                .compactMap { $0["run_id"] as? String }), runIDs)

        // While another run holds the run lock: distinct status, one line.
        do {
            let held = try CatalogLock(catalogPath: dir.appendingPathComponent("c.sqlite").path + ".run")
            let blocked = try TestSupport.runCLI(["run", "--pipeline", pipeline.path])
            XCTAssertEqual(blocked.status, 75)
            XCTAssertEqual(blocked.stderr.split(separator: "\n").count, 1, blocked.stderr)
            withExtendedLifetime(held) {}
        }
        // While another command (a manual `masks`, say) holds the catalog itself: also 75, not a failure.
        do {
            let held = try CatalogLock(catalogPath: dir.appendingPathComponent("c.sqlite").path)
            let busy = try TestSupport.runCLI(["run", "--pipeline", pipeline.path])
            XCTAssertEqual(busy.status, 75, busy.stderr)
            XCTAssertTrue(busy.stderr.contains("catalog busy"), busy.stderr)
            withExtendedLifetime(held) {}
        }

        // Two real runs started together: one may be turned away, none fails otherwise.
        let a = Process(), b = Process()
        for p in [a, b] {
            p.executableURL = TestSupport.cli
            p.arguments = ["run", "--pipeline", pipeline.path]
            p.standardOutput = FileHandle.nullDevice
            p.standardError = FileHandle.nullDevice
            try p.run()
        }
        a.waitUntilExit(); b.waitUntilExit()
        let statuses = [a.terminationStatus, b.terminationStatus]
        XCTAssertTrue(statuses.allSatisfy { $0 == 0 || $0 == 75 }, "\(statuses)")
        XCTAssertTrue(statuses.contains(0))

        // A broken photo arriving in the inbox: recorded, and the run reports partial success.
        try Data("not a photo".utf8).write(to: inbox.appendingPathComponent("obama/broken.jpg"))
        let partial = try TestSupport.runCLI(["run", "--pipeline", pipeline.path])
        XCTAssertEqual(partial.status, 3, partial.stderr)
        // A stage that cannot run at all: failure.
        let bad = dir.appendingPathComponent("bad.yaml")
        try "run:\n  catalog: \(dir.path)/c.sqlite\n  stages: [export]\n".write(to: bad, atomically: true, encoding: .utf8)
        XCTAssertEqual(try TestSupport.runCLI(["run", "--pipeline", bad.path]).status, 1)
    }
}

/// Every stage a pipeline file may name is a registered Stage, and commands share one exit-status map.
final class StageRegistryTests: XCTestCase {
    func testEveryRunStageNameIsARegisteredStage() {
        XCTAssertEqual(StageRegistry.pipelineStages.map { $0.name }, RunSpec.Stage.allCases.map(\.rawValue))
        for name in RunSpec.Stage.allCases.map(\.rawValue) { XCTAssertNotNil(StageRegistry.stage(named: name), name) }
    }

    func testAStageNeedingARunSectionItLacksNamesTheKey() throws {
        let spec = try YAMLDecoderForTests.run("catalog: /tmp/x.sqlite\nstages: [export]\n")
        XCTAssertThrowsError(try ExportStage(pipeline: PipelineConfig(), run: spec)) { error in
            XCTAssertTrue("\(error)".contains("run.select"), "\(error)")
        }
    }

    func testCommandsAgreeOnExitStatuses() throws {
        let dir = try TestSupport.temporaryDirectory()
        // Usage: a catalog that does not exist, for any command that reads one.
        for command in [["status"], ["export", "--split", "v1", "--out", dir.path], ["sample", "--weights", dir.path, "--encoded", dir.path,
                                                                                  "--sd", dir.path, "--out", dir.path]] {
            let r = try TestSupport.runCLI(command + ["--catalog", dir.appendingPathComponent("none.sqlite").path])
            XCTAssertEqual(r.status, 64, "\(command): \(r.stderr)")
        }
        // Locked: another run holds the catalog.
        let catalog = dir.appendingPathComponent("c.sqlite")
        _ = try Catalog(path: catalog.path)
        // Usage too: values the user gave that name nothing (a pipeline file, a split name, a photo).
        for command in [["masks", "--pipeline", dir.appendingPathComponent("none.yaml").path],
                        ["export", "--split=-x", "--out", dir.appendingPathComponent("x").path],
                        ["export", "--split", "nosuch", "--out", dir.appendingPathComponent("y").path],
                        ["curate", "override", "--keep", dir.appendingPathComponent("never.jpg").path, "--reason", "test"]] {
            let r = try TestSupport.runCLI(command + ["--catalog", catalog.path])
            XCTAssertEqual(r.status, 64, "\(command): \(r.stderr)")
            XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, r.stderr)
        }
        let lock = try CatalogLock(catalogPath: catalog.path)
        let locked = try TestSupport.runCLI(["masks", "--catalog", catalog.path])
        XCTAssertEqual(locked.status, 75, locked.stderr)
        withExtendedLifetime(lock) {}
        // Failure: sample with no trained identity is one line naming the folder.
        let empty = dir.appendingPathComponent("weights")
        try FileManager.default.createDirectory(at: empty, withIntermediateDirectories: true)
        let none = try TestSupport.runCLI(["sample", "--catalog", catalog.path, "--weights", empty.path, "--encoded", dir.path,
                                           "--sd", dir.path, "--out", dir.appendingPathComponent("samples").path])
        XCTAssertEqual(none.status, 1, none.stderr)
        XCTAssertTrue(none.stderr.contains(empty.path) && none.stderr.split(separator: "\n").count == 1, none.stderr)
    }
}

enum YAMLDecoderForTests {
    static func run(_ yaml: String) throws -> RunSpec {
        try YAMLDecoder().decode(PipelineConfig.self, from: "run:\n" + yaml.split(separator: "\n").map { "  " + $0 }.joined(separator: "\n")).run!
    }
}

/// The demo flow through `run`, ingest to sample with tiny random models: every stage wired by
/// the registry, the trainer reading the encoded folder alone, stderr JSON lines only.
final class RunFlowTests: XCTestCase {
    func testTheWholeFlowRunsAndStderrStaysJSONLines() throws {
        try TestSupport.requireAssets()
        let dir = try TestSupport.temporaryDirectory()
        let pipeline = dir.appendingPathComponent("flow.yaml")
        var demo = try String(contentsOf: TestSupport.repoRoot.appendingPathComponent("Pipelines/demo.yaml"), encoding: .utf8)
        demo = demo.replacingOccurrences(of: "${PIDIFF_OUT}", with: dir.path)
        try demo.write(to: pipeline, atomically: true, encoding: .utf8)
        let r = try TestSupport.run(TestSupport.cli.path, ["run", "--pipeline", pipeline.path, "--json"],
                                    environment: ["PIDIFF_PYTHON": TestSupport.python])
        XCTAssertEqual(r.status, 0, r.stderr)
        let lines = r.stderr.split(separator: "\n")
        let logs = lines.compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        XCTAssertEqual(logs.count, lines.count, "every stderr line is JSON: \(lines.filter { (try? JSONSerialization.jsonObject(with: Data($0.utf8))) == nil }.prefix(3))")
        let report = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        let artefacts = try XCTUnwrap(report["artefacts"] as? [String: String])
        for stage in ["encode", "train", "sample"] {
            let log = try XCTUnwrap(artefacts["\(stage)_log"], "\(stage) names its trainer log")
            XCTAssertFalse(try String(contentsOfFile: log, encoding: .utf8).isEmpty, log)
        }
        // Train and sample found everything in the encoded folder: no shards were passed to them.
        let samples = dir.appendingPathComponent("sample-work/samples")
        let pictures = FileManager.default.enumerator(atPath: samples.path)?.allObjects.compactMap { $0 as? String }.filter { $0.hasSuffix(".png") } ?? []
        XCTAssertFalse(pictures.isEmpty)
        XCTAssertFalse(try String(contentsOfFile: artefacts["train_log"]!, encoding: .utf8).contains("--shards"))

        // Again, nothing changed: no identity is retrained or resampled.
        let weights = try XCTUnwrap(FileManager.default.enumerator(atPath: dir.appendingPathComponent("sample-work/train").path)?
            .allObjects.compactMap { $0 as? String }.first { $0.hasSuffix("pidiff.safetensors") })
        let weightsURL = dir.appendingPathComponent("sample-work/train").appendingPathComponent(weights)
        let before = try FileManager.default.attributesOfItem(atPath: weightsURL.path)[.modificationDate] as? Date
        let again = try TestSupport.run(TestSupport.cli.path, ["run", "--pipeline", pipeline.path, "--json"],
                                        environment: ["PIDIFF_PYTHON": TestSupport.python])
        XCTAssertEqual(again.status, 0, again.stderr)
        XCTAssertEqual(try FileManager.default.attributesOfItem(atPath: weightsURL.path)[.modificationDate] as? Date, before, "not retrained")
        let againLogs: [[String: Any]] = again.stderr.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        for stage in ["train", "sample"] {
            let lines = againLogs.filter { ($0["stage"] as? String) == stage }
            let counts = lines.compactMap { $0["counts"] as? [String: String] }.first
            XCTAssertEqual(counts?["unchanged"], "1", "\(stage) skipped: \(lines)")
        }

        // The base model's UNet rewritten in place (same path, one value changed): a new base
        // model, so the identities are trained and sampled again.
        let unetFolder = dir.appendingPathComponent("sample-work/models/sd/unet")
        let unet = try XCTUnwrap(try FileManager.default.contentsOfDirectory(atPath: unetFolder.path).first { $0.hasSuffix(".safetensors") })
        var bytes = try Data(contentsOf: unetFolder.appendingPathComponent(unet))
        bytes[bytes.count - 1] ^= 0x01 // the last tensor's last byte
        try bytes.write(to: unetFolder.appendingPathComponent(unet))
        let changed = try TestSupport.run(TestSupport.cli.path, ["run", "--pipeline", pipeline.path, "--json"],
                                          environment: ["PIDIFF_PYTHON": TestSupport.python])
        XCTAssertEqual(changed.status, 0, changed.stderr)
        let changedLogs: [[String: Any]] = changed.stderr.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        for stage in ["train", "sample"] {
            let counts = changedLogs.filter { ($0["stage"] as? String) == stage }.compactMap { $0["counts"] as? [String: String] }.first
            XCTAssertEqual(counts?["unchanged"], "0", "\(stage) redone for the new base model: \(changedLogs)")
        }
    }
}

/// Native libraries print to stderr themselves (libpng on a PNG whose ICC profile it knows to be
/// wrong); under `run` those lines become JSON log lines too, so `jq` over stderr never breaks.
final class RunNativeOutputTests: XCTestCase {
    func testNativeLibraryWarningsBecomeJSONLines() throws {
        try TestSupport.requireAssets()
        let dir = try TestSupport.temporaryDirectory()
        let person = dir.appendingPathComponent("photos/biden")
        try FileManager.default.createDirectory(at: person, withIntermediateDirectories: true)
        // The sample photo's own ICC profile (3,144 bytes) is one libpng warns about in a PNG.
        let made = try TestSupport.run(TestSupport.python, ["-c", """
            import sys; from PIL import Image
            im = Image.open(sys.argv[1]); im.save(sys.argv[2], icc_profile=im.info["icc_profile"])
            """, TestSupport.sampleIdentities.appendingPathComponent("biden/biden.jpg").path, person.appendingPathComponent("icc.png").path])
        XCTAssertEqual(made.status, 0, made.stderr)
        let pipeline = dir.appendingPathComponent("r.yaml")
        try "run:\n  catalog: \(dir.path)/c.sqlite\n  sources: [\"\(dir.path)/photos\"]\n  stages: [ingest, masks]\n"
            .write(to: pipeline, atomically: true, encoding: .utf8)
        let r = try TestSupport.runCLI(["run", "--pipeline", pipeline.path])
        XCTAssertEqual(r.status, 0, r.stderr)
        let lines = r.stderr.split(separator: "\n")
        let logs = lines.compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        XCTAssertEqual(logs.count, lines.count, "every stderr line is JSON: \(r.stderr)")
        let native = logs.filter { $0["label"] as? String == "pidiff-data.native" }
        XCTAssertTrue(native.contains { ($0["message"] as? String)?.contains("iCCP") == true && $0["stage"] as? String == "ingest"
                                        && $0["run_id"] != nil }, "\(native)")
    }
}

/// What the command line does around the stages: names escaped on the terminal, the catalog from
/// the environment, a hint for trainer flags given before `--`.
final class CommandLineTests: XCTestCase {
    func testControlCharactersInNamesAreEscapedOnTheTerminalButExactInJSON() async throws {
        try TestSupport.requireAssets()
        let dir = try TestSupport.temporaryDirectory()
        let hostile = "evil\u{1b}[31mred\u{07}"
        let person = dir.appendingPathComponent("photos/\(hostile)")
        try FileManager.default.createDirectory(at: person, withIntermediateDirectories: true)
        try FileManager.default.copyItem(at: TestSupport.obama, to: person.appendingPathComponent("a.jpg"))
        let catalog = dir.appendingPathComponent("c.sqlite")
        _ = try await TestSupport.ingest([dir.appendingPathComponent("photos")], catalog: catalog)
        _ = try await MaskPipeline(catalogPath: catalog.path, parameters: MaskParameters()).run()
        let human = try TestSupport.runCLI(["masks", "report", "--catalog", catalog.path, "--json"])
        XCTAssertTrue(human.stdout.contains("\\u001b[31mred\\u0007"), "JSON escapes them itself: \(human.stdout.prefix(300))")
        let status = try TestSupport.runCLI(["labels", "show", "--catalog", catalog.path])
        XCTAssertFalse(status.stdout.contains("\u{1b}") || status.stdout.contains("\u{07}"), status.stdout)
        XCTAssertTrue(status.stdout.contains("evil\\u{1b}[31mred\\u{7}"), status.stdout)
    }

    func testTheCatalogCanComeFromTheEnvironment() throws {
        let dir = try TestSupport.temporaryDirectory()
        let catalog = dir.appendingPathComponent("c.sqlite")
        _ = try Catalog(path: catalog.path)
        let r = try TestSupport.run(TestSupport.cli.path, ["status", "--json"], environment: ["PIDIFF_CATALOG": catalog.path])
        XCTAssertEqual(r.status, 0, r.stderr)
        let none = try TestSupport.run(TestSupport.cli.path, ["status"], environment: ["PIDIFF_CATALOG": ""])
        XCTAssertEqual(none.status, 64)
        XCTAssertTrue(none.stderr.contains("PIDIFF_CATALOG"), none.stderr)
    }

    func testTrainerFlagsBeforeTheSeparatorGetAHint() throws {
        let dir = try TestSupport.temporaryDirectory()
        let catalog = dir.appendingPathComponent("c.sqlite")
        _ = try Catalog(path: catalog.path)
        let r = try TestSupport.runCLI(["train", "--catalog", catalog.path, "--split", "s", "--encoded", "e", "--sd", "sd", "--out", "o", "--steps", "600"])
        XCTAssertEqual(r.status, 64)
        XCTAssertTrue(r.stderr.contains("go after `--`"), r.stderr)
    }
}

import GRDB
import XCTest
@testable import PIDiffData
@testable import PIDiffModel
@testable import PIDiffNative
@testable import PIDiffCatalog

/// Behaviour that only shows across processes: SIGKILL at any point, and the catalog lock.
final class ProcessLevelTests: XCTestCase {
    /// Photos per interrupted run: enough that a signal sent once a run's first results are
    /// committed lands before its last ones (ingest-2 makes 24 photos in about two commits).
    private let photoCount = 96

    private func corpus(_ dir: URL, count: Int) throws -> URL {
        let photos = ["obama/obama.jpg", "obama/obama2.jpg", "biden/biden.jpg"].map { TestSupport.sampleIdentities.appendingPathComponent($0) }
        let out = dir.appendingPathComponent("corpus")
        try IngestBenchmark.generateCorpus(from: photos, count: count, into: out)
        return out
    }

    private func filesCommitted(_ catalogPath: String) -> Int {
        guard FileManager.default.fileExists(atPath: catalogPath),
              let queue = try? DatabaseQueue(path: catalogPath, configuration: { var c = Configuration(); c.readonly = true; return c }()) else { return 0 }
        return (try? queue.read { try Int.fetchOne($0, sql: "SELECT COUNT(*) FROM files") ?? 0 }) ?? 0
    }

    func testSigkillMidRunThenResumeEqualsOneUninterruptedRun() throws {
        try TestSupport.requireAssets()
        let dir = try TestSupport.temporaryDirectory()
        let photos = try corpus(dir, count: photoCount)
        let reference = dir.appendingPathComponent("reference.sqlite")
        XCTAssertEqual(try TestSupport.runCLI(["ingest", photos.path, "--catalog", reference.path]).status, 0)

        let killed = dir.appendingPathComponent("killed.sqlite")
        for round in 0..<2 {
            let p = Process()
            p.executableURL = TestSupport.cli
            p.arguments = ["ingest", photos.path, "--catalog", killed.path]
            p.standardOutput = FileHandle.nullDevice
            p.standardError = FileHandle.nullDevice
            let before = filesCommitted(killed.path)
            try p.run()
            // Kill once this round has committed some (but not all) work: its first batch.
            let deadline = Date().addingTimeInterval(60)
            while p.isRunning && filesCommitted(killed.path) <= before && Date() < deadline { usleep(20_000) }
            kill(p.processIdentifier, SIGKILL)
            p.waitUntilExit()
            let integrity = try DatabaseQueue(path: killed.path).read { try String.fetchOne($0, sql: "PRAGMA integrity_check") }
            XCTAssertEqual(integrity, "ok")
        }
        XCTAssertLessThan(filesCommitted(killed.path), photoCount, "the kill should interrupt the run")
        let resumed = try TestSupport.runCLI(["ingest", photos.path, "--catalog", killed.path, "--json"])
        XCTAssertEqual(resumed.status, 0, resumed.stderr)
        XCTAssertEqual(try TestSupport.dataDump(killed.path), try TestSupport.dataDump(reference.path))
        let statuses = try Catalog(path: killed.path).pool.read { try String.fetchAll($0, sql: "SELECT status FROM runs ORDER BY id") }
        XCTAssertEqual(statuses, ["interrupted", "interrupted", "completed"])
    }

    func testSigtermAndSigintRecordTheRunAsInterruptedAndTheNextRunFinishes() throws {
        try TestSupport.requireAssets()
        let dir = try TestSupport.temporaryDirectory()
        let photos = try corpus(dir, count: photoCount)
        let catalog = dir.appendingPathComponent("c.sqlite")
        for sig in [SIGTERM, SIGINT] {
            let p = Process()
            p.executableURL = TestSupport.cli
            p.arguments = ["ingest", photos.path, "--catalog", catalog.path]
            p.standardOutput = FileHandle.nullDevice
            p.standardError = FileHandle.nullDevice
            let before = filesCommitted(catalog.path)
            try p.run()
            let deadline = Date().addingTimeInterval(60)
            while p.isRunning && filesCommitted(catalog.path) <= before && Date() < deadline { usleep(20_000) }
            kill(p.processIdentifier, sig)
            p.waitUntilExit()
            XCTAssertEqual(p.terminationReason, .uncaughtSignal, "it dies of signal \(sig), as the shell expects")
            XCTAssertEqual(p.terminationStatus, sig)
            let last = try Catalog(path: catalog.path).pool.read { try Row.fetchOne($0, sql: "SELECT status, ended_at FROM runs ORDER BY id DESC LIMIT 1") }
            XCTAssertEqual(last?["status"] as String?, "interrupted", "signal \(sig)")
            XCTAssertNotNil(last?["ended_at"] as String?)
        }
        let resumed = try TestSupport.runCLI(["ingest", photos.path, "--catalog", catalog.path])
        XCTAssertEqual(resumed.status, 0, resumed.stderr)
        XCTAssertEqual(filesCommitted(catalog.path), photoCount)
    }

    /// Under `run`, stderr is a pipe the process reads itself: a SIGTERM mid-run still says why
    /// the run stopped, as a JSON line, and every stderr line stays JSON.
    func testSigtermUnderRunSaysSoInAJSONLine() throws {
        try TestSupport.requireAssets()
        let dir = try TestSupport.temporaryDirectory()
        let photos = try corpus(dir, count: photoCount)
        let catalog = dir.appendingPathComponent("c.sqlite")
        let pipeline = dir.appendingPathComponent("r.yaml")
        try "run:\n  catalog: \(catalog.path)\n  sources: [\"\(photos.path)\"]\n  stages: [ingest]\n".write(to: pipeline, atomically: true, encoding: .utf8)
        let p = Process()
        p.executableURL = TestSupport.cli
        p.arguments = ["run", "--pipeline", pipeline.path]
        p.standardOutput = FileHandle.nullDevice
        let err = dir.appendingPathComponent("stderr.txt")
        FileManager.default.createFile(atPath: err.path, contents: nil)
        p.standardError = try FileHandle(forWritingTo: err)
        try p.run()
        let deadline = Date().addingTimeInterval(60)
        while p.isRunning && filesCommitted(catalog.path) == 0 && Date() < deadline { usleep(20_000) }
        kill(p.processIdentifier, SIGTERM)
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, SIGTERM)
        let lines = try String(contentsOf: err, encoding: .utf8).split(separator: "\n")
        let logs = lines.compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        XCTAssertEqual(logs.count, lines.count, "every stderr line is JSON: \(lines)")
        XCTAssertTrue(logs.contains { ($0["message"] as? String)?.hasPrefix("stopped by signal \(SIGTERM)") == true
                                      && $0["label"] as? String == "pidiff-data.run" && $0["run_id"] != nil }, "\(lines)")
    }

    func testSecondConcurrentIngestExitsWithAClearMessage() throws {
        try TestSupport.requireAssets()
        let dir = try TestSupport.temporaryDirectory()
        let catalogPath = dir.appendingPathComponent("c.sqlite").path
        let lock = try CatalogLock(catalogPath: catalogPath)
        let result = try TestSupport.runCLI(["ingest", TestSupport.sampleIdentities.path, "--catalog", catalogPath])
        XCTAssertEqual(result.status, 75)
        XCTAssertTrue(result.stderr.contains("in use by another pidiff-data run"), result.stderr)
        withExtendedLifetime(lock) {}
        XCTAssertThrowsError(try CatalogLock(catalogPath: catalogPath), "the lock is exclusive within a process too")
    }

    func testFacesJSONCarriesLandmarksInOriginalPixelsAndCropPaths() async throws {
        try TestSupport.requireAssets()
        let dir = try TestSupport.temporaryDirectory()
        let catalogPath = dir.appendingPathComponent("c.sqlite").path
        XCTAssertEqual(try TestSupport.runCLI(["ingest", TestSupport.sampleIdentities.path, "--catalog", catalogPath]).status, 0)
        let out = try TestSupport.runCLI(["faces", "--catalog", catalogPath, "--json"])
        XCTAssertEqual(out.status, 0, out.stderr)
        let lines = out.stdout.split(separator: "\n")
        XCTAssertEqual(lines.count, 7)
        for line in lines {
            let obj = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            for key in ["path", "identity", "sha256", "bbox", "landmarks68", "crop512", "crop256", "face_size", "sharpness", "outcome"] {
                XCTAssertNotNil(obj[key], "missing \(key)")
            }
            XCTAssertEqual((obj["landmarks68"] as? [[Double]])?.count, 68)
        }
        let status = try TestSupport.runCLI(["status", "--catalog", catalogPath, "--json"])
        XCTAssertEqual(status.status, 0)
        XCTAssertTrue(status.stdout.contains("\"selected_faces\" : 7"), status.stdout)
    }
}

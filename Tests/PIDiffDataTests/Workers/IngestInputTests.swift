import Foundation
import XCTest
@testable import PIDiffData
@testable import PIDiffModel
@testable import PIDiffCatalog

/// Inputs that used to be lost or to hang ingest: names that differ only in Unicode
/// normalisation, a catalog inside the folder it ingests, huge manifest lines, a JSON array as a
/// manifest, and problem counts past the listed ones.
final class IngestInputTests: XCTestCase {
    func testPathsDifferingOnlyInNormalisationAreTwoFiles() async throws {
        try TestSupport.requireAssets()
        let dir = try TestSupport.temporaryDirectory()
        let person = dir.appendingPathComponent("photos/p")
        try FileManager.default.createDirectory(at: person, withIntermediateDirectories: true)
        let nfc = "Caf\u{E9}.jpg", nfd = "Cafe\u{301}.jpg"
        XCTAssertEqual(nfc, nfd, "Swift compares them as equal: the bug this test guards against")
        for name in [nfc, nfd] {
            XCTAssertTrue(FileManager.default.createFile(atPath: person.path + "/" + name, contents: try Data(contentsOf: TestSupport.obama)))
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: person.path).count, 2)
        let catalog = dir.appendingPathComponent("c.sqlite")
        let summary = try await TestSupport.ingest([dir.appendingPathComponent("photos")], catalog: catalog)
        XCTAssertEqual(summary.problemCount, 0, "\(summary.problems)")
        let paths = try await Catalog(path: catalog.path).pool.read { try String.fetchAll($0, sql: "SELECT path FROM files") }
        XCTAssertEqual(Set(paths.map { Array($0.utf8) }).count, 2, "both byte sequences are catalogued")
        // A second run finds both unchanged: neither is marked vanished.
        let again = try await TestSupport.ingest([dir.appendingPathComponent("photos")], catalog: catalog)
        XCTAssertEqual(again.counts["unchanged"], 2)
        XCTAssertNil(again.counts["vanished"])
    }

    func testACatalogInsideItsPhotoFolderDoesNotIngestItsOwnCrops() async throws {
        try TestSupport.requireAssets()
        let dir = try TestSupport.temporaryDirectory()
        let photos = dir.appendingPathComponent("photos")
        try FileManager.default.copyItem(at: TestSupport.sampleIdentities, to: photos)
        let catalog = photos.appendingPathComponent("c.sqlite")
        let first = try TestSupport.runCLI(["ingest", photos.path, "--catalog", catalog.path, "--json"])
        XCTAssertEqual(first.status, 0, first.stderr)
        let second = try TestSupport.runCLI(["ingest", photos.path, "--catalog", catalog.path, "--json"])
        XCTAssertEqual(second.status, 0, second.stderr)
        XCTAssertTrue(second.stderr.contains("not scanned: \(photos.path)/c.sqlite.data: the catalog's data root"), second.stderr)
        let json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(second.stdout.utf8)) as? [String: Any])
        XCTAssertNil((json["counts"] as? [String: Int])?["analysed"], "nothing new: the crops were not ingested as photos")
        let identities = try Catalog(path: catalog.path).identityNames()
        XCTAssertFalse(identities.contains("c.sqlite.data"), "\(identities)")
    }

    func testHugeManifestLinesAreSkippedWithTheLineNumberAndTheRestIsRead() throws {
        try TestSupport.requireAssets()
        let dir = try TestSupport.temporaryDirectory()
        let manifest = dir.appendingPathComponent("m.jsonl")
        let good = "{\"identity\":\"obama\",\"path\":\"\(TestSupport.obama.path)\"}"
        let long = "{\"identity\":\"x\",\"path\":\"" + String(repeating: "a", count: 3 << 20) + "\"}"
        try (good + "\n" + long + "\n" + good.replacingOccurrences(of: "obama.jpg", with: "obama2.jpg") + "\n").write(to: manifest, atomically: true, encoding: .utf8)
        let r = try TestSupport.runCLI(["ingest", manifest.path, "--catalog", dir.appendingPathComponent("c.sqlite").path, "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        XCTAssertEqual((json["counts"] as? [String: Int])?["analysed"], 2)
        XCTAssertEqual(json["problems"] as? [String], ["\(manifest.path):2: line longer than 1 MiB; skipped"])
    }

    func testLineReaderReturnsEveryLineAcrossChunksAndSkipsLongOnes() throws {
        let dir = try TestSupport.temporaryDirectory()
        let file = dir.appendingPathComponent("lines.txt")
        let lines = (0..<5000).map { i in String(repeating: "x", count: i % 97) + "\(i)" }
        try (lines.joined(separator: "\n") + "\n" + String(repeating: "y", count: 300) + "\nlast").write(to: file, atomically: true, encoding: .utf8)
        let reader = try XCTUnwrap(LineReader(path: file.path, maxLineBytes: 200))
        var read: [LineReader.Line] = []
        while let line = reader.next() { read.append(line) }
        let expected: [LineReader.Line] = lines.map { .text($0) } + [.tooLong(300), .text("last")]
        XCTAssertEqual(read.count, expected.count)
        if let i = zip(read, expected).enumerated().first(where: { $0.element.0 != $0.element.1 })?.offset {
            XCTFail("line \(i): read \(read[i]), expected \(expected[i])")
        }
    }

    func testAJSONArrayGivenAsAManifestIsRefusedWithANonZeroExit() throws {
        let dir = try TestSupport.temporaryDirectory()
        let array = dir.appendingPathComponent("photos.json")
        try "[{\"identity\": \"a\", \"path\": \"a.jpg\"},\n {\"identity\": \"b\", \"path\": \"b.jpg\"}]\n".write(to: array, atomically: true, encoding: .utf8)
        let r = try TestSupport.runCLI(["ingest", array.path, "--catalog", dir.appendingPathComponent("c.sqlite").path])
        XCTAssertEqual(r.status, 1, r.stderr)
        XCTAssertTrue(r.stderr.contains("source rejected: \(array.path): a JSON array, not JSON lines"), r.stderr)
        // The catalog this run would have created is not left behind empty.
        XCTAssertTrue(r.stderr.contains("the new catalog \(dir.appendingPathComponent("c.sqlite").path) was not kept"), r.stderr)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir.path), ["photos.json"])
        // A data root the user made for it is theirs: left in place, empty or not.
        let mine = dir.appendingPathComponent("mydata")
        try FileManager.default.createDirectory(at: mine, withIntermediateDirectories: true)
        XCTAssertEqual(try TestSupport.runCLI(["ingest", array.path, "--catalog", dir.appendingPathComponent("d.sqlite").path,
                                               "--data-root", mine.path]).status, 1)
        XCTAssertTrue(FileManager.default.fileExists(atPath: mine.path))
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir.appendingPathComponent("d.sqlite").path))
        // An existing catalog is kept whatever its sources do.
        let existing = dir.appendingPathComponent("kept.sqlite")
        _ = try Catalog(path: existing.path)
        XCTAssertEqual(try TestSupport.runCLI(["ingest", array.path, "--catalog", existing.path]).status, 1)
        XCTAssertTrue(FileManager.default.fileExists(atPath: existing.path))
    }

    func testTheSummaryCountsEveryProblemAndSaysWhereTheRestAre() throws {
        let dir = try TestSupport.temporaryDirectory()
        let person = dir.appendingPathComponent("photos/p")
        try FileManager.default.createDirectory(at: person, withIntermediateDirectories: true)
        for i in 0..<25 { try Data("not an image \(i)".utf8).write(to: person.appendingPathComponent("\(i).jpg")) }
        let catalog = dir.appendingPathComponent("c.sqlite")
        let r = try TestSupport.runCLI(["ingest", dir.appendingPathComponent("photos").path, "--catalog", catalog.path])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("… 5 more problems (pidiff-data status --problems lists them all)"), r.stdout)
        let listed = try TestSupport.runCLI(["status", "--problems", "--catalog", catalog.path])
        XCTAssertEqual(listed.stdout.split(separator: "\n").count, 25, listed.stdout)
    }
}

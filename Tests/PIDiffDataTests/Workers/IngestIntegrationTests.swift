import GRDB
import XCTest
@testable import PIDiffData
@testable import PIDiffModel
@testable import PIDiffNative
@testable import PIDiffCatalog

/// Ingest on the real sample photos and models.
final class IngestIntegrationTests: XCTestCase {
    func testSamplePhotosYieldAlignedFacesWithLandmarksInsideTheirBoxes() async throws {
        try TestSupport.requireAssets()
        let dir = try TestSupport.temporaryDirectory()
        let catalogPath = dir.appendingPathComponent("c.sqlite")
        let summary = try await TestSupport.ingest([TestSupport.sampleIdentities], catalog: catalogPath)
        XCTAssertEqual(summary.counts["analysed"], 7)
        let catalog = try Catalog(path: catalogPath.path)
        let faces = try catalog.faceReports(selectedOnly: true)
        let byName = Dictionary(grouping: faces) { URL(fileURLWithPath: $0.path).lastPathComponent }
        for name in ["obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg"] {
            let face = try XCTUnwrap(byName[name]?.first, "\(name) should have a face")
            XCTAssertEqual(face.outcome, "ok")
            XCTAssertEqual(face.qualityOK, true, "\(name): \(face.qualityReason ?? "")")
            XCTAssertEqual(face.landmarks68.count, 68)
            // The eyes and mouth lie inside the detector box (the jaw may leave it).
            let (l, t, r, b) = (face.bbox[0], face.bbox[1], face.bbox[2], face.bbox[3])
            for i in 36...67 {
                let p = face.landmarks68[i]
                XCTAssertTrue(p[0] >= l - 5 && p[0] <= r + 5 && p[1] >= t - 5 && p[1] <= b + 5, "\(name) landmark \(i) outside box")
            }
            for (path, size) in [(face.crop512, 512), (face.crop256, 256)] {
                let data = try Data(contentsOf: URL(fileURLWithPath: try XCTUnwrap(path)))
                XCTAssertEqual(try ImageHeader.parse(data), ImageHeader(format: .png, width: size, height: size))
                XCTAssertEqual(Hashing.sha256Hex(data), URL(fileURLWithPath: path!).deletingPathExtension().lastPathComponent,
                               "crops are content-addressed")
            }
        }
        // The two partial faces are found but their quads leave the photo: kept, flagged.
        for name in ["obama_partial_face.jpg", "obama_partial_face2.jpg"] {
            let face = try XCTUnwrap(byName[name]?.first)
            XCTAssertEqual(face.qualityOK, false)
            XCTAssertTrue(face.qualityReason?.contains("outside") == true)
            XCTAssertEqual(face.padded, true)
        }
    }

    /// Given the same landmarks, our 256 crop matches the e4e align_face procedure (PIL port in
    /// Tests/Fixtures) to ≥ 30 dB — on a photo inside the frame and on one that needs padding.
    func testAlignmentMatchesE4EOracleAbove30dB() async throws {
        try TestSupport.requireAssets()
        let dir = try TestSupport.temporaryDirectory()
        let catalogPath = dir.appendingPathComponent("c.sqlite")
        _ = try await TestSupport.ingest([TestSupport.sampleIdentities], catalog: catalogPath)
        let faces = try Catalog(path: catalogPath.path).faceReports(selectedOnly: true)
        var checked = 0
        for face in faces where ["obama.jpg", "biden.jpg", "obama_partial_face.jpg"].contains(URL(fileURLWithPath: face.path).lastPathComponent) {
            let lmFile = dir.appendingPathComponent("lm-\(checked).json")
            try JSONEncoder().encode(face.landmarks68).write(to: lmFile)
            let oracleOut = dir.appendingPathComponent("oracle-\(checked).png")
            let result = try TestSupport.run(TestSupport.python, [TestSupport.fixtures.appendingPathComponent("e4e_align_oracle.py").path,
                                                                  face.path, lmFile.path, oracleOut.path, "256"])
            XCTAssertEqual(result.status, 0, "oracle failed: \(result.stderr)")
            let ours = try NativeImage.decode(Data(contentsOf: URL(fileURLWithPath: face.crop256!)), maxPixels: 1 << 30).bgrPixels()
            let theirs = try NativeImage.decode(Data(contentsOf: oracleOut), maxPixels: 1 << 30).bgrPixels()
            XCTAssertEqual(ours.count, theirs.count)
            let mse = zip(ours, theirs).reduce(0.0) { $0 + pow(Double($1.0) - Double($1.1), 2) } / Double(ours.count)
            let psnr = 10 * log10(255 * 255 / max(mse, 1e-12))
            print("alignment PSNR vs e4e oracle, \(URL(fileURLWithPath: face.path).lastPathComponent): \(String(format: "%.2f", psnr)) dB")
            XCTAssertGreaterThanOrEqual(psnr, 30, "\(face.path)")
            checked += 1
        }
        XCTAssertEqual(checked, 3)
    }

    func testBrokenAndAwkwardFilesAreRecordedWithReasonsAndTheRunCompletes() async throws {
        try TestSupport.requireAssets()
        let dir = try TestSupport.temporaryDirectory()
        let corpus = dir.appendingPathComponent("corpus")
        let made = try TestSupport.run(TestSupport.python, [TestSupport.fixtures.appendingPathComponent("make_broken_corpus.py").path,
                                                            TestSupport.obama.path, corpus.path])
        XCTAssertEqual(made.status, 0, made.stderr)
        let catalogPath = dir.appendingPathComponent("c.sqlite")
        let result = try TestSupport.runCLI(["ingest", corpus.path, "--catalog", catalogPath.path, "--json"])
        XCTAssertEqual(result.status, 0, result.stderr)
        let summary = try JSONDecoder().decode(IngestSummary.self, from: Data(result.stdout.utf8))
        XCTAssertEqual(summary.status, "completed")
        XCTAssertTrue(result.stdout.contains("\"problems_listed_max\":1000") || result.stdout.contains("\"problems_listed_max\" : 1000"),
                      "the JSON states its cap on listed problems")

        let catalog = try Catalog(path: catalogPath.path)
        let rows = try catalog.pool.read { db in
            try Row.fetchAll(db, sql: """
                SELECT f.path, f.read_error, r.outcome, r.reason FROM files f
                LEFT JOIN image_results r ON r.sha256 = f.sha256
                """)
        }
        var outcome: [String: (String, String)] = [:]
        for row in rows {
            let name = URL(fileURLWithPath: row["path"] as String).lastPathComponent
            let readError: String? = row["read_error"]
            outcome[name] = readError.map { ("unreadable", $0) } ?? ((row["outcome"] as String?) ?? "?", (row["reason"] as String?) ?? "")
        }
        let expected: [String: String] = [
            "truncated.jpg": "decode_error", "corrupt.png": "decode_error", "zero.jpg": "unreadable",
            "not_an_image.jpg": "not_image", "tiny.png": "too_small", "bomb.png": "too_large", "no_face.jpg": "no_face",
            "dangling.jpg": "unreadable", "loop_a.jpg": "unreadable", "loop_b.jpg": "unreadable",
            "cmyk.jpg": "ok", "gray.jpg": "ok", "rgba.png": "ok", "gray16.png": "ok", "exif_rotated.jpg": "ok",
            "webp.webp": "ok", "bitmap.bmp": "ok", "name with spaces 'quotes' \"double\" ünïcödé 名前.jpg": "ok",
        ]
        for (name, want) in expected {
            let got = try XCTUnwrap(outcome[name], "\(name) not recorded")
            XCTAssertEqual(got.0, want, "\(name): \(got.1)")
            if want != "ok" { XCTAssertFalse(got.1.isEmpty, "\(name) needs a reason") }
        }
        XCTAssertEqual(outcome["loop_a.jpg"]?.1, "symlink loop")
        XCTAssertEqual(outcome["zero.jpg"]?.1, "zero-byte file")
        XCTAssertTrue(summary.problems.contains { $0.contains("dir_loop") && $0.contains("symlink loop") }, "\(summary.problems)")
        // Names that are not UTF-8 are named (bytes escaped) and skipped, not lost or misreported.
        for name in ["/caf\\xe9", "/person/bad\\xff\\xfename.jpg"] {
            XCTAssertTrue(summary.problems.contains { $0.contains(name) && $0.contains("not valid UTF-8") }, "\(name): \(summary.problems)")
        }
        XCTAssertFalse(outcome.keys.contains { $0.hasPrefix("bad") }, "\(outcome.keys)")
        XCTAssertTrue(summary.problems.contains { $0.contains("/loose.jpg") && $0.contains("outside an identity folder") }, "\(summary.problems)")
        // A photo given as a source is named as such, not as missing.
        let photoSource = try TestSupport.runCLI(["ingest", corpus.appendingPathComponent("loose.jpg").path, "--catalog", catalogPath.path, "--json"])
        XCTAssertTrue(photoSource.stdout.contains("a photo is not a source"), photoSource.stdout + photoSource.stderr)

        // The EXIF-rotated copy decodes upright: same face geometry as the plain photo.
        let faces = try catalog.faceReports(selectedOnly: true)
        let plain = try XCTUnwrap(faces.first { $0.path.hasSuffix("名前.jpg") })
        let rotated = try XCTUnwrap(faces.first { $0.path.hasSuffix("exif_rotated.jpg") })
        XCTAssertEqual(rotated.rollDegrees, plain.rollDegrees, accuracy: 3)

        // --strict turns recorded errors into a non-zero exit, without changing what was stored.
        let stored = try TestSupport.dataDump(catalogPath.path)
        let strict = try TestSupport.runCLI(["ingest", corpus.path, "--catalog", catalogPath.path, "--strict"])
        XCTAssertEqual(strict.status, 3) // partial: items recorded as failed
        XCTAssertEqual(try TestSupport.dataDump(catalogPath.path), stored)
    }

    func testDeletedAndMovedPhotosLeaveTheUsableSetAndComeBackWhenRestored() async throws {
        let (dir, photos, catalogPath) = try await ingestedCopyOfTheSample()
        let catalog = try Catalog(path: catalogPath.path)
        XCTAssertEqual(try catalog.usableImages()["obama"]?.count, 3)

        let obama2 = photos.appendingPathComponent("obama/obama2.jpg"), obama3 = photos.appendingPathComponent("obama/obama3.jpg")
        let stash = dir.appendingPathComponent("obama3.jpg")
        try FileManager.default.moveItem(at: obama2, to: photos.appendingPathComponent("biden/moved.jpg"))
        try FileManager.default.moveItem(at: obama3, to: stash)
        let after = try await TestSupport.ingest([photos], catalog: catalogPath)
        XCTAssertEqual(after.counts["vanished"], 2, "\(after.counts)")
        let vanished = try await catalog.pool.read {
            try String.fetchAll($0, sql: "SELECT path FROM files WHERE read_error LIKE 'vanished:%' ORDER BY path")
        }
        XCTAssertEqual(vanished, [obama2.path, obama3.path])
        let usable = try catalog.usableImages()
        XCTAssertEqual(usable["obama"]?.map(\.path), [photos.appendingPathComponent("obama/obama.jpg").path])
        XCTAssertTrue(usable["biden"]?.contains { $0.path.hasSuffix("biden/moved.jpg") } == true)
        XCTAssertTrue(try verify(catalogPath).clean)
        XCTAssertEqual(try catalog.status().outcomes["unreadable"], 2, "status counts them by their read error")

        // Back in place: read again (not "unchanged"), usable again.
        try FileManager.default.moveItem(at: stash, to: obama3)
        let restored = try await TestSupport.ingest([photos], catalog: catalogPath)
        XCTAssertNil(restored.counts["vanished"])
        XCTAssertEqual(try catalog.usableImages()["obama"]?.count, 2)

        // A draining inbox: with `vanished: keep` a photo moved away stays usable.
        var keep = PipelineConfig()
        keep.ingest.vanished = .keep
        try FileManager.default.moveItem(at: obama3, to: stash)
        let drained = try await TestSupport.ingest([photos], catalog: catalogPath, config: keep)
        XCTAssertNil(drained.counts["vanished"])
        XCTAssertEqual(try catalog.usableImages()["obama"]?.count, 2)
    }

    func testAnIngestThatFindsNothingUnderOtherParametersDoesNotEmptyTheCatalog() async throws {
        let (dir, _, catalogPath) = try await ingestedCopyOfTheSample()
        let catalog = try Catalog(path: catalogPath.path)
        let before = try catalog.currentIngestFingerprint()
        var other = PipelineConfig()
        other.ingest.minFaceSize += 1 // another fingerprint
        _ = try await TestSupport.ingest([dir.appendingPathComponent("empty-typo")], catalog: catalogPath, config: other)
        XCTAssertEqual(try catalog.currentIngestFingerprint(), before)
        XCTAssertEqual(try catalog.usableImages()["obama"]?.count, 3)
    }

    func testAPathListedUnderTwoIdentitiesKeepsTheFirstAndSaysSo() async throws {
        try TestSupport.requireAssets()
        let dir = try TestSupport.temporaryDirectory()
        let photo = TestSupport.sampleIdentities.appendingPathComponent("obama/obama.jpg").path
        let manifest = dir.appendingPathComponent("m.jsonl")
        try ("{\"identity\": \"obama\", \"path\": \"\(photo)\"}\n{\"identity\": \"obama\", \"path\": \"\(photo)\"}\n"
             + "{\"identity\": \"biden\", \"path\": \"\(photo)\"}\n").write(to: manifest, atomically: true, encoding: .utf8)
        let catalogPath = dir.appendingPathComponent("c.sqlite")
        let first = try await TestSupport.ingest([manifest], catalog: catalogPath)
        XCTAssertEqual(first.counts["analysed"], 1)
        XCTAssertTrue(first.problems.contains { $0.contains("listed again as identity \"biden\"") && $0.contains("kept as \"obama\"") },
                      "\(first.problems)")
        let second = try await TestSupport.ingest([manifest], catalog: catalogPath)
        XCTAssertEqual(second.counts["unchanged"], 1, "\(second.counts)")
        let names = try await Catalog(path: catalogPath.path).pool.read {
            try String.fetchAll($0, sql: "SELECT i.name FROM files f JOIN identities i ON i.id = f.identity_id")
        }
        XCTAssertEqual(names, ["obama"])
    }

    private func verify(_ catalog: URL) throws -> VerifyReport { try CatalogVerifier(catalogPath: catalog.path).run(repair: false) }

    /// A copy of the sample photos (free to change), ingested once: (folder, photos, catalog).
    private func ingestedCopyOfTheSample() async throws -> (URL, URL, URL) {
        try TestSupport.requireAssets()
        let dir = try TestSupport.temporaryDirectory()
        let photos = dir.appendingPathComponent("photos")
        try FileManager.default.copyItem(at: TestSupport.sampleIdentities, to: photos)
        let catalogPath = dir.appendingPathComponent("c.sqlite")
        _ = try await TestSupport.ingest([photos], catalog: catalogPath)
        return (dir, photos, catalogPath)
    }

    func testSecondRunReadsNothingAndChangedFilesAreReprocessed() async throws {
        let (_, photos, catalogPath) = try await ingestedCopyOfTheSample()
        let before = try TestSupport.dataDump(catalogPath.path)

        let second = try await TestSupport.ingest([photos], catalog: catalogPath)
        XCTAssertEqual(second.counts["unchanged"], 7)
        XCTAssertNil(second.counts["analysed"], "nothing decoded on an unchanged re-run")
        XCTAssertNil(second.replacedFingerprint)
        XCTAssertEqual(try TestSupport.dataDump(catalogPath.path), before)

        // Replace one photo with another one's bytes: re-read, content already known → no decode.
        let target = photos.appendingPathComponent("obama/obama2.jpg")
        try FileManager.default.removeItem(at: target)
        try FileManager.default.copyItem(at: photos.appendingPathComponent("obama/obama3.jpg"), to: target)
        // And change another photo's content for real: a new decode.
        let changed = photos.appendingPathComponent("biden/biden.jpg")
        let img = try NativeImage.decode(Data(contentsOf: changed), maxPixels: 1 << 30)
        try img.adjusted(gain: 0.9, bias: 5).jpegData(quality: 90).write(to: changed)
        let third = try await TestSupport.ingest([photos], catalog: catalogPath)
        XCTAssertEqual(third.counts["unchanged"], 5)
        XCTAssertEqual(third.counts["reused"], 1)
        XCTAssertEqual(third.counts["analysed"], 1)
        XCTAssertNil(third.replacedFingerprint)

        // Other parameters on a part of the sources: the catalog's photos drop out of the usable
        // set (everything follows the latest parameters), and the run says so.
        var other = PipelineConfig()
        other.ingest.minFaceSize = 50
        let empty = photos.deletingLastPathComponent().appendingPathComponent("empty")
        try FileManager.default.createDirectory(at: empty, withIntermediateDirectories: true)
        let fourth = try await TestSupport.ingest([empty], catalog: catalogPath, config: other)
        XCTAssertEqual(fourth.replacedFingerprint, third.fingerprint)
        XCTAssertTrue(fourth.replacementWarning?.contains("ingest every source again") == true)
    }
}

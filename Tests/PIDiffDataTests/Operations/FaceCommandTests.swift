import Foundation
import XCTest
@testable import PIDiffData
@testable import PIDiffModel
@testable import PIDiffNative
@testable import PIDiffCatalog

/// `pidiff-data face`: any photo to the e4e input, with one-line errors for photos it cannot use.
final class FaceCommandTests: XCTestCase {
    private func cases() throws -> URL {
        try TestSupport.requireAssets()
        let dir = try TestSupport.temporaryDirectory()
        let made = try TestSupport.run(TestSupport.python, [TestSupport.fixtures.appendingPathComponent("make_face_cases.py").path,
                                                            TestSupport.obama.path,
                                                            TestSupport.sampleIdentities.appendingPathComponent("biden/biden.jpg").path,
                                                            dir.path])
        XCTAssertEqual(made.status, 0, made.stderr)
        return dir
    }

    func testAPhotoBecomesTheSameE4EInputAsIngestAndMasksMake() async throws {
        try TestSupport.requireAssets()
        let dir = try TestSupport.temporaryDirectory()
        let out = dir.appendingPathComponent("face")
        let r = try TestSupport.runCLI(["face", TestSupport.obama.path, "--out", out.path, "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let line = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        XCTAssertEqual(line["ok"] as? Bool, true)
        XCTAssertEqual(line["face_index"] as? Int, 0)
        XCTAssertEqual((line["landmarks68"] as? [Any])?.count, 68)
        for name in ["obama.e4e.png", "obama.crop512.png", "obama.mask256.png", "obama.json"] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: out.appendingPathComponent(name).path), name)
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: out.path).filter { $0 != Scanner.outputMarker }.count, 4, "the scratch store is removed")
        let e4e = try NativeImage.decode(Data(contentsOf: out.appendingPathComponent("obama.e4e.png")), maxPixels: 1 << 20)
        XCTAssertEqual([e4e.width, e4e.height], [256, 256])

        // Ingest + masks on the same photo give the same pixels: one set of steps and parameters.
        let photos = dir.appendingPathComponent("photos/obama")
        try FileManager.default.createDirectory(at: photos, withIntermediateDirectories: true)
        try FileManager.default.copyItem(at: TestSupport.obama, to: photos.appendingPathComponent("obama.jpg"))
        let catalog = dir.appendingPathComponent("c.sqlite")
        _ = try await TestSupport.ingest([photos.deletingLastPathComponent()], catalog: catalog)
        _ = try await MaskPipeline(catalogPath: catalog.path, parameters: MaskParameters()).run()
        let row = try XCTUnwrap(try MaskReport(catalog: Catalog(path: catalog.path)).entries.first)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: try XCTUnwrap(row.e4eInput))),
                       try Data(contentsOf: out.appendingPathComponent("obama.e4e.png")))
    }

    func testPhotosItCannotUseAreOneLineErrorsAndTheRestArePrepared() throws {
        let dir = try cases()
        let out = dir.appendingPathComponent("out")
        let photos = ["two_people.jpg", "tiny_face.jpg", "sky.png", "notes.jpg", "huge.png"].map { dir.appendingPathComponent($0).path }
        let r = try TestSupport.runCLI(["face"] + photos + [TestSupport.obama.path, "--out", out.path])
        XCTAssertEqual(r.status, 3, r.stderr)
        let errors = r.stderr.split(separator: "\n").map(String.init)
        XCTAssertEqual(errors.count, 5, r.stderr)
        func error(_ name: String) -> String { errors.first { $0.contains(name) } ?? "" }
        XCTAssertTrue(error("two_people.jpg").contains("2 faces") && error("two_people.jpg").contains("--face-index"), error("two_people.jpg"))
        XCTAssertTrue(error("tiny_face.jpg").contains("quality") || error("tiny_face.jpg").contains("no face"), error("tiny_face.jpg"))
        XCTAssertTrue(error("sky.png").contains("no face"), error("sky.png"))
        XCTAssertFalse(error("notes.jpg").isEmpty)
        XCTAssertFalse(error("huge.png").isEmpty)
        XCTAssertTrue(r.stdout.contains("obama.e4e.png"), r.stdout)

        // Choosing a face: the largest, or one by index; an index that does not exist is named.
        let largest = try TestSupport.runCLI(["face", photos[0], "--out", out.path, "--largest", "--json"])
        XCTAssertEqual(largest.status, 0, largest.stderr)
        let second = try TestSupport.runCLI(["face", photos[0], "--out", dir.appendingPathComponent("second").path, "--face-index", "1", "--json"])
        XCTAssertEqual(second.status, 0, second.stderr)
        XCTAssertNotEqual(try Data(contentsOf: out.appendingPathComponent("two_people.e4e.png")),
                          try Data(contentsOf: dir.appendingPathComponent("second/two_people.e4e.png")))
        let missing = try TestSupport.runCLI(["face", photos[0], "--out", out.path, "--face-index", "5"])
        XCTAssertEqual(missing.status, 3)
        XCTAssertTrue(missing.stderr.contains("no face 5: 2 detected"), missing.stderr)
    }
}

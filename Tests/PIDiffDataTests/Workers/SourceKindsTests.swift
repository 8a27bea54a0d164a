import GRDB
import XCTest
@testable import PIDiffData
@testable import PIDiffModel
@testable import PIDiffNative
@testable import PIDiffCatalog

/// Manifests and CrossFaceID JSONL carry identities, captions and labels into the catalog.
final class SourceKindsTests: XCTestCase {
    func testManifestLinesCarryIdentityCaptionAndRawLabels() async throws {
        try TestSupport.requireAssets()
        let dir = try TestSupport.temporaryDirectory()
        let sample = ModelStore.cacheDirectory.appendingPathComponent("sample")
        let manifest = sample.appendingPathComponent("manifest.jsonl")
        XCTAssertEqual(try Scanner.kind(of: manifest.path), .manifest)
        // Add a bad line and a line whose file is missing: both recorded, the rest ingested.
        let extended = dir.appendingPathComponent("manifest.jsonl")
        var text = try String(contentsOf: manifest, encoding: .utf8)
        text += "{not json\n{\"identity\": \"ghost\"}\n"
        text += "{\"identity\": \"ghost\", \"path\": \"nowhere/missing.jpg\"}\n"
        try text.write(to: extended, atomically: true, encoding: .utf8)
        // Paths are relative to the manifest, so point the copy at the sample photos.
        try FileManager.default.createSymbolicLink(at: dir.appendingPathComponent("identities"),
                                                   withDestinationURL: sample.appendingPathComponent("identities"))
        let catalogPath = dir.appendingPathComponent("c.sqlite")
        let summary = try await TestSupport.ingest([extended], catalog: catalogPath)
        XCTAssertEqual(summary.counts["ok"], 4)
        XCTAssertEqual(summary.counts["scan_problems"], 2)
        XCTAssertEqual(summary.counts["unreadable"], 1)
        let rows = try Catalog(path: catalogPath.path).pool.read { db in
            try Row.fetchAll(db, sql: "SELECT i.name, f.path, f.caption, f.race, f.age, f.gender, f.origin FROM files f JOIN identities i ON i.id = f.identity_id ORDER BY f.path")
        }
        let biden = try XCTUnwrap(rows.first { ($0["path"] as String).hasSuffix("biden.jpg") })
        XCTAssertEqual(biden["name"] as String, "biden")
        XCTAssertEqual(biden["caption"] as String?, "a smiling man")
        XCTAssertEqual(biden["race"] as String?, "White")
        XCTAssertEqual(biden["age"] as String?, "66")
        XCTAssertEqual(biden["origin"] as String?, "face_recognition 1.3.0 test images")
        XCTAssertTrue(summary.problems.contains { $0.contains("manifest.jsonl:5") && $0.contains("not a JSON object") }, "\(summary.problems)")
        XCTAssertTrue(summary.problems.contains { $0.contains("manifest.jsonl:6") && $0.contains("`path`") })
    }

    func testOneNameInTwoUnicodeFormsIsOneIdentity() async throws {
        try TestSupport.requireAssets()
        let dir = try TestSupport.temporaryDirectory()
        let photos = TestSupport.sampleIdentities
        // "José" precomposed (NFC) on one line, decomposed (NFD) on the other: one person.
        let lines = [("Jos\u{E9}", "obama/obama.jpg"), ("Jose\u{301}", "biden/biden.jpg")].map { name, rel in
            String(decoding: try! JSONSerialization.data(withJSONObject: ["identity": name, "path": photos.appendingPathComponent(rel).path, "race": "White", "age": 40]),
                   as: UTF8.self)
        }
        let manifest = dir.appendingPathComponent("m.jsonl")
        try (lines.joined(separator: "\n") + "\n").write(to: manifest, atomically: true, encoding: .utf8)
        let catalogPath = dir.appendingPathComponent("c.sqlite")
        _ = try await TestSupport.ingest([manifest], catalog: catalogPath)
        _ = try await TestSupport.ingest([manifest], catalog: catalogPath) // a rerun moves nothing
        let names = try Catalog(path: catalogPath.path).identityNames()
        XCTAssertEqual(names.map { Array($0.utf8) }, [Array("Jos\u{E9}".utf8)])
        // The balance report (which once trapped on two rows Swift sees as one key) runs.
        let out = try TestSupport.runCLI(["balance", "report", "--catalog", catalogPath.path, "--json"])
        XCTAssertEqual(out.status, 0, out.stderr)
    }

    func testCrossFaceIDLinesTakeIdentityFromParentFolderOrAField() async throws {
        try TestSupport.requireAssets()
        let dir = try TestSupport.temporaryDirectory()
        let images = dir.appendingPathComponent("images/person_0007")
        try FileManager.default.createDirectory(at: images, withIntermediateDirectories: true)
        try FileManager.default.copyItem(at: TestSupport.obama, to: images.appendingPathComponent("0001.jpg"))
        let line = #"{"image_file": "images/person_0007/0001.jpg", "additional_feature": "a man at a podium", "bbox": [100, 80, 400, 420], "landmarks": [[1,2],[3,4],[5,6],[7,8],[9,10]], "insightface_feature_file": "feat/0001.npy", "pid": "P7"}"#
        let jsonl = dir.appendingPathComponent("train.jsonl")
        try (line + "\n").write(to: jsonl, atomically: true, encoding: .utf8)
        XCTAssertEqual(try Scanner.kind(of: jsonl.path), .crossfaceid)

        var items: [ScanItem] = []
        try await Scanner().scan(jsonl.path) { if case .item(let i) = $0 { items.append(i) } }
        XCTAssertEqual(items.first?.identity, "person_0007")
        XCTAssertEqual(items.first?.caption, "a man at a podium")
        XCTAssertTrue(items.first?.hint?.contains("\"bbox\":[100,80,400,420]") == true, items.first?.hint ?? "")

        var byField = CrossFaceIDParameters()
        byField.identityField = "pid"
        items = []
        try await Scanner(crossFaceID: byField).scan(jsonl.path) { if case .item(let i) = $0 { items.append(i) } }
        XCTAssertEqual(items.first?.identity, "P7")

        let summary = try await TestSupport.ingest([jsonl], catalog: dir.appendingPathComponent("c.sqlite"))
        XCTAssertEqual(summary.counts["ok"], 1)
    }
}

/// The MMOD CNN detector is selectable and finds the same face as HOG.
final class DetectorChoiceTests: XCTestCase {
    func testMMODFindsTheFaceHOGFinds() throws {
        try TestSupport.requireAssets()
        let models = ModelStore()
        let image = try NativeImage.decode(Data(contentsOf: TestSupport.obama), maxPixels: 1 << 30)
        let hog = try FaceModel(detector: .hog, mmodPath: nil, predictor68Path: models.path(ModelStore.predictor68))
        let mmod = try FaceModel(detector: .mmod, mmodPath: models.path(ModelStore.mmodDetector), predictor68Path: models.path(ModelStore.predictor68))
        let a = try XCTUnwrap(hog.detect(image, upsample: 0, maxSide: 600).boxes.first)
        let b = try XCTUnwrap(mmod.detect(image, upsample: 0, maxSide: 600).boxes.first)
        // Box centres agree to within a quarter of the face width.
        XCTAssertLessThan((a.center - b.center).length, a.width / 4)
        XCTAssertThrowsError(try FaceModel(detector: .mmod, mmodPath: "/nonexistent.dat", predictor68Path: models.path(ModelStore.predictor68))) {
            XCTAssertTrue("\($0)".contains("load face models"), "\($0)")
        }
    }
}

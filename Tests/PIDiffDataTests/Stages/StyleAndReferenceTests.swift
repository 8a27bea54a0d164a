import Foundation
import XCTest
@testable import PIDiffData
@testable import PIDiffCatalog
@testable import PIDiffNative
@testable import PIDiffModel

/// `splits add-style` (a style photo of another face in an identity's training set) and
/// `refs` (a split's references in the layout `pidiff eval` reads).
final class StyleAndReferenceTests: XCTestCase {
    func testAStylePhotoOfAnotherFaceJoinsTheSplitAndTheExportAndReferencesAreWrittenForEval() async throws {
        try TestSupport.requireAssets()
        let dir = try TestSupport.temporaryDirectory()
        let catalog = dir.appendingPathComponent("c.sqlite")
        _ = try await TestSupport.ingest([TestSupport.sampleIdentities], catalog: catalog)
        _ = try await MaskPipeline(catalogPath: catalog.path, parameters: MaskParameters()).run()
        func cli(_ arguments: [String]) throws -> TestSupport.ProcessResult { try TestSupport.runCLI(arguments + ["--catalog", catalog.path]) }
        XCTAssertEqual(try cli(["splits", "create", "v1", "--identities", "obama", "--images-per-identity", "1", "--reference-images", "1"]).status, 0)

        let biden = TestSupport.sampleIdentities.appendingPathComponent("biden/biden.jpg").path
        let added = try cli(["splits", "add-style", "v1", "--identity", "obama", "--photo", biden])
        XCTAssertEqual(added.status, 0, added.stderr)
        let items = try Catalog(path: catalog.path).splitItems("v1")
        XCTAssertEqual(items.filter { $0.role == "style" }.map(\.path), [biden])
        XCTAssertEqual(items.first { $0.role == "style" }?.identity, "obama", "the style trains with obama, whoever is in the photo")

        // Refused: twice (also given as a copy kept elsewhere: found by its content), a photo
        // already in the split, an identity not in it, an unknown photo.
        XCTAssertTrue(try cli(["splits", "add-style", "v1", "--identity", "obama", "--photo", biden]).stderr.contains("already in split v1 as a style photo"))
        let copy = dir.appendingPathComponent("downloads/style.jpg")
        try FileManager.default.createDirectory(at: copy.deletingLastPathComponent(), withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: biden, toPath: copy.path)
        let byContent = try cli(["splits", "add-style", "v1", "--identity", "obama", "--photo", copy.path])
        XCTAssertTrue(byContent.stderr.contains("\(biden) is already in split v1 as a style photo"), byContent.stderr)
        let train = try XCTUnwrap(items.first { $0.role == "train" })
        XCTAssertTrue(try cli(["splits", "add-style", "v1", "--identity", "obama", "--sha256", train.sha256]).stderr.contains("as a train photo"))
        // A copy of the train photo catalogued under another path is that photo too.
        let extra = dir.appendingPathComponent("extra/someone")
        try FileManager.default.createDirectory(at: extra, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: train.path, toPath: extra.appendingPathComponent("copy.jpg").path)
        XCTAssertEqual(try cli(["ingest", extra.deletingLastPathComponent().path]).status, 0)
        let copied = try cli(["splits", "add-style", "v1", "--identity", "obama", "--photo", extra.appendingPathComponent("copy.jpg").path])
        XCTAssertTrue(copied.stderr.contains("\(train.path) is already in split v1 as a train photo"), copied.stderr)
        XCTAssertTrue(try cli(["splits", "add-style", "v1", "--identity", "biden", "--photo", biden]).stderr.contains("identity biden is not in split v1"))
        XCTAssertTrue(try cli(["splits", "add-style", "v1", "--identity", "obama", "--photo", "/nowhere.jpg"]).stderr.contains("no catalogued photo"))

        // The export carries the role to the trainer.
        let shards = dir.appendingPathComponent("shards")
        XCTAssertEqual(try cli(["export", "--split", "v1", "--out", shards.path]).status, 0)
        let read = try TestSupport.run(TestSupport.python, ["-c", """
            import json, sys, tarfile
            with tarfile.open(sys.argv[1]) as t:
                print(json.dumps(sorted(json.load(t.extractfile(m))["role"] for m in t.getmembers() if m.name.endswith(".json"))))
            """, shards.appendingPathComponent("v1-000000.tar").path])
        XCTAssertEqual(read.stdout.trimmingCharacters(in: .whitespacesAndNewlines), "[\"reference\", \"style\", \"train\"]", read.stderr)

        // References for eval: the 512 crop of each reference photo and refs.json.
        let refs = dir.appendingPathComponent("refs")
        let written = try cli(["refs", "--split", "v1", "--out", refs.path])
        XCTAssertEqual(written.status, 0, written.stderr)
        let listing = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: refs.appendingPathComponent("refs.json"))) as? [String: Any])
        let references = try XCTUnwrap(listing["references"] as? [[String: Any]])
        XCTAssertEqual(references.count, 1)
        XCTAssertEqual(references[0]["identity"] as? String, "obama")
        XCTAssertEqual(references[0]["source_sha256"] as? String, items.first { $0.role == "reference" }?.sha256)
        let png = refs.appendingPathComponent(try XCTUnwrap(references[0]["file"] as? String))
        XCTAssertEqual(try NativeImageSize.of(png), [512, 512])
    }
}

enum NativeImageSize {
    static func of(_ url: URL) throws -> [Int] {
        let image = try NativeImage.decode(Data(contentsOf: url), maxPixels: 1 << 22)
        return [image.width, image.height]
    }
}

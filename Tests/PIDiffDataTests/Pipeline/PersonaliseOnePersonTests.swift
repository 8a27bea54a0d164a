import Foundation
import XCTest
@testable import PIDiffData
@testable import PIDiffCatalog

/// The README's "Personalise one person", command for command, on CPU with tiny random models:
/// a folder of photos → ingest, masks, curate → splits create → encode → train → sample --photo.
final class PersonaliseOnePersonTests: XCTestCase {
    func testTheReadmeFlowFromAFolderOfPhotosToPictures() throws {
        try TestSupport.requireAssets()
        let dir = try TestSupport.temporaryDirectory()
        let me = dir.appendingPathComponent("me/me")
        try FileManager.default.createDirectory(at: me, withIntermediateDirectories: true)
        for name in ["obama.jpg", "obama2.jpg", "obama3.jpg"] {
            try FileManager.default.copyItem(at: TestSupport.sampleIdentities.appendingPathComponent("obama/\(name)"), to: me.appendingPathComponent(name))
        }
        let models = dir.appendingPathComponent("tiny")
        let made = try TestSupport.run(TestSupport.python, ["-m", "pidiff.cli", "random-model", "--out", models.path, "--tiny"])
        XCTAssertEqual(made.status, 0, made.stderr)
        let e4e = models.appendingPathComponent("e4e.pt").path, sd = models.appendingPathComponent("sd").path
        let env = ["PIDIFF_CATALOG": dir.appendingPathComponent("me.sqlite").path, "PIDIFF_PYTHON": TestSupport.python,
                   "PIDIFF_DATA": TestSupport.cli.path]
        func cli(_ arguments: [String]) throws {
            let r = try TestSupport.run(TestSupport.cli.path, arguments, environment: env)
            XCTAssertEqual(r.status, 0, "pidiff-data \(arguments.joined(separator: " ")): \(r.stderr)")
        }
        try cli(["ingest", dir.appendingPathComponent("me").path])
        try cli(["masks"])
        try cli(["curate"])
        // Three photos here, so 2 to train on and the best one held out.
        try cli(["splits", "create", "me-v1", "--identities", "me", "--images-per-identity", "2", "--reference-images", "1"])
        let work = dir.appendingPathComponent("work")
        try cli(["encode", "--split", "me-v1", "--out", work.path, "--e4e", e4e, "--sd", sd])
        try cli(["train", "--split", "me-v1", "--encoded", work.appendingPathComponent("encoded").path, "--sd", sd,
                 "--out", work.appendingPathComponent("train").path, "--", "--steps", "2", "--batch-size", "2"])
        let weights = work.appendingPathComponent("train/me/pidiff.safetensors")
        XCTAssertTrue(FileManager.default.fileExists(atPath: weights.path))

        let pictures = dir.appendingPathComponent("pictures")
        let sample = try TestSupport.run(TestSupport.python, ["-m", "pidiff.cli", "sample", "--photo", TestSupport.obama.path,
                                                              "--weights", weights.path, "--sd", sd, "--e4e", e4e,
                                                              "--prompt", "a photo of S* reading in the library", "--out", pictures.path,
                                                              "--steps", "2", "--latent-size", "8", "--num-images", "2"],
                                         environment: env)
        XCTAssertEqual(sample.status, 0, sample.stderr)
        let pngs = try FileManager.default.contentsOfDirectory(atPath: pictures.path).filter { $0.hasSuffix(".png") && $0 != "grid.png" }
        XCTAssertEqual(pngs.count, 2, "\(pngs)")
        // The photo went through the same preparation as ingest: its e4e input is the catalog's.
        let prepared = try Data(contentsOf: pictures.appendingPathComponent("face/obama.e4e.png"))
        let catalogued = try MaskReport(catalog: Catalog(path: env["PIDIFF_CATALOG"]!)).entries.first { $0.path.hasSuffix("/obama.jpg") }
        XCTAssertEqual(prepared, try Data(contentsOf: URL(fileURLWithPath: try XCTUnwrap(catalogued?.e4eInput))))
    }
}

import Foundation
import XCTest
@testable import PIDiffData
@testable import PIDiffModel
@testable import PIDiffNative
@testable import PIDiffCatalog

/// Progress of the long commands off a terminal: JSON lines on stderr naming the stage and the
/// unit, counting up to the total and ending there. `$PIDIFF_PROGRESS_INTERVAL=0` asks for a
/// line per update instead of one every 10 s.
final class ProgressLineTests: XCTestCase {
    struct Line: Equatable { var stage: String; var unit: String; var done: Int; var total: Int? }

    /// Runs the CLI with a line per update and returns its progress lines (its other stderr output is left out).
    private func progressLines(_ arguments: [String], file: StaticString = #filePath, line: UInt = #line) throws -> (TestSupport.ProcessResult, [Line]) {
        let result = try TestSupport.run(TestSupport.cli.path, arguments, environment: ["PIDIFF_PROGRESS_INTERVAL": "0"])
        XCTAssertEqual(result.status, 0, "\(arguments): \(result.stderr)", file: file, line: line)
        let lines = result.stderr.split(separator: "\n").compactMap { text -> Line? in
            guard let object = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any],
                  let stage = object["progress"] as? String, let unit = object["unit"] as? String, let done = object["done"] as? Int else { return nil }
            return Line(stage: stage, unit: unit, done: done, total: object["total"] as? Int)
        }
        return (result, lines)
    }

    /// The lines of one stage and unit count up, all with `total`, and end at it.
    private func assertCountsUp(_ lines: [Line], stage: String, unit: String, total: Int, file: StaticString = #filePath, line: UInt = #line) {
        let mine = lines.filter { $0.stage == stage && $0.unit == unit }
        XCTAssertFalse(mine.isEmpty, "no \(stage) progress in \(unit): \(lines)", file: file, line: line)
        XCTAssertEqual(Set(mine.map(\.total)), [total], "\(stage): \(mine)", file: file, line: line)
        XCTAssertEqual(mine.map(\.done), mine.map(\.done).sorted(), "\(stage) counts never go back: \(mine)", file: file, line: line)
        XCTAssertEqual(mine.last?.done, total, "\(stage) ends at its total: \(mine)", file: file, line: line)
    }

    func testLongCommandsPrintProgressLinesThatEndAtTheirTotal() async throws {
        try TestSupport.requireAssets()
        let dir = try TestSupport.temporaryDirectory()
        let catalog = dir.appendingPathComponent("c.sqlite")
        _ = try await TestSupport.ingest([TestSupport.sampleIdentities], catalog: catalog)

        // curate counts photos (distinct contents whose features it computes), not features.
        let (curated, curateLines) = try progressLines(["curate", "--catalog", catalog.path, "--json"])
        let summary = try JSONDecoder().decode(CurationSummary.self, from: Data(curated.stdout.utf8))
        let photos = try XCTUnwrap(summary.computed["image_hashes"])
        XCTAssertGreaterThan(summary.computed.values.reduce(0, +), photos, "a photo has several features")
        assertCountsUp(curateLines, stage: "curate", unit: "photos", total: photos)
        XCTAssertFalse(curateLines.contains { $0.unit == "features" }, "\(curateLines)")

        _ = try await MaskPipeline(catalogPath: catalog.path, parameters: MaskParameters()).run()

        // labels classify counts the faces it classifies.
        let model = dir.appendingPathComponent("fairface.onnx")
        let made = try TestSupport.run(TestSupport.python, [TestSupport.fixtures.appendingPathComponent("make_fairface_onnx.py").path, model.path, "--flat"])
        XCTAssertEqual(made.status, 0, made.stderr)
        let (classified, classifyLines) = try progressLines(["labels", "classify", "--model", model.path, "--catalog", catalog.path])
        XCTAssertTrue(classified.stdout.contains("classified 7 faces"), classified.stdout)
        assertCountsUp(classifyLines, stage: "labels classify", unit: "faces", total: 7)

        // export counts samples, shard by shard and within a shard as it is written; the context
        // view first counts the context views it makes.
        let split = try TestSupport.runCLI(["splits", "create", "p", "--identities", "obama", "--images-per-identity", "2",
                                            "--reference-images", "1", "--catalog", catalog.path])
        XCTAssertEqual(split.status, 0, split.stderr)
        let (_, exportLines) = try progressLines(["export", "--split", "p", "--out", dir.appendingPathComponent("shards").path,
                                                  "--max-shard-bytes", "4096", "--catalog", catalog.path])
        assertCountsUp(exportLines, stage: "export", unit: "samples", total: 3)
        XCTAssertEqual(exportLines.map(\.done), [1, 1, 2, 2, 3, 3], "one line as each sample is written, one as its shard closes")
        let (_, contextLines) = try progressLines(["export", "--split", "p", "--out", dir.appendingPathComponent("context").path,
                                                   "--view", "context", "--catalog", catalog.path])
        assertCountsUp(contextLines, stage: "export", unit: "context views", total: 3)
        assertCountsUp(contextLines, stage: "export", unit: "samples", total: 3)

        // verify counts the artefacts it hashes.
        let (verified, verifyLines) = try progressLines(["verify", "--catalog", catalog.path, "--json"])
        let report = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(verified.stdout.utf8)) as? [String: Any])
        let artefacts = try XCTUnwrap(report["artefacts_checked"] as? Int)
        XCTAssertGreaterThan(artefacts, 0)
        assertCountsUp(verifyLines, stage: "verify", unit: "artefacts", total: artefacts)

        // report counts the thumbnails it makes (or finds made): one per face crop and per e4e input.
        let (reported, reportLines) = try progressLines(["report", "--catalog", catalog.path, "--html", dir.appendingPathComponent("site").path, "--json"])
        let site = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(reported.stdout.utf8)) as? [String: Any])
        let c = try Catalog(path: catalog.path)
        let images = Set(try c.reportPhotos().compactMap(\.crop256)).count + (try c.maskReport().compactMap(\.e4eInput).count)
        XCTAssertEqual(site["thumbnails"] as? Int, images)
        assertCountsUp(reportLines, stage: "report", unit: "thumbnails", total: images)
    }

}

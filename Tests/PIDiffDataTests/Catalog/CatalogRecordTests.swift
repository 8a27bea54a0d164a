import Foundation
import XCTest
import GRDB
@testable import PIDiffModel
@testable import PIDiffCatalog

/// The catalog's record layer on a synthetic ingest (no photos needed): the stored text of
/// landmarks and quads, and the upserts that replaced positional SQL.
final class CatalogRecordTests: XCTestCase {
    private static let landmarks = (0..<68).map { Point(x: Double($0) + 0.5, y: Double($0) * 2.25 + 1e-7) }
    private static let quad = [Point(x: -10.125, y: 3), Point(x: -10.125, y: 203), Point(x: 189.875, y: 203), Point(x: 189.875, y: 3)]

    private func item(_ path: String, caption: String? = nil) -> ScanItem {
        var item = ScanItem(path: path, identity: "ada", sourceKind: .manifest, sourceLocation: "/manifest.jsonl")
        item.caption = caption
        return item
    }

    private func analysis(_ sha: String) -> ImageAnalysis {
        let quality = FaceQuality(faceSize: 200, sharpness: nil, rollDegrees: 1.5, yaw: -0.25, outsideFraction: 0, passed: true)
        let face = FaceDraft(index: 0, selected: true, box: FaceBox(left: 1, top: 2, right: 3, bottom: 4, score: 0.9),
                             landmarks: Landmarks68(points: Self.landmarks), quad: AlignmentQuad(corners: Self.quad),
                             quality: quality, padded: false, crops: [512: "crops/a.png", 256: "crops/b.png"])
        return ImageAnalysis(sha256: sha, byteSize: 10, format: "jpeg", width: 300, height: 300, outcome: .ok, facesFound: 1, faces: [face])
    }

    /// A catalog holding one ingested photo at /p/a.jpg under a completed run.
    private func ingestedCatalog(caption: String? = nil) async throws -> (Catalog, CatalogWriter) {
        let dir = try TestSupport.temporaryDirectory()
        let catalog = try Catalog(path: dir.appendingPathComponent("catalog.sqlite").path)
        let runID = try RunRecorder.begin(catalog, command: "ingest", fingerprint: "fp", parameters: "{}")
        let writer = CatalogWriter(catalog: catalog, runID: runID, fingerprint: "fp")
        try await writer.commit([.analysed(item("/p/a.jpg", caption: caption), .init(sha256: "sha-a", byteSize: 10, mtimeNs: 1),
                                           analysis("sha-a"), StageTimings())])
        try await writer.finish(status: "completed", counts: ["files": 1])
        return (catalog, writer)
    }

    func testLandmarksAndQuadAreStoredAsJSONArraysOfXYPairsAsBefore() async throws {
        let (catalog, _) = try await ingestedCatalog()
        let (landmarks, quad) = try await catalog.pool.read { db in
            (try String.fetchOne(db, sql: "SELECT landmarks68 FROM faces")!, try String.fetchOne(db, sql: "SELECT quad FROM faces")!)
        }
        // The text the positional INSERT wrote (JSONEncoder over [[x, y]]): catalogs written before
        // and after records hold the same bytes, so dumps and fingerprints stay comparable.
        func legacy(_ points: [Point]) throws -> String {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            return String(decoding: try encoder.encode(points.map { [$0.x, $0.y] }), as: UTF8.self)
        }
        XCTAssertEqual(landmarks, try legacy(Self.landmarks))
        XCTAssertEqual(quad, "[[-10.125,3],[-10.125,203],[189.875,203],[189.875,3]]")

        let face = try await catalog.pool.read { db in try FaceRecord.fetchOne(db)! }
        XCTAssertEqual(face.landmarks, Landmarks68(points: Self.landmarks))
        XCTAssertEqual(face.alignmentQuad, AlignmentQuad(corners: Self.quad))
        let report = try catalog.faceReports()
        XCTAssertEqual(report.map(\.landmarks68), [Self.landmarks.map { [$0.x, $0.y] }])
        XCTAssertEqual(report.first?.bbox, [1, 2, 3, 4])
        XCTAssertNil(report.first?.sharpness)
    }

    func testAMalformedLandmarksValueFailsTheReadThatMeetsIt() async throws {
        let (catalog, _) = try await ingestedCatalog()
        try await catalog.pool.write { try $0.execute(sql: "UPDATE faces SET landmarks68 = '[[1, 2, 3]]'") }
        XCTAssertThrowsError(try catalog.faceReports())
    }

    func testAFileSeenAgainKeepsItsIDAndTakesEveryColumnOfTheNewRead() async throws {
        let (catalog, writer) = try await ingestedCatalog(caption: "first")
        let before = try await catalog.pool.read { db in try FileRecord.fetchOne(db)! }
        XCTAssertEqual(before.caption, "first")
        // The same path, now unreadable: the caption and content hash are cleared, not kept.
        try await writer.commit([.unreadable(item("/p/a.jpg"), nil, reason: "gone")])
        let after = try await catalog.pool.read { db in try FileRecord.fetchAll(db) }
        XCTAssertEqual(after.count, 1)
        XCTAssertEqual(after.first?.id, before.id)
        XCTAssertEqual(after.first?.readError, "gone")
        XCTAssertNil(after.first?.caption)
        XCTAssertNil(after.first?.sha256)
        XCTAssertNil(after.first?.byteSize)
    }

    func testRecordingAnEncodingAgainWhereItIsChangesNothing() async throws {
        let (catalog, _) = try await ingestedCatalog()
        let row = (sha256: "sha-a", preprocessing: "pre", model: "m", file: "enc-0.safetensors", key: "k1")
        XCTAssertEqual(try catalog.recordEncodings([row]), 1)
        let first = try await catalog.pool.read { db in try EncodingRecord.fetchOne(db)! }
        XCTAssertEqual(try catalog.recordEncodings([row]), 0)
        let again = try await catalog.pool.read { db in try EncodingRecord.fetchOne(db)! }
        XCTAssertEqual(again.recordedAt, first.recordedAt)
        var moved = row
        moved.file = "enc-1.safetensors"
        XCTAssertEqual(try catalog.recordEncodings([moved]), 1)
        let files = try await catalog.pool.read { db in try EncodingRecord.fetchAll(db).map(\.encodedFile) }
        XCTAssertEqual(files, ["enc-1.safetensors"])
        XCTAssertEqual(try catalog.encodedCount([("sha-a", "pre"), ("sha-b", "pre")], model: "m"), 1)
    }
}

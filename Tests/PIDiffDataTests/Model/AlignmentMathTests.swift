import XCTest
@testable import PIDiffData
@testable import PIDiffModel
@testable import PIDiffNative
@testable import PIDiffCatalog

/// The FFHQ/e4e quad, checked against values computed by hand from the published formula.
final class AlignmentMathTests: XCTestCase {
    /// Eyes at (100,100) and (200,100), mouth corners at (130,200) and (170,200):
    /// eye_avg = (150,100), eye_to_eye = (100,0), eye_to_mouth = (0,100);
    /// x = (100,0) − (−100,0) = (200,0) → unit (1,0) · max(2·100, 1.8·100) = (200,0);
    /// y = (0,200); c = (150,110); quad = c−x−y, c−x+y, c+x+y, c+x−y.
    static func uprightLandmarks() -> Landmarks68 {
        var points = [Point](repeating: Point(x: 150, y: 150), count: 68)
        for i in 36...41 { points[i] = Point(x: 100, y: 100) }
        for i in 42...47 { points[i] = Point(x: 200, y: 100) }
        points[48] = Point(x: 130, y: 200)
        points[54] = Point(x: 170, y: 200)
        return Landmarks68(points: points)
    }

    func testQuadOfUprightFaceMatchesHandComputedCorners() {
        let quad = AlignmentQuad(landmarks: Self.uprightLandmarks())
        let expected = [Point(x: -50, y: -90), Point(x: -50, y: 310), Point(x: 350, y: 310), Point(x: 350, y: -90)]
        for (got, want) in zip(quad.corners, expected) {
            XCTAssertEqual(got.x, want.x, accuracy: 1e-9)
            XCTAssertEqual(got.y, want.y, accuracy: 1e-9)
        }
        XCTAssertEqual(quad.side, 400, accuracy: 1e-9)
    }

    func testMouthDominatesScaleWhenEyesAreClose() {
        // eye_to_eye = 40 → 2·40 = 80; eye_to_mouth = 100 → 1.8·100 = 180 wins.
        var lm = Self.uprightLandmarks()
        for i in 36...41 { lm.points[i] = Point(x: 130, y: 100) }
        for i in 42...47 { lm.points[i] = Point(x: 170, y: 100) }
        XCTAssertEqual(AlignmentQuad(landmarks: lm).side, 360, accuracy: 1e-9)
    }

    func testQuadRotatesWithTheFace() {
        // Rotating every landmark by θ about a point rotates the quad by θ (similarity covariance).
        let theta = 0.4, pivot = Point(x: 150, y: 150)
        func rotate(_ p: Point) -> Point {
            let d = p - pivot
            return Point(x: pivot.x + d.x * cos(theta) - d.y * sin(theta), y: pivot.y + d.x * sin(theta) + d.y * cos(theta))
        }
        let upright = AlignmentQuad(landmarks: Self.uprightLandmarks())
        let rotated = AlignmentQuad(landmarks: Landmarks68(points: Self.uprightLandmarks().points.map(rotate)))
        for (a, b) in zip(upright.corners.map(rotate), rotated.corners) {
            XCTAssertEqual(a.x, b.x, accuracy: 1e-9)
            XCTAssertEqual(a.y, b.y, accuracy: 1e-9)
        }
    }

    func testOutsideFractionCountsTheQuadBeyondTheImage() {
        let quad = AlignmentQuad(corners: [Point(x: -50, y: 0), Point(x: -50, y: 100), Point(x: 50, y: 100), Point(x: 50, y: 0)])
        XCTAssertEqual(quad.outsideFraction(width: 1000, height: 1000), 0.5, accuracy: 1e-9)
        XCTAssertEqual(quad.outsideFraction(width: 10, height: 10), 1 - 10.0 * 10 / (100 * 100), accuracy: 0.02)
    }

    func testQualityGatesNameEveryFailedReason() {
        var q = FaceQuality(faceSize: 50, sharpness: 1, rollDegrees: 60, yaw: 0.9, outsideFraction: 0.5)
        var p = IngestParameters()
        p.minSharpness = 5
        QualityStage.gate(&q, parameters: p)
        XCTAssertEqual(q.passed, false)
        for word in ["min_face_size", "outside", "roll", "yaw", "sharpness"] {
            XCTAssertTrue(q.reason?.contains(word) == true, "reason should mention \(word): \(q.reason ?? "")")
        }
        var good = FaceQuality(faceSize: 400, sharpness: 50, rollDegrees: 3, yaw: 0.1, outsideFraction: 0)
        QualityStage.gate(&good, parameters: p)
        XCTAssertEqual(good.passed, true)
        XCTAssertNil(good.reason)
    }
}

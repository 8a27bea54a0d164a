import Foundation

/// The oriented square that FFHQ/e4e alignment cuts out of a photo: corners
/// c−x−y, c−x+y, c+x+y, c+x−y (top-left, bottom-left, bottom-right, top-right of the crop).
public struct AlignmentQuad: Codable, Equatable, Sendable {
    public var corners: [Point]

    /// Side length in source pixels (2|x|): the face size the crop is made from.
    public var side: Double { (corners[3] - corners[0]).length }
    package var flattened: [Double] { corners.flatMap { [$0.x, $0.y] } }

    /// FFHQ alignment from 68 landmarks, as in e4e's `align_face` (Docs/architecture.md, "Alignment").
    public init(landmarks lm: Landmarks68) {
        let eyeLeft = Point.mean(lm.eyeLeft)
        let eyeRight = Point.mean(lm.eyeRight)
        let eyeAvg = (eyeLeft + eyeRight) * 0.5
        let eyeToEye = eyeRight - eyeLeft
        let mouthAvg = (lm.mouthLeft + lm.mouthRight) * 0.5
        let eyeToMouth = mouthAvg - eyeAvg

        // x points along the eye line, tilted so that x ⟂ eye_to_mouth is balanced with it.
        var x = eyeToEye - Point(x: -eyeToMouth.flipped.x, y: eyeToMouth.flipped.y)
        x = x * (1.0 / x.length)
        x = x * max(eyeToEye.length * 2.0, eyeToMouth.length * 1.8)
        let y = Point(x: -x.flipped.x, y: x.flipped.y)
        let c = eyeAvg + eyeToMouth * 0.1
        corners = [c - x - y, c - x + y, c + x + y, c + x - y]
    }

    public init(corners: [Point]) {
        precondition(corners.count == 4)
        self.corners = corners
    }

    /// Fraction of the quad's area that lies outside a width×height image, estimated on a
    /// 64×64 grid of sample points (exact enough for a quality gate, and cheap).
    public func outsideFraction(width: Int, height: Int) -> Double {
        let n = 64
        var outside = 0
        let origin = corners[0], ax = corners[3] - corners[0], ay = corners[1] - corners[0]
        for i in 0..<n {
            for j in 0..<n {
                let u = (Double(i) + 0.5) / Double(n), v = (Double(j) + 0.5) / Double(n)
                let p = origin + ax * u + ay * v
                if p.x < 0 || p.y < 0 || p.x >= Double(width) || p.y >= Double(height) { outside += 1 }
            }
        }
        return Double(outside) / Double(n * n)
    }
}

import Foundation

/// A point in original-image pixels.
public struct Point: Codable, Equatable, Sendable {
    public var x: Double
    public var y: Double
    public init(x: Double, y: Double) { self.x = x; self.y = y }

    package static func + (a: Point, b: Point) -> Point { Point(x: a.x + b.x, y: a.y + b.y) }
    package static func - (a: Point, b: Point) -> Point { Point(x: a.x - b.x, y: a.y - b.y) }
    package static func * (a: Point, s: Double) -> Point { Point(x: a.x * s, y: a.y * s) }
    package var length: Double { (x * x + y * y).squareRoot() }
    /// numpy's `np.flipud` of a 2-vector: (y, x).
    package var flipped: Point { Point(x: y, y: x) }
    package static func mean(_ points: some Collection<Point>) -> Point {
        let n = Double(points.count)
        return Point(x: points.reduce(0) { $0 + $1.x } / n, y: points.reduce(0) { $0 + $1.y } / n)
    }
}

/// A detector box in original-image pixels (right/bottom exclusive).
public struct FaceBox: Codable, Equatable, Sendable {
    public var left, top, right, bottom: Double
    public var score: Double
    public init(left: Double, top: Double, right: Double, bottom: Double, score: Double) {
        self.left = left; self.top = top; self.right = right; self.bottom = bottom; self.score = score
    }
    public var width: Double { right - left }
    public var height: Double { bottom - top }
    public var area: Double { max(0, width) * max(0, height) }
    public var center: Point { Point(x: (left + right) / 2, y: (top + bottom) / 2) }
}

/// dlib's 68 facial landmarks (iBUG 300-W order) in original-image pixels.
public struct Landmarks68: Codable, Equatable, Sendable {
    public var points: [Point]
    public init(points: [Point]) {
        precondition(points.count == 68, "68 landmarks expected")
        self.points = points
    }
    public var jaw: ArraySlice<Point> { points[0...16] }
    public var eyeLeft: ArraySlice<Point> { points[36...41] }
    public var eyeRight: ArraySlice<Point> { points[42...47] }
    public var noseTip: Point { points[30] }
    public var mouthLeft: Point { points[48] }
    public var mouthRight: Point { points[54] }
}

import Foundation

/// Which member of a duplicate group is kept: the one with the highest
/// `resolution × sharpness × frontalness`, where
/// - resolution is the face size in source pixels (side of the alignment quad) — the real detail
///   behind the 512 crop — or √(width·height) for a photo without a face;
/// - sharpness is the variance of the Laplacian of the 256 crop (all crops have the same scale,
///   so it compares across members; 1 when unknown);
/// - frontalness is 1 − |yaw proxy|, floored at 0.05 so a profile view still ranks by detail.
/// Ties (exact duplicates score the same) go to more pixels, then to the first path in sort order,
/// so the choice is deterministic.
enum KeepPolicy {
    static func score(_ file: CurationFile) -> Double {
        guard let face = file.face else { return (Double(file.width) * Double(file.height)).squareRoot() }
        let sharpness = max(face.sharpness ?? 1, 1e-6)
        let frontalness = max(0.05, 1 - abs(face.yaw))
        return face.faceSize * sharpness * frontalness
    }

    /// Whether `a` should be kept in preference to `b`.
    static func prefers(_ a: CurationFile, _ b: CurationFile) -> Bool {
        let sa = score(a), sb = score(b)
        if sa != sb { return sa > sb }
        let pa = a.width * a.height, pb = b.width * b.height
        if pa != pb { return pa > pb }
        return a.path < b.path
    }

    /// Index (into `files`) of the member to keep among `members`.
    static func best(_ members: [Int], in files: [CurationFile]) -> Int {
        members.min { prefers(files[$0], files[$1]) }!
    }

    static func describe(_ file: CurationFile) -> String {
        String(format: "keep score %.4g", score(file))
    }
}

/// Disjoint sets over 0..<n with path halving and union by size.
struct UnionFind {
    private var parent: [Int]
    private var size: [Int]

    init(_ n: Int) {
        parent = Array(0..<n)
        size = [Int](repeating: 1, count: n)
    }

    mutating func find(_ x: Int) -> Int {
        var x = x
        while parent[x] != x {
            parent[x] = parent[parent[x]]
            x = parent[x]
        }
        return x
    }

    mutating func union(_ a: Int, _ b: Int) {
        var ra = find(a), rb = find(b)
        guard ra != rb else { return }
        if size[ra] < size[rb] { swap(&ra, &rb) }
        parent[rb] = ra
        size[ra] += size[rb]
    }

    /// Sets with at least `minSize` members, each sorted, ordered by their first member.
    mutating func groups(minSize: Int = 2) -> [[Int]] {
        var byRoot: [Int: [Int]] = [:]
        for i in 0..<parent.count { byRoot[find(i), default: []].append(i) }
        return byRoot.values.filter { $0.count >= minSize }.map { $0.sorted() }.sorted { $0[0] < $1[0] }
    }
}

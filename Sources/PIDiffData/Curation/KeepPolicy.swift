import Foundation
import PIDiffModel
import PIDiffNative
import PIDiffCatalog

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

/// Chooses the member to keep. Within one identity that is KeepPolicy's best. A group spanning
/// identities (the same photo filed under two names) first prefers a member that looks like the
/// other photos of its own identity (descriptor within the impostor threshold of one of them),
/// then one whose identity has no other photo to compare with, and last one that matches none of
/// its identity's photos: the copy filed under the wrong name is the one dropped.
struct KeepChooser {
    var files: [CurationFile]
    var descriptors: [FaceDescriptor?]
    var threshold: Double
    private var facesOf: [Int64: [Int]] = [:]

    init(files: [CurationFile], descriptors: [FaceDescriptor?], threshold: Double) {
        self.files = files
        self.descriptors = descriptors
        self.threshold = threshold
        for i in files.indices where descriptors[i] != nil { facesOf[files[i].identityID, default: []].append(i) }
    }

    /// 2: matches another photo of its identity; 1: nothing to compare with; 0: matches none.
    func fit(_ m: Int, excluding group: Set<Int>) -> Int {
        guard let d = descriptors[m] else { return 1 }
        let others = (facesOf[files[m].identityID] ?? []).filter { !group.contains($0) }
        guard !others.isEmpty else { return 1 }
        return others.contains { Double(DescriptorDistances.distance(d, descriptors[$0]!)) <= threshold } ? 2 : 0
    }

    /// A group's member to keep, and (for a group spanning identities) each member's fit, which
    /// decided before quality did.
    struct Choice {
        var members: [Int]
        var keep: Int
        var fits: [Int: Int] = [:]
    }

    func choose(_ members: [Int]) -> Choice {
        guard Set(members.map { files[$0].identityID }).count > 1 else {
            return Choice(members: members, keep: KeepPolicy.best(members, in: files))
        }
        let group = Set(members)
        let fits = Dictionary(uniqueKeysWithValues: members.map { ($0, fit($0, excluding: group)) })
        let keep = members.min { a, b in fits[a]! != fits[b]! ? fits[a]! > fits[b]! : KeepPolicy.prefers(files[a], files[b]) }!
        return Choice(members: members, keep: keep, fits: fits)
    }

    /// A note for member `m`'s reason when identity, not quality, decided the group's choice.
    func note(_ choice: Choice, over m: Int) -> String {
        guard let kept = choice.fits[choice.keep], let dropped = choice.fits[m], kept > dropped else { return "" }
        return "; kept under '\(files[choice.keep].identity)'"
            + (dropped == 0 ? ", whose photos it matches; it matches none of '\(files[m].identity)'" : "")
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

import Foundation
import PIDiffModel
import PIDiffNative
import PIDiffCatalog

/// One person filed under two identity ids: identities whose reference descriptors (mean of the
/// dominant person's faces, see IdentityPurity) are within `same_person_threshold` are proposed
/// for merging, scored by that distance; the reason also gives the closest pair of members.
/// Reference distances are computed with sgemm in row blocks, so K identities never need a K × K
/// matrix. With `--apply-merges`, each candidate set (joined transitively) is recorded as aliases
/// of its largest identity (ties: the one catalogued first); identities themselves are never rewritten.
struct SamePerson {
    var threshold: Double

    struct Candidate {
        var a: IdentityPurity.IdentityProfile
        var b: IdentityPurity.IdentityProfile
        var distance: Double
        var nearestMembers: (Int, Int, Double)
    }

    func candidates(_ profiles: [IdentityPurity.IdentityProfile], descriptors: [FaceDescriptor?]) throws -> [Candidate] {
        // An identity without a clear majority has no trustworthy reference (IdentityPurity).
        let profiles = profiles.filter(\.clearMajority)
        guard profiles.count > 1 else { return [] }
        let all = profiles.flatMap(\.reference)
        let dim = DescriptorModel.dimension, block = 1024
        var out: [Candidate] = []
        for start in stride(from: 0, to: profiles.count, by: block) {
            let end = min(start + block, profiles.count)
            let d = try DescriptorDistances.block(Array(all[(start * dim)..<(end * dim)]), all)
            for r in 0..<(end - start) {
                let i = start + r
                for j in (i + 1)..<profiles.count where Double(d[r * profiles.count + j]) <= threshold {
                    out.append(Candidate(a: profiles[i], b: profiles[j], distance: Double(d[r * profiles.count + j]),
                                         nearestMembers: try nearest(profiles[i], profiles[j], descriptors)))
                }
            }
        }
        return out
    }

    private func nearest(_ a: IdentityPurity.IdentityProfile, _ b: IdentityPurity.IdentityProfile,
                         _ descriptors: [FaceDescriptor?]) throws -> (Int, Int, Double) {
        let d = try DescriptorDistances.block(a.dominant.flatMap { descriptors[$0]! }, b.dominant.flatMap { descriptors[$0]! })
        let k = d.indices.min { d[$0] < d[$1] }!
        return (a.dominant[k / b.dominant.count], b.dominant[k % b.dominant.count], Double(d[k]))
    }

    func decisions(_ candidates: [Candidate], files: [CurationFile]) -> [CurationDecision] {
        candidates.map { c in
            let (x, y, d) = c.nearestMembers
            return CurationDecision(
                kind: .samePerson, identityID: c.a.identityID, otherIdentityID: c.b.identityID, score: c.distance,
                reason: String(format: "reference descriptors %.3f apart (≤ %.2f); nearest members %.3f (%@ ~ %@)",
                               c.distance, threshold, d, files[x].path, files[y].path))
        }
    }

    /// Aliases for `--apply-merges`: every identity of a candidate set points at the set's largest.
    func aliases(_ candidates: [Candidate]) -> [IdentityAlias] {
        var index: [Int64: Int] = [:], profiles: [IdentityPurity.IdentityProfile] = []
        for c in candidates {
            for p in [c.a, c.b] where index[p.identityID] == nil { index[p.identityID] = profiles.count; profiles.append(p) }
        }
        var sets = UnionFind(profiles.count)
        var best: [Int64: Double] = [:]
        for c in candidates {
            sets.union(index[c.a.identityID]!, index[c.b.identityID]!)
            for id in [c.a.identityID, c.b.identityID] { best[id] = min(best[id] ?? .infinity, c.distance) }
        }
        var out: [IdentityAlias] = []
        for members in sets.groups() {
            let canonical = members.min { a, b in
                profiles[a].faces != profiles[b].faces ? profiles[a].faces > profiles[b].faces : profiles[a].identityID < profiles[b].identityID
            }!
            for m in members where m != canonical {
                out.append(IdentityAlias(identityID: profiles[m].identityID, canonicalIdentityID: profiles[canonical].identityID,
                                         score: best[profiles[m].identityID]!,
                                         reason: "same person as a larger identity (reference distance ≤ \(threshold))"))
            }
        }
        return out
    }
}

import Foundation
import PIDiffModel
import PIDiffNative
import PIDiffCatalog

/// Within each identity, find the dominant person and flag faces that are someone else.
///
/// The anchor is the medoid of the densest neighbourhood: the face with the most other faces of
/// the identity within `impostor_threshold` (ties: smallest summed distance). The dominant person
/// is the anchor plus those neighbours; its reference descriptor is their mean. A face further
/// than the threshold from the reference is an `impostor`, scored by that distance. Only kept
/// photos take part, so duplicates cannot outvote the real majority.
///
/// Without a clear majority (the dominant person holds half the faces or fewer: two photos of two
/// people, say) nobody can tell which person the identity is, so every face is flagged for review
/// rather than keeping whichever came first, and the identity takes no part in same-person merges.
struct IdentityPurity {
    var threshold: Double

    struct IdentityProfile {
        var identityID: Int64
        /// Indices (into the curated files) of the dominant person's faces.
        var dominant: [Int]
        /// Faces of the identity with a descriptor (dominant and impostors).
        var faces: Int
        /// Mean descriptor of the dominant faces.
        var reference: FaceDescriptor
        /// The dominant person holds more than half of the faces.
        var clearMajority: Bool
    }

    struct Result {
        var decisions: [CurationDecision]
        var profiles: [IdentityProfile]
    }

    func evaluate(_ files: [CurationFile], kept: [Int], descriptors: [FaceDescriptor?]) throws -> Result {
        var byIdentity: [Int64: [Int]] = [:]
        for i in kept where descriptors[i] != nil { byIdentity[files[i].identityID, default: []].append(i) }
        var decisions: [CurationDecision] = []
        var profiles: [IdentityProfile] = []
        for identityID in byIdentity.keys.sorted() {
            let members = byIdentity[identityID]!
            let flat = members.flatMap { descriptors[$0]! }
            let dim = DescriptorModel.dimension
            // Per-identity distances, in row blocks so even a huge identity never holds n × n.
            var neighbours = [Int](repeating: 0, count: members.count)
            var sums = [Double](repeating: 0, count: members.count)
            let block = 1024
            for start in stride(from: 0, to: members.count, by: block) {
                let end = min(start + block, members.count)
                let d = try DescriptorDistances.block(Array(flat[(start * dim)..<(end * dim)]), flat)
                for r in 0..<(end - start) {
                    for c in 0..<members.count where c != start + r {
                        let v = Double(d[r * members.count + c])
                        sums[start + r] += v
                        if v <= threshold { neighbours[start + r] += 1 }
                    }
                }
            }
            let anchor = (0..<members.count).min { a, b in
                neighbours[a] != neighbours[b] ? neighbours[a] > neighbours[b] : sums[a] < sums[b]
            }!
            let anchorRow = try DescriptorDistances.block(descriptors[members[anchor]]!, flat)
            let dominant = (0..<members.count).filter { $0 == anchor || Double(anchorRow[$0]) <= threshold }
            var reference = FaceDescriptor(repeating: 0, count: dim)
            for k in dominant { for j in 0..<dim { reference[j] += descriptors[members[k]]![j] } }
            reference = reference.map { $0 / Float(dominant.count) }
            let majority = members.count == 1 || dominant.count * 2 > members.count
            profiles.append(IdentityProfile(identityID: identityID, dominant: dominant.map { members[$0] }, faces: members.count,
                                            reference: reference, clearMajority: majority))
            guard members.count > 1 else { continue }
            let toReference = try DescriptorDistances.block(reference, flat)
            for (k, i) in members.enumerated() where !majority || Double(toReference[k]) > threshold {
                decisions.append(CurationDecision(
                    kind: .impostor, fileID: files[i].fileID, identityID: identityID, score: Double(toReference[k]),
                    reason: majority
                        ? String(format: "descriptor %.3f from the dominant person of '%@' (> %.2f); dominant: %d of %d faces",
                                 toReference[k], files[i].identity, threshold, dominant.count, members.count)
                        : String(format: "'%@' has no clear majority (largest group of one person: %d of %d faces), so no face "
                                 + "can be trusted; review by hand (descriptor %.3f from that group)",
                                 files[i].identity, dominant.count, members.count, toReference[k])))
            }
        }
        return Result(decisions: decisions, profiles: profiles)
    }
}

import Foundation
import PIDiffModel
import PIDiffNative
import PIDiffCatalog

/// Stored features of the files being curated, aligned with the `files` array by index.
struct CurationFeatures {
    var imageHashes: [ImageHashes?]
    var faceHashes: [UInt64?]
    var descriptors: [FaceDescriptor?]
}

/// Exact and near duplicates, and which member of each group is kept.
///
/// 1. Exact: files with the same decoded pixels (which includes the same bytes) form a group;
///    its best member (KeepPolicy) represents it.
/// 2. Near: among representatives, pairs whose pHash of the aligned face crop or of the whole
///    image is within `hamming_radius` bits (multi-index hashing, never all-pairs) are candidates.
///    A candidate pair where both photos have a face is accepted only if their identity
///    descriptors are within `descriptor_guard`: a transformed copy stays very close, while a
///    different photo of the same person (same pose, similar framing, so a similar pHash) does not.
///    Accepted pairs are joined transitively into groups; each group keeps its best member.
struct DuplicateFinder {
    var parameters: CurationParameters
    var workers: Int

    struct Result {
        var decisions: [CurationDecision]
        /// Indices of files that are the kept member of their group or in no group.
        var kept: [Int]
        var nearCandidatePairs: Int
        var nearRejectedByGuard: Int
    }

    func find(_ files: [CurationFile], _ features: CurationFeatures) -> Result {
        let chooser = KeepChooser(files: files, descriptors: features.descriptors, threshold: parameters.impostorThreshold)

        // Exact: by decoded pixels where hashed, else by bytes.
        var byPixels: [String: [Int]] = [:]
        for (i, f) in files.enumerated() {
            byPixels[features.imageHashes[i].map { "pixels:" + $0.pixelSHA256 } ?? "bytes:" + f.sha256, default: []].append(i)
        }
        var representatives: [Int] = []
        var exactGroups: [KeepChooser.Choice] = []
        for key in byPixels.keys.sorted() {
            let members = byPixels[key]!
            let choice = chooser.choose(members)
            representatives.append(choice.keep)
            if members.count > 1 { exactGroups.append(choice) }
        }
        representatives.sort()

        // Near: candidate pairs from both hash kinds, over representatives.
        var candidates: [Pair: PairEvidence] = [:]
        func join(_ hashOf: (Int) -> UInt64?, _ record: (inout PairEvidence, Int) -> Void) {
            let members = representatives.filter { hashOf($0) != nil }
            let hashes = members.map { hashOf($0)! }
            guard hashes.count > 1 else { return }
            let index = NearDuplicateIndex(hashes: hashes, radius: parameters.hammingRadius)
            for p in index.selfJoin(hashes, workers: workers) {
                let key = Pair(members[Int(p.a)], members[Int(p.b)])
                record(&candidates[key, default: PairEvidence()], Int(p.distance))
            }
        }
        join({ features.faceHashes[$0] }) { $0.faceBits = $1 }
        join({ features.imageHashes[$0]?.phash }) { $0.imageBits = $1 }

        var sets = UnionFind(files.count)
        var rejected = 0
        for (pair, var evidence) in candidates {
            if let a = features.descriptors[pair.a], let b = features.descriptors[pair.b] {
                evidence.descriptorDistance = Double(DescriptorDistances.distance(a, b))
                if evidence.descriptorDistance! > parameters.descriptorGuard { rejected += 1; continue }
            }
            sets.union(pair.a, pair.b)
        }
        let nearGroups = sets.groups().map(chooser.choose)
        // A representative dropped as a near duplicate hands its exact copies on to the photo kept
        // instead, so every decision names a photo that is really kept.
        var finalKeep: [Int: Int] = [:]
        for g in nearGroups { for m in g.members { finalKeep[m] = g.keep } }

        var decisions: [CurationDecision] = []
        var groupID = 0
        for g in exactGroups {
            groupID += 1
            let kept = finalKeep[g.keep] ?? g.keep
            for m in g.members where m != g.keep {
                let sameBytes = files[m].sha256 == files[g.keep].sha256
                decisions.append(CurationDecision(
                    kind: .exactDuplicate, fileID: files[m].fileID, keptFileID: files[kept].fileID,
                    identityID: files[m].identityID, groupID: groupID, score: 0,
                    reason: (sameBytes ? "same bytes (SHA-256 \(files[m].sha256.prefix(12))…)"
                                       : "same decoded pixels \(files[m].width)×\(files[m].height), different bytes (re-encoded copy)")
                        + chooser.note(g, over: m)))
            }
        }
        var kept = Set(representatives)
        for g in nearGroups {
            groupID += 1
            for m in g.members where m != g.keep {
                kept.remove(m)
                let e = evidence(m, g.keep, features)
                decisions.append(CurationDecision(
                    kind: .nearDuplicate, fileID: files[m].fileID, keptFileID: files[g.keep].fileID,
                    identityID: files[m].identityID, groupID: groupID, score: e.score,
                    reason: "\(e.description) from the kept photo; \(KeepPolicy.describe(files[m])) < \(KeepPolicy.describe(files[g.keep]))"
                        + chooser.note(g, over: m)))
            }
        }
        return Result(decisions: decisions, kept: kept.sorted(), nearCandidatePairs: candidates.count, nearRejectedByGuard: rejected)
    }

    /// Direct evidence between a member and the kept photo (they may be linked through others).
    private func evidence(_ a: Int, _ b: Int, _ f: CurationFeatures) -> PairEvidence {
        var e = PairEvidence()
        if let x = f.faceHashes[a], let y = f.faceHashes[b] { e.faceBits = (x ^ y).nonzeroBitCount }
        if let x = f.imageHashes[a]?.phash, let y = f.imageHashes[b]?.phash { e.imageBits = (x ^ y).nonzeroBitCount }
        if let x = f.descriptors[a], let y = f.descriptors[b] { e.descriptorDistance = Double(DescriptorDistances.distance(x, y)) }
        return e
    }
}

/// An unordered pair of file indices (a < b).
struct Pair: Hashable {
    let a: Int, b: Int
    init(_ x: Int, _ y: Int) { a = min(x, y); b = max(x, y) }
}

/// What links two photos: Hamming distances of their hashes and their descriptor distance.
struct PairEvidence {
    var faceBits: Int?
    var imageBits: Int?
    var descriptorDistance: Double?

    /// The Hamming distance that made them candidates: the face hash's when both have one.
    var score: Double { Double(faceBits ?? imageBits ?? 64) }

    var description: String {
        var parts: [String] = []
        if let faceBits { parts.append("face pHash \(faceBits) bits") }
        if let imageBits { parts.append("image pHash \(imageBits) bits") }
        if let descriptorDistance { parts.append(String(format: "descriptor %.3f", descriptorDistance)) }
        return parts.joined(separator: ", ")
    }
}

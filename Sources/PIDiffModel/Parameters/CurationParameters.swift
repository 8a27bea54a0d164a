import Foundation

/// Parameters of `pidiff-data curate` (the `curate:` section of a pipeline file). Everything
/// except `workers` decides what curation concludes, so it is part of the curation fingerprint.
/// Defaults are the ones measured in Docs/benchmarks.md (## Curation).
public struct CurationParameters: Codable, Equatable, Sendable {
    /// Two photos are near-duplicate candidates when their 64-bit pHash (of the aligned face crop
    /// or of the whole image) differs in at most this many bits.
    public var hammingRadius: Int = 8
    /// …and, when both have a face, their identity descriptors are at most this far apart. Two
    /// different photos of one person sit at ~0.3–0.5; transformed copies of one photo far below.
    public var descriptorGuard: Double = 0.25
    /// A face further than this from its identity's dominant person is flagged `impostor`
    /// (dlib's same-person threshold).
    public var impostorThreshold: Double = 0.6
    /// Two identities whose centroids are closer than this are proposed as one person.
    public var samePersonThreshold: Double = 0.5
    /// Worker threads for hashing and descriptors (0 = one per core). Not fingerprinted.
    public var workers: Int = 0

    public init() {}

    public init(from decoder: Decoder) throws { self = try Self.decoded(from: decoder) }
    public func encode(to encoder: Encoder) throws { try encodeFields(to: encoder) }

    /// Refuses values that cannot mean anything, naming the parameter.
    public func validate() throws {
        guard (0..<64).contains(hammingRadius) else {
            throw PipelineError.invalid("curate.hamming_radius", "\(hammingRadius) is not in 0…63 bits")
        }
        for (name, v) in [("descriptor_guard", descriptorGuard), ("impostor_threshold", impostorThreshold),
                          ("same_person_threshold", samePersonThreshold)] where !(v > 0 && v.isFinite) {
            throw PipelineError.invalid("curate.\(name)", "\(v) must be a positive distance")
        }
    }
}

extension CurationParameters: ParameterSection {
    public static let section = "curate"
    // Bump when grouping, keep policy or purity logic changes what they conclude.
    public static let algorithmVersion = "curate-1"
    public static let fields: [ParameterField<CurationParameters>] = [
        .field(\.hammingRadius, "hamming_radius", "near-duplicate candidates: pHash (aligned face or whole image) within this many bits of 64"),
        .field(\.descriptorGuard, "descriptor_guard", "…and, where both have a face, identity descriptors within this distance"),
        .field(\.impostorThreshold, "impostor_threshold", "a face further than this from its identity's dominant person is an impostor"),
        .field(\.samePersonThreshold, "same_person_threshold", "identities whose reference descriptors are this close are proposed for merging"),
        .field(\.workers, "workers", "0 = one per core (not fingerprinted)", fingerprint: .never),
    ]
}

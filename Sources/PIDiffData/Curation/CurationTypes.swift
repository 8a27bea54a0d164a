import Foundation

/// One catalogued photo as curation sees it: the file, its content and its selected face (if any)
/// under the ingest fingerprint being curated.
public struct CurationFile: Sendable {
    public var fileID: Int64
    public var path: String
    public var identityID: Int64
    public var identity: String
    public var sha256: String
    public var width: Int
    public var height: Int
    public var face: Face?
    /// Size and mtime as ingest saw them (nil where not recorded).
    public var byteSize: Int? = nil
    public var mtimeNs: Int64? = nil

    public struct Face: Sendable {
        public var landmarks: Landmarks68
        public var quad: AlignmentQuad
        public var faceSize: Double
        public var sharpness: Double?
        public var yaw: Double
        /// Paths relative to the data root; the file name is the crop's SHA-256.
        public var descriptorCrop: String
        public var hashCrop: String
        var descriptorCropSHA: String { Self.contentSHA(descriptorCrop) }
        var hashCropSHA: String { Self.contentSHA(hashCrop) }
        static func contentSHA(_ relative: String) -> String {
            URL(fileURLWithPath: relative).deletingPathExtension().lastPathComponent
        }
    }
}

/// Stored or freshly computed hashes of one image content.
public struct ImageHashes: Sendable, Equatable {
    /// SHA-256 of the decoded pixels (equal for re-encoded copies with identical pixels).
    public var pixelSHA256: String
    /// pHash of the whole image.
    public var phash: UInt64
}

/// What curation concluded about one file, one identity or one pair of identities.
public struct CurationDecision: Sendable, Equatable {
    public enum Kind: String, Sendable, Codable, CaseIterable {
        case exactDuplicate = "exact_duplicate", nearDuplicate = "near_duplicate", impostor, samePerson = "same_person"
    }
    public var kind: Kind
    /// The file decided about (duplicates, impostors).
    public var fileID: Int64?
    /// The member kept in its place (duplicates).
    public var keptFileID: Int64?
    public var identityID: Int64?
    /// The other identity of a same-person candidate.
    public var otherIdentityID: Int64?
    /// Duplicate group (its members share it).
    public var groupID: Int?
    public var score: Double
    public var reason: String
}

/// An identity recorded as another name of a canonical identity (`--apply-merges`).
public struct IdentityAlias: Sendable, Equatable {
    public var identityID: Int64
    public var canonicalIdentityID: Int64
    public var score: Double
    public var reason: String
}

public enum CurationError: Error, CustomStringConvertible {
    case noIngest(String)
    case artefact(String, String)
    public var description: String {
        switch self {
        case .noIngest(let c): return "catalog \(c) has no ingest run to curate; run pidiff-data ingest first"
        case .artefact(let p, let r): return "\(p): \(r)"
        }
    }
}

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
        package var descriptorCropSHA: String { Self.contentSHA(descriptorCrop) }
        package var hashCropSHA: String { Self.contentSHA(hashCrop) }
        package static func contentSHA(_ relative: String) -> String {
            URL(fileURLWithPath: relative).deletingPathExtension().lastPathComponent
        }
        package init(landmarks: Landmarks68, quad: AlignmentQuad, faceSize: Double, sharpness: Double? = nil, yaw: Double, descriptorCrop: String, hashCrop: String) {
            self.landmarks = landmarks
            self.quad = quad
            self.faceSize = faceSize
            self.sharpness = sharpness
            self.yaw = yaw
            self.descriptorCrop = descriptorCrop
            self.hashCrop = hashCrop
        }
    }
    package init(fileID: Int64, path: String, identityID: Int64, identity: String, sha256: String, width: Int, height: Int, face: Face? = nil, byteSize: Int? = nil, mtimeNs: Int64? = nil) {
        self.fileID = fileID
        self.path = path
        self.identityID = identityID
        self.identity = identity
        self.sha256 = sha256
        self.width = width
        self.height = height
        self.face = face
        self.byteSize = byteSize
        self.mtimeNs = mtimeNs
    }
}

/// Stored or freshly computed hashes of one image content.
public struct ImageHashes: Sendable, Equatable {
    /// SHA-256 of the decoded pixels (equal for re-encoded copies with identical pixels).
    public var pixelSHA256: String
    /// pHash of the whole image.
    public var phash: UInt64
    package init(pixelSHA256: String, phash: UInt64) {
        self.pixelSHA256 = pixelSHA256
        self.phash = phash
    }
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
    package init(kind: Kind, fileID: Int64? = nil, keptFileID: Int64? = nil, identityID: Int64? = nil, otherIdentityID: Int64? = nil, groupID: Int? = nil, score: Double, reason: String) {
        self.kind = kind
        self.fileID = fileID
        self.keptFileID = keptFileID
        self.identityID = identityID
        self.otherIdentityID = otherIdentityID
        self.groupID = groupID
        self.score = score
        self.reason = reason
    }
}

/// An identity recorded as another name of a canonical identity (`--apply-merges`).
public struct IdentityAlias: Sendable, Equatable {
    public var identityID: Int64
    public var canonicalIdentityID: Int64
    public var score: Double
    public var reason: String
    package init(identityID: Int64, canonicalIdentityID: Int64, score: Double, reason: String) {
        self.identityID = identityID
        self.canonicalIdentityID = canonicalIdentityID
        self.score = score
        self.reason = reason
    }
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

import Foundation

/// What ingest made of one image content.
public enum ImageOutcome: String, Codable, Sendable, CaseIterable {
    case ok, noFace = "no_face", decodeError = "decode_error", notImage = "not_image"
    case tooSmall = "too_small", tooLarge = "too_large"
}

/// Quality measures of one face, and the gates' verdict.
public struct FaceQuality: Codable, Equatable, Sendable {
    /// Side of the alignment quad in source pixels: how much real resolution the crop has.
    public var faceSize: Double
    /// Variance of the Laplacian of the 256 crop (nil for faces not cropped).
    public var sharpness: Double?
    /// In-plane rotation of the eye line, degrees.
    public var rollDegrees: Double
    /// Yaw proxy in [−1, 1]: asymmetry of nose-tip-to-jaw distances (0 = frontal).
    public var yaw: Double
    /// Fraction of the quad that lies outside the photo (filled by padding).
    public var outsideFraction: Double
    public var passed: Bool? = nil
    public var reason: String? = nil
    package init(faceSize: Double, sharpness: Double? = nil, rollDegrees: Double, yaw: Double, outsideFraction: Double, passed: Bool? = nil, reason: String? = nil) {
        self.faceSize = faceSize
        self.sharpness = sharpness
        self.rollDegrees = rollDegrees
        self.yaw = yaw
        self.outsideFraction = outsideFraction
        self.passed = passed
        self.reason = reason
    }
}

/// One face ready for the catalog.
package struct FaceDraft: Sendable {
    package var index: Int
    package var selected: Bool
    package var box: FaceBox
    package var landmarks: Landmarks68
    package var quad: AlignmentQuad
    package var quality: FaceQuality
    package var padded: Bool?
    package var crops: [Int: String] // size → path relative to the data root
    package init(index: Int, selected: Bool, box: FaceBox, landmarks: Landmarks68, quad: AlignmentQuad, quality: FaceQuality, padded: Bool? = nil, crops: [Int: String]) {
        self.index = index
        self.selected = selected
        self.box = box
        self.landmarks = landmarks
        self.quad = quad
        self.quality = quality
        self.padded = padded
        self.crops = crops
    }
}

/// Everything ingest learnt about one image content.
package struct ImageAnalysis: Sendable {
    package var sha256: String
    package var byteSize: Int
    package var format: String?
    package var width: Int?
    package var height: Int?
    package var outcome: ImageOutcome
    package var reason: String?
    package var facesFound: Int
    package var faces: [FaceDraft]
    package init(sha256: String, byteSize: Int, format: String? = nil, width: Int? = nil, height: Int? = nil, outcome: ImageOutcome, reason: String? = nil, facesFound: Int, faces: [FaceDraft]) {
        self.sha256 = sha256
        self.byteSize = byteSize
        self.format = format
        self.width = width
        self.height = height
        self.outcome = outcome
        self.reason = reason
        self.facesFound = facesFound
        self.faces = faces
    }
}

/// Seconds spent per stage, summed over images.
public struct StageTimings: Codable, Sendable {
    public var read = 0.0, decode = 0.0, detect = 0.0, landmarks = 0.0, align = 0.0, quality = 0.0, store = 0.0
    package mutating func add(_ o: StageTimings) {
        read += o.read; decode += o.decode; detect += o.detect; landmarks += o.landmarks
        align += o.align; quality += o.quality; store += o.store
    }
    package var asDictionary: [String: Double] {
        ["read+hash": read, "decode": decode, "detect": detect, "landmarks": landmarks, "align": align, "quality": quality, "store": store]
    }
    package init(read: Double = 0.0, decode: Double = 0.0, detect: Double = 0.0, landmarks: Double = 0.0, align: Double = 0.0, quality: Double = 0.0, store: Double = 0.0) {
        self.read = read
        self.decode = decode
        self.detect = detect
        self.landmarks = landmarks
        self.align = align
        self.quality = quality
        self.store = store
    }
}

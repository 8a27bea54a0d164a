import Foundation

/// A selected face that needs a mask.
package struct MaskJob: Sendable {
    package var sha256: String
    package var faceIndex: Int
    /// A photo with this content (the first by path), for messages.
    package var path: String
    package var crop512: String
    package var crop256: String
    package var landmarks: [Point]
    package var quad: AlignmentQuad
    package init(sha256: String, faceIndex: Int, path: String, crop512: String, crop256: String, landmarks: [Point], quad: AlignmentQuad) {
        self.sha256 = sha256
        self.faceIndex = faceIndex
        self.path = path
        self.crop512 = crop512
        self.crop256 = crop256
        self.landmarks = landmarks
        self.quad = quad
    }
}

/// A mask stage result for the writer.
package struct MaskResult: Sendable {
    package var job: MaskJob
    package var method: String
    package var mask512: String?
    package var mask256: String?
    package var e4eInput: String?
    package var coverage: Double?
    package var ok: Bool
    package var reason: String?
    /// The crops could not be read (a store problem, not the face's): nothing is recorded for the
    /// face, so the next run masks it once `verify --repair` has restored them.
    package var skipped = false
    package init(job: MaskJob, method: String, mask512: String? = nil, mask256: String? = nil, e4eInput: String? = nil, coverage: Double? = nil, ok: Bool, reason: String? = nil, skipped: Bool = false) {
        self.job = job
        self.method = method
        self.mask512 = mask512
        self.mask256 = mask256
        self.e4eInput = e4eInput
        self.coverage = coverage
        self.ok = ok
        self.reason = reason
        self.skipped = skipped
    }
}

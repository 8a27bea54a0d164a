import Foundation
import PIDiffModel
import PIDiffNative
import PIDiffCatalog

/// Identity descriptors: dlib's 128-D face recognition ResNet on a 150×150 chip.
///
/// The chip is cut from the stored aligned crop (512 px, else the largest) rather than the
/// source photo: the crop holds the whole face at a known scale, decoding it costs a fraction of
/// decoding a full-resolution photo, and its file name is its SHA-256, so a descriptor is keyed on
/// crop content + model fingerprint. The 68 landmarks are mapped into crop pixels through the
/// alignment quad (a similarity transform), then dlib's get_face_chip_details fits the chip.
enum DescribeStage {
    /// Bump when the chip or mapping changes; part of the descriptor fingerprint.
    static let chipVersion = "chip150-pad0.25-68pt-from-aligned-crop-v1"

    /// Fingerprint of the descriptors this code and model produce.
    static func fingerprint(models: ModelStore) throws -> String {
        Hashing.fingerprint(["model": try models.fingerprint(ModelStore.faceDescriptor), "chip": chipVersion])
    }

    static func describe(_ face: CurationFile.Face, model: DescriptorModel, store: ArtefactStore) throws -> FaceDescriptor {
        let crop = try ContentHashStage.loadCrop(face.descriptorCrop, store: store)
        let mapped = landmarksInCrop(face.landmarks, quad: face.quad, cropSize: Double(crop.width))
        return try model.describe(crop, landmarks: mapped)
    }

    /// Source-pixel landmarks → crop pixels. The crop maps quad corner 0 (c−x−y) to (0, 0),
    /// corner 3 (c+x−y) to (size, 0) and corner 1 (c−x+y) to (0, size).
    static func landmarksInCrop(_ lm: Landmarks68, quad: AlignmentQuad, cropSize: Double) -> Landmarks68 {
        let origin = quad.corners[0]
        let ax = quad.corners[3] - origin, ay = quad.corners[1] - origin
        let lx = ax.x * ax.x + ax.y * ax.y, ly = ay.x * ay.x + ay.y * ay.y
        return Landmarks68(points: lm.points.map { p in
            let d = p - origin
            return Point(x: cropSize * (d.x * ax.x + d.y * ax.y) / lx, y: cropSize * (d.x * ay.x + d.y * ay.y) / ly)
        })
    }
}

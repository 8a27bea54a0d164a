import Foundation
import PIDiffModel
import PIDiffNative
import PIDiffCatalog

/// A detected face with its landmarks, in original-image pixels.
struct DetectedFace {
    var index: Int
    var box: FaceBox
    var landmarks: Landmarks68
}

/// Detect stage: faces (HOG or MMOD) → 68 landmarks for each, and the policy's pick.
enum DetectStage {
    /// Face boxes, largest first, at most `max_faces_recorded` of them, plus the total found.
    /// With `detect_cascade`, a first pass runs without pyramid upsampling (4× fewer pixels) and
    /// the upsampled pass runs only when it finds nothing: identity photos have large faces, and
    /// faces only the upsampled pass finds (≲ 80 px boxes) mostly fail the face-size gate anyway.
    static func boxes(_ image: NativeImage, model: FaceModel, parameters p: IngestParameters) throws -> (boxes: [FaceBox], total: Int) {
        let capacity = max(1, p.maxFacesRecorded)
        if p.detectCascade && p.upsample > 0 {
            let quick = try model.detect(image, upsample: 0, maxSide: p.detectMaxSide, capacity: capacity)
            if quick.total > 0 { return quick }
        }
        return try model.detect(image, upsample: p.upsample, maxSide: p.detectMaxSide, capacity: capacity)
    }

    /// 68 landmarks for every box.
    static func landmarks(_ image: NativeImage, boxes: [FaceBox], model: FaceModel) throws -> [DetectedFace] {
        try boxes.enumerated().map { i, box in
            DetectedFace(index: i, box: box, landmarks: try model.landmarks68(image, box: box))
        }
    }

    /// Index of the face the policy selects. Ties keep the earlier (larger) face.
    static func select(_ faces: [DetectedFace], policy: FacePolicy, width: Int, height: Int) -> Int? {
        guard !faces.isEmpty else { return nil }
        switch policy {
        case .largest:
            return faces.indices.max { faces[$0].box.area < faces[$1].box.area || (faces[$0].box.area == faces[$1].box.area && $0 > $1) }
        case .bestScore:
            return faces.indices.max { faces[$0].box.score < faces[$1].box.score || (faces[$0].box.score == faces[$1].box.score && $0 > $1) }
        case .central:
            let c = Point(x: Double(width) / 2, y: Double(height) / 2)
            return faces.indices.min { (faces[$0].box.center - c).length < (faces[$1].box.center - c).length || ((faces[$0].box.center - c).length == (faces[$1].box.center - c).length && $0 < $1) }
        }
    }
}

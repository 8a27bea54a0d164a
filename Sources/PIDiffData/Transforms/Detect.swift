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
    /// With `detect_cascade` and HOG, the detector scans its image pyramid coarse to fine only as
    /// far as the photo needs (`fn_detect_cascade`): the coarse levels first, where an identity
    /// photo's one large face is found at a fraction of the cost; then every level of the
    /// detection copy; the upsampled levels finer than it when faces were found but not one large
    /// face alone (a group photo's small faces), or all of them when nothing was found. A face
    /// found at the copy's levels keeps the box dlib's detector gives it there. With MMOD the
    /// cascade is a pass without upsampling, then the upsampled pass when it finds nothing.
    static func boxes(_ image: NativeImage, model: FaceModel, parameters p: IngestParameters) throws -> (boxes: [FaceBox], total: Int) {
        let found = try detect(image, model: model, parameters: p)
        return (found.boxes, found.total)
    }

    /// `boxes`, plus what the HOG cascade scanned (nil when it did not run).
    static func detect(_ image: NativeImage, model: FaceModel, parameters p: IngestParameters)
        throws -> (boxes: [FaceBox], total: Int, passes: FaceModel.CascadePasses?) {
        let capacity = max(1, p.maxFacesRecorded)
        guard p.detectCascade else {
            let found = try model.detect(image, upsample: p.upsample, maxSide: p.detectMaxSide, capacity: capacity)
            return (found.boxes, found.total, nil)
        }
        if p.detector == .hog {
            return try model.detectCascade(image, upsample: p.upsample, maxSide: p.detectMaxSide, coarseSide: p.detectCoarseSide,
                                           loneFaceBox: p.detectLoneFaceBox, capacity: capacity)
        }
        if p.upsample > 0 {
            let quick = try model.detect(image, upsample: 0, maxSide: p.detectMaxSide, capacity: capacity)
            if quick.total > 0 { return (quick.boxes, quick.total, nil) }
        }
        let found = try model.detect(image, upsample: p.upsample, maxSide: p.detectMaxSide, capacity: capacity)
        return (found.boxes, found.total, nil)
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

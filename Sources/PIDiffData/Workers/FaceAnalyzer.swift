import Foundation
import PIDiffModel
import PIDiffNative
import PIDiffCatalog

@inline(__always) func measure<T>(_ slot: inout Double, _ body: () throws -> T) rethrows -> T {
    let t0 = DispatchTime.now().uptimeNanoseconds
    defer { slot += Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9 }
    return try body()
}

/// The per-image work of one worker: decode → detect → landmarks → align → quality → store.
/// Owns its dlib models (not thread-safe), so each worker has its own analyser.
final class FaceAnalyzer {
    let model: FaceModel
    let parameters: IngestParameters
    let store: ArtefactStore
    /// Crop this face (index among the detected faces, largest first) instead of the policy's pick.
    var faceIndex: Int?

    init(model: FaceModel, parameters: IngestParameters, store: ArtefactStore) {
        self.model = model
        self.parameters = parameters
        self.store = store
    }

    func analyse(_ bytes: FileBytes, timings t: inout StageTimings) throws -> ImageAnalysis {
        var result = ImageAnalysis(sha256: bytes.sha256, byteSize: bytes.byteSize, outcome: .ok, facesFound: 0, faces: [])
        let image: NativeImage
        do {
            let (decoded, header) = try measure(&t.decode) { try DecodeStage.decode(bytes.data, parameters: parameters) }
            image = decoded
            result.format = header.format.rawValue
            result.width = decoded.width
            result.height = decoded.height
        } catch let refusal as DecodeStage.Refusal {
            result.outcome = refusal.outcome
            result.reason = refusal.reason
            result.format = refusal.header?.format.rawValue
            result.width = refusal.header?.width
            result.height = refusal.header?.height
            return result
        }

        let (boxes, total) = try measure(&t.detect) { try DetectStage.boxes(image, model: model, parameters: parameters) }
        result.facesFound = total
        let faces = try measure(&t.landmarks) { try DetectStage.landmarks(image, boxes: boxes, model: model) }
        guard let chosen = faceIndex.flatMap({ faces.indices.contains($0) ? $0 : nil })
                ?? (faceIndex == nil ? DetectStage.select(faces, policy: parameters.facePolicy, width: image.width, height: image.height) : nil) else {
            result.outcome = .noFace
            result.reason = "no face detected (\(parameters.detector.rawValue), upsample \(parameters.upsample))"
            return result
        }

        for face in faces {
            let quad = AlignmentQuad(landmarks: face.landmarks)
            var quality = measure(&t.quality) { QualityStage.measure(landmarks: face.landmarks, quad: quad, width: image.width, height: image.height) }
            var draft = FaceDraft(index: face.index, selected: face.index == chosen, box: face.box, landmarks: face.landmarks,
                                  quad: quad, quality: quality, padded: nil, crops: [:])
            if draft.selected {
                var padded = false
                for size in parameters.cropSizes {
                    let (crop, wasPadded) = try measure(&t.align) { try image.aligned(quad: quad, size: size) }
                    padded = padded || wasPadded
                    if size == 256 || (quality.sharpness == nil && size == parameters.cropSizes.last) {
                        quality.sharpness = measure(&t.quality) { crop.sharpness }
                    }
                    draft.crops[size] = try measure(&t.store) { try store.put(try crop.pngData(), kind: "crops", ext: "png") }
                }
                draft.padded = padded
                QualityStage.gate(&quality, parameters: parameters)
                draft.quality = quality
            }
            result.faces.append(draft)
        }
        return result
    }
}

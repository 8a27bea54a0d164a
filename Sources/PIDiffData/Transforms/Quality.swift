import Foundation
import PIDiffModel
import PIDiffNative
import PIDiffCatalog

/// Quality stage: measures from landmarks and crops, then the configured gates.
enum QualityStage {
    static func measure(landmarks lm: Landmarks68, quad: AlignmentQuad, width: Int, height: Int) -> FaceQuality {
        let eyeToEye = Point.mean(lm.eyeRight) - Point.mean(lm.eyeLeft)
        let roll = atan2(eyeToEye.y, eyeToEye.x) * 180 / .pi
        let left = (lm.noseTip - lm.points[0]).length, right = (lm.points[16] - lm.noseTip).length
        let yaw = left + right > 0 ? (left - right) / (left + right) : 0
        return FaceQuality(faceSize: quad.side, sharpness: nil, rollDegrees: roll, yaw: yaw,
                           outsideFraction: quad.outsideFraction(width: width, height: height))
    }

    static func gate(_ q: inout FaceQuality, parameters p: IngestParameters) {
        var reasons: [String] = []
        if q.faceSize < p.minFaceSize { reasons.append(String(format: "face %.0f px < min_face_size %.0f", q.faceSize, p.minFaceSize)) }
        if q.outsideFraction > p.maxOutsideFraction {
            reasons.append(String(format: "%.0f%% of the crop outside the photo > %.0f%%", q.outsideFraction * 100, p.maxOutsideFraction * 100))
        }
        if abs(q.rollDegrees) > p.maxAbsRollDegrees { reasons.append(String(format: "roll %.0f° beyond ±%.0f°", q.rollDegrees, p.maxAbsRollDegrees)) }
        if abs(q.yaw) > p.maxAbsYaw { reasons.append(String(format: "yaw proxy %.2f beyond ±%.2f", q.yaw, p.maxAbsYaw)) }
        if let s = q.sharpness, s < p.minSharpness { reasons.append(String(format: "sharpness %.1f < min_sharpness %.1f", s, p.minSharpness)) }
        q.passed = reasons.isEmpty
        q.reason = reasons.isEmpty ? nil : reasons.joined(separator: "; ")
    }
}

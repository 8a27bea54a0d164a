import Foundation
import PIDiffModel
import PIDiffNative
import PIDiffCatalog

/// The mask stage: a soft foreground mask (face + hair; neck optional) for an aligned face at
/// 512 and 256, and the e4e input (the 256 crop over white through the mask).
struct MaskStage {
    struct Output {
        var mask512: NativeImage
        var mask256: NativeImage
        var e4eInput: NativeImage
        var coverage: Double
        var checks: HeadChecks
        var failure: String?
    }

    let parameters: MaskParameters
    let parser: FaceParser?

    init(parameters: MaskParameters) throws {
        self.parameters = parameters
        if parameters.method == .onnx {
            guard let path = parameters.onnxPath else {
                throw PipelineError.invalid("mask.onnx_path", "method onnx needs mask.onnx_path (a face-parsing ONNX model)")
            }
            parser = try FaceParser(onnxPath: path, inputSize: parameters.onnxInputSize, mean: parameters.onnxMean, std: parameters.onnxStd)
        } else {
            parser = nil
        }
    }

    /// Landmarks mapped from original-image pixels into a `size`² crop of `quad` (inverse of the
    /// affine map the alignment warp uses).
    static func landmarksInCrop(_ landmarks: [Point], quad: AlignmentQuad, size: Int) -> [Point] {
        let s = Double(size)
        let a = (quad.corners[3] - quad.corners[0]) * (1 / s)
        let b = (quad.corners[1] - quad.corners[0]) * (1 / s)
        let det = a.x * b.y - a.y * b.x
        return landmarks.map { p in
            let d = p - quad.corners[0]
            let u = (b.y * d.x - b.x * d.y) / det
            let v = (-a.y * d.x + a.x * d.y) / det
            return Point(x: u - 0.5, y: v - 0.5)
        }
    }

    func run(crop256: NativeImage, crop512: NativeImage, landmarks: [Point], quad: AlignmentQuad) throws -> Output {
        let p = parameters
        let work = p.workSize == 256 ? crop256 : (p.workSize == 512 ? crop512 : try crop512.resized(width: p.workSize, height: p.workSize))
        let scale = Double(p.workSize) / 256.0
        let mask: NativeImage
        if let parser {
            mask = try parser.mask(work, keep: p.onnxKeepClasses, featherSigma: p.featherSigma * scale)
        } else {
            mask = try work.grabCutMask(landmarks: Self.landmarksInCrop(landmarks, quad: quad, size: p.workSize), parameters: p,
                                        featherSigma: p.featherSigma * scale)
        }
        let mask256 = p.workSize == 256 ? mask : try mask.maskResized(to: 256)
        let mask512 = p.workSize == 512 ? mask : try mask.maskResized(to: 512)
        let coverage = mask256.maskCoverage
        let checks = try mask256.headChecks(landmarks: Self.landmarksInCrop(landmarks, quad: quad, size: 256), coreScale: p.skullCore)
        return Output(mask512: mask512, mask256: mask256, e4eInput: try crop256.compositedOnWhite(mask: mask256),
                      coverage: coverage, checks: checks, failure: Self.failure(coverage: coverage, checks: checks, parameters: p))
    }

    /// Why a mask is flagged (every failed check, with its figure), or nil when it passes.
    static func failure(coverage: Double, checks: HeadChecks, parameters p: MaskParameters) -> String? {
        var reasons: [String] = []
        if checks.headBand < p.minHeadBand {
            reasons.append(String(format: "lost the head above the brows: head band %.0f%% foreground, under %.0f%%",
                                  checks.headBand * 100, p.minHeadBand * 100))
        }
        if checks.headOutline < p.minHeadOutline {
            reasons.append(String(format: "cut the head outline: %.0f%% of the skull outline above the eyes kept, under %.0f%%",
                                  checks.headOutline * 100, p.minHeadOutline * 100))
        }
        if coverage < p.minCoverage || coverage > p.maxCoverage {
            reasons.append(String(format: "mask covers %.0f%% of the crop, outside [%.0f%%, %.0f%%]", coverage * 100, p.minCoverage * 100, p.maxCoverage * 100))
        }
        return reasons.isEmpty ? nil : reasons.joined(separator: "; ")
    }
}

import CFaceNative
import Foundation
import PIDiffModel

/// An error reported by the C++ face layer, carrying its code and message.
public struct NativeError: Error, CustomStringConvertible, Sendable {
    public let code: Int32
    public let message: String
    public var description: String { message }

    package static func check(_ code: Int32, _ err: inout FNError, _ context: String) throws {
        guard code != FN_OK else { return }
        let message = withUnsafeBytes(of: &err.message) { raw in
            String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
        }
        throw NativeError(code: code, message: message.isEmpty ? context : "\(context): \(message)")
    }
    package init(code: Int32, message: String) {
        self.code = code
        self.message = message
    }
}

/// A decoded 8-bit BGR image owned by the C++ layer.
public final class NativeImage {
    package let handle: OpaquePointer

    package init(handle: OpaquePointer) { self.handle = handle }
    deinit { fn_image_free(handle) }

    public var width: Int { Int(fn_image_width(handle)) }
    public var height: Int { Int(fn_image_height(handle)) }

    /// Decodes an encoded image; EXIF orientation is applied and any depth/channel layout becomes
    /// 8-bit BGR.
    public static func decode(_ data: Data, maxPixels: Int) throws -> NativeImage {
        var err = FNError()
        var out: OpaquePointer?
        let code = data.withUnsafeBytes { raw in
            fn_image_decode(raw.bindMemory(to: UInt8.self).baseAddress, raw.count, Int64(maxPixels), &out, &err)
        }
        try NativeError.check(code, &err, "decode")
        return NativeImage(handle: out!)
    }

    /// Decodes a stored mask as single-channel grey.
    public static func decodeMask(_ data: Data) throws -> NativeImage {
        var err = FNError()
        var out: OpaquePointer?
        let code = data.withUnsafeBytes { raw in
            fn_image_decode_gray(raw.bindMemory(to: UInt8.self).baseAddress, raw.count, &out, &err)
        }
        try NativeError.check(code, &err, "decode mask")
        return NativeImage(handle: out!)
    }

    /// Wraps tightly packed BGR pixels.
    public static func fromBGR(_ pixels: [UInt8], width: Int, height: Int) throws -> NativeImage {
        var err = FNError()
        var out: OpaquePointer?
        let code = pixels.withUnsafeBufferPointer { fn_image_from_bgr($0.baseAddress, Int32(width), Int32(height), &out, &err) }
        try NativeError.check(code, &err, "from_bgr")
        return NativeImage(handle: out!)
    }

    public func bgrPixels() throws -> [UInt8] {
        var err = FNError()
        var buffer = [UInt8](repeating: 0, count: width * height * 3)
        let code = buffer.withUnsafeMutableBufferPointer { fn_image_copy_bgr(handle, $0.baseAddress, $0.count, &err) }
        try NativeError.check(code, &err, "copy pixels")
        return buffer
    }

    public func pngData() throws -> Data { try encode { fn_image_encode_png(handle, $0, $1, $2) } }
    public func jpegData(quality: Int) throws -> Data { try encode { fn_image_encode_jpeg(handle, Int32(quality), $0, $1, $2) } }

    private func encode(_ body: (UnsafeMutablePointer<UnsafeMutablePointer<UInt8>?>, UnsafeMutablePointer<Int>, UnsafeMutablePointer<FNError>) -> Int32) throws -> Data {
        var err = FNError()
        var bytes: UnsafeMutablePointer<UInt8>?
        var length = 0
        let code = body(&bytes, &length, &err)
        try NativeError.check(code, &err, "encode")
        defer { fn_buffer_free(bytes) }
        return Data(bytes: bytes!, count: length)
    }

    public func resized(width: Int, height: Int) throws -> NativeImage {
        var err = FNError()
        var out: OpaquePointer?
        try NativeError.check(fn_image_resize(handle, Int32(width), Int32(height), &out, &err), &err, "resize")
        return NativeImage(handle: out!)
    }

    public func adjusted(gain: Double, bias: Double) throws -> NativeImage {
        var err = FNError()
        var out: OpaquePointer?
        try NativeError.check(fn_image_adjust(handle, gain, bias, &out, &err), &err, "adjust")
        return NativeImage(handle: out!)
    }

    /// Variance of the Laplacian (higher is sharper).
    public var sharpness: Double { fn_image_sharpness(handle) }

    /// Warps `quad` to an `size`×`size` crop with e4e's align_face procedure.
    public func aligned(quad: AlignmentQuad, size: Int) throws -> (image: NativeImage, padded: Bool) {
        var err = FNError()
        var out: OpaquePointer?
        var padded: Int32 = 0
        let corners = quad.flattened
        let code = corners.withUnsafeBufferPointer { fn_align(handle, $0.baseAddress, Int32(size), &out, &padded, &err) }
        try NativeError.check(code, &err, "align")
        return (NativeImage(handle: out!), padded != 0)
    }
}

/// One dlib detector plus one 68-point shape predictor. Not thread-safe: one per worker.
public final class FaceModel {
    package let handle: OpaquePointer

    public init(detector: DetectorKind, mmodPath: String?, predictor68Path: String) throws {
        var err = FNError()
        var out: OpaquePointer?
        let kind = detector == .mmod ? Int32(FN_DETECTOR_MMOD) : Int32(FN_DETECTOR_HOG)
        try NativeError.check(fn_model_create(kind, mmodPath, predictor68Path, &out, &err), &err, "load face models")
        handle = out!
    }

    private init(handle: OpaquePointer) { self.handle = handle }

    /// A model for another worker, without loading the files again: its own detector, this
    /// model's shape predictor (dlib's may be used from several threads at once). This model must
    /// not detect while it is being cloned.
    public func clone() throws -> FaceModel {
        var err = FNError()
        var out: OpaquePointer?
        try NativeError.check(fn_model_clone(handle, &out, &err), &err, "copy face models")
        return FaceModel(handle: out!)
    }
    deinit { fn_model_free(handle) }

    /// Faces sorted by box area, largest first.
    public func detect(_ image: NativeImage, upsample: Int, maxSide: Int, capacity: Int = 32) throws -> (boxes: [FaceBox], total: Int) {
        var err = FNError()
        var raw = [FNFaceBox](repeating: FNFaceBox(), count: capacity)
        var count: Int32 = 0
        let code = raw.withUnsafeMutableBufferPointer {
            fn_detect(handle, image.handle, Int32(upsample), Int32(maxSide), $0.baseAddress, Int32(capacity), &count, &err)
        }
        try NativeError.check(code, &err, "detect")
        let boxes = raw.prefix(min(Int(count), capacity)).map {
            FaceBox(left: $0.left, top: $0.top, right: $0.right, bottom: $0.bottom, score: $0.score)
        }
        return (boxes, Int(count))
    }

    /// What `detectCascade` scanned.
    public struct CascadePasses: OptionSet, Sendable {
        public let rawValue: Int
        public init(rawValue: Int) { self.rawValue = rawValue }
        /// The pyramid levels no longer than the coarse side.
        public static let coarse = CascadePasses(rawValue: Int(FN_PASS_COARSE))
        /// Every level of the detection copy (one `detect` without upsampling).
        public static let allLevels = CascadePasses(rawValue: Int(FN_PASS_ALL_LEVELS))
        /// Every level of the upsampled copy (nothing found before).
        public static let upsampled = CascadePasses(rawValue: Int(FN_PASS_UPSAMPLED))
        /// The upsampled levels finer than the detection copy (faces found, not one large face).
        public static let upsampledFine = CascadePasses(rawValue: Int(FN_PASS_UPSAMPLED_FINE))
    }

    /// HOG only: the coarse-to-fine cascade of `fn_detect_cascade` (face_native.h). Faces sorted
    /// by box area, largest first.
    public func detectCascade(_ image: NativeImage, upsample: Int, maxSide: Int, coarseSide: Int, loneFaceBox: Int,
                              capacity: Int = 32) throws -> (boxes: [FaceBox], total: Int, passes: CascadePasses) {
        var err = FNError()
        var raw = [FNFaceBox](repeating: FNFaceBox(), count: capacity)
        var count: Int32 = 0
        var passes: Int32 = 0
        let code = raw.withUnsafeMutableBufferPointer {
            fn_detect_cascade(handle, image.handle, Int32(upsample), Int32(maxSide), Int32(coarseSide), Int32(loneFaceBox),
                              $0.baseAddress, Int32(capacity), &count, &passes, &err)
        }
        try NativeError.check(code, &err, "detect")
        let boxes = raw.prefix(min(Int(count), capacity)).map {
            FaceBox(left: $0.left, top: $0.top, right: $0.right, bottom: $0.bottom, score: $0.score)
        }
        return (boxes, Int(count), CascadePasses(rawValue: Int(passes)))
    }

    public func landmarks68(_ image: NativeImage, box: FaceBox) throws -> Landmarks68 {
        var err = FNError()
        var raw = FNFaceBox(left: box.left, top: box.top, right: box.right, bottom: box.bottom, score: box.score)
        var xy = [Double](repeating: 0, count: 136)
        let code = xy.withUnsafeMutableBufferPointer { fn_landmarks68(handle, image.handle, &raw, $0.baseAddress, &err) }
        try NativeError.check(code, &err, "landmarks")
        return Landmarks68(points: (0..<68).map { Point(x: xy[2 * $0], y: xy[2 * $0 + 1]) })
    }
}

// MARK: masks

extension NativeImage {
    public var channels: Int { Int(fn_image_channels(handle)) }

    /// Fraction of pixels ≥ 128 (single-channel masks).
    public var maskCoverage: Double { fn_mask_coverage(handle) }

    /// Bilinear value (0–255) of a single-channel image; nil outside it.
    public func maskValue(x: Double, y: Double) -> Double? {
        let v = fn_mask_value_at(handle, x, y)
        return v < 0 ? nil : v
    }

    public func maskResized(to size: Int) throws -> NativeImage {
        var err = FNError()
        var out: OpaquePointer?
        try NativeError.check(fn_mask_resize(handle, Int32(size), &out, &err), &err, "resize mask")
        return NativeImage(handle: out!)
    }

    /// This aligned mask as the mask of a view `scale` times wider about the same centre, at the
    /// same size (export's context view): 0 outside the aligned crop (`fn_mask_zoom_out`).
    public func maskZoomedOut(scale: Double) throws -> NativeImage {
        var err = FNError()
        var out: OpaquePointer?
        try NativeError.check(fn_mask_zoom_out(handle, scale, &out, &err), &err, "zoom out mask")
        return NativeImage(handle: out!)
    }

    /// GrabCut background removal seeded from landmarks given in this crop's pixels, with the
    /// `mask:` parameters (`featherSigma` in this crop's pixels).
    public func grabCutMask(landmarks: [Point], parameters p: MaskParameters, featherSigma: Double) throws -> NativeImage {
        var err = FNError()
        var out: OpaquePointer?
        var params = FNMaskParams(iterations: Int32(p.iterations), border_fraction: p.borderFraction, hair_extent: p.hairExtent,
                                  head_width: p.headWidth, include_neck: p.includeNeck ? 1 : 0,
                                  feather_sigma: featherSigma, seed: 0x5eed, skull_core: p.skullCore)
        let xy = landmarks.flatMap { [$0.x, $0.y] }
        let code = xy.withUnsafeBufferPointer { fn_mask_grabcut(handle, $0.baseAddress, &params, &out, &err) }
        try NativeError.check(code, &err, "grabcut mask")
        return NativeImage(handle: out!)
    }

    /// How much of the head a mask kept, from the 68 landmarks in its pixels (any mask method):
    /// see `HeadChecks`. `landmarks` must hold 68 points; `coreScale` is the skull core GrabCut's
    /// seed forces to foreground (`mask.skull_core`), left out of `headRing`.
    public func headChecks(landmarks: [Point], coreScale: Double = MaskParameters().skullCore) throws -> HeadChecks {
        guard landmarks.count == 68 else { throw NativeError(code: Int32(FN_EARG), message: "head checks need 68 landmarks") }
        var out = FNHeadChecks()
        var err = FNError()
        let xy = landmarks.flatMap { [$0.x, $0.y] }
        let code = xy.withUnsafeBufferPointer { fn_mask_head_checks(handle, $0.baseAddress, HeadChecks.bandSkullScale, HeadChecks.outlineSkullScale,
                                                                          coreScale, &out, &err) }
        try NativeError.check(code, &err, "head checks")
        return HeadChecks(headBand: out.head_band, headOutline: out.head_outline, outlinePoints: Int(out.outline_points),
                          farBackground: out.far_background, headRing: out.head_ring, headRingPixels: Int(out.head_ring_pixels))
    }

    /// This crop over white through `mask` (blurred 5×5): the e4e encoder's input.
    public func compositedOnWhite(mask: NativeImage) throws -> NativeImage {
        var err = FNError()
        var out: OpaquePointer?
        try NativeError.check(fn_composite_on_white(handle, mask.handle, &out, &err), &err, "composite on white")
        return NativeImage(handle: out!)
    }
}

/// What a mask kept of the head, measured in the aligned crop from its 68 landmarks (the face's
/// own frame: up from the chin through the eyes; E = eye-to-chin length, J = jaw half-width from
/// points 0 and 16; the skull is the ellipse centred at eye level, moved across to the jaw
/// midpoint, with semi-axes J and E, scaled).
public struct HeadChecks: Codable, Equatable, Sendable {
    /// The head band's skull: 0.85 of the ellipse (J, E). On the 41 real faces of
    /// Docs/benchmarks.md it lies inside the head, bald and turned heads included.
    public static let bandSkullScale = 0.85
    /// The outline's skull: 0.75 of (J, E). Heads vary more at the crown than on average over the
    /// band: at 0.85 the outline of a correct mask on a small-headed photo (obama3.jpg) falls outside.
    public static let outlineSkullScale = 0.75
    /// Foreground share (pixels ≥ 128) of the head band above the brows: the part of the skull
    /// above the brow landmarks 17–26.
    public var headBand: Double
    /// Foreground share of 31 points on the skull outline above the eye line (15°…165°); points
    /// outside the crop are left out, and the share is 1 when fewer than 8 remain.
    public var headOutline: Double
    public var outlinePoints: Int
    /// Foreground share of the region above the mouth corners and outside 1.6 × the skull ellipse
    /// (J, E): almost always background, so a high share means the mask swallowed background.
    public var farBackground: Double
    /// Foreground share of the head band outside the skull core that GrabCut's seed forces to
    /// foreground (`mask.skull_core` of the skull) and outside the landmark hull: the hair and
    /// scalp the mask had to keep by itself. `headBand` includes the forced core (about two
    /// thirds of the band), so this is the figure that can fall to 0.
    public var headRing: Double
    public var headRingPixels: Int

    enum CodingKeys: String, CodingKey {
        case headBand = "head_band", headOutline = "head_outline", outlinePoints = "outline_points", farBackground = "far_background"
        case headRing = "head_ring", headRingPixels = "head_ring_pixels"
    }
}

/// A face-parsing network (ONNX through OpenCV DNN). One per worker.
public final class FaceParser {
    package let handle: OpaquePointer

    public init(onnxPath: String, inputSize: Int, mean: [Float], std: [Float]) throws {
        var err = FNError()
        var out: OpaquePointer?
        let code = mean.withUnsafeBufferPointer { m in std.withUnsafeBufferPointer { s in
            fn_parser_create(onnxPath, Int32(inputSize), m.baseAddress, s.baseAddress, &out, &err)
        } }
        try NativeError.check(code, &err, "load face-parsing model \(onnxPath)")
        handle = out!
    }
    deinit { fn_parser_free(handle) }

    /// The network's flattened float output for `crop`.
    public func forward(_ crop: NativeImage, capacity: Int = 4096) throws -> [Float] {
        var err = FNError()
        var values = [Float](repeating: 0, count: capacity)
        var count: Int32 = 0
        let code = values.withUnsafeMutableBufferPointer { fn_onnx_forward(handle, crop.handle, $0.baseAddress, Int32(capacity), &count, &err) }
        try NativeError.check(code, &err, "onnx forward")
        return Array(values.prefix(min(Int(count), capacity)))
    }

    public func mask(_ crop: NativeImage, keep: [Int], featherSigma: Double) throws -> NativeImage {
        var err = FNError()
        var out: OpaquePointer?
        let classes = keep.map { Int32($0) }
        let code = classes.withUnsafeBufferPointer { fn_mask_parse(handle, crop.handle, $0.baseAddress, Int32(classes.count), featherSigma, &out, &err) }
        try NativeError.check(code, &err, "face parsing")
        return NativeImage(handle: out!)
    }
}

extension NativeImage {
    /// A labelled heatmap (rows × cols), darker for larger values.
    public static func heatmap(values: [[Double]], rowLabels: [String], colLabels: [String], cellText: [[String]], title: String) throws -> NativeImage {
        var err = FNError()
        var out: OpaquePointer?
        let flat = values.flatMap { $0 }
        let rows = rowLabels.map { strdup($0) }, cols = colLabels.map { strdup($0) }, texts = cellText.flatMap { $0 }.map { strdup($0) }
        defer { (rows + cols + texts).forEach { free($0) } }
        let code = flat.withUnsafeBufferPointer { v in
            rows.map { UnsafePointer($0) }.withUnsafeBufferPointer { r in
                cols.map { UnsafePointer($0) }.withUnsafeBufferPointer { c in
                    texts.map { UnsafePointer($0) }.withUnsafeBufferPointer { t in
                        fn_draw_heatmap(v.baseAddress, Int32(rowLabels.count), Int32(colLabels.count), r.baseAddress, c.baseAddress,
                                        t.baseAddress, title, &out, &err)
                    }
                }
            }
        }
        try NativeError.check(code, &err, "heatmap")
        return NativeImage(handle: out!)
    }
}

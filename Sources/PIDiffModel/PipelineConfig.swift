import Foundation
import Yams

/// How to choose the face a photo contributes when it shows several.
public enum FacePolicy: String, Codable, Sendable {
    /// The face with the largest detector box (default: identity photos centre their subject).
    case largest
    /// The face whose box centre is nearest the image centre.
    case central
    /// The face with the highest detector confidence.
    case bestScore = "best_score"
}

/// Parameters of the ingest stages. Everything here except `workers` and `vanished` changes what
/// ingest produces, so it is part of the parameters fingerprint.
public struct IngestParameters: Codable, Equatable, Sendable {
    public var detector: DetectorKind = .hog
    /// Image pyramid upsampling before detection (1 finds faces down to ~40 px).
    public var upsample: Int = 1
    /// Detection runs on a copy shrunk to this longer side (0 = full size); landmarks do not.
    public var detectMaxSide: Int = 1024
    /// Try without upsampling first; upsample only when that finds no face (see DetectStage).
    public var detectCascade: Bool = true
    public var facePolicy: FacePolicy = .largest
    /// At most this many faces per photo are recorded (with landmarks).
    public var maxFacesRecorded: Int = 16
    /// Refuse images above this many pixels, judged from the header, before decoding.
    public var maxPixels: Int = 100_000_000
    /// Refuse images whose shorter side is below this.
    public var minSide: Int = 64
    /// Sizes of the aligned crops. 512 feeds Stable Diffusion, 256 feeds e4e.
    public var cropSizes: [Int] = [512, 256]
    /// Quality gates: a face failing one is kept in the catalog with the reason.
    public var minFaceSize: Double = 100
    public var maxOutsideFraction: Double = 0.25
    public var maxAbsRollDegrees: Double = 45
    public var maxAbsYaw: Double = 0.7
    public var minSharpness: Double = 0
    /// Worker count (0 = one per core). Not fingerprinted.
    public var workers: Int = 0
    /// What happens to catalogued photos a completed scan no longer finds in their source:
    /// `mark` (default) marks them vanished, out of the usable set; `keep` leaves them usable, for
    /// an inbox that is emptied after each run. Not fingerprinted.
    public var vanished: VanishedPolicy = .mark
    public enum VanishedPolicy: String, Codable, Sendable { case mark, keep }

    public init() {}

    package enum CodingKeys: String, CodingKey, CaseIterable {
        case detector, upsample, detectMaxSide = "detect_max_side", detectCascade = "detect_cascade", facePolicy = "face_policy"
        case maxFacesRecorded = "max_faces_recorded", maxPixels = "max_pixels", minSide = "min_side"
        case cropSizes = "crop_sizes", minFaceSize = "min_face_size", maxOutsideFraction = "max_outside_fraction"
        case maxAbsRollDegrees = "max_abs_roll_degrees", maxAbsYaw = "max_abs_yaw", minSharpness = "min_sharpness"
        case workers, vanished
    }

    public init(from decoder: Decoder) throws {
        try refuseUnknownKeys(decoder, CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let d = IngestParameters()
        detector = try c.decodeIfPresent(DetectorKind.self, forKey: .detector) ?? d.detector
        upsample = try c.decodeIfPresent(Int.self, forKey: .upsample) ?? d.upsample
        detectMaxSide = try c.decodeIfPresent(Int.self, forKey: .detectMaxSide) ?? d.detectMaxSide
        detectCascade = try c.decodeIfPresent(Bool.self, forKey: .detectCascade) ?? d.detectCascade
        facePolicy = try c.decodeIfPresent(FacePolicy.self, forKey: .facePolicy) ?? d.facePolicy
        maxFacesRecorded = try c.decodeIfPresent(Int.self, forKey: .maxFacesRecorded) ?? d.maxFacesRecorded
        maxPixels = try c.decodeIfPresent(Int.self, forKey: .maxPixels) ?? d.maxPixels
        minSide = try c.decodeIfPresent(Int.self, forKey: .minSide) ?? d.minSide
        cropSizes = try c.decodeIfPresent([Int].self, forKey: .cropSizes) ?? d.cropSizes
        minFaceSize = try c.decodeIfPresent(Double.self, forKey: .minFaceSize) ?? d.minFaceSize
        maxOutsideFraction = try c.decodeIfPresent(Double.self, forKey: .maxOutsideFraction) ?? d.maxOutsideFraction
        maxAbsRollDegrees = try c.decodeIfPresent(Double.self, forKey: .maxAbsRollDegrees) ?? d.maxAbsRollDegrees
        maxAbsYaw = try c.decodeIfPresent(Double.self, forKey: .maxAbsYaw) ?? d.maxAbsYaw
        minSharpness = try c.decodeIfPresent(Double.self, forKey: .minSharpness) ?? d.minSharpness
        workers = try c.decodeIfPresent(Int.self, forKey: .workers) ?? d.workers
        vanished = try c.decodeIfPresent(VanishedPolicy.self, forKey: .vanished) ?? d.vanished
        try validate()
    }

    /// The parameters an ingest run recorded (`runs.parameters`), read back for `verify --repair`.
    /// Unlike a pipeline file this is lenient: keys of older versions (`channel_capacity`) are
    /// dropped, and the settings that never changed results (`workers`, `vanished`) are not read.
    public static func recorded(_ json: String) throws -> IngestParameters {
        guard let stored = try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any] else {
            throw PipelineError.invalid("recorded ingest parameters", "not a JSON object")
        }
        let known = Set(CodingKeys.allCases.map(\.stringValue)).subtracting(["workers", "vanished"])
        let kept = stored.filter { known.contains($0.key) }
        return try JSONDecoder().decode(IngestParameters.self, from: JSONSerialization.data(withJSONObject: kept))
    }

    /// The most workers ingest starts: each holds its own detector and landmark model.
    public static let maxWorkers = 256

    /// Refuses values that cannot mean anything, naming the parameter (a `max_pixels: 0` would
    /// refuse every photo as a decompression bomb, and change the catalog's fingerprint doing so).
    public func validate() throws {
        let checks: [(String, Bool, String)] = [
            ("upsample", (0...4).contains(upsample), "0…4"), ("detect_max_side", detectMaxSide >= 0, "0 (full size) or more"),
            ("max_faces_recorded", maxFacesRecorded >= 1, "at least 1"), ("max_pixels", maxPixels >= 1, "at least 1"),
            ("min_side", minSide >= 1, "at least 1"),
            ("crop_sizes", !cropSizes.isEmpty && cropSizes.allSatisfy { (16...4096).contains($0) }, "1 or more sizes of 16…4096"),
            ("min_face_size", minFaceSize >= 0 && minFaceSize.isFinite, "0 or more"),
            ("max_outside_fraction", (0...1).contains(maxOutsideFraction), "0…1"),
            ("max_abs_roll_degrees", (0...180).contains(maxAbsRollDegrees), "0…180"),
            ("max_abs_yaw", maxAbsYaw >= 0 && maxAbsYaw.isFinite, "0 or more"),
            ("min_sharpness", minSharpness >= 0 && minSharpness.isFinite, "0 or more"),
            ("workers", (0...Self.maxWorkers).contains(workers), "0 (one per core) to \(Self.maxWorkers)"),
        ]
        try refuseOutOfRange("ingest", checks)
    }

    /// The parameters that determine ingest output, as canonical JSON.
    package var fingerprintPayload: [String: String] {
        [
            "detector": detector.rawValue, "upsample": "\(upsample)", "detect_max_side": "\(detectMaxSide)",
            "detect_cascade": "\(detectCascade)",
            "face_policy": facePolicy.rawValue, "max_faces_recorded": "\(maxFacesRecorded)",
            "max_pixels": "\(maxPixels)", "min_side": "\(minSide)",
            "crop_sizes": cropSizes.map(String.init).joined(separator: ","),
            "min_face_size": "\(minFaceSize)", "max_outside_fraction": "\(maxOutsideFraction)",
            "max_abs_roll_degrees": "\(maxAbsRollDegrees)", "max_abs_yaw": "\(maxAbsYaw)",
            "min_sharpness": "\(minSharpness)",
            // Bump when the alignment or quality code changes what it produces.
            "algorithm_version": "ingest-1",
        ]
    }
}

/// CrossFaceID JSONL options.
public struct CrossFaceIDParameters: Codable, Equatable, Sendable {
    /// JSON field holding the identity; nil takes the image's parent folder name.
    public var identityField: String?
    public init() {}
    package enum CodingKeys: String, CodingKey, CaseIterable { case identityField = "identity_field" }
    public init(from decoder: Decoder) throws {
        try refuseUnknownKeys(decoder, CodingKeys.self)
        identityField = try decoder.container(keyedBy: CodingKeys.self).decodeIfPresent(String.self, forKey: .identityField)
    }
}

/// Parameters of the mask stage (background removal before e4e).
public struct MaskParameters: Codable, Equatable, Sendable {
    public enum Method: String, Codable, Sendable { case grabcut, onnx }
    public var method: Method = .grabcut
    /// GrabCut runs on the 256 crop (fast); the 512 mask is its upscaled, re-feathered copy.
    public var workSize: Int = 256
    public var iterations: Int = 5
    public var borderFraction: Double = 0.03
    /// Hair reaches this many eye-to-chin lengths above the eyes.
    public var hairExtent: Double = 1.35
    /// Head half-width in jaw half-widths (ears and hair at the sides).
    public var headWidth: Double = 1.15
    public var includeNeck: Bool = false
    public var featherSigma: Double = 1.5
    /// A mask covering less or more of the 256 crop than this is flagged as failed.
    public var minCoverage: Double = 0.15
    public var maxCoverage: Double = 0.80
    /// Face-parsing ONNX model (method: onnx): path, input size, normalisation, kept classes.
    public var onnxPath: String?
    public var onnxInputSize: Int = 512
    public var onnxMean: [Float] = [0.485, 0.456, 0.406]
    public var onnxStd: [Float] = [0.229, 0.224, 0.225]
    /// BiSeNet face-parsing labels: 1 skin, 2–3 brows, 4–5 eyes, 6 glasses, 7–9 ears, 10 nose,
    /// 11 mouth, 12–13 lips, 17 hair (14 neck, 16 cloth with include_neck).
    public var onnxKeepClasses: [Int] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 17]

    public init() {}

    package enum CodingKeys: String, CodingKey, CaseIterable {
        case method, workSize = "work_size", iterations, borderFraction = "border_fraction", hairExtent = "hair_extent"
        case headWidth = "head_width", includeNeck = "include_neck", featherSigma = "feather_sigma"
        case minCoverage = "min_coverage", maxCoverage = "max_coverage", onnxPath = "onnx_path"
        case onnxInputSize = "onnx_input_size", onnxMean = "onnx_mean", onnxStd = "onnx_std", onnxKeepClasses = "onnx_keep_classes"
    }

    public init(from decoder: Decoder) throws {
        try refuseUnknownKeys(decoder, CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let d = MaskParameters()
        method = try c.decodeIfPresent(Method.self, forKey: .method) ?? d.method
        workSize = try c.decodeIfPresent(Int.self, forKey: .workSize) ?? d.workSize
        iterations = try c.decodeIfPresent(Int.self, forKey: .iterations) ?? d.iterations
        borderFraction = try c.decodeIfPresent(Double.self, forKey: .borderFraction) ?? d.borderFraction
        hairExtent = try c.decodeIfPresent(Double.self, forKey: .hairExtent) ?? d.hairExtent
        headWidth = try c.decodeIfPresent(Double.self, forKey: .headWidth) ?? d.headWidth
        includeNeck = try c.decodeIfPresent(Bool.self, forKey: .includeNeck) ?? d.includeNeck
        featherSigma = try c.decodeIfPresent(Double.self, forKey: .featherSigma) ?? d.featherSigma
        minCoverage = try c.decodeIfPresent(Double.self, forKey: .minCoverage) ?? d.minCoverage
        maxCoverage = try c.decodeIfPresent(Double.self, forKey: .maxCoverage) ?? d.maxCoverage
        onnxPath = try c.decodeIfPresent(String.self, forKey: .onnxPath)
        onnxInputSize = try c.decodeIfPresent(Int.self, forKey: .onnxInputSize) ?? d.onnxInputSize
        onnxMean = try c.decodeIfPresent([Float].self, forKey: .onnxMean) ?? d.onnxMean
        onnxStd = try c.decodeIfPresent([Float].self, forKey: .onnxStd) ?? d.onnxStd
        onnxKeepClasses = try c.decodeIfPresent([Int].self, forKey: .onnxKeepClasses) ?? d.onnxKeepClasses
        let checks: [(String, Bool, String)] = [
            ("work_size", (32...1024).contains(workSize), "32…1024"), ("iterations", (1...100).contains(iterations), "1…100"),
            ("border_fraction", (0..<0.5).contains(borderFraction), "0 to under 0.5"),
            ("hair_extent", hairExtent > 0 && hairExtent.isFinite, "positive"), ("head_width", headWidth > 0 && headWidth.isFinite, "positive"),
            ("feather_sigma", featherSigma >= 0 && featherSigma.isFinite, "0 or more"),
            ("min_coverage", (0...1).contains(minCoverage) && minCoverage <= maxCoverage, "0…1 and at most max_coverage"),
            ("max_coverage", (0...1).contains(maxCoverage), "0…1"),
            ("onnx_input_size", (32...2048).contains(onnxInputSize), "32…2048"),
        ]
        try refuseOutOfRange("mask", checks)
    }

    /// Everything that changes the masks (the ONNX model enters through its SHA-256).
    package var fingerprintPayload: [String: String] {
        var p: [String: String] = [
            "method": method.rawValue, "work_size": "\(workSize)", "iterations": "\(iterations)",
            "border_fraction": "\(borderFraction)", "hair_extent": "\(hairExtent)", "head_width": "\(headWidth)",
            "include_neck": "\(includeNeck)", "feather_sigma": "\(featherSigma)",
            "min_coverage": "\(minCoverage)", "max_coverage": "\(maxCoverage)", "algorithm_version": "mask-1",
        ]
        if method == .onnx {
            p["onnx_input_size"] = "\(onnxInputSize)"
            p["onnx_mean"] = onnxMean.map { "\($0)" }.joined(separator: ",")
            p["onnx_std"] = onnxStd.map { "\($0)" }.joined(separator: ",")
            p["onnx_keep_classes"] = onnxKeepClasses.map(String.init).joined(separator: ",")
        }
        return p
    }
}

/// A pipeline file (YAML, under Pipelines/). Every section and key is checked: an unknown one (a
/// misspelling such as `masks:` for `mask:`) is an error naming it, never a silent default.
public struct PipelineConfig: Codable, Equatable, Sendable {
    public var ingest = IngestParameters()
    public var crossfaceid = CrossFaceIDParameters()
    public var mask = MaskParameters()
    public var labels = LabelMapping()
    public var curate = CurationParameters()
    /// `pidiff-data run`'s stage list (only pipeline files meant for `run` have it).
    public var run: RunSpec?
    public init() {}

    package enum CodingKeys: String, CodingKey, CaseIterable { case ingest, crossfaceid, mask, labels, curate, run }

    public init(from decoder: Decoder) throws {
        try refuseUnknownKeys(decoder, CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        ingest = try c.decodeIfPresent(IngestParameters.self, forKey: .ingest) ?? IngestParameters()
        crossfaceid = try c.decodeIfPresent(CrossFaceIDParameters.self, forKey: .crossfaceid) ?? CrossFaceIDParameters()
        mask = try c.decodeIfPresent(MaskParameters.self, forKey: .mask) ?? MaskParameters()
        labels = try c.decodeIfPresent(LabelMapping.self, forKey: .labels) ?? LabelMapping()
        run = try c.decodeIfPresent(RunSpec.self, forKey: .run)
        curate = try c.decodeIfPresent(CurationParameters.self, forKey: .curate) ?? CurationParameters()
    }

    public static func load(_ url: URL?) throws -> PipelineConfig {
        guard let url else { return PipelineConfig() }
        let text: String
        do { text = try String(contentsOf: url, encoding: .utf8) } catch {
            throw PipelineError.unreadable(url.path, error.localizedDescription)
        }
        do { return try YAMLDecoder().decode(PipelineConfig.self, from: text) } catch {
            throw PipelineError.invalid(url.path, "\(error)")
        }
    }
}

public enum PipelineError: Error, CustomStringConvertible {
    case unreadable(String, String)
    case invalid(String, String)
    /// Keys a section does not have: where (the section's path, empty at the top), them, the known ones.
    case unknownKeys(String, [String], [String])
    public var description: String {
        switch self {
        case .unreadable(let p, let r): return "pipeline file \(p): cannot read it (\(r))"
        case .invalid(let p, let r): return "pipeline file \(p): invalid (\(r))"
        case .unknownKeys(let place, let unknown, let known):
            return "unknown key\(unknown.count == 1 ? "" : "s") \(unknown.joined(separator: ", ")) "
                + (place.isEmpty ? "at the top level" : "in \(place)") + "; known: \(known.joined(separator: ", "))"
        }
    }
}

/// Any key, to list every key a mapping holds (a container keyed by a type's own CodingKeys drops
/// the ones it does not know).
private struct AnyKey: CodingKey {
    let stringValue: String
    var intValue: Int? { nil }
    init(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { nil }
}

/// Throws `PipelineError.invalid` naming `section.key` for the first check that fails; a check is
/// (key, whether its value is acceptable, what is acceptable).
func refuseOutOfRange(_ section: String, _ checks: [(String, Bool, String)]) throws {
    if let (name, _, expected) = checks.first(where: { !$0.1 }) {
        throw PipelineError.invalid("\(section).\(name)", "must be \(expected)")
    }
}

/// Throws `PipelineError.unknownKeys` when the mapping being decoded holds a key `keys` lacks.
func refuseUnknownKeys<Keys: CodingKey & CaseIterable>(_ decoder: Decoder, _ keys: Keys.Type) throws {
    let known = Keys.allCases.map(\.stringValue)
    let unknown = try decoder.container(keyedBy: AnyKey.self).allKeys.map(\.stringValue).filter { !known.contains($0) }
    guard unknown.isEmpty else {
        let place = decoder.codingPath.reduce(into: "") { path, key in
            if let index = key.intValue { path += "[\(index)]" } else { path += (path.isEmpty ? "" : ".") + key.stringValue }
        }
        throw PipelineError.unknownKeys(place, unknown.sorted(), known)
    }
}

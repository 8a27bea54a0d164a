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
    /// Scan the detector's pyramid coarse to fine only as far as the photo needs (DetectStage).
    public var detectCascade: Bool = true
    /// The cascade's first pass: the pyramid levels whose longer side is at most this (HOG).
    public var detectCoarseSide: Int = 400
    /// A lone face this wide (detection-copy pixels) ends the cascade before the upsampled levels:
    /// 1.5× the smallest box the levels without upsampling find (~73 px).
    public var detectLoneFaceBox: Int = 110
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

    public init(from decoder: Decoder) throws { self = try Self.decoded(from: decoder) }
    public func encode(to encoder: Encoder) throws { try encodeFields(to: encoder) }

    /// The most workers ingest starts: each holds its own detector and landmark model.
    public static let maxWorkers = 256

    /// Refuses values that cannot mean anything, naming the parameter (a `max_pixels: 0` would
    /// refuse every photo as a decompression bomb, and change the catalog's fingerprint doing so).
    public func validate() throws {
        let checks: [(String, Bool, String)] = [
            ("upsample", (0...4).contains(upsample), "0…4"), ("detect_max_side", detectMaxSide >= 0, "0 (full size) or more"),
            ("detect_coarse_side", detectCoarseSide >= 0, "0 (no coarse pass) or more"),
            ("detect_lone_face_box", detectLoneFaceBox >= 0, "0 or more"),
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
}

extension IngestParameters: ParameterSection {
    public static let section = "ingest"
    // Bump when the alignment or quality code changes what it produces. ingest-2: crops are
    // written by another PNG encoder (same pixels, other bytes, so other content addresses), and
    // the default HOG cascade records the small faces of group photos (Docs/benchmarks.md).
    public static let algorithmVersion = "ingest-2"
    public static let fields: [ParameterField<IngestParameters>] = [
        .field(\.detector, "detector", "hog (fast, frontal) | mmod (dlib CNN, slower, more poses)"),
        .field(\.upsample, "upsample", "detector pyramid upsampling: 1 finds faces down to ~40 px"),
        .field(\.detectMaxSide, "detect_max_side", "detect on a copy shrunk to this longer side; landmarks use full size"),
        .field(\.detectCascade, "detect_cascade", "coarse pyramid levels first; upsampled levels only where the photo is not one large face"),
        .field(\.detectCoarseSide, "detect_coarse_side", "HOG cascade: first scan the levels no longer than this (0 = all levels at once)",
               fingerprint: .when { $0.detectCascade && $0.detector == .hog }),
        .field(\.detectLoneFaceBox, "detect_lone_face_box",
               "HOG cascade: a lone face this wide on the detection copy skips the upsampled levels",
               fingerprint: .when { $0.detectCascade && $0.detector == .hog }),
        .field(\.facePolicy, "face_policy", "largest | central | best_score: which face a multi-face photo contributes"),
        .field(\.maxFacesRecorded, "max_faces_recorded", "every detected face up to this many is recorded with landmarks"),
        .field(\.maxPixels, "max_pixels", "refuse larger images from the header (decompression bombs)"),
        .field(\.minSide, "min_side", "refuse smaller images"),
        .field(\.cropSizes, "crop_sizes", "512 for Stable Diffusion, 256 for e4e"),
        .field(\.minFaceSize, "min_face_size", "quality gate: quad side in source pixels"),
        .field(\.maxOutsideFraction, "max_outside_fraction", "quality gate: share of the quad outside the photo (padded)"),
        .field(\.maxAbsRollDegrees, "max_abs_roll_degrees", "quality gate: in-plane rotation of the eye line"),
        .field(\.maxAbsYaw, "max_abs_yaw", "quality gate: yaw proxy in [-1, 1], 0 = frontal"),
        .field(\.minSharpness, "min_sharpness", "variance of Laplacian on the 256 crop; 0 disables the gate"),
        .field(\.workers, "workers", "0 = one per core (not fingerprinted)", fingerprint: .never),
        .field(\.vanished, "vanished", "mark | keep: photos a completed scan no longer finds (Docs/cron.md; not fingerprinted)",
               fingerprint: .never),
    ]
}

extension DetectorKind: ParameterValue {}
extension FacePolicy: ParameterValue {}
extension IngestParameters.VanishedPolicy: ParameterValue {}
extension MaskParameters.Method: ParameterValue {}

/// CrossFaceID JSONL options.
public struct CrossFaceIDParameters: Codable, Equatable, Sendable {
    /// JSON field holding the identity; nil takes the image's parent folder name.
    public var identityField: String?
    public init() {}
    public init(from decoder: Decoder) throws { self = try Self.decoded(from: decoder) }
    public func encode(to encoder: Encoder) throws { try encodeFields(to: encoder) }
}

extension CrossFaceIDParameters: ParameterSection {
    public static let section = "crossfaceid"
    public static let algorithmVersion = "crossfaceid-1"
    public static let fields: [ParameterField<CrossFaceIDParameters>] = [
        .field(\.identityField, "identity_field", "JSON field naming the identity; without it, the image's parent folder", fingerprint: .never),
    ]
    public func validate() throws {}
}

/// Hugging Face dataset layouts as ingest sources (Docs/sources.md): an `imagefolder` tree with
/// `metadata.csv`/`metadata.jsonl`, or Parquet files with an `Image` column. Column names only
/// decide which photos and labels the scan finds, not what ingest makes of a photo, so none is
/// fingerprinted (as `crossfaceid.identity_field`).
public struct HuggingFaceParameters: Codable, Equatable, Sendable {
    /// Column holding the identity; a source without it is refused, naming the columns it has.
    public var identityColumn = "identity"
    /// Parquet: the image column (HF `Image` feature, a struct `{bytes, path}`, or plain binary).
    public var imageColumn = "image"
    /// Columns mapped to the photo's caption and raw labels; a column the source lacks leaves the
    /// value unknown. ClassLabel integers in Parquet are turned into their names.
    public var captionColumn = "caption"
    public var raceColumn = "race"
    public var ageColumn = "age"
    public var genderColumn = "gender"
    /// Parquet: rows per batch read within a row group (memory holds about one batch of images).
    public var parquetBatchRows = 16

    public init() {}
    public init(from decoder: Decoder) throws { self = try Self.decoded(from: decoder) }
    public func encode(to encoder: Encoder) throws { try encodeFields(to: encoder) }

    public func validate() throws {
        try refuseOutOfRange("huggingface", [
            ("identity_column", !identityColumn.isEmpty, "a column name"),
            ("image_column", !imageColumn.isEmpty, "a column name"),
            ("parquet_batch_rows", (1...100_000).contains(parquetBatchRows), "1…100000"),
        ])
    }

    /// The label columns by the label they feed (`caption`, `race`, `age`, `gender`).
    public var labelColumns: [(label: String, column: String)] {
        [("caption", captionColumn), ("race", raceColumn), ("age", ageColumn), ("gender", genderColumn)].filter { !$0.1.isEmpty }
    }
}

extension HuggingFaceParameters: ParameterSection {
    public static let section = "huggingface"
    public static let algorithmVersion = "huggingface-1"
    public static let fields: [ParameterField<HuggingFaceParameters>] = [
        .field(\.identityColumn, "identity_column", "column naming the identity (HF ClassLabel columns are often `label`)", fingerprint: .never),
        .field(\.imageColumn, "image_column", "Parquet: the Image column ({bytes, path}) or a binary column", fingerprint: .never),
        .field(\.captionColumn, "caption_column", "columns mapped to caption and raw labels; one the source lacks leaves it unknown", fingerprint: .never),
        .field(\.raceColumn, "race_column", fingerprint: .never),
        .field(\.ageColumn, "age_column", fingerprint: .never),
        .field(\.genderColumn, "gender_column", fingerprint: .never),
        .field(\.parquetBatchRows, "parquet_batch_rows", "Parquet rows read at a time within a row group (memory)", fingerprint: .never),
    ]
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
    public var headWidth: Double = 1.35
    /// Sure foreground above the brows: the skull dome (jaw half-width across, eye-to-chin up)
    /// scaled by this. It is head whatever the hair, and teaches GrabCut the hair colour.
    public var skullCore: Double = 0.7
    public var includeNeck: Bool = false
    public var featherSigma: Double = 1.5
    /// A mask covering less or more of the 256 crop than this is flagged as failed.
    public var minCoverage: Double = 0.15
    public var maxCoverage: Double = 0.80
    /// A mask keeping less of the head band above the brows, or of the skull outline above the
    /// eyes, than this is flagged as failed (any method; `HeadChecks` says how both are measured).
    public var minHeadBand: Double = 0.85
    public var minHeadOutline: Double = 0.70
    /// Face-parsing ONNX model (method: onnx): path, input size, normalisation, kept classes.
    public var onnxPath: String?
    public var onnxInputSize: Int = 512
    public var onnxMean: [Float] = [0.485, 0.456, 0.406]
    public var onnxStd: [Float] = [0.229, 0.224, 0.225]
    /// BiSeNet face-parsing labels: 1 skin, 2–3 brows, 4–5 eyes, 6 glasses, 7–9 ears, 10 nose,
    /// 11 mouth, 12–13 lips, 17 hair (14 neck, 16 cloth with include_neck).
    public var onnxKeepClasses: [Int] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 17]

    public init() {}

    public init(from decoder: Decoder) throws { self = try Self.decoded(from: decoder) }
    public func encode(to encoder: Encoder) throws { try encodeFields(to: encoder) }

    public func validate() throws {
        let checks: [(String, Bool, String)] = [
            ("work_size", (32...1024).contains(workSize), "32…1024"), ("iterations", (1...100).contains(iterations), "1…100"),
            ("border_fraction", (0..<0.5).contains(borderFraction), "0 to under 0.5"),
            ("hair_extent", hairExtent > 0 && hairExtent.isFinite, "positive"), ("head_width", headWidth > 0 && headWidth.isFinite, "positive"),
            ("skull_core", (0...1).contains(skullCore), "0…1"),
            ("feather_sigma", featherSigma >= 0 && featherSigma.isFinite, "0 or more"),
            ("min_coverage", (0...1).contains(minCoverage) && minCoverage <= maxCoverage, "0…1 and at most max_coverage"),
            ("max_coverage", (0...1).contains(maxCoverage), "0…1"),
            ("min_head_band", (0...1).contains(minHeadBand), "0…1"), ("min_head_outline", (0...1).contains(minHeadOutline), "0…1"),
            ("onnx_input_size", (32...2048).contains(onnxInputSize), "32…2048"),
        ]
        try refuseOutOfRange("mask", checks)
    }
}

extension MaskParameters: ParameterSection {
    public static let section = "mask"
    // mask-2: hair and scalp seeded from the head geometry, top border no longer background,
    // head band and outline checks.
    public static let algorithmVersion = "mask-2"
    private static let onnxOnly = Fingerprinting<MaskParameters>.when { $0.method == .onnx }
    public static let fields: [ParameterField<MaskParameters>] = [
        .field(\.method, "method", "grabcut (no model file) | onnx (face-parsing network, BiSeNet-style 19 classes)"),
        .field(\.workSize, "work_size", "GrabCut runs on the 256 crop; the 512 mask is its upscaled, re-feathered copy"),
        .field(\.iterations, "iterations", "GrabCut iterations"),
        .field(\.borderFraction, "border_fraction", "side and bottom border band outside the head marked sure background (never the top: hair reaches it)"),
        .field(\.hairExtent, "hair_extent", "probable-foreground head reaches this many eye-to-chin lengths above the eyes"),
        .field(\.headWidth, "head_width", "probable-foreground head half-width in jaw half-widths (ears, hair at the sides)"),
        .field(\.skullCore, "skull_core", "sure foreground above the brows: the skull (jaw half-width × eye-to-chin) scaled by this"),
        .field(\.includeNeck, "include_neck", "true keeps neck and collar as probable foreground"),
        .field(\.featherSigma, "feather_sigma", "edge feather, pixels at 256"),
        .field(\.minCoverage, "min_coverage", "masks covering less/more of the 256 crop are flagged"),
        .field(\.maxCoverage, "max_coverage"),
        .field(\.minHeadBand, "min_head_band", "masks keeping less of the head band above the brows are flagged"),
        .field(\.minHeadOutline, "min_head_outline", "masks keeping less of the skull outline above the eyes are flagged"),
        .field(\.onnxPath, "onnx_path", "face-parsing model (method: onnx); it enters the fingerprint by its SHA-256", fingerprint: .never),
        .field(\.onnxInputSize, "onnx_input_size", fingerprint: onnxOnly, commentedOut: true),
        .field(\.onnxMean, "onnx_mean", fingerprint: onnxOnly, commentedOut: true),
        .field(\.onnxStd, "onnx_std", fingerprint: onnxOnly, commentedOut: true),
        .field(\.onnxKeepClasses, "onnx_keep_classes", "parsing classes kept as the person (17 = hair)", fingerprint: onnxOnly, commentedOut: true),
    ]
}

/// A pipeline file (YAML, under Pipelines/). Every section and key is checked: an unknown one (a
/// misspelling such as `masks:` for `mask:`) is an error naming it, never a silent default.
public struct PipelineConfig: Codable, Equatable, Sendable {
    public var ingest = IngestParameters()
    public var crossfaceid = CrossFaceIDParameters()
    public var huggingface = HuggingFaceParameters()
    public var mask = MaskParameters()
    public var labels = LabelMapping()
    public var curate = CurationParameters()
    public var fetch = FetchParameters()
    /// `pidiff-data run`'s stage list (only pipeline files meant for `run` have it).
    public var run: RunSpec?
    public init() {}

    package enum CodingKeys: String, CodingKey, CaseIterable { case ingest, crossfaceid, huggingface, mask, labels, curate, fetch, run }

    public init(from decoder: Decoder) throws {
        try refuseUnknownKeys(decoder, CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        ingest = try c.decodeIfPresent(IngestParameters.self, forKey: .ingest) ?? IngestParameters()
        crossfaceid = try c.decodeIfPresent(CrossFaceIDParameters.self, forKey: .crossfaceid) ?? CrossFaceIDParameters()
        huggingface = try c.decodeIfPresent(HuggingFaceParameters.self, forKey: .huggingface) ?? HuggingFaceParameters()
        mask = try c.decodeIfPresent(MaskParameters.self, forKey: .mask) ?? MaskParameters()
        labels = try c.decodeIfPresent(LabelMapping.self, forKey: .labels) ?? LabelMapping()
        run = try c.decodeIfPresent(RunSpec.self, forKey: .run)
        curate = try c.decodeIfPresent(CurationParameters.self, forKey: .curate) ?? CurationParameters()
        fetch = try c.decodeIfPresent(FetchParameters.self, forKey: .fetch) ?? FetchParameters()
    }

    /// A pipeline file's text, decoded and checked; `path` names it in errors. (Reading the file
    /// is `PipelineConfig.load`, in PIDiffData: this target does no I/O.)
    public static func decode(yaml text: String, path: String) throws -> PipelineConfig {
        do { return try YAMLDecoder().decode(PipelineConfig.self, from: text) } catch {
            throw PipelineError.invalid(path, "\(error)")
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

extension PipelineConfig {
    /// `Pipelines/default.yaml`: every section with every parameter at its default, from the
    /// parameter structs (a test keeps the file equal to this).
    public static func defaultYAML() -> String {
        let header = """
            # Default pipeline: stage parameters for pidiff-data. Every value shown is the built-in default;
            # delete a line to keep the default, change it to override. Output-affecting parameters are part
            # of the parameters fingerprint, so changing one re-derives exactly what depends on it. Unknown
            # sections and keys are refused with an error naming them. Generated from the parameter structs:
            # `pidiff-data pipeline defaults > Pipelines/default.yaml`.
            """
        let sections = [IngestParameters.defaultYAML(), CrossFaceIDParameters.defaultYAML(),
                        HuggingFaceParameters.defaultYAML(), MaskParameters.defaultYAML(),
                        LabelMapping().yamlLines(), CurationParameters.defaultYAML(), FetchParameters.defaultYAML()]
        return header + "\n" + sections.map { $0.joined(separator: "\n") }.joined(separator: "\n\n") + "\n"
    }
}

extension LabelMapping {
    /// The `labels:` section with these values.
    public func yamlLines() -> [String] {
        func quoted(_ s: String) -> String {
            s.allSatisfy { $0.isLetter || $0.isNumber || $0 == "_" } && !["true", "false", "null", "yes", "no", "y", "n"].contains(s.lowercased())
                ? s : "\"" + s.replacingOccurrences(of: "\"", with: "\\\"") + "\""
        }
        func map(_ d: [String: String]) -> String {
            "{" + d.sorted { $0.key < $1.key }.map { "\(quoted($0.key)): \(quoted($0.value))" }.joined(separator: ", ") + "}"
        }
        return ["labels:",
                "  # Free-form manifest values → the balance grid's categories (case-insensitive); unmapped → unknown.",
                "  race: \(map(race))",
                "  gender: \(map(gender))",
                "  age_brackets:            # an age in years falls in the last bracket it reaches"]
            + ageBrackets.map { "    - {name: \(quoted($0.name)), from: \($0.from)}" }
            + ["  # FairFace's 7 races (White, Black, Latino_Hispanic, East Asian, Southeast Asian, Indian, Middle Eastern):",
               "  fairface_race: [\(fairfaceRace.map(quoted).joined(separator: ", "))]",
               "  age_names: \(map(ageNames))            # free-form age strings naming a bracket directly, e.g. {adult: \"21-50\"}",
               "  min_classifier_confidence: \(minClassifierConfidence)"]
    }
}

import Foundation
import PIDiffModel
import PIDiffNative
import PIDiffCatalog

/// `pidiff-data face`: one photo to the e4e input, without a catalog — the same read → decode →
/// detect → landmarks → align → quality → mask → e4e-input steps as ingest and masks, with the same
/// pipeline parameters and models. What `pidiff sample --photo` and `pidiff wplus` encode.
public struct FacePreparation: Sendable {
    /// Which face of a photo with several: the policy's largest, or an index (largest first).
    public enum Choice: Sendable, Equatable { case onlyOne, largest, index(Int) }

    public var config: PipelineConfig
    public var models: ModelStore
    public var choice: Choice

    public init(config: PipelineConfig = PipelineConfig(), models: ModelStore = ModelStore(), choice: Choice = .onlyOne) {
        self.config = config
        self.models = models
        self.choice = choice
    }

    /// One photo's result, as `NAME.json` and `--json` give it; files are named relative to the
    /// output folder.
    public struct Result: Codable, Sendable {
        public var photo: String
        public var name: String
        public var ok: Bool
        public var error: String?
        public var facesFound: Int
        public var faceIndex: Int?
        public var landmarks68: [[Double]]?
        public var quad: [[Double]]?
        public var quality: FaceQuality?
        public var mask: MaskSummary?
        public var e4eInput: String?
        public var crop512: String?
        public var mask256: String?
        public struct MaskSummary: Codable, Sendable {
            public var coverage: Double
            public var ok: Bool
            public var reason: String?
        }
        enum CodingKeys: String, CodingKey {
            case photo, name, ok, error, facesFound = "faces_found", faceIndex = "face_index", landmarks68, quad, quality, mask
            case e4eInput = "e4e_input", crop512, mask256
        }
    }

    /// Prepares every photo into `out` (`NAME.e4e.png`, `NAME.crop512.png`, `NAME.mask256.png`,
    /// `NAME.json`, NAME = the file name without extension). A photo that fails is a result with
    /// `ok: false` and a reason; files are still written when a face was cropped, for inspection.
    public func run(photos: [String], out: URL, progress: (Result) -> Void = { _ in }) throws -> [Result] {
        try OutputPath.prepareFolder(out)
        try OutputPath.markAsOutput(out)
        let names = photos.map { URL(fileURLWithPath: $0).deletingPathExtension().lastPathComponent }
        if let repeated = Dictionary(grouping: names, by: { $0 }).first(where: { $0.value.count > 1 })?.key {
            throw PipelineError.invalid("face", "two photos would both write \(repeated).*: give photos with distinct file names")
        }
        let mmod = config.ingest.detector == .mmod ? try models.path(ModelStore.mmodDetector) : nil
        let model = try FaceModel(detector: config.ingest.detector, mmodPath: mmod, predictor68Path: try models.path(ModelStore.predictor68))
        let masker = try MaskStage(parameters: config.mask)
        // Crops pass through a private content-addressed store inside `out`, removed at the end.
        let scratch = out.appendingPathComponent(".pidiff-face-\(getpid())")
        defer { try? FileManager.default.removeItem(at: scratch) }
        let analyzer = FaceAnalyzer(model: model, parameters: config.ingest, store: ArtefactStore(root: scratch))
        switch choice {
        case .index(let i): analyzer.faceIndex = i
        case .largest: analyzer.faceIndex = 0 // faces come largest first, whatever face_policy says
        case .onlyOne: break
        }
        return try zip(photos, names).map { photo, name in
            let result = try prepare(photo, name: name, analyzer: analyzer, masker: masker, out: out, scratch: ArtefactStore(root: scratch))
            progress(result)
            return result
        }
    }

    private func prepare(_ photo: String, name: String, analyzer: FaceAnalyzer, masker: MaskStage, out: URL, scratch: ArtefactStore) throws -> Result {
        var result = Result(photo: photo, name: name, ok: false, facesFound: 0)
        let bytes: FileBytes
        do { bytes = try ReadStage.read(photo) } catch let problem as ScanProblem {
            result.error = problem.reason
            return result
        }
        var timings = StageTimings()
        let analysis = try analyzer.analyse(bytes, timings: &timings)
        result.facesFound = analysis.facesFound
        guard analysis.outcome == .ok, let face = analysis.faces.first(where: \.selected) else {
            if case .index(let i) = choice, analysis.outcome == .ok || analysis.outcome == .noFace, analysis.facesFound > 0 {
                result.error = "no face \(i): \(analysis.facesFound) detected (indices 0–\(analysis.facesFound - 1), largest first)"
            } else {
                result.error = analysis.reason ?? analysis.outcome.rawValue
            }
            return result
        }
        result.faceIndex = face.index
        result.landmarks68 = face.landmarks.points.map { [$0.x, $0.y] }
        result.quad = face.quad.corners.map { [$0.x, $0.y] }
        result.quality = face.quality
        guard let crop512Path = face.crops[512], let crop256Path = face.crops[256] else {
            result.error = "ingest.crop_sizes must include 512 and 256 for the e4e input"
            return result
        }
        let crop512 = try NativeImage.decode(Data(contentsOf: scratch.url(crop512Path)), maxPixels: 1 << 24)
        let crop256 = try NativeImage.decode(Data(contentsOf: scratch.url(crop256Path)), maxPixels: 1 << 24)
        let masked = try masker.run(crop256: crop256, crop512: crop512, landmarks: face.landmarks.points, quad: face.quad)
        result.mask = .init(coverage: masked.coverage, ok: masked.failure == nil, reason: masked.failure)
        let files = [("\(name).e4e.png", try masked.e4eInput.pngData()), ("\(name).crop512.png", try crop512.pngData()),
                     ("\(name).mask256.png", try masked.mask256.pngData())]
        for (file, data) in files { try OutputPath.write(data, to: out.appendingPathComponent(file)) }
        (result.e4eInput, result.crop512, result.mask256) = (files[0].0, files[1].0, files[2].0)

        if analysis.facesFound > 1 && choice == .onlyOne {
            result.error = "\(analysis.facesFound) faces: choose one with --largest or --face-index N (0 = largest)"
        } else if face.quality.passed == false {
            result.error = "face fails the quality gates: \(face.quality.reason ?? "")"
        } else if let failure = masked.failure {
            result.error = "mask flagged: \(failure)"
        } else {
            result.ok = true
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        try OutputPath.write(try encoder.encode(result), to: out.appendingPathComponent("\(name).json"))
        return result
    }
}

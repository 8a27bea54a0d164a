import Foundation
import PIDiffModel
import PIDiffNative
import PIDiffCatalog

/// `pidiff-data bench masks`: does background removal keep the head? Ingests a folder of real
/// photos (identity folders, one face each: `scripts/hair-photos.py` builds one from packages
/// that ship photos) into a fresh catalog, masks them, and measures every mask in its 256 crop
/// with `HeadChecks`: the share of faces whose head band above the brows is at least
/// `bandThreshold` foreground, the share whose skull outline is at least `outlineThreshold`
/// foreground, and how much far background (above the mouth, outside 1.6 × the skull) the masks
/// swallowed. With `catalogPath` instead of `photos` it measures the current masks of an existing
/// catalog without running anything (e.g. masks made by an older version).
public struct MaskBenchmark: Sendable {
    public var photos: URL?
    public var catalogPath: String?
    public var workDirectory: URL
    public var models: ModelStore
    public var config: PipelineConfig
    public var workers: Int
    public var bandThreshold = 0.85
    public var outlineThreshold = 0.70
    /// A mask covering more than this share of the far-background region swallowed background.
    public var swallowThreshold = 0.15

    public init(photos: URL?, catalogPath: String?, workDirectory: URL, models: ModelStore, config: PipelineConfig, workers: Int = 0) {
        self.photos = photos
        self.catalogPath = catalogPath
        self.workDirectory = workDirectory
        self.models = models
        self.config = config
        self.workers = workers
    }

    public struct Face: Codable, Sendable {
        public var path: String
        public var identity: String
        public var qualityOK: Bool?
        public var coverage: Double
        public var checks: HeadChecks
        public var ok: Bool
        public var reason: String?
        enum CodingKeys: String, CodingKey { case path, identity, qualityOK = "quality_ok", coverage, checks, ok, reason }
    }

    public struct Report: Codable, Sendable {
        public var catalog: String
        public var maskFingerprint: String?
        public var method: String
        public var faces: Int
        /// Faces whose head band above the brows is ≥ bandThreshold foreground, and their share.
        public var bandKept: Int
        public var bandKeptShare: Double
        public var outlineKept: Int
        public var outlineKeptShare: Double
        /// Faces whose head ring (the band outside the skull core the GrabCut seed forces, see
        /// `HeadChecks.headRing`) is ≥ bandThreshold foreground, their share, and the ring's
        /// lowest and median share: the hair the mask kept by itself.
        public var ringKept: Int
        public var ringKeptShare: Double
        public var ringMin: Double
        public var ringMedian: Double
        /// Mean far-background share, and faces above swallowThreshold.
        public var farBackgroundMean: Double
        public var swallowed: Int
        public var swallowedShare: Double
        /// Masks the mask stage flagged (ok = false), whatever the reason.
        public var flagged: Int
        public var thresholds: [String: Double]
        /// The mask run (absent when an existing catalog was measured).
        public var workers: Int?
        public var maskSeconds: Double?
        public var masksPerSecond: Double?
        public var entries: [Face]
        enum CodingKeys: String, CodingKey {
            case catalog, maskFingerprint = "mask_fingerprint", method, faces, bandKept = "band_kept", bandKeptShare = "band_kept_share"
            case outlineKept = "outline_kept", outlineKeptShare = "outline_kept_share", farBackgroundMean = "far_background_mean"
            case ringKept = "ring_kept", ringKeptShare = "ring_kept_share", ringMin = "ring_min", ringMedian = "ring_median"
            case swallowed, swallowedShare = "swallowed_share", flagged, thresholds, workers, maskSeconds = "mask_seconds"
            case masksPerSecond = "masks_per_second", entries
        }
    }

    public func run() async throws -> Report {
        var catalogPath = self.catalogPath ?? ""
        var summary: MaskPipeline.Summary?
        if let photos {
            let catalog = workDirectory.appendingPathComponent("bench-masks.sqlite")
            for url in [catalog, URL(fileURLWithPath: catalog.path + ".data"), URL(fileURLWithPath: catalog.path + "-wal"),
                        URL(fileURLWithPath: catalog.path + "-shm")] { try? FileManager.default.removeItem(at: url) }
            try FileManager.default.createDirectory(at: workDirectory, withIntermediateDirectories: true)
            _ = try await IngestPipeline(sources: [photos.path], catalogPath: catalog.path, config: config, models: models).run()
            summary = try await MaskPipeline(catalogPath: catalog.path, parameters: config.mask, workers: workers).run()
            catalogPath = catalog.path
        }
        let catalog = try Catalog(path: catalogPath)
        let entries = try Self.measure(catalog, coreScale: config.mask.skullCore)
        let n = entries.count
        func share(_ k: Int) -> Double { n == 0 ? 0 : Double(k) / Double(n) }
        let bandKept = entries.filter { $0.checks.headBand >= bandThreshold }.count
        let outlineKept = entries.filter { $0.checks.headOutline >= outlineThreshold }.count
        let ringKept = entries.filter { $0.checks.headRing >= bandThreshold }.count
        let rings = entries.map(\.checks.headRing).sorted()
        let swallowed = entries.filter { $0.checks.farBackground > swallowThreshold }.count
        let fingerprint = try catalog.currentMaskFingerprint()
        let method = try fingerprint.flatMap { try catalog.runParameters(command: "masks", fingerprint: $0) }.flatMap { json in
            (try? JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])?["method"] as? String
        } ?? "?"
        return Report(catalog: catalogPath, maskFingerprint: fingerprint, method: method, faces: n,
                      bandKept: bandKept, bandKeptShare: share(bandKept), outlineKept: outlineKept, outlineKeptShare: share(outlineKept),
                      ringKept: ringKept, ringKeptShare: share(ringKept), ringMin: rings.first ?? 0, ringMedian: rings.isEmpty ? 0 : rings[n / 2],
                      farBackgroundMean: n == 0 ? 0 : entries.map(\.checks.farBackground).reduce(0, +) / Double(n),
                      swallowed: swallowed, swallowedShare: share(swallowed), flagged: entries.filter { !$0.ok }.count,
                      thresholds: ["head_band": bandThreshold, "head_outline": outlineThreshold, "far_background": swallowThreshold],
                      workers: summary.map { _ in workers > 0 ? workers : ProcessInfo.processInfo.activeProcessorCount },
                      maskSeconds: summary?.seconds, masksPerSecond: summary?.masksPerSecond, entries: entries)
    }

    /// `HeadChecks` of every selected face's current mask in `catalog`.
    public static func measure(_ catalog: Catalog, coreScale: Double = MaskParameters().skullCore) throws -> [Face] {
        let masks = Dictionary(try catalog.maskReport().map { ($0.path, $0) }, uniquingKeysWith: { a, _ in a })
        var out: [Face] = []
        for face in try catalog.faceReports(selectedOnly: true) {
            guard let row = masks[face.path], let path = row.mask256 else { continue }
            let mask = try NativeImage.decodeMask(Data(contentsOf: URL(fileURLWithPath: path)))
            let landmarks = face.landmarks68.map { Point(x: $0[0], y: $0[1]) }
            let quad = AlignmentQuad(landmarks: Landmarks68(points: landmarks))
            let inCrop = MaskStage.landmarksInCrop(landmarks, quad: quad, size: mask.width)
            out.append(Face(path: face.path, identity: face.identity, qualityOK: face.qualityOK, coverage: mask.maskCoverage,
                            checks: try mask.headChecks(landmarks: inCrop, coreScale: coreScale), ok: row.ok, reason: row.reason))
        }
        return out
    }
}

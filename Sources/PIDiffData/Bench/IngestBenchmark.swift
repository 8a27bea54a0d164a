import Foundation
import PIDiffModel
import PIDiffNative
import PIDiffCatalog

/// `pidiff-data bench ingest`: builds N distinct photos from the sample photos (rescaled,
/// brightness-shifted, re-encoded at varying JPEG quality, so every file has its own bytes and
/// pixels), ingests them into a fresh catalog and reports images/s and seconds per stage.
public struct IngestBenchmark: Sendable {
    public var samples: [URL]
    public var count: Int
    public var workDirectory: URL
    public var models: ModelStore
    public var config: PipelineConfig

    public init(samples: [URL], count: Int, workDirectory: URL, models: ModelStore, config: PipelineConfig) {
        self.samples = samples
        self.count = count
        self.workDirectory = workDirectory
        self.models = models
        self.config = config
    }

    public struct Report: Codable, Sendable {
        public var images: Int
        public var workers: Int
        public var generateSeconds: Double
        public var ingestSeconds: Double
        public var imagesPerSecond: Double
        public var stageSeconds: [String: Double]
        public var counts: [String: Int]
        enum CodingKeys: String, CodingKey {
            case images, workers, generateSeconds = "generate_seconds", ingestSeconds = "ingest_seconds"
            case imagesPerSecond = "images_per_second", stageSeconds = "stage_seconds", counts
        }
    }

    /// Writes the perturbed corpus as `<dir>/<sample-stem>/<i>.jpg` (one identity per sample).
    public static func generateCorpus(from samples: [URL], count: Int, into dir: URL) throws {
        let decoded = try samples.map { try NativeImage.decode(Data(contentsOf: $0), maxPixels: 100_000_000) }
        for i in 0..<count {
            let k = i % samples.count
            let round = i / samples.count
            // Deterministic, distinct perturbations per copy.
            let scale = 0.75 + 0.5 * Double((round * 7919) % 101) / 100.0
            let gain = 0.85 + 0.3 * Double((round * 104_729) % 97) / 96.0
            let quality = 70 + (round * 31) % 26
            let src = decoded[k]
            let resized = try src.resized(width: max(64, Int(Double(src.width) * scale)), height: max(64, Int(Double(src.height) * scale)))
            let image = try resized.adjusted(gain: gain, bias: Double(round % 7) - 3)
            let identity = samples[k].deletingPathExtension().lastPathComponent
            let folder = dir.appendingPathComponent(identity)
            try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
            try image.jpegData(quality: quality).write(to: folder.appendingPathComponent(String(format: "%06d.jpg", i)))
        }
    }

    public func run() async throws -> Report {
        let corpus = workDirectory.appendingPathComponent("corpus")
        let catalog = workDirectory.appendingPathComponent("bench.sqlite")
        for url in [corpus, catalog, URL(fileURLWithPath: catalog.path + ".data")] { try? FileManager.default.removeItem(at: url) }
        let t0 = Date()
        try Self.generateCorpus(from: samples, count: count, into: corpus)
        let generated = Date().timeIntervalSince(t0)
        let pipeline = IngestPipeline(sources: [corpus.path], catalogPath: catalog.path, config: config, models: models,
                                      progress: isatty(STDERR_FILENO) == 1 ? .terminal : .off)
        let summary = try await pipeline.run()
        let workers = config.ingest.workers > 0 ? config.ingest.workers : ProcessInfo.processInfo.activeProcessorCount
        return Report(images: count, workers: workers, generateSeconds: generated, ingestSeconds: summary.seconds,
                      imagesPerSecond: Double(count) / summary.seconds, stageSeconds: summary.stageSeconds, counts: summary.counts)
    }
}

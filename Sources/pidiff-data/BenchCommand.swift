import ArgumentParser
import Foundation
import PIDiffModel
import PIDiffNative
import PIDiffCatalog
import PIDiffData

struct BenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Benchmarks that print figures (see Docs/benchmarks.md).",
        subcommands: [BenchIngestCommand.self, BenchNearDupCommand.self, BenchNearDupQualityCommand.self])
}

struct BenchIngestCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ingest",
        abstract: "Ingest N perturbed copies of the sample photos into a fresh catalog; print images/s and time per stage.",
        discussion: "Example: pidiff-data bench ingest --n 200 --samples ~/.cache/pidiff-data/sample/identities --json")

    @Option(help: "Number of distinct images to generate and ingest.") var n = 200
    @Option(help: "Folder of sample photos (searched recursively for .jpg/.png); default: the setup's sample.")
    var samples: String?
    @Option(help: "Scratch folder for the corpus and catalog (default: a temporary folder).") var work: String?
    @Option(help: "Pipeline file.") var pipeline: String?
    @Option(help: "Model folder.") var models: String?
    @Option(help: "Workers (default: one per core).") var workers: Int?
    @Flag(help: "Print JSON.") var json = false

    func run() async throws {
        do {
            let sampleDir = samples.map { URL(fileURLWithPath: $0) }
                ?? ModelStore.cacheDirectory.appendingPathComponent("sample/identities")
            let enumerator = FileManager.default.enumerator(at: sampleDir, includingPropertiesForKeys: nil)
            let photos = (enumerator?.allObjects as? [URL] ?? [])
                .filter { ["jpg", "jpeg", "png"].contains($0.pathExtension.lowercased()) && !$0.lastPathComponent.contains("partial") }
                .sorted { $0.path < $1.path }
            guard !photos.isEmpty else { throw ValidationError("no sample photos under \(sampleDir.path); run scripts/setup.sh") }
            var config = try PipelineConfig.load(pipeline.map { URL(fileURLWithPath: $0) })
            if let workers { config.ingest.workers = workers }
            let work = work.map { URL(fileURLWithPath: $0) }
                ?? FileManager.default.temporaryDirectory.appendingPathComponent("pidiff-bench-\(ProcessInfo.processInfo.processIdentifier)")
            let bench = IngestBenchmark(samples: photos, count: n, workDirectory: work,
                                        models: ModelStore(directory: models.map { URL(fileURLWithPath: $0) }), config: config)
            let report = try await bench.run()
            if json { try report.printJSON(); return }
            print(String(format: "ingested %d images with %d workers in %.2f s: %.2f images/s (corpus generated in %.1f s)",
                         report.images, report.workers, report.ingestSeconds, report.imagesPerSecond, report.generateSeconds))
            let total = report.stageSeconds.values.reduce(0, +)
            for (stage, s) in report.stageSeconds.sorted(by: { $0.value > $1.value }) {
                print(String(format: "  %-10@ %7.2f s  %5.1f%%  %6.1f ms/image", stage as NSString, s, 100 * s / max(total, 1e-9),
                             1000 * s / Double(report.images)))
            }
        } catch let e as ValidationError { throw e } catch { fail(error) }
    }
}

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
        subcommands: [BenchIngestCommand.self, BenchDetectCommand.self, BenchMasksCommand.self, BenchNearDupCommand.self, BenchNearDupQualityCommand.self])
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

struct BenchDetectCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "detect",
        abstract: "Annotated faces found and detection time: dlib's HOG with one upsampling, ingest-1's cascade, the pipeline's detection.",
        discussion: """
            Annotations are dlib imglab XML files (<image file=…><box top= left= width= height=/>), such as
            examples/faces/training.xml and testing.xml of dlib's source tree; a face counts as found when a box
            overlaps it with IoU ≥ 0.5. Photos under --photos (e.g. the sample portraits) are only timed and checked
            for the picked face keeping its box. --enlarge 1,3 also runs every annotated photo enlarged 3×.
            Example: pidiff-data bench detect --annotations faces/training.xml --annotations faces/testing.xml \
              --photos ~/.cache/pidiff-data/sample/identities --json
            """)

    @Option(help: "dlib imglab XML file of annotated faces (repeatable).") var annotations: [String] = []
    @Option(help: "Folder of photos without annotations, timed and compared only (repeatable).") var photos: [String] = []
    @Option(help: "Enlargements of the annotated photos, comma-separated.") var enlarge = "1"
    @Option(help: "Pipeline file (its ingest: section).") var pipeline: String?
    @Option(help: "Model folder.") var models: String?
    @Flag(help: "Print JSON (figures and one entry per photo).") var json = false

    func run() throws {
        do {
            let factors = enlarge.split(separator: ",").compactMap { Double($0.trimmingCharacters(in: .whitespaces)) }
            guard !factors.isEmpty, factors.allSatisfy({ $0 > 0 && $0 <= 8 }) else { throw ValidationError("--enlarge: factors in (0, 8]") }
            let list = try DetectBenchmark.photos(annotations: annotations.map { URL(fileURLWithPath: $0) }, enlarged: factors,
                                                  folders: photos.map { URL(fileURLWithPath: $0) })
            guard !list.isEmpty else { throw ValidationError("give --annotations or --photos") }
            let config = try PipelineConfig.load(pipeline.map { URL(fileURLWithPath: $0) })
            let report = try DetectBenchmark(photos: list, parameters: config.ingest,
                                             models: ModelStore(directory: models.map { URL(fileURLWithPath: $0) })).run()
            if json { try report.printJSON(); return }
            print("\(report.photos) photos, \(report.annotatedFaces) annotated faces on \(report.annotatedPhotos) of them, "
                  + "\(report.referenceBoxes) boxes found by the reference")
            for s in report.strategies {
                print(String(format: "  %-17@ recall %5.1f%%  (%3d faces, %5.1f%% of the reference's)  reference's boxes %3d  %7.1f ms/photo annotated, %7.1f ms/photo other",
                             s.strategy as NSString, 100 * s.recall, s.annotatedFound, 100 * s.recallOfReference, s.referenceBoxesFound,
                             s.detectMsPerAnnotatedPhoto, s.detectMsPerOtherPhoto))
            }
            print("picked face keeps its box (cascade_ingest_1 vs pipeline): \(report.pickedSame) of \(report.pickedByBoth) photos")
        } catch let e as ValidationError { throw e } catch { fail(error) }
    }
}

struct BenchMasksCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "masks",
        abstract: "Does background removal keep the head? Share of faces whose head band above the brows is kept, far background swallowed, masks/s.",
        discussion: """
            Ingests a folder of photos (identity folders, one face each) into a fresh catalog under --work, masks it
            with the pipeline's mask parameters and measures every mask in its 256 crop (HeadChecks: head band above
            the brows, skull outline, far background). With --catalog instead, measures that catalog's current masks
            and runs nothing. Photos of long, curly, light and dark hair and bald heads: scripts/hair-photos.py.
            Example: pidiff-data bench masks --photos hair-photos/ --work /tmp/bench --workers 1 --json
            """)

    @Option(help: "Folder of photos to ingest (identity folders).") var photos: String?
    @Option(help: "Measure this catalog's current masks instead (nothing is run).") var catalog: String?
    @Option(help: "Scratch folder for the catalog (default: a temporary folder).") var work: String?
    @Option(help: "Pipeline file (its ingest: and mask: sections).") var pipeline: String?
    @Option(help: "Model folder.") var models: String?
    @Option(help: "Mask workers (default: one per core).") var workers: Int?
    @Flag(help: "Print JSON (figures and one entry per face).") var json = false

    func validate() throws {
        guard (photos == nil) != (catalog == nil) else { throw ValidationError("give either --photos or --catalog") }
        try validateWorkers(workers)
    }

    func run() async throws {
        do {
            let config = try PipelineConfig.load(pipeline.map { URL(fileURLWithPath: $0) })
            let work = work.map { URL(fileURLWithPath: $0) }
                ?? FileManager.default.temporaryDirectory.appendingPathComponent("pidiff-bench-masks-\(ProcessInfo.processInfo.processIdentifier)")
            let bench = MaskBenchmark(photos: photos.map { URL(fileURLWithPath: $0) }, catalogPath: catalog, workDirectory: work,
                                      models: ModelStore(directory: models.map { URL(fileURLWithPath: $0) }), config: config,
                                      workers: workers ?? 0)
            let r = try await bench.run()
            if json { try r.printJSON(); return }
            print("masks (\(r.method)) of \(r.faces) faces in \(r.catalog)")
            print(String(format: "  head band above the brows ≥ %.0f%% foreground: %d of %d faces (%.1f%%)",
                         r.thresholds["head_band"]! * 100, r.bandKept, r.faces, r.bandKeptShare * 100))
            print(String(format: "  head ring (the band outside the skull core the seed forces) ≥ %.0f%% foreground: %d of %d faces (%.1f%%); lowest %.2f, median %.2f",
                         r.thresholds["head_band"]! * 100, r.ringKept, r.faces, r.ringKeptShare * 100, r.ringMin, r.ringMedian))
            print(String(format: "  skull outline above the eyes ≥ %.0f%% foreground: %d of %d faces (%.1f%%)",
                         r.thresholds["head_outline"]! * 100, r.outlineKept, r.faces, r.outlineKeptShare * 100))
            print(String(format: "  far background swallowed (> %.0f%% of it foreground): %d of %d faces (%.1f%%); mean share %.3f",
                         r.thresholds["far_background"]! * 100, r.swallowed, r.faces, r.swallowedShare * 100, r.farBackgroundMean))
            print("  flagged by the mask stage: \(r.flagged)")
            if let mps = r.masksPerSecond, let s = r.maskSeconds, let w = r.workers {
                print(String(format: "  masks: %.2f s with %d worker(s), %.2f masks/s", s, w, mps))
            }
            for e in r.entries where e.checks.headBand < r.thresholds["head_band"]! || e.checks.farBackground > r.thresholds["far_background"]! {
                print(String(format: "  %@: head band %.2f, outline %.2f, far background %.2f", e.path as NSString, e.checks.headBand,
                             e.checks.headOutline, e.checks.farBackground))
            }
        } catch let e as ValidationError { throw e } catch { fail(error) }
    }
}

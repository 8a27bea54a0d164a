import ArgumentParser
import Foundation
import PIDiffModel
import PIDiffNative
import PIDiffCatalog
import PIDiffData

struct BenchNearDupCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "near-dup",
        abstract: "Time the near-duplicate index: build + every hash queried against it (a self-join) at a Hamming radius.",
        discussion: """
            Hashes are generated (uniform 64-bit, every 10th a planted copy of its predecessor with
            0…radius flipped bits) or read from --hashes (one unsigned decimal or 0x-hex per line).
            Example: pidiff-data bench near-dup --n 1000000 --radius 8
            """)

    @Option(help: "Number of generated hashes.") var n = 1_000_000
    @Option(help: "Hamming radius in bits.") var radius = 8
    @Option(help: "Read hashes from this file instead of generating them.") var hashes: String?
    @Option(help: "Write the generated hashes to this file (one decimal per line) and exit.") var writeHashes: String?
    @Option(help: "Worker threads (default: one per core).") var workers: Int?
    @Flag(help: "Print JSON.") var json = false

    func run() async throws {
        do {
            guard (0..<64).contains(radius) else { throw ValidationError("--radius \(radius) is not in 0…63") }
            var values: [UInt64], planted: [HashPair]
            if let hashes {
                values = try Self.read(hashes)
                planted = []
            } else {
                (values, planted) = NearDuplicateSpeedBenchmark.generate(count: n, radius: radius)
            }
            if let writeHashes {
                try values.map(String.init).joined(separator: "\n").appending("\n").write(toFile: writeHashes, atomically: true, encoding: .utf8)
                return
            }
            let report = NearDuplicateSpeedBenchmark.run(hashes: values, planted: planted, radius: radius,
                                                         workers: workers ?? ProcessInfo.processInfo.activeProcessorCount)
            if json { try report.printJSON(); return }
            print(String(format: "%d hashes, radius %d, chunks %@, %d workers: build %.3f s + queries %.3f s = %.3f s; %d pairs (%d/%d planted found)",
                         report.hashes, report.radius, report.chunks.map(String.init).joined(separator: "/"), report.workers,
                         report.buildSeconds, report.querySeconds, report.totalSeconds, report.pairsFound,
                         report.plantedPairsFound, report.plantedPairs))
        } catch let e as ValidationError { throw e } catch { fail(error) }
    }

    static func read(_ path: String) throws -> [UInt64] {
        let text: String
        do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
            throw ValidationError("--hashes \(path): cannot read (\(error.localizedDescription))")
        }
        var out: [UInt64] = []
        for (n, line) in text.split(whereSeparator: \.isNewline).enumerated() {
            let s = line.trimmingCharacters(in: .whitespaces)
            guard let v = s.hasPrefix("0x") ? UInt64(s.dropFirst(2), radix: 16) : UInt64(s) else {
                throw ValidationError("--hashes \(path): line \(n + 1) is not a 64-bit unsigned integer: \(s.prefix(40))")
            }
            out.append(v)
        }
        return out
    }
}

struct BenchNearDupQualityCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "near-dup-quality",
        abstract: "Precision/recall of near-duplicate grouping on transformed copies of the sample photos.",
        discussion: """
            Each sample photo gets --variants copies (resize 0.25–2×, JPEG 30–95, 5% crops,
            brightness ±20%, rotations ±3°, some combined), filed under its person; different
            photos of one person are the hard negatives. Ingest + curate with the pipeline's
            parameters, then pairs are scored against the truth.
            Example: pidiff-data bench near-dup-quality --variants 16 --json
            """)

    @Option(help: "Copies per sample photo.") var variants = 16
    @Option(help: "Folder of identity folders with sample photos (default: the setup's sample).") var samples: String?
    @Option(help: "Scratch folder (default: a temporary folder).") var work: String?
    @Option(help: "Pipeline file (its curate: section is what is measured).") var pipeline: String?
    @Option(help: "Model folder.") var models: String?
    @Flag(help: "Print JSON.") var json = false

    func run() async throws {
        do {
            let root = samples.map { URL(fileURLWithPath: $0) } ?? ModelStore.cacheDirectory.appendingPathComponent("sample/identities")
            // Photos of people with faces: the partial-face crops and the unlabelled PNG have none to test.
            let photos = ((FileManager.default.enumerator(at: root, includingPropertiesForKeys: nil)?.allObjects as? [URL]) ?? [])
                .filter { ["jpg", "jpeg"].contains($0.pathExtension.lowercased()) && !$0.lastPathComponent.contains("partial") }
                .sorted { $0.path < $1.path }
            guard !photos.isEmpty else { throw ValidationError("no sample photos under \(root.path); run scripts/setup.sh") }
            let dir = work.map { URL(fileURLWithPath: $0) }
                ?? FileManager.default.temporaryDirectory.appendingPathComponent("pidiff-ndq-\(ProcessInfo.processInfo.processIdentifier)")
            let bench = NearDuplicateQualityBenchmark(
                samples: photos, variantsPerPhoto: variants, workDirectory: dir,
                models: ModelStore(directory: models.map { URL(fileURLWithPath: $0) }),
                config: try PipelineConfig.load(pipeline.map { URL(fileURLWithPath: $0) }))
            let r = try await bench.run()
            if json { try r.printJSON(); return }
            print(String(format: "%d photos × %d variants = %d files: precision %.4f (%d/%d pairs), recall %.4f (%d/%d), same-person different-photo merges %d",
                         r.photos, variants, r.files, r.precision, r.correctPairs, r.predictedPairs, r.recall, r.correctPairs, r.truePairs,
                         r.samePersonDifferentPhotoMerges))
            print("  positives: face pHash ≤ \(r.positiveFaceBitsMax.map(String.init) ?? "-") bits, image pHash ≤ \(r.positiveImageBitsMax.map(String.init) ?? "-") bits, descriptor ≤ \(r.positiveDescriptorMax.map { String(format: "%.3f", $0) } ?? "-")")
            print("  negatives: face pHash ≥ \(r.negativeFaceBitsMin.map(String.init) ?? "-") bits, image pHash ≥ \(r.negativeImageBitsMin.map(String.init) ?? "-") bits, same-person descriptor ≥ \(r.negativeSamePersonDescriptorMin.map { String(format: "%.3f", $0) } ?? "-")")
            for m in r.missed { print("  missed: \(m)") }
        } catch let e as ValidationError { throw e } catch { fail(error) }
    }
}

import Foundation
import PIDiffModel
import PIDiffNative
import PIDiffCatalog

/// `pidiff-data bench near-dup`: index build + self-join time of `NearDuplicateIndex` on N
/// 64-bit hashes. A fraction of them are planted near copies of others (0…radius random bit
/// flips), so the search has real pairs to find; every planted pair must be found.
public struct NearDuplicateSpeedBenchmark: Sendable {
    public struct Report: Codable, Sendable {
        public var hashes: Int
        public var radius: Int
        public var chunks: [Int]
        public var workers: Int
        public var buildSeconds: Double
        public var querySeconds: Double
        public var totalSeconds: Double
        public var pairsFound: Int
        public var plantedPairs: Int
        public var plantedPairsFound: Int
        enum CodingKeys: String, CodingKey {
            case hashes, radius, chunks, workers, buildSeconds = "build_seconds", querySeconds = "query_seconds"
            case totalSeconds = "total_seconds", pairsFound = "pairs_found", plantedPairs = "planted_pairs"
            case plantedPairsFound = "planted_pairs_found"
        }
    }

    /// Deterministic hashes: uniform 64-bit values, with every `plantEvery`-th one a copy of its
    /// predecessor with 0…radius bits flipped. Returns the hashes and the planted pairs.
    public static func generate(count: Int, radius: Int, plantEvery: Int = 10, seed: UInt64 = 42) -> ([UInt64], [HashPair]) {
        var rng = SplitMix64(seed: seed)
        var hashes: [UInt64] = []
        hashes.reserveCapacity(count)
        var planted: [HashPair] = []
        for i in 0..<count {
            if plantEvery > 0, i > 0, i % plantEvery == 0 {
                var h = hashes[i - 1]
                let flips = Int(rng.next() % UInt64(radius + 1))
                var bits = Set<Int>()
                while bits.count < flips { bits.insert(Int(rng.next() % 64)) }
                for b in bits { h ^= UInt64(1) << UInt64(b) }
                hashes.append(h)
                planted.append(HashPair(a: UInt32(i - 1), b: UInt32(i), distance: UInt8(flips)))
            } else {
                hashes.append(rng.next())
            }
        }
        return (hashes, planted)
    }

    public static func run(hashes: [UInt64], planted: [HashPair], radius: Int, workers: Int) -> Report {
        let t0 = DispatchTime.now().uptimeNanoseconds
        let index = NearDuplicateIndex(hashes: hashes, radius: radius)
        let t1 = DispatchTime.now().uptimeNanoseconds
        let pairs = index.selfJoin(hashes, workers: workers)
        let t2 = DispatchTime.now().uptimeNanoseconds
        let found = Set(pairs.map { Pair(Int($0.a), Int($0.b)) })
        let plantedFound = planted.filter { found.contains(Pair(Int($0.a), Int($0.b))) }.count
        return Report(hashes: hashes.count, radius: radius, chunks: index.bits, workers: workers,
                      buildSeconds: Double(t1 - t0) / 1e9, querySeconds: Double(t2 - t1) / 1e9, totalSeconds: Double(t2 - t0) / 1e9,
                      pairsFound: pairs.count, plantedPairs: planted.count, plantedPairsFound: plantedFound)
    }
}

/// SplitMix64: a small deterministic generator, so benchmark inputs are reproducible.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// `pidiff-data bench near-dup-quality`: transformed copies of real photos (resize 0.25–2×, JPEG
/// quality 30–95, 5% crops, brightness ±20%, rotations up to ±3°, and combinations), filed under
/// their person, so different photos of one person are the hard negatives. The corpus is ingested
/// and curated with the given parameters; pairs in one duplicate group are predicted positives,
/// pairs made from one source photo are true positives.
public struct NearDuplicateQualityBenchmark: Sendable {
    public var samples: [URL]
    public var variantsPerPhoto: Int
    public var workDirectory: URL
    public var models: ModelStore
    public var config: PipelineConfig

    public init(samples: [URL], variantsPerPhoto: Int, workDirectory: URL, models: ModelStore, config: PipelineConfig) {
        self.samples = samples
        self.variantsPerPhoto = variantsPerPhoto
        self.workDirectory = workDirectory
        self.models = models
        self.config = config
    }

    public struct Report: Codable, Sendable {
        public var photos: Int
        public var files: Int
        public var truePairs: Int
        public var predictedPairs: Int
        public var correctPairs: Int
        public var precision: Double
        public var recall: Double
        /// Predicted pairs made of two different photos of the same person (must be 0).
        public var samePersonDifferentPhotoMerges: Int
        /// Distributions behind the defaults: over same-photo pairs (positives) and
        /// different-photo pairs (negatives), where both sides have the feature.
        public var positiveFaceBitsMax: Int?
        public var negativeFaceBitsMin: Int?
        public var positiveImageBitsMax: Int?
        public var negativeImageBitsMin: Int?
        public var positiveDescriptorMax: Double?
        public var negativeSamePersonDescriptorMin: Double?
        public var missed: [String]
        enum CodingKeys: String, CodingKey {
            case photos, files, truePairs = "true_pairs", predictedPairs = "predicted_pairs", correctPairs = "correct_pairs"
            case precision, recall, samePersonDifferentPhotoMerges = "same_person_different_photo_merges"
            case positiveFaceBitsMax = "positive_face_bits_max", negativeFaceBitsMin = "negative_face_bits_min"
            case positiveImageBitsMax = "positive_image_bits_max", negativeImageBitsMin = "negative_image_bits_min"
            case positiveDescriptorMax = "positive_descriptor_max", negativeSamePersonDescriptorMin = "negative_same_person_descriptor_min"
            case missed
        }
    }

    /// Writes `<dir>/<person>/<photo>-<k>.jpg`, the person being the sample's folder name. Variant 0
    /// is the photo re-encoded at quality 95; the others cycle through the transformations, half of
    /// them combining two.
    public static func generateCorpus(from samples: [URL], variants: Int, into dir: URL) throws {
        var rng = SplitMix64(seed: 7)
        func uniform(_ lo: Double, _ hi: Double) -> Double { lo + (hi - lo) * Double(rng.next() % 1_000_001) / 1_000_000 }
        for sample in samples {
            let source = try NativeImage.decode(Data(contentsOf: sample), maxPixels: 100_000_000)
            let person = sample.deletingLastPathComponent().lastPathComponent
            let stem = sample.deletingPathExtension().lastPathComponent
            let folder = dir.appendingPathComponent(person)
            try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
            for k in 0..<variants {
                var image = source
                var quality = 95
                let kinds = k == 0 ? [] : (k % 2 == 0 ? [k % 5, (k / 2) % 5] : [k % 5])
                // In a fixed order (a Set's order changes between processes): the corpus must be reproducible.
                for kind in kinds.enumerated().filter({ !kinds[..<$0.offset].contains($0.element) }).map(\.element) {
                    switch kind {
                    case 0:
                        let s = uniform(0.25, 2.0)
                        image = try image.resized(width: max(16, Int(Double(image.width) * s)), height: max(16, Int(Double(image.height) * s)))
                    case 1: quality = Int(uniform(30, 95))
                    case 2:
                        // Up to 5% off each side.
                        let dx = Int(Double(image.width) * uniform(0, 0.05)), dy = Int(Double(image.height) * uniform(0, 0.05))
                        let w = image.width - dx - Int(Double(image.width) * uniform(0, 0.05))
                        let h = image.height - dy - Int(Double(image.height) * uniform(0, 0.05))
                        image = try image.cropped(x: dx, y: dy, width: w, height: h)
                    case 3: image = try image.adjusted(gain: uniform(0.8, 1.2), bias: 0)
                    default: image = try image.rotated(degrees: uniform(-3, 3))
                    }
                }
                try image.jpegData(quality: quality).write(to: folder.appendingPathComponent(String(format: "%@-%02d.jpg", stem, k)))
            }
        }
    }

    public func run() async throws -> Report {
        let corpus = workDirectory.appendingPathComponent("corpus")
        let catalogPath = workDirectory.appendingPathComponent("quality.sqlite").path
        for url in [corpus, URL(fileURLWithPath: catalogPath), URL(fileURLWithPath: catalogPath + ".data")] {
            try? FileManager.default.removeItem(at: url)
        }
        try Self.generateCorpus(from: samples, variants: variantsPerPhoto, into: corpus)
        _ = try await IngestPipeline(sources: [corpus.path], catalogPath: catalogPath, config: config, models: models).run()
        let summary = try await CurationPipeline(catalogPath: catalogPath, config: config, models: models).run()
        let catalog = try Catalog(path: catalogPath)
        let files = try catalog.curationInputs(ingestFingerprint: try catalog.currentIngestFingerprint()!)
        let features = try CurationFeatureStage.stored(for: files, catalog: catalog, descriptorFingerprint: try DescribeStage.fingerprint(models: models))
        let findings = try catalog.curationFindings(runID: summary.runID)
        return Self.evaluate(files: files, features: features, findings: findings)
    }

    /// Source photo of a corpus file: its name without the variant suffix.
    static func photo(_ path: String) -> String {
        let name = URL(fileURLWithPath: path).deletingPathExtension().lastPathComponent
        return String(name[..<(name.lastIndex(of: "-") ?? name.endIndex)])
    }

    static func evaluate(files: [CurationFile], features: CurationFeatures, findings: [CurationFinding]) -> Report {
        let index = Dictionary(uniqueKeysWithValues: files.enumerated().map { ($1.path, $0) })
        var sets = UnionFind(files.count)
        for f in findings where f.kind == .exactDuplicate || f.kind == .nearDuplicate {
            if let p = f.path, let k = f.keptPath, let a = index[p], let b = index[k] { sets.union(a, b) }
        }
        var truePairs = 0, predicted = 0, correct = 0, samePersonMerges = 0
        var posFace: [Int] = [], negFace: [Int] = [], posImage: [Int] = [], negImage: [Int] = []
        var posDesc: [Double] = [], negSamePersonDesc: [Double] = []
        var missed: [String] = []
        for i in 0..<files.count {
            for j in (i + 1)..<files.count {
                let same = photo(files[i].path) == photo(files[j].path)
                let grouped = sets.find(i) == sets.find(j)
                if same { truePairs += 1 }
                if grouped { predicted += 1 }
                if same && grouped { correct += 1 }
                if grouped && !same && files[i].identity == files[j].identity { samePersonMerges += 1 }
                if same && !grouped && missed.count < 20 { missed.append("\(files[i].path) ~ \(files[j].path)") }
                if let a = features.faceHashes[i], let b = features.faceHashes[j] { (same ? { posFace.append($0) } : { negFace.append($0) })((a ^ b).nonzeroBitCount) }
                if let a = features.imageHashes[i]?.phash, let b = features.imageHashes[j]?.phash {
                    (same ? { posImage.append($0) } : { negImage.append($0) })((a ^ b).nonzeroBitCount)
                }
                if let a = features.descriptors[i], let b = features.descriptors[j] {
                    let d = Double(DescriptorDistances.distance(a, b))
                    if same { posDesc.append(d) } else if files[i].identity == files[j].identity { negSamePersonDesc.append(d) }
                }
            }
        }
        return Report(photos: Set(files.map { photo($0.path) }).count, files: files.count, truePairs: truePairs, predictedPairs: predicted,
                      correctPairs: correct, precision: predicted > 0 ? Double(correct) / Double(predicted) : 1,
                      recall: truePairs > 0 ? Double(correct) / Double(truePairs) : 1, samePersonDifferentPhotoMerges: samePersonMerges,
                      positiveFaceBitsMax: posFace.max(), negativeFaceBitsMin: negFace.min(), positiveImageBitsMax: posImage.max(),
                      negativeImageBitsMin: negImage.min(), positiveDescriptorMax: posDesc.max(),
                      negativeSamePersonDescriptorMin: negSamePersonDesc.min(), missed: missed)
    }
}

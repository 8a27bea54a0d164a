import Foundation
import PIDiffModel
import PIDiffNative
import PIDiffCatalog

/// What the feature stage did: counts of computed and reused features, and the items it could
/// not process (each "location: reason").
struct FeatureWork {
    var computed: [String: Int] = ["image_hashes": 0, "crop_hashes": 0, "descriptors": 0]
    var reused: [String: Int] = ["image_hashes": 0, "crop_hashes": 0, "descriptors": 0]
    var problems: [String] = []
}

/// Computes the features curation needs for every content that lacks them — pixel hash and pHash
/// per source image, pHash per aligned crop, one descriptor per face crop — on one thread per
/// worker (each with its own descriptor network), committing each batch through the writer.
/// Features are keyed on content (+ model fingerprint), so a re-run computes only what is new.
struct CurationFeatureStage {
    var store: ArtefactStore
    var descriptorModelPath: String
    var workers: Int
    var progress: ProgressMode
    var batchSize = 32

    private enum Job {
        /// Every path holding the content, in file order: the first whose bytes still hash to it is read.
        case image(sha: String, paths: [String])
        case cropHash(sha: String, relative: String)
        case descriptor(sha: String, face: CurationFile.Face)
    }

    private enum Output {
        case image(String, ImageHashes)
        case cropHash(String, UInt64)
        case descriptor(String, FaceDescriptor)
        case problem(String, String)
    }

    func features(for files: [CurationFile], catalog: Catalog, writer: CurationWriter,
                  descriptorFingerprint: String) async throws -> (CurationFeatures, FeatureWork) {
        var images = try catalog.storedImageHashes(algorithm: ContentHashStage.algorithm)
        var crops = try catalog.storedCropHashes(algorithm: ContentHashStage.algorithm)
        var descriptors = try catalog.storedDescriptors(modelFingerprint: descriptorFingerprint)
        var work = FeatureWork()

        // One job per missing content, in file order. A photo's jobs are consecutive: progress
        // counts a photo (a content that needed any feature) once all of its jobs are done.
        var jobs: [Job] = []
        var photoEnds: [Int] = []
        var seen = Set<String>()
        var pathsOf: [String: [String]] = [:]
        for f in files where images[f.sha256] == nil { pathsOf[f.sha256, default: []].append(f.path) }
        for f in files {
            let before = jobs.count
            defer { if jobs.count > before { photoEnds.append(jobs.count) } }
            if seen.insert("i" + f.sha256).inserted {
                if images[f.sha256] == nil { jobs.append(.image(sha: f.sha256, paths: pathsOf[f.sha256]!)) } else { work.reused["image_hashes"]! += 1 }
            }
            guard let face = f.face else { continue }
            if seen.insert("h" + face.hashCropSHA).inserted {
                if crops[face.hashCropSHA] == nil { jobs.append(.cropHash(sha: face.hashCropSHA, relative: face.hashCrop)) }
                else { work.reused["crop_hashes"]! += 1 }
            }
            if seen.insert("d" + face.descriptorCropSHA).inserted {
                if descriptors[face.descriptorCropSHA] == nil { jobs.append(.descriptor(sha: face.descriptorCropSHA, face: face)) }
                else { work.reused["descriptors"]! += 1 }
            }
        }

        let needsModel = jobs.contains { if case .descriptor = $0 { return true } else { return false } }
        let w = max(1, min(workers, jobs.count))
        let nets: [DescriptorModel] = needsModel ? try (0..<w).map { _ in try DescriptorModel(path: descriptorModelPath) } : []
        var progress = Progress(stage: "curate", unit: "photos", total: photoEnds.count, mode: jobs.isEmpty ? .off : self.progress)
        var photosDone = 0
        for start in stride(from: 0, to: jobs.count, by: batchSize) {
            let batch = Array(jobs[start..<min(start + batchSize, jobs.count)])
            let outputs = run(batch, workers: w, nets: nets)
            var newImages: [(String, ImageHashes)] = [], newCrops: [(String, UInt64)] = []
            var newDescriptors: [(String, FaceDescriptor)] = [], problems: [(String, String)] = []
            for o in outputs.joined() {
                switch o {
                case .image(let sha, let h): newImages.append((sha, h)); images[sha] = h
                case .cropHash(let sha, let h): newCrops.append((sha, h)); crops[sha] = h
                case .descriptor(let sha, let d): newDescriptors.append((sha, d)); descriptors[sha] = d
                case .problem(let location, let reason): problems.append((location, reason))
                }
            }
            try await writer.storeFeatures(images: newImages, crops: newCrops, descriptors: newDescriptors, problems: problems,
                                           hashAlgorithm: ContentHashStage.algorithm, descriptorFingerprint: descriptorFingerprint)
            work.computed["image_hashes"]! += newImages.count
            work.computed["crop_hashes"]! += newCrops.count
            work.computed["descriptors"]! += newDescriptors.count
            work.problems += problems.map { "\($0.0): \($0.1)" }
            let jobsDone = start + batch.count
            while photosDone < photoEnds.count && photoEnds[photosDone] <= jobsDone { photosDone += 1 }
            progress.update(done: photosDone)
        }
        progress.finish()

        return (Self.assemble(files, images, crops, descriptors), work)
    }

    /// Features already stored for `files` (nothing computed): what benchmarks and reports read.
    static func stored(for files: [CurationFile], catalog: Catalog, descriptorFingerprint: String) throws -> CurationFeatures {
        let images = try catalog.storedImageHashes(algorithm: ContentHashStage.algorithm)
        let crops = try catalog.storedCropHashes(algorithm: ContentHashStage.algorithm)
        let descriptors = try catalog.storedDescriptors(modelFingerprint: descriptorFingerprint)
        return assemble(files, images, crops, descriptors)
    }

    /// Content-keyed features laid out by file index.
    private static func assemble(_ files: [CurationFile], _ images: [String: ImageHashes], _ crops: [String: UInt64],
                                 _ descriptors: [String: FaceDescriptor]) -> CurationFeatures {
        CurationFeatures(
            imageHashes: files.map { images[$0.sha256] },
            faceHashes: files.map { $0.face.flatMap { crops[$0.hashCropSHA] } },
            descriptors: files.map { $0.face.flatMap { descriptors[$0.descriptorCropSHA] } })
    }

    /// Runs one batch, worker k taking jobs k, k + w, …; each worker uses only its own network.
    private func run(_ batch: [Job], workers w: Int, nets: [DescriptorModel]) -> [[Output]] {
        // Workers write disjoint slots and use disjoint networks, which Sendable checking cannot see.
        nonisolated(unsafe) let slots = UnsafeMutableBufferPointer<[Output]?>.allocate(capacity: batch.count)
        nonisolated(unsafe) let nets = nets
        slots.initialize(repeating: nil)
        defer { slots.deinitialize(); slots.deallocate() }
        DispatchQueue.concurrentPerform(iterations: w) { worker in
            var i = worker
            while i < batch.count {
                slots[i] = compute(batch[i], net: nets.isEmpty ? nil : nets[worker])
                i += w
            }
        }
        return slots.map { $0! }
    }

    /// A job's outputs: its feature, and a problem for each path that could not give it (a file
    /// changed since ingest is reported and the next path holding the content is tried).
    private func compute(_ job: Job, net: DescriptorModel?) -> [Output] {
        switch job {
        case .image(let sha, let paths):
            var problems: [Output] = []
            for path in paths {
                do { return problems + [.image(sha, try ContentHashStage.imageHashes(path: path, expectedSHA256: sha))] } catch {
                    problems.append(.problem(path, Self.reason(error)))
                }
            }
            return problems
        case .cropHash(let sha, let relative):
            do { return [.cropHash(sha, try ContentHashStage.cropHash(relative, store: store))] } catch {
                return [.problem(store.url(relative).path, Self.reason(error))]
            }
        case .descriptor(let sha, let face):
            do { return [.descriptor(sha, try DescribeStage.describe(face, model: net!, store: store))] } catch {
                return [.problem(store.url(face.descriptorCrop).path, "descriptor: " + Self.reason(error))]
            }
        }
    }

    /// The reason alone: the problem row already names the location.
    private static func reason(_ error: Error) -> String {
        if case CurationError.artefact(_, let reason) = error { return reason }
        if let problem = error as? ScanProblem { return problem.reason }
        return "\(error)"
    }
}

import Foundation
import PIDiffModel
import PIDiffNative
import PIDiffCatalog

/// `pidiff-data masks`: masks every selected face that has none under the current mask
/// parameters. Workers (one per core, each with its own parser when ONNX is used) read the crops
/// from the store, run the mask stage and store mask512/mask256/e4e input content-addressed; one
/// writer commits.
public struct MaskPipeline: Sendable {
    public struct Summary: Codable, Sendable {
        public var runID: Int64
        public var fingerprint: String
        public var masked: Int
        public var failed: Int
        /// Faces whose crops could not be read; masked by a later run once they are restored.
        public var skipped: Int
        /// The first 1000 flagged or skipped faces with their reasons (`failed + skipped` in all).
        public var errors: [String]
        /// The cap on `errors`, stated in the JSON.
        public var errorsListedMax = MaskPipeline.errorsListed
        public var seconds: Double
        public var masksPerSecond: Double
        enum CodingKeys: String, CodingKey {
            case runID = "run_id", fingerprint, masked, failed, skipped, errors, errorsListedMax = "errors_listed_max", seconds
            case masksPerSecond = "masks_per_second"
        }
    }

    static let errorsListed = 1000
    public var catalogPath: String
    public var parameters: MaskParameters
    public var workers: Int
    public var progress: ProgressMode

    public init(catalogPath: String, parameters: MaskParameters, workers: Int = 0, progress: ProgressMode = .off) {
        self.catalogPath = catalogPath
        self.parameters = parameters
        self.workers = workers
        self.progress = progress
    }

    public func fingerprint() throws -> String {
        var payload = parameters.fingerprintPayload
        if parameters.method == .onnx, let path = parameters.onnxPath {
            payload["model.onnx"] = try Hashing.sha256Hex(fileAt: URL(fileURLWithPath: path))
        }
        return Hashing.fingerprint(payload)
    }

    public func run() async throws -> Summary {
        let lock = try CatalogLock(catalogPath: catalogPath)
        defer { withExtendedLifetime(lock) {} }
        let catalog = try Catalog(path: catalogPath)
        guard let faceFingerprint = try catalog.currentIngestFingerprint() else {
            throw PipelineError.invalid(catalogPath, "no ingest run yet: run pidiff-data ingest first")
        }
        let fingerprint = try fingerprint()
        let parameters = self.parameters
        _ = try MaskStage(parameters: parameters) // fail fast on a missing or broken ONNX model
        let store = ArtefactStore(root: try catalog.dataRoot())
        let paramsJSON = String(decoding: try JSONEncoder.sorted.encode(parameters), as: UTF8.self)
        let runID = try RunRecorder.begin(catalog, command: "masks", fingerprint: fingerprint, parameters: paramsJSON)
        let writer = MaskWriter(catalog: catalog, runID: runID, faceFingerprint: faceFingerprint, maskFingerprint: fingerprint)
        let jobs = try catalog.pendingMaskJobs(maskFingerprint: fingerprint)
        let start = Date()

        struct Tally: Sendable { var masked = 0, failed = 0, skipped = 0; var errors: [String] = []; var progress: Progress }
        let outcome = await WorkerPipeline.run(
            label: "masks", workers: workers,
            feed: { work, _ in for job in jobs { await work.send(job) } },
            makeWorker: {
                let stage = try MaskStage(parameters: parameters)
                return { job in try Self.process(job, stage: stage, crops: store, output: store) }
            },
            tally: Tally(progress: Progress(stage: "masks", unit: "faces", total: jobs.count, mode: jobs.isEmpty ? .off : progress)),
            record: { tally, r in
                if r.skipped { tally.skipped += 1 } else { tally.masked += 1 }
                tally.progress.update(done: tally.masked + tally.skipped)
                if !r.ok {
                    tally.failed += r.skipped ? 0 : 1
                    if tally.errors.count < Self.errorsListed { tally.errors.append("\(r.job.path): \(r.reason ?? "")") }
                }
            },
            commit: { batch in try await writer.commit(batch) })
        let (masked, failed, skipped, errors): (Int, Int, Int, [String])
        do {
            let tally = try outcome.get()
            tally.progress.finish()
            (masked, failed, skipped, errors) = (tally.masked, tally.failed, tally.skipped, tally.errors)
        } catch {
            // The masks finished before the failure are committed; the run is marked failed so
            // `status` shows why it stopped, and the next run masks the rest.
            let partial = try? outcome.consumed.get()
            try? await writer.finish(status: "failed", counts: ["masked": partial?.masked ?? 0, "failed": partial?.failed ?? 0,
                                                                "skipped": partial?.skipped ?? 0])
            throw error
        }
        try await writer.finish(status: "completed", counts: ["masked": masked, "failed": failed, "skipped": skipped])
        let seconds = Date().timeIntervalSince(start)
        return Summary(runID: runID, fingerprint: fingerprint, masked: masked, failed: failed, skipped: skipped, errors: errors,
                       seconds: seconds, masksPerSecond: seconds > 0 ? Double(masked) / seconds : 0)
    }

    /// Masks one face: crops are read from `crops`, results stored in `output` (the same store in
    /// a run; `verify --repair` stores into a scratch folder to compare before installing).
    static func process(_ job: MaskJob, stage: MaskStage, crops: ArtefactStore, output: ArtefactStore) throws -> MaskResult {
        let method = stage.parameters.method.rawValue
        let crop256: NativeImage, crop512: NativeImage
        do {
            crop256 = try NativeImage.decode(Data(contentsOf: crops.url(job.crop256)), maxPixels: 1 << 24)
            crop512 = try NativeImage.decode(Data(contentsOf: crops.url(job.crop512)), maxPixels: 1 << 24)
        } catch {
            return MaskResult(job: job, method: method, ok: false,
                              reason: "aligned crop missing or unreadable (\(error.localizedDescription)); run pidiff-data verify --repair", skipped: true)
        }
        do {
            let out = try stage.run(crop256: crop256, crop512: crop512, landmarks: job.landmarks, quad: job.quad)
            return MaskResult(job: job, method: method,
                              mask512: try output.put(out.mask512.pngData(), kind: "masks", ext: "png"),
                              mask256: try output.put(out.mask256.pngData(), kind: "masks", ext: "png"),
                              e4eInput: try output.put(out.e4eInput.pngData(), kind: "e4e", ext: "png"),
                              coverage: out.coverage, ok: out.failure == nil, reason: out.failure)
        } catch let failure as StoreError {
            // Not this face's fault: recording it as a failed mask would keep the face from being
            // masked again under this fingerprint once the data root works (see IngestError).
            throw failure
        } catch {
            return MaskResult(job: job, method: method, ok: false, reason: "mask failed: \(error)")
        }
    }
}

import Foundation
import PIDiffModel
import PIDiffNative
import PIDiffCatalog

/// The summary of one ingest run, as `--json` prints it.
public struct IngestSummary: Codable, Sendable {
    public var runID: Int64
    public var status: String
    public var catalog: String
    public var dataRoot: String
    public var fingerprint: String
    public var counts: [String: Int]
    public var seconds: Double
    public var imagesPerSecond: Double
    /// Seconds spent in each stage, summed over workers.
    public var stageSeconds: [String: Double]
    /// The first `problemsListed` problems of this run (all of them are in `run_problems`:
    /// `pidiff-data status`); `problemCount` counts them all.
    public var problems: [String]
    public var problemCount: Int
    public static let problemsListed = 1000
    /// The cap on `problems`, stated in the JSON so that a reader knows the list may be cut.
    public var problemsListedMax = IngestSummary.problemsListed
    /// Things the user should hear (a --data-root the catalog does not use).
    public var warnings: [String]
    /// Sources rejected as a whole ("path: reason"): the run's exit status is a failure.
    public var rejectedSources: [String]
    /// Folders not entered on purpose ("path: reason"): the catalog's own data and outputs.
    public var skippedFolders: [String]
    /// The catalog's ingest fingerprint before this run, when this run's differs: export, balance
    /// and status follow the latest parameters, so photos ingested before are out of the usable set
    /// until ingested again with these (see `replacementWarning`).
    public var replacedFingerprint: String?

    enum CodingKeys: String, CodingKey {
        case runID = "run_id", status, catalog, dataRoot = "data_root", fingerprint, counts, seconds
        case imagesPerSecond = "images_per_second", stageSeconds = "stage_seconds", problems, problemCount = "problem_count"
        case problemsListedMax = "problems_listed_max"
        case rejectedSources = "rejected_sources", skippedFolders = "skipped_folders", warnings
        case replacedFingerprint = "replaced_fingerprint"
    }

    /// What a user needs to hear when the run changed the catalog's parameters, or nil.
    public var replacementWarning: String? {
        replacedFingerprint.map { old in
            "these ingest parameters (fingerprint \(fingerprint.prefix(12))…) differ from the catalog's until now "
                + "(\(old.prefix(12))…): balance, export and status now count only photos ingested with them; "
                + "ingest every source again with these parameters, or run again with the earlier ones"
        }
    }
    /// Items that could not be processed (unreadable files, undecodable images, bad manifest lines).
    public var errorCount: Int {
        ["unreadable", "scan_problems", "decode_error", "not_image", "too_small", "too_large"].reduce(0) { $0 + (counts[$1] ?? 0) }
    }
}

/// `pidiff-data ingest`: scan → read + SHA-256 → decode → detect → landmarks → align → quality →
/// store → catalog. The scanner feeds a bounded channel; one worker per core (each with its own
/// dlib models) takes items from it; results flow through a second bounded channel to the single
/// catalog writer. Channels hold a fixed number of items, so memory stays flat for any input size.
public struct IngestPipeline: Sendable {
    public var sources: [String]
    public var catalogPath: String
    public var config: PipelineConfig
    public var models: ModelStore
    public var dataRoot: String?
    public var progress: ProgressMode
    /// Only this partition's items (the others are neither read nor marked vanished).
    public var partition: Partition?
    /// The Python that reads Parquet sources (pyarrow); nil: found as `TrainerProcess` finds it.
    public var python: String?

    public init(sources: [String], catalogPath: String, config: PipelineConfig = PipelineConfig(),
                models: ModelStore = ModelStore(), dataRoot: String? = nil, progress: ProgressMode = .off, python: String? = nil) {
        self.python = python
        self.sources = sources
        self.catalogPath = catalogPath
        self.config = config
        self.models = models
        self.dataRoot = dataRoot
        self.progress = progress
    }

    /// The parameters fingerprint: stage parameters plus the SHA-256 of every model used.
    public func fingerprint() throws -> String {
        var payload = config.ingest.fingerprintPayload
        payload["model.predictor68"] = try models.fingerprint(ModelStore.predictor68)
        if config.ingest.detector == .mmod { payload["model.mmod"] = try models.fingerprint(ModelStore.mmodDetector) }
        return Hashing.fingerprint(payload)
    }

    /// One detector + landmark model pair as these parameters want it (not thread-safe: one per worker).
    func faceModel() throws -> FaceModel {
        let params = config.ingest
        let mmodPath = params.detector == .mmod ? try models.path(ModelStore.mmodDetector) : nil
        return try FaceModel(detector: params.detector, mmodPath: mmodPath, predictor68Path: try models.path(ModelStore.predictor68))
    }

    /// A model the workers only clone, which reads it: safe from several threads at once.
    struct ClonedOnly: @unchecked Sendable { let model: FaceModel }

    public func run() async throws -> IngestSummary {
        let lock = try CatalogLock(catalogPath: catalogPath)
        defer { withExtendedLifetime(lock) {} }
        let catalog = try Catalog(path: catalogPath)
        let store = ArtefactStore(root: try catalog.dataRoot(preferred: dataRoot))
        var warnings: [String] = []
        if let dataRoot, URL(fileURLWithPath: dataRoot).standardizedFileURL.path != store.root.path {
            warnings.append("--data-root \(dataRoot) is not used: this catalog's data root is \(store.root.path), fixed at its first run")
        }
        let params = config.ingest
        let fingerprint = try fingerprint()
        let previous = try catalog.currentIngestFingerprint()
        // Fail fast on unusable models, before any work is queued. Workers clone this one: their
        // own detectors, one shared landmark model, the files read once.
        let prototype = ClonedOnly(model: try faceModel())

        let paramsJSON = String(decoding: try JSONEncoder.sorted.encode(params), as: UTF8.self)
        let runID = try RunRecorder.begin(catalog, command: "ingest", fingerprint: fingerprint, parameters: paramsJSON)
        let writer = CatalogWriter(catalog: catalog, runID: runID, fingerprint: fingerprint)
        let workerCount = params.workers > 0 ? params.workers : ProcessInfo.processInfo.activeProcessorCount
        // Images of Parquet rows are stored here, content-addressed (Docs/sources.md).
        let scanner = Scanner(crossFaceID: config.crossfaceid, huggingFace: config.huggingface, python: python,
                              sourceCache: store.url(Catalog.sourceCacheFolder).path,
                              skipping: [store.root.path: "the catalog's data root", catalogPath + ".work": "the catalog's work folder"],
                              partition: partition)
        // The counting pass walks every source a second time; only the terminal's ETA needs it.
        let total: Int? = progress == .terminal ? try await countItems(scanner: scanner) : nil
        let start = Date()

        let sources = self.sources, partition = self.partition
        let ledger = ScanLedger()
        let outcome = await WorkerPipeline.run(
            label: "ingest", workers: workerCount,
            feed: { work, results in
                // Scanner + incremental check: unchanged items and scan problems go straight to the writer.
                let reader = IncrementalCheck(catalog: catalog, fingerprint: fingerprint)
                for source in sources {
                    let location = URL(fileURLWithPath: source).standardizedFileURL.path
                    let kind = try? Scanner.kind(of: location)
                    do {
                        try await scanner.scan(source) { event in
                            try Task.checkCancellation() // the writer failed: stop walking
                            switch event {
                            case .problem(let p):
                                if let partition, let kind, !partition.reports(problemAt: p.location, kind: kind, source: location) { break }
                                await results.send(.problem(p))
                            case .skipped(let p): await ledger.skipped(p)
                            case .item(let item):
                                // Seen before the partition is asked: which listing of a path comes
                                // first (two Parquet rows of one image: one stored path) is decided
                                // in source order on every machine, as on one.
                                let conflict = await ledger.saw(item)
                                if let partition, !partition.contains(item) {
                                    await ledger.outsidePartition()
                                } else if let conflict {
                                    if case .some(let p) = conflict { await results.send(.problem(p)) }
                                } else if try reader.isUnchanged(item) { await results.send(.unchanged) } else { await work.send(item) }
                            }
                        }
                        await ledger.completed(source)
                    } catch let problem as ScanProblem {
                        await ledger.rejected(problem)
                        await results.send(.problem(problem))
                    }
                }
            },
            makeWorker: {
                let analyzer = FaceAnalyzer(model: try prototype.model.clone(), parameters: params, store: store)
                let known = IncrementalCheck(catalog: catalog, fingerprint: fingerprint)
                return { item in try Self.process(item, analyzer: analyzer, known: known) }
            },
            tally: Tally(progress: Progress(stage: "ingest", unit: "photos", total: total, mode: progress)),
            record: { tally, result in tally.record(result) },
            commit: { batch in try await writer.commit(batch) })
        var tallied: Tally
        do {
            tallied = try outcome.get()
            tallied.progress.finish()
        } catch {
            // What finished before the failure is committed (each finished result is whole: its
            // crops were stored first); the run is marked failed so `status` shows why it stopped.
            try? await writer.finish(status: "failed", counts: (try? outcome.consumed.get())?.counts ?? [:])
            throw error
        }

        // Photos the sources no longer hold leave the usable set (their rows and crops stay).
        var counts = tallied.counts
        if partition != nil { counts["other_partitions"] = await ledger.otherPartitions }
        if params.vanished == .mark {
            let vanished = try await writer.markVanished(sources: await ledger.completedSources, seen: await ledger.seenPaths)
            if vanished > 0 { counts["vanished"] = vanished }
        }
        let seconds = Date().timeIntervalSince(start)
        try await writer.finish(status: "completed", counts: counts)
        let processed = (tallied.counts["analysed"] ?? 0)
        return IngestSummary(runID: runID, status: "completed", catalog: catalogPath, dataRoot: store.root.path,
                             fingerprint: fingerprint, counts: counts, seconds: seconds,
                             imagesPerSecond: seconds > 0 ? Double(processed) / seconds : 0,
                             stageSeconds: tallied.timings.asDictionary, problems: tallied.problems, problemCount: tallied.problemCount,
                             warnings: warnings, rejectedSources: await ledger.rejectedSources, skippedFolders: await ledger.skippedFolders,
                             replacedFingerprint: previous.flatMap { $0 == fingerprint ? nil : $0 })
    }

    /// Work for one item on a worker: read + hash, then reuse a known result or analyse.
    static func process(_ item: ScanItem, analyzer: FaceAnalyzer, known: IncrementalCheck) throws -> IngestResult {
        var timings = StageTimings()
        let bytes: FileBytes
        do {
            bytes = try measure(&timings.read) { try ReadStage.read(item.path) }
        } catch let problem as ScanProblem {
            let stat = try? ReadStage.stat(item.path).get()
            return .unreadable(item, stat, reason: problem.reason)
        } catch {
            return .unreadable(item, nil, reason: "\(error)")
        }
        let info = IngestResult.FileInfo(sha256: bytes.sha256, byteSize: bytes.byteSize, mtimeNs: bytes.mtimeNs)
        if try known.hasResult(sha256: bytes.sha256) { return .reused(item, info) }
        do {
            let analysis = try analyzer.analyse(bytes, timings: &timings)
            return .analysed(item, info, analysis, timings)
        } catch let failure as StoreError {
            // The data root is at fault (read-only, full, gone), not the image: every later image
            // would fail the same way, and a per-image error would be recorded as this content's
            // result under the fingerprint, so a later run with a working data root would skip it.
            throw IngestError.store(item.path, failure)
        } catch {
            // A failure inside detection/alignment is about this image, not the run.
            let analysis = ImageAnalysis(sha256: bytes.sha256, byteSize: bytes.byteSize, outcome: .decodeError,
                                         reason: "processing failed: \(error)", facesFound: 0, faces: [])
            return .analysed(item, info, analysis, timings)
        }
    }

    private func countItems(scanner: Scanner) async throws -> Int {
        var n = 0
        for source in sources {
            let location = URL(fileURLWithPath: source).standardizedFileURL.path
            // A Parquet file's footer gives its row count (under a partition, its share, an
            // estimate); scanning it would extract every image.
            if (try? Scanner.kind(of: location)) == .parquet {
                n += await scanner.parquetRowCount(location) / (partition?.count ?? 1)
                continue
            }
            try? await scanner.scan(source) { event in
                if case .item(let item) = event, partition?.contains(item) ?? true { n += 1 }
            }
        }
        return n
    }

}

public enum IngestError: Error, CustomStringConvertible {
    case store(String, StoreError)
    public var description: String {
        switch self {
        case .store(let photo, let failure):
            return "ingest stopped at \(photo): \(failure) (the data root must be writable and have free space; "
                + "results finished before this photo are kept; run ingest again once it is fixed)"
        }
    }
}

/// Read-side questions the scanner and workers ask the catalog (through the pool's readers).
struct IncrementalCheck: Sendable {
    let catalog: Catalog
    let fingerprint: String

    /// Same path, size, mtime, identity and metadata, and its content already has a result under
    /// this fingerprint.
    func isUnchanged(_ item: ScanItem) throws -> Bool {
        guard case .success(let stat) = ReadStage.stat(item.path) else { return false }
        return try catalog.isUnchanged(item, stat: stat, fingerprint: fingerprint)
    }

    func hasResult(sha256: String) throws -> Bool { try catalog.hasIngestResult(sha256: sha256, fingerprint: fingerprint) }
}

/// Counts by outcome, stage timings and the progress line, kept by the writer task.
/// What this run's scan saw: every item's path (once), and the sources scanned to the end.
actor ScanLedger {
    // Keyed by bytes: two paths that differ only in Unicode normalisation are two files.
    private var identityOf: [PathKey: (identity: String, location: String)] = [:]
    private(set) var completedSources: [(location: String, kind: SourceKind)] = []
    /// Sources rejected as a whole (not a folder or a manifest, unreadable), with the reason.
    private(set) var rejectedSources: [String] = []

    var seenPaths: Set<PathKey> { Set(identityOf.keys) }

    /// An item of another partition (already `saw`, so never marked vanished): not processed.
    func outsidePartition() { otherPartitions += 1 }
    private(set) var otherPartitions = 0

    func rejected(_ problem: ScanProblem) { rejectedSources.append("\(problem.location): \(problem.reason)") }

    /// Folders not entered on purpose, as "path: reason".
    private(set) var skippedFolders: [String] = []
    func skipped(_ problem: ScanProblem) { skippedFolders.append("\(problem.location): \(problem.reason)") }

    /// nil for a path seen for the first time. A path listed again: `.some(nil)` when it says the
    /// same identity (nothing to do twice), `.some(problem)` when it names another one (the first
    /// listing is kept, and the run says so rather than filing the photo by list order).
    func saw(_ item: ScanItem) -> ScanProblem?? {
        guard let first = identityOf[PathKey(item.path)] else {
            identityOf[PathKey(item.path)] = (item.identity, item.sourceLocation)
            return nil
        }
        if first.identity == item.identity { return .some(nil) }
        return .some(ScanProblem(location: item.path, reason: "listed again as identity \(item.identity.debugDescription) in "
                                 + "\(item.sourceLocation); kept as \(first.identity.debugDescription) from \(first.location)"))
    }

    func completed(_ source: String) {
        let location = URL(fileURLWithPath: source).standardizedFileURL.path
        if let kind = try? Scanner.kind(of: location) { completedSources.append((location, kind)) }
    }
}

struct Tally {
    var done = 0
    var counts: [String: Int] = [:]
    var timings = StageTimings()
    /// The first `IngestSummary.problemsListed` problems, and how many there were in all.
    var problems: [String] = []
    var problemCount = 0
    var progress: Progress

    mutating func record(_ result: IngestResult) {
        switch result {
        case .problem(let p):
            counts["scan_problems", default: 0] += 1
            note("\(p.location): \(p.reason)")
            return
        case .unchanged:
            counts["unchanged", default: 0] += 1
        case .reused:
            counts["reused", default: 0] += 1
        case .unreadable(let item, _, let reason):
            counts["unreadable", default: 0] += 1
            note("\(item.problemLocation): \(reason)")
        case .analysed(let item, _, let a, let t):
            counts["analysed", default: 0] += 1
            counts[a.outcome.rawValue, default: 0] += 1
            counts["faces_recorded", default: 0] += a.faces.count
            if a.faces.contains(where: { $0.selected && $0.quality.passed == false }) { counts["quality_failed", default: 0] += 1 }
            if a.outcome != .ok && a.outcome != .noFace { note("\(item.problemLocation): \(a.outcome.rawValue): \(a.reason ?? "")") }
            timings.add(t)
        }
        done += 1
        progress.update(done: done)
    }

    private mutating func note(_ line: String) {
        problemCount += 1
        if problems.count < IngestSummary.problemsListed { problems.append(line) }
    }
}




import Foundation
import PIDiffModel
import PIDiffNative
import PIDiffCatalog

/// The summary of one curate run, as `--json` prints it.
public struct CurationSummary: Codable, Sendable {
    public var runID: Int64
    public var fingerprint: String
    public var files: Int
    /// Features computed by this run (0 on a re-run with no new content).
    public var computed: [String: Int]
    /// Features reused from the catalog.
    public var reused: [String: Int]
    public var decisions: [String: Int]
    public var aliasesRecorded: Int
    public var problems: [String]
    public var seconds: Double

    enum CodingKeys: String, CodingKey {
        case runID = "run_id", fingerprint, files, computed, reused, decisions, aliasesRecorded = "aliases_recorded", problems, seconds
    }
}

/// `pidiff-data curate`: features (pixel hash, pHashes, identity descriptors) for every photo that
/// lacks them under the current parameters — computed once per content, stored, never recomputed —
/// then duplicates, identity purity and same-person candidates, recorded as one run's decisions.
/// Decisions are a pure function of the stored features and the parameters, so they are re-derived
/// in full each run (seconds at a million photos); only new photos cost feature work.
public struct CurationPipeline: Sendable {
    public var catalogPath: String
    public var config: PipelineConfig
    public var models: ModelStore
    public var applyMerges: Bool
    public var progress: ProgressMode

    public init(catalogPath: String, config: PipelineConfig = PipelineConfig(), models: ModelStore = ModelStore(),
                applyMerges: Bool = false, progress: ProgressMode = .off) {
        self.catalogPath = catalogPath
        self.config = config
        self.models = models
        self.applyMerges = applyMerges
        self.progress = progress
    }

    /// `curate --reset`: drops every decision and alias; features and ingest data stay.
    public static func reset(catalogPath: String) throws -> (decisions: Int, aliases: Int) {
        let lock = try CatalogLock(catalogPath: catalogPath)
        defer { withExtendedLifetime(lock) {} }
        return try CurationWriter.reset(try Catalog(path: catalogPath))
    }

    public func run() async throws -> CurationSummary {
        let lock = try CatalogLock(catalogPath: catalogPath)
        defer { withExtendedLifetime(lock) {} }
        let start = Date()
        let params = config.curate
        try params.validate()
        let catalog = try Catalog(path: catalogPath)
        guard let ingestFingerprint = try catalog.currentIngestFingerprint() else { throw CurationError.noIngest(catalogPath) }
        let store = ArtefactStore(root: try catalog.dataRoot())
        let descriptorPath = try models.path(ModelStore.faceDescriptor)
        let descriptorFingerprint = try DescribeStage.fingerprint(models: models)
        _ = try DescriptorModel(path: descriptorPath) // fail fast on an unusable model

        var payload = params.fingerprintPayload
        payload["ingest_fingerprint"] = ingestFingerprint
        payload["descriptor_fingerprint"] = descriptorFingerprint
        payload["hash_algorithm"] = ContentHashStage.algorithm
        let fingerprint = Hashing.fingerprint(payload)
        let paramsJSON = String(decoding: try JSONEncoder.sorted.encode(params), as: UTF8.self)
        let runID = try RunRecorder.begin(catalog, command: "curate", fingerprint: fingerprint, parameters: paramsJSON)
        let writer = CurationWriter(catalog: catalog, runID: runID)
        let workers = params.workers > 0 ? params.workers : ProcessInfo.processInfo.activeProcessorCount

        do {
            // A photo changed or gone since ingest would be judged on stale features (and could be
            // kept over an intact copy): it sits this run out until ingest has seen it again.
            var stale: [String] = []
            let files = try catalog.curationInputs(ingestFingerprint: ingestFingerprint).filter { f in
                guard let size = f.byteSize, let mtime = f.mtimeNs else { return true }
                switch ReadStage.stat(f.path) {
                case .success(let st) where st.byteSize == size && st.mtimeNs == mtime: return true
                case .success: stale.append("\(f.path): changed since ingest; left out of this curation, re-run pidiff-data ingest")
                case .failure(let problem): stale.append("\(f.path): \(problem.reason) since ingest; left out of this curation, re-run pidiff-data ingest")
                }
                return false
            }
            let featureStage = CurationFeatureStage(store: store, descriptorModelPath: descriptorPath, workers: workers,
                                                    progress: progress)
            let (features, work) = try await featureStage.features(
                for: files, catalog: catalog, writer: writer, descriptorFingerprint: descriptorFingerprint)

            let duplicates = DuplicateFinder(parameters: params, workers: workers).find(files, features)
            let purity = try IdentityPurity(threshold: params.impostorThreshold)
                .evaluate(files, kept: duplicates.kept, descriptors: features.descriptors)
            let samePerson = SamePerson(threshold: params.samePersonThreshold)
            let candidates = try samePerson.candidates(purity.profiles, descriptors: features.descriptors)
            let decisions = duplicates.decisions + purity.decisions + samePerson.decisions(candidates, files: files)
            // Merges a person accepted (curate override --accept-merge) are applied on every run.
            // The latest accepted merge of an identity counts.
            var acceptedByIdentity: [Int64: IdentityAlias] = [:]
            for m in try catalog.acceptedMerges() {
                acceptedByIdentity[m.identityID] = IdentityAlias(identityID: m.identityID, canonicalIdentityID: m.canonicalIdentityID, score: 0, reason: m.reason)
            }
            let accepted = acceptedByIdentity.values.sorted { $0.identityID < $1.identityID }
            // A proposal never touches an identity a person decided about: not one merged by a
            // person (their merge wins, even over an alias an earlier run proposed), nor one a
            // person merged others into (it stays canonical: aliases are one level deep).
            let decided = Set(accepted.map(\.identityID)).union(accepted.map(\.canonicalIdentityID))
            let proposed = (applyMerges ? samePerson.aliases(candidates) : [])
                .filter { !decided.contains($0.identityID) && !Set(accepted.map(\.identityID)).contains($0.canonicalIdentityID) }
            let aliases = accepted + proposed
            try await writer.recordDecisions(decisions, accepted: accepted, proposed: proposed)

            var decisionCounts: [String: Int] = [:]
            for d in decisions { decisionCounts[d.kind.rawValue, default: 0] += 1 }
            var counts = decisionCounts
            counts["files"] = files.count
            if !stale.isEmpty { counts["changed_since_ingest"] = stale.count }
            counts["near_candidate_pairs"] = duplicates.nearCandidatePairs
            counts["near_rejected_by_descriptor_guard"] = duplicates.nearRejectedByGuard
            for (k, v) in work.computed { counts["computed_\(k)"] = v }
            try await writer.finish(status: "completed", counts: counts)
            return CurationSummary(runID: runID, fingerprint: fingerprint, files: files.count, computed: work.computed,
                                   reused: work.reused, decisions: decisionCounts, aliasesRecorded: aliases.count,
                                   problems: stale + work.problems, seconds: Date().timeIntervalSince(start))
        } catch {
            try? await writer.finish(status: "failed", counts: [:])
            throw error
        }
    }
}

/// `curate override`: a person's decision recorded over curation's, under the catalog lock.
public enum CurationOverrides {
    public static func record(_ override: CurationOverride, catalogPath: String) throws {
        let lock = try CatalogLock(catalogPath: catalogPath)
        defer { withExtendedLifetime(lock) {} }
        var o = override
        if let path = o.path { o.path = URL(fileURLWithPath: path).standardizedFileURL.path }
        o.identity = o.identity.map(IdentityName.normalized)
        o.canonicalIdentity = o.canonicalIdentity.map(IdentityName.normalized)
        try Catalog(path: catalogPath).recordOverride(o)
    }
}

import Foundation
import PIDiffModel
import PIDiffNative
import PIDiffCatalog

/// What `pidiff-data verify` found.
public struct VerifyReport: Encodable, Sendable {
    /// An artefact a row refers to that is not there, or whose bytes no longer hash to its name.
    public struct ArtefactProblem: Encodable, Sendable {
        public var path: String
        public var problem: String
        /// The rows naming it, e.g. "faces.crop256 of <sha256>#0".
        public var referencedBy: [String]
        var references: [ArtefactReference]
        enum CodingKeys: String, CodingKey { case path, problem, referencedBy = "referenced_by" }
        init(path: String, problem: String, references: [ArtefactReference]) {
            self.path = path
            self.problem = problem
            self.references = references
            referencedBy = references.map(\.owner)
        }
    }

    /// One artefact `--repair` tried to re-derive.
    public struct Repair: Encodable, Sendable, Equatable {
        public var path: String
        public var repaired: Bool
        public var detail: String
    }

    public var catalog: String
    public var dataRoot: String
    /// `PRAGMA integrity_check` rows (empty when sound).
    public var integrity: [String]
    /// `PRAGMA foreign_key_check` rows (empty when every reference has its parent).
    public var foreignKeys: [String]
    /// Distinct artefact paths the catalog refers to, each checked for existence and hash.
    public var artefactsChecked: Int
    public var missing: [ArtefactProblem]
    public var mismatched: [ArtefactProblem]
    /// Files under the data root no row refers to (relative paths). A killed run leaves these by
    /// design (crops are stored before their rows commit), so they are listed but are not errors.
    public var orphans: [String]
    /// Files under `context/`: export's context views and their masks, derived from the source
    /// photos and masks and named by their inputs, remade by the next context export if removed.
    /// No row names them, but they are not orphans.
    public var contextViews: Int
    /// Filled by `--repair`; the other fields then describe the catalog after repair.
    public var repairs: [Repair]

    /// Sound file, every reference resolved, every artefact intact.
    public var clean: Bool { integrity.isEmpty && foreignKeys.isEmpty && missing.isEmpty && mismatched.isEmpty }

    enum CodingKeys: String, CodingKey {
        case catalog, dataRoot = "data_root", integrity, foreignKeys = "foreign_keys", artefactsChecked = "artefacts_checked"
        case missing, mismatched, orphans, contextViews = "context_views", repairs, clean
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(catalog, forKey: .catalog)
        try c.encode(dataRoot, forKey: .dataRoot)
        try c.encode(integrity, forKey: .integrity)
        try c.encode(foreignKeys, forKey: .foreignKeys)
        try c.encode(artefactsChecked, forKey: .artefactsChecked)
        try c.encode(missing, forKey: .missing)
        try c.encode(mismatched, forKey: .mismatched)
        try c.encode(orphans, forKey: .orphans)
        try c.encode(contextViews, forKey: .contextViews)
        try c.encode(repairs, forKey: .repairs)
        try c.encode(clean, forKey: .clean)
    }
}

/// `pidiff-data verify`: the SQLite file is sound, every artefact a row names exists under the
/// data root with the content its name (SHA-256) promises, and what no row names is listed.
/// With `repair`, missing and corrupt crops and masks are re-derived from their sources by the
/// stage that made them, under the recorded parameters, and installed only when the re-derived
/// bytes hash to the recorded name (the stages are deterministic, so anything else means the
/// source, the models or the code changed, and the artefact is reported as not repairable).
public struct CatalogVerifier: Sendable {
    public var catalogPath: String
    public var models: ModelStore
    /// How hashing the artefacts reports progress on stderr (artefacts checked of those named).
    public var progress: ProgressMode

    public init(catalogPath: String, models: ModelStore = ModelStore(), progress: ProgressMode = .off) {
        self.catalogPath = catalogPath
        self.models = models
        self.progress = progress
    }

    public func run(repair: Bool = false) throws -> VerifyReport {
        guard FileManager.default.fileExists(atPath: catalogPath) else { throw CatalogError.open(catalogPath, "no such catalog") }
        let catalog = try Catalog(path: catalogPath)
        let before = try check(catalog)
        guard repair, !(before.missing.isEmpty && before.mismatched.isEmpty) else { return before }
        // Repair writes artefacts: keep ingest and masks runs out meanwhile.
        let lock = try CatalogLock(catalogPath: catalogPath)
        defer { withExtendedLifetime(lock) {} }
        let repairer = ArtefactRepairer(catalog: catalog, store: ArtefactStore(root: try catalog.dataRoot()), models: models)
        let repairs = try repairer.repair(before.missing + before.mismatched)
        var after = try check(catalog)
        after.repairs = repairs
        return after
    }

    func check(_ catalog: Catalog) throws -> VerifyReport {
        let root = try catalog.dataRoot()
        let references = Dictionary(grouping: try catalog.artefactReferences(), by: \.path)
        var missing: [VerifyReport.ArtefactProblem] = [], mismatched: [VerifyReport.ArtefactProblem] = []
        var progress = Progress(stage: "verify", unit: "artefacts", total: references.count, mode: references.isEmpty ? .off : self.progress)
        defer { progress.finish() }
        for (n, (path, refs)) in references.sorted(by: { $0.key < $1.key }).enumerated() {
            defer { progress.update(done: n + 1) }
            let url = root.appendingPathComponent(path)
            guard FileManager.default.fileExists(atPath: url.path) else {
                missing.append(.init(path: path, problem: "missing: \(url.path)", references: refs))
                continue
            }
            let expected = url.deletingPathExtension().lastPathComponent
            do {
                let actual = try Hashing.sha256Hex(fileAt: url)
                if actual != expected {
                    mismatched.append(.init(path: path, problem: "content SHA-256 is \(actual), the name records \(expected)", references: refs))
                }
            } catch {
                mismatched.append(.init(path: path, problem: "cannot read \(url.path): \(error)", references: refs))
            }
        }
        // Images extracted from Parquet rows (`sources/`) are named by file rows, not artefact columns.
        let extractedPrefix = root.path + "/" + Catalog.sourceCacheFolder + "/"
        let extracted = Set(try catalog.filePaths(withPrefix: extractedPrefix).map { String($0.dropFirst(root.path.count + 1)) })
        let unnamed = Self.files(under: root).filter { references[$0] == nil && !extracted.contains($0) }
        let context = unnamed.filter { $0.hasPrefix(ShardExporter.contextFolder + "/") }
        return VerifyReport(catalog: catalogPath, dataRoot: root.path, integrity: try catalog.integrityProblems(),
                            foreignKeys: try catalog.foreignKeyProblems(), artefactsChecked: references.count,
                            missing: missing, mismatched: mismatched,
                            orphans: unnamed.filter { !$0.hasPrefix(ShardExporter.contextFolder + "/") }, contextViews: context.count, repairs: [])
    }

    /// Regular files below `root`, as sorted paths relative to it.
    static func files(under root: URL) -> [String] {
        let base = root.standardizedFileURL.resolvingSymlinksInPath().path
        guard let walker = FileManager.default.enumerator(at: URL(fileURLWithPath: base), includingPropertiesForKeys: [.isRegularFileKey]) else {
            return []
        }
        var out: [String] = []
        for case let url as URL in walker where (try? url.resourceValues(forKeys: [.isRegularFileKey]))?.isRegularFile == true {
            let path = url.standardizedFileURL.resolvingSymlinksInPath().path
            if path.hasPrefix(base + "/") { out.append(String(path.dropFirst(base.count + 1))) }
        }
        return out.sorted()
    }
}

/// Re-derives artefacts by re-running the stage that made them on a scratch store, and installs
/// a result only when its bytes hash to the recorded name.
struct ArtefactRepairer {
    let catalog: Catalog
    let store: ArtefactStore
    let models: ModelStore

    func repair(_ problems: [VerifyReport.ArtefactProblem]) throws -> [VerifyReport.Repair] {
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("pidiff-repair-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: scratch) }
        let output = ArtefactStore(root: scratch)
        // Every (path, row) needing repair; crops first, since masks are made from the crops.
        let wanted = problems.flatMap { p in p.references.map { ($0, p.path) } }
        let crops = Dictionary(grouping: wanted.filter { $0.0.maskFingerprint == nil }) { "\($0.0.sha256) \($0.0.faceFingerprint)" }
        let masks = Dictionary(grouping: wanted.filter { $0.0.maskFingerprint != nil }) {
            "\($0.0.sha256) \($0.0.faceFingerprint) \($0.0.faceIndex) \($0.0.maskFingerprint!)"
        }
        var outcome: [String: VerifyReport.Repair] = [:]
        func record(_ path: String, _ result: Result<String, Error>) {
            // A path shared by several rows is repaired once; the first failure explains it.
            switch result {
            case .success(let detail): outcome[path] = outcome[path] ?? .init(path: path, repaired: true, detail: detail)
            case .failure(let error): if outcome[path]?.repaired != true { outcome[path] = .init(path: path, repaired: false, detail: "\(error)") }
            }
        }
        for (_, group) in crops.sorted(by: { $0.key < $1.key }) {
            let ref = group[0].0
            let derived = Result { try rederiveCrops(sha256: ref.sha256, fingerprint: ref.faceFingerprint, into: output) }
            for (r, path) in group {
                record(path, derived.flatMap { faces in
                    let size = r.column == "faces.crop512" ? 512 : 256
                    return Result { try install(path, regenerated: faces[r.faceIndex]?[size], from: output, how: "re-derived from \(faces.source)") }
                })
            }
        }
        for (_, group) in masks.sorted(by: { $0.key < $1.key }) {
            let ref = group[0].0
            let derived = Result { try rederiveMask(ref, into: output) }
            for (r, path) in group {
                record(path, derived.flatMap { mask in
                    let regenerated = r.column == "masks.mask512" ? mask.mask512 : r.column == "masks.mask256" ? mask.mask256 : mask.e4eInput
                    return Result { try install(path, regenerated: regenerated, from: output, how: "re-derived by the mask stage") }
                })
            }
        }
        return outcome.values.sorted { $0.path < $1.path }
    }

    /// Crops of every selected face of one image, as ingest made them: face index → size → path in `output`.
    struct DerivedCrops {
        var source: String
        var crops: [Int: [Int: String]]
        subscript(face: Int) -> [Int: String]? { crops[face] }
    }

    private func rederiveCrops(sha256: String, fingerprint: String, into output: ArtefactStore) throws -> DerivedCrops {
        guard let json = try catalog.runParameters(command: "ingest", fingerprint: fingerprint) else {
            throw RepairError.cannot("no ingest run recorded under fingerprint \(fingerprint)")
        }
        let parameters = try IngestParameters.recorded(json)
        var config = PipelineConfig()
        config.ingest = parameters
        let pipeline = IngestPipeline(sources: [], catalogPath: catalog.path, config: config, models: models)
        let now = try pipeline.fingerprint()
        guard now == fingerprint else {
            throw RepairError.cannot("the models or the ingest algorithm changed since (fingerprint now \(now), recorded \(fingerprint))")
        }
        let candidates = try catalog.sourcePaths(sha256: sha256)
        guard let (path, bytes) = candidates.lazy.compactMap({ p in (try? ReadStage.read(p)).flatMap { $0.sha256 == sha256 ? (p, $0) : nil } }).first else {
            throw RepairError.cannot("no source file still holds image \(sha256) (catalogued paths: \(candidates.joined(separator: ", ")))")
        }
        let model = try pipeline.faceModel()
        var timings = StageTimings()
        let analysis = try FaceAnalyzer(model: model, parameters: parameters, store: output).analyse(bytes, timings: &timings)
        return DerivedCrops(source: path, crops: Dictionary(uniqueKeysWithValues: analysis.faces.map { ($0.index, $0.crops) }))
    }

    private func rederiveMask(_ ref: ArtefactReference, into output: ArtefactStore) throws -> MaskResult {
        let maskFingerprint = ref.maskFingerprint!
        guard let json = try catalog.runParameters(command: "masks", fingerprint: maskFingerprint) else {
            throw RepairError.cannot("no masks run recorded under fingerprint \(maskFingerprint)")
        }
        let parameters = try JSONDecoder().decode(MaskParameters.self, from: Data(json.utf8))
        let now = try MaskPipeline(catalogPath: catalog.path, parameters: parameters).fingerprint()
        guard now == maskFingerprint else {
            throw RepairError.cannot("the mask parameters' model or algorithm changed since (fingerprint now \(now), recorded \(maskFingerprint))")
        }
        guard let job = try catalog.maskJob(sha256: ref.sha256, faceFingerprint: ref.faceFingerprint, faceIndex: ref.faceIndex) else {
            throw RepairError.cannot("face \(ref.sha256)#\(ref.faceIndex) has no crops to mask")
        }
        let result = try MaskPipeline.process(job, stage: try MaskStage(parameters: parameters), crops: store, output: output)
        if result.mask512 == nil, let reason = result.reason { throw RepairError.cannot(reason) }
        return result
    }

    /// Moves a re-derived artefact into the data root when it is the recorded content.
    private func install(_ path: String, regenerated: String?, from output: ArtefactStore, how: String) throws -> String {
        guard let regenerated else { throw RepairError.cannot("re-running the stage produced no such artefact") }
        guard regenerated == path else {
            throw RepairError.cannot("re-derived content differs (\(URL(fileURLWithPath: regenerated).lastPathComponent)); the source or code changed")
        }
        let data = try Data(contentsOf: output.url(regenerated))
        let target = store.url(path)
        // A corrupt file under the name would make put() keep it (same name = same content).
        if FileManager.default.fileExists(atPath: target.path) { try FileManager.default.removeItem(at: target) }
        let components = path.split(separator: "/")
        let written = try store.put(data, kind: String(components[0]), ext: URL(fileURLWithPath: path).pathExtension)
        guard written == path else { throw RepairError.cannot("stored under \(written), expected \(path)") }
        return how
    }
}

enum RepairError: Error, CustomStringConvertible {
    case cannot(String)
    var description: String {
        switch self { case .cannot(let reason): return "cannot repair: \(reason)" }
    }
}

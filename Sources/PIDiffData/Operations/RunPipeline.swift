import Foundation
import Logging

/// The `run:` section of a pipeline file: which stages `pidiff-data run` executes, in order, on
/// which catalog and sources. Strings may use `${VAR}` (environment) and a leading `~`.
public struct RunSpec: Codable, Equatable, Sendable {
    public enum Stage: String, Codable, Sendable, CaseIterable {
        case ingest, curate, masks, labels, balanceReport = "balance_report", select, export, encode, train, sample
    }
    public struct Select: Codable, Equatable, Sendable {
        public var name: String
        public var identities: Int
        public var imagesPerIdentity: Int = 6
        public var referenceImages: Int = 1
        public var seed: Int = 0
        enum CodingKeys: String, CodingKey, CaseIterable { case name, identities, imagesPerIdentity = "images_per_identity", referenceImages = "reference_images", seed }
        public init(from decoder: Decoder) throws {
            try refuseUnknownKeys(decoder, CodingKeys.self)
            let c = try decoder.container(keyedBy: CodingKeys.self)
            name = try c.decode(String.self, forKey: .name)
            identities = try c.decode(Int.self, forKey: .identities)
            imagesPerIdentity = try c.decodeIfPresent(Int.self, forKey: .imagesPerIdentity) ?? 6
            referenceImages = try c.decodeIfPresent(Int.self, forKey: .referenceImages) ?? 1
            seed = try c.decodeIfPresent(Int.self, forKey: .seed) ?? 0
            guard identities >= 1, imagesPerIdentity >= 1, referenceImages >= 0 else {
                throw DecodingError.dataCorruptedError(forKey: .identities, in: c, debugDescription:
                    "select needs identities ≥ 1, images_per_identity ≥ 1 and reference_images ≥ 0")
            }
        }

        /// The drawing parameters in which a stored split (its `parameters` JSON, as `run` or
        /// `balance select` wrote it) differs from these, as `key stored -> wanted`.
        public func differences(fromStored parameters: String) -> [String] {
            let stored = (try? JSONSerialization.jsonObject(with: Data(parameters.utf8))) as? [String: Any] ?? [:]
            let wanted = ["identities": identities, "images_per_identity": imagesPerIdentity,
                          "reference_images": referenceImages, "seed": seed]
            return wanted.keys.sorted().compactMap { key in
                let before = stored[key] as? Int
                return before == wanted[key] ? nil : "\(key) \(before.map(String.init) ?? "unrecorded") -> \(wanted[key]!)"
            }
        }
    }
    public struct Models: Codable, Equatable, Sendable {
        /// Write tiny random SD1.5/e4e models (`pidiff random-model --tiny`) into the work folder:
        /// the whole flow runs without downloaded weights, and outputs say they are random.
        public var tinyRandom: Bool = false
        public var e4e: String?
        public var sd: String?
        enum CodingKeys: String, CodingKey, CaseIterable { case tinyRandom = "tiny_random", e4e, sd }
        public init(from decoder: Decoder) throws {
            try refuseUnknownKeys(decoder, CodingKeys.self)
            let c = try decoder.container(keyedBy: CodingKeys.self)
            tinyRandom = try c.decodeIfPresent(Bool.self, forKey: .tinyRandom) ?? false
            e4e = try c.decodeIfPresent(String.self, forKey: .e4e)
            sd = try c.decodeIfPresent(String.self, forKey: .sd)
        }
    }
    public var catalog: String
    public var sources: [String] = []
    public var stages: [Stage]
    public var work: String?
    public var target: Int = 500
    public var minImages: Int = 6
    public var select: Select?
    public var models: Models?
    public var trainArguments: [String] = []
    /// Training processes (one per GPU) through accelerate; 1 runs `pidiff train` directly.
    public var trainProcesses: Int = 1
    public var samplePrompt: String = "a photo of S* reading in the library"
    public var sampleArguments: [String] = []

    enum CodingKeys: String, CodingKey, CaseIterable {
        case catalog, sources, stages, work, target, minImages = "min_images", select, models
        case trainArguments = "train_arguments", trainProcesses = "train_processes", samplePrompt = "sample_prompt", sampleArguments = "sample_arguments"
    }

    public init(from decoder: Decoder) throws {
        try refuseUnknownKeys(decoder, CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        catalog = try c.decode(String.self, forKey: .catalog)
        sources = try c.decodeIfPresent([String].self, forKey: .sources) ?? []
        stages = try c.decode([Stage].self, forKey: .stages)
        work = try c.decodeIfPresent(String.self, forKey: .work)
        target = try c.decodeIfPresent(Int.self, forKey: .target) ?? 500
        minImages = try c.decodeIfPresent(Int.self, forKey: .minImages) ?? 6
        select = try c.decodeIfPresent(Select.self, forKey: .select)
        models = try c.decodeIfPresent(Models.self, forKey: .models)
        trainArguments = try c.decodeIfPresent([String].self, forKey: .trainArguments) ?? []
        trainProcesses = try c.decodeIfPresent(Int.self, forKey: .trainProcesses) ?? 1
        guard trainProcesses >= 1 else {
            throw DecodingError.dataCorruptedError(forKey: .trainProcesses, in: c, debugDescription: "train_processes must be at least 1")
        }
        samplePrompt = try c.decodeIfPresent(String.self, forKey: .samplePrompt) ?? "a photo of S* reading in the library"
        sampleArguments = try c.decodeIfPresent([String].self, forKey: .sampleArguments) ?? []
    }

    /// `${VAR}` and `~` expansion; an unset variable is an error naming it.
    static func expand(_ s: String) throws -> String {
        var out = s
        let env = ProcessInfo.processInfo.environment
        while let start = out.range(of: "${"), let end = out.range(of: "}", range: start.upperBound..<out.endIndex) {
            let name = String(out[start.upperBound..<end.lowerBound])
            var value = env[name]
            if value == nil && name == "PIDIFF_CACHE" { value = ModelStore.cacheDirectory.path }
            guard let value else { throw PipelineError.invalid("run", "environment variable \(name) is not set") }
            out.replaceSubrange(start.lowerBound..<end.upperBound, with: value)
        }
        if out.hasPrefix("~/") { out = (env["HOME"] ?? NSHomeDirectory()) + out.dropFirst(1) }
        return out
    }
}

/// `pidiff-data run`: the declared stages in order, for cron and for the demo. One exclusive run
/// lock per catalog (a second run exits 75 at once), JSON-line logs carrying the run id, and an
/// exit status that tells success (0), partial success (3: some items recorded as errors) and
/// failure (1: a stage stopped).
public struct RunPipeline: Sendable {
    /// `busy`: a stage found the catalog locked by another pidiff-data command (a manual `masks`
    /// while cron runs): the run stops there, like a second run turned away at its lock.
    public enum Outcome: Int32, Sendable { case success = 0, failure = 1, partial = 3, busy = 75 }

    public var config: PipelineConfig
    public var spec: RunSpec
    public var python: String?

    public init(config: PipelineConfig, spec: RunSpec, python: String? = nil) {
        self.config = config
        self.spec = spec
        self.python = python
    }

    public struct StageResult: Codable, Sendable {
        public var stage: String
        public var result: String
    }

    public struct Report: Codable, Sendable {
        public var runID: String
        public var outcome: String
        public var stages: [StageResult]
        public var artefacts: [String: String]
        enum CodingKeys: String, CodingKey { case runID = "run_id", outcome, stages, artefacts }
    }

    public func run() async throws -> (Outcome, Report) {
        let catalog = try RunSpec.expand(spec.catalog)
        let runLock = try CatalogLock(catalogPath: catalog, scope: "run") // whole-run exclusivity (stages take the catalog lock)
        defer { withExtendedLifetime(runLock) {} }
        let runID = UUID().uuidString.lowercased().prefix(12)
        var log = Logger(label: "pidiff-data.run") { JSONLogHandler(label: $0) }
        log[metadataKey: "run_id"] = "\(runID)"
        let work = URL(fileURLWithPath: try RunSpec.expand(spec.work ?? (catalog + ".work")))
        var outcome = Outcome.success
        var stages: [StageResult] = []
        var artefacts: [String: String] = ["catalog": catalog]
        let trainer = TrainerProcess(python: python)
        var e4e = try spec.models?.e4e.map(RunSpec.expand)
        var sd = try spec.models?.sd.map(RunSpec.expand)
        log.info("run started", metadata: ["stages": .array(spec.stages.map { .string($0.rawValue) }), "catalog": "\(catalog)"])

        for stage in spec.stages {
            var stageLog = log
            stageLog[metadataKey: "stage"] = "\(stage.rawValue)"
            let t0 = Date()
            func finishFailed(_ stage: RunSpec.Stage, _ error: any Error) -> (Outcome, Report) {
                stages.append(StageResult(stage: stage.rawValue, result: "failed: \(error)"))
                stageLog.error("stage failed", metadata: ["error": "\(error)"])
                log.info("run finished", metadata: ["outcome": "failure"])
                return (.failure, Report(runID: String(runID), outcome: "failure", stages: stages, artefacts: artefacts))
            }
            do {
                switch stage {
                case .ingest:
                    let s = try await IngestPipeline(sources: try spec.sources.map(RunSpec.expand), catalogPath: catalog, config: config).run()
                    if s.errorCount > 0 { outcome = .partial }
                    if let warning = s.replacementWarning { stageLog.warning("\(warning)") }
                    stageLog.info("ingest done", metadata: ["counts": .dictionary(s.counts.mapValues { .stringConvertible($0) })])
                case .curate:
                    let s = try await CurationPipeline(catalogPath: catalog, config: config).run()
                    stageLog.info("curate done", metadata: ["decisions": .dictionary(s.decisions.mapValues { .stringConvertible($0) })])
                case .masks:
                    let s = try await MaskPipeline(catalogPath: catalog, parameters: config.mask).run()
                    if s.failed > 0 || s.skipped > 0 { outcome = .partial }
                    stageLog.info("masks done", metadata: ["masked": "\(s.masked)", "flagged": "\(s.failed)", "skipped": "\(s.skipped)"])
                case .labels:
                    let labels = try Catalog(path: catalog).identityLabels(mapping: config.labels)
                    stageLog.info("labels resolved", metadata: ["identities": "\(labels.count)",
                                                                "unknown_race": "\(labels.filter { $0.race.value == "unknown" }.count)"])
                case .balanceReport:
                    let inputs = try Catalog(path: catalog).balanceInputs(mapping: config.labels)
                    let cells = BalanceReport.cells(inputs, races: config.labels.raceCategories, ages: config.labels.ageCategories,
                                                    target: spec.target, minImages: spec.minImages, byGender: false)
                    try FileManager.default.createDirectory(at: work, withIntermediateDirectories: true)
                    let report = work.appendingPathComponent("balance.json")
                    try JSONEncoder.sorted.encode(cells).write(to: report)
                    artefacts["balance_report"] = report.path
                    stageLog.info("balance report", metadata: ["path": "\(report.path)", "identities": "\(cells.last?.identities ?? 0)"])
                case .select:
                    guard let sel = spec.select else { throw PipelineError.invalid("run.select", "the select stage needs run.select {name, identities}") }
                    let cat = try Catalog(path: catalog)
                    if let stored = try cat.splitParameters(name: sel.name) {
                        let differences = sel.differences(fromStored: stored)
                        if differences.isEmpty {
                            stageLog.info("split exists; splits are immutable, keeping it", metadata: ["split": "\(sel.name)"])
                        } else {
                            stageLog.warning("split exists, drawn with other select parameters; splits are immutable, so it is kept: give select.name a new name to draw another",
                                             metadata: ["split": "\(sel.name)", "differences": "\(differences.joined(separator: "; "))"])
                        }
                    } else {
                        let lock = try CatalogLock(catalogPath: catalog)
                        let selection = BalancedSelection.select(try cat.balanceInputs(mapping: config.labels), races: config.labels.raceCategories,
                                                                 ages: config.labels.ageCategories, count: sel.identities,
                                                                 imagesPerIdentity: sel.imagesPerIdentity, referenceImages: sel.referenceImages, seed: sel.seed)
                        let params = String(decoding: try JSONEncoder.sorted.encode(sel), as: UTF8.self)
                        try cat.storeSplit(name: sel.name, seed: sel.seed, parameters: params, selection: selection)
                        withExtendedLifetime(lock) {}
                        stageLog.info("split drawn", metadata: ["split": "\(sel.name)", "photos": "\(selection.items.count)"])
                    }
                case .export:
                    let name = try requireSplit()
                    var exporter = ShardExporter(catalogPath: catalog, split: name, outDirectory: work.appendingPathComponent("shards"))
                    exporter.labelMapping = config.labels
                    let index = try exporter.run()
                    artefacts["shards"] = work.appendingPathComponent("shards").path
                    stageLog.info("exported", metadata: ["shards": "\(index.shards.count)", "samples": "\(index.samples)"])
                case .encode:
                    let name = try requireSplit()
                    if spec.models?.tinyRandom == true, e4e == nil || sd == nil {
                        let models = work.appendingPathComponent("models")
                        if !FileManager.default.fileExists(atPath: models.appendingPathComponent("e4e.pt").path) {
                            try trainer.run(["random-model", "--out", models.path, "--tiny"])
                        }
                        e4e = models.appendingPathComponent("e4e.pt").path
                        sd = models.appendingPathComponent("sd").path
                    }
                    guard let e4e, let sd else { throw PipelineError.invalid("run.models", "encode needs models.e4e and models.sd (or tiny_random: true)") }
                    var driver = EncodeDriver(catalogPath: catalog, split: name, outDirectory: work, e4e: e4e, sd: sd)
                    driver.exporter.labelMapping = config.labels // as the export stage wrote them
                    driver.trainer = trainer
                    let s = try driver.run()
                    artefacts["encoded"] = s.encodedDirectory
                    stageLog.info("encoded", metadata: ["samples": "\(s.samples)", "recorded": "\(s.recorded)"])
                case .train:
                    let name = try requireSplit()
                    guard let sd else { throw PipelineError.invalid("run.models", "train needs models.sd (or the encode stage with tiny_random)") }
                    let out = work.appendingPathComponent("train")
                    try trainer.run(["train", "--encoded", work.appendingPathComponent("encoded").path, "--split", name, "--sd", sd,
                                     "--out", out.path, "--shards", work.appendingPathComponent("shards").path] + spec.trainArguments,
                                    processes: spec.trainProcesses)
                    try Catalog(path: catalog).recordTrainingRun(split: name, outDirectory: out.path, started: t0,
                                                                 arguments: spec.trainArguments, processes: spec.trainProcesses)
                    artefacts["weights"] = out.path
                    stageLog.info("trained", metadata: ["out": "\(out.path)"])
                case .sample:
                    guard let sd, let trained = artefacts["weights"] else { throw PipelineError.invalid("run", "sample needs the train stage before it") }
                    // `pidiff train --split` writes one folder per identity: TRAIN/<folder>/pidiff.safetensors.
                    let folders = try FileManager.default.contentsOfDirectory(atPath: trained).sorted().filter {
                        FileManager.default.fileExists(atPath: "\(trained)/\($0)/pidiff.safetensors")
                    }
                    guard !folders.isEmpty else { throw PipelineError.invalid("run", "no trained weights under \(trained)") }
                    let out = work.appendingPathComponent("samples")
                    for folder in folders {
                        try trainer.run(["sample", "--sd", sd, "--weights", "\(trained)/\(folder)/pidiff.safetensors", "--prompt", spec.samplePrompt,
                                         "--out", out.appendingPathComponent(folder).path, "--encoded", work.appendingPathComponent("encoded").path,
                                         "--shards", work.appendingPathComponent("shards").path] + spec.sampleArguments)
                    }
                    artefacts["samples"] = out.path
                    stageLog.info("sampled", metadata: ["out": "\(out.path)"])
                }
                stages.append(StageResult(stage: stage.rawValue, result: String(format: "ok %.1fs", Date().timeIntervalSince(t0))))
            } catch let error as CatalogError {
                guard case .locked = error else { return finishFailed(stage, error) }
                stages.append(StageResult(stage: stage.rawValue, result: "not run: \(error)"))
                stageLog.warning("catalog busy; stopping here, the next run continues", metadata: ["error": "\(error)"])
                log.info("run finished", metadata: ["outcome": "busy"])
                return (.busy, Report(runID: String(runID), outcome: "busy", stages: stages, artefacts: artefacts))
            } catch {
                return finishFailed(stage, error)
            }
        }
        let name = outcome == .success ? "success" : "partial"
        log.info("run finished", metadata: ["outcome": "\(name)"])
        return (outcome, Report(runID: String(runID), outcome: name, stages: stages, artefacts: artefacts))
    }

    private func requireSplit() throws -> String {
        guard let name = spec.select?.name else { throw PipelineError.invalid("run.select", "export/encode/train need run.select.name") }
        return name
    }
}

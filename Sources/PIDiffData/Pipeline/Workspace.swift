import Foundation
import PIDiffModel
import PIDiffNative
import PIDiffCatalog

/// Where a stage works: the catalog and its data root, the work folders between the stages, the
/// pipeline parameters, the face models and the trainer. A stage gets everything it reads or
/// writes from here, so the same stage runs from a command or from `pidiff-data run`.
///
/// Work folders (under `work`, `<catalog>.work` by default):
/// `shards/` (export), `encoded/` (encode), `train/<identity folder>/` (train),
/// `samples/<identity folder>/` (sample), `models/` (tiny random models), `balance.json`.
public struct Workspace: Sendable {
    public var catalogPath: String
    public var work: URL
    public var config: PipelineConfig
    /// dlib models (ingest, curate).
    public var faceModels: ModelStore
    /// The trainer's models (encode, train, sample).
    public var trainerModels: RunSpec.Models?
    /// The data root a new catalog records (`nil`: `<catalog>.data`).
    public var dataRoot: String?
    public var trainer: TrainerProcess
    /// How long stages report progress on stderr.
    public var progress: ProgressMode

    public init(catalogPath: String, work: URL? = nil, config: PipelineConfig = PipelineConfig(),
                faceModels: ModelStore = ModelStore(), trainerModels: RunSpec.Models? = nil, dataRoot: String? = nil,
                trainer: TrainerProcess = TrainerProcess(), progress: ProgressMode = .off) {
        self.catalogPath = catalogPath
        self.work = work ?? URL(fileURLWithPath: catalogPath + ".work")
        self.config = config
        self.faceModels = faceModels
        self.trainerModels = trainerModels
        self.dataRoot = dataRoot
        self.trainer = trainer
        self.progress = progress
    }

    public var shards: URL { work.appendingPathComponent("shards") }
    public var encoded: URL { work.appendingPathComponent("encoded") }
    public var train: URL { work.appendingPathComponent("train") }
    public var samples: URL { work.appendingPathComponent("samples") }
    public var balanceReport: URL { work.appendingPathComponent("balance.json") }

    public func catalog() throws -> Catalog { try Catalog(path: catalogPath) }

    /// Holds the catalog's write lock until the returned lock is released.
    public func lock() throws -> CatalogLock { try CatalogLock(catalogPath: catalogPath) }

    /// The e4e checkpoint: the configured path, or the tiny random one (`tinyRandomModels`).
    public func e4eModel(for stage: String) throws -> String {
        if let path = trainerModels?.e4e { return try RunSpec.expand(path) }
        return try tinyRandomModels(for: stage, missing: "models.e4e").appendingPathComponent("e4e.pt").path
    }

    /// The Stable Diffusion 1.5 folder (diffusers layout): the configured path, or the tiny random one.
    public func sdModel(for stage: String) throws -> String {
        if let path = trainerModels?.sd { return try RunSpec.expand(path) }
        return try tinyRandomModels(for: stage, missing: "models.sd").appendingPathComponent("sd").path
    }

    /// With `tiny_random: true`, tiny random SD1.5 and e4e models written once into `work/models`:
    /// the flow runs without downloaded weights, and every output says its models were random.
    private func tinyRandomModels(for stage: String, missing: String) throws -> URL {
        guard trainerModels?.tinyRandom == true else {
            throw PipelineError.invalid("run.models", "\(stage) needs \(missing) (or tiny_random: true)")
        }
        let folder = work.appendingPathComponent("models")
        if !FileManager.default.fileExists(atPath: folder.appendingPathComponent("e4e.pt").path) {
            try trainer.run(["random-model", "--out", folder.path, "--tiny"])
        }
        return folder
    }
}

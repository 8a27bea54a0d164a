import ArgumentParser
import Foundation
import PIDiffModel
import PIDiffNative
import PIDiffCatalog
import PIDiffData

struct IngestCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ingest",
        abstract: "Scan photo sources, detect and align faces, and record everything in the catalog.",
        discussion: """
            SOURCE is a folder of identity folders (root/<identity>/*.jpg), a JSONL manifest
            (Manifests/manifest.schema.json) or a CrossFaceID training JSONL. Re-running is
            incremental: unchanged files are skipped without being read.

            Examples:
              pidiff-data ingest ~/photos --catalog data/catalog.sqlite
              pidiff-data ingest Manifests/sample.jsonl --catalog data/catalog.sqlite --pipeline Pipelines/default.yaml --json
            """
    )

    @Argument(help: "Photo sources: identity-folder roots, JSONL manifests or CrossFaceID JSONL files.")
    var sources: [String]

    @OptionGroup var catalogOptions: NewCatalogOptions
    var catalog: String { catalogOptions.catalog }

    @Option(help: "Pipeline file (YAML) with stage parameters; defaults apply where it is silent.")
    var pipeline: String?

    @Option(help: "Folder holding the dlib models (default: $PIDIFF_MODELS or $PIDIFF_CACHE/models).")
    var models: String?

    @Option(name: .customLong("data-root"), help: "Where crops are stored (default: <catalog>.data; fixed at the first run).")
    var dataRoot: String?

    @Option(help: "Override the detector: hog or mmod.")
    var detector: DetectorKind?

    @Option(help: "Override the number of workers (default: one per core).")
    var workers: Int?

    @Option(help: "Only partition K of N (1 ≤ K ≤ N) of the items, by a stable hash of each path; `catalog merge` joins the parts (Docs/cluster.md).")
    var partition: String?

    @Flag(help: "Print the run summary as JSON on stdout.")
    var json = false

    @Flag(help: "Exit non-zero when any item could not be processed.")
    var strict = false

    func validate() throws {
        try validateWorkers(workers)
        if let partition, Partition(partition) == nil { throw ValidationError("--partition must be K/N with 1 ≤ K ≤ N, not \(partition)") }
    }

    func run() async throws {
        try await runCommand {
            var workspace = Workspace(catalogPath: catalog, config: try PipelineConfig.load(pipeline.map { URL(fileURLWithPath: $0) }),
                                      faceModels: ModelStore(directory: models.map { URL(fileURLWithPath: $0) }), dataRoot: dataRoot,
                                      progress: .forStandardError)
            if let detector { workspace.config.ingest.detector = detector }
            if let workers { workspace.config.ingest.workers = workers }
            try await execute(IngestStage(sources: sources, partition: partition.flatMap(Partition.init)), in: workspace, json: json, partialFails: strict)
        }
    }
}

extension DetectorKind: ExpressibleByArgument {}

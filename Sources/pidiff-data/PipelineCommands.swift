import ArgumentParser
import Foundation
import PIDiffModel
import PIDiffNative
import PIDiffCatalog
import PIDiffData

struct ExportCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export",
        abstract: "Write a split as WebDataset shards NAME-000000.tar… and NAME.index.json.",
        discussion: """
            Per sample: <key>.png (512 crop), <key>.e4e.png (256 e4e input on white), <key>.mask.png, <key>.json.
            Deterministic, atomic and resumable; see Docs/shard-format.md.
            Example: pidiff-data export --split v1 --out shards/ --catalog data/catalog.sqlite
            """)
    @OptionGroup var catalog: CatalogOptions
    @Option(help: "Split name.") var split: String
    @Option(help: "Output folder.") var out: String
    @OptionGroup var shardOptions: ShardOptions
    @Flag(help: "Print the index as JSON.") var json = false

    func run() async throws {
        try await runCommand {
            let parameters = try shardOptions.parameters(split: split, out: URL(fileURLWithPath: out))
            try await execute(ExportStage(parameters), in: try catalog.workspace(pipeline: shardOptions.pipeline), json: json)
        }
    }
}

/// How a split becomes shards; shared by export and encode, which exports before encoding.
struct ShardOptions: ParsableArguments {
    @Option(help: "identity (an identity's samples stay together) or mixed (seeded shuffle).") var group: String = "identity"
    @Option(name: .customLong("max-shard-bytes"), help: "Shard size limit in bytes (e.g. 1e9).") var maxShardBytes: String = "1e9"
    @Option(help: "Seed of the mixed order.") var seed = 0
    @Option(help: "Pipeline file (labels mapping for the sample JSON).") var pipeline: String?
    @Option(help: "The 512 training image: aligned (the FFHQ crop, default) or context (twice the crop's side: head, shoulders, surroundings).")
    var view: String = "aligned"

    func parameters(split: String, out: URL? = nil) throws -> ExportStage.Parameters {
        guard let grouping = ShardExporter.Grouping(rawValue: group) else { throw ValidationError("--group must be identity or mixed") }
        guard let bytes = Double(maxShardBytes), bytes >= 4096, bytes <= 1e15 else {
            throw ValidationError("--max-shard-bytes must be a number from 4096 to 1e15, not \(maxShardBytes)")
        }
        guard let framing = ShardExporter.View(rawValue: view) else { throw ValidationError("--view must be aligned or context, not \(view)") }
        return ExportStage.Parameters(split: split, grouping: grouping, maxShardBytes: Int(bytes), seed: seed, out: out, view: framing)
    }
}

struct EncodeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "encode",
        abstract: "Export a split if needed and precompute e4e w+ codes and VAE latents with `pidiff encode`.",
        discussion: """
            Encodings are recorded in the catalog keyed on (source SHA-256, preprocessing fingerprint, model
            fingerprint): a second run encodes nothing. Arguments after `--` go to `pidiff encode`.
            Example: pidiff-data encode --split v1 --out work/ --e4e e4e_ffhq_encode.pt --sd sd15/ --catalog data/catalog.sqlite
            """)
    @OptionGroup var catalog: CatalogOptions
    @Option(help: "Split name.") var split: String
    @Option(help: "Work folder: shards/ and encoded/ go here.") var out: String
    @Option(help: "e4e checkpoint (official e4e_ffhq_encode.pt layout).") var e4e: String
    @Option(help: "Stable Diffusion 1.5 folder (diffusers layout).") var sd: String
    @Option(help: "Python with the pidiff package (default: $PIDIFF_PYTHON or .venv/bin/python).") var python: String?
    @OptionGroup(title: "Shards (as for export; the split is exported into OUT/shards with them)") var shardOptions: ShardOptions
    @Option(help: "Encoding processes, one per GPU, started with accelerate; shards are spread over them.") var processes = 1
    @Flag(help: "Print the summary as JSON.") var json = false
    @Argument(parsing: .postTerminator, help: "Extra arguments for `pidiff encode` (given any, pidiff encode always runs).")
    var extra: [String] = []

    func run() async throws {
        try await runCommand {
            var workspace = try catalog.workspace(pipeline: shardOptions.pipeline, work: URL(fileURLWithPath: out), python: python)
            workspace.trainerModels = RunSpec.Models(e4e: e4e, sd: sd)
            guard processes >= 1 else { throw ValidationError("--processes must be at least 1") }
            let parameters = EncodeStage.Parameters(export: try shardOptions.parameters(split: split), arguments: extra, processes: processes)
            try await execute(EncodeStage(parameters), in: workspace, json: json)
        }
    }
}

struct TrainCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Train PIDiff (mapper + Style Cross-Attention) per identity of a split with `pidiff train`.",
        discussion: """
            Hands the split's encoded shards to `pidiff train --split NAME` and records the run in the catalog.
            Arguments after `--` go to `pidiff train` (e.g. -- --steps 600 --group-size 8).
            Example: pidiff-data train --split v1 --encoded work/encoded --sd sd15/ --out runs/v1 --catalog data/catalog.sqlite
            """)
    @OptionGroup var catalog: CatalogOptions
    @Option(help: "Split name.") var split: String
    @Option(help: "Folder of encoded safetensors (from pidiff-data encode).") var encoded: String
    @Option(help: "Stable Diffusion 1.5 folder (diffusers layout).") var sd: String
    @Option(help: "Output folder for weights, checkpoints and loss curves.") var out: String
    @Option(help: "Python with the pidiff package.") var python: String?
    @Option(help: "Training processes, one per GPU, started with accelerate; identity groups are spread over them.")
    var processes = 1
    @Argument(parsing: .postTerminator, help: "Extra arguments for `pidiff train`.") var extra: [String] = []

    func validate() throws {
        guard processes >= 1 else { throw ValidationError("--processes must be at least 1") }
    }

    func run() async throws {
        try await runCommand {
            var workspace = try catalog.workspace(python: python)
            workspace.trainerModels = RunSpec.Models(sd: sd)
            let parameters = TrainStage.Parameters(split: split, arguments: extra, processes: processes,
                                                   encoded: URL(fileURLWithPath: encoded), out: URL(fileURLWithPath: out))
            try await execute(TrainStage(parameters), in: workspace, json: false)
        }
    }
}

struct SampleCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sample",
        abstract: "Pictures from every identity trained into a folder, with `pidiff sample`.",
        discussion: """
            For each TRAIN/<identity folder>/pidiff.safetensors: `pidiff sample` with the prompt, conditioned on the
            identity's reference face from the encoded folder, into OUT/<identity folder>/. Arguments after `--` go
            to `pidiff sample` (e.g. -- --num-images 4 --lambda 0.4).
            Example: pidiff-data sample --catalog data/catalog.sqlite --weights runs/v1 --encoded work/encoded --sd sd15/ --out samples/
            """)
    @OptionGroup var catalog: CatalogOptions
    @Option(help: "Folder of trained identities (from pidiff-data train).") var weights: String
    @Option(help: "Folder of encoded safetensors (from pidiff-data encode).") var encoded: String
    @Option(help: "Stable Diffusion 1.5 folder (diffusers layout).") var sd: String
    @Option(help: "Output folder: one folder of pictures per identity.") var out: String
    @Option(help: "Prompt; S* stands for the identity.") var prompt = "a photo of S* reading in the library"
    @Option(help: "Python with the pidiff package.") var python: String?
    @Argument(parsing: .postTerminator, help: "Extra arguments for `pidiff sample`.") var extra: [String] = []

    func run() async throws {
        try await runCommand {
            var workspace = try catalog.workspace(python: python)
            workspace.trainerModels = RunSpec.Models(sd: sd)
            let parameters = SampleStage.Parameters(prompt: prompt, arguments: extra, weights: URL(fileURLWithPath: weights),
                                                    encoded: URL(fileURLWithPath: encoded), out: URL(fileURLWithPath: out))
            try await execute(SampleStage(parameters), in: workspace, json: false)
        }
    }
}

struct RefsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "refs",
        abstract: "Write a split's reference photos as REFS/<identity>/*.png and REFS/refs.json, the layout `pidiff eval` reads.",
        discussion: "Example: pidiff-data refs --split v1 --out refs/ --catalog data/catalog.sqlite && pidiff eval --refs refs/ ...")
    @OptionGroup var catalog: CatalogOptions
    @Option(help: "Split name.") var split: String
    @Option(help: "Output folder.") var out: String
    @Option(help: "Pipeline file (its labels: mapping, for the labels in refs.json).") var pipeline: String?

    func run() async throws {
        try await runCommand {
            let entries = try ReferenceExport(catalogPath: catalog.catalog, split: split, out: URL(fileURLWithPath: out),
                                              labelMapping: try PipelineConfig.load(pipeline.map { URL(fileURLWithPath: $0) }).labels).run()
            print("\(entries.count) reference photos of \(Set(entries.map(\.identity)).count) identities → \(out) (refs.json lists them)")
        }
    }
}

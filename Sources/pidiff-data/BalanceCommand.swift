import ArgumentParser
import Foundation
import PIDiffModel
import PIDiffNative
import PIDiffCatalog
import PIDiffData

struct BalanceCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "balance",
        abstract: "Where the collection stands against a race × age target, and balanced draws of training splits.",
        subcommands: [BalanceReportCommand.self, BalanceSelectCommand.self])
}

struct BalanceReportCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "report",
        abstract: "Identities and usable images per race × age (and gender), with shares and shortfall against a target.",
        discussion: """
            Usable: readable, face found, quality gates and mask passed, not a duplicate or impostor (latest
            curate run), identity with at least --min-images such photos.
            Example: pidiff-data balance report --catalog data/catalog.sqlite --target 500 --min-images 6 --heatmap balance.png
            """)
    @OptionGroup var catalog: CatalogOptions
    @Option(help: "Pipeline file (its `labels:` mapping).") var pipeline: String?
    @Option(help: "Target number of identities over the known race × age cells.") var target = 500
    @Option(name: .customLong("min-images"), help: "Usable photos an identity needs to count.") var minImages = 6
    @Flag(help: "Split cells by gender.") var byGender = false
    @Flag(help: "JSON: one entry per cell plus a total.") var json = false
    @Flag(help: "CSV: one row per cell plus a total.") var csv = false
    @Option(help: "Write a PNG heatmap of identities per race × age.") var heatmap: String?

    func validate() throws {
        if json && csv { throw ValidationError("choose one of --json and --csv") }
    }

    func run() async throws {
        try await runCommand {
            let stage = BalanceReportStage(target: target, minImages: minImages, byGender: byGender, heatmap: heatmap.map { URL(fileURLWithPath: $0) })
            guard csv else { return try await execute(stage, in: try catalog.workspace(pipeline: pipeline), json: json) }
            let report = try await stage.run(in: try catalog.workspace(pipeline: pipeline))
            report.warnings.forEach(warn)
            BalanceReport.csv(report.json as? [BalanceCell] ?? []).forEach { print($0) }
        }
    }
}

struct BalanceSelectCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "select",
        abstract: "Draw a balanced split: equal identities per race × age cell, best and most varied photos per identity.",
        discussion: "Example: pidiff-data balance select --catalog data/catalog.sqlite --name v1 --identities 500 --images-per-identity 6 --seed 1")
    @OptionGroup var catalog: CatalogOptions
    @Option(help: "Name of the new split (splits are immutable).") var name: String
    @Option(help: "Identities to draw.") var identities: Int
    @Option(name: .customLong("images-per-identity"), help: "Training photos per identity.") var imagesPerIdentity = 6
    @Option(name: .customLong("reference-images"), help: "Reference photos held out per identity.") var referenceImages = 1
    @Option(help: "Seed of the draw.") var seed = 0
    @Option(help: "Pipeline file (its `labels:` mapping).") var pipeline: String?
    @Flag(help: "Print the quotas as JSON.") var json = false

    func validate() throws {
        guard identities >= 1 else { throw ValidationError("--identities must be at least 1") }
        guard imagesPerIdentity >= 1 else { throw ValidationError("--images-per-identity must be at least 1") }
        guard referenceImages >= 0 else { throw ValidationError("--reference-images must be 0 or more") }
        guard SplitName.isValid(name) else { throw ValidationError("\(SplitError.invalidName(name))") }
    }

    func run() async throws {
        try await runCommand {
            let parameters = RunSpec.Select(name: name, identities: identities, imagesPerIdentity: imagesPerIdentity,
                                            referenceImages: referenceImages, seed: seed)
            try await execute(SelectStage(parameters), in: try catalog.workspace(pipeline: pipeline), json: json)
        }
    }
}

struct SplitsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "splits", abstract: "List stored splits, or show one.",
        subcommands: [SplitsListCommand.self, SplitsShowCommand.self, SplitsCreateCommand.self, SplitsAddStyleCommand.self], defaultSubcommand: SplitsListCommand.self)
}

struct SplitsListCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List stored splits.")
    @OptionGroup var catalog: CatalogOptions
    @Flag(help: "Print JSON.") var json = false
    func run() async throws {
        do {
            let splits = try catalog.open().splits()
            if json { try splits.printJSON(); return }
            for s in splits { print("\(s.name)  \(s.createdAt)  seed \(s.seed)  \(s.identities) identities  \(s.train) train  \(s.reference) reference") }
        } catch { fail(error) }
    }
}

struct SplitsShowCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "show", abstract: "One line per selected photo: identity, role, path, sha256.",
                                                    discussion: "Example: pidiff-data splits show v1 --catalog data/catalog.sqlite --json")
    @Argument(help: "Split name.") var name: String
    @OptionGroup var catalog: CatalogOptions
    @Flag(help: "One JSON object per line.") var json = false
    func run() async throws {
        do {
            for item in try catalog.open().splitItems(name) {
                if json {
                    try ["identity": item.identity, "role": item.role, "path": item.path, "sha256": item.sha256].printJSON(pretty: false)
                } else {
                    print("\(item.identity)\t\(item.role)\t\(item.path)")
                }
            }
        } catch { fail(error) }
    }
}

struct SplitsCreateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "create",
        abstract: "A split of named identities, no demographic labels needed: the same photo picks and exclusions as balance select.",
        discussion: """
            Per identity: the best photo is held out as the reference, the training photos are the best then the most
            varied of the rest. An unknown identity, or one with too few usable photos, is an error naming it and the counts.
            Example: pidiff-data splits create friends --identities obama,alex,jon --catalog data/catalog.sqlite
            """)
    @Argument(help: "Name of the new split (splits are immutable).") var name: String
    @Option(help: "Comma-separated identity names.") var identities: String
    @Option(name: .customLong("images-per-identity"), help: "Training photos per identity.") var imagesPerIdentity = 6
    @Option(name: .customLong("reference-images"), help: "Reference photos held out per identity.") var referenceImages = 1
    @Option(help: "Pipeline file (its `labels:` mapping, for the usable-photo rules).") var pipeline: String?
    @OptionGroup var catalog: CatalogOptions
    @Flag(help: "Print the chosen photos as JSON.") var json = false

    func validate() throws {
        guard imagesPerIdentity >= 1 else { throw ValidationError("--images-per-identity must be at least 1") }
        guard referenceImages >= 0 else { throw ValidationError("--reference-images must be 0 or more") }
        guard SplitName.isValid(name) else { throw ValidationError("\(SplitError.invalidName(name))") }
        guard !names.isEmpty else { throw ValidationError("--identities names no identity") }
    }

    /// The names, each once, in the order given.
    var names: [String] {
        var seen = Set<String>()
        return identities.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
            .filter { !$0.isEmpty && seen.insert(IdentityName.normalized($0)).inserted }
    }

    func run() async throws {
        try await runCommand {
            let parameters = NamedSplitStage.Parameters(name: name, identities: names, imagesPerIdentity: imagesPerIdentity,
                                                        referenceImages: referenceImages)
            try await execute(NamedSplitStage(parameters), in: try catalog.workspace(pipeline: pipeline), json: json)
        }
    }
}

struct SplitsAddStyleCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "add-style",
        abstract: "Add a style photo (any person's face) to an identity's training set in a split (paper §3.4.4).",
        discussion: """
            The photo keeps the role `style` through export, encode and train (pidiff train trains the identity on its
            photos plus its style photo; pidiff sample --style-from-split mixes its w+ rows). It is exempt from the
            identity-purity and duplicate exclusions (it is another face on purpose) but needs an aligned crop and a
            passing mask. Example: pidiff-data splits add-style v1 --identity obama --photo photos/biden/biden.jpg
            """)
    @Argument(help: "Split name.") var name: String
    @Option(help: "Identity of the split that trains with the style.") var identity: String
    @Option(help: "Catalogued path of the style photo.") var photo: String?
    @Option(help: "SHA-256 of the style photo's content.") var sha256: String?
    @OptionGroup var catalog: CatalogOptions

    func validate() throws {
        guard (photo == nil) != (sha256 == nil) else { throw ValidationError("give one of --photo and --sha256") }
    }

    func run() async throws {
        try await runCommand {
            let parameters = AddStyleStage.Parameters(split: name, identity: identity, path: photo, sha256: sha256)
            try await execute(AddStyleStage(parameters), in: try catalog.workspace(), json: false)
        }
    }
}

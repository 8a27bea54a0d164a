import ArgumentParser
import Foundation
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

    func run() async throws {
        do {
            let config = try PipelineConfig.load(pipeline.map { URL(fileURLWithPath: $0) })
            let db = try catalog.open()
            let inputs = try db.balanceInputs(mapping: config.labels)
            let unmapped = try db.unmappedManifestLabels(mapping: config.labels)
            if !unmapped.isEmpty {
                let listed = unmapped.prefix(10).map { "\($0.attribute.rawValue) \($0.value.debugDescription) (\($0.identities) identities, \($0.photos) photos)" }
                warn("manifest labels the `labels:` mapping does not place, counted as unknown: " + listed.joined(separator: "; ")
                     + (unmapped.count > 10 ? "; … \(unmapped.count - 10) more" : "") + " (map them in the pipeline file's labels: section)")
            }
            let races = config.labels.raceCategories, ages = config.labels.ageCategories
            let cells = BalanceReport.cells(inputs, races: races, ages: ages, target: target, minImages: minImages, byGender: byGender)
            if let heatmap {
                try OutputPath.write(BalanceReport.heatmap(cells, minImages: minImages, target: target).pngData(), to: URL(fileURLWithPath: heatmap))
            }
            if json {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
                print(String(decoding: try encoder.encode(cells), as: UTF8.self))
            } else if csv {
                print("race,age,gender,identities,images,pct_all,pct_known,shortfall")
                for c in cells {
                    print([c.race, c.age, c.gender, "\(c.identities)", "\(c.images)", String(format: "%.2f", c.pctAll),
                           c.pctKnown.map { String(format: "%.2f", $0) } ?? "", c.shortfall.map(String.init) ?? ""].joined(separator: ","))
                }
            } else {
                func pad(_ s: String, _ n: Int, right: Bool = false) -> String {
                    let fill = String(repeating: " ", count: max(0, n - s.count))
                    return right ? fill + s : s + fill
                }
                print(pad("race", 10) + pad("age", 8) + pad("gender", 8) + pad("identities", 11, right: true) + pad("images", 8, right: true)
                      + pad("% all", 8, right: true) + pad("% known", 9, right: true) + pad("shortfall", 11, right: true))
                for c in cells {
                    print(pad(c.race, 10) + pad(c.age, 8) + pad(c.gender, 8) + pad("\(c.identities)", 11, right: true)
                          + pad("\(c.images)", 8, right: true) + pad(String(format: "%.1f", c.pctAll), 8, right: true)
                          + pad(c.pctKnown.map { String(format: "%.1f", $0) } ?? "-", 9, right: true)
                          + pad(c.shortfall.map(String.init) ?? "-", 11, right: true))
                }
            }
        } catch { fail(error) }
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
        guard ShardExporter.validName(name) else { throw ValidationError("\(SplitError.invalidName(name))") }
    }

    func run() async throws {
        do {
            let config = try PipelineConfig.load(pipeline.map { URL(fileURLWithPath: $0) })
            let lock = try CatalogLock(catalogPath: catalog.catalog)
            let cat = try catalog.open()
            let selection = BalancedSelection.select(try cat.balanceInputs(mapping: config.labels), races: config.labels.raceCategories,
                                                     ages: config.labels.ageCategories, count: identities,
                                                     imagesPerIdentity: imagesPerIdentity, referenceImages: referenceImages, seed: seed)
            let parameters = "{\"identities\":\(identities),\"images_per_identity\":\(imagesPerIdentity),\"reference_images\":\(referenceImages),\"seed\":\(seed)}"
            try cat.storeSplit(name: name, seed: seed, parameters: parameters, selection: selection)
            withExtendedLifetime(lock) {}
            if json { try selection.quotas.printJSON(); return }
            print("split \(name): \(Set(selection.items.map(\.identity)).count) identities, \(selection.items.count) photos")
            for q in selection.quotas {
                let note = q.selected < q.quota ? " (short by \(q.quota - q.selected))" : q.selected > q.quota ? " (+\(q.selected - q.quota) redistributed)" : ""
                print("  \(q.race) × \(q.age): \(q.selected) of quota \(q.quota), \(q.available) available\(note)")
            }
            if selection.shortfall > 0 { print("  \(selection.shortfall) identities could not be drawn from any cell") }
        } catch { fail(error) }
    }
}

struct SplitsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "splits", abstract: "List stored splits, or show one.",
        subcommands: [SplitsListCommand.self, SplitsShowCommand.self], defaultSubcommand: SplitsListCommand.self)
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

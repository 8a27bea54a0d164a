import Foundation
import PIDiffModel
import PIDiffNative
import PIDiffCatalog

public enum BalanceReport {
    /// Cells over `races` × `ages` (plus `unknown` rows/columns where present), by gender when
    /// `byGender`, then a total. An identity counts when it has ≥ `minImages` usable photos;
    /// `images` counts those identities' usable photos. Shortfall: identities missing against an
    /// even share of `target` over the known race × age cells (known cells only).
    public static func cells(_ identities: [BalanceIdentity], races: [String], ages: [String], target: Int, minImages: Int,
                             byGender: Bool) -> [BalanceCell] {
        let qualifying = identities.filter { $0.images.count >= minImages }
        let total = qualifying.count
        let isKnown = { (i: BalanceIdentity) in races.contains(i.race) && ages.contains(i.age) }
        let known = qualifying.filter(isKnown).count
        let perCell = races.isEmpty || ages.isEmpty ? 0 : Int((Double(target) / Double(races.count * ages.count)).rounded(.up))
        let raceRows = races + (qualifying.contains { !races.contains($0.race) } ? ["unknown"] : [])
        let ageCols = ages + (qualifying.contains { !ages.contains($0.age) } ? ["unknown"] : [])
        let genders = byGender ? Array(Set(qualifying.map(\.gender))).sorted() : ["all"]
        var out: [BalanceCell] = []
        for race in raceRows {
            for age in ageCols {
                for gender in genders {
                    let members = qualifying.filter {
                        (races.contains($0.race) ? $0.race : "unknown") == race && (ages.contains($0.age) ? $0.age : "unknown") == age
                            && (gender == "all" || $0.gender == gender)
                    }
                    let knownCell = race != "unknown" && age != "unknown"
                    out.append(BalanceCell(
                        race: race, age: age, gender: gender, identities: members.count, images: members.reduce(0) { $0 + $1.images.count },
                        pctAll: total > 0 ? 100 * Double(members.count) / Double(total) : 0,
                        pctKnown: knownCell ? (known > 0 ? 100 * Double(members.count) / Double(known) : 0) : nil,
                        shortfall: knownCell && gender == "all" ? max(0, perCell - members.count) : nil))
                }
            }
        }
        out.append(BalanceCell(race: "all", age: "all", gender: "all", identities: total, images: qualifying.reduce(0) { $0 + $1.images.count },
                               pctAll: total > 0 ? 100 : 0, pctKnown: total > 0 ? 100 * Double(known) / Double(total) : nil,
                               shortfall: max(0, target - known)))
        return out
    }
}

public enum BalancedSelection {
    /// Deterministic order for a seed: SHA-256 of seed and name.
    static func rank(_ name: String, seed: Int) -> String { Hashing.sha256Hex(Data("\(seed)\u{0}\(name)".utf8)) }

    /// Equal quotas per known race × age cell; cells short of eligible identities hand their
    /// remainder to cells with spare ones, one at a time in seeded order. Within a cell identities
    /// are drawn in seeded order; per identity the photos are picked by `pickImages`.
    public static func select(_ identities: [BalanceIdentity], races: [String], ages: [String], count: Int,
                              imagesPerIdentity: Int, referenceImages: Int, seed: Int) -> SplitSelection {
        // Callers validate; negative counts would only trap in prefix() below.
        let count = max(0, count), imagesPerIdentity = max(0, imagesPerIdentity), referenceImages = max(0, referenceImages)
        let need = imagesPerIdentity + referenceImages
        var cells: [(race: String, age: String, pool: [BalanceIdentity])] = []
        for race in races {
            for age in ages {
                let pool = identities.filter { $0.race == race && $0.age == age && $0.images.count >= need }
                    .sorted { rank($0.name, seed: seed) < rank($1.name, seed: seed) }
                cells.append((race, age, pool))
            }
        }
        guard !cells.isEmpty else { return SplitSelection(quotas: [], items: [], shortfall: count) }
        // Base quotas; the remainder goes to cells in seeded order.
        var quota = [Int](repeating: count / cells.count, count: cells.count)
        let cellOrder = cells.indices.sorted { rank("\(cells[$0].race)|\(cells[$0].age)", seed: seed) < rank("\(cells[$1].race)|\(cells[$1].age)", seed: seed) }
        for i in cellOrder.prefix(count % cells.count) { quota[i] += 1 }
        var take = cells.indices.map { min(quota[$0], cells[$0].pool.count) }
        var missing = count - take.reduce(0, +)
        while missing > 0 {
            let spare = cellOrder.filter { take[$0] < cells[$0].pool.count }
            guard !spare.isEmpty else { break }
            // Give one to the spare cell that is currently smallest, so the draw stays as even as it can.
            let i = spare.min { take[$0] < take[$1] || (take[$0] == take[$1] && cellOrder.firstIndex(of: $0)! < cellOrder.firstIndex(of: $1)!) }!
            take[i] += 1
            missing -= 1
        }
        var items: [SplitSelection.Item] = []
        var quotas: [SplitSelection.Quota] = []
        for (i, cell) in cells.enumerated() {
            quotas.append(.init(race: cell.race, age: cell.age, quota: quota[i], selected: take[i], available: cell.pool.count))
            for identity in cell.pool.prefix(take[i]) {
                let (train, reference) = pickImages(identity.images, train: imagesPerIdentity, reference: referenceImages)
                items += splitItems(identity.name, train: train, reference: reference)
            }
        }
        return SplitSelection(quotas: quotas, items: items, shortfall: missing)
    }

    /// An identity's picks as split items, training photos first.
    static func splitItems(_ identity: String, train: [UsableImage], reference: [UsableImage]) -> [SplitSelection.Item] {
        train.map { .init(identity: identity, role: "train", path: $0.path, sha256: $0.sha256, fileID: $0.fileID) }
            + reference.map { .init(identity: identity, role: "reference", path: $0.path, sha256: $0.sha256, fileID: $0.fileID) }
    }

    /// References first: the best photos by quality (resolution × sharpness × frontalness), the
    /// clean face `pidiff sample` conditions on and evaluation compares against. Training photos
    /// from the rest: the best one, then greedily the photo farthest (in pose: yaw, roll, scale)
    /// from those already taken, weighted by quality, so the set is good and varied.
    /// Deterministic. (Held out last, the reference would be whatever the varied picks left: with
    /// 7 photos for 6 + 1, the worst one.)
    public static func pickImages(_ images: [UsableImage], train: Int, reference: Int) -> (train: [UsableImage], reference: [UsableImage]) {
        var rest = images.sorted { $0.quality > $1.quality || ($0.quality == $1.quality && $0.sha256 < $1.sha256) }
        let references = Array(rest.prefix(reference))
        rest.removeFirst(references.count)
        var chosen: [UsableImage] = []
        func distance(_ a: UsableImage, _ b: UsableImage) -> Double {
            let dy = a.yaw - b.yaw, dr = (a.rollDegrees - b.rollDegrees) / 45
            let dq = log(max(a.faceSize, 1) / max(b.faceSize, 1)) / 2
            return (dy * dy + dr * dr + dq * dq).squareRoot()
        }
        while chosen.count < train, !rest.isEmpty {
            if chosen.isEmpty {
                chosen.append(rest.removeFirst())
                continue
            }
            let best = rest.indices.max { i, j in
                let si = rest[i].quality * (0.25 + chosen.map { distance($0, rest[i]) }.min()!)
                let sj = rest[j].quality * (0.25 + chosen.map { distance($0, rest[j]) }.min()!)
                return si < sj || (si == sj && rest[i].sha256 > rest[j].sha256)
            }!
            chosen.append(rest.remove(at: best))
        }
        return (chosen, references)
    }
}

/// A split of named people, for personalising a few known identities: no demographic labels
/// needed, the same photo picks and exclusions (duplicates, impostors, failed quality gates and
/// masks) as balanced selection.
public enum NamedSelection {
    /// Every name that cannot be split, in one message: names the catalog does not hold, and
    /// identities with fewer usable photos than needed (0 when none is usable), with the counts.
    public struct Problem: Error, CustomStringConvertible, Equatable {
        public var notCatalogued: [String]
        public var short: [String: Int]
        public var needed: Int
        public var catalogued: Int
        public var description: String {
            var parts: [String] = []
            if !notCatalogued.isEmpty {
                parts.append("not in the catalog: \(notCatalogued.joined(separator: ", ")) (it holds \(catalogued) identities; "
                             + "pidiff-data balance report lists those with usable photos)")
            }
            if !short.isEmpty {
                parts.append("too few usable photos (needed \(needed) each: training plus reference): "
                             + short.sorted { $0.key < $1.key }.map { "\($0.key) has \($0.value) usable" }.joined(separator: ", ")
                             + " (photos left out: duplicates, impostors, failed quality gates or masks; see pidiff-data curate report and masks report)")
            }
            return parts.joined(separator: "; ")
        }
    }

    /// `identities`: those with usable photos; `catalogued`: every identity name the catalog holds.
    public static func select(_ identities: [BalanceIdentity], catalogued: Set<String>, names: [String], imagesPerIdentity: Int,
                              referenceImages: Int) throws -> SplitSelection {
        let byName = Dictionary(identities.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        let wanted = names.map(IdentityName.normalized)
        let needed = imagesPerIdentity + referenceImages
        let problem = Problem(notCatalogued: wanted.filter { !catalogued.contains($0) && byName[$0] == nil },
                              short: Dictionary(wanted.compactMap { name in
                                  guard catalogued.contains(name) || byName[name] != nil else { return nil }
                                  let usable = byName[name]?.images.count ?? 0
                                  return usable < needed ? (name, usable) : nil
                              }, uniquingKeysWith: { a, _ in a }),
                              needed: needed, catalogued: catalogued.count)
        guard problem.notCatalogued.isEmpty && problem.short.isEmpty else { throw problem }
        var items: [SplitSelection.Item] = []
        for name in wanted {
            let (train, reference) = BalancedSelection.pickImages(byName[name]!.images, train: imagesPerIdentity, reference: referenceImages)
            items += BalancedSelection.splitItems(name, train: train, reference: reference)
        }
        return SplitSelection(quotas: [], items: items, shortfall: 0)
    }
}

extension BalanceReport {
    /// Identities per race × age (the all-genders cells) as a labelled heatmap image.
    public static func heatmap(_ cells: [BalanceCell], minImages: Int, target: Int) throws -> NativeImage {
        let grid = cells.filter { $0.gender == "all" && $0.race != "all" }
        var rowNames: [String] = [], colNames: [String] = []
        for c in grid {
            if !rowNames.contains(c.race) { rowNames.append(c.race) }
            if !colNames.contains(c.age) { colNames.append(c.age) }
        }
        let lookup = Dictionary(uniqueKeysWithValues: grid.map { ("\($0.race)|\($0.age)", $0) })
        let values = rowNames.map { r in colNames.map { Double(lookup["\(r)|\($0)"]?.identities ?? 0) } }
        let texts = rowNames.map { r in colNames.map { c -> String in
            let cell = lookup["\(r)|\(c)"]
            return "\(cell?.identities ?? 0) id, \(cell?.images ?? 0) img"
        } }
        return try NativeImage.heatmap(values: values, rowLabels: rowNames, colLabels: colNames, cellText: texts,
                                       title: "identities with >= \(minImages) usable images (target \(target))")
    }
}

extension BalanceReport {
    /// The cells as an aligned text table, a header line first.
    public static func table(_ cells: [BalanceCell]) -> [String] {
        func pad(_ s: String, _ n: Int, right: Bool = false) -> String {
            let fill = String(repeating: " ", count: max(0, n - s.count))
            return right ? fill + s : s + fill
        }
        let header = pad("race", 10) + pad("age", 8) + pad("gender", 8) + pad("identities", 11, right: true) + pad("images", 8, right: true)
            + pad("% all", 8, right: true) + pad("% known", 9, right: true) + pad("shortfall", 11, right: true)
        return [header] + cells.map { c in
            pad(c.race, 10) + pad(c.age, 8) + pad(c.gender, 8) + pad("\(c.identities)", 11, right: true)
                + pad("\(c.images)", 8, right: true) + pad(String(format: "%.1f", c.pctAll), 8, right: true)
                + pad(c.pctKnown.map { String(format: "%.1f", $0) } ?? "-", 9, right: true)
                + pad(c.shortfall.map(String.init) ?? "-", 11, right: true)
        }
    }

    /// The cells as CSV, a header row first.
    public static func csv(_ cells: [BalanceCell]) -> [String] {
        ["race,age,gender,identities,images,pct_all,pct_known,shortfall"] + cells.map { c in
            [c.race, c.age, c.gender, "\(c.identities)", "\(c.images)", String(format: "%.2f", c.pctAll),
             c.pctKnown.map { String(format: "%.2f", $0) } ?? "", c.shortfall.map(String.init) ?? ""].joined(separator: ",")
        }
    }
}

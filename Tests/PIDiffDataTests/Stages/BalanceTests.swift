import GRDB
import XCTest
@testable import PIDiffData
@testable import PIDiffModel
@testable import PIDiffNative
@testable import PIDiffCatalog

final class BalanceLogicTests: XCTestCase {
    static func image(_ i: Int, yaw: Double = 0, size: Double = 400) -> UsableImage {
        UsableImage(fileID: Int64(i), path: "/p/\(i).jpg", sha256: String(format: "%064d", i), faceSize: size, sharpness: 100, yaw: yaw, rollDegrees: 0)
    }

    static func identities(_ spec: [(String, String, Int, Int)]) -> [BalanceIdentity] {
        // (race, age, identities, images each)
        var out: [BalanceIdentity] = []
        var n = 0
        for (race, age, count, images) in spec {
            for _ in 0..<count {
                out.append(BalanceIdentity(name: "id\(n)", race: race, age: age, gender: n % 2 == 0 ? "male" : "female",
                                           images: (0..<images).map { image(n * 100 + $0, yaw: Double($0) / 10) }))
                n += 1
            }
        }
        return out
    }

    func testReportCountsSharesAndShortfall() {
        let ids = Self.identities([("White", "21-50", 3, 6), ("Asian", "0-20", 1, 6), ("Black", "51+", 2, 3), ("unknown", "21-50", 1, 7)])
        let cells = BalanceReport.cells(ids, races: ["Asian", "Black", "White"], ages: ["0-20", "21-50", "51+"], target: 18, minImages: 6, byGender: false)
        func cell(_ r: String, _ a: String) -> BalanceCell { cells.first { $0.race == r && $0.age == a && $0.gender == "all" }! }
        XCTAssertEqual(cell("White", "21-50").identities, 3)
        XCTAssertEqual(cell("White", "21-50").images, 18)
        XCTAssertEqual(cell("White", "21-50").pctAll, 60, accuracy: 1e-9)      // 3 of 5 qualifying
        XCTAssertEqual(cell("White", "21-50").pctKnown!, 75, accuracy: 1e-9)   // 3 of 4 known
        XCTAssertEqual(cell("White", "21-50").shortfall, 0)                     // 18 / 9 cells = 2 per cell
        XCTAssertEqual(cell("Black", "51+").identities, 0, "3 images < min 6")
        XCTAssertEqual(cell("Black", "51+").shortfall, 2)
        XCTAssertEqual(cell("unknown", "21-50").identities, 1)
        XCTAssertNil(cell("unknown", "21-50").pctKnown)
        let total = cells.last!
        XCTAssertEqual([total.race, total.age, total.gender], ["all", "all", "all"])
        XCTAssertEqual(total.identities, 5)
        XCTAssertEqual(total.images, 31)
        XCTAssertEqual(total.shortfall, 14)
        let byGender = BalanceReport.cells(ids, races: ["Asian", "Black", "White"], ages: ["0-20", "21-50", "51+"], target: 18, minImages: 6, byGender: true)
        XCTAssertEqual(byGender.filter { $0.race == "White" && $0.age == "21-50" }.map(\.identities).reduce(0, +), 3)
    }

    func testQuotasAreEqualAndShortfallsAreRedistributed() {
        // 4 cells (2 races × 2 ages); one cell has only 1 eligible identity.
        let ids = Self.identities([("A", "y", 5, 8), ("A", "o", 5, 8), ("B", "y", 5, 8), ("B", "o", 1, 8), ("B", "o", 2, 3)])
        let s = BalancedSelection.select(ids, races: ["A", "B"], ages: ["y", "o"], count: 12, imagesPerIdentity: 6, referenceImages: 1, seed: 7)
        XCTAssertEqual(s.quotas.map(\.quota), [3, 3, 3, 3])
        let bo = s.quotas.first { $0.race == "B" && $0.age == "o" }!
        XCTAssertEqual(bo.selected, 1)
        XCTAssertEqual(bo.available, 1, "identities with too few photos are not eligible")
        XCTAssertEqual(s.quotas.map(\.selected).reduce(0, +), 12, "the missing two went to cells with spare identities")
        XCTAssertEqual(s.shortfall, 0)
        XCTAssertEqual(Set(s.items.map(\.identity)).count, 12)
        for id in Set(s.items.map(\.identity)) {
            let mine = s.items.filter { $0.identity == id }
            XCTAssertEqual(mine.filter { $0.role == "train" }.count, 6)
            XCTAssertEqual(mine.filter { $0.role == "reference" }.count, 1)
        }
        XCTAssertEqual(Set(s.items.map(\.fileID)).count, s.items.count, "no photo in two roles")
        // More than exists: all eligible taken, the rest reported.
        let all = BalancedSelection.select(ids, races: ["A", "B"], ages: ["y", "o"], count: 40, imagesPerIdentity: 6, referenceImages: 1, seed: 7)
        XCTAssertEqual(all.shortfall, 40 - 16)
    }

    func testDrawIsDeterministicForASeed() {
        let ids = Self.identities([("A", "y", 9, 8), ("B", "o", 9, 8)])
        let a = BalancedSelection.select(ids, races: ["A", "B"], ages: ["y", "o"], count: 6, imagesPerIdentity: 3, referenceImages: 1, seed: 3)
        let b = BalancedSelection.select(ids, races: ["A", "B"], ages: ["y", "o"], count: 6, imagesPerIdentity: 3, referenceImages: 1, seed: 3)
        let c = BalancedSelection.select(ids, races: ["A", "B"], ages: ["y", "o"], count: 6, imagesPerIdentity: 3, referenceImages: 1, seed: 4)
        XCTAssertEqual(a.items, b.items)
        XCTAssertNotEqual(Set(a.items.map(\.identity)), Set(c.items.map(\.identity)))
    }

    func testAnImpossibleDrawStoresNoSplitAndNegativeCountsDoNotTrap() throws {
        let ids = Self.identities([("A", "y", 2, 2)]) // two photos each: too few for 3 + 1
        let none = BalancedSelection.select(ids, races: ["A"], ages: ["y"], count: 5, imagesPerIdentity: 3, referenceImages: 1, seed: 0)
        XCTAssertTrue(none.items.isEmpty)
        XCTAssertEqual(none.shortfall, 5)
        let catalog = try Catalog(path: try TestSupport.temporaryDirectory().appendingPathComponent("c.sqlite").path)
        XCTAssertThrowsError(try catalog.storeSplit(name: "s1", seed: 0, parameters: "{}", selection: none)) {
            XCTAssertTrue("\($0)".contains("nothing stored"), "\($0)")
        }
        XCTAssertEqual(try catalog.splits().count, 0)
        XCTAssertTrue(BalancedSelection.select(ids, races: ["A"], ages: ["y"], count: -5, imagesPerIdentity: 1, referenceImages: -1, seed: 0)
            .items.isEmpty)
    }

    func testTheReferenceIsTheBestPhotoAndTrainingPhotosAreBestThenVaried() {
        // Photo 0 is best (the reference); 1 is next best; 4 is nearly identical in pose to 1;
        // 2 is a different pose, slightly worse; 3 is small.
        let imgs = [Self.image(0, yaw: 0, size: 510), Self.image(1, yaw: 0, size: 500), Self.image(4, yaw: 0.01, size: 490),
                    Self.image(2, yaw: 0.4, size: 470), Self.image(3, yaw: 0, size: 100)]
        let (train, ref) = BalancedSelection.pickImages(imgs, train: 2, reference: 1)
        XCTAssertEqual(ref.map(\.fileID), [0])
        XCTAssertEqual(train.map(\.fileID), [1, 2])
        // Exactly enough photos: the worst is trained on, never held out as the reference.
        let (train7, ref7) = BalancedSelection.pickImages(imgs, train: 4, reference: 1)
        XCTAssertEqual(ref7.map(\.fileID), [0])
        XCTAssertTrue(train7.map(\.fileID).contains(3))
    }
}

/// The report's numbers against an independent count straight from the catalog, and the
/// selection's respect for curation decisions, on real ingested photos.
final class BalanceIntegrationTests: XCTestCase {
    func testReportAgreesWithAnIndependentCountAndSelectionSkipsDuplicatesAndImpostors() async throws {
        try TestSupport.requireAssets()
        let dir = try TestSupport.temporaryDirectory()
        let photos = ["obama/obama.jpg", "obama/obama2.jpg", "obama/obama3.jpg", "biden/biden.jpg"].map { TestSupport.sampleIdentities.appendingPathComponent($0) }
        let corpus = dir.appendingPathComponent("corpus")
        try IngestBenchmark.generateCorpus(from: photos, count: 24, into: corpus)
        // A manifest spreading the 24 photos over 8 identities with labels in three cells.
        let files = try FileManager.default.subpathsOfDirectory(atPath: corpus.path).filter { $0.hasSuffix(".jpg") }.sorted()
        let labels = [("White", 30), ("White", 30), ("Asian", 10), ("Asian", 10), ("Black", 70), ("Black", 70), ("Martian", 30), ("White", 30)]
        var manifest = ""
        for (i, f) in files.enumerated() {
            let id = i % 8
            manifest += "{\"identity\": \"person\(id)\", \"path\": \"corpus/\(f)\", \"race\": \"\(labels[id].0)\", \"age\": \(labels[id].1)}\n"
        }
        let manifestURL = dir.appendingPathComponent("m.jsonl")
        try manifest.write(to: manifestURL, atomically: true, encoding: .utf8)
        let catalogPath = dir.appendingPathComponent("c.sqlite")
        _ = try await TestSupport.ingest([manifestURL], catalog: catalogPath)
        let catalog = try Catalog(path: catalogPath.path)

        // Curation decisions as `curate` records them: person0's first photo a near duplicate,
        // person1's first an impostor.
        try await catalog.pool.write { db in
            try db.execute(sql: "INSERT INTO runs (command, status, started_at, params_fingerprint, parameters) VALUES ('curate', 'completed', 'now', '', '{}')")
            let run = db.lastInsertedRowID
            for (identity, kind) in [("person0", "near_duplicate"), ("person1", "impostor")] {
                let fileID = try Int64.fetchOne(db, sql: "SELECT f.id FROM files f JOIN identities i ON i.id = f.identity_id WHERE i.name = ? ORDER BY f.path LIMIT 1", arguments: [identity])!
                try db.execute(sql: "INSERT INTO curation_decisions (run_id, kind, file_id, score, reason) VALUES (?, ?, ?, 1, 'test')", arguments: [run, kind, fileID])
            }
        }

        let out = try TestSupport.runCLI(["balance", "report", "--catalog", catalogPath.path, "--target", "9", "--min-images", "3", "--json",
                                          "--heatmap", dir.appendingPathComponent("h.png").path])
        XCTAssertEqual(out.status, 0, out.stderr)
        // person6's "Martian" is placed nowhere by the mapping: named, with its counts, not just unknown.
        XCTAssertTrue(out.stderr.contains("race \"Martian\" (1 identities, 3 photos)"), out.stderr)
        XCTAssertEqual(try catalog.unmappedManifestLabels(mapping: LabelMapping()), [UnmappedLabel(attribute: .race, value: "Martian", identities: 1, photos: 3)])
        let cells = try JSONDecoder().decode([BalanceCell].self, from: Data(out.stdout.utf8))
        XCTAssertEqual(try ImageHeader.parse(Data(contentsOf: dir.appendingPathComponent("h.png"))).format, .png)

        // Independent count: photos per identity that are ok, selected face passing quality,
        // without a decision; identities with ≥ 3; race/age from the manifest mapping by hand.
        let perIdentity: [String: Int] = try await catalog.pool.read { db in
            var out: [String: Int] = [:]
            for row in try Row.fetchAll(db, sql: """
                SELECT i.name, COUNT(DISTINCT f.sha256) AS n FROM files f JOIN identities i ON i.id = f.identity_id
                WHERE f.sha256 IN (SELECT sha256 FROM faces WHERE selected AND quality_ok)
                  AND f.id NOT IN (SELECT file_id FROM curation_decisions WHERE file_id IS NOT NULL)
                GROUP BY i.name
                """) { out[row["name"]] = row["n"] }
            return out
        }
        let raceOf = ["White": "White", "Asian": "Asian", "Black": "Black", "Martian": "unknown"]
        let ageOf = [30: "21-50", 10: "0-20", 70: "51+"]
        var expected: [String: (Int, Int)] = [:]
        for id in 0..<8 {
            let n = perIdentity["person\(id)"] ?? 0
            guard n >= 3 else { continue }
            let key = "\(raceOf[labels[id].0]!)|\(ageOf[labels[id].1]!)"
            expected[key, default: (0, 0)].0 += 1
            expected[key, default: (0, 0)].1 += n
        }
        XCTAssertEqual(perIdentity["person0"], 2, "the duplicate is not usable")
        for cell in cells where cell.race != "all" && cell.gender == "all" {
            let e = expected["\(cell.race)|\(cell.age)"] ?? (0, 0)
            XCTAssertEqual(cell.identities, e.0, "\(cell.race) × \(cell.age)")
            XCTAssertEqual(cell.images, e.1, "\(cell.race) × \(cell.age)")
        }
        let total = try XCTUnwrap(cells.last)
        XCTAssertEqual(total.identities, expected.values.map(\.0).reduce(0, +))

        // Selection: 4 identities, 2 train + 1 reference each; decisions are never selected.
        let sel = try TestSupport.runCLI(["balance", "select", "--catalog", catalogPath.path, "--name", "s1", "--identities", "4",
                                          "--images-per-identity", "2", "--reference-images", "1", "--seed", "1"])
        XCTAssertEqual(sel.status, 0, sel.stderr)
        let again = try TestSupport.runCLI(["balance", "select", "--catalog", catalogPath.path, "--name", "s1", "--identities", "4"])
        XCTAssertNotEqual(again.status, 0)
        XCTAssertTrue(again.stderr.contains("immutable"), again.stderr)
        // A name export would refuse is refused here: the split could never be used nor removed.
        let badName = try TestSupport.runCLI(["balance", "select", "--catalog", catalogPath.path, "--name", "bad name/..", "--identities", "4"])
        XCTAssertEqual(badName.status, 64, badName.stderr)
        XCTAssertTrue(badName.stderr.contains("split name \"bad name/..\" must be"), badName.stderr)
        XCTAssertThrowsError(try catalog.storeSplit(name: "../x", seed: 0, parameters: "{}", selection: SplitSelection(quotas: [], items: [], shortfall: 0)))
        let show = try TestSupport.runCLI(["splits", "show", "s1", "--catalog", catalogPath.path, "--json"])
        let items = try show.stdout.split(separator: "\n").map { try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: String] }
        XCTAssertEqual(items.count, 12)
        let excluded: Set<String> = try await catalog.pool.read { db in Set(try String.fetchAll(db, sql: "SELECT f.path FROM files f JOIN curation_decisions d ON d.file_id = f.id")) }
        XCTAssertTrue(items.allSatisfy { !excluded.contains($0["path"]!) })
        XCTAssertEqual(Set(items.map { $0["path"]! }).count, 12)
        for key in ["identity", "role", "path", "sha256"] { XCTAssertNotNil(items.first?[key]) }
        let list = try TestSupport.runCLI(["splits", "--catalog", catalogPath.path])
        XCTAssertTrue(list.stdout.contains("s1"), list.stdout)
    }
}

/// `splits create`: named people, no labels; unknown names and short identities are named with counts.
final class NamedSplitTests: XCTestCase {
    func testNamedPeopleSplitUsesThePickerAndNamesWhatIsMissing() async throws {
        try TestSupport.requireAssets()
        let dir = try TestSupport.temporaryDirectory()
        let catalog = dir.appendingPathComponent("c.sqlite")
        _ = try await TestSupport.ingest([TestSupport.sampleIdentities], catalog: catalog)
        _ = try await MaskPipeline(catalogPath: catalog.path, parameters: MaskParameters()).run()
        let usable = try Catalog(path: catalog.path).usableImages()
        let obama = try XCTUnwrap(usable["obama"]).count
        XCTAssertGreaterThanOrEqual(obama, 3)

        let made = try TestSupport.runCLI(["splits", "create", "friends", "--identities", "obama", "--images-per-identity", "\(obama - 1)",
                                           "--reference-images", "1", "--catalog", catalog.path, "--json"])
        XCTAssertEqual(made.status, 0, made.stderr)
        let items = try Catalog(path: catalog.path).splitItems("friends")
        XCTAssertEqual(items.filter { $0.role == "train" }.count, obama - 1)
        // The reference is the identity's best photo by the selection's quality measure.
        let best = try XCTUnwrap(usable["obama"]?.max { $0.quality < $1.quality })
        XCTAssertEqual(items.filter { $0.role == "reference" }.map(\.sha256), [best.sha256])

        let unknown = try TestSupport.runCLI(["splits", "create", "x", "--identities", "obama,nobody", "--catalog", catalog.path])
        XCTAssertEqual(unknown.status, 1)
        // One message for every name: the unknown one, and obama short of the default 6 + 1.
        XCTAssertTrue(unknown.stderr.contains("not in the catalog: nobody (it holds "), unknown.stderr)
        XCTAssertTrue(unknown.stderr.contains("obama has \(obama) usable"), unknown.stderr)
        XCTAssertEqual(unknown.stderr.split(separator: "\n").count, 1, unknown.stderr)
        let short = try TestSupport.runCLI(["splits", "create", "y", "--identities", "obama,biden", "--catalog", catalog.path])
        XCTAssertEqual(short.status, 1)
        XCTAssertTrue(short.stderr.contains("biden has \(usable["biden"]?.count ?? 0) usable") && short.stderr.contains("needed 7"), short.stderr)
        XCTAssertEqual(try Catalog(path: catalog.path).splits().map(\.name), ["friends"], "a refused split stores nothing")
    }
}

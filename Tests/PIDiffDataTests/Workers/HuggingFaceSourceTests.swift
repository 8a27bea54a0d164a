import Foundation
import GRDB
import XCTest
import Yams
@testable import PIDiffData
@testable import PIDiffModel
@testable import PIDiffNative
@testable import PIDiffCatalog

/// Hugging Face layouts as ingest sources (Docs/sources.md), on fixtures that
/// Tests/Fixtures/make_hf_sources.py builds from the sample photos: imagefolder trees with
/// metadata.csv / metadata.jsonl, and Parquet files with good, corrupt, null and unlabelled rows.
final class HuggingFaceSourceTests: XCTestCase {
    /// The fixtures' column names (none of them the defaults).
    static let config: PipelineConfig = {
        var c = PipelineConfig()
        c.huggingface.identityColumn = "person"
        c.huggingface.raceColumn = "ethnicity"
        c.huggingface.ageColumn = "age_years"
        c.huggingface.genderColumn = "sex"
        c.huggingface.captionColumn = "text"
        c.huggingface.parquetBatchRows = 2
        return c
    }()

    /// A fresh copy of the fixtures (tests change them).
    func makeFixtures() throws -> URL {
        try TestSupport.requireAssets()
        let out = try TestSupport.temporaryDirectory().appendingPathComponent("hf")
        let made = try TestSupport.run(TestSupport.python, [TestSupport.fixtures.appendingPathComponent("make_hf_sources.py").path,
                                                            TestSupport.sampleIdentities.path, out.path])
        XCTAssertEqual(made.status, 0, "make_hf_sources.py failed (scripts/setup.sh installs pyarrow): \(made.stderr)")
        return out
    }

    func ingest(_ sources: [URL], catalog: URL, config: PipelineConfig = HuggingFaceSourceTests.config) async throws -> IngestSummary {
        try await IngestPipeline(sources: sources.map(\.path), catalogPath: catalog.path, config: config, python: TestSupport.python).run()
    }

    struct FileRow {
        var path: String, identity: String, sha256: String?, readError: String?
        var caption: String?, race: String?, age: String?, gender: String?, origin: String?, kind: String
    }

    func files(_ catalog: URL) throws -> [FileRow] {
        try Catalog(path: catalog.path).pool.read { db in
            try Row.fetchAll(db, sql: """
                SELECT f.path, i.name, f.sha256, f.read_error, f.caption, f.race, f.age, f.gender, f.origin, s.kind
                FROM files f JOIN identities i ON i.id = f.identity_id JOIN sources s ON s.id = f.source_id ORDER BY f.path
                """).map {
                FileRow(path: $0["path"], identity: $0["name"], sha256: $0["sha256"], readError: $0["read_error"], caption: $0["caption"],
                        race: $0["race"], age: $0["age"], gender: $0["gender"], origin: $0["origin"], kind: $0["kind"])
            }
        }
    }

    func testSourceKindsAreDetectedFromTheLayout() async throws {
        let hf = try makeFixtures()
        XCTAssertEqual(try Scanner.kind(of: hf.appendingPathComponent("imagefolder_csv").path), .imagefolder)
        XCTAssertEqual(try Scanner.kind(of: hf.appendingPathComponent("imagefolder_jsonl").path), .imagefolder)
        XCTAssertEqual(try Scanner.kind(of: hf.appendingPathComponent("parquet/faces.parquet").path), .parquet)
        // A folder without metadata at its root is still identity folders; a Parquet file met
        // inside them is named, not passed over.
        XCTAssertEqual(try Scanner.kind(of: hf.path), .folders)
        var problems: [String] = []
        try await Scanner().scan(hf.path) { if case .problem(let p) = $0 { problems.append("\(p.location): \(p.reason)") } }
        XCTAssertEqual(problems.filter { $0.contains(".parquet: a Parquet file inside identity folders") }.count, 4, "\(problems)")
        // The metadata file itself is not the source; two metadata files are one too many.
        XCTAssertThrowsError(try Scanner.kind(of: hf.appendingPathComponent("imagefolder_csv/metadata.csv").path)) {
            XCTAssertTrue("\(($0 as? ScanProblem)?.reason ?? "")".contains("give the folder holding it"), "\($0)")
        }
        try Data("{}\n".utf8).write(to: hf.appendingPathComponent("imagefolder_csv/metadata.jsonl"))
        XCTAssertThrowsError(try Scanner.kind(of: hf.appendingPathComponent("imagefolder_csv").path)) {
            XCTAssertTrue("\(($0 as? ScanProblem)?.reason ?? "")".contains("both metadata.csv and metadata.jsonl"), "\($0)")
        }
        // The pipeline file names the columns; an unknown key is refused.
        let yaml = "huggingface:\n  identity_column: label\n  caption_column: text\n"
        let decoded = try YAMLDecoder().decode(PipelineConfig.self, from: yaml)
        XCTAssertEqual(decoded.huggingface.identityColumn, "label")
        XCTAssertEqual(decoded.huggingface.labelColumns.map(\.column), ["text", "race", "age", "gender"])
        XCTAssertThrowsError(try YAMLDecoder().decode(PipelineConfig.self, from: "huggingface:\n  identity_colum: label\n")) {
            XCTAssertTrue("\($0)".contains("identity_colum") && "\($0)".contains("identity_column"), "\($0)")
        }
    }

    func testImageFolderMetadataRowsBecomePhotosWithIdentityAndLabels() async throws {
        let hf = try makeFixtures()
        let csv = hf.appendingPathComponent("imagefolder_csv"), jsonl = hf.appendingPathComponent("imagefolder_jsonl")
        let noID = hf.appendingPathComponent("imagefolder_noid")
        let catalog = try TestSupport.temporaryDirectory().appendingPathComponent("c.sqlite")
        let summary = try await ingest([csv, jsonl, noID], catalog: catalog)

        let rows = try files(catalog)
        let byName = Dictionary(uniqueKeysWithValues: rows.map { ($0.path.replacingOccurrences(of: hf.path + "/", with: ""), $0) })
        XCTAssertEqual(Set(byName.keys), ["imagefolder_csv/images/obama1.jpg", "imagefolder_csv/images/obama2.jpg", "imagefolder_csv/images/obama3.jpg",
                                          "imagefolder_csv/images/biden.jpg", "imagefolder_csv/images/missing.jpg",
                                          "imagefolder_jsonl/a/obama.jpg", "imagefolder_jsonl/a/obama2.jpg", "imagefolder_jsonl/b/biden.jpg"])
        XCTAssertTrue(rows.allSatisfy { $0.kind == "imagefolder" })
        let first = try XCTUnwrap(byName["imagefolder_csv/images/obama1.jpg"])
        XCTAssertEqual(first.identity, "obama")
        // A quoted CSV field keeps its comma, doubled quotes and line break.
        XCTAssertEqual(first.caption, "a man, smiling, says \"hello\"\non two lines")
        XCTAssertEqual([first.race, first.age, first.gender], ["african american", "47", "male"])
        XCTAssertEqual(byName["imagefolder_csv/images/obama2.jpg"]?.gender, "M")
        let third = try XCTUnwrap(byName["imagefolder_csv/images/obama3.jpg"])
        XCTAssertEqual(third.caption, "third")
        XCTAssertNil(third.race, "an empty cell is no label")
        XCTAssertEqual(byName["imagefolder_csv/images/biden.jpg"]?.identity, "biden")
        XCTAssertEqual(byName["imagefolder_csv/images/missing.jpg"]?.readError, "file not found (or dangling symlink)")
        let jl = try XCTUnwrap(byName["imagefolder_jsonl/a/obama.jpg"])
        XCTAssertEqual([jl.identity, jl.caption, jl.race, jl.age, jl.gender], ["obama", "a portrait", "african american", "47", "male"])
        XCTAssertEqual(byName["imagefolder_jsonl/a/obama2.jpg"]?.age, "48", "a JSON number is its text")
        XCTAssertEqual(byName["imagefolder_jsonl/b/biden.jpg"]?.identity, "biden")
        // Labels resolve through the labels mapping as any manifest's do.
        let labels = try Catalog(path: catalog.path).identityLabels(mapping: LabelMapping())
        XCTAssertEqual(labels.first { $0.identity == "obama" }?.race.value, "Black")
        XCTAssertEqual(labels.first { $0.identity == "biden" }?.race.value, "White")

        // Every bad row is a problem naming its file and record; the refused source names the
        // column it lacks and the columns it has; the good rows went on.
        // 7 photos (4 distinct contents: a copy analysed at the same moment by another worker is
        // analysed again, one arriving later reuses the result).
        XCTAssertEqual((summary.counts["ok"] ?? 0) + (summary.counts["reused"] ?? 0), 7, "\(summary.counts)")
        XCTAssertEqual(summary.counts["unreadable"], 1)
        XCTAssertEqual(summary.counts["scan_problems"], 6, "\(summary.problems)")
        let expected = [("imagefolder_csv/metadata.csv:6", "identity column `person` is empty"),
                        ("imagefolder_csv/metadata.csv:8", "2 fields, the header has 6"),
                        ("imagefolder_csv/metadata.csv:9", "is outside the folder holding the metadata"),
                        ("imagefolder_jsonl/metadata.jsonl:3", "not a JSON object"),
                        ("imagefolder_jsonl/metadata.jsonl:4", "no `file_name`"),
                        ("imagefolder_noid/metadata.csv", "no identity column `person` (columns present: file_name, name, text)")]
        for (location, reason) in expected {
            XCTAssertTrue(summary.problems.contains { $0.contains(hf.path + "/" + location + ": ") && $0.contains(reason) },
                          "\(location): \(reason) not in \(summary.problems)")
        }
        XCTAssertEqual(summary.rejectedSources.count, 1)
        XCTAssertTrue(summary.rejectedSources[0].hasPrefix(noID.path), "\(summary.rejectedSources)")

        // A rerun finds everything unchanged.
        let again = try await ingest([csv, jsonl], catalog: catalog)
        XCTAssertEqual(again.counts["unchanged"], 7, "\(again.counts)")
        XCTAssertNil(again.counts["analysed"])
    }

    func testCSVThatStopsBeingUTF8KeepsTheRowsBeforeAndNamesWhere() async throws {
        let hf = try makeFixtures()
        let folder = hf.appendingPathComponent("imagefolder_csv")
        var bytes = Data("file_name,person\nimages/obama1.jpg,obama\nimages/biden.jpg,bi".utf8)
        bytes.append(contentsOf: [0xFF, 0xFE])
        bytes.append(Data("den\nimages/obama2.jpg,obama\n".utf8))
        try bytes.write(to: folder.appendingPathComponent("metadata.csv"))
        let catalog = try TestSupport.temporaryDirectory().appendingPathComponent("c.sqlite")
        let summary = try await ingest([folder], catalog: catalog)
        XCTAssertEqual(try files(catalog).map { URL(fileURLWithPath: $0.path).lastPathComponent }, ["obama1.jpg"])
        XCTAssertTrue(summary.problems.contains { $0.contains("metadata.csv:3") && $0.contains("unicodeDecoding") }, "\(summary.problems)")
        XCTAssertEqual(summary.rejectedSources.count, 1, "a source read only in part is not complete: nothing is marked vanished")
    }

    func testParquetRowsAreStoredContentAddressedWithTheirRowAsProvenance() async throws {
        let hf = try makeFixtures()
        let parquet = hf.appendingPathComponent("parquet")
        let faces = parquet.appendingPathComponent("faces.parquet"), damaged = parquet.appendingPathComponent("damaged.parquet")
        let catalogURL = try TestSupport.temporaryDirectory().appendingPathComponent("c.sqlite")
        let summary = try await ingest([faces, damaged, parquet.appendingPathComponent("no_identity.parquet"),
                                        parquet.appendingPathComponent("not_parquet.parquet")], catalog: catalogURL)
        let catalog = try Catalog(path: catalogURL.path)
        let cache = try catalog.dataRoot().appendingPathComponent("sources").path

        let rows = try files(catalogURL)
        XCTAssertTrue(rows.allSatisfy { $0.kind == "parquet" })
        let byRow = Dictionary(uniqueKeysWithValues: rows.map { (Int($0.origin!.components(separatedBy: "#row=").last!)!, $0) })
        // Rows 0-3 and 6 (a truncated JPEG) are stored; row 9 repeats row 0's bytes (stored once,
        // recorded once); row 10 is a path-only image beside the file, used where it is.
        XCTAssertEqual(byRow.keys.sorted(), [0, 1, 2, 3, 6, 10])
        for (row, file) in byRow {
            XCTAssertEqual(file.origin, "\(faces.path)#row=\(row)")
            if row == 10 { XCTAssertEqual(file.path, parquet.appendingPathComponent("beside.jpg").path); continue }
            let sha = try XCTUnwrap(file.sha256)
            XCTAssertEqual(file.path, "\(cache)/\(sha.prefix(2))/\(sha).jpg", "row \(row) is stored under its SHA-256")
            XCTAssertEqual(try Hashing.sha256Hex(fileAt: URL(fileURLWithPath: file.path)), sha)
        }
        // ClassLabel integers become their names; the label columns map as the pipeline says.
        XCTAssertEqual(byRow.mapValues(\.identity), [0: "obama", 1: "obama", 2: "obama", 3: "biden", 6: "obama", 10: "obama"])
        XCTAssertEqual([byRow[0]?.caption, byRow[0]?.race, byRow[0]?.age, byRow[0]?.gender], ["first", "african american", "47", "male"])
        XCTAssertEqual([byRow[3]?.caption, byRow[3]?.race, byRow[3]?.age], ["an older man", "white", "70"])
        XCTAssertNil(byRow[2]?.race)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: byRow[0]!.path)), try Data(contentsOf: TestSupport.obama))
        // Rows 0-3 and 10 (row 2's photo again, at another path): analysed, or reused when a
        // worker finishes one copy before the other starts.
        XCTAssertEqual((summary.counts["ok"] ?? 0) + (summary.counts["reused"] ?? 0), 5, "\(summary.counts)")
        XCTAssertEqual(summary.counts["decode_error"], 1)

        // Every bad row is a problem naming the file and row; refused files name why.
        let expected = [("faces.parquet#row=4", "image bytes are not JPEG, PNG, WebP or BMP"),
                        ("faces.parquet#row=5", "image is null"),
                        ("faces.parquet#row=6 (stored as \(cache)/", "decode_error: truncated JPEG"),
                        ("faces.parquet#row=7", "image has no bytes and its path 'nowhere/lost.jpg' is not a file"),
                        ("faces.parquet#row=8", "identity column `person` is empty"),
                        ("damaged.parquet#rows=2-3", "row group 1 cannot be read"),
                        ("no_identity.parquet", "no identity column `person` (columns present: image, name)"),
                        ("not_parquet.parquet", "not a readable Parquet file")]
        for (location, reason) in expected {
            XCTAssertTrue(summary.problems.contains { $0.hasPrefix(parquet.path + "/" + location) && $0.contains(reason) },
                          "\(location): \(reason) not in \(summary.problems)")
        }
        XCTAssertEqual(summary.problemCount, expected.count, "\(summary.problems)")
        XCTAssertEqual(summary.rejectedSources.count, 2, "\(summary.rejectedSources)")
        let problems = try await catalog.pool.read { db in try String.fetchAll(db, sql: "SELECT location FROM run_problems") } as [String]
        XCTAssertTrue(problems.contains("\(faces.path)#row=5"), "recorded in the catalog too: \(problems)")

        // verify: the stored images are referenced, not orphans.
        let report = try CatalogVerifier(catalogPath: catalogURL.path).run()
        XCTAssertTrue(report.orphans.isEmpty, "\(report.orphans)")

        // A rerun reads the file again but stores and analyses nothing new.
        let stored = try FileManager.default.subpathsOfDirectory(atPath: cache).sorted()
        let again = try await ingest([faces], catalog: catalogURL)
        XCTAssertEqual(again.counts["unchanged"], 6, "\(again.counts)")
        XCTAssertNil(again.counts["analysed"])
        XCTAssertEqual(try FileManager.default.subpathsOfDirectory(atPath: cache).sorted(), stored)

        // Nothing already stored is lost: the file replaced by one without the identity column is
        // refused as a whole, and its photos stay as they were (not marked vanished).
        let original = parquet.appendingPathComponent("original.parquet")
        try FileManager.default.moveItem(at: faces, to: original)
        try FileManager.default.copyItem(at: parquet.appendingPathComponent("no_identity.parquet"), to: faces)
        let refused = try await ingest([faces], catalog: catalogURL)
        XCTAssertEqual(refused.rejectedSources.count, 1)
        XCTAssertNil(refused.counts["vanished"])
        XCTAssertEqual(try files(catalogURL).filter { $0.readError == nil }.count, rows.filter { $0.readError == nil }.count)
        // Rows really gone from the file leave the usable set with a reason; their rows and
        // stored images stay.
        try FileManager.default.removeItem(at: faces)
        let sliced = try TestSupport.run(TestSupport.python, ["-c", """
            import pyarrow.parquet as pq, sys
            t = pq.read_table(sys.argv[1]); pq.write_table(t.slice(1, 1), sys.argv[2])
            """, original.path, faces.path])
        XCTAssertEqual(sliced.status, 0, sliced.stderr)
        let fewer = try await ingest([faces], catalog: catalogURL)
        XCTAssertEqual(fewer.counts["vanished"], 5, "\(fewer.counts)")
        let after = try files(catalogURL)
        XCTAssertEqual(after.count, rows.count)
        XCTAssertEqual(after.filter { $0.readError == nil }.map(\.origin), ["\(faces.path)#row=0"], "obama2 is row 0 now")
        XCTAssertEqual(try FileManager.default.subpathsOfDirectory(atPath: cache).sorted(), stored)
    }

    /// A Parquet row's provenance follows its photo into the shard JSON and the HTML report.
    func testParquetRowProvenanceReachesTheShardJSONAndTheReport() async throws {
        let hf = try makeFixtures()
        let faces = hf.appendingPathComponent("parquet/faces.parquet")
        let dir = try TestSupport.temporaryDirectory()
        let catalogURL = dir.appendingPathComponent("c.sqlite")
        _ = try await ingest([faces], catalog: catalogURL)
        _ = try await MaskPipeline(catalogPath: catalogURL.path, parameters: MaskParameters()).run()
        let catalog = try Catalog(path: catalogURL.path)
        let selection = BalancedSelection.select(try catalog.balanceInputs(mapping: LabelMapping()), races: ["Black", "White"],
                                                 ages: ["21-50", "51+"], count: 2, imagesPerIdentity: 1, referenceImages: 1, seed: 1)
        try catalog.storeSplit(name: "hf", seed: 1, parameters: "{}", selection: selection)
        let shards = dir.appendingPathComponent("shards")
        _ = try ShardExporter(catalogPath: catalogURL.path, split: "hf", outDirectory: shards).run()
        let read = try TestSupport.run(TestSupport.python, ["-c", """
            import glob, json, sys, tarfile
            out = []
            for path in sorted(glob.glob(sys.argv[1] + "/*.tar")):
                with tarfile.open(path) as tar:
                    out += [json.load(tar.extractfile(m)) for m in tar.getmembers() if m.name.endswith(".json")]
            print(json.dumps(out))
            """, shards.path])
        XCTAssertEqual(read.status, 0, read.stderr)
        let samples = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(read.stdout.utf8)) as? [[String: Any]])
        XCTAssertFalse(samples.isEmpty)
        let originOf = Dictionary(uniqueKeysWithValues: try files(catalogURL).map { ($0.path, $0.origin) })
        for sample in samples {
            let origin = try XCTUnwrap(sample["origin"] as? String, "\(sample)")
            XCTAssertTrue(origin.hasPrefix(faces.path + "#row="), origin)
            XCTAssertEqual(originOf[try XCTUnwrap(sample["source_path"] as? String)], origin)
        }

        let report = dir.appendingPathComponent("report")
        _ = try HTMLReport(catalogPath: catalogURL.path, directory: report).write()
        let pages = try FileManager.default.subpathsOfDirectory(atPath: report.path).filter { $0.hasSuffix(".html") }
        let html = try pages.map { try String(contentsOf: report.appendingPathComponent($0), encoding: .utf8) }.joined()
        XCTAssertTrue(html.contains("<b>faces.parquet#row=3</b>"), "a Parquet photo is named by its file and row in the report")
        XCTAssertTrue(html.contains("from \(faces.path)#row=0"), "its origin is in the card's title")
    }

    /// A data root that cannot take the extracted images stops the run with a message naming the
    /// file, as a crop that cannot be stored does; nothing is recorded against the rows, so a
    /// rerun once it is fixed ingests them.
    func testAnUnwritableSourceCacheStopsTheRunAndARerunFinishes() async throws {
        let hf = try makeFixtures()
        let faces = hf.appendingPathComponent("parquet/faces.parquet")
        let dir = try TestSupport.temporaryDirectory()
        let catalogURL = dir.appendingPathComponent("c.sqlite")
        let dataRoot = dir.appendingPathComponent("c.sqlite.data")
        try FileManager.default.createDirectory(at: dataRoot, withIntermediateDirectories: true)
        let blocker = dataRoot.appendingPathComponent("sources")
        try Data("a file where the folder should be".utf8).write(to: blocker)
        do {
            _ = try await ingest([faces], catalog: catalogURL)
            XCTFail("the run should stop")
        } catch {
            XCTAssertTrue("\(error)".contains("ingest stopped reading \(faces.path)") && "\(error)".contains("cannot write"), "\(error)")
        }
        let catalog = try Catalog(path: catalogURL.path)
        let statuses = try await catalog.pool.read { db in try String.fetchAll(db, sql: "SELECT status FROM runs ORDER BY id") } as [String]
        XCTAssertEqual(statuses, ["failed"])
        try FileManager.default.removeItem(at: blocker)
        let again = try await ingest([faces], catalog: catalogURL)
        XCTAssertEqual((again.counts["ok"] ?? 0) + (again.counts["reused"] ?? 0), 5, "\(again.counts)")
        XCTAssertEqual(try files(catalogURL).count, 6)
    }

    /// Parquet rows ingested in three partitions and merged: the same photos (by row, content and
    /// identity) as one machine's run, their images moved into the merged data root's `sources/`
    /// (the parts can then go), row 9 (row 0's bytes again) still stored once, and `verify` clean.
    func testParquetPartitionsMergedEqualOneMachineWithTheirImagesInTheMergedRoot() async throws {
        let hf = try makeFixtures()
        let faces = hf.appendingPathComponent("parquet/faces.parquet")
        let dir = try TestSupport.temporaryDirectory()
        func rows(_ catalog: URL, root: URL) throws -> Set<String> {
            Set(try files(catalog).map { f in
                "\(f.origin ?? f.path) \(f.identity) \(f.sha256 ?? "-") \(f.path.hasPrefix(root.path + "/sources/") ? "stored" : f.path)"
            })
        }
        let single = dir.appendingPathComponent("single.sqlite")
        let one = try await ingest([faces], catalog: single)
        var parts: [String] = [], problems: [String] = []
        for k in 1...3 {
            let part = dir.appendingPathComponent("part-\(k).sqlite")
            var pipeline = IngestPipeline(sources: [faces.path], catalogPath: part.path, config: Self.config, python: TestSupport.python)
            pipeline.partition = Partition("\(k)/3")
            problems += try await pipeline.run().problems
            parts.append(part.path)
            // A part stores only its own rows' images: nothing in its data root is unreferenced.
            let verify = try TestSupport.runCLI(["verify", "--catalog", part.path, "--json"])
            let report = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(verify.stdout.utf8)) as? [String: Any], verify.stderr)
            XCTAssertEqual((report["orphans"] as? [Any])?.count, 0, "part \(k): \(verify.stdout)")
        }
        // (Where a row's image is stored names each catalog's own data root.)
        let unstored = { (p: [String]) in p.map { $0.replacingOccurrences(of: #" \(stored as [^)]*\)"#, with: "", options: .regularExpression) }.sorted() }
        XCTAssertEqual(unstored(problems), unstored(one.problems), "each row's problem is reported by one part")
        XCTAssertFalse(problems.isEmpty)
        // Part 3 gathered from its node to another folder before the merge: its rows still name
        // the data root it had.
        let gathered = dir.appendingPathComponent("gathered")
        try FileManager.default.createDirectory(at: gathered, withIntermediateDirectories: true)
        for name in try FileManager.default.contentsOfDirectory(atPath: dir.path) where name.hasPrefix("part-3.sqlite") {
            try FileManager.default.moveItem(at: dir.appendingPathComponent(name), to: gathered.appendingPathComponent(name))
        }
        parts[2] = gathered.appendingPathComponent("part-3.sqlite").path
        let merged = dir.appendingPathComponent("merged.sqlite")
        for _ in 0..<2 { // the second merge adds nothing
            let r = try TestSupport.runCLI(["catalog", "merge"] + parts + ["--into", merged.path])
            XCTAssertEqual(r.status, 0, r.stderr)
        }
        let mergedRoot = try Catalog(path: merged.path).dataRoot()
        XCTAssertEqual(try rows(merged, root: mergedRoot), try rows(single, root: try Catalog(path: single.path).dataRoot()))
        XCTAssertEqual(try files(merged).filter { $0.origin?.hasSuffix("#row=9") ?? false }.count, 0, "row 9 repeats row 0's image")
        for part in parts { try FileManager.default.removeItem(at: URL(fileURLWithPath: part + ".data")) }
        let stored = try files(merged).filter { $0.path.hasPrefix(mergedRoot.path + "/sources/") }
        XCTAssertGreaterThanOrEqual(stored.count, 5)
        for file in try files(merged) {
            XCTAssertFalse(file.path.contains("/part-"), "\(file.path) still names a part's data root")
        }
        for file in stored {
            XCTAssertEqual(try Hashing.sha256Hex(fileAt: URL(fileURLWithPath: file.path)), file.sha256, file.path)
        }
        let verify = try TestSupport.runCLI(["verify", "--catalog", merged.path])
        XCTAssertEqual(verify.status, 0, verify.stdout + verify.stderr)
    }

    /// One image repeated on rows that fall in different partitions: only the part holding its
    /// first row stores it (the others would keep a file no row names), and the merged catalog
    /// has one machine's rows.
    func testAnImageRepeatedAcrossPartitionsIsStoredOnlyWhereItsFirstRowIs() async throws {
        try TestSupport.requireAssets()
        let dir = try TestSupport.temporaryDirectory()
        let file = dir.appendingPathComponent("hf/rep.parquet")
        try FileManager.default.createDirectory(at: file.deletingLastPathComponent(), withIntermediateDirectories: true)
        let made = try TestSupport.run(TestSupport.python, ["-c", """
            import sys, pyarrow as pa, pyarrow.parquet as pq
            biden, obama = (open(p, "rb").read() for p in sys.argv[1:3])
            rows = [(biden, "biden")] * 6 + [(obama, "obama")] * 2
            image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
            pq.write_table(pa.table({"image": pa.array([{"bytes": b, "path": None} for b, _ in rows], type=image),
                                     "person": pa.array([n for _, n in rows])}), sys.argv[3], row_group_size=3)
            """, TestSupport.sampleIdentities.appendingPathComponent("biden/biden.jpg").path, TestSupport.obama.path, file.path])
        XCTAssertEqual(made.status, 0, made.stderr)
        func owner(_ row: Int) -> Int {
            var item = ScanItem(path: "/x", identity: "x", sourceKind: .parquet, sourceLocation: file.path)
            item.origin = "\(file.path)#row=\(row)"
            return (1...3).first { Partition("\($0)/3")!.contains(item) }!
        }
        XCTAssertGreaterThan(Set((0..<6).map(owner)).count, 1, "the repeats fall in more than one partition")
        let single = dir.appendingPathComponent("single.sqlite")
        _ = try await ingest([file], catalog: single)
        var parts: [String] = []
        for k in 1...3 {
            let part = dir.appendingPathComponent("part-\(k).sqlite")
            var pipeline = IngestPipeline(sources: [file.path], catalogPath: part.path, config: Self.config, python: TestSupport.python)
            pipeline.partition = Partition("\(k)/3")
            _ = try await pipeline.run()
            parts.append(part.path)
            let verified = try CatalogVerifier(catalogPath: part.path).run()
            XCTAssertEqual(verified.orphans, [], "part \(k)")
        }
        let merged = dir.appendingPathComponent("merged.sqlite")
        XCTAssertEqual(try TestSupport.runCLI(["catalog", "merge"] + parts + ["--into", merged.path]).status, 0)
        XCTAssertEqual(Set(try files(merged).map { $0.origin ?? "" }), Set(try files(single).map { $0.origin ?? "" }))
        XCTAssertEqual(try files(merged).count, 2, "rows 0 and 6: the first of each image")
    }

    /// Every partition scans the whole source, so without care each would report every bad
    /// metadata row: the parts' problems, put together, are one machine's, each once.
    func testPartitionsReportEachScanProblemOnce() async throws {
        let hf = try makeFixtures()
        let dir = try TestSupport.temporaryDirectory()
        let sources = [hf.appendingPathComponent("imagefolder_csv"), hf.appendingPathComponent("imagefolder_jsonl")]
        let one = try await ingest(sources, catalog: dir.appendingPathComponent("single.sqlite"))
        XCTAssertGreaterThanOrEqual(one.problems.count, 4, "\(one.problems)")
        var problems: [String] = []
        for k in 1...3 {
            var pipeline = IngestPipeline(sources: sources.map(\.path), catalogPath: dir.appendingPathComponent("part-\(k).sqlite").path,
                                          config: Self.config, python: TestSupport.python)
            pipeline.partition = Partition("\(k)/3")
            problems += try await pipeline.run().problems
        }
        XCTAssertEqual(problems.sorted(), one.problems.sorted())
    }

    /// Partitioned ingest (`--partition K/N`) must send a Parquet row to the same partition on
    /// every machine: the row decides, not the data root its image is stored in.
    func testAParquetRowFallsInTheSamePartitionWhateverTheDataRoot() {
        func item(_ dataRoot: String, row: Int) -> ScanItem {
            var i = ScanItem(path: "\(dataRoot)/sources/ab/abcdef.jpg", identity: "x", sourceKind: .parquet, sourceLocation: "/data/hf/train.parquet")
            i.origin = "/data/hf/train.parquet#row=\(row)"
            return i
        }
        for n in [2, 3, 7] {
            for row in 0..<20 {
                let owners = (1...n).filter { Partition("\($0)/\(n)")!.contains(item("/machine-a/c.data", row: row)) }
                XCTAssertEqual(owners.count, 1)
                XCTAssertEqual(owners, (1...n).filter { Partition("\($0)/\(n)")!.contains(item("/elsewhere/b.data", row: row)) })
            }
        }
        // Rows spread over partitions rather than following the (shared) stored image.
        XCTAssertGreaterThan(Set((0..<20).map { row in (1...3).first { Partition("\($0)/3")!.contains(item("/m", row: row)) }! }).count, 1)
    }
}

import XCTest
@testable import PIDiffData
@testable import PIDiffModel
@testable import PIDiffNative
@testable import PIDiffCatalog

final class ImageHeaderTests: XCTestCase {
    func testReadsDimensionsOfEveryEncodedFormat() throws {
        let pixels = [UInt8](repeating: 128, count: 70 * 50 * 3)
        let image = try NativeImage.fromBGR(pixels, width: 70, height: 50)
        XCTAssertEqual(try ImageHeader.parse(image.pngData()), ImageHeader(format: .png, width: 70, height: 50))
        XCTAssertEqual(try ImageHeader.parse(image.jpegData(quality: 90)), ImageHeader(format: .jpeg, width: 70, height: 50))
    }

    func testATruncatedJPEGIsCaughtEvenWhenItsEXIFThumbnailEndsWithAnEndMarker() throws {
        try TestSupport.requireAssets()
        for name in ["biden/biden.jpg", "obama/obama.jpg", "obama/obama2.jpg", "obama/obama3.jpg"] {
            let whole = try Data(contentsOf: TestSupport.sampleIdentities.appendingPathComponent(name))
            XCTAssertNil(ImageHeader.truncation(of: whole, format: .jpeg), name)
            XCTAssertEqual(ImageHeader.jpegReachesEndOfImage(whole), true, name)
            for cut in [50_000, whole.count / 2, whole.count - 2] {
                XCTAssertNotNil(ImageHeader.truncation(of: whole.prefix(cut), format: .jpeg), "\(name) cut at \(cut)")
            }
        }
        // biden.jpg carries an EXIF thumbnail: FF D9 stands early in the file, inside APP1.
        let biden = [UInt8](try Data(contentsOf: TestSupport.sampleIdentities.appendingPathComponent("biden/biden.jpg")))
        XCTAssertTrue((0..<20_000).contains { biden[$0] == 0xFF && biden[$0 + 1] == 0xD9 })
    }

    func testRejectsNonImagesAndTruncatedHeaders() {
        XCTAssertThrowsError(try ImageHeader.parse(Data("hello world, not an image".utf8))) {
            XCTAssertEqual($0 as? ImageHeader.Problem, .unrecognised)
        }
        XCTAssertThrowsError(try ImageHeader.parse(Data([0xFF, 0xD8, 0xFF]))) {
            XCTAssertEqual($0 as? ImageHeader.Problem, .truncatedHeader(.jpeg))
        }
    }

    func testBombIsRefusedBeforeDecoding() throws {
        // A PNG whose header claims 60000×60000 and whose body is not even valid.
        var data = Data([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0, 0, 0, 13])
        data.append(contentsOf: Array("IHDR".utf8))
        data.append(contentsOf: [0, 0, 0xEA, 0x60, 0, 0, 0xEA, 0x60, 8, 2, 0, 0, 0, 0, 0, 0, 0])
        XCTAssertThrowsError(try DecodeStage.decode(data, parameters: IngestParameters())) { error in
            let refusal = error as? DecodeStage.Refusal
            XCTAssertEqual(refusal?.outcome, .tooLarge)
            XCTAssertTrue(refusal?.reason.contains("60000×60000") == true)
        }
    }
}

final class FingerprintTests: XCTestCase {
    func testFingerprintCoversOutputParametersOnly() {
        let base = IngestParameters()
        var workers = base
        workers.workers = 7
        workers.vanished = .keep
        XCTAssertEqual(Hashing.fingerprint(base.fingerprintPayload), Hashing.fingerprint(workers.fingerprintPayload))
        var detector = base
        detector.detector = .mmod
        XCTAssertNotEqual(Hashing.fingerprint(base.fingerprintPayload), Hashing.fingerprint(detector.fingerprintPayload))
        var crops = base
        crops.cropSizes = [256]
        XCTAssertNotEqual(Hashing.fingerprint(base.fingerprintPayload), Hashing.fingerprint(crops.fingerprintPayload))
    }

    func testPipelineFileOverridesOnlyWhatItNames() throws {
        let dir = try TestSupport.temporaryDirectory()
        let file = dir.appendingPathComponent("p.yaml")
        try "ingest:\n  detector: mmod\n  min_face_size: 64\n".write(to: file, atomically: true, encoding: .utf8)
        let config = try PipelineConfig.load(file)
        XCTAssertEqual(config.ingest.detector, .mmod)
        XCTAssertEqual(config.ingest.minFaceSize, 64)
        XCTAssertEqual(config.ingest.upsample, IngestParameters().upsample)
        try "ingest:\n  detector: nonsense\n".write(to: file, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try PipelineConfig.load(file)) { XCTAssertTrue("\($0)".contains(file.path)) }
    }

    /// A misspelt key would otherwise leave its defaults in place without a word (`masks:` for `mask:`).
    func testUnknownSectionsAndKeysAreRefusedByName() throws {
        let dir = try TestSupport.temporaryDirectory()
        let file = dir.appendingPathComponent("p.yaml")
        let cases = [
            ("masks:\n  method: grabcut\n", "unknown key masks at the top level; known: ingest, crossfaceid, huggingface, mask, labels, curate, fetch, run"),
            ("ingest:\n  detect_max_sides: 512\n  workers: 2\n", "unknown key detect_max_sides in ingest"),
            ("mask:\n  iteration: 3\n  feather: 1\n", "unknown keys feather, iteration in mask"),
            ("labels:\n  age_brackets:\n    - {name: young, from: 0, to: 20}\n", "unknown key to in labels.age_brackets[0]"),
            ("run:\n  catalog: c.sqlite\n  stages: [ingest]\n  select: {name: v1, identities: 2, images: 6}\n", "unknown key images in run.select"),
            ("curate:\n  hamming: 4\n", "unknown key hamming in curate"),
            ("crossfaceid:\n  identity: person\n", "unknown key identity in crossfaceid"),
        ]
        for (text, message) in cases {
            try text.write(to: file, atomically: true, encoding: .utf8)
            XCTAssertThrowsError(try PipelineConfig.load(file), text) { error in
                XCTAssertTrue("\(error)".contains(file.path) && "\(error)".contains(message), "\(error)")
            }
        }
    }

    /// `run`'s select stage keeps an existing split; it names what the file now asks for differently.
    func testSelectParametersAreComparedWithTheStoredSplits() throws {
        let dir = try TestSupport.temporaryDirectory()
        let file = dir.appendingPathComponent("p.yaml")
        try "run:\n  catalog: c.sqlite\n  stages: [select]\n  select: {name: v1, identities: 4, seed: 2}\n".write(to: file, atomically: true, encoding: .utf8)
        let select = try XCTUnwrap(try PipelineConfig.load(file).run?.select)
        let byCLI = "{\"identities\":4,\"images_per_identity\":6,\"reference_images\":1,\"seed\":2}"  // `balance select`
        XCTAssertEqual(select.differences(fromStored: byCLI), [])
        let byRun = String(decoding: try JSONEncoder.sorted.encode(select), as: UTF8.self)
        XCTAssertEqual(select.differences(fromStored: byRun), [])
        XCTAssertEqual(select.differences(fromStored: byCLI.replacingOccurrences(of: "\"seed\":2", with: "\"seed\":0")), ["seed 0 -> 2"])
        XCTAssertEqual(select.differences(fromStored: "{}").count, 4)
    }

    func testMeaninglessValuesAreRefusedByTheFileAndTheFlags() throws {
        let dir = try TestSupport.temporaryDirectory()
        let file = dir.appendingPathComponent("p.yaml")
        for (text, name) in [("ingest:\n  max_pixels: 0\n", "ingest.max_pixels"), ("ingest:\n  min_side: -5\n", "ingest.min_side"),
                             ("ingest:\n  workers: 100000\n", "ingest.workers"), ("ingest:\n  crop_sizes: []\n", "ingest.crop_sizes"),
                             ("mask:\n  iterations: 0\n", "mask.iterations"), ("mask:\n  min_coverage: 0.9\n", "mask.min_coverage")] {
            try text.write(to: file, atomically: true, encoding: .utf8)
            XCTAssertThrowsError(try PipelineConfig.load(file), text) { XCTAssertTrue("\($0)".contains(name), "\($0)") }
        }
        let catalog = dir.appendingPathComponent("c.sqlite").path, empty = dir.appendingPathComponent("empty")
        try FileManager.default.createDirectory(at: empty, withIntermediateDirectories: true)
        FileManager.default.createFile(atPath: catalog, contents: Data())  // not a catalog: refused, not turned into one
        let status = try TestSupport.runCLI(["status", "--catalog", catalog])
        XCTAssertEqual(status.status, 64, status.stderr)
        XCTAssertTrue(status.stderr.contains("an empty file, not a catalog"), status.stderr)
        XCTAssertEqual(try FileManager.default.attributesOfItem(atPath: catalog)[.size] as? Int, 0)
        try FileManager.default.removeItem(atPath: catalog)
        XCTAssertEqual(try TestSupport.runCLI(["ingest", empty.path, "--catalog", catalog]).status, 0)  // the commands below need a catalog
        for arguments in [["ingest", dir.path, "--catalog", catalog, "--workers", "100000"], ["masks", "--catalog", catalog, "--workers=-1"],
                          ["export", "--catalog", catalog, "--split", "s", "--out", dir.path, "--max-shard-bytes", "inf"],
                          ["export", "--catalog", catalog, "--split", "s", "--out", dir.path, "--max-shard-bytes", "1e30"]] {
            let result = try TestSupport.runCLI(arguments)
            XCTAssertEqual(result.status, 64, "\(arguments): \(result.stderr)")
            let flag = arguments.last!.hasPrefix("--") ? "--workers" : arguments[arguments.count - 2]
            XCTAssertTrue(result.stderr.contains("\(flag) must be"), result.stderr)
        }
    }

    /// One content under two keys of a split: one row, stable across runs (not swapping keys).
    func testEncodingsOfOneContentUnderTwoKeysSettleOnOneRow() throws {
        let catalog = try Catalog(path: try TestSupport.temporaryDirectory().appendingPathComponent("c.sqlite").path)
        let rows = [(sha256: "aa", preprocessing: "p", model: "m", file: "s-000000.safetensors", key: "k2"),
                    (sha256: "aa", preprocessing: "p", model: "m", file: "s-000000.safetensors", key: "k1")]
        XCTAssertEqual(try catalog.recordEncodings(rows), 1)
        XCTAssertEqual(try catalog.recordEncodings(rows.reversed()), 0)
        XCTAssertEqual(try catalog.pool.read { try String.fetchAll($0, sql: "SELECT sample_key FROM encodings") }, ["k1"])
    }

    /// `verify --repair` reads back what an ingest run recorded, whatever version wrote it.
    func testRecordedIngestParametersReadLeniently() throws {
        var parameters = IngestParameters()
        parameters.minFaceSize = 64
        var stored = try XCTUnwrap(JSONSerialization.jsonObject(with: JSONEncoder().encode(parameters)) as? [String: Any])
        stored["channel_capacity"] = 0  // written by earlier versions
        stored["workers"] = 100_000     // never changed results; out of today's range
        let json = String(decoding: try JSONSerialization.data(withJSONObject: stored), as: UTF8.self)
        let read = try IngestParameters.recorded(json)
        XCTAssertEqual(read.minFaceSize, 64)
        XCTAssertEqual(Hashing.fingerprint(read.fingerprintPayload), Hashing.fingerprint(parameters.fingerprintPayload))
    }

    func testOutputPathsNameWhatIsInTheWay() throws {
        let dir = try TestSupport.temporaryDirectory()
        let file = dir.appendingPathComponent("a-file")
        try Data("x".utf8).write(to: file)
        XCTAssertThrowsError(try OutputPath.prepareFolder(file.appendingPathComponent("sub/out"))) {
            XCTAssertEqual("\($0)", "cannot write \(file.path)/sub/out: \(file.path) is a file, not a folder")
        }
        XCTAssertThrowsError(try OutputPath.write(Data(), to: file.appendingPathComponent("heat.png"))) {
            XCTAssertTrue("\($0)".contains("is a file, not a folder"), "\($0)")
        }
        let nested = dir.appendingPathComponent("new/deeper/heat.png")
        try OutputPath.write(Data("png".utf8), to: nested)
        XCTAssertEqual(try Data(contentsOf: nested), Data("png".utf8))
    }

    func testRunSectionReadsTrainProcessesAndRejectsFewerThanOne() throws {
        let dir = try TestSupport.temporaryDirectory()
        let file = dir.appendingPathComponent("p.yaml")
        let head = "run:\n  catalog: c.sqlite\n  stages: [train]\n"
        try head.write(to: file, atomically: true, encoding: .utf8)
        XCTAssertEqual(try PipelineConfig.load(file).run?.trainProcesses, 1)
        try (head + "  train_processes: 4\n").write(to: file, atomically: true, encoding: .utf8)
        XCTAssertEqual(try PipelineConfig.load(file).run?.trainProcesses, 4)
        try (head + "  train_processes: 0\n").write(to: file, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try PipelineConfig.load(file)) { XCTAssertTrue("\($0)".contains("train_processes"), "\($0)") }
    }

    func testShippedPipelinesParse() throws {
        let dir = TestSupport.repoRoot.appendingPathComponent("Pipelines")
        let files = try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.hasSuffix(".yaml") }
        XCTAssertFalse(files.isEmpty)
        for f in files { _ = try PipelineConfig.load(dir.appendingPathComponent(f)) }
    }
}

final class MigrationTests: XCTestCase {
    func testFreshCatalogHasTheSchemaAndReopeningIsANoOp() throws {
        let dir = try TestSupport.temporaryDirectory()
        let path = dir.appendingPathComponent("c.sqlite").path
        let catalog = try Catalog(path: path)
        let tables = try catalog.pool.read { try String.fetchAll($0, sql: "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name") }
        for t in ["faces", "fetch_urls", "files", "identities", "image_results", "images", "masks", "meta", "runs", "sources"] {
            XCTAssertTrue(tables.contains(t), "missing table \(t)")
        }
        let applied = try catalog.pool.read { try Catalog.migrator.appliedIdentifiers($0) }
        XCTAssertEqual(applied, ["v1-ingest", "v2-curation", "v3-masks", "v4-labels", "v5-splits", "v6-encodings", "v7-style-role", "v8-curation-overrides", "v9-source-kinds", "v10-fetch", "v11-relative-data-root"])
        let journal = try catalog.pool.read { try String.fetchOne($0, sql: "PRAGMA journal_mode") }
        XCTAssertEqual(journal, "wal")
        _ = try Catalog(path: path) // migrating again must not fail
    }
}

import GRDB

final class ArtefactStoreTests: XCTestCase {
    func testConcurrentWritersOfIdenticalContentAllSucceed() throws {
        let store = ArtefactStore(root: try TestSupport.temporaryDirectory())
        let data = Data(repeating: 7, count: 1 << 20)
        final class Results: @unchecked Sendable {
            let lock = NSLock()
            var paths: [String?] = []
            func add(_ p: String?) { lock.lock(); paths.append(p); lock.unlock() }
        }
        let results = Results()
        DispatchQueue.concurrentPerform(iterations: 16) { _ in results.add(try? store.put(data, kind: "crops", ext: "bin")) }
        let paths = results.paths
        XCTAssertEqual(Set(paths.compactMap { $0 }).count, 1)
        XCTAssertEqual(paths.compactMap { $0 }.count, 16)
        XCTAssertEqual(try Data(contentsOf: store.url(paths[0]!)), data)
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: store.url(paths[0]!).deletingLastPathComponent().path)
        XCTAssertEqual(leftovers.count, 1, "no temporary files left behind")
    }
}

import Foundation
import GRDB
import XCTest
@testable import PIDiffData
@testable import PIDiffModel
@testable import PIDiffNative
@testable import PIDiffCatalog

/// verify (+ repair), backup, faults of the data root, and the HTML report in headless Chromium.
final class OperationsTests: XCTestCase {
    /// The sample photos copied into `dir/photos` (tests delete or add photos there).
    private func samplePhotos(in dir: URL, renaming: [String: String] = [:]) throws -> URL {
        try TestSupport.requireAssets()
        let photos = dir.appendingPathComponent("photos")
        try FileManager.default.createDirectory(at: photos, withIntermediateDirectories: true)
        for person in ["obama", "biden"] {
            try FileManager.default.copyItem(at: TestSupport.sampleIdentities.appendingPathComponent(person),
                                             to: photos.appendingPathComponent(renaming[person] ?? person))
        }
        return photos
    }

    private func ingest(_ photos: URL, catalog: URL, dataRoot: URL? = nil) async throws -> IngestSummary {
        var config = PipelineConfig()
        config.ingest.workers = 2
        return try await IngestPipeline(sources: [photos.path], catalogPath: catalog.path, config: config, dataRoot: dataRoot?.path).run()
    }

    /// A synchronous read (inside async tests GRDB's async overloads would be picked).
    private func count(_ catalog: Catalog, _ sql: String) throws -> Int {
        try catalog.pool.read { try Int.fetchOne($0, sql: sql) ?? -1 }
    }

    private func verify(_ catalog: URL, repair: Bool = false) throws -> VerifyReport {
        try CatalogVerifier(catalogPath: catalog.path).run(repair: repair)
    }

    // MARK: verify

    func testVerifyReportsMissingCorruptAndOrphanedArtefactsAndRepairRestoresThemByteIdentical() async throws {
        let dir = try TestSupport.temporaryDirectory()
        let photos = try samplePhotos(in: dir)
        let catalogURL = dir.appendingPathComponent("c.sqlite")
        _ = try await ingest(photos, catalog: catalogURL)
        _ = try await MaskPipeline(catalogPath: catalogURL.path, parameters: MaskParameters(), workers: 2).run()
        let catalog = try Catalog(path: catalogURL.path)
        let root = try catalog.dataRoot()

        let clean = try verify(catalogURL)
        XCTAssertTrue(clean.clean, "\(clean)")
        XCTAssertEqual(clean.artefactsChecked, 6 * 5, "6 selected faces with crops, each with 2 crops + 3 mask artefacts")
        XCTAssertEqual(clean.orphans, [])
        XCTAssertEqual(try TestSupport.runCLI(["verify", "--catalog", catalogURL.path]).status, 0)

        // Damage: a crop and a mask deleted, another crop overwritten, debris added.
        let refs = try catalog.artefactReferences()
        let crop256 = try XCTUnwrap(refs.first { $0.column == "faces.crop256" })
        let crop512 = try XCTUnwrap(refs.first { $0.column == "faces.crop512" && $0.sha256 != crop256.sha256 })
        let mask256 = try XCTUnwrap(refs.first { $0.column == "masks.mask256" })
        var original: [String: Data] = [:]
        for ref in [crop256, crop512, mask256] { original[ref.path] = try Data(contentsOf: root.appendingPathComponent(ref.path)) }
        try FileManager.default.removeItem(at: root.appendingPathComponent(crop256.path))
        try FileManager.default.removeItem(at: root.appendingPathComponent(mask256.path))
        try Data("not a png".utf8).write(to: root.appendingPathComponent(crop512.path))
        try FileManager.default.createDirectory(at: root.appendingPathComponent("crops/zz"), withIntermediateDirectories: true)
        try Data([1, 2, 3]).write(to: root.appendingPathComponent("crops/zz/stray.png"))

        let damaged = try verify(catalogURL)
        XCTAssertFalse(damaged.clean)
        XCTAssertEqual(Set(damaged.missing.map(\.path)), [crop256.path, mask256.path])
        XCTAssertTrue(damaged.missing.first { $0.path == crop256.path }!.referencedBy.contains(crop256.owner))
        XCTAssertEqual(damaged.mismatched.map(\.path), [crop512.path])
        XCTAssertTrue(damaged.mismatched[0].problem.contains(Hashing.sha256Hex(Data("not a png".utf8))), damaged.mismatched[0].problem)
        XCTAssertEqual(damaged.orphans, ["crops/zz/stray.png"])
        let cli = try TestSupport.runCLI(["verify", "--catalog", catalogURL.path, "--json"])
        XCTAssertEqual(cli.status, 3, cli.stderr) // partial: problems remain
        let json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(cli.stdout.utf8)) as? [String: Any])
        XCTAssertEqual(json["clean"] as? Bool, false)
        XCTAssertEqual((json["missing"] as? [Any])?.count, 2)

        let repaired = try verify(catalogURL, repair: true)
        XCTAssertTrue(repaired.clean, "\(repaired.repairs)")
        XCTAssertEqual(repaired.repairs.map(\.path), [crop256.path, crop512.path, mask256.path].sorted())
        XCTAssertTrue(repaired.repairs.allSatisfy(\.repaired), "\(repaired.repairs)")
        for (path, bytes) in original {
            XCTAssertEqual(try Data(contentsOf: root.appendingPathComponent(path)), bytes, "\(path) not restored byte-identical")
        }
        XCTAssertEqual(repaired.orphans, ["crops/zz/stray.png"], "repair does not delete files it did not make")

        // Unrepairable: the crop's only source photo is gone. Repair says so and verify stays non-zero.
        let photo = try XCTUnwrap(try catalog.sourcePaths(sha256: crop256.sha256).first)
        try FileManager.default.removeItem(atPath: photo)
        try FileManager.default.removeItem(at: root.appendingPathComponent(crop256.path))
        let lost = try verify(catalogURL, repair: true)
        XCTAssertFalse(lost.clean)
        XCTAssertEqual(lost.missing.map(\.path), [crop256.path])
        let failure = try XCTUnwrap(lost.repairs.first { $0.path == crop256.path })
        XCTAssertFalse(failure.repaired)
        XCTAssertTrue(failure.detail.contains("no source file still holds image \(crop256.sha256)"), failure.detail)
    }

    // MARK: backup

    /// Writes (a run and its problem row in one transaction) in a loop until stopped.
    private final class Writer: @unchecked Sendable {
        private let lock = NSLock()
        private var commits = 0
        private var stop = false
        var committed: Int { lock.withLock { commits } }
        func finish() { lock.withLock { stop = true } }

        func run(_ path: String) throws {
            let catalog = try Catalog(path: path)
            while !lock.withLock({ stop }) {
                try catalog.pool.write { db in
                    try db.execute(sql: "INSERT INTO runs (command, status, started_at, params_fingerprint, parameters) VALUES ('test', 'completed', '', '', '')")
                    try db.execute(sql: "INSERT INTO run_problems (run_id, location, reason) VALUES (?, 'x', 'y')", arguments: [db.lastInsertedRowID])
                }
                lock.withLock { commits += 1 }
            }
        }
    }

    func testBackupTakenWhileAnotherConnectionWritesIsConsistentAndPassesIntegrityCheck() throws {
        let dir = try TestSupport.temporaryDirectory()
        let path = dir.appendingPathComponent("c.sqlite").path
        // ~40 MB, so the copy takes long enough for the writer to commit meanwhile.
        let filler = String(repeating: "p", count: 20_000)
        try Catalog(path: path).pool.write { db in
            for _ in 0..<2000 {
                try db.execute(sql: "INSERT INTO runs (command, status, started_at, params_fingerprint, parameters) VALUES ('fill', 'completed', '', '', ?)",
                               arguments: [filler])
            }
        }
        let writer = Writer()
        let thread = Thread { try? writer.run(path) }
        thread.start()
        defer { writer.finish() }
        while writer.committed < 5 { usleep(1000) }

        var duringBackups = 0
        for i in 0..<3 {
            let before = writer.committed
            let summary = try CatalogBackup(catalogPath: path, destination: dir.appendingPathComponent("b\(i).sqlite").path).run()
            duringBackups += writer.committed - before
            XCTAssertGreaterThan(summary.bytes, 40_000_000)
            XCTAssertFalse(FileManager.default.fileExists(atPath: summary.backup + "-wal"), "the backup is one self-contained file")
            let copy = try Catalog(path: summary.backup)
            XCTAssertEqual(try copy.integrityProblems(), [])
            XCTAssertEqual(try copy.foreignKeyProblems(), [])
            // One snapshot: every test run arrived with its problem row, none without.
            XCTAssertEqual(try count(copy, "SELECT COUNT(*) FROM runs WHERE command = 'test'"), try count(copy, "SELECT COUNT(*) FROM run_problems"))
            XCTAssertEqual(try count(copy, "SELECT COUNT(*) FROM runs WHERE command = 'fill'"), 2000)
        }
        writer.finish()
        XCTAssertGreaterThan(duringBackups, 0, "the writer never committed while a backup ran: the test proves nothing")

        let again = try TestSupport.runCLI(["backup", "--catalog", path, "--to", dir.appendingPathComponent("b0.sqlite").path])
        XCTAssertEqual(again.status, 1)
        XCTAssertTrue(again.stderr.contains("b0.sqlite: already exists"), again.stderr)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.hasSuffix(".partial") }, [])
    }

    // MARK: faults

    /// Mounts a tmpfs with `options`; false where this machine refuses mount (no CAP_SYS_ADMIN).
    private func mountTmpfs(_ dir: URL, options: String) throws -> Bool {
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        guard try TestSupport.run("/usr/bin/mount", ["-t", "tmpfs", "-o", options, "tmpfs", dir.path]).status == 0 else { return false }
        addTeardownBlock { _ = try? TestSupport.run("/usr/bin/umount", ["-l", dir.path]) }
        return true
    }

    /// A failed ingest keeps the catalog sound: no row names a missing file, nothing recorded as
    /// a per-image failure, the run marked failed.
    private func assertConsistentAfterFailure(_ catalogURL: URL, file: StaticString = #filePath, line: UInt = #line) throws {
        let catalog = try Catalog(path: catalogURL.path)
        let report = try verify(catalogURL)
        XCTAssertTrue(report.clean, "\(report)", file: file, line: line)
        XCTAssertEqual(report.orphans.filter { $0.hasSuffix(".tmp") }, [], "temporary files left behind", file: file, line: line)
        XCTAssertEqual(try count(catalog, "SELECT COUNT(*) FROM image_results WHERE outcome = 'decode_error'"), 0,
                       "a store failure was recorded as a per-image error", file: file, line: line)
        XCTAssertEqual(try count(catalog, "SELECT COUNT(*) FROM runs WHERE command = 'ingest' AND status = 'failed'"), 1, file: file, line: line)
    }

    func testReadOnlyDataRootStopsIngestNamingThePathAndARerunCompletesOnceFixed() async throws {
        let dir = try TestSupport.temporaryDirectory()
        let photos = try samplePhotos(in: dir)
        let catalogURL = dir.appendingPathComponent("c.sqlite")
        var root = dir.appendingPathComponent("ro")
        let mounted = try mountTmpfs(root, options: "size=1m,ro")
        if !mounted {
            // Root ignores permission bits, so without mount the data root is put below a regular file.
            try Data().write(to: dir.appendingPathComponent("blocker"))
            root = dir.appendingPathComponent("blocker/data")
        }
        print("read-only data root: \(mounted ? "read-only tmpfs mount" : "simulated (parent is a regular file)")")
        do {
            _ = try await ingest(photos, catalog: catalogURL, dataRoot: root)
            XCTFail("ingest into a read-only data root succeeded")
        } catch {
            XCTAssertTrue("\(error)".contains("ingest stopped at \(photos.path)/"), "\(error)")
            XCTAssertTrue("\(error)".contains("cannot write artefact \(root.path)/crops/"), "\(error)")
        }
        try assertConsistentAfterFailure(catalogURL)

        if mounted {
            XCTAssertEqual(try TestSupport.run("/usr/bin/mount", ["-o", "remount,rw,size=16m", root.path]).status, 0)
        } else {
            try FileManager.default.removeItem(at: dir.appendingPathComponent("blocker"))
        }
        let rerun = try await ingest(photos, catalog: catalogURL, dataRoot: root)
        XCTAssertEqual(rerun.counts["ok"], 6, "\(rerun.counts)")
        XCTAssertTrue(try verify(catalogURL).clean)
    }

    func testFullDiskStopsIngestWithoutPartialFilesOrRowsPointingAtMissingCrops() async throws {
        let dir = try TestSupport.temporaryDirectory()
        let photos = try samplePhotos(in: dir)
        let catalogURL = dir.appendingPathComponent("c.sqlite")
        let root = dir.appendingPathComponent("full")
        // Room for a few crops, not for all.
        if try mountTmpfs(root, options: "size=1200k") {
            print("full disk: 1200 KiB tmpfs")
            do {
                _ = try await ingest(photos, catalog: catalogURL, dataRoot: root)
                XCTFail("ingest into a full data root succeeded")
            } catch {
                XCTAssertTrue("\(error)".contains("cannot write artefact \(root.path)/crops/"), "\(error)")
            }
        } else {
            // No mount: the file size limit makes writes fail (EFBIG) the same way; the catalog is
            // small enough to stay under it. SIGXFSZ is ignored so write() returns the error.
            print("full disk: simulated with ulimit -f (mount refused)")
            let cli = TestSupport.cli.path
            let r = try TestSupport.run("/bin/bash", ["-c", "ulimit -f 300; trap '' XFSZ; exec \"$0\" \"$@\"", cli, "ingest", photos.path,
                                                      "--catalog", catalogURL.path, "--data-root", root.path, "--workers", "2"])
            XCTAssertEqual(r.status, 1, r.stderr)
            XCTAssertTrue(r.stderr.contains("cannot write artefact \(root.path)/crops/"), r.stderr)
        }
        try assertConsistentAfterFailure(catalogURL)
    }

    /// Masks arrive a few a second: a batch that waited only for 64 of them lost up to half a
    /// minute of work to a SIGKILL. It is due at 64 items or once its oldest waited 0.25 s.
    func testCommitBatchIsDueByCountOrByAge() {
        let start = Date()
        var batch = CommitBatch<Int>()
        XCTAssertFalse(batch.add(1, now: start))
        XCTAssertFalse(batch.add(2, now: start.addingTimeInterval(0.2)))
        XCTAssertTrue(batch.add(3, now: start.addingTimeInterval(0.3)))
        XCTAssertEqual(batch.take(), [1, 2, 3])
        XCTAssertFalse(batch.add(4, now: start.addingTimeInterval(10)))  // the age counts from the new oldest
        for i in 5..<67 { XCTAssertFalse(batch.add(i, now: start.addingTimeInterval(10))) }
        XCTAssertTrue(batch.add(67, now: start.addingTimeInterval(10)))
        XCTAssertEqual(batch.take(), Array(4...67))
        XCTAssertTrue(batch.items.isEmpty)
    }

    func testACatalogCommitFailureStopsIngestInsteadOfHangingAndMarksTheRunFailed() async throws {
        let dir = try TestSupport.temporaryDirectory()
        let photos = try samplePhotos(in: dir)
        let catalogURL = dir.appendingPathComponent("c.sqlite")
        // A trigger makes the transaction that records obama2.jpg fail, as a full disk or a
        // database busy past the timeout would; every other commit succeeds.
        let catalog = try Catalog(path: catalogURL.path)
        try await catalog.pool.write { db in
            try db.execute(sql: """
                CREATE TRIGGER injected_failure BEFORE INSERT ON files WHEN NEW.path LIKE '%obama2.jpg'
                BEGIN SELECT RAISE(ABORT, 'injected commit failure'); END
                """)
        }
        // The CLI under a time limit: before the fix the workers waited forever for the writer.
        let r = try TestSupport.run("/usr/bin/timeout", ["120", TestSupport.cli.path, "ingest", photos.path,
                                                         "--catalog", catalogURL.path, "--workers", "2"])
        XCTAssertEqual(r.status, 1, "exit \(r.status) (124 = hung): \(r.stderr)")
        XCTAssertTrue(r.stderr.contains("injected commit failure"), r.stderr)
        XCTAssertEqual(try count(catalog, "SELECT COUNT(*) FROM runs WHERE command = 'ingest' AND status = 'failed'"), 1)
        XCTAssertEqual(try count(catalog, "SELECT COUNT(*) FROM runs WHERE status = 'running'"), 0)
        XCTAssertTrue(try verify(catalogURL).clean)

        try await catalog.pool.write { try $0.execute(sql: "DROP TRIGGER injected_failure") }
        let rerun = try await ingest(photos, catalog: catalogURL)
        XCTAssertEqual(rerun.counts["ok"].map { $0 >= 4 }, true, "\(rerun.counts)")
        XCTAssertEqual(try count(catalog, "SELECT COUNT(*) FROM files WHERE path LIKE '%obama2.jpg'"), 1)
    }

    // MARK: HTML report

    func testHTMLReportLoadsInHeadlessChromiumWithEveryImageResolvedAndNamesEscaped() async throws {
        let dir = try TestSupport.temporaryDirectory()
        let nasty = "O'Brien <&> \"Zoë\""
        let photos = try samplePhotos(in: dir, renaming: ["biden": nasty])
        // An exact duplicate, so curation has a group to show.
        try FileManager.default.copyItem(at: photos.appendingPathComponent("obama/obama.jpg"), to: photos.appendingPathComponent("obama/obama_copy.jpg"))
        let catalogURL = dir.appendingPathComponent("c.sqlite")
        _ = try await ingest(photos, catalog: catalogURL)
        _ = try await CurationPipeline(catalogPath: catalogURL.path).run()
        let catalog = try Catalog(path: catalogURL.path)
        let selection = BalancedSelection.select(try catalog.balanceInputs(mapping: LabelMapping()), races: ["unknown"], ages: ["unknown"], count: 2,
                                                 imagesPerIdentity: 1, referenceImages: 0, seed: 1)
        try catalog.storeSplit(name: "v1", seed: 1, parameters: "{}", selection: selection)
        // Masks, some flagged (a head band of 100 % is asked for), so the masks page lists them.
        var strict = MaskParameters()
        strict.minHeadBand = 1.0
        let masked = try await MaskPipeline(catalogPath: catalogURL.path, parameters: strict).run()
        XCTAssertGreaterThan(masked.failed, 0)

        let out = dir.appendingPathComponent("report")
        let summary = try HTMLReport(catalogPath: catalogURL.path, directory: out).write()
        XCTAssertEqual(summary.photos, 7)
        let e4eInputs = Set(try catalog.maskReport().compactMap(\.e4eInput))
        XCTAssertEqual(e4eInputs.count, 6)
        XCTAssertEqual(summary.thumbnails, 6 + 6, "one per distinct selected crop and one per distinct e4e input")

        var pages: [String: String] = [:]
        for name in HTMLReport.pages { pages[name] = try String(contentsOf: out.appendingPathComponent(name), encoding: .utf8) }
        // Every image is a relative path to a file in the report folder.
        let img = try NSRegularExpression(pattern: #"<img src="([^"]*)""#)
        var images = 0
        for (name, html) in pages {
            for m in img.matches(in: html, range: NSRange(html.startIndex..., in: html)) {
                let src = String(html[Range(m.range(at: 1), in: html)!])
                images += 1
                XCTAssertFalse(src.hasPrefix("/") || src.contains(":"), "\(name): \(src) is not relative")
                XCTAssertTrue(FileManager.default.fileExists(atPath: out.appendingPathComponent(src).path), "\(name): \(src) missing")
            }
        }
        XCTAssertGreaterThan(images, 10)
        let identities = try XCTUnwrap(pages["identities.html"])
        XCTAssertTrue(identities.contains("<h2>O&#39;Brien &lt;&amp;&gt; &quot;Zoë&quot;</h2>"))
        XCTAssertFalse(pages.values.contains { $0.contains(nasty) || $0.contains("<&>") }, "an identity name went into the HTML unescaped")
        XCTAssertTrue(identities.contains("class=\"duplicate\""), "the copy is shown as a duplicate")
        XCTAssertTrue(try XCTUnwrap(pages["curation.html"]).contains("obama_copy.jpg"))
        XCTAssertTrue(try XCTUnwrap(pages["splits.html"]).contains("<h2>v1</h2>"))
        let masksPage = try XCTUnwrap(pages["masks.html"])
        XCTAssertTrue(masksPage.contains("<h2>Flagged (\(masked.failed))</h2>"), masksPage)
        XCTAssertTrue(masksPage.contains("lost the head above the brows: head band "), masksPage)
        XCTAssertTrue(try XCTUnwrap(pages["index.html"]).contains("href=\"masks.html\""))

        // setup.sh installs chromium: its absence is a broken setup, not a reason to skip.
        let chromium = try XCTUnwrap(["/usr/bin/chromium", "/usr/bin/chromium-browser"].first(where: FileManager.default.isExecutableFile),
                                     "chromium not installed (scripts/setup.sh installs it): the headless browser check cannot run")
        func load(_ page: String) throws -> (console: [String], screenshot: URL) {
            let shot = dir.appendingPathComponent("\(page).png")
            let r = try TestSupport.run(chromium, ["--headless", "--disable-gpu", "--no-sandbox", "--enable-logging=stderr", "--v=0",
                                                   "--window-size=1280,2000", "--screenshot=\(shot.path)", out.appendingPathComponent(page).absoluteString])
            XCTAssertEqual(r.status, 0, r.stderr)
            return (r.stderr.split(separator: "\n").map(String.init).filter { $0.contains(":CONSOLE") }, shot)
        }
        for page in HTMLReport.pages {
            let (console, shot) = try load(page)
            XCTAssertEqual(console, [], "\(page) logged to the console")
            XCTAssertGreaterThan((try FileManager.default.attributesOfItem(atPath: shot.path)[.size] as? Int) ?? 0, 10_000, "\(page) screenshot")
        }
        // The check can fail: a thumbnail removed is reported by the page itself.
        let thumbs = try FileManager.default.contentsOfDirectory(atPath: out.appendingPathComponent("thumbs").path).sorted()
        let thumb = try XCTUnwrap(thumbs.first { identities.contains("thumbs/\($0)") }, "a crop thumbnail of identities.html")
        try FileManager.default.removeItem(at: out.appendingPathComponent("thumbs/\(thumb)"))
        XCTAssertTrue(try load("identities.html").console.contains { $0.contains("image did not load: thumbs/\(thumb)") })
    }

    /// A capped error list (masks keeps the first 1000) says how many were left out of all of them.
    func testListedCountsWhatWasLeftOutOfTheTotal() {
        XCTAssertEqual(listed(["a", "b", "c"], limit: 2), ["  a", "  b", "  … 1 more"])
        XCTAssertEqual(listed(Array(repeating: "x", count: 1000), total: 1500, limit: 20).last, "  … 1480 more")
        XCTAssertEqual(listed(["a"], total: 1), ["  a"])
    }
}

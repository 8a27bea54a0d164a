import XCTest
@testable import PIDiffData
@testable import PIDiffModel
@testable import PIDiffCatalog

/// The loopback server of `scripts/testing/loopback_http.py`, started for one test.
final class LoopbackServer {
    let process = Process()
    let port: Int
    var base: String { "http://127.0.0.1:\(port)" }

    init(root: URL) throws {
        process.executableURL = URL(fileURLWithPath: TestSupport.python)
        process.arguments = [TestSupport.repoRoot.appendingPathComponent("scripts/testing/loopback_http.py").path, "--root", root.path]
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        try process.run()
        var line = Data()
        while !line.contains(0x0A) {
            let chunk = out.fileHandleForReading.availableData
            guard !chunk.isEmpty else { break }
            line.append(chunk)
        }
        let object = try? JSONSerialization.jsonObject(with: line) as? [String: Int]
        // A failure, not a skip: setup installs everything the server needs.
        guard let port = object?["port"] else {
            throw CocoaError(.featureUnsupported, userInfo: [NSLocalizedDescriptionKey: "loopback server did not start: \(String(decoding: line, as: UTF8.self))"])
        }
        self.port = port
    }
    deinit { process.terminate(); process.waitUntilExit() }

    /// Requests per path so far.
    func hits() throws -> [String: Int] {
        let r = try TestSupport.run(TestSupport.python, ["-c", "import urllib.request,sys; sys.stdout.write(urllib.request.urlopen('\(base)/hits').read().decode())"])
        return (try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Int]) ?? [:]
    }
}

final class FetchTests: XCTestCase {
    /// A folder of photos the server serves: `a.jpg`, `a-copy.jpg` (same bytes), `b.jpg`, `c.jpg`, `e.jpg`, `f.jpg`, `page.html`.
    private func serverRoot(_ dir: URL) throws -> URL {
        try TestSupport.requireAssets()
        let root = dir.appendingPathComponent("root")
        try FileManager.default.createDirectory(at: root, withIntermediateDirectories: true)
        let s = TestSupport.sampleIdentities
        for (from, to) in [("obama/obama.jpg", "a.jpg"), ("obama/obama.jpg", "a-copy.jpg"), ("obama/obama2.jpg", "b.jpg"),
                           ("biden/biden.jpg", "c.jpg"), ("obama/obama3.jpg", "e.jpg"),
                           ("obama/obama_partial_face.jpg", "f.jpg")] {
            try FileManager.default.copyItem(at: s.appendingPathComponent(from), to: root.appendingPathComponent(to))
        }
        try Data("<!doctype html><html><head><title>gallery</title></head><body>no photo here</body></html>".utf8)
            .write(to: root.appendingPathComponent("page.html"))
        return root
    }

    private func pipelineFile(_ dir: URL, _ extra: String = "") throws -> URL {
        let file = dir.appendingPathComponent("fetch.yaml")
        try """
        fetch:
          total_timeout: 1.5
          attempts_per_run: 2
          backoff_base: 0.05
          backoff_max: 0.1
          max_bytes: 1000000
        \(extra)
        """.write(to: file, atomically: true, encoding: .utf8)
        return file
    }

    private func states(_ catalog: URL) throws -> [String: FetchURLRecord] {
        let c = try Catalog(path: catalog.path)
        return try c.pool.read { db in
            Dictionary(uniqueKeysWithValues: try FetchURLRecord.fetchAll(db).map { ($0.url, $0) })
        }
    }

    private func files(in inbox: URL) -> [String] {
        let e = FileManager.default.enumerator(atPath: inbox.path)
        var out: [String] = []
        while let p = e?.nextObject() as? String {
            var isDir: ObjCBool = false
            FileManager.default.fileExists(atPath: inbox.appendingPathComponent(p).path, isDirectory: &isDir)
            if !isDir.boolValue && !p.hasPrefix(".") { out.append(p) }
        }
        return out.sorted()
    }

    func testMisbehavingServerEachCaseRecordedAndRerunSkipsWhatIsStored() throws {
        let dir = try TestSupport.temporaryDirectory()
        let server = try LoopbackServer(root: try serverRoot(dir))
        let b = server.base
        let list = dir.appendingPathComponent("web.csv")
        try """
        identity,url,license,source
        alice,\(b)/files/a.jpg,CC-BY-4.0,example gallery
        alice,\(b)/status/404,,
        alice,\(b)/flaky/k1/1/b.jpg,,
        bob,\(b)/ratelimit/k2/1/c.jpg,,
        bob,\(b)/drip/10,,
        bob,\(b)/endless,,
        carol,\(b)/loop/a,,
        carol,\(b)/as-jpeg/page.html,,
        carol,\(b)/gzip/e.jpg,,
        alice,\(b)/files/a.jpg,,
        alice,\(b)/files/a-copy.jpg,,
        dave,\(b)/unique/0/a.jpg,,
        carol,\(b)/redirect/2/e.jpg,,
        carol,ftp://example.com/x.jpg,,
        erin,,,
        .hidden,\(b)/files/c.jpg,,
        erin,"\(b)/robots/noindex,+noai/c.jpg",,
        erin,\(b)/robots/otherbot:+noai/f.jpg,,
        bob,\(b)/ratelimit/k3/1e400/c.jpg,,
        erin,\(b)/gzbomb,,
        erin,\(b)/truncated/b.jpg,,

        """.write(to: list, atomically: true, encoding: .utf8)
        let catalog = dir.appendingPathComponent("c.sqlite"), inbox = dir.appendingPathComponent("inbox")
        let args = ["fetch", list.path, "--inbox", inbox.path, "--catalog", catalog.path, "--pipeline", try pipelineFile(dir).path, "--allow-private"]
        let first = try TestSupport.runCLI(args + ["--json"])
        XCTAssertEqual(first.status, 0, first.stderr)
        let summary = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(first.stdout.utf8)) as? [String: Any])
        XCTAssertEqual(summary["listed"] as? Int, 19, "21 data lines, one without a url, one with a hidden identity")
        XCTAssertEqual(summary["problem_count"] as? Int, 2)
        XCTAssertEqual(summary["given_up"] as? Int, 0)
        XCTAssertEqual(summary["repeated_lines"] as? Int, 1)
        let s = try states(catalog)
        func state(_ path: String) throws -> FetchURLRecord { try XCTUnwrap(s[b + path], path) }

        // A good JPEG: stored under its content's name, with its licence and source.
        let a = try state("/files/a.jpg")
        XCTAssertEqual(a.status, .done)
        XCTAssertEqual(a.attempts, 1)
        XCTAssertEqual(a.license, "CC-BY-4.0")
        XCTAssertEqual(a.source, "example gallery")
        let aSHA = try Hashing.sha256Hex(fileAt: TestSupport.sampleIdentities.appendingPathComponent("obama/obama.jpg"))
        XCTAssertEqual(a.sha256, aSHA)
        XCTAssertEqual(a.path, "alice/\(aSHA.prefix(16)).jpg")
        XCTAssertEqual(try Hashing.sha256Hex(fileAt: inbox.appendingPathComponent(a.path!)), aSHA)
        // 404: rejected for good, with its status.
        XCTAssertEqual(try state("/status/404").status, .rejected)
        XCTAssertEqual(try state("/status/404").httpStatus, 404)
        // 500 then 200: stored on the second attempt.
        XCTAssertEqual(try state("/flaky/k1/1/b.jpg").status, .done)
        XCTAssertEqual(try state("/flaky/k1/1/b.jpg").attempts, 2)
        // 429 with Retry-After 1: waited, then stored.
        XCTAssertEqual(try state("/ratelimit/k2/1/c.jpg").status, .done)
        XCTAssertEqual(try state("/ratelimit/k2/1/c.jpg").attempts, 2)
        // A slow drip past total_timeout: failed (retryable), both attempts of this run used.
        let drip = try state("/drip/10")
        XCTAssertEqual(drip.status, .failed)
        XCTAssertEqual(drip.attempts, 2)
        XCTAssertTrue(drip.error?.contains("total_timeout") ?? false, drip.error ?? "")
        // An endless body: cut at the byte limit.
        XCTAssertEqual(try state("/endless").status, .rejected)
        XCTAssertTrue(try state("/endless").error?.contains("max_bytes") ?? false)
        // A redirect loop, HTML served as image/jpeg, a non-http scheme: rejected with what they were.
        XCTAssertTrue(try state("/loop/a").error?.contains("redirect loop") ?? false)
        XCTAssertTrue(try state("/as-jpeg/page.html").error?.contains("HTML") ?? false)
        XCTAssertTrue(try XCTUnwrap(s["ftp://example.com/x.jpg"]).error?.contains("http and https only") ?? false)
        // gzip content encoding: decoded, stored as the original bytes.
        let eSHA = try Hashing.sha256Hex(fileAt: TestSupport.sampleIdentities.appendingPathComponent("obama/obama3.jpg"))
        XCTAssertEqual(try state("/gzip/e.jpg").sha256, eSHA)
        // Redirects followed to the image, where they led recorded; the same content (gzip copy) stored once.
        XCTAssertEqual(try state("/redirect/2/e.jpg").status, .done)
        XCTAssertEqual(try state("/redirect/2/e.jpg").finalURL, b + "/redirect/0/e.jpg")
        // The same content at two URLs of one identity: one file; for another identity: refused.
        XCTAssertEqual(try state("/files/a-copy.jpg").status, .done)
        XCTAssertEqual(try state("/files/a-copy.jpg").path, a.path)
        XCTAssertEqual(try state("/unique/0/a.jpg").status, .rejected)
        XCTAssertTrue(try state("/unique/0/a.jpg").error?.contains("stored for \"alice\"") ?? false)
        // A Retry-After beyond any limit (1e400 s): left for a later run, not a crash.
        XCTAssertEqual(try state("/ratelimit/k3/1e400/c.jpg").status, .failed)
        XCTAssertTrue(try state("/ratelimit/k3/1e400/c.jpg").error?.contains("max_retry_after") ?? false)
        // A gzip bomb is cut at the byte limit; a file cut short by the server is not stored.
        XCTAssertEqual(try state("/gzbomb").status, .rejected)
        let bomb = try state("/gzbomb")
        XCTAssertTrue(bomb.error?.contains("max_bytes") ?? false, bomb.error ?? "")
        XCTAssertEqual(try state("/truncated/b.jpg").status, .rejected)
        XCTAssertTrue(try state("/truncated/b.jpg").error?.contains("truncated JPEG") ?? false)
        // A scheme refused before any request counts no attempt.
        XCTAssertEqual(try XCTUnwrap(s["ftp://example.com/x.jpg"]).attempts, 0)
        // X-Robots-Tag opt-outs: for every agent refused, for another bot not.
        XCTAssertEqual(try state("/robots/noindex,+noai/c.jpg").status, .rejected)
        XCTAssertTrue(try state("/robots/noindex,+noai/c.jpg").error?.contains("opts out: X-Robots-Tag noindex") ?? false)
        XCTAssertEqual(try state("/robots/otherbot:+noai/f.jpg").status, .done)
        XCTAssertEqual(files(in: inbox), [a.path!, try state("/flaky/k1/1/b.jpg").path!, try state("/ratelimit/k2/1/c.jpg").path!,
                                          try state("/gzip/e.jpg").path!, try state("/robots/otherbot:+noai/f.jpg").path!].sorted())
        XCTAssertFalse(FileManager.default.fileExists(atPath: inbox.appendingPathComponent(".partial").path), "no temporaries left")
        // The same URL listed twice was requested once.
        var hits = try server.hits()
        XCTAssertEqual(hits["/files/a.jpg"], 1)

        // Rerun: stored and rejected URLs are not requested again; the failed one is retried.
        let second = try TestSupport.runCLI(args + ["--json"])
        XCTAssertEqual(second.status, 0, second.stderr)
        let again = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(second.stdout.utf8)) as? [String: Any])
        XCTAssertEqual(again["downloaded"] as? Int, 0)
        XCTAssertEqual(again["already_done"] as? Int, 8, "seven stored URLs, one of them listed twice: \(again)")
        XCTAssertEqual(again["rejected_earlier"] as? Int, 9)
        XCTAssertEqual(again["same_content"] as? Int, 1, "the 429 URL, now served: bob's c.jpg again")
        XCTAssertEqual(again["failed"] as? Int, 1)
        hits = try server.hits()
        XCTAssertEqual(hits["/files/a.jpg"], 1)
        XCTAssertEqual(hits["/status/404"], 1)
        XCTAssertEqual(hits["/drip/10"], 4)
        XCTAssertEqual(try states(catalog)[b + "/drip/10"]?.attempts, 4)
        // `--strict` turns failures into exit 3; `--failures` lists them with their errors.
        XCTAssertEqual(try TestSupport.runCLI(args + ["--strict"]).status, 3)
        let failures = try TestSupport.runCLI(["fetch", "--catalog", catalog.path, "--failures"])
        XCTAssertEqual(failures.status, 0, failures.stderr)
        XCTAssertTrue(failures.stdout.contains("/drip/10") && failures.stdout.contains("HTTP 404"), failures.stdout)
    }

    func testPrivateAddressesRefusedUnlessAllowed() throws {
        let dir = try TestSupport.temporaryDirectory()
        let server = try LoopbackServer(root: try serverRoot(dir))
        let list = dir.appendingPathComponent("web.jsonl")
        try "{\"identity\": \"alice\", \"url\": \"\(server.base)/files/a.jpg\"}\n{\"identity\": \"alice\", \"url\": \"http://localhost:\(server.port)/files/b.jpg\"}\n"
            .write(to: list, atomically: true, encoding: .utf8)
        let catalog = dir.appendingPathComponent("c.sqlite"), inbox = dir.appendingPathComponent("inbox")
        let r = try TestSupport.runCLI(["fetch", list.path, "--inbox", inbox.path, "--catalog", catalog.path])
        XCTAssertEqual(r.status, 0, r.stderr)
        let s = try states(catalog)
        XCTAssertEqual(s.values.map(\.status), [.rejected, .rejected])
        XCTAssertTrue(s[server.base + "/files/a.jpg"]?.error?.contains("127.0.0.1 is not public") ?? false, "\(s)")
        XCTAssertTrue(s["http://localhost:\(server.port)/files/b.jpg"]?.error?.contains("resolves to") ?? false, "\(s)")
        XCTAssertEqual(try server.hits()["/files/a.jpg"], nil, "nothing was requested")
        XCTAssertNil(try Catalog(path: catalog.path).recordedDataRoot(), "fetch leaves the data root for ingest to choose")

        // Allowed now: what was rejected stays rejected until asked for again.
        let again = try TestSupport.runCLI(["fetch", list.path, "--inbox", inbox.path, "--catalog", catalog.path, "--allow-private"])
        XCTAssertEqual(again.status, 0, again.stderr)
        XCTAssertTrue(again.stdout.contains("2 rejected by earlier runs (--retry-rejected fetches them again)"), again.stdout)
        XCTAssertEqual(try states(catalog).values.map(\.status), [.rejected, .rejected])
        let retried = try TestSupport.runCLI(["fetch", list.path, "--inbox", inbox.path, "--catalog", catalog.path, "--allow-private",
                                              "--retry-rejected"])
        XCTAssertEqual(retried.status, 0, retried.stderr)
        XCTAssertEqual(try states(catalog).values.map(\.status), [.done, .done], retried.stdout)
        XCTAssertEqual(try states(catalog).values.map(\.attempts), [1, 1], "attempts counted afresh")

        // The address rules themselves.
        for blocked in ["127.0.0.1", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1", "169.254.169.254", "100.64.0.1",
                        "0.0.0.0", "224.0.0.1", "255.255.255.255"] {
            XCTAssertFalse(AddressPolicy.isPublicIPv4(try XCTUnwrap(AddressPolicy.ipv4(blocked))), blocked)
        }
        for open in ["8.8.8.8", "172.32.0.1", "100.128.0.1", "1.1.1.1"] {
            XCTAssertTrue(AddressPolicy.isPublicIPv4(try XCTUnwrap(AddressPolicy.ipv4(open))), open)
        }
        for blocked in ["::1", "::", "fe80::1", "fc00::1", "fd12:3456::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "ff02::1", "2001:db8::1",
                        "::127.0.0.1", "::ffff:0:7f00:1", "2002:7f00:1::", "2001:0:4136:e378::1"] {
            XCTAssertFalse(AddressPolicy.isPublicIPv6(try XCTUnwrap(AddressPolicy.ipv6(blocked))), blocked)
        }
        XCTAssertTrue(AddressPolicy.isPublicIPv6(try XCTUnwrap(AddressPolicy.ipv6("2606:4700::1111"))))
        XCTAssertTrue(AddressPolicy.isPublicIPv6(try XCTUnwrap(AddressPolicy.ipv6("::ffff:8.8.8.8"))))
    }

    func testKilledFetchResumesWithNothingLostOrDuplicated() throws {
        let dir = try TestSupport.temporaryDirectory()
        let server = try LoopbackServer(root: try serverRoot(dir))
        let list = dir.appendingPathComponent("web.tsv")
        // 40 distinct images, each served after 300 ms: the run takes about 3 s at 4 at a time.
        try (["identity\turl"] + (0..<40).map { "p\($0 % 4)\t\(server.base)/slow/300/\($0 + 1)/a.jpg" }).joined(separator: "\n")
            .write(to: list, atomically: true, encoding: .utf8)
        let catalog = dir.appendingPathComponent("c.sqlite"), inbox = dir.appendingPathComponent("inbox")
        let args = ["fetch", list.path, "--inbox", inbox.path, "--catalog", catalog.path, "--allow-private", "--concurrency", "4"]
        let p = Process()
        p.executableURL = TestSupport.cli
        p.arguments = args
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        // Kill it once some images are stored, and before the end.
        let deadline = Date().addingTimeInterval(20)
        while files(in: inbox).count < 8 && Date() < deadline { usleep(50_000) }
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
        let stored = files(in: inbox).count
        XCTAssertGreaterThanOrEqual(stored, 8)
        XCTAssertLessThan(stored, 40, "killed before the end")
        // States are saved as URLs finish (64 at a time, or two seconds after the last save), not
        // only at the end: the first finished URL is in the catalog.
        XCTAssertGreaterThanOrEqual(try states(catalog).values.filter { $0.status == .done }.count, 1)

        let resumed = try TestSupport.runCLI(args + ["--json"])
        XCTAssertEqual(resumed.status, 0, resumed.stderr)
        let s = try states(catalog)
        XCTAssertEqual(s.count, 40)
        XCTAssertTrue(s.values.allSatisfy { $0.status == .done }, "\(s.values.filter { $0.status != .done })")
        XCTAssertEqual(Set(s.values.compactMap(\.sha256)).count, 40)
        XCTAssertEqual(files(in: inbox).count, 40, "one file per image, none twice")
        for record in s.values {
            XCTAssertEqual(try Hashing.sha256Hex(fileAt: inbox.appendingPathComponent(record.path!)), record.sha256, "complete files only")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: inbox.appendingPathComponent(".partial").path))
        // Interrupted run recorded as such; what it stored was not fetched again unless it was not yet recorded.
        let runs = try TestSupport.runCLI(["status", "--catalog", catalog.path])
        XCTAssertTrue(runs.stdout.contains("interrupted"), runs.stdout)
        XCTAssertTrue(runs.stdout.contains("fetched URLs 40: done 40, failed 0, rejected 0"), runs.stdout)
        XCTAssertTrue(try server.hits().filter { $0.key.hasPrefix("/slow/") }.values.allSatisfy { $0 <= 2 })
    }

    func testListFormatsAndBadLines() throws {
        let dir = try TestSupport.temporaryDirectory()
        let tsv = dir.appendingPathComponent("l.tsv")
        try "Identity\tURL\tlicense\nalice\thttp://example.com/1.jpg\tCC0\n\nsome/x\thttp://example.com/2.jpg\t\nbob\n".write(to: tsv, atomically: true, encoding: .utf8)
        let reader = try FetchListReader(path: tsv.path)
        var events: [FetchListReader.Event] = []
        while let e = try reader.next() { events.append(e) }
        XCTAssertEqual(events.count, 3)
        XCTAssertEqual(events[0], .entry(FetchListEntry(identity: "alice", url: "http://example.com/1.jpg", license: "CC0", location: "\(tsv.path):2")))
        guard case .problem(_, let reason) = events[1], reason.contains("contains `/`") else { return XCTFail("\(events[1])") }
        guard case .problem(_, let short) = events[2], short.contains("1 fields") else { return XCTFail("\(events[2])") }

        let jsonl = dir.appendingPathComponent("l.jsonl")
        try "{\"identity\": \"Jose\\u0301\", \"url\": \"https://example.com/a.png\", \"source\": \"wiki\"}\n[1,2]\n{\"identity\": \"x\\u0007\", \"url\": \"https://e.com/b\"}\n"
            .write(to: jsonl, atomically: true, encoding: .utf8)
        let r2 = try FetchListReader(path: jsonl.path)
        guard case .entry(let e) = try r2.next() else { return XCTFail() }
        XCTAssertEqual(e.identity, "José".precomposedStringWithCanonicalMapping, "identities are stored NFC")
        XCTAssertEqual(e.source, "wiki")
        guard case .problem = try r2.next(), case .problem(_, let control) = try r2.next() else { return XCTFail() }
        XCTAssertTrue(control.contains("control or invisible formatting characters"))

        // A list that cannot be read at all fails the command (exit 1), naming it.
        let odd = dir.appendingPathComponent("urls.txt")
        try "http://example.com/1.jpg\n".write(to: odd, atomically: true, encoding: .utf8)
        let csvNoURL = dir.appendingPathComponent("l.csv")
        try "identity,link\na,http://example.com/1.jpg\n".write(to: csvNoURL, atomically: true, encoding: .utf8)
        let r = try TestSupport.runCLI(["fetch", odd.path, csvNoURL.path, "--inbox", dir.appendingPathComponent("in").path,
                                        "--catalog", dir.appendingPathComponent("c.sqlite").path])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.stderr.contains("unknown list format .txt") && r.stderr.contains("no column `url`"), r.stderr)
    }

    /// cron's flow: a pipeline file runs fetch then ingest; the URL and licence follow the photo
    /// into the catalog's report rows and the HTML report.
    func testFetchStageThenIngestCarriesProvenance() throws {
        let dir = try TestSupport.temporaryDirectory()
        let server = try LoopbackServer(root: try serverRoot(dir))
        let list = dir.appendingPathComponent("web.csv")
        try "identity,url,license,source\nobama,\(server.base)/files/a.jpg,CC-BY-2.0,flickr\nbiden,\(server.base)/files/c.jpg,,\n"
            .write(to: list, atomically: true, encoding: .utf8)
        let inbox = dir.appendingPathComponent("inbox")
        let pipeline = dir.appendingPathComponent("cron.yaml")
        let wrong = dir.appendingPathComponent("wrong.yaml")
        let body = """
        fetch:
          allow_private: true
        run:
          catalog: \(dir.path)/c.sqlite
          stages: [fetch, ingest]
          fetch: {lists: ["\(list.path)"], inbox: "\(inbox.path)"}
        """
        try (body + "\n  sources: [\"\(inbox.path)\"]\n").write(to: pipeline, atomically: true, encoding: .utf8)
        try (body + "\n  sources: [\"\(dir.path)/elsewhere\"]\n").write(to: wrong, atomically: true, encoding: .utf8)
        let refused = try TestSupport.runCLI(["run", "--pipeline", wrong.path])
        XCTAssertEqual(refused.status, 1)
        XCTAssertTrue(refused.stderr.contains("not among run.sources"), refused.stderr)

        let r = try TestSupport.runCLI(["run", "--pipeline", pipeline.path])
        XCTAssertEqual(r.status, 0, r.stderr)
        let catalog = try Catalog(path: dir.path + "/c.sqlite")
        let photos = try catalog.reportPhotos()
        XCTAssertEqual(photos.count, 2)
        let obama = try XCTUnwrap(photos.first { $0.identity == "obama" })
        XCTAssertEqual(obama.fetched, FetchedProvenance(url: server.base + "/files/a.jpg", license: "CC-BY-2.0", source: "flickr"))
        XCTAssertEqual(obama.outcome, "ok")
        let site = dir.appendingPathComponent("site")
        let report = try TestSupport.runCLI(["report", "--catalog", dir.path + "/c.sqlite", "--html", site.path])
        XCTAssertEqual(report.status, 0, report.stderr)
        let pages = try FileManager.default.subpathsOfDirectory(atPath: site.path).filter { $0.hasSuffix(".html") }
        let text = try pages.map { try String(contentsOf: site.appendingPathComponent($0), encoding: .utf8) }.joined()
        XCTAssertTrue(text.contains(server.base + "/files/a.jpg") && text.contains("CC-BY-2.0"), "provenance in the HTML report")
    }

    /// A partition that fetched hands its URL states to the merged catalog, so provenance survives
    /// `catalog merge`; merging again adds nothing and keeps what the target knew.
    func testMergeCarriesFetchStates() throws {
        let dir = try TestSupport.temporaryDirectory()
        let part = try Catalog(path: dir.appendingPathComponent("part.sqlite").path)
        var record = FetchURLRecord(entry: FetchListEntry(identity: "ann", url: "https://example.org/1.jpg", license: "CC0", location: "l.csv:2"), runID: nil)
        record.status = .done
        record.sha256 = String(repeating: "ab", count: 32)
        record.path = "ann/abababababababab.jpg"
        try part.saveFetchStates([record])
        let into = dir.appendingPathComponent("merged.sqlite").path
        for _ in 0..<2 { _ = try CatalogMergeOperation(parts: [part.path], into: into).run() }
        let merged = try Catalog(path: into)
        XCTAssertEqual(try merged.fetchedProvenance(), [record.sha256!: FetchedProvenance(url: record.url, license: "CC0")])
        XCTAssertEqual(try merged.fetchStatusCounts(), [.done: 1])
    }

    /// One item's trouble is that item's: a file where an identity folder should go, a name the
    /// file system refuses after NFC, the catalog's own folders, a URL listed for two identities,
    /// a URL listed again after hundreds of others (its first fetch long saved): each is recorded
    /// and the run goes on; nothing is fetched twice.
    func testItemTroubleStaysWithTheItem() throws {
        let dir = try TestSupport.temporaryDirectory()
        let server = try LoopbackServer(root: try serverRoot(dir))
        let b = server.base
        let inbox = dir.appendingPathComponent("inbox")
        try FileManager.default.createDirectory(at: inbox, withIntermediateDirectories: true)
        try Data("not a folder".utf8).write(to: inbox.appendingPathComponent("blocked"))
        let catalog = inbox.appendingPathComponent("c.sqlite")  // the catalog lives in the inbox
        let slow = "\(b)/slow/1500/1/a.jpg"
        var lines = ["identity,url", "ann,\(slow)", "blocked,\(b)/files/b.jpg",
                     "\(String(repeating: "\u{1D160}", count: 50)),\(b)/files/c.jpg", "c.sqlite.data,\(b)/files/e.jpg"]
        lines += (0..<300).map { "ann,\(b)/unique/\($0 + 10)/b.jpg" }
        lines += ["bob,\(slow)", "ann,\(slow)"]
        let list = dir.appendingPathComponent("web.csv")
        try lines.joined(separator: "\n").write(to: list, atomically: true, encoding: .utf8)
        let r = try TestSupport.runCLI(["fetch", list.path, "--inbox", inbox.path, "--catalog", catalog.path, "--allow-private", "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let summary = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        XCTAssertEqual(summary["downloaded"] as? Int, 301, "\(summary)")
        XCTAssertEqual(summary["repeated_lines"] as? Int, 1)
        let problems = (summary["problems"] as? [String] ?? []).joined(separator: "\n")
        XCTAssertTrue(problems.contains("longer than 200 bytes"), problems)
        XCTAssertTrue(problems.contains("catalog's own files"), problems)
        XCTAssertTrue(problems.contains("listed for \"bob\" here and for \"ann\" earlier in this run"), problems)
        let s = try states(catalog)
        XCTAssertEqual(s[b + "/files/b.jpg"]?.status, .rejected)
        XCTAssertTrue(s[b + "/files/b.jpg"]?.error?.contains("is a file, not a folder") ?? false, "\(String(describing: s[b + "/files/b.jpg"]))")
        XCTAssertEqual(s[slow]?.identity, "ann")
        XCTAssertEqual(s[slow]?.status, .done)
        XCTAssertEqual(try server.hits()["/slow/1500/1/a.jpg"], 1)
        XCTAssertNil(s[b + "/files/e.jpg"], "an identity named like the catalog's data root is not fetched into it")
        XCTAssertNil(try server.hits()["/files/e.jpg"])

        // An inbox inside the catalog's data root is refused before anything is fetched.
        let inside = try TestSupport.runCLI(["fetch", list.path, "--inbox", inbox.appendingPathComponent("c.sqlite.data/in").path,
                                             "--catalog", catalog.path, "--allow-private"])
        XCTAssertEqual(inside.status, 1)
        XCTAssertTrue(inside.stderr.contains("inside the catalog's own folder"), inside.stderr)
    }
}

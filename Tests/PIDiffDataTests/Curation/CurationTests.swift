import GRDB
import XCTest
@testable import PIDiffData
@testable import PIDiffModel
@testable import PIDiffNative
@testable import PIDiffCatalog

/// The search structure and distance kernels, against brute force.
final class CurationSearchTests: XCTestCase {
    func testMultiIndexHashingFindsExactlyTheBruteForcePairs() {
        // Uniform hashes plus planted near copies and tight clusters, so every radius has pairs.
        var (hashes, _) = NearDuplicateSpeedBenchmark.generate(count: 2500, radius: 10, plantEvery: 4, seed: 3)
        var rng = SplitMix64(seed: 9)
        let centre = rng.next()
        for _ in 0..<300 { hashes.append(centre ^ (rng.next() & rng.next() & rng.next() & rng.next())) }
        for radius in [0, 3, 8, 12] {
            let index = NearDuplicateIndex(hashes: hashes, radius: radius)
            let found = index.selfJoin(hashes, workers: 2)
            var brute = Set<HashPair>()
            for i in 0..<hashes.count {
                for j in (i + 1)..<hashes.count where (hashes[i] ^ hashes[j]).nonzeroBitCount <= radius {
                    brute.insert(HashPair(a: UInt32(i), b: UInt32(j), distance: UInt8((hashes[i] ^ hashes[j]).nonzeroBitCount)))
                }
            }
            XCTAssertEqual(found.count, Set(found).count, "radius \(radius): a pair was reported twice")
            XCTAssertEqual(Set(found), brute, "radius \(radius), chunks \(index.bits)")
            XCTAssertGreaterThan(brute.count, radius == 0 ? 0 : 100)
            // Single queries (new photos against a stored index) see the same neighbours.
            for q in stride(from: 0, to: hashes.count, by: 97) {
                var got: [Int: Int] = [:]
                index.search(hashes[q]) { id, d in got[id] = d }
                let want = Dictionary(uniqueKeysWithValues: hashes.indices.compactMap { j -> (Int, Int)? in
                    let d = (hashes[q] ^ hashes[j]).nonzeroBitCount
                    return d <= radius ? (j, d) : nil
                })
                XCTAssertEqual(got, want, "query \(q), radius \(radius)")
            }
        }
    }

    func testChunkCountGrowsWithRadiusAndShrinksWithSize() {
        // At a million hashes, 9 exact-match chunks would mean ~8,000 entries per bucket.
        XCTAssertEqual(NearDuplicateIndex.chunkCount(n: 1_000_000, radius: 8), 3)
        XCTAssertEqual(NearDuplicateIndex.chunkCount(n: 100, radius: 8), 9)
    }

    func testSgemmDistanceBlocksMatchDirectDistances() throws {
        var rng = SplitMix64(seed: 1)
        let dim = DescriptorModel.dimension
        let a = (0..<(5 * dim)).map { _ in Float(rng.next() % 1000) / 1000 - 0.5 }
        let b = (0..<(7 * dim)).map { _ in Float(rng.next() % 1000) / 1000 - 0.5 }
        let d = try DescriptorDistances.block(a, b)
        for i in 0..<5 {
            for j in 0..<7 {
                let direct = DescriptorDistances.distance(Array(a[(i * dim)..<((i + 1) * dim)]), Array(b[(j * dim)..<((j + 1) * dim)]))
                XCTAssertEqual(d[i * 7 + j], direct, accuracy: 1e-4)
            }
        }
        XCTAssertEqual(try DescriptorDistances.block([], b), [], "no rows, no distances")
    }

    func testBadCurateParametersNameTheParameter() throws {
        let dir = try TestSupport.temporaryDirectory()
        let file = dir.appendingPathComponent("p.yaml")
        try "curate:\n  hamming_radius: 70\n".write(to: file, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try PipelineConfig.load(file)) { XCTAssertTrue("\($0)".contains("hamming_radius"), "\($0)") }
        try "curate:\n  descriptor_guard: 0.3\n".write(to: file, atomically: true, encoding: .utf8)
        XCTAssertEqual(try PipelineConfig.load(file).curate.descriptorGuard, 0.3)
        XCTAssertEqual(try PipelineConfig.load(file).curate.hammingRadius, CurationParameters().hammingRadius)
    }
}

/// Curation on the real sample photos and transformed copies of them.
final class CurationIntegrationTests: XCTestCase {
    private func photo(_ person: String, _ name: String) -> URL { TestSupport.sampleIdentities.appendingPathComponent("\(person)/\(name)") }

    private func write(_ image: NativeImage, jpeg quality: Int, to url: URL) throws {
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        try image.jpegData(quality: quality).write(to: url)
    }

    private func copy(_ src: URL, to dst: URL) throws {
        try FileManager.default.createDirectory(at: dst.deletingLastPathComponent(), withIntermediateDirectories: true)
        try FileManager.default.copyItem(at: src, to: dst)
    }

    /// Rows as text (a synchronous read: GRDB's async overloads would be picked inside tests).
    private func rows(_ catalog: Catalog, _ sql: String) throws -> [String] {
        try catalog.pool.read { try Row.fetchAll($0, sql: sql).map { "\($0)" } }
    }

    private func decode(_ url: URL) throws -> NativeImage { try NativeImage.decode(Data(contentsOf: url), maxPixels: 1 << 30) }

    /// A new folder with photos/obama/obama{,2,3}.jpg: (folder, photos root, catalog path).
    private func folderWithTheThreeObamaPhotos() throws -> (URL, URL, URL) {
        try TestSupport.requireAssets()
        let dir = try TestSupport.temporaryDirectory()
        let root = dir.appendingPathComponent("photos")
        for name in ["obama.jpg", "obama2.jpg", "obama3.jpg"] { try copy(photo("obama", name), to: root.appendingPathComponent("obama/\(name)")) }
        return (dir, root, dir.appendingPathComponent("c.sqlite"))
    }

    private func curate(_ catalog: URL, applyMerges: Bool = false) async throws -> (CurationSummary, [CurationFinding]) {
        let summary = try await CurationPipeline(catalogPath: catalog.path, applyMerges: applyMerges).run()
        return (summary, try Catalog(path: catalog.path).curationFindings(runID: summary.runID))
    }

    /// Exact duplicates by bytes and by pixels, a resolution ladder grouped, different photos of
    /// one person kept apart, an incremental re-run that recomputes nothing, a new photo checked
    /// against the stored features only, reports, sheets and --reset.
    func testDuplicatesLadderHardNegativesIncrementalReportAndReset() async throws {
        try TestSupport.requireAssets()
        let dir = try TestSupport.temporaryDirectory()
        let root = dir.appendingPathComponent("photos"), person = root.appendingPathComponent("obama")
        let catalog = dir.appendingPathComponent("c.sqlite")
        try copy(photo("obama", "obama.jpg"), to: person.appendingPathComponent("obama.jpg"))
        try copy(photo("obama", "obama.jpg"), to: person.appendingPathComponent("obama_copy.jpg"))
        try decode(photo("obama", "obama.jpg")).pngData().write(to: person.appendingPathComponent("obama_pixels.png"))
        try copy(photo("obama", "obama3.jpg"), to: person.appendingPathComponent("obama3.jpg"))
        let obama2 = try decode(photo("obama", "obama2.jpg"))
        for scale in [0.5, 1.0, 1.5] {
            try write(obama2.resized(width: Int(Double(obama2.width) * scale), height: Int(Double(obama2.height) * scale)),
                      jpeg: 90, to: person.appendingPathComponent("obama2-x\(scale).jpg"))
        }
        _ = try await TestSupport.ingest([root], catalog: catalog)
        let (first, findings) = try await curate(catalog)
        XCTAssertEqual(first.files, 7)
        XCTAssertEqual(first.computed["descriptors"], 5, "one descriptor per distinct face crop: \(first.computed)")
        XCTAssertEqual(first.computed["image_hashes"], 6, "one per distinct content: \(first.computed)")
        XCTAssertTrue(first.problems.isEmpty, "\(first.problems)")
        func name(_ p: String?) -> String { URL(fileURLWithPath: p ?? "").lastPathComponent }

        let exact = findings.filter { $0.kind == .exactDuplicate }
        XCTAssertEqual(Set(exact.map { name($0.path) }), ["obama_copy.jpg", "obama_pixels.png"], "\(exact)")
        XCTAssertTrue(exact.allSatisfy { name($0.keptPath) == "obama.jpg" })
        // Equal pixels score equally: the first path in sort order is kept.
        XCTAssertTrue(try XCTUnwrap(exact.first { name($0.path) == "obama_copy.jpg" }).reason.contains("same bytes"))
        XCTAssertTrue(try XCTUnwrap(exact.first { name($0.path) == "obama_pixels.png" }).reason.contains("same decoded pixels"))

        // The ladder is one group kept at its largest rung; nothing else is a near duplicate.
        let near = findings.filter { $0.kind == .nearDuplicate }
        XCTAssertEqual(Set(near.map { name($0.path) }), ["obama2-x0.5.jpg", "obama2-x1.0.jpg"], "\(near)")
        XCTAssertTrue(near.allSatisfy { name($0.keptPath) == "obama2-x1.5.jpg" }, "\(near)")
        XCTAssertEqual(Set(near.map(\.groupID)).count, 1)
        // Different photos of one person stay apart and none is an impostor.
        let decided = Set(findings.compactMap { $0.path.map(name) })
        XCTAssertFalse(decided.contains("obama.jpg") || decided.contains("obama3.jpg") || decided.contains("obama2-x1.5.jpg"))
        XCTAssertTrue(findings.allSatisfy { $0.kind != .impostor }, "\(findings)")

        // Re-run: nothing recomputed, the same decisions.
        let (second, again) = try await curate(catalog)
        XCTAssertEqual(second.computed.values.reduce(0, +), 0, "\(second.computed)")
        XCTAssertEqual(again, findings)

        // A new photo: only its features are computed, and it joins obama3's group.
        let obama3 = try decode(photo("obama", "obama3.jpg"))
        try write(obama3.resized(width: obama3.width * 6 / 10, height: obama3.height * 6 / 10), jpeg: 80,
                  to: person.appendingPathComponent("obama3-small.jpg"))
        _ = try await TestSupport.ingest([root], catalog: catalog)
        let (third, withNew) = try await curate(catalog)
        XCTAssertEqual(third.computed, ["image_hashes": 1, "crop_hashes": 1, "descriptors": 1])
        let newDecision = try XCTUnwrap(withNew.first { name($0.path) == "obama3-small.jpg" })
        XCTAssertEqual(newDecision.kind, .nearDuplicate)
        XCTAssertEqual(name(newDecision.keptPath), "obama3.jpg")

        // Reports through the CLI: JSON lines with the documented fields, CSV, sheets.
        let json = try TestSupport.runCLI(["curate", "report", "--catalog", catalog.path, "--json", "--sheets", dir.appendingPathComponent("sheets").path])
        XCTAssertEqual(json.status, 0, json.stderr)
        let lines = json.stdout.split(separator: "\n").map { try! JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any] }
        XCTAssertEqual(lines.count, withNew.count)
        for l in lines {
            XCTAssertNotNil(l["kind"] as? String); XCTAssertNotNil(l["paths"] as? [String])
            XCTAssertNotNil(l["score"] as? Double); XCTAssertNotNil(l["reason"] as? String)
            XCTAssertNotNil(l["kept"] as? String, "duplicates name the kept photo")
        }
        let csv = try TestSupport.runCLI(["curate", "report", "--catalog", catalog.path, "--csv"])
        XCTAssertEqual(csv.stdout.split(separator: "\r\n").count, withNew.count + 1)
        let sheet = try decode(dir.appendingPathComponent("sheets/duplicates-001.png"))
        XCTAssertEqual(sheet.height / 150, 3, "three duplicate groups, one row each")

        // --reset removes decisions only.
        let before = try TestSupport.dataDump(catalog.path)
        let reset = try TestSupport.runCLI(["curate", "--catalog", catalog.path, "--reset"])
        XCTAssertEqual(reset.status, 0, reset.stderr)
        let db = try Catalog(path: catalog.path)
        XCTAssertEqual(try rows(db, "SELECT COUNT(*) FROM curation_decisions"), ["[COUNT(*):0]"])
        XCTAssertEqual(try TestSupport.dataDump(catalog.path), before)
    }

    /// An impostor in an identity folder is flagged; one person under two identities is proposed
    /// for merging, and --apply-merges records an alias without touching the files' identities.
    func testImpostorFlaggedAndSplitPersonProposedForMerge() async throws {
        try TestSupport.requireAssets()
        let dir = try TestSupport.temporaryDirectory()
        let root = dir.appendingPathComponent("photos"), catalog = dir.appendingPathComponent("c.sqlite")
        try copy(photo("obama", "obama.jpg"), to: root.appendingPathComponent("obama/obama.jpg"))
        try copy(photo("obama", "obama2.jpg"), to: root.appendingPathComponent("obama/obama2.jpg"))
        try copy(photo("biden", "biden.jpg"), to: root.appendingPathComponent("obama/biden.jpg"))
        try copy(photo("obama", "obama3.jpg"), to: root.appendingPathComponent("barack/obama3.jpg"))
        _ = try await TestSupport.ingest([root], catalog: catalog)
        let identitiesBefore = try rows(Catalog(path: catalog.path), "SELECT path, identity_id FROM files ORDER BY path")
        let (summary, findings) = try await curate(catalog, applyMerges: true)

        let impostors = findings.filter { $0.kind == .impostor }
        XCTAssertEqual(impostors.map { URL(fileURLWithPath: $0.path!).lastPathComponent }, ["biden.jpg"], "\(findings)")
        XCTAssertGreaterThan(impostors[0].score, 0.6)
        XCTAssertEqual(impostors[0].identity, "obama")

        let merges = findings.filter { $0.kind == .samePerson }
        XCTAssertEqual(merges.count, 1, "\(findings)")
        XCTAssertEqual(Set([merges[0].identity, merges[0].otherIdentity].compactMap { $0 }), ["obama", "barack"])
        XCTAssertLessThan(merges[0].score, 0.5)
        XCTAssertEqual(summary.aliasesRecorded, 1)
        let db = try Catalog(path: catalog.path)
        XCTAssertEqual(try db.identityAliases(), ["barack": "obama"])
        let identitiesAfter = try rows(db, "SELECT path, identity_id FROM files ORDER BY path")
        XCTAssertEqual(identitiesAfter, identitiesBefore, "merging never rewrites a file's identity")
        let report = try CurationReport(catalog: db)
        XCTAssertEqual(report.lines.first { $0.kind == "same_person" }?.paths.count, 4)
    }

    /// A photo filed under the wrong name as well as the right one: the copy under the wrong name
    /// is dropped. An identity of two different people flags both (nothing to trust) and is never
    /// merged. Every decision points at a photo that is really kept.
    func testMisfiledCopiesAmbiguousIdentitiesAndKeptPointers() async throws {
        let (dir, root, catalog) = try folderWithTheThreeObamaPhotos()
        try copy(photo("biden", "biden.jpg"), to: root.appendingPathComponent("biden/biden.jpg"))
        try copy(photo("biden", "biden.jpg"), to: root.appendingPathComponent("biden/biden_again.jpg"))
        // "a_" sorts first: the old tie-break by path kept exactly this misfiled copy.
        try copy(photo("obama", "obama3.jpg"), to: root.appendingPathComponent("biden/a_obama3_misfiled.jpg"))
        // A half-size re-encode of obama.jpg and a lossless copy of that (same pixels): the exact
        // pair's representative is itself dropped for the larger original, and the pair's other
        // member must then point at the original, not at the dropped representative.
        let obama = try decode(photo("obama", "obama.jpg"))
        let half = root.appendingPathComponent("obama/obama_half.jpg")
        try write(try obama.resized(width: obama.width / 2, height: obama.height / 2), jpeg: 95, to: half)
        try decode(half).pngData().write(to: root.appendingPathComponent("obama/obama_half_lossless.png"))
        _ = try await TestSupport.ingest([root], catalog: catalog)
        let (summary, findings) = try await curate(catalog, applyMerges: true)
        func name(_ p: String?) -> String { URL(fileURLWithPath: p ?? "").deletingLastPathComponent().lastPathComponent + "/" + URL(fileURLWithPath: p ?? "").lastPathComponent }

        let misfiled = try XCTUnwrap(findings.first { name($0.path) == "biden/a_obama3_misfiled.jpg" }, "\(findings)")
        XCTAssertEqual(misfiled.kind, .exactDuplicate)
        XCTAssertEqual(name(misfiled.keptPath), "obama/obama3.jpg")
        XCTAssertFalse(findings.contains { name($0.path) == "obama/obama3.jpg" }, "the rightful copy stays")

        XCTAssertEqual(findings.filter { name($0.path).hasPrefix("obama/obama_half") }.map { name($0.keptPath) }, ["obama/obama.jpg", "obama/obama.jpg"])
        let excluded = Set(findings.filter { $0.kind != .samePerson }.compactMap(\.path))
        for f in findings where f.keptPath != nil {
            XCTAssertFalse(excluded.contains(f.keptPath!), "\(name(f.path)) points at \(name(f.keptPath)), which is itself dropped")
        }
        XCTAssertEqual(summary.aliasesRecorded, 0)

        // Two people, one photo each, under one name (and a real identity of one of them).
        let root2 = dir.appendingPathComponent("photos2"), catalog2 = dir.appendingPathComponent("c2.sqlite")
        for name in ["obama.jpg", "obama3.jpg"] { try copy(photo("obama", name), to: root2.appendingPathComponent("obama/\(name)")) }
        try copy(photo("obama", "obama2.jpg"), to: root2.appendingPathComponent("mixed/1.jpg"))
        try copy(photo("biden", "biden.jpg"), to: root2.appendingPathComponent("mixed/2.jpg"))
        _ = try await TestSupport.ingest([root2], catalog: catalog2)
        let (summary2, findings2) = try await curate(catalog2, applyMerges: true)
        let mixed = findings2.filter { $0.kind == .impostor && $0.identity == "mixed" }
        XCTAssertEqual(Set(mixed.map { name($0.path) }), ["mixed/1.jpg", "mixed/2.jpg"], "\(findings2)")
        XCTAssertTrue(mixed.allSatisfy { $0.reason.contains("no clear majority") })
        XCTAssertFalse(findings2.contains { $0.kind == .samePerson }, "\(findings2)")
        XCTAssertEqual(summary2.aliasesRecorded, 0, "an identity of two people is never merged into obama")
    }

    /// A photo overwritten after ingest sits curation out (named), so its intact copy is not the
    /// one dropped as its duplicate.
    func testAPhotoChangedSinceIngestIsLeftOutAndItsIntactCopyKept() async throws {
        let (_, root, catalog) = try folderWithTheThreeObamaPhotos()
        try copy(photo("obama", "obama.jpg"), to: root.appendingPathComponent("obama/z_copy.jpg"))
        _ = try await TestSupport.ingest([root], catalog: catalog)
        let changed = root.appendingPathComponent("obama/obama.jpg")
        try FileManager.default.removeItem(at: changed)
        try copy(photo("biden", "biden.jpg"), to: changed)
        let (summary, findings) = try await curate(catalog)
        XCTAssertTrue(summary.problems.contains { $0.hasPrefix(changed.path + ": changed since ingest") }, "\(summary.problems)")
        XCTAssertFalse(findings.contains { $0.path?.hasSuffix("z_copy.jpg") == true }, "\(findings)")
        XCTAssertFalse(findings.contains { $0.path == changed.path || $0.keptPath == changed.path }, "\(findings)")
    }

    func testCurateWithoutIngestNamesTheCatalogAndTheFix() async throws {
        let dir = try TestSupport.temporaryDirectory()
        let catalog = dir.appendingPathComponent("empty.sqlite").path
        _ = try Catalog(path: catalog)
        do {
            _ = try await CurationPipeline(catalogPath: catalog).run()
            XCTFail("curating an empty catalog must fail")
        } catch {
            XCTAssertTrue("\(error)".contains(catalog) && "\(error)".contains("ingest"), "\(error)")
        }
    }
}

import Foundation
import GRDB
import XCTest
import Yams
@testable import PIDiffData
@testable import PIDiffModel
@testable import PIDiffCatalog

/// Partitioned ingest on "several machines" (the Slurm array script run locally with
/// SLURM_ARRAY_TASK_ID set), merged: the same catalog as one machine's run.
final class ClusterTests: XCTestCase {
    private struct Snapshot: Equatable {
        var files: Set<String>
        var faces: Set<String>
        var masks: Set<String>
        var findings: Set<String>
    }

    private func snapshot(_ path: String) throws -> Snapshot {
        let catalog = try Catalog(path: path)
        let (files, faces, masks) = try catalog.pool.read { db in
            (Set(try String.fetchAll(db, sql: "SELECT path || ' ' || COALESCE(sha256, '') FROM files")),
             Set(try String.fetchAll(db, sql: "SELECT sha256 || ' ' || face_index || ' ' || COALESCE(crop512, '') || ' ' || COALESCE(crop256, '') FROM faces")),
             Set(try String.fetchAll(db, sql: "SELECT sha256 || ' ' || COALESCE(e4e_input, '') || ' ' || ok FROM masks")))
        }
        let findings = Set(try CurationReport(catalog: catalog).lines.map { "\($0.kind) \($0.paths.sorted().joined(separator: " "))" })
        return Snapshot(files: files, faces: faces, masks: masks, findings: findings)
    }

    func testThreePartitionsMergedEqualOneMachineAndTheMergeIsIdempotent() throws {
        try TestSupport.requireAssets()
        let dir = try TestSupport.temporaryDirectory()
        let photos = dir.appendingPathComponent("photos")
        try FileManager.default.copyItem(at: TestSupport.sampleIdentities, to: photos)
        // A copy under another identity: a cross-partition duplicate for curation to find.
        try FileManager.default.createDirectory(at: photos.appendingPathComponent("copycat"), withIntermediateDirectories: true)
        try FileManager.default.copyItem(at: TestSupport.obama, to: photos.appendingPathComponent("copycat/copy.jpg"))

        let single = dir.appendingPathComponent("single.sqlite").path
        for args in [["ingest", photos.path], ["masks"], ["curate"]] {
            XCTAssertEqual(try TestSupport.runCLI(args + ["--catalog", single]).status, 0, "\(args)")
        }

        let scripts = TestSupport.repoRoot.appendingPathComponent("Pipelines/cluster")
        let parts = dir.appendingPathComponent("parts")
        for k in 1...3 {
            let r = try TestSupport.run("/bin/bash", [scripts.appendingPathComponent("slurm-ingest.sh").path], environment: [
                "SLURM_ARRAY_TASK_ID": "\(k)", "SLURM_ARRAY_TASK_COUNT": "3", "PIDIFF_DATA": TestSupport.cli.path,
                "PIDIFF_PHOTOS": photos.path, "PIDIFF_PARTS": parts.path])
            XCTAssertEqual(r.status, 0, r.stderr)
        }
        let partCounts = try (1...3).map { k in
            try Catalog(path: parts.appendingPathComponent("part-\(k)-of-3.sqlite").path).pool.read { try Int.fetchOne($0, sql: "SELECT COUNT(*) FROM files")! }
        }
        XCTAssertEqual(partCounts.reduce(0, +), try snapshot(single).files.count, "every photo in exactly one partition: \(partCounts)")
        XCTAssertGreaterThan(partCounts.filter { $0 > 0 }.count, 1, "the photos spread over partitions: \(partCounts)")

        let merged = dir.appendingPathComponent("merged.sqlite").path
        let r = try TestSupport.run("/bin/bash", [scripts.appendingPathComponent("slurm-merge.sh").path], environment: [
            "PIDIFF_DATA": TestSupport.cli.path, "PIDIFF_PARTS": parts.path, "PIDIFF_CATALOG": merged])
        XCTAssertEqual(r.status, 0, r.stderr)
        let one = try snapshot(single)
        XCTAssertGreaterThan(one.faces.count, 5)
        XCTAssertFalse(one.findings.isEmpty, "the copy across identities is a finding")
        XCTAssertEqual(try snapshot(merged), one)

        // Again: nothing added, still clean.
        let again = try TestSupport.runCLI(["catalog", "merge"] + (1...3).map { parts.appendingPathComponent("part-\($0)-of-3.sqlite").path }
                                           + ["--into", merged, "--json"])
        XCTAssertEqual(again.status, 0, again.stderr)
        for line in again.stdout.split(separator: "\n") {
            let summary = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            XCTAssertEqual(summary["files"] as? Int, 0)
            XCTAssertEqual(summary["runs"] as? Int, 0)
        }
        XCTAssertEqual(try TestSupport.runCLI(["verify", "--catalog", merged]).status, 0)

        // A part ingested with other parameters is refused, naming the parameter.
        let pipeline = dir.appendingPathComponent("other.yaml")
        try "ingest:\n  upsample: 0\n".write(to: pipeline, atomically: true, encoding: .utf8)
        let other = dir.appendingPathComponent("other.sqlite").path
        XCTAssertEqual(try TestSupport.runCLI(["ingest", photos.appendingPathComponent("biden").deletingLastPathComponent().path,
                                               "--catalog", other, "--pipeline", pipeline.path, "--partition", "1/3"]).status, 0)
        let refused = try TestSupport.runCLI(["catalog", "merge", other, "--into", merged])
        XCTAssertEqual(refused.status, 1)
        XCTAssertTrue(refused.stderr.contains("ingest.upsample"), refused.stderr)
        // Also when that part's run was killed at the scheduler's time limit (its results stay).
        try Catalog(path: other).pool.write { try $0.execute(sql: "UPDATE runs SET status = 'interrupted'") }
        let killed = try TestSupport.runCLI(["catalog", "merge", other, "--into", merged])
        XCTAssertEqual(killed.status, 1, killed.stdout)
        XCTAssertTrue(killed.stderr.contains("ingest.upsample"), killed.stderr)

        // A part whose masks ran with other mask parameters is refused too, naming the key.
        let maskPipeline = dir.appendingPathComponent("mask.yaml")
        try "mask:\n  iterations: 3\n".write(to: maskPipeline, atomically: true, encoding: .utf8)
        let masked = dir.appendingPathComponent("masked.sqlite").path
        XCTAssertEqual(try TestSupport.runCLI(["ingest", photos.path, "--catalog", masked, "--partition", "2/3"]).status, 0)
        XCTAssertEqual(try TestSupport.runCLI(["masks", "--catalog", masked, "--pipeline", maskPipeline.path]).status, 0)
        let mergedRoot = try Catalog(path: merged).dataRoot()
        let artefactsBefore = FileManager.default.enumerator(atPath: mergedRoot.path)?.allObjects.count
        let otherMasks = try TestSupport.runCLI(["catalog", "merge", masked, "--into", merged])
        XCTAssertEqual(FileManager.default.enumerator(atPath: mergedRoot.path)?.allObjects.count, artefactsBefore,
                       "nothing of a refused part (its other masks) reaches the target's data root")
        XCTAssertEqual(otherMasks.status, 1, otherMasks.stdout)
        XCTAssertTrue(otherMasks.stderr.contains("masks ran with other parameters (mask.iterations: 3 here, 5 in the target"), otherMasks.stderr)
        XCTAssertEqual(try snapshot(merged), one, "a refused part changes nothing")
    }

    func testTheKubernetesManifestIsAnIndexedJobPairedWithItsMerge() throws {
        let text = try String(contentsOf: TestSupport.repoRoot.appendingPathComponent("Pipelines/cluster/k8s-ingest.yaml"), encoding: .utf8)
        let documents = try Yams.load_all(yaml: text).compactMap { $0 as? [String: Any] }
        XCTAssertEqual(documents.map { ($0["metadata"] as? [String: Any])?["name"] as? String }, ["pidiff-ingest", "pidiff-merge"])
        let spec = try XCTUnwrap(documents[0]["spec"] as? [String: Any])
        XCTAssertEqual(spec["completionMode"] as? String, "Indexed")
        let completions = try XCTUnwrap(spec["completions"] as? Int)
        XCTAssertEqual(spec["parallelism"] as? Int, completions)
        let container = try XCTUnwrap((((spec["template"] as? [String: Any])?["spec"] as? [String: Any])?["containers"] as? [[String: Any]])?.first)
        let env = Dictionary(uniqueKeysWithValues: (container["env"] as? [[String: Any]] ?? []).map { ($0["name"] as! String, "\($0["value"]!)") })
        XCTAssertEqual(env["PIDIFF_PARTITIONS"], "\(completions)", "partitions = completions")
        let script = (container["args"] as? [String])?.joined() ?? ""
        XCTAssertTrue(script.contains("JOB_COMPLETION_INDEX + 1") && script.contains("--partition"), script)
        let merge = "\(documents[1])"
        XCTAssertTrue(merge.contains("catalog merge") && merge.contains("verify"), merge)
    }
}

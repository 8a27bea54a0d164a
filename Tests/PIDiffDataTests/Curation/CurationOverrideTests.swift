import Foundation
import XCTest
@testable import PIDiffData
@testable import PIDiffModel
@testable import PIDiffCatalog

/// `curate override`: a person's keep, reject and accepted merge, recorded with who and why,
/// honoured by selection and by later curate runs.
final class CurationOverrideTests: XCTestCase {
    func testKeepRejectAndAcceptedMergeAreHonouredAndRecorded() async throws {
        try TestSupport.requireAssets()
        let dir = try TestSupport.temporaryDirectory()
        let photos = dir.appendingPathComponent("photos")
        try FileManager.default.copyItem(at: TestSupport.sampleIdentities, to: photos)
        let copy = photos.appendingPathComponent("obama/obama_copy.jpg")
        try FileManager.default.copyItem(at: TestSupport.obama, to: copy)
        let catalog = dir.appendingPathComponent("c.sqlite").path
        func cli(_ args: [String]) throws -> TestSupport.ProcessResult { try TestSupport.runCLI(args + ["--catalog", catalog]) }
        for args in [["ingest", photos.path], ["masks"], ["curate"]] { XCTAssertEqual(try cli(args).status, 0, "\(args)") }
        func usable() throws -> [String: [String]] { try Catalog(path: catalog).usableImages().mapValues { $0.map(\.path) } }
        let before = try usable()
        XCTAssertEqual(before["obama"]?.contains(copy.path), false, "curation drops one copy")
        let dropped = copy.path
        let kept = try XCTUnwrap(before["obama"]?.first { $0.hasSuffix("/obama.jpg") || $0.hasSuffix("/obama_copy.jpg") })

        XCTAssertEqual(try cli(["curate", "override", "--keep", dropped]).status, 64, "a reason is required")
        XCTAssertEqual(try cli(["curate", "override", "--keep", dropped, "--reason", "a different day", "--by", "ann"]).status, 0)
        XCTAssertEqual(try cli(["curate", "override", "--reject", kept, "--reason", "blurred", "--by", "ann"]).status, 0)
        XCTAssertEqual(try cli(["curate", "override", "--accept-merge", "biden=obama", "--reason", "test merge", "--by", "bob"]).status, 0)
        XCTAssertNotEqual(try cli(["curate", "override", "--keep", "/no/such.jpg", "--reason", "x"]).status, 0)
        let loop = try cli(["curate", "override", "--accept-merge", "obama=biden", "--reason", "loop"])
        XCTAssertEqual(loop.status, 1)
        XCTAssertTrue(loop.stderr.contains("already part of another accepted merge"), loop.stderr)

        let after = try usable()
        XCTAssertEqual(after["obama"]?.contains(dropped), true, "kept over the duplicate decision")
        XCTAssertEqual(after["obama"]?.contains(kept), false, "rejected")
        // The merge takes effect on the next curate run and is recorded with the person's reason.
        XCTAssertEqual(try cli(["curate"]).status, 0)
        XCTAssertEqual(try Catalog(path: catalog).identityAliases()["biden"], "obama")
        let listed = try cli(["curate", "override", "--list"])
        XCTAssertEqual(listed.stdout.split(separator: "\n").count, 3, listed.stdout)
        XCTAssertTrue(listed.stdout.contains("by ann: a different day") && listed.stdout.contains("by bob: test merge"), listed.stdout)
        // Still honoured after curate ran again.
        XCTAssertEqual(try usable()["obama"]?.contains(dropped), true)
    }

    /// A merge a person accepts wins over an alias an earlier `--apply-merges` run proposed for the
    /// same identity, and an identity proposed into it follows it (one level of aliases).
    func testAnAcceptedMergeReplacesAnEarlierProposal() throws {
        try TestSupport.requireAssets()
        let dir = try TestSupport.temporaryDirectory()
        let catalog = dir.appendingPathComponent("c.sqlite").path
        func cli(_ args: [String]) throws -> TestSupport.ProcessResult { try TestSupport.runCLI(args + ["--catalog", catalog]) }
        for args in [["ingest", TestSupport.sampleIdentities.path], ["curate"]] { XCTAssertEqual(try cli(args).status, 0, "\(args)") }
        let c = try Catalog(path: catalog)
        func propose(_ alias: String, into canonical: String) throws {
            // As an earlier `curate --apply-merges` run would have recorded it.
            try c.pool.write { db in
                let id = { (name: String) in try Int64.fetchOne(db, sql: "SELECT id FROM identities WHERE name = ?", arguments: [name])! }
                let run = try RunRecorder.recordCompleted(db, command: "curate", fingerprint: "", parameters: "{}", counts: "{}")
                try IdentityAliasRecord(identityID: id(alias), canonicalIdentityID: id(canonical), runID: run, score: 0.4, reason: "proposed")
                    .insert(db, onConflict: .replace)
            }
        }
        try propose("biden", into: "unlabelled")
        XCTAssertEqual(try cli(["curate", "override", "--accept-merge", "biden=obama", "--reason", "checked", "--by", "ann"]).status, 0)
        XCTAssertEqual(try cli(["curate"]).status, 0)
        XCTAssertEqual(try c.identityAliases()["biden"], "obama", "the person's merge, not the earlier proposal")
        // A proposal into an identity a person merged elsewhere follows it there.
        try propose("unlabelled", into: "biden")
        XCTAssertEqual(try cli(["curate"]).status, 0)
        XCTAssertEqual(try c.identityAliases(), ["biden": "obama", "unlabelled": "obama"])
    }
}

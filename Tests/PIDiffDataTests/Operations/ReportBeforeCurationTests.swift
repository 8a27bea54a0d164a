import Foundation
import XCTest
@testable import PIDiffData
@testable import PIDiffCatalog

/// Before curation has run, the HTML report calls no photo "kept": nothing has been checked.
final class ReportBeforeCurationTests: XCTestCase {
    func testTheReportSaysCurationHasNotRunUntilItHas() async throws {
        try TestSupport.requireAssets()
        let dir = try TestSupport.temporaryDirectory()
        let catalog = dir.appendingPathComponent("c.sqlite")
        _ = try await TestSupport.ingest([TestSupport.sampleIdentities], catalog: catalog)
        let out = dir.appendingPathComponent("report")
        _ = try HTMLReport(catalogPath: catalog.path, directory: out).write()
        let index = try String(contentsOf: out.appendingPathComponent("index.html"), encoding: .utf8)
        let identities = try String(contentsOf: out.appendingPathComponent("identities.html"), encoding: .utf8)
        XCTAssertTrue(index.contains("Curation has not run"))
        XCTAssertFalse(identities.contains("class=\"kept\"") || identities.contains("photos kept"), "nothing is kept before curation")
        XCTAssertTrue(identities.contains("not curated yet"))

        _ = try await CurationPipeline(catalogPath: catalog.path).run()
        _ = try HTMLReport(catalogPath: catalog.path, directory: out).write()
        let after = try String(contentsOf: out.appendingPathComponent("identities.html"), encoding: .utf8)
        XCTAssertTrue(after.contains("photos kept"))
        XCTAssertFalse(try String(contentsOf: out.appendingPathComponent("index.html"), encoding: .utf8).contains("Curation has not run"))
    }
}

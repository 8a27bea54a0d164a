import Foundation
import GRDB
import XCTest
@testable import PIDiffCatalog
@testable import PIDiffData

/// A catalog is opened only when it is ours and of a schema this version knows; its data root
/// follows it when the project is copied or moved.
final class CatalogOwnershipTests: XCTestCase {
    func testAnotherProgramsSQLiteFileIsRefusedAndLeftUntouched() throws {
        let dir = try TestSupport.temporaryDirectory()
        let file = dir.appendingPathComponent("other.sqlite")
        try DatabaseQueue(path: file.path).write { try $0.execute(sql: "CREATE TABLE people (name TEXT); INSERT INTO people VALUES ('x')") }
        let before = try Data(contentsOf: file)
        let r = try TestSupport.runCLI(["status", "--catalog", file.path])
        XCTAssertEqual(r.status, 1)
        XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, r.stderr)
        XCTAssertTrue(r.stderr.contains("not a pidiff-data catalog (an SQLite database with tables people)"), r.stderr)
        XCTAssertEqual(try Data(contentsOf: file), before)
        XCTAssertFalse(FileManager.default.fileExists(atPath: file.path + "-wal"), "not switched to WAL")
    }

    func testACatalogFromANewerVersionIsRefusedNamingTheSchema() throws {
        let dir = try TestSupport.temporaryDirectory()
        let path = dir.appendingPathComponent("c.sqlite").path
        try Catalog(path: path).pool.write { try $0.execute(sql: "INSERT INTO grdb_migrations (identifier) VALUES ('v99-future')") }
        XCTAssertThrowsError(try Catalog(path: path)) { error in
            XCTAssertTrue("\(error)".contains("newer pidiff-data (schema v99-future)") && "\(error)".contains(Catalog.migrator.migrations.last!), "\(error)")
        }
    }

    func testACopiedProjectWritesIntoItsOwnDataRootAndAnIgnoredDataRootIsSaid() async throws {
        try TestSupport.requireAssets()
        let dir = try TestSupport.temporaryDirectory()
        let original = dir.appendingPathComponent("a"), copy = dir.appendingPathComponent("b")
        let photos = original.appendingPathComponent("photos/obama")
        try FileManager.default.createDirectory(at: photos, withIntermediateDirectories: true)
        try FileManager.default.copyItem(at: TestSupport.obama, to: photos.appendingPathComponent("1.jpg"))
        _ = try await TestSupport.ingest([original.appendingPathComponent("photos")], catalog: original.appendingPathComponent("c.sqlite"))
        let stored = try await Catalog(path: original.appendingPathComponent("c.sqlite").path).pool.read {
            try String.fetchOne($0, sql: "SELECT value FROM meta WHERE key = 'data_root'")
        }
        XCTAssertEqual(stored, "c.sqlite.data", "recorded relative to the catalog")

        try FileManager.default.copyItem(at: original, to: copy)
        try FileManager.default.copyItem(at: TestSupport.sampleIdentities.appendingPathComponent("obama/obama2.jpg"),
                                         to: copy.appendingPathComponent("photos/obama/2.jpg"))
        let crops = { (root: URL) in (FileManager.default.enumerator(atPath: root.appendingPathComponent("c.sqlite.data").path)?.allObjects.count ?? 0) }
        let originalCrops = crops(original)
        let r = try TestSupport.runCLI(["ingest", copy.appendingPathComponent("photos").path, "--catalog", copy.appendingPathComponent("c.sqlite").path,
                                        "--data-root", dir.appendingPathComponent("elsewhere").path])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stderr.contains("--data-root \(dir.appendingPathComponent("elsewhere").path) is not used"), r.stderr)
        XCTAssertEqual(crops(original), originalCrops, "nothing written into the original project")
        XCTAssertGreaterThan(crops(copy), originalCrops)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir.appendingPathComponent("elsewhere").path))
    }

    /// Catalogs written before the data root was stored relative to them hold an absolute path.
    /// Copied with their default data root, the copy uses its own; opened where they are, the
    /// root becomes relative; a root chosen elsewhere (`--data-root`) stays.
    func testALegacyAbsoluteDataRootFollowsACopiedProject() async throws {
        let dir = try TestSupport.temporaryDirectory()
        /// As an older version left it: an absolute root, and the upgrade not yet applied.
        func setLegacyRoot(_ catalog: URL, _ value: String) throws {
            try Catalog(path: catalog.path).pool.write {
                try $0.execute(sql: "UPDATE meta SET value = ? WHERE key = 'data_root'", arguments: [value])
                try $0.execute(sql: "DELETE FROM grdb_migrations WHERE identifier = 'v11-relative-data-root'")
            }
        }
        func stored(_ catalog: URL) throws -> String? {
            try Catalog(path: catalog.path).pool.read { try String.fetchOne($0, sql: "SELECT value FROM meta WHERE key = 'data_root'") }
        }
        let original = dir.appendingPathComponent("a"), copy = dir.appendingPathComponent("b")
        try FileManager.default.createDirectory(at: original.appendingPathComponent("c.sqlite.data"), withIntermediateDirectories: true)
        _ = try Catalog(path: original.appendingPathComponent("c.sqlite").path).dataRoot()
        try setLegacyRoot(original.appendingPathComponent("c.sqlite"), original.appendingPathComponent("c.sqlite.data").path)
        try FileManager.default.copyItem(at: original, to: copy)
        // The copy, opened first: its own data root, recorded relative.
        XCTAssertEqual(try Catalog(path: copy.appendingPathComponent("c.sqlite").path).dataRoot().path, copy.appendingPathComponent("c.sqlite.data").path)
        XCTAssertEqual(try stored(copy.appendingPathComponent("c.sqlite")), "c.sqlite.data")
        // The original, where it always was: the same root, now relative.
        XCTAssertEqual(try stored(original.appendingPathComponent("c.sqlite")), "c.sqlite.data")
        // A root chosen outside the project stays absolute, in a legacy catalog as in a new one,
        // even when it has the default name and a folder of that name appears beside the catalog.
        let chosen = dir.appendingPathComponent("big-disk/crops").path
        try setLegacyRoot(copy.appendingPathComponent("c.sqlite"), chosen)
        XCTAssertEqual(try Catalog(path: copy.appendingPathComponent("c.sqlite").path).dataRoot().path, chosen)
        XCTAssertEqual(try stored(copy.appendingPathComponent("c.sqlite")), chosen)
        let project = dir.appendingPathComponent("p"), ssd = dir.appendingPathComponent("ssd/c.sqlite.data")
        _ = try Catalog(path: project.appendingPathComponent("c.sqlite").path).dataRoot(preferred: ssd.path)
        try FileManager.default.createDirectory(at: project.appendingPathComponent("c.sqlite.data"), withIntermediateDirectories: true)
        XCTAssertEqual(try Catalog(path: project.appendingPathComponent("c.sqlite").path).dataRoot().path, ssd.path)
        XCTAssertEqual(try stored(project.appendingPathComponent("c.sqlite")), ssd.path)
    }
}

/// One writer per catalog and per output folder, whatever path leads there.
final class LockTests: XCTestCase {
    func testASymlinkToTheCatalogTakesTheCatalogsLock() throws {
        let dir = try TestSupport.temporaryDirectory()
        let real = dir.appendingPathComponent("c.sqlite")
        _ = try Catalog(path: real.path)
        let link = dir.appendingPathComponent("link.sqlite")
        try FileManager.default.createSymbolicLink(at: link, withDestinationURL: real)
        let held = try CatalogLock(catalogPath: real.path)
        XCTAssertThrowsError(try CatalogLock(catalogPath: link.path)) { XCTAssertTrue("\($0)".contains("in use"), "\($0)") }
        let r = try TestSupport.runCLI(["masks", "--catalog", link.path])
        XCTAssertEqual(r.status, 75, r.stderr)
        withExtendedLifetime(held) {}
    }

    func testTwoRunsIntoOneOutputFolderAreRefused() throws {
        let dir = try TestSupport.temporaryDirectory()
        let catalog = dir.appendingPathComponent("c.sqlite")
        _ = try Catalog(path: catalog.path)
        let out = dir.appendingPathComponent("shards")
        let held = try CatalogLock(outputFolder: out)
        let r = try TestSupport.runCLI(["export", "--catalog", catalog.path, "--split", "s", "--out", out.path])
        XCTAssertEqual(r.status, 75, r.stderr)
        XCTAssertTrue(r.stderr.contains("output folder \(out.path) is in use"), r.stderr)
        withExtendedLifetime(held) {}
    }

    func testBackupRefusesTheCatalogsOwnSidecarNames() throws {
        let dir = try TestSupport.temporaryDirectory()
        let catalog = dir.appendingPathComponent("c.sqlite")
        _ = try Catalog(path: catalog.path)
        for suffix in ["-journal", "-wal", "-shm", ".lock"] {
            let r = try TestSupport.runCLI(["backup", "--catalog", catalog.path, "--to", catalog.path + suffix])
            XCTAssertNotEqual(r.status, 0, suffix)
            XCTAssertTrue(r.stderr.contains("catalog's own \(suffix) file") || r.stderr.contains("already exists"), r.stderr)
        }
        let journal = try TestSupport.runCLI(["backup", "--catalog", catalog.path, "--to", catalog.path + "-journal"])
        XCTAssertTrue(journal.stderr.contains("catalog's own -journal file"), journal.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: catalog.path + "-journal"))
    }
}

import Foundation
import PIDiffModel
import GRDB

/// `pidiff-data backup`: a consistent copy of the catalog taken while other commands keep
/// writing. SQLite's online backup API copies the pages of one read snapshot (a WAL reader does
/// not block the writer, nor the writer it); the copy goes to a temporary name beside the target,
/// is checked with `PRAGMA integrity_check`, and only then renamed into place, so an interrupted
/// or failed backup never leaves a file at the target that looks like a backup.
public struct CatalogBackup: Sendable {
    public struct Summary: Codable, Sendable {
        public var catalog: String
        public var backup: String
        public var bytes: Int
        public var seconds: Double
        /// The data root the backup refers to; artefacts are not copied (they are content-addressed
        /// and immutable: back the folder up with any file-level tool).
        public var dataRoot: String
        package enum CodingKeys: String, CodingKey { case catalog, backup, bytes, seconds, dataRoot = "data_root" }
        package init(catalog: String, backup: String, bytes: Int, seconds: Double, dataRoot: String) {
            self.catalog = catalog
            self.backup = backup
            self.bytes = bytes
            self.seconds = seconds
            self.dataRoot = dataRoot
        }
    }

    public var catalogPath: String
    public var destination: String

    public init(catalogPath: String, destination: String) {
        self.catalogPath = catalogPath
        self.destination = destination
    }

    public func run() throws -> Summary {
        guard FileManager.default.fileExists(atPath: catalogPath) else { throw CatalogError.open(catalogPath, "no such catalog") }
        guard !FileManager.default.fileExists(atPath: destination) else {
            throw BackupError.failed(destination, "already exists; choose a new name (backups are never overwritten)")
        }
        // SQLite and the lock treat these names as the catalog's own: a backup there would be
        // deleted as a leftover journal, or read as the live catalog's write-ahead log.
        let own = CatalogLock.resolved(catalogPath)
        let resolvedTarget = CatalogLock.resolved(destination)
        if let suffix = ["", "-journal", "-wal", "-shm", ".lock", ".run.lock"].first(where: { own + $0 == resolvedTarget }) {
            throw BackupError.failed(destination, suffix.isEmpty ? "is the catalog itself"
                                     : "is the catalog's own \(suffix) file, which SQLite or the lock would overwrite or delete; choose another name")
        }
        let start = Date()
        let catalog = try Catalog(path: catalogPath)
        let target = URL(fileURLWithPath: destination)
        let temporary = target.deletingLastPathComponent().appendingPathComponent(".\(target.lastPathComponent).\(UUID().uuidString).partial")
        defer { try? FileManager.default.removeItem(at: temporary) }
        do {
            let copy = try DatabaseQueue(path: temporary.path)
            try catalog.pool.backup(to: copy)
            // A self-contained single file: no -wal beside it to forget when copying it around.
            try copy.writeWithoutTransaction { try $0.execute(sql: "PRAGMA journal_mode = DELETE") }
            // The data root is recorded relative to the catalog: the copy, kept elsewhere, must
            // still find the artefacts (which a backup does not copy).
            let root = try catalog.dataRoot().path
            try copy.write { try $0.execute(sql: "UPDATE meta SET value = ? WHERE key = 'data_root'", arguments: [root]) }
            let problems = try copy.read { try String.fetchAll($0, sql: "PRAGMA integrity_check") }.filter { $0 != "ok" }
            guard problems.isEmpty else {
                throw BackupError.failed(destination, "the copy fails integrity_check: \(problems.prefix(5).joined(separator: "; "))")
            }
            try copy.close()
        } catch let error as BackupError {
            throw error
        } catch {
            throw BackupError.failed(destination, "\(error)")
        }
        if rename(temporary.path, target.path) != 0 {
            throw BackupError.failed(destination, String(cString: strerror(errno)))
        }
        let bytes = (try? FileManager.default.attributesOfItem(atPath: target.path)[.size] as? Int) ?? 0
        return Summary(catalog: catalogPath, backup: target.path, bytes: bytes, seconds: Date().timeIntervalSince(start),
                       dataRoot: try catalog.dataRoot().path)
    }
}

public enum BackupError: Error, CustomStringConvertible {
    case failed(String, String)
    public var description: String {
        switch self { case .failed(let p, let r): return "backup \(p): \(r)" }
    }
}

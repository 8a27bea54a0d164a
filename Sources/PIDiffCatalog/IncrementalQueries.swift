import Foundation
import GRDB
import PIDiffModel

/// The questions ingest's incremental check asks for every scanned item (through the pool's
/// readers, so scanner and workers ask them concurrently with the writer).
extension Catalog {
    /// Same path, size, mtime, identity, source and metadata as catalogued, and its content
    /// already has a result under `fingerprint`: the item needs neither reading nor decoding.
    public func isUnchanged(_ item: ScanItem, stat: FileStat, fingerprint: String) throws -> Bool {
        try pool.read { db in
            try Bool.fetchOne(db, sql: """
                SELECT 1 FROM files f
                JOIN identities i ON i.id = f.identity_id
                JOIN sources s ON s.id = f.source_id
                JOIN image_results r ON r.sha256 = f.sha256 AND r.params_fingerprint = ?
                WHERE f.path = ? AND f.read_error IS NULL AND f.byte_size = ? AND f.mtime_ns = ? AND i.name = ? AND s.location = ?
                  AND f.caption IS ? AND f.race IS ? AND f.age IS ? AND f.gender IS ? AND f.origin IS ? AND f.hint IS ?
                """, arguments: [fingerprint, item.path, stat.byteSize, stat.mtimeNs, item.identity, item.sourceLocation,
                                 item.caption, item.labels.race, item.labels.age, item.labels.gender, item.origin, item.hint]) ?? false
        }
    }

    /// Whether content `sha256` has an ingest result under `fingerprint`.
    public func hasIngestResult(sha256: String, fingerprint: String) throws -> Bool {
        try pool.read { db in
            try Bool.fetchOne(db, sql: "SELECT 1 FROM image_results WHERE sha256 = ? AND params_fingerprint = ?",
                              arguments: [sha256, fingerprint]) ?? false
        }
    }
}

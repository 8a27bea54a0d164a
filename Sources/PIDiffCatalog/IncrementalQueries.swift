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
            // A four-table join with NULL-aware comparisons (`IS`): clearer as SQL than as a request.
            try Bool.fetchOne(db, sql: """
                SELECT 1 FROM files f
                JOIN identities i ON i.id = f.identity_id
                JOIN sources s ON s.id = f.source_id
                JOIN image_results r ON r.sha256 = f.sha256 AND r.params_fingerprint = :fingerprint
                WHERE f.path = :path AND f.read_error IS NULL AND f.byte_size = :byteSize AND f.mtime_ns = :mtimeNs
                  AND i.name = :identity AND s.location = :source
                  AND f.caption IS :caption AND f.race IS :race AND f.age IS :age AND f.gender IS :gender
                  AND f.origin IS :origin AND f.hint IS :hint
                """, arguments: [
                    "fingerprint": fingerprint, "path": item.path, "byteSize": stat.byteSize, "mtimeNs": stat.mtimeNs,
                    "identity": item.identity, "source": item.sourceLocation, "caption": item.caption,
                    "race": item.labels.race, "age": item.labels.age, "gender": item.labels.gender,
                    "origin": item.origin, "hint": item.hint,
                ]) ?? false
        }
    }

    /// Whether content `sha256` has an ingest result under `fingerprint`.
    public func hasIngestResult(sha256: String, fingerprint: String) throws -> Bool {
        try pool.read { db in
            try ImageResultRecord.exists(db, key: [ImageResultRecord.CodingKeys.sha256.rawValue: sha256,
                                                   ImageResultRecord.CodingKeys.paramsFingerprint.rawValue: fingerprint])
        }
    }
}

import Foundation
import PIDiffModel
import GRDB

/// The only writer of the catalog. Results arrive in batches, each committed in one
/// transaction: a file row and everything derived from its content land together or not at all,
/// so a run killed at any point leaves a consistent catalog and the next run redoes the rest.
package actor CatalogWriter {
    package let catalog: Catalog
    package let runID: Int64
    package let fingerprint: String
    private var sourceIDs: [String: Int64] = [:]
    private var identityIDs: [String: Int64] = [:]

    package init(catalog: Catalog, runID: Int64, fingerprint: String) {
        self.catalog = catalog
        self.runID = runID
        self.fingerprint = fingerprint
    }

    package func finish(status: String, counts: [String: Int]) throws {
        try RunRecorder.finish(catalog, runID: runID, status: status, counts: counts)
    }

    /// After a completed scan: files of the scanned sources that the scan did not see are marked
    /// with a read error, which takes them out of the usable set (rows, hashes and crops stay, so
    /// a split that holds them still exports). A manifest defines its photos, so a path it no
    /// longer lists is marked; a folder's file only once it is gone from disk (a folder the scan
    /// could not read must not empty the dataset). Returns how many were marked.
    package func markVanished(sources: [(location: String, kind: SourceKind)], seen: Set<PathKey>) throws -> Int {
        try catalog.pool.write { [runID] db in
            var marked = 0
            for source in sources {
                let rows = try Row.fetchAll(db, sql: """
                    SELECT f.id, f.path FROM files f JOIN sources s ON s.id = f.source_id
                    WHERE s.location = ? AND f.read_error IS NULL
                    """, arguments: [source.location])
                for row in rows {
                    let path: String = row["path"]
                    if seen.contains(PathKey(path)) || (source.kind == .folders && FileManager.default.fileExists(atPath: path)) { continue }
                    let reason = source.kind == .folders ? "vanished: no longer in \(source.location)"
                                                         : "vanished: no longer listed in \(source.location)"
                    try db.execute(sql: "UPDATE files SET read_error = ?, run_id = ? WHERE id = ?", arguments: [reason, runID, row["id"] as Int64])
                    try db.execute(sql: "INSERT INTO run_problems (run_id, location, reason) VALUES (?, ?, ?)", arguments: [runID, path, reason])
                    marked += 1
                }
            }
            return marked
        }
    }

    package func commit(_ batch: [IngestResult]) throws {
        guard !batch.isEmpty else { return }
        var sources = sourceIDs, identities = identityIDs
        try catalog.pool.write { [runID, fingerprint] db in
            for result in batch {
                switch result {
                case .unchanged:
                    continue
                case .problem(let p):
                    try db.execute(sql: "INSERT INTO run_problems (run_id, location, reason) VALUES (?, ?, ?)",
                                   arguments: [runID, p.location, p.reason])
                case .unreadable(let item, let stat, let reason):
                    try db.execute(sql: "INSERT INTO run_problems (run_id, location, reason) VALUES (?, ?, ?)",
                                   arguments: [runID, item.path, reason])
                    try Self.upsertFile(db, item, sha: nil, byteSize: stat?.byteSize, mtimeNs: stat?.mtimeNs, readError: reason,
                                        runID: runID, sources: &sources, identities: &identities)
                case .reused(let item, let info):
                    try Self.upsertFile(db, item, sha: info.sha256, byteSize: info.byteSize, mtimeNs: info.mtimeNs, readError: nil,
                                        runID: runID, sources: &sources, identities: &identities)
                case .analysed(let item, let info, let analysis, _):
                    try Self.insertAnalysis(db, analysis, fingerprint: fingerprint, runID: runID)
                    if analysis.outcome != .ok && analysis.outcome != .noFace {
                        // Undecodable, not an image, too small or too large: a problem of this run, listed by `status --problems`.
                        try db.execute(sql: "INSERT INTO run_problems (run_id, location, reason) VALUES (?, ?, ?)",
                                       arguments: [runID, item.path, "\(analysis.outcome.rawValue): \(analysis.reason ?? "")"])
                    }
                    try Self.upsertFile(db, item, sha: info.sha256, byteSize: info.byteSize, mtimeNs: info.mtimeNs, readError: nil,
                                        runID: runID, sources: &sources, identities: &identities)
                }
            }
        }
        sourceIDs = sources
        identityIDs = identities
    }

    private static func id(_ db: Database, _ cache: inout [String: Int64], insert: String, select: String, _ args: StatementArguments, key: String) throws -> Int64 {
        if let id = cache[key] { return id }
        try db.execute(sql: insert, arguments: args)
        let id = try Int64.fetchOne(db, sql: select, arguments: [key])!
        cache[key] = id
        return id
    }

    private static func upsertFile(_ db: Database, _ item: ScanItem, sha: String?, byteSize: Int?, mtimeNs: Int64?, readError: String?,
                                   runID: Int64, sources: inout [String: Int64], identities: inout [String: Int64]) throws {
        let sourceID = try id(db, &sources, insert: "INSERT OR IGNORE INTO sources (kind, location, first_run_id) VALUES (?, ?, ?)",
                              select: "SELECT id FROM sources WHERE location = ?",
                              [item.sourceKind.rawValue, item.sourceLocation, runID], key: item.sourceLocation)
        let identityID = try id(db, &identities, insert: "INSERT OR IGNORE INTO identities (name) VALUES (?)",
                                select: "SELECT id FROM identities WHERE name = ?", [item.identity], key: item.identity)
        try db.execute(sql: """
            INSERT INTO files (path, source_id, identity_id, byte_size, mtime_ns, sha256, read_error,
                               caption, race, age, gender, origin, hint, run_id)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            ON CONFLICT(path) DO UPDATE SET
                source_id = excluded.source_id, identity_id = excluded.identity_id, byte_size = excluded.byte_size,
                mtime_ns = excluded.mtime_ns, sha256 = excluded.sha256, read_error = excluded.read_error,
                caption = excluded.caption, race = excluded.race, age = excluded.age, gender = excluded.gender,
                origin = excluded.origin, hint = excluded.hint, run_id = excluded.run_id
            """, arguments: [item.path, sourceID, identityID, byteSize, mtimeNs, sha, readError,
                             item.caption, item.labels.race, item.labels.age, item.labels.gender, item.origin, item.hint, runID])
    }

    private static func json<T: Encodable>(_ value: T) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return String(decoding: try encoder.encode(value), as: UTF8.self)
    }

    private static func insertAnalysis(_ db: Database, _ a: ImageAnalysis, fingerprint: String, runID: Int64) throws {
        try db.execute(sql: "INSERT OR IGNORE INTO images (sha256, byte_size, format, width, height) VALUES (?, ?, ?, ?, ?)",
                       arguments: [a.sha256, a.byteSize, a.format, a.width, a.height])
        try db.execute(sql: """
            INSERT OR IGNORE INTO image_results (sha256, params_fingerprint, outcome, reason, faces_found, run_id)
            VALUES (?, ?, ?, ?, ?, ?)
            """, arguments: [a.sha256, fingerprint, a.outcome.rawValue, a.reason, a.facesFound, runID])
        for f in a.faces {
            let landmarks = try json(f.landmarks.points.map { [$0.x, $0.y] })
            let quad = try json(f.quad.corners.map { [$0.x, $0.y] })
            try db.execute(sql: """
                INSERT OR IGNORE INTO faces (sha256, params_fingerprint, face_index, selected,
                    box_left, box_top, box_right, box_bottom, det_score, landmarks68, quad,
                    face_size, sharpness, roll_degrees, yaw, outside_fraction, padded, quality_ok, quality_reason,
                    crop512, crop256)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """, arguments: [a.sha256, fingerprint, f.index, f.selected, f.box.left, f.box.top, f.box.right, f.box.bottom,
                                 f.box.score, landmarks, quad, f.quality.faceSize, f.quality.sharpness, f.quality.rollDegrees,
                                 f.quality.yaw, f.quality.outsideFraction, f.padded, f.quality.passed, f.quality.reason,
                                 f.crops[512], f.crops[256]])
        }
    }
}

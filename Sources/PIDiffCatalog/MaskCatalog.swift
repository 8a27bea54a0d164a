import Foundation
import PIDiffModel
import GRDB

extension MaskJob {
    package init(row: Row) {
        let lm = (try? JSONDecoder().decode([[Double]].self, from: Data((row["landmarks68"] as String).utf8))) ?? []
        let q = (try? JSONDecoder().decode([[Double]].self, from: Data((row["quad"] as String).utf8))) ?? []
        self.init(sha256: row["sha256"], faceIndex: row["face_index"], path: row["path"] ?? row["sha256"], crop512: row["crop512"], crop256: row["crop256"],
                  landmarks: lm.map { Point(x: $0[0], y: $0[1]) }, quad: AlignmentQuad(corners: q.map { Point(x: $0[0], y: $0[1]) }))
    }
}

/// One face's mask as reports show it.
public struct MaskReportRow: Codable, Sendable {
    public var path: String
    public var identity: String
    public var crop256: String
    public var mask256: String?
    public var e4eInput: String?
    public var coverage: Double?
    public var ok: Bool
    public var reason: String?
    package enum CodingKeys: String, CodingKey { case path, identity, crop256, mask256, e4eInput = "e4e_input", coverage, ok, reason }
    package init(path: String, identity: String, crop256: String, mask256: String? = nil, e4eInput: String? = nil, coverage: Double? = nil, ok: Bool, reason: String? = nil) {
        self.path = path
        self.identity = identity
        self.crop256 = crop256
        self.mask256 = mask256
        self.e4eInput = e4eInput
        self.coverage = coverage
        self.ok = ok
        self.reason = reason
    }
}

extension Catalog {
    /// Selected faces under the current ingest fingerprint with crops but no mask under `maskFingerprint`.
    package func pendingMaskJobs(maskFingerprint: String) throws -> [MaskJob] {
        guard let fp = try currentIngestFingerprint() else { return [] }
        return try pool.read { db in
            try Row.fetchAll(db, sql: """
                SELECT fa.sha256, fa.face_index, fa.crop512, fa.crop256, fa.landmarks68, fa.quad,
                       (SELECT MIN(f.path) FROM files f WHERE f.sha256 = fa.sha256) AS path FROM faces fa
                WHERE fa.params_fingerprint = ? AND fa.selected AND fa.crop512 IS NOT NULL AND fa.crop256 IS NOT NULL
                  AND NOT EXISTS (SELECT 1 FROM masks m WHERE m.sha256 = fa.sha256 AND m.face_fingerprint = fa.params_fingerprint
                                  AND m.face_index = fa.face_index AND m.mask_fingerprint = ?)
                ORDER BY fa.sha256, fa.face_index
                """, arguments: [fp, maskFingerprint]).map(MaskJob.init(row:))
        }
    }

    /// The mask job of one selected face with crops under `faceFingerprint` (`verify --repair`).
    package func maskJob(sha256: String, faceFingerprint: String, faceIndex: Int) throws -> MaskJob? {
        try pool.read { db in
            try Row.fetchOne(db, sql: """
                SELECT sha256, face_index, crop512, crop256, landmarks68, quad,
                       (SELECT MIN(f.path) FROM files f WHERE f.sha256 = faces.sha256) AS path FROM faces
                WHERE sha256 = ? AND params_fingerprint = ? AND face_index = ? AND crop512 IS NOT NULL AND crop256 IS NOT NULL
                """, arguments: [sha256, faceFingerprint, faceIndex]).map(MaskJob.init(row:))
        }
    }

    /// Fingerprint of the most recent mask run.
    public func currentMaskFingerprint() throws -> String? {
        try pool.read { try String.fetchOne($0, sql: "SELECT params_fingerprint FROM runs WHERE command = 'masks' ORDER BY id DESC LIMIT 1") }
    }

    /// Masks of every selected face (one row per file path), under the current fingerprints.
    public func maskReport() throws -> [MaskReportRow] {
        guard let fp = try currentIngestFingerprint() else { return [] }
        let mfp = try currentMaskFingerprint()
        let root = try dataRoot()
        return try pool.read { db in
            try Row.fetchAll(db, sql: """
                SELECT f.path, i.name AS identity, fa.crop256, m.mask256, m.e4e_input, m.coverage, m.ok, m.reason
                FROM files f JOIN identities i ON i.id = f.identity_id
                JOIN faces fa ON fa.sha256 = f.sha256 AND fa.params_fingerprint = ? AND fa.selected AND fa.crop256 IS NOT NULL
                JOIN masks m ON m.sha256 = fa.sha256 AND m.face_fingerprint = fa.params_fingerprint
                            AND m.face_index = fa.face_index AND m.mask_fingerprint = ?
                ORDER BY f.path
                """, arguments: [fp, mfp]).map { row in
                func abs(_ s: String?) -> String? { s.map { root.appendingPathComponent($0).path } }
                return MaskReportRow(path: row["path"], identity: row["identity"], crop256: abs(row["crop256"])!,
                                     mask256: abs(row["mask256"]), e4eInput: abs(row["e4e_input"]), coverage: row["coverage"],
                                     ok: row["ok"], reason: row["reason"])
            }
        }
    }

    /// Mask paths per face for `faces --json`, keyed by "sha256/face_index".
    package func maskPaths() throws -> [String: (mask512: String?, mask256: String?, e4eInput: String?)] {
        guard let fp = try currentIngestFingerprint(), let mfp = try currentMaskFingerprint() else { return [:] }
        let root = try dataRoot()
        return try pool.read { db in
            var out: [String: (String?, String?, String?)] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT sha256, face_index, mask512, mask256, e4e_input FROM masks WHERE face_fingerprint = ? AND mask_fingerprint = ?",
                                        arguments: [fp, mfp]) {
                func abs(_ s: String?) -> String? { s.map { root.appendingPathComponent($0).path } }
                out["\(row["sha256"] as String)/\(row["face_index"] as Int)"] = (abs(row["mask512"]), abs(row["mask256"]), abs(row["e4e_input"]))
            }
            return out
        }
    }
}

/// Writes mask results and the mask run, in batched transactions (the single writer for masks).
package actor MaskWriter {
    package let catalog: Catalog
    package let runID: Int64
    package let faceFingerprint: String
    package let maskFingerprint: String

    package init(catalog: Catalog, runID: Int64, faceFingerprint: String, maskFingerprint: String) {
        self.catalog = catalog
        self.runID = runID
        self.faceFingerprint = faceFingerprint
        self.maskFingerprint = maskFingerprint
    }

    package func commit(_ batch: [MaskResult]) throws {
        guard !batch.isEmpty else { return }
        try catalog.pool.write { [runID, faceFingerprint, maskFingerprint] db in
            for r in batch {
                if r.skipped {
                    try db.execute(sql: "INSERT INTO run_problems (run_id, location, reason) VALUES (?, ?, ?)",
                                   arguments: [runID, r.job.path, r.reason ?? "skipped"])
                    continue
                }
                try db.execute(sql: """
                    INSERT OR REPLACE INTO masks (sha256, face_fingerprint, face_index, mask_fingerprint, method,
                        mask512, mask256, e4e_input, coverage, ok, reason, run_id)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """, arguments: [r.job.sha256, faceFingerprint, r.job.faceIndex, maskFingerprint, r.method,
                                     r.mask512, r.mask256, r.e4eInput, r.coverage, r.ok, r.reason, runID])
                if !r.ok, let reason = r.reason {
                    try db.execute(sql: "INSERT INTO run_problems (run_id, location, reason) VALUES (?, ?, ?)",
                                   arguments: [runID, r.job.path + (r.job.faceIndex > 0 ? " (face \(r.job.faceIndex))" : ""), reason])
                }
            }
        }
    }

    package func finish(status: String, counts: [String: Int]) throws {
        try RunRecorder.finish(catalog, runID: runID, status: status, counts: counts)
    }
}

import Foundation
import PIDiffModel
import GRDB

extension MaskJob {
    /// The job of a selected face with both crops; nil for a row without them (or without a
    /// four-corner quad), which has nothing to mask.
    init?(face: FaceRecord, path: String?) {
        guard let crop512 = face.crop512, let crop256 = face.crop256, let quad = face.alignmentQuad else { return nil }
        self.init(sha256: face.sha256, faceIndex: face.faceIndex, path: path ?? face.sha256, crop512: crop512, crop256: crop256,
                  landmarks: face.landmarks68.points, quad: quad)
    }
}

/// A face with a photo that holds its content (the first by path), for messages.
private struct FaceWithPath: Decodable, FetchableRecord {
    /// Decoded from the row's `faces` columns.
    var face: FaceRecord
    var path: String?
    var job: MaskJob? { MaskJob(face: face, path: path) }
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
            try FaceWithPath.fetchAll(db, sql: """
                SELECT fa.*, (SELECT MIN(f.path) FROM files f WHERE f.sha256 = fa.sha256) AS path FROM faces fa
                WHERE fa.params_fingerprint = ? AND fa.selected AND fa.crop512 IS NOT NULL AND fa.crop256 IS NOT NULL
                  AND NOT EXISTS (SELECT 1 FROM masks m WHERE m.sha256 = fa.sha256 AND m.face_fingerprint = fa.params_fingerprint
                                  AND m.face_index = fa.face_index AND m.mask_fingerprint = ?)
                ORDER BY fa.sha256, fa.face_index
                """, arguments: [fp, maskFingerprint]).compactMap(\.job)
        }
    }

    /// The mask job of one selected face with crops under `faceFingerprint` (`verify --repair`).
    package func maskJob(sha256: String, faceFingerprint: String, faceIndex: Int) throws -> MaskJob? {
        try pool.read { db in
            try FaceWithPath.fetchOne(db, sql: """
                SELECT faces.*, (SELECT MIN(f.path) FROM files f WHERE f.sha256 = faces.sha256) AS path FROM faces
                WHERE sha256 = ? AND params_fingerprint = ? AND face_index = ? AND crop512 IS NOT NULL AND crop256 IS NOT NULL
                """, arguments: [sha256, faceFingerprint, faceIndex])?.job
        }
    }

    /// Fingerprint of the most recent mask run.
    public func currentMaskFingerprint() throws -> String? {
        try pool.read { try RunRecord.latest("masks").fetchOne($0)?.paramsFingerprint }
    }

    /// Masks of every selected face (one row per file path), under the current fingerprints.
    public func maskReport() throws -> [MaskReportRow] {
        guard let fp = try currentIngestFingerprint() else { return [] }
        let mfp = try currentMaskFingerprint()
        let root = try dataRoot()
        return try pool.read { db in
            try MaskReportQueryRow.fetchAll(db, sql: """
                SELECT f.path, i.name AS identity, fa.crop256, m.*
                FROM files f JOIN identities i ON i.id = f.identity_id
                JOIN faces fa ON fa.sha256 = f.sha256 AND fa.params_fingerprint = ? AND fa.selected AND fa.crop256 IS NOT NULL
                JOIN masks m ON m.sha256 = fa.sha256 AND m.face_fingerprint = fa.params_fingerprint
                            AND m.face_index = fa.face_index AND m.mask_fingerprint = ?
                ORDER BY f.path
                """, arguments: [fp, mfp]).map { row in
                func abs(_ s: String?) -> String? { s.map { root.appendingPathComponent($0).path } }
                let mask = row.mask
                return MaskReportRow(path: row.path, identity: row.identity, crop256: root.appendingPathComponent(row.crop256).path,
                                     mask256: abs(mask.mask256), e4eInput: abs(mask.e4eInput), coverage: mask.coverage,
                                     ok: mask.ok, reason: mask.reason)
            }
        }
    }

    private struct MaskReportQueryRow: Decodable, FetchableRecord {
        var path: String
        var identity: String
        var crop256: String
        /// Decoded from the row's `masks` columns.
        var mask: MaskRecord
    }

    /// Mask paths per face for `faces --json`, keyed by "sha256/face_index".
    package func maskPaths() throws -> [String: (mask512: String?, mask256: String?, e4eInput: String?)] {
        guard let fp = try currentIngestFingerprint(), let mfp = try currentMaskFingerprint() else { return [:] }
        let root = try dataRoot()
        return try pool.read { db in
            var out: [String: (String?, String?, String?)] = [:]
            let masks = MaskRecord.filter(MaskRecord.Columns.faceFingerprint == fp && MaskRecord.Columns.maskFingerprint == mfp)
            for mask in try masks.fetchAll(db) {
                func abs(_ s: String?) -> String? { s.map { root.appendingPathComponent($0).path } }
                out["\(mask.sha256)/\(mask.faceIndex)"] = (abs(mask.mask512), abs(mask.mask256), abs(mask.e4eInput))
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
                    try RunProblemRecord(runID: runID, location: r.job.path, reason: r.reason ?? "skipped").insert(db)
                    continue
                }
                // One row per face and mask fingerprint: writing it again replaces it.
                try MaskRecord(sha256: r.job.sha256, faceFingerprint: faceFingerprint, faceIndex: r.job.faceIndex,
                               maskFingerprint: maskFingerprint, method: r.method, mask512: r.mask512, mask256: r.mask256,
                               e4eInput: r.e4eInput, coverage: r.coverage, ok: r.ok, reason: r.reason, runID: runID)
                    .insert(db, onConflict: .replace)
                if !r.ok, let reason = r.reason {
                    try RunProblemRecord(runID: runID, location: r.job.path + (r.job.faceIndex > 0 ? " (face \(r.job.faceIndex))" : ""),
                                         reason: reason).insert(db)
                }
            }
        }
    }

    package func finish(status: String, counts: [String: Int]) throws {
        try RunRecorder.finish(catalog, runID: runID, status: status, counts: counts)
    }
}

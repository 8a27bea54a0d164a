import Foundation
import PIDiffModel
import GRDB

/// A catalog cell that names an artefact under the data root.
public struct ArtefactReference: Codable, Sendable, Hashable {
    /// Path relative to the data root; its file name is the SHA-256 of the content.
    public var path: String
    /// `faces.crop512`, `masks.e4e_input`, …
    public var column: String
    /// The face the artefact belongs to: image content, ingest fingerprint, face index.
    public var sha256: String
    public var faceFingerprint: String
    public var faceIndex: Int
    /// Set for mask artefacts.
    public var maskFingerprint: String?

    /// "faces.crop256 of <sha256>#0" — how problems name the row.
    public var owner: String { "\(column) of \(sha256)#\(faceIndex)" }

    package enum CodingKeys: String, CodingKey {
        case path, column, sha256, faceFingerprint = "face_fingerprint", faceIndex = "face_index", maskFingerprint = "mask_fingerprint"
    }
    package init(path: String, column: String, sha256: String, faceFingerprint: String, faceIndex: Int, maskFingerprint: String? = nil) {
        self.path = path
        self.column = column
        self.sha256 = sha256
        self.faceFingerprint = faceFingerprint
        self.faceIndex = faceIndex
        self.maskFingerprint = maskFingerprint
    }
}

/// Verify's and repair's reads of the catalog, and the integrity pragmas.
extension Catalog {
    /// `PRAGMA integrity_check` rows other than the single "ok" of a sound file.
    public func integrityProblems() throws -> [String] {
        try pool.read { db in try String.fetchAll(db, sql: "PRAGMA integrity_check").filter { $0 != "ok" } }
    }

    /// `PRAGMA foreign_key_check`: one line per row whose reference has no parent.
    public func foreignKeyProblems() throws -> [String] {
        try pool.read { db in
            try Array(db.foreignKeyViolations()).map { v in
                "\(v.originTable) row \(v.originRowID.map(String.init) ?? "?") references a missing \(v.destinationTable) row"
            }
        }
    }

    /// Every artefact path the catalog refers to (crops of faces, masks and e4e inputs).
    public func artefactReferences() throws -> [ArtefactReference] {
        try pool.read { db in
            try ReferenceRow.fetchAll(db, sql: """
                SELECT crop512 AS path, 'faces.crop512' AS col, sha256, params_fingerprint AS ffp, face_index, NULL AS mfp
                  FROM faces WHERE crop512 IS NOT NULL
                UNION ALL SELECT crop256, 'faces.crop256', sha256, params_fingerprint, face_index, NULL FROM faces WHERE crop256 IS NOT NULL
                UNION ALL SELECT mask512, 'masks.mask512', sha256, face_fingerprint, face_index, mask_fingerprint FROM masks WHERE mask512 IS NOT NULL
                UNION ALL SELECT mask256, 'masks.mask256', sha256, face_fingerprint, face_index, mask_fingerprint FROM masks WHERE mask256 IS NOT NULL
                UNION ALL SELECT e4e_input, 'masks.e4e_input', sha256, face_fingerprint, face_index, mask_fingerprint FROM masks WHERE e4e_input IS NOT NULL
                ORDER BY 1, 2
                """).map {
                ArtefactReference(path: $0.path, column: $0.col, sha256: $0.sha256, faceFingerprint: $0.ffp, faceIndex: $0.faceIndex,
                                  maskFingerprint: $0.mfp)
            }
        }
    }

    /// Paths of file rows that start with `prefix` (images ingest extracted into the data root).
    public func filePaths(withPrefix prefix: String) throws -> Set<String> {
        try pool.read { db in
            // substr, not LIKE: a path may hold `%` or `_`; SQLite counts a text's characters (code points).
            Set(try String.fetchAll(db, sql: "SELECT path FROM files WHERE substr(path, 1, ?) = ?", arguments: [prefix.unicodeScalars.count, prefix]))
        }
    }

    private struct ReferenceRow: Decodable, FetchableRecord {
        var path: String
        var col: String
        var sha256: String
        var ffp: String
        var faceIndex: Int
        var mfp: String?
        enum CodingKeys: String, CodingKey { case path, col, sha256, ffp, faceIndex = "face_index", mfp }
    }

    /// The parameters JSON a `command` run recorded under `fingerprint` (the latest such run).
    package func runParameters(command: String, fingerprint: String) throws -> String? {
        try pool.read { db in
            try RunRecord.latest(command).filter(RunRecord.Columns.paramsFingerprint == fingerprint).fetchOne(db)?.parameters
        }
    }

    /// Paths of readable files last seen with this content, in path order.
    package func sourcePaths(sha256: String) throws -> [String] {
        try pool.read { db in
            try String.fetchAll(db, sql: "SELECT path FROM files WHERE sha256 = ? AND read_error IS NULL ORDER BY path", arguments: [sha256])
        }
    }
}

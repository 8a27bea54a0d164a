import Foundation
import PIDiffModel
import GRDB

/// One face as `pidiff-data faces --json` prints it.
public struct FaceReport: Codable, Sendable {
    public var path: String
    public var identity: String
    public var sha256: String
    public var faceIndex: Int
    public var selected: Bool
    public var bbox: [Double]
    public var detScore: Double
    public var landmarks68: [[Double]]
    public var crop512: String?
    public var crop256: String?
    public var faceSize: Double
    public var sharpness: Double?
    public var rollDegrees: Double
    public var yaw: Double
    public var outsideFraction: Double
    public var padded: Bool?
    public var qualityOK: Bool?
    public var qualityReason: String?
    public var outcome: String
    public var mask512: String? = nil
    public var mask256: String? = nil
    public var e4eInput: String? = nil

    package enum CodingKeys: String, CodingKey {
        case mask512, mask256, e4eInput = "e4e_input"
        case path, identity, sha256, faceIndex = "face_index", selected, bbox, detScore = "det_score", landmarks68
        case crop512, crop256, faceSize = "face_size", sharpness, rollDegrees = "roll_degrees", yaw
        case outsideFraction = "outside_fraction", padded, qualityOK = "quality_ok", qualityReason = "quality_reason", outcome
    }
    package init(path: String, identity: String, sha256: String, faceIndex: Int, selected: Bool, bbox: [Double], detScore: Double, landmarks68: [[Double]], crop512: String? = nil, crop256: String? = nil, faceSize: Double, sharpness: Double? = nil, rollDegrees: Double, yaw: Double, outsideFraction: Double, padded: Bool? = nil, qualityOK: Bool? = nil, qualityReason: String? = nil, outcome: String, mask512: String? = nil, mask256: String? = nil, e4eInput: String? = nil) {
        self.path = path
        self.identity = identity
        self.sha256 = sha256
        self.faceIndex = faceIndex
        self.selected = selected
        self.bbox = bbox
        self.detScore = detScore
        self.landmarks68 = landmarks68
        self.crop512 = crop512
        self.crop256 = crop256
        self.faceSize = faceSize
        self.sharpness = sharpness
        self.rollDegrees = rollDegrees
        self.yaw = yaw
        self.outsideFraction = outsideFraction
        self.padded = padded
        self.qualityOK = qualityOK
        self.qualityReason = qualityReason
        self.outcome = outcome
        self.mask512 = mask512
        self.mask256 = mask256
        self.e4eInput = e4eInput
    }
}

/// `pidiff-data status`: counts by stage and outcome, and the last runs.
public struct CatalogStatus: Codable, Sendable {
    public struct Run: Codable, Sendable {
        public var id: Int64
        public var command: String
        public var status: String
        public var startedAt: String
        public var endedAt: String?
        public var counts: [String: Int]?
        package enum CodingKeys: String, CodingKey { case id, command, status, startedAt = "started_at", endedAt = "ended_at", counts }
        package init(id: Int64, command: String, status: String, startedAt: String, endedAt: String? = nil, counts: [String: Int]? = nil) {
            self.id = id
            self.command = command
            self.status = status
            self.startedAt = startedAt
            self.endedAt = endedAt
            self.counts = counts
        }
    }
    public var fingerprint: String?
    public var files: Int
    public var identities: Int
    public var images: Int
    public var unreadable: Int
    public var outcomes: [String: Int]
    public var faces: Int
    public var selectedFaces: Int
    public var qualityPassed: Int
    public var runs: [Run]

    package enum CodingKeys: String, CodingKey {
        case fingerprint, files, identities, images, unreadable, outcomes, faces
        case selectedFaces = "selected_faces", qualityPassed = "quality_passed", runs
    }
    package init(fingerprint: String? = nil, files: Int, identities: Int, images: Int, unreadable: Int, outcomes: [String: Int], faces: Int, selectedFaces: Int, qualityPassed: Int, runs: [Run]) {
        self.fingerprint = fingerprint
        self.files = files
        self.identities = identities
        self.images = images
        self.unreadable = unreadable
        self.outcomes = outcomes
        self.faces = faces
        self.selectedFaces = selectedFaces
        self.qualityPassed = qualityPassed
        self.runs = runs
    }
}

extension Catalog {
    /// The ingest parameters whose results commands show: those of the latest completed ingest run
    /// that has results under them. A run with other parameters that failed, or found nothing
    /// (a mistyped source), does not switch every later stage to an empty set. Before any such
    /// run, the latest run's.
    public func currentIngestFingerprint() throws -> String? {
        try pool.read { db in
            try String.fetchOne(db, sql: """
                SELECT params_fingerprint FROM runs r WHERE command = 'ingest' AND status = 'completed'
                  AND EXISTS (SELECT 1 FROM image_results x WHERE x.params_fingerprint = r.params_fingerprint)
                ORDER BY id DESC LIMIT 1
                """) ?? RunRecord.latest("ingest").fetchOne(db)?.paramsFingerprint
        }
    }

    public func status(lastRuns: Int = 5) throws -> CatalogStatus {
        let fp = try currentIngestFingerprint()
        return try pool.read { db in
            // Outcome per file path, by the result of its current content under the fingerprint.
            let outcomes = try OutcomeCount.fetchAll(db, sql: """
                SELECT CASE WHEN f.read_error IS NOT NULL THEN 'unreadable' ELSE COALESCE(r.outcome, 'pending') END AS outcome,
                       COUNT(*) AS n
                FROM files f LEFT JOIN image_results r ON r.sha256 = f.sha256 AND r.params_fingerprint = ?
                GROUP BY 1
                """, arguments: [fp])
            let runs = try RunRecord.order(RunRecord.Columns.id.desc).limit(lastRuns).fetchAll(db).map { run in
                CatalogStatus.Run(id: run.id!, command: run.command, status: run.status, startedAt: run.startedAt,
                                  endedAt: run.endedAt, counts: run.countsByName)
            }
            let faces = FaceRecord.filter(FaceRecord.Columns.paramsFingerprint == fp)
            return CatalogStatus(
                fingerprint: fp,
                files: try FileRecord.fetchCount(db),
                identities: try IdentityRecord.fetchCount(db),
                images: try ImageRecord.fetchCount(db),
                unreadable: try FileRecord.filter(FileRecord.Columns.readError != nil).fetchCount(db),
                outcomes: Dictionary(outcomes.map { ($0.outcome, $0.n) }, uniquingKeysWith: { _, last in last }),
                faces: try faces.fetchCount(db),
                selectedFaces: try faces.filter(FaceRecord.Columns.selected).fetchCount(db),
                qualityPassed: try faces.filter(FaceRecord.Columns.qualityOK).fetchCount(db),
                runs: runs)
        }
    }

    private struct OutcomeCount: Decodable, FetchableRecord {
        var outcome: String
        var n: Int
    }

    /// Every face of every file under the current fingerprint, in path then face order.
    public func faceReports(selectedOnly: Bool = false) throws -> [FaceReport] {
        let fp = try currentIngestFingerprint()
        let root = try dataRoot()
        let masks = try maskPaths()
        return try pool.read { db in
            try FaceReportRow.fetchAll(db, sql: """
                SELECT f.path, i.name AS identity, fa.*, r.outcome
                FROM files f
                JOIN identities i ON i.id = f.identity_id
                JOIN image_results r ON r.sha256 = f.sha256 AND r.params_fingerprint = ?
                JOIN faces fa ON fa.sha256 = f.sha256 AND fa.params_fingerprint = r.params_fingerprint
                WHERE (? = 0 OR fa.selected)
                ORDER BY f.path, fa.face_index
                """, arguments: [fp, selectedOnly]).map { row in
                let face = row.face
                let mask = masks["\(face.sha256)/\(face.faceIndex)"]
                return FaceReport(
                    path: row.path, identity: row.identity, sha256: face.sha256, faceIndex: face.faceIndex, selected: face.selected,
                    bbox: face.bbox, detScore: face.detScore, landmarks68: face.landmarks68.pairs,
                    crop512: face.crop512.map { root.appendingPathComponent($0).path },
                    crop256: face.crop256.map { root.appendingPathComponent($0).path },
                    faceSize: face.faceSize, sharpness: face.sharpness, rollDegrees: face.rollDegrees, yaw: face.yaw,
                    outsideFraction: face.outsideFraction, padded: face.padded, qualityOK: face.qualityOK,
                    qualityReason: face.qualityReason, outcome: row.outcome,
                    mask512: mask?.mask512, mask256: mask?.mask256, e4eInput: mask?.e4eInput)
            }
        }
    }

    /// A face with the file path and identity it is reported under.
    private struct FaceReportRow: Decodable, FetchableRecord {
        var path: String
        var identity: String
        var outcome: String
        /// Decoded from the row's `faces` columns.
        var face: FaceRecord
    }
}

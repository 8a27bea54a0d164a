import Foundation
import PIDiffModel
import GRDB

/// One catalogued photo as the HTML report lists it.
public struct ReportPhoto: Sendable {
    public var path: String
    public var identity: String
    /// `unreadable`, `pending` (no result under the current fingerprint) or the image outcome.
    public var outcome: String
    public var reason: String?
    /// Absolute path of the selected face's 256 crop, when there is one.
    public var crop256: String?
    public var qualityOK: Bool?
    public var qualityReason: String?
    /// Where the photo came from (`files.origin`).
    public var origin: String?
    /// The URL, licence and source of a photo that `fetch` downloaded (joined by content).
    public var fetched: FetchedProvenance?
    package init(path: String, identity: String, outcome: String, reason: String? = nil, crop256: String? = nil, qualityOK: Bool? = nil, qualityReason: String? = nil) {
        self.path = path
        self.identity = identity
        self.outcome = outcome
        self.reason = reason
        self.crop256 = crop256
        self.qualityOK = qualityOK
        self.qualityReason = qualityReason
    }
}

extension ReportPhoto {
    func withOrigin(_ origin: String?, fetched: FetchedProvenance? = nil) -> ReportPhoto {
        var photo = self
        photo.origin = origin
        photo.fetched = fetched
        return photo
    }
}

extension Catalog {
    /// Every file with its outcome and selected face under the current ingest fingerprint, by identity then path.
    public func reportPhotos() throws -> [ReportPhoto] {
        let fp = try currentIngestFingerprint()
        let root = try dataRoot()
        let fetched = try fetchedProvenance()
        return try pool.read { db in
            try ReportRow.fetchAll(db, sql: """
                SELECT f.path, f.sha256, i.name AS identity,
                       CASE WHEN f.read_error IS NOT NULL THEN 'unreadable' ELSE COALESCE(r.outcome, 'pending') END AS outcome,
                       COALESCE(f.read_error, r.reason) AS reason, fa.crop256, fa.quality_ok, fa.quality_reason, f.origin
                FROM files f
                JOIN identities i ON i.id = f.identity_id
                LEFT JOIN image_results r ON r.sha256 = f.sha256 AND r.params_fingerprint = ?
                LEFT JOIN faces fa ON fa.sha256 = f.sha256 AND fa.params_fingerprint = r.params_fingerprint AND fa.selected
                ORDER BY i.name, f.path
                """, arguments: [fp]).map { row in
                ReportPhoto(path: row.path, identity: row.identity, outcome: row.outcome, reason: row.reason,
                            crop256: row.crop256.map { root.appendingPathComponent($0).path },
                            qualityOK: row.qualityOK, qualityReason: row.qualityReason)
                    .withOrigin(row.origin, fetched: row.sha256.flatMap { fetched[$0] })
            }
        }
    }

    private struct ReportRow: Decodable, FetchableRecord {
        var path: String
        var sha256: String?
        var identity: String
        var outcome: String
        var reason: String?
        var crop256: String?
        var qualityOK: Bool?
        var qualityReason: String?
        var origin: String?
        enum CodingKeys: String, CodingKey {
            case path, sha256, identity, outcome, reason, crop256, qualityOK = "quality_ok", qualityReason = "quality_reason", origin
        }
    }
}

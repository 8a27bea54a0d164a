import Foundation
import PIDiffModel
import GRDB

/// One stored split as `pidiff-data splits` lists it.
public struct SplitSummary: Codable, Sendable {
    public var name: String
    public var createdAt: String
    public var seed: Int
    public var identities: Int
    public var train: Int
    public var reference: Int
    package enum CodingKeys: String, CodingKey { case name, createdAt = "created_at", seed, identities, train, reference }
    package init(name: String, createdAt: String, seed: Int, identities: Int, train: Int, reference: Int) {
        self.name = name
        self.createdAt = createdAt
        self.seed = seed
        self.identities = identities
        self.train = train
        self.reference = reference
    }
}

public enum SplitError: Error, CustomStringConvertible {
    case exists(String)
    case missing(String)
    case empty(String, shortfall: Int)
    case invalidName(String)
    public var description: String {
        switch self {
        case .invalidName(let n):
            return "split name \(n.debugDescription) must be 1–64 characters of A–Z, a–z, 0–9, _ or -, not starting with _ or - (it names the shard files and is passed as a flag value)"
        case .exists(let n): return "split \(n) already exists; splits are immutable, choose a new name"
        case .missing(let n): return "no split named \(n)"
        case .empty(let n, let shortfall):
            return "split \(n): no identity could be drawn (\(shortfall) asked for; none has enough usable photos with "
                + "known race and age: see `balance report`); nothing stored"
        }
    }
}

extension Catalog {
    /// Usable photos per identity: readable, a face found, the selected face passes the quality
    /// gates, its mask passes (when masks have been run), not marked duplicate or impostor by the
    /// latest curate run. Identities merged by `curate --apply-merges` count under their canonical
    /// name. The same content filed twice under one identity counts once.
    public func usableImages() throws -> [String: [UsableImage]] {
        guard let fp = try currentIngestFingerprint() else { return [:] }
        let mfp = try currentMaskFingerprint()
        return try pool.read { db in
            let curateRun = try RunRecord.latest("curate", status: "completed").fetchOne(db)?.id
            let rows = try UsableRow.fetchAll(db, sql: """
                SELECT f.id, f.path, f.sha256, COALESCE(c.name, i.name) AS identity,
                       fa.face_size, COALESCE(fa.sharpness, 0) AS sharpness, fa.yaw, fa.roll_degrees
                FROM files f
                JOIN identities i ON i.id = f.identity_id
                LEFT JOIN identity_aliases a ON a.identity_id = i.id
                LEFT JOIN identities c ON c.id = a.canonical_identity_id
                JOIN image_results r ON r.sha256 = f.sha256 AND r.params_fingerprint = :ingest AND r.outcome = 'ok'
                JOIN faces fa ON fa.sha256 = f.sha256 AND fa.params_fingerprint = r.params_fingerprint AND fa.selected AND fa.quality_ok
                LEFT JOIN (SELECT path, kind FROM curation_overrides WHERE id IN
                           (SELECT MAX(id) FROM curation_overrides WHERE path IS NOT NULL GROUP BY path)) o ON o.path = f.path
                WHERE f.read_error IS NULL
                  AND COALESCE(o.kind, '') != 'reject'
                  AND (o.kind = 'keep' OR NOT EXISTS (SELECT 1 FROM curation_decisions d WHERE d.run_id = :curateRun AND d.file_id = f.id
                                  AND d.kind IN ('exact_duplicate', 'near_duplicate', 'impostor')))
                  AND (:masks IS NULL OR EXISTS (SELECT 1 FROM masks m WHERE m.sha256 = fa.sha256 AND m.face_fingerprint = fa.params_fingerprint
                                                 AND m.face_index = fa.face_index AND m.mask_fingerprint = :masks AND m.ok))
                ORDER BY identity, f.path
                """, arguments: ["ingest": fp, "curateRun": curateRun, "masks": mfp])
            var out: [String: [UsableImage]] = [:]
            var seen: [String: Set<String>] = [:]
            for row in rows {
                guard seen[row.identity, default: []].insert(row.image.sha256).inserted else { continue }
                out[row.identity, default: []].append(row.image)
            }
            return out
        }
    }

    /// A usable photo and the (canonical) identity it counts under.
    private struct UsableRow: Decodable, FetchableRecord {
        var id: Int64
        var path: String
        var sha256: String
        var identity: String
        var faceSize: Double
        var sharpness: Double
        var yaw: Double
        var rollDegrees: Double
        enum CodingKeys: String, CodingKey {
            case id, path, sha256, identity, faceSize = "face_size", sharpness, yaw, rollDegrees = "roll_degrees"
        }
        var image: UsableImage {
            UsableImage(fileID: id, path: path, sha256: sha256, faceSize: faceSize, sharpness: sharpness, yaw: yaw, rollDegrees: rollDegrees)
        }
    }

    /// Identities with labels and usable photos, ready for the balance report and selection.
    public func balanceInputs(mapping: LabelMapping) throws -> [BalanceIdentity] {
        let usable = try usableImages()
        let labels = try identityLabels(mapping: mapping, classifierFingerprint: try currentClassifierFingerprint())
        let byName = Dictionary(labels.map { ($0.identity, $0) }, uniquingKeysWith: { first, _ in first }) // see IdentityName
        return usable.keys.sorted().map { name in
            let l = byName[name]
            return BalanceIdentity(name: name, race: l?.race.value ?? "unknown", age: l?.age.value ?? "unknown",
                                   gender: l?.gender.value ?? "unknown", images: usable[name] ?? [])
        }
    }

    public func storeSplit(name: String, seed: Int, parameters: String, selection: SplitSelection, command: String = "balance select") throws {
        let quotas = String(decoding: try JSONEncoder.sorted.encode(selection.quotas), as: UTF8.self)
        try pool.write { db in
            // A split that export would refuse could never be used, nor removed (splits are immutable).
            guard SplitName.isValid(name) else { throw SplitError.invalidName(name) }
            if try SplitRecord.exists(db, key: name) { throw SplitError.exists(name) }
            // An empty split would be stored for good (splits are immutable) and reused by every later run.
            guard !selection.items.isEmpty else { throw SplitError.empty(name, shortfall: selection.shortfall) }
            let now = ISO8601DateFormatter().string(from: Date())
            let run = try RunRecorder.recordCompleted(db, command: command, fingerprint: "", parameters: parameters,
                                                           counts: "{\"items\":\(selection.items.count)}")
            try SplitRecord(name: name, runID: run, createdAt: now, seed: seed, parameters: parameters, quotas: quotas).insert(db)
            for item in selection.items {
                try SplitItemRecord(item, split: name).insert(db)
            }
        }
    }

    /// The `parameters` JSON a split was drawn with, or nil when there is no split of that name.
    public func splitParameters(name: String) throws -> String? {
        try pool.read { db in try SplitRecord.fetchOne(db, key: name)?.parameters }
    }

    public func splits() throws -> [SplitSummary] {
        try pool.read { db in
            try SplitCounts.fetchAll(db, sql: """
                SELECT s.name, s.created_at, s.seed, COUNT(DISTINCT i.identity) AS identities,
                       SUM(i.role = 'train') AS train, SUM(i.role = 'reference') AS reference
                FROM splits s LEFT JOIN split_items i ON i.split_name = s.name GROUP BY s.name ORDER BY s.created_at, s.name
                """).map { SplitSummary(name: $0.name, createdAt: $0.createdAt, seed: $0.seed, identities: $0.identities,
                                        train: $0.train ?? 0, reference: $0.reference ?? 0) }
        }
    }

    /// A split's counts; the sums are NULL for a split without items.
    private struct SplitCounts: Decodable, FetchableRecord {
        var name: String
        var createdAt: String
        var seed: Int
        var identities: Int
        var train: Int?
        var reference: Int?
        enum CodingKeys: String, CodingKey { case name, createdAt = "created_at", seed, identities, train, reference }
    }

    public func splitItems(_ name: String) throws -> [SplitSelection.Item] {
        try pool.read { db in
            guard try SplitRecord.exists(db, key: name) else { throw SplitError.missing(name) }
            typealias Columns = SplitItemRecord.Columns
            return try SplitItemRecord.filter(Columns.splitName == name)
                .order(Columns.identity, Columns.role.desc, Columns.path)
                .fetchAll(db).map(\.item)
        }
    }
}

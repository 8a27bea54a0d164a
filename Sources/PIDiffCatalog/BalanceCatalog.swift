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
            return "split name \(n.debugDescription) must be 1–64 characters of A–Z, a–z, 0–9, _ or - (it names the shard files)"
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
            let curateRun = try Int64.fetchOne(db, sql: "SELECT id FROM runs WHERE command = 'curate' AND status = 'completed' ORDER BY id DESC LIMIT 1")
            let rows = try Row.fetchAll(db, sql: """
                SELECT f.id, f.path, f.sha256, COALESCE(c.name, i.name) AS identity,
                       fa.face_size, COALESCE(fa.sharpness, 0) AS sharpness, fa.yaw, fa.roll_degrees
                FROM files f
                JOIN identities i ON i.id = f.identity_id
                LEFT JOIN identity_aliases a ON a.identity_id = i.id
                LEFT JOIN identities c ON c.id = a.canonical_identity_id
                JOIN image_results r ON r.sha256 = f.sha256 AND r.params_fingerprint = ? AND r.outcome = 'ok'
                JOIN faces fa ON fa.sha256 = f.sha256 AND fa.params_fingerprint = r.params_fingerprint AND fa.selected AND fa.quality_ok
                WHERE f.read_error IS NULL
                  AND NOT EXISTS (SELECT 1 FROM curation_decisions d WHERE d.run_id = ? AND d.file_id = f.id
                                  AND d.kind IN ('exact_duplicate', 'near_duplicate', 'impostor'))
                  AND (? IS NULL OR EXISTS (SELECT 1 FROM masks m WHERE m.sha256 = fa.sha256 AND m.face_fingerprint = fa.params_fingerprint
                                            AND m.face_index = fa.face_index AND m.mask_fingerprint = ? AND m.ok))
                ORDER BY identity, f.path
                """, arguments: [fp, curateRun, mfp, mfp])
            var out: [String: [UsableImage]] = [:]
            var seen: [String: Set<String>] = [:]
            for row in rows {
                let identity: String = row["identity"], sha: String = row["sha256"]
                guard seen[identity, default: []].insert(sha).inserted else { continue }
                out[identity, default: []].append(UsableImage(fileID: row["id"], path: row["path"], sha256: sha, faceSize: row["face_size"],
                                                              sharpness: row["sharpness"], yaw: row["yaw"], rollDegrees: row["roll_degrees"]))
            }
            return out
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
            if try Bool.fetchOne(db, sql: "SELECT 1 FROM splits WHERE name = ?", arguments: [name]) ?? false { throw SplitError.exists(name) }
            // An empty split would be stored for good (splits are immutable) and reused by every later run.
            guard !selection.items.isEmpty else { throw SplitError.empty(name, shortfall: selection.shortfall) }
            let now = ISO8601DateFormatter().string(from: Date())
            let run = try RunRecorder.recordCompleted(db, command: command, fingerprint: "", parameters: parameters,
                                                           counts: "{\"items\":\(selection.items.count)}")
            try db.execute(sql: "INSERT INTO splits (name, run_id, created_at, seed, parameters, quotas) VALUES (?, ?, ?, ?, ?, ?)",
                           arguments: [name, run, now, seed, parameters, quotas])
            for item in selection.items {
                try db.execute(sql: "INSERT INTO split_items (split_name, file_id, identity, role, path, sha256) VALUES (?, ?, ?, ?, ?, ?)",
                               arguments: [name, item.fileID, item.identity, item.role, item.path, item.sha256])
            }
        }
    }

    /// The `parameters` JSON a split was drawn with, or nil when there is no split of that name.
    public func splitParameters(name: String) throws -> String? {
        try pool.read { db in try String.fetchOne(db, sql: "SELECT parameters FROM splits WHERE name = ?", arguments: [name]) }
    }

    public func splits() throws -> [SplitSummary] {
        try pool.read { db in
            try Row.fetchAll(db, sql: """
                SELECT s.name, s.created_at, s.seed, COUNT(DISTINCT i.identity) AS identities,
                       SUM(i.role = 'train') AS train, SUM(i.role = 'reference') AS reference
                FROM splits s LEFT JOIN split_items i ON i.split_name = s.name GROUP BY s.name ORDER BY s.created_at, s.name
                """).map { SplitSummary(name: $0["name"], createdAt: $0["created_at"], seed: $0["seed"], identities: $0["identities"],
                                        train: $0["train"] ?? 0, reference: $0["reference"] ?? 0) }
        }
    }

    public func splitItems(_ name: String) throws -> [SplitSelection.Item] {
        try pool.read { db in
            guard try Bool.fetchOne(db, sql: "SELECT 1 FROM splits WHERE name = ?", arguments: [name]) ?? false else { throw SplitError.missing(name) }
            return try Row.fetchAll(db, sql: "SELECT * FROM split_items WHERE split_name = ? ORDER BY identity, role DESC, path", arguments: [name]).map {
                SplitSelection.Item(identity: $0["identity"], role: $0["role"], path: $0["path"], sha256: $0["sha256"], fileID: $0["file_id"])
            }
        }
    }
}

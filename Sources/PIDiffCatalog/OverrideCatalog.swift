import Foundation
import GRDB
import PIDiffModel

/// A person's decision over curation's.
public struct CurationOverride: Codable, Sendable, Equatable {
    public enum Kind: String, Codable, Sendable { case keep, reject, acceptMerge = "accept_merge" }
    public var kind: Kind
    /// The photo (keep, reject).
    public var path: String?
    /// The identity merged into `canonicalIdentity` (accept_merge).
    public var identity: String?
    public var canonicalIdentity: String?
    public var reason: String
    public var who: String
    public var createdAt: String?
    enum CodingKeys: String, CodingKey {
        case kind, path, identity, canonicalIdentity = "canonical_identity", reason, who, createdAt = "created_at"
    }
    public init(kind: Kind, path: String? = nil, identity: String? = nil, canonicalIdentity: String? = nil, reason: String, who: String) {
        self.kind = kind
        self.path = path
        self.identity = identity
        self.canonicalIdentity = canonicalIdentity
        self.reason = reason
        self.who = who
    }
}

public enum OverrideError: Error, CustomStringConvertible {
    case unknownPhoto(String)
    case unknownIdentity(String)
    case mergeLoop(String)
    public var description: String {
        switch self {
        case .mergeLoop(let what): return "cannot accept the merge \(what) (merges are one level: alias = canonical)"
        case .unknownPhoto(let p): return "\(p): not a catalogued photo path"
        case .unknownIdentity(let i): return "identity \(i) is not in the catalog"
        }
    }
}

extension Catalog {
    /// Records an override as a `curate override` run. Photos and identities must be catalogued.
    public func recordOverride(_ o: CurationOverride) throws {
        try pool.write { db in
            if let path = o.path, try !(Bool.fetchOne(db, sql: "SELECT 1 FROM files WHERE path = ?", arguments: [path]) ?? false) {
                throw OverrideError.unknownPhoto(path)
            }
            for name in [o.identity, o.canonicalIdentity].compactMap({ $0 })
            where try !(Bool.fetchOne(db, sql: "SELECT 1 FROM identities WHERE name = ?", arguments: [name]) ?? false) {
                throw OverrideError.unknownIdentity(name)
            }
            if o.kind == .acceptMerge, let alias = o.identity, let canonical = o.canonicalIdentity {
                guard alias != canonical else { throw OverrideError.mergeLoop("\(alias) = \(canonical)") }
                // One level of aliases: B must not itself be merged into another, nor A be what
                // another identity was merged into (a chain, or a loop A=B, B=A).
                let merged = try String.fetchAll(db, sql: "SELECT identity FROM curation_overrides WHERE kind = 'accept_merge'")
                let targets = try String.fetchAll(db, sql: "SELECT canonical_identity FROM curation_overrides WHERE kind = 'accept_merge'")
                if merged.contains(canonical) || targets.contains(alias) {
                    throw OverrideError.mergeLoop("\(alias) = \(canonical): \(merged.contains(canonical) ? canonical : alias) is already part of another accepted merge")
                }
            }
            let now = ISO8601DateFormatter().string(from: Date())
            let parameters = String(decoding: try JSONEncoder.sorted.encode(o), as: UTF8.self)
            let run = try RunRecorder.recordCompleted(db, command: "curate override", fingerprint: "", parameters: parameters, counts: "{\"overrides\":1}")
            try db.execute(sql: """
                INSERT INTO curation_overrides (kind, path, identity, canonical_identity, reason, who, created_at, run_id)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                """, arguments: [o.kind.rawValue, o.path, o.identity, o.canonicalIdentity, o.reason, o.who, now, run])
        }
    }

    /// Every override, oldest first.
    public func curationOverrides() throws -> [CurationOverride] {
        try pool.read { db in
            try Row.fetchAll(db, sql: "SELECT kind, path, identity, canonical_identity, reason, who, created_at FROM curation_overrides ORDER BY id").map { row in
                var o = CurationOverride(kind: CurationOverride.Kind(rawValue: row["kind"]) ?? .keep, path: row["path"], identity: row["identity"],
                                         canonicalIdentity: row["canonical_identity"], reason: row["reason"], who: row["who"])
                o.createdAt = row["created_at"]
                return o
            }
        }
    }

    /// Accepted merges as (alias identity id, canonical identity id).
    package func acceptedMerges() throws -> [(identityID: Int64, canonicalIdentityID: Int64, reason: String)] {
        try pool.read { db in
            try Row.fetchAll(db, sql: """
                SELECT a.id AS alias, c.id AS canonical, o.reason, o.who FROM curation_overrides o
                JOIN identities a ON a.name = o.identity JOIN identities c ON c.name = o.canonical_identity
                WHERE o.kind = 'accept_merge' ORDER BY o.id
                """).map { ($0["alias"], $0["canonical"], "accepted by \($0["who"] as String): \($0["reason"] as String)") }
        }
    }
}

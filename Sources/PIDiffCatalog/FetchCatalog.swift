import Foundation
import PIDiffModel
import GRDB

/// `fetch_urls`: one URL of a fetch list and what its last attempt gave.
package struct FetchURLRecord: Codable, FetchableRecord, PersistableRecord, Equatable, Sendable {
    package static let databaseTableName = "fetch_urls"
    package var url: String
    package var identity: String
    package var license: String?
    package var source: String?
    /// `list:line` where the URL was first listed.
    package var listedAt: String
    package var status: FetchStatus
    package var httpStatus: Int?
    package var attempts: Int
    package var bytes: Int?
    package var sha256: String?
    package var format: String?
    /// The inbox folder the file went to, and its path inside it (`identity/<sha prefix>.<ext>`).
    package var inbox: String?
    package var path: String?
    /// Where the last redirect led, when it differs from `url`.
    package var finalURL: String?
    package var error: String?
    package var updatedAt: String
    package var runID: Int64?

    enum CodingKeys: String, CodingKey {
        case url, identity, license, source, listedAt = "listed_at", status, httpStatus = "http_status", attempts, bytes, sha256, format
        case inbox, path, finalURL = "final_url", error, updatedAt = "updated_at", runID = "run_id"
    }
    enum Field {
        static let url = Column(CodingKeys.url)
        static let sha256 = Column(CodingKeys.sha256)
        static let status = Column(CodingKeys.status)
    }

    package init(entry: FetchListEntry, runID: Int64?) {
        url = entry.url
        identity = entry.identity
        license = entry.license
        source = entry.source
        listedAt = entry.location
        status = .failed
        attempts = 0
        updatedAt = Date().ISO8601Format()
        self.runID = runID
    }
}

extension FetchStatus: DatabaseValueConvertible {}

extension Catalog {
    /// The stored state of each of `urls` that the catalog knows (one read for a batch of lines).
    package func fetchStates(_ urls: [String]) throws -> [String: FetchURLRecord] {
        guard !urls.isEmpty else { return [:] }
        return try pool.read { db in
            let rows = try FetchURLRecord.filter(urls.contains(FetchURLRecord.Field.url)).fetchAll(db)
            return Dictionary(rows.map { ($0.url, $0) }, uniquingKeysWith: { first, _ in first })
        }
    }

    /// The first URL whose content (`sha256`) is stored: a second URL with the same bytes is
    /// recorded against that file instead of storing it again.
    package func fetchedContent(sha256: String) throws -> FetchURLRecord? {
        try pool.read { db in
            let statement = try db.cachedStatement(sql: "SELECT * FROM fetch_urls WHERE sha256 = ? AND status = ? AND path IS NOT NULL ORDER BY rowid LIMIT 1")
            return try FetchURLRecord.fetchOne(statement, arguments: [sha256, FetchStatus.done.rawValue])
        }
    }

    /// Records URL states (insert or replace by URL) in one transaction.
    package func saveFetchStates(_ records: [FetchURLRecord]) throws {
        guard !records.isEmpty else { return }
        try pool.write { db in
            for record in records { try record.save(db, onConflict: .replace) }
        }
    }

    /// Records problems of a run (lines that are not URLs, conflicting identities) in one transaction.
    package func recordProblems(runID: Int64, _ problems: [(location: String, reason: String)]) throws {
        guard !problems.isEmpty else { return }
        try pool.write { db in
            for p in problems { try RunProblemRecord(runID: runID, location: p.location, reason: p.reason).insert(db) }
        }
    }

    /// How many listed URLs are in each state.
    public func fetchStatusCounts() throws -> [FetchStatus: Int] {
        try pool.read { db in
            let rows = try Row.fetchAll(db, sql: "SELECT status, COUNT(*) AS n FROM fetch_urls GROUP BY status")
            return Dictionary(uniqueKeysWithValues: rows.compactMap { row in
                (row["status"] as String?).flatMap(FetchStatus.init(rawValue:)).map { ($0, row["n"] as Int) }
            })
        }
    }

    /// Provenance of every fetched content, by SHA-256: the first URL that delivered it (by the
    /// order URLs were listed), its licence and source.
    public func fetchedProvenance() throws -> [String: FetchedProvenance] {
        try pool.read { db in
            let rows = try Row.fetchAll(db, sql: """
                SELECT sha256, url, license, source FROM fetch_urls
                WHERE status = 'done' AND sha256 IS NOT NULL ORDER BY rowid
                """)
            var out: [String: FetchedProvenance] = [:]
            for row in rows {
                let sha: String = row["sha256"]
                if out[sha] == nil { out[sha] = FetchedProvenance(url: row["url"], license: row["license"], source: row["source"]) }
            }
            return out
        }
    }
}

/// A URL whose last attempt failed or was rejected, for `fetch --failures`.
public struct FetchFailure: Codable, Sendable {
    public var url: String
    public var identity: String
    public var status: FetchStatus
    public var httpStatus: Int?
    public var attempts: Int
    public var error: String?
    public var listedAt: String
    enum CodingKeys: String, CodingKey { case url, identity, status, httpStatus = "http_status", attempts, error, listedAt = "listed_at" }
}

extension Catalog {
    /// Failed and rejected URLs, in list order.
    public func fetchFailures() throws -> [FetchFailure] {
        try pool.read { db in
            try FetchURLRecord.filter([FetchStatus.failed.rawValue, FetchStatus.rejected.rawValue].contains(FetchURLRecord.Field.status))
                .order(sql: "rowid").fetchAll(db)
                .map { FetchFailure(url: $0.url, identity: $0.identity, status: $0.status, httpStatus: $0.httpStatus, attempts: $0.attempts,
                                    error: $0.error, listedAt: $0.listedAt) }
        }
    }
}

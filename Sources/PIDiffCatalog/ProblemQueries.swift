import Foundation
import GRDB

/// One item a run could not process, as `run_problems` records it.
public struct RunProblem: Codable, Sendable, FetchableRecord {
    public var runID: Int64
    public var command: String
    public var location: String
    public var reason: String
    enum CodingKeys: String, CodingKey { case runID = "run_id", command, location, reason }
}

extension Catalog {
    /// Every problem of the latest run of each command (of `command` only, when given), in the
    /// order they were recorded: what a summary's "… N more" points at.
    public func latestProblems(command: String? = nil) throws -> [RunProblem] {
        try pool.read { db in
            try RunProblem.fetchAll(db, sql: """
                SELECT p.run_id, r.command, p.location, p.reason FROM run_problems p JOIN runs r ON r.id = p.run_id
                WHERE r.id IN (SELECT MAX(id) FROM runs GROUP BY command) AND (? IS NULL OR r.command = ?)
                ORDER BY p.run_id, p.id
                """, arguments: [command, command])
        }
    }
}

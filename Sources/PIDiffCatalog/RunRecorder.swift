import Foundation
import GRDB
import Synchronization

/// The `runs` table's one writer: every command that changes the catalog is a run with a status
/// (running → completed | failed | interrupted), its parameters and its counts. A run still marked
/// running when the next one begins (under the catalog lock) was killed, and is marked interrupted.
public enum RunRecorder {
    public static func begin(_ catalog: Catalog, command: String, fingerprint: String, parameters: String) throws -> Int64 {
        try catalog.pool.write { db in
            // A run still marked running while we hold the lock was killed.
            _ = try RunRecord.filter(RunRecord.Columns.status == "running").updateAll(db, RunRecord.Columns.status.set(to: "interrupted"))
            var run = RunRecord(command: command, status: "running", startedAt: ISO8601DateFormatter().string(from: Date()),
                                paramsFingerprint: fingerprint, parameters: parameters)
            try run.insert(db)
            let id = run.id!
            active.withLock { runs in runs[id] = catalog.path }
            return id
        }
    }

    /// Runs this process began and has not finished: what a SIGTERM or SIGINT must mark.
    private static let active = Mutex<[Int64: String]>([:])

    /// Marks every run this process began and has not finished as interrupted (its end time
    /// set), for a process about to exit on a signal. What the run committed stays.
    @discardableResult
    public static func markActiveRunsInterrupted() -> Int {
        let runs: [Int64: String] = active.withLock { runs in
            let taken = runs
            runs.removeAll()
            return taken
        }
        let now = ISO8601DateFormatter().string(from: Date())
        for (id, path) in runs {
            guard let catalog = try? Catalog(path: path) else { continue }
            _ = try? catalog.pool.write { db in
                try RunRecord.filter(key: id).filter(RunRecord.Columns.status == "running")
                    .updateAll(db, [RunRecord.Columns.status.set(to: "interrupted"), RunRecord.Columns.endedAt.set(to: now)])
            }
        }
        return runs.count
    }

    /// Records a one-shot command (label import, classify, split draw, training) as a completed
    /// run inside the caller's transaction; returns its id.
    package static func recordCompleted(_ db: Database, command: String, started: Date = Date(), fingerprint: String,
                                   parameters: String, counts: String) throws -> Int64 {
        let f = ISO8601DateFormatter()
        var run = RunRecord(command: command, status: "completed", startedAt: f.string(from: started), endedAt: f.string(from: Date()),
                            paramsFingerprint: fingerprint, parameters: parameters, counts: counts)
        try run.insert(db)
        return run.id!
    }

    /// Ends a run begun with `begin`: its final status ("completed", "failed") and counts.
    public static func finish(_ catalog: Catalog, runID: Int64, status: String, counts: [String: Int]) throws {
        _ = active.withLock { $0.removeValue(forKey: runID) }
        let data = try JSONSerialization.data(withJSONObject: counts, options: [.sortedKeys])
        try catalog.pool.write { db in
            _ = try RunRecord.filter(key: runID).updateAll(db, [
                RunRecord.Columns.status.set(to: status),
                RunRecord.Columns.endedAt.set(to: ISO8601DateFormatter().string(from: Date())),
                RunRecord.Columns.counts.set(to: String(decoding: data, as: UTF8.self)),
            ])
        }
    }
}

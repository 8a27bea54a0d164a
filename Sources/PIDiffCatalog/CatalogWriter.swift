import Foundation
import PIDiffModel
import GRDB

/// The only writer of the catalog. Results arrive in batches, each committed in one
/// transaction: a file row and everything derived from its content land together or not at all,
/// so a run killed at any point leaves a consistent catalog and the next run redoes the rest.
package actor CatalogWriter {
    package let catalog: Catalog
    package let runID: Int64
    package let fingerprint: String
    private var sourceIDs: [String: Int64] = [:]
    private var identityIDs: [String: Int64] = [:]

    package init(catalog: Catalog, runID: Int64, fingerprint: String) {
        self.catalog = catalog
        self.runID = runID
        self.fingerprint = fingerprint
    }

    package func finish(status: String, counts: [String: Int]) throws {
        try RunRecorder.finish(catalog, runID: runID, status: status, counts: counts)
    }

    /// After a completed scan: files of the scanned sources that the scan did not see are marked
    /// with a read error, which takes them out of the usable set (rows, hashes and crops stay, so
    /// a split that holds them still exports). A manifest defines its photos, so a path it no
    /// longer lists is marked; a folder's file only once it is gone from disk (a folder the scan
    /// could not read must not empty the dataset). Returns how many were marked.
    package func markVanished(sources: [(location: String, kind: SourceKind)], seen: Set<PathKey>) throws -> Int {
        try catalog.pool.write { [runID] db in
            var marked = 0
            for source in sources {
                let files = try FileRecord.fetchAll(db, sql: """
                    SELECT f.* FROM files f JOIN sources s ON s.id = f.source_id
                    WHERE s.location = ? AND f.read_error IS NULL
                    """, arguments: [source.location])
                for var file in files {
                    if seen.contains(PathKey(file.path)) || (source.kind == .folders && FileManager.default.fileExists(atPath: file.path)) { continue }
                    let reason = source.kind == .folders ? "vanished: no longer in \(source.location)"
                                                         : "vanished: no longer listed in \(source.location)"
                    try file.updateChanges(db) {
                        $0.readError = reason
                        $0.runID = runID
                    }
                    try RunProblemRecord(runID: runID, location: file.path, reason: reason).insert(db)
                    marked += 1
                }
            }
            return marked
        }
    }

    package func commit(_ batch: [IngestResult]) throws {
        guard !batch.isEmpty else { return }
        var sources = sourceIDs, identities = identityIDs
        try catalog.pool.write { [runID, fingerprint] db in
            for result in batch {
                switch result {
                case .unchanged:
                    continue
                case .problem(let p):
                    try RunProblemRecord(runID: runID, location: p.location, reason: p.reason).insert(db)
                case .unreadable(let item, let stat, let reason):
                    try RunProblemRecord(runID: runID, location: item.problemLocation, reason: reason).insert(db)
                    try Self.upsertFile(db, item, sha: nil, byteSize: stat?.byteSize, mtimeNs: stat?.mtimeNs, readError: reason,
                                        runID: runID, sources: &sources, identities: &identities)
                case .reused(let item, let info):
                    try Self.upsertFile(db, item, sha: info.sha256, byteSize: info.byteSize, mtimeNs: info.mtimeNs, readError: nil,
                                        runID: runID, sources: &sources, identities: &identities)
                case .analysed(let item, let info, let analysis, _):
                    try Self.insertAnalysis(db, analysis, fingerprint: fingerprint, runID: runID)
                    if analysis.outcome != .ok && analysis.outcome != .noFace {
                        // Undecodable, not an image, too small or too large: a problem of this run, listed by `status --problems`.
                        try RunProblemRecord(runID: runID, location: item.problemLocation, reason: "\(analysis.outcome.rawValue): \(analysis.reason ?? "")").insert(db)
                    }
                    try Self.upsertFile(db, item, sha: info.sha256, byteSize: info.byteSize, mtimeNs: info.mtimeNs, readError: nil,
                                        runID: runID, sources: &sources, identities: &identities)
                }
            }
        }
        sourceIDs = sources
        identityIDs = identities
    }

    /// The id of the row `key` names, inserted the first time it is seen; cached for the run.
    private static func id<R: PersistableRecord & FetchableRecord>(
        _ db: Database, _ cache: inout [String: Int64], key: String, insert record: R, existing: QueryInterfaceRequest<R>,
        id: (R) -> Int64?
    ) throws -> Int64 {
        if let id = cache[key] { return id }
        try record.insert(db, onConflict: .ignore)
        let found = try existing.fetchOne(db).flatMap(id)!
        cache[key] = found
        return found
    }

    private static func upsertFile(_ db: Database, _ item: ScanItem, sha: String?, byteSize: Int?, mtimeNs: Int64?, readError: String?,
                                   runID: Int64, sources: inout [String: Int64], identities: inout [String: Int64]) throws {
        let sourceID = try id(db, &sources, key: item.sourceLocation,
                              insert: SourceRecord(kind: item.sourceKind, location: item.sourceLocation, firstRunID: runID),
                              existing: SourceRecord.filter(SourceRecord.Columns.location == item.sourceLocation), id: \.id)
        let identityID = try id(db, &identities, key: item.identity, insert: IdentityRecord(name: item.identity),
                                existing: IdentityRecord.filter(IdentityRecord.Columns.name == item.identity), id: \.id)
        // The path is the only unique key besides the (NULL, so never conflicting) id: a path seen
        // before keeps its id and takes every other column from this read.
        try FileRecord(path: item.path, sourceID: sourceID, identityID: identityID, byteSize: byteSize, mtimeNs: mtimeNs, sha256: sha,
                       readError: readError, caption: item.caption, race: item.labels.race, age: item.labels.age,
                       gender: item.labels.gender, origin: item.origin, hint: item.hint, runID: runID)
            .upsert(db)
    }

    private static func insertAnalysis(_ db: Database, _ a: ImageAnalysis, fingerprint: String, runID: Int64) throws {
        // Content facts and results under a fingerprint are written once; a later run that
        // analyses the same content again keeps the first.
        try ImageRecord(sha256: a.sha256, byteSize: a.byteSize, format: a.format, width: a.width, height: a.height)
            .insert(db, onConflict: .ignore)
        try ImageResultRecord(sha256: a.sha256, paramsFingerprint: fingerprint, outcome: a.outcome, reason: a.reason,
                              facesFound: a.facesFound, runID: runID)
            .insert(db, onConflict: .ignore)
        for f in a.faces {
            try FaceRecord(f, sha256: a.sha256, fingerprint: fingerprint).insert(db, onConflict: .ignore)
        }
    }
}

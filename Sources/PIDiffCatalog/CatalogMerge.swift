import Foundation
import GRDB
import PIDiffModel

public enum MergeError: Error, CustomStringConvertible {
    /// The part, the stage (`ingest`, `masks`) and the differing parameters.
    case parameters(String, String, [String])
    /// The part, the stage and the model files whose SHA-256 the stage's fingerprint holds.
    case models(String, String, String)
    public var description: String {
        switch self {
        case .parameters(let part, let stage, let keys):
            return "\(part): \(stage) ran with other parameters (\(keys.joined(separator: ", "))); partitions must share one pipeline file"
        case .models(let part, let stage, let models):
            return "\(part): \(stage) ran with the same parameters but another \(models) (its SHA-256 differs); partitions must share one model folder"
        }
    }
}

/// `catalog merge`: partition catalogs (ingest --partition K/N) into one. Files, faces, masks,
/// features, labels, encodings, fetched URLs, runs and their problems are copied with their ids remapped;
/// artefacts are content-addressed, so each is hard-linked (or copied) once into the target's
/// data root. Idempotent: merging a part twice adds nothing. Curation decisions and splits are
/// not merged: curate and select run on the merged catalog.
extension Catalog {
    public struct MergeSummary: Codable, Sendable {
        public var part: String
        public var files: Int
        public var faces: Int
        public var masks: Int
        public var runs: Int
        public var artefactsLinked: Int
        enum CodingKeys: String, CodingKey { case part, files, faces, masks, runs, artefactsLinked = "artefacts_linked" }
    }

    /// The stages whose results a merge puts side by side: each must have run with one fingerprint
    /// (parameters and models) in every part. `results` is the table and column holding it; the
    /// key names the pipeline file's section.
    private static let checkedStages: [(command: String, section: String, results: String, column: String)] = [
        ("ingest", "ingest", "image_results", "params_fingerprint"), ("masks", "mask", "masks", "mask_fingerprint")]

    /// The fingerprint and parameters JSON of the latest `command` run whose results the catalog
    /// holds, whatever its status: a partition's run killed at the scheduler's time limit still
    /// left results made with its parameters.
    private static func identity(_ db: Database, schema: String, command: String, results: String, column: String) throws
        -> (fingerprint: String, parameters: String)? {
        guard let row = try Row.fetchOne(db, sql: """
            SELECT params_fingerprint, parameters FROM \(schema).runs r WHERE command = ?
              AND EXISTS (SELECT 1 FROM \(schema).\(results) x WHERE x.\(column) = r.params_fingerprint)
            ORDER BY id DESC LIMIT 1
            """, arguments: [command]) else { return nil }
        return (row[0], row[1])
    }

    /// Refuses a part whose stages ran with another fingerprint than the target's, naming the
    /// parameters that differ, or the models when none does.
    private static func checkSameFingerprints(_ db: Database, part: String) throws {
        for stage in checkedStages {
            guard let theirs = try identity(db, schema: "part", command: stage.command, results: stage.results, column: stage.column),
                  let ours = try identity(db, schema: "main", command: stage.command, results: stage.results, column: stage.column),
                  theirs.fingerprint != ours.fingerprint else { continue }
            let a = (try? JSONSerialization.jsonObject(with: Data(theirs.parameters.utf8))) as? [String: Any] ?? [:]
            let b = (try? JSONSerialization.jsonObject(with: Data(ours.parameters.utf8))) as? [String: Any] ?? [:]
            let differing = Set(a.keys).union(b.keys).sorted().filter { key in
                !["workers", "vanished"].contains(key) && "\(a[key] ?? "unset")" != "\(b[key] ?? "unset")"
            }
            guard differing.isEmpty else {
                throw MergeError.parameters(part, stage.command, differing.map { "\(stage.section).\($0): \(a[$0] ?? "unset") here, \(b[$0] ?? "unset") in the target" })
            }
            // The fingerprints hold these models' SHA-256 besides the parameters (IngestPipeline, MaskPipeline).
            let models = stage.command == "masks" ? "ONNX face-parsing model (mask.onnx_path)"
                : "\(a["detector"] as? String == "mmod" ? "68-point landmark model or MMOD detector" : "68-point landmark model") (models folder)"
            throw MergeError.models(part, stage.command, models)
        }
    }

    public func merge(part: Catalog) throws -> MergeSummary {
        let partRoot = try part.dataRoot(), root = try dataRoot()
        var summary = MergeSummary(part: part.path, files: 0, faces: 0, masks: 0, runs: 0, artefactsLinked: 0)
        // A part made otherwise is refused before anything of it reaches the target's data root
        // (both catalogs are locked by the caller for the whole merge, so this holds for the copy).
        try pool.writeWithoutTransaction { db in
            try db.execute(sql: "ATTACH DATABASE ? AS part", arguments: [part.path])
            defer { try? db.execute(sql: "DETACH DATABASE part") }
            try Self.checkSameFingerprints(db, part: part.path)
        }
        // Artefacts first (content-addressed: a file of that name is that content, so linking it is
        // enough), rows after: a merge killed midway leaves at most unreferenced files.
        let artefacts = try part.pool.read { db in
            try String.fetchAll(db, sql: """
                SELECT crop512 FROM faces WHERE crop512 IS NOT NULL UNION SELECT crop256 FROM faces WHERE crop256 IS NOT NULL
                UNION SELECT mask512 FROM masks WHERE mask512 IS NOT NULL UNION SELECT mask256 FROM masks WHERE mask256 IS NOT NULL
                UNION SELECT e4e_input FROM masks WHERE e4e_input IS NOT NULL
                """)
        }
        // Only names the stores make (kind/aa/sha256.png): a part's rows cannot place files
        // outside the target's data root.
        let artefactName = try NSRegularExpression(pattern: "^(crops|masks|e4e|context)/[0-9a-f]{2}/[0-9a-f]{64}\\.png$")
        // Images ingest extracted from Parquet rows live in the part's `sources/`, named by their
        // file rows with the absolute path the part's data root had then (a part gathered from a
        // node's disk since names the old place). Each moves to the target's `sources/`, and the
        // rows' paths with it; an image a row names beside its Parquet file stays where it is.
        let extractedName = try NSRegularExpression(pattern: "(?:^|/)(\(Self.sourceCacheFolder)/[0-9a-f]{2}/([0-9a-f]{64})\\.(?:jpg|png|webp|bmp))$")
        var moved: [String: String] = [:] // path in the part's rows → name under the data root
        for row in try part.pool.read({ db in
            try Row.fetchAll(db, sql: "SELECT f.path, f.sha256 FROM files f JOIN sources s ON s.id = f.source_id WHERE s.kind = 'parquet'")
        }) {
            let path: String = row["path"], sha256: String? = row["sha256"]
            guard let match = extractedName.firstMatch(in: path, range: NSRange(path.startIndex..., in: path)),
                  let name = Range(match.range(at: 1), in: path), let hash = Range(match.range(at: 2), in: path),
                  String(path[hash]) == sha256, FileManager.default.fileExists(atPath: partRoot.appendingPathComponent(String(path[name])).path)
            else { continue }
            moved[path] = String(path[name])
        }
        let extracted = Set(moved.values)
        for relative in artefacts + extracted.sorted() {
            guard extracted.contains(relative) || artefactName.firstMatch(in: relative, range: NSRange(relative.startIndex..., in: relative)) != nil else {
                throw CatalogError.open(part.path, "names an artefact \(relative.debugDescription) that no pidiff-data store writes; not merged")
            }
            let target = root.appendingPathComponent(relative), source = partRoot.appendingPathComponent(relative)
            guard !FileManager.default.fileExists(atPath: target.path) else { continue }
            try FileManager.default.createDirectory(at: target.deletingLastPathComponent(), withIntermediateDirectories: true)
            if link(source.path, target.path) != 0 { try FileManager.default.copyItem(at: source, to: target) }
            summary.artefactsLinked += 1
        }
        try pool.writeWithoutTransaction { db in
            try db.execute(sql: "ATTACH DATABASE ? AS part", arguments: [part.path])
            defer { try? db.execute(sql: "DETACH DATABASE part") }
            try db.inTransaction {
                func columns(_ table: String) throws -> [String] {
                    try Row.fetchAll(db, sql: "PRAGMA main.table_info(\(table))").map { $0["name"] as String }
                }
                /// Copies `table` from the part, dropping `id` and remapping the named columns
                /// through temp map tables; rows the target has (by their unique keys) are kept.
                func copy(_ table: String, remap: [String: String] = [:], dropID: Bool = false) throws -> Int {
                    let cols = try columns(table).filter { !(dropID && $0 == "id") }
                    let values = cols.map { c in remap[c].map { "(SELECT new FROM temp.\($0) WHERE old = p.\(c))" } ?? "p.\(c)" }
                    try db.execute(sql: "INSERT OR IGNORE INTO main.\(table) (\(cols.joined(separator: ", "))) SELECT \(values.joined(separator: ", ")) FROM part.\(table) p")
                    return db.changesCount
                }
                try db.execute(sql: """
                    CREATE TEMP TABLE IF NOT EXISTS map_runs (old INTEGER PRIMARY KEY, new INTEGER NOT NULL);
                    CREATE TEMP TABLE IF NOT EXISTS map_sources (old INTEGER PRIMARY KEY, new INTEGER NOT NULL);
                    CREATE TEMP TABLE IF NOT EXISTS map_identities (old INTEGER PRIMARY KEY, new INTEGER NOT NULL);
                    CREATE TEMP TABLE IF NOT EXISTS map_paths (old TEXT PRIMARY KEY, new TEXT NOT NULL);
                    DELETE FROM temp.map_runs; DELETE FROM temp.map_sources; DELETE FROM temp.map_identities; DELETE FROM temp.map_paths;
                    """)
                // Runs: one already merged (same command, start, fingerprint, parameters) is reused.
                let partRuns = try Row.fetchAll(db, sql: "SELECT id, command, status, started_at, ended_at, params_fingerprint, parameters, counts FROM part.runs ORDER BY id")
                var newRuns = Set<Int64>()
                for run in partRuns {
                    let old: Int64 = run["id"]
                    if let existing = try Int64.fetchOne(db, sql: """
                        SELECT id FROM main.runs WHERE command = ? AND started_at = ? AND ended_at IS ? AND status = ?
                          AND params_fingerprint = ? AND parameters = ? AND counts IS ?
                        """, arguments: [run["command"], run["started_at"], run["ended_at"], run["status"], run["params_fingerprint"],
                                         run["parameters"], run["counts"]]) {
                        try db.execute(sql: "INSERT INTO temp.map_runs VALUES (?, ?)", arguments: [old, existing])
                        continue
                    }
                    try db.execute(sql: """
                        INSERT INTO main.runs (command, status, started_at, ended_at, params_fingerprint, parameters, counts)
                        VALUES (?, ?, ?, ?, ?, ?, ?)
                        """, arguments: [run["command"], run["status"], run["started_at"], run["ended_at"], run["params_fingerprint"],
                                         run["parameters"], run["counts"]])
                    try db.execute(sql: "INSERT INTO temp.map_runs VALUES (?, ?)", arguments: [old, db.lastInsertedRowID])
                    newRuns.insert(old)
                }
                summary.runs = newRuns.count
                for old in newRuns {
                    try db.execute(sql: """
                        INSERT INTO main.run_problems (run_id, location, reason)
                        SELECT (SELECT new FROM temp.map_runs WHERE old = ?), location, reason FROM part.run_problems WHERE run_id = ? ORDER BY id
                        """, arguments: [old, old])
                }
                try db.execute(sql: """
                    INSERT OR IGNORE INTO main.sources (kind, location, first_run_id)
                        SELECT kind, location, (SELECT new FROM temp.map_runs WHERE old = p.first_run_id) FROM part.sources p;
                    INSERT INTO temp.map_sources SELECT p.id, m.id FROM part.sources p JOIN main.sources m ON m.location = p.location;
                    INSERT OR IGNORE INTO main.identities (name) SELECT name FROM part.identities;
                    INSERT INTO temp.map_identities SELECT p.id, m.id FROM part.identities p JOIN main.identities m ON m.name = p.name;
                    """)
                _ = try copy("images")
                _ = try copy("image_results", remap: ["run_id": "map_runs"])
                summary.faces = try copy("faces", dropID: true)
                // A part is the authority for its own paths: a photo re-ingested (changed, vanished)
                // since the last merge replaces the merged row.
                let fileColumns = try columns("files").filter { $0 != "id" && $0 != "path" }
                let remapped = ["source_id": "map_sources", "identity_id": "map_identities", "run_id": "map_runs"]
                let selected = fileColumns.map { c in remapped[c].map { "(SELECT new FROM temp.\($0) WHERE old = p.\(c))" } ?? "p.\(c)" }
                // An image in the part's `sources/` gets the same name in ours.
                for (old, relative) in moved {
                    try db.execute(sql: "INSERT INTO temp.map_paths VALUES (?, ?)", arguments: [old, root.appendingPathComponent(relative).path])
                }
                let path = "COALESCE((SELECT new FROM temp.map_paths WHERE old = p.path), p.path)"
                try db.execute(sql: """
                    INSERT INTO main.files (path, \(fileColumns.joined(separator: ", ")))
                    SELECT \(([path] + selected).joined(separator: ", ")) FROM part.files p WHERE true
                    ON CONFLICT(path) DO UPDATE SET \(fileColumns.map { "\($0) = excluded.\($0)" }.joined(separator: ", "))
                    WHERE \(fileColumns.map { "\($0) IS NOT excluded.\($0)" }.joined(separator: " OR "))
                    """)
                summary.files = db.changesCount
                summary.masks = try copy("masks", remap: ["run_id": "map_runs"])
                for table in ["image_hashes", "crop_hashes", "descriptors", "encodings"] { _ = try copy(table) }
                // Fetch states travel with the photos they describe (provenance is joined by content);
                // a URL the target already knows keeps the target's state.
                for table in ["manual_labels", "classifier_labels", "fetch_urls"] { _ = try copy(table, remap: ["run_id": "map_runs"]) }
                if try String.fetchOne(db, sql: "SELECT value FROM main.meta WHERE key = 'data_root'") == nil {
                    try db.execute(sql: "INSERT INTO main.meta (key, value) VALUES ('data_root', ?)", arguments: [root.path])
                }
                return .commit
            }
        }
        return summary
    }
}

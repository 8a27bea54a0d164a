import Foundation
import PIDiffModel
import GRDB

/// The SQLite catalog: the single source of truth. WAL mode, versioned migrations. Writes are the
/// methods of this target only (the pool is not public): the stages' batch writers (`CatalogWriter`
/// for ingest, `MaskWriter`, `CurationWriter`) and the commands' single transactions. SQLite runs
/// one write transaction at a time and the catalog lock keeps other processes out, so a stage's
/// writes never interleave with another's; reads go through the pool's readers.
public final class Catalog: Sendable {
    let pool: DatabasePool
    public let path: String

    /// The data root's folder of images ingest extracted from Parquet rows (Docs/sources.md):
    /// named by `files` rows rather than by artefact columns.
    public static let sourceCacheFolder = "sources"

    public init(path: String) throws {
        self.path = path
        let dir = URL(fileURLWithPath: path).deletingLastPathComponent()
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        var config = Configuration()
        config.foreignKeysEnabled = true
        config.busyMode = .timeout(30)
        config.prepareDatabase { db in
            // NORMAL is durable across application crashes (SIGKILL) in WAL mode; only an OS crash
            // may roll back the last transactions, never corrupt the file.
            try db.execute(sql: "PRAGMA synchronous = NORMAL")
        }
        try Self.refuseUnlessOurs(path)
        do {
            pool = try DatabasePool(path: path, configuration: config)
            try Catalog.migrator.migrate(pool)
        } catch {
            throw CatalogError.open(path, "\(error)")
        }
    }

    /// Removes a catalog this command created and then could not use (every source it was given
    /// was rejected): its database files, its lock and, when `removeDataRoot` (the command created
    /// it too), its data root if that holds nothing, so a failed first run leaves no empty catalog
    /// behind. Taken under the catalog's lock; a catalog holding any file row is kept.
    public static func discardUnused(path: String, removeDataRoot: Bool) throws {
        let lock = try CatalogLock(catalogPath: path)
        defer { withExtendedLifetime(lock) {} }
        let catalog = try Catalog(path: path)
        let root = try catalog.recordedDataRoot()
        guard try catalog.pool.read({ try Int.fetchOne($0, sql: "SELECT COUNT(*) FROM files") ?? 0 }) == 0 else { return }
        try catalog.pool.close()
        let resolved = CatalogLock.resolved(path)
        for suffix in ["", "-wal", "-shm", ".lock"] { try? FileManager.default.removeItem(atPath: resolved + suffix) }
        if removeDataRoot, let root, (try? FileManager.default.contentsOfDirectory(atPath: root.path))?.isEmpty == true {
            try? FileManager.default.removeItem(at: root)
        }
    }

    /// A data root that a version from before relative roots recorded as an absolute path, as
    /// it should be recorded now, or nil to keep it: relative when it is inside the catalog's
    /// folder, or when the catalog was copied or moved with its default data root (`<catalog>.data`,
    /// beside it here, recorded elsewhere). Any other absolute root was chosen with `--data-root`.
    /// Applied once, by the migration that upgrades such a catalog (`v11-relative-data-root`):
    /// roots this version records absolute are choices and stay so.
    static func legacyRelativeRoot(stored: String, catalogFile: String) -> String? {
        let file = URL(fileURLWithPath: catalogFile).resolvingSymlinksInPath()
        let folder = file.deletingLastPathComponent().path
        let recorded = URL(fileURLWithPath: stored).standardizedFileURL
        if recorded.path.hasPrefix(folder + "/") { return String(recorded.path.dropFirst(folder.count + 1)) }
        guard recorded.lastPathComponent == file.lastPathComponent + ".data" else { return nil }
        var isDirectory: ObjCBool = false
        let beside = folder + "/" + recorded.lastPathComponent
        return FileManager.default.fileExists(atPath: beside, isDirectory: &isDirectory) && isDirectory.boolValue ? recorded.lastPathComponent : nil
    }

    /// Before anything changes the file (WAL mode, migrations): an existing database must be a
    /// pidiff-data catalog whose schema this version knows. Another program's SQLite file, or a
    /// catalog migrated by a newer pidiff-data, is refused with one line naming why.
    static func refuseUnlessOurs(_ path: String) throws {
        guard let size = (try? FileManager.default.attributesOfItem(atPath: path)[.size]) as? Int, size > 0 else { return }
        var config = Configuration()
        config.readonly = true
        let (tables, applied): ([String], [String])
        do {
            let queue = try DatabaseQueue(path: path, configuration: config)
            (tables, applied) = try queue.read { db in
                let tables = try String.fetchAll(db, sql: "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
                let applied = tables.contains("grdb_migrations") ? try String.fetchAll(db, sql: "SELECT identifier FROM grdb_migrations") : []
                return (tables, applied)
            }
        } catch {
            throw CatalogError.open(path, "not an SQLite database (\(error))")
        }
        guard !tables.isEmpty else { return }
        guard tables.contains("grdb_migrations"), applied.contains("v1-ingest") else {
            throw CatalogError.open(path, "not a pidiff-data catalog (an SQLite database with tables \(tables.prefix(5).joined(separator: ", "))"
                                    + (tables.count > 5 ? ", …" : "") + "); nothing was changed")
        }
        let known = migrator.migrations
        let unknown = applied.filter { !known.contains($0) }
        guard unknown.isEmpty else {
            throw CatalogError.open(path, "written by a newer pidiff-data (schema \(unknown.joined(separator: ", "))); this version knows up to "
                                    + "\(known.last ?? "none"): upgrade pidiff-data; nothing was changed")
        }
    }

    /// Schema history. Never edit a registered migration: add a new one.
    package static var migrator: DatabaseMigrator {
        var m = DatabaseMigrator()
        m.registerMigration("v1-ingest") { db in
            try db.execute(sql: """
                CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                CREATE TABLE runs (
                    id INTEGER PRIMARY KEY,
                    command TEXT NOT NULL,
                    status TEXT NOT NULL CHECK (status IN ('running', 'completed', 'failed', 'interrupted')),
                    started_at TEXT NOT NULL,
                    ended_at TEXT,
                    params_fingerprint TEXT NOT NULL,
                    parameters TEXT NOT NULL,
                    counts TEXT
                );
                CREATE TABLE run_problems (
                    id INTEGER PRIMARY KEY,
                    run_id INTEGER NOT NULL REFERENCES runs(id),
                    location TEXT NOT NULL,
                    reason TEXT NOT NULL
                );
                CREATE TABLE sources (
                    id INTEGER PRIMARY KEY,
                    kind TEXT NOT NULL CHECK (kind IN ('folders', 'manifest', 'crossfaceid')),
                    location TEXT NOT NULL UNIQUE,
                    first_run_id INTEGER REFERENCES runs(id)
                );
                CREATE TABLE identities (
                    id INTEGER PRIMARY KEY,
                    name TEXT NOT NULL UNIQUE
                );
                -- Content facts, keyed by the SHA-256 of the file's bytes.
                CREATE TABLE images (
                    sha256 TEXT PRIMARY KEY,
                    byte_size INTEGER NOT NULL,
                    format TEXT,
                    width INTEGER,
                    height INTEGER
                );
                -- One row per path seen; what the path held the last time it was read.
                CREATE TABLE files (
                    id INTEGER PRIMARY KEY,
                    path TEXT NOT NULL UNIQUE,
                    source_id INTEGER NOT NULL REFERENCES sources(id),
                    identity_id INTEGER NOT NULL REFERENCES identities(id),
                    byte_size INTEGER,
                    mtime_ns INTEGER,
                    sha256 TEXT REFERENCES images(sha256),
                    read_error TEXT,
                    caption TEXT,
                    race TEXT,
                    age TEXT,
                    gender TEXT,
                    origin TEXT,
                    hint TEXT,
                    run_id INTEGER NOT NULL REFERENCES runs(id)
                );
                CREATE INDEX files_sha256 ON files(sha256);
                CREATE INDEX files_identity ON files(identity_id);
                -- What ingest made of one image content under one parameters fingerprint.
                CREATE TABLE image_results (
                    sha256 TEXT NOT NULL REFERENCES images(sha256),
                    params_fingerprint TEXT NOT NULL,
                    outcome TEXT NOT NULL CHECK (outcome IN
                        ('ok', 'no_face', 'decode_error', 'not_image', 'too_small', 'too_large')),
                    reason TEXT,
                    faces_found INTEGER NOT NULL DEFAULT 0,
                    run_id INTEGER NOT NULL REFERENCES runs(id),
                    PRIMARY KEY (sha256, params_fingerprint)
                );
                CREATE TABLE faces (
                    id INTEGER PRIMARY KEY,
                    sha256 TEXT NOT NULL REFERENCES images(sha256),
                    params_fingerprint TEXT NOT NULL,
                    face_index INTEGER NOT NULL,
                    selected INTEGER NOT NULL,
                    box_left REAL NOT NULL, box_top REAL NOT NULL, box_right REAL NOT NULL, box_bottom REAL NOT NULL,
                    det_score REAL NOT NULL,
                    landmarks68 TEXT NOT NULL,
                    quad TEXT NOT NULL,
                    face_size REAL NOT NULL,
                    sharpness REAL,
                    roll_degrees REAL NOT NULL,
                    yaw REAL NOT NULL,
                    outside_fraction REAL NOT NULL,
                    padded INTEGER,
                    quality_ok INTEGER,
                    quality_reason TEXT,
                    crop512 TEXT,
                    crop256 TEXT,
                    UNIQUE (sha256, params_fingerprint, face_index)
                );
                """)
        }
        m.registerMigration("v2-curation") { db in
            try db.execute(sql: """
                -- Decoded-pixel SHA-256 and whole-image pHash of one image content.
                CREATE TABLE image_hashes (
                    sha256 TEXT NOT NULL REFERENCES images(sha256),
                    algorithm TEXT NOT NULL,
                    pixel_sha256 TEXT NOT NULL,
                    phash INTEGER NOT NULL,
                    PRIMARY KEY (sha256, algorithm)
                );
                -- pHash of an aligned face crop, keyed by the crop's content (its SHA-256).
                CREATE TABLE crop_hashes (
                    crop_sha256 TEXT NOT NULL,
                    algorithm TEXT NOT NULL,
                    phash INTEGER NOT NULL,
                    PRIMARY KEY (crop_sha256, algorithm)
                );
                -- Identity descriptor (128 little-endian float32) of the face in one aligned crop.
                CREATE TABLE descriptors (
                    crop_sha256 TEXT NOT NULL,
                    model_fingerprint TEXT NOT NULL,
                    descriptor BLOB NOT NULL,
                    PRIMARY KEY (crop_sha256, model_fingerprint)
                );
                -- What a curate run concluded. Decisions are rows; nothing they name is deleted.
                CREATE TABLE curation_decisions (
                    id INTEGER PRIMARY KEY,
                    run_id INTEGER NOT NULL REFERENCES runs(id),
                    kind TEXT NOT NULL CHECK (kind IN ('exact_duplicate', 'near_duplicate', 'impostor', 'same_person')),
                    file_id INTEGER REFERENCES files(id),
                    kept_file_id INTEGER REFERENCES files(id),
                    identity_id INTEGER REFERENCES identities(id),
                    other_identity_id INTEGER REFERENCES identities(id),
                    group_id INTEGER,
                    score REAL NOT NULL,
                    reason TEXT NOT NULL
                );
                CREATE INDEX curation_decisions_run ON curation_decisions(run_id, kind);
                -- `curate --apply-merges`: identity_id is another name of canonical_identity_id.
                CREATE TABLE identity_aliases (
                    identity_id INTEGER PRIMARY KEY REFERENCES identities(id),
                    canonical_identity_id INTEGER NOT NULL REFERENCES identities(id),
                    run_id INTEGER NOT NULL REFERENCES runs(id),
                    score REAL NOT NULL,
                    reason TEXT NOT NULL
                );
                """)
        }
        m.registerMigration("v3-masks") { db in
            try db.execute(sql: """
                -- Masks of selected faces, keyed on the face (its image content and ingest
                -- fingerprint) and the mask parameters fingerprint.
                CREATE TABLE masks (
                    sha256 TEXT NOT NULL REFERENCES images(sha256),
                    face_fingerprint TEXT NOT NULL,
                    face_index INTEGER NOT NULL,
                    mask_fingerprint TEXT NOT NULL,
                    method TEXT NOT NULL,
                    mask512 TEXT,
                    mask256 TEXT,
                    e4e_input TEXT,
                    coverage REAL,
                    ok INTEGER NOT NULL,
                    reason TEXT,
                    run_id INTEGER NOT NULL REFERENCES runs(id),
                    PRIMARY KEY (sha256, face_fingerprint, face_index, mask_fingerprint)
                );
                """)
        }
        m.registerMigration("v4-labels") { db in
            try db.execute(sql: """
                -- Manual corrections (labels import): override every other source. `path` empty =
                -- the whole identity; a path = that photo only (per-image age).
                CREATE TABLE manual_labels (
                    identity TEXT NOT NULL,
                    path TEXT NOT NULL DEFAULT '',
                    attribute TEXT NOT NULL CHECK (attribute IN ('race', 'age', 'gender')),
                    value TEXT NOT NULL,
                    source TEXT NOT NULL,
                    run_id INTEGER NOT NULL REFERENCES runs(id),
                    PRIMARY KEY (identity, path, attribute)
                );
                -- FairFace-style classifier probabilities per selected face and model.
                CREATE TABLE classifier_labels (
                    sha256 TEXT NOT NULL REFERENCES images(sha256),
                    face_fingerprint TEXT NOT NULL,
                    face_index INTEGER NOT NULL,
                    model_fingerprint TEXT NOT NULL,
                    race_probs TEXT NOT NULL,
                    gender_probs TEXT NOT NULL,
                    age_probs TEXT NOT NULL,
                    run_id INTEGER NOT NULL REFERENCES runs(id),
                    PRIMARY KEY (sha256, face_fingerprint, face_index, model_fingerprint)
                );
                """)
        }
        m.registerMigration("v5-splits") { db in
            try db.execute(sql: """
                -- Named, immutable draws of identities and photos for training and reference.
                CREATE TABLE splits (
                    name TEXT PRIMARY KEY,
                    run_id INTEGER NOT NULL REFERENCES runs(id),
                    created_at TEXT NOT NULL,
                    seed INTEGER NOT NULL,
                    parameters TEXT NOT NULL,
                    quotas TEXT NOT NULL
                );
                CREATE TABLE split_items (
                    split_name TEXT NOT NULL REFERENCES splits(name),
                    file_id INTEGER NOT NULL REFERENCES files(id),
                    identity TEXT NOT NULL,
                    role TEXT NOT NULL CHECK (role IN ('train', 'reference')),
                    path TEXT NOT NULL,
                    sha256 TEXT NOT NULL,
                    PRIMARY KEY (split_name, file_id)
                );
                CREATE TRIGGER split_items_immutable BEFORE UPDATE ON split_items
                BEGIN SELECT RAISE(ABORT, 'splits are immutable: draw a new one under a new name'); END;
                CREATE TRIGGER splits_immutable BEFORE UPDATE ON splits
                BEGIN SELECT RAISE(ABORT, 'splits are immutable: draw a new one under a new name'); END;
                """)
        }
        m.registerMigration("v6-encodings") { db in
            try db.execute(sql: """
                -- Encodings (e4e w+, VAE latents) that exist for a photo: keyed on its content, the
                -- preprocessing (ingest + mask fingerprints) and the models (SHA-256 of weights).
                CREATE TABLE encodings (
                    sha256 TEXT NOT NULL,
                    preprocessing_fingerprint TEXT NOT NULL,
                    model_fingerprint TEXT NOT NULL,
                    encoded_file TEXT NOT NULL,
                    sample_key TEXT NOT NULL,
                    recorded_at TEXT NOT NULL,
                    PRIMARY KEY (sha256, preprocessing_fingerprint, model_fingerprint)
                );
                """)
        }
        m.registerMigration("v7-style-role") { db in
            // A split's identity may train with a style photo of another face (paper §3.4.4):
            // split_items accept the role `style`. SQLite cannot change a CHECK, so the table is
            // rebuilt; its rows and the immutability trigger are kept.
            try db.execute(sql: """
                CREATE TABLE split_items_v7 (
                    split_name TEXT NOT NULL REFERENCES splits(name),
                    file_id INTEGER NOT NULL REFERENCES files(id),
                    identity TEXT NOT NULL,
                    role TEXT NOT NULL CHECK (role IN ('train', 'reference', 'style')),
                    path TEXT NOT NULL,
                    sha256 TEXT NOT NULL,
                    PRIMARY KEY (split_name, file_id)
                );
                INSERT INTO split_items_v7 (split_name, file_id, identity, role, path, sha256)
                    SELECT split_name, file_id, identity, role, path, sha256 FROM split_items;
                DROP TABLE split_items;
                ALTER TABLE split_items_v7 RENAME TO split_items;
                CREATE TRIGGER split_items_immutable BEFORE UPDATE ON split_items
                BEGIN SELECT RAISE(ABORT, 'splits are immutable: draw a new one under a new name'); END;
                """)
        }
        m.registerMigration("v8-curation-overrides") { db in
            try db.execute(sql: """
                -- A person's decisions over curation's, per photo (keep, reject) or per identity pair
                -- (accept_merge), with who and why; the latest per photo wins. Later runs honour them.
                CREATE TABLE curation_overrides (
                    id INTEGER PRIMARY KEY,
                    kind TEXT NOT NULL CHECK (kind IN ('keep', 'reject', 'accept_merge')),
                    path TEXT,
                    identity TEXT,
                    canonical_identity TEXT,
                    reason TEXT NOT NULL,
                    who TEXT NOT NULL,
                    created_at TEXT NOT NULL,
                    run_id INTEGER NOT NULL REFERENCES runs(id)
                );
                """)
        }
        m.registerMigration("v9-source-kinds") { db in
            // Hugging Face layouts (imagefolder, Parquet) as source kinds. SQLite cannot change a
            // CHECK constraint in place: the table is rebuilt (foreign keys are off during a
            // migration and checked at its end; `files.source_id` keeps pointing at the same ids).
            try db.execute(sql: """
                CREATE TABLE sources_v9 (
                    id INTEGER PRIMARY KEY,
                    kind TEXT NOT NULL CHECK (kind IN ('folders', 'manifest', 'crossfaceid', 'imagefolder', 'parquet')),
                    location TEXT NOT NULL UNIQUE,
                    first_run_id INTEGER REFERENCES runs(id)
                );
                INSERT INTO sources_v9 (id, kind, location, first_run_id) SELECT id, kind, location, first_run_id FROM sources;
                DROP TABLE sources;
                ALTER TABLE sources_v9 RENAME TO sources;
                """)
        }
        m.registerMigration("v10-fetch") { db in
            try db.execute(sql: """
                -- One row per URL of a fetch list (`pidiff-data fetch`) that was tried: what the
                -- last attempt gave. `path` is relative to `inbox`; the photo's provenance is found by sha256.
                CREATE TABLE fetch_urls (
                    url TEXT PRIMARY KEY,
                    identity TEXT NOT NULL,
                    license TEXT,
                    source TEXT,
                    listed_at TEXT NOT NULL,
                    status TEXT NOT NULL CHECK (status IN ('done', 'failed', 'rejected')),
                    http_status INTEGER,
                    attempts INTEGER NOT NULL DEFAULT 0,
                    bytes INTEGER,
                    sha256 TEXT,
                    format TEXT,
                    inbox TEXT,
                    path TEXT,
                    final_url TEXT,
                    error TEXT,
                    updated_at TEXT NOT NULL,
                    run_id INTEGER REFERENCES runs(id)
                );
                CREATE INDEX fetch_urls_sha256 ON fetch_urls(sha256);
                """)
        }
        m.registerMigration("v11-relative-data-root") { db in
            // Catalogs from before relative data roots recorded an absolute one, so a copied
            // project wrote its new crops into the original's folder: converted once, here.
            guard let stored = try String.fetchOne(db, sql: "SELECT value FROM meta WHERE key = 'data_root'"), stored.hasPrefix("/"),
                  let file = try String.fetchOne(db, sql: "SELECT file FROM pragma_database_list WHERE name = 'main'"), !file.isEmpty,
                  let relative = Catalog.legacyRelativeRoot(stored: stored, catalogFile: file) else { return }
            try db.execute(sql: "UPDATE meta SET value = ? WHERE key = 'data_root'", arguments: [relative])
        }
        return m
    }

    /// The folder holding content-addressed artefacts (crops…), recorded at first use so every
    /// later command finds it. Default: `<catalog>.data` beside the catalog.
    public func dataRoot(preferred: String? = nil) throws -> URL {
        if let recorded = try recordedDataRoot() { return recorded }
        let folder = URL(fileURLWithPath: CatalogLock.resolved(path)).deletingLastPathComponent()
        let root = preferred.map { URL(fileURLWithPath: $0).standardizedFileURL }
            ?? URL(fileURLWithPath: path + ".data").standardizedFileURL
        // Inside the catalog's folder: recorded relative to it.
        let value = root.path.hasPrefix(folder.path + "/") ? String(root.path.dropFirst(folder.path.count + 1)) : root.path
        // A root already recorded (by a command that got here first) stays.
        try pool.write { db in try MetaRecord(key: "data_root", value: value).insert(db, onConflict: .ignore) }
        return try dataRoot()
    }

    /// The data root a command recorded, or nil before any did (reading it fixes nothing).
    public func recordedDataRoot() throws -> URL? {
        // The folder of the file the path resolves to: a symlinked catalog finds its own data root.
        let folder = URL(fileURLWithPath: CatalogLock.resolved(path)).deletingLastPathComponent()
        guard let stored = try pool.read({ try MetaRecord.fetchOne($0, key: "data_root") }) else { return nil }
        // Relative to the catalog's folder (a copied or moved project keeps its own artefacts); an
        // absolute path is a root chosen outside it (older versions recorded every root so: `legacyRelativeRoot`).
        return stored.value.hasPrefix("/") ? URL(fileURLWithPath: stored.value)
                                            : folder.appendingPathComponent(stored.value).standardizedFileURL
    }
}

public enum CatalogError: Error, CustomStringConvertible {
    case open(String, String)
    case locked(String, String)  // the catalog, the lock file
    case outputLocked(String, String)  // the output folder, the lock file
    public var description: String {
        switch self {
        case .open(let p, let r): return "catalog \(p): cannot open (\(r))"
        case .locked(let p, let lock): return "catalog \(p) is in use by another pidiff-data run (lock held on \(lock))"
        case .outputLocked(let p, let lock): return "output folder \(p) is in use by another pidiff-data run (lock held on \(lock))"
        }
    }
}

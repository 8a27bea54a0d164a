import Foundation
import PIDiffModel
import GRDB

/// Curation's reads of the catalog. All SQL for curation lives here and in `CurationWriter`.
extension Catalog {
    /// Every readable, decodable photo under the ingest fingerprint, with its selected face and
    /// aligned crops, in path order.
    package func curationInputs(ingestFingerprint fp: String) throws -> [CurationFile] {
        try pool.read { db in
            try Row.fetchAll(db, sql: """
                SELECT f.id, f.path, f.identity_id, i.name, f.sha256, im.width, im.height, f.byte_size, f.mtime_ns,
                       fa.landmarks68, fa.quad, fa.face_size, fa.sharpness, fa.yaw, fa.crop512, fa.crop256
                FROM files f
                JOIN identities i ON i.id = f.identity_id
                JOIN images im ON im.sha256 = f.sha256
                JOIN image_results r ON r.sha256 = f.sha256 AND r.params_fingerprint = ?
                LEFT JOIN faces fa ON fa.sha256 = f.sha256 AND fa.params_fingerprint = r.params_fingerprint AND fa.selected
                WHERE f.read_error IS NULL AND r.outcome IN ('ok', 'no_face')
                ORDER BY f.path
                """, arguments: [fp]).map { row in
                var face: CurationFile.Face?
                let crop512: String? = row["crop512"], crop256: String? = row["crop256"]
                if let lmJSON: String = row["landmarks68"], let quadJSON: String = row["quad"],
                   let descriptorCrop = crop512 ?? crop256, let hashCrop = crop256 ?? crop512 {
                    let lm = try JSONDecoder().decode([[Double]].self, from: Data(lmJSON.utf8))
                    let quad = try JSONDecoder().decode([[Double]].self, from: Data(quadJSON.utf8))
                    if lm.count == 68, quad.count == 4 {
                        face = CurationFile.Face(
                            landmarks: Landmarks68(points: lm.map { Point(x: $0[0], y: $0[1]) }),
                            quad: AlignmentQuad(corners: quad.map { Point(x: $0[0], y: $0[1]) }),
                            faceSize: row["face_size"], sharpness: row["sharpness"], yaw: row["yaw"],
                            descriptorCrop: descriptorCrop, hashCrop: hashCrop)
                    }
                }
                return CurationFile(fileID: row["id"], path: row["path"], identityID: row["identity_id"], identity: row["name"],
                                    sha256: row["sha256"], width: row["width"] ?? 0, height: row["height"] ?? 0, face: face,
                                    byteSize: row["byte_size"], mtimeNs: row["mtime_ns"])
            }
        }
    }

    package func storedImageHashes(algorithm: String) throws -> [String: ImageHashes] {
        try pool.read { db in
            var out: [String: ImageHashes] = [:]
            let rows = try Row.fetchCursor(db, sql: "SELECT sha256, pixel_sha256, phash FROM image_hashes WHERE algorithm = ?",
                                           arguments: [algorithm])
            while let row = try rows.next() {
                out[row["sha256"]] = ImageHashes(pixelSHA256: row["pixel_sha256"], phash: UInt64(bitPattern: row["phash"]))
            }
            return out
        }
    }

    package func storedCropHashes(algorithm: String) throws -> [String: UInt64] {
        try pool.read { db in
            var out: [String: UInt64] = [:]
            let rows = try Row.fetchCursor(db, sql: "SELECT crop_sha256, phash FROM crop_hashes WHERE algorithm = ?", arguments: [algorithm])
            while let row = try rows.next() { out[row["crop_sha256"]] = UInt64(bitPattern: row["phash"]) }
            return out
        }
    }

    package func storedDescriptors(modelFingerprint: String) throws -> [String: FaceDescriptor] {
        try pool.read { db in
            var out: [String: FaceDescriptor] = [:]
            let rows = try Row.fetchCursor(db, sql: "SELECT crop_sha256, descriptor FROM descriptors WHERE model_fingerprint = ?",
                                           arguments: [modelFingerprint])
            while let row = try rows.next() {
                let blob: Data = row["descriptor"]
                out[row["crop_sha256"]] = DescriptorBlob.decode(blob)
            }
            return out
        }
    }

    /// The most recent completed curate run, if any.
    public func latestCurationRun() throws -> Int64? {
        try pool.read { db in
            try Int64.fetchOne(db, sql: "SELECT id FROM runs WHERE command = 'curate' AND status = 'completed' ORDER BY id DESC LIMIT 1")
        }
    }

    /// The decisions of one curate run with the paths and identity names they refer to.
    public func curationFindings(runID: Int64) throws -> [CurationFinding] {
        try pool.read { db in
            try Row.fetchAll(db, sql: """
                SELECT d.kind, d.group_id, d.score, d.reason,
                       f.path AS path, k.path AS kept_path, i.name AS identity, o.name AS other_identity,
                       d.identity_id, d.other_identity_id
                FROM curation_decisions d
                LEFT JOIN files f ON f.id = d.file_id
                LEFT JOIN files k ON k.id = d.kept_file_id
                LEFT JOIN identities i ON i.id = d.identity_id
                LEFT JOIN identities o ON o.id = d.other_identity_id
                WHERE d.run_id = ?
                ORDER BY d.kind, d.group_id, f.path, i.name, o.name
                """, arguments: [runID]).map { row in
                CurationFinding(kind: CurationDecision.Kind(rawValue: row["kind"])!, path: row["path"], keptPath: row["kept_path"],
                                identity: row["identity"], otherIdentity: row["other_identity"], groupID: row["group_id"],
                                score: row["score"], reason: row["reason"])
            }
        }
    }

    /// Identity aliases recorded by `--apply-merges`: alias name → canonical name.
    public func identityAliases() throws -> [String: String] {
        try pool.read { db in
            var out: [String: String] = [:]
            for row in try Row.fetchAll(db, sql: """
                SELECT a.name AS alias, c.name AS canonical FROM identity_aliases x
                JOIN identities a ON a.id = x.identity_id JOIN identities c ON c.id = x.canonical_identity_id
                """) { out[row["alias"]] = row["canonical"] }
            return out
        }
    }

    /// Paths of the readable files of each named identity, in path order.
    public func filePaths(identities names: Set<String>) throws -> [String: [String]] {
        try pool.read { db in
            var out: [String: [String]] = [:]
            for row in try Row.fetchAll(db, sql: """
                SELECT i.name, f.path FROM files f JOIN identities i ON i.id = f.identity_id
                WHERE f.read_error IS NULL ORDER BY f.path
                """) where names.contains(row["name"]) {
                out[row["name"], default: []].append(row["path"])
            }
            return out
        }
    }

    /// For review sheets: each file path → the absolute path of its selected face's 256 crop
    /// under the current ingest fingerprint (files without a face are absent).
    public func reviewCrops() throws -> [String: String] {
        guard let fp = try currentIngestFingerprint() else { return [:] }
        let root = try dataRoot()
        return try pool.read { db in
            var out: [String: String] = [:]
            for row in try Row.fetchAll(db, sql: """
                SELECT f.path, fa.crop256 FROM files f
                JOIN faces fa ON fa.sha256 = f.sha256 AND fa.params_fingerprint = ? AND fa.selected
                WHERE fa.crop256 IS NOT NULL
                """, arguments: [fp]) {
                out[row["path"]] = root.appendingPathComponent(row["crop256"] as String).path
            }
            return out
        }
    }
}

/// One decision joined with the names it refers to (what reports print).
public struct CurationFinding: Sendable, Equatable {
    public var kind: CurationDecision.Kind
    public var path: String?
    public var keptPath: String?
    public var identity: String?
    public var otherIdentity: String?
    public var groupID: Int?
    public var score: Double
    public var reason: String
    package init(kind: CurationDecision.Kind, path: String? = nil, keptPath: String? = nil, identity: String? = nil, otherIdentity: String? = nil, groupID: Int? = nil, score: Double, reason: String) {
        self.kind = kind
        self.path = path
        self.keptPath = keptPath
        self.identity = identity
        self.otherIdentity = otherIdentity
        self.groupID = groupID
        self.score = score
        self.reason = reason
    }
}

/// Descriptors are stored as 128 little-endian float32 values.
package enum DescriptorBlob {
    package static func encode(_ d: FaceDescriptor) -> Data {
        var data = Data(capacity: d.count * 4)
        for v in d { withUnsafeBytes(of: v.bitPattern.littleEndian) { data.append(contentsOf: $0) } }
        return data
    }

    package static func decode(_ data: Data) -> FaceDescriptor {
        let bytes = [UInt8](data)
        return (0..<(bytes.count / 4)).map { i in
            let b = UInt32(bytes[4 * i]) | UInt32(bytes[4 * i + 1]) << 8 | UInt32(bytes[4 * i + 2]) << 16 | UInt32(bytes[4 * i + 3]) << 24
            return Float(bitPattern: b)
        }
    }
}

/// The only writer of curation results. Features are committed in batches as they are computed
/// (a killed run keeps what it finished); a run's decisions and aliases commit in one transaction.
package actor CurationWriter {
    package let catalog: Catalog
    package let runID: Int64

    package init(catalog: Catalog, runID: Int64) {
        self.catalog = catalog
        self.runID = runID
    }

    package func storeFeatures(images: [(String, ImageHashes)], crops: [(String, UInt64)], descriptors: [(String, FaceDescriptor)],
                       problems: [(String, String)], hashAlgorithm: String, descriptorFingerprint: String) throws {
        try catalog.pool.write { [runID] db in
            for (sha, h) in images {
                try db.execute(sql: "INSERT OR REPLACE INTO image_hashes (sha256, algorithm, pixel_sha256, phash) VALUES (?, ?, ?, ?)",
                               arguments: [sha, hashAlgorithm, h.pixelSHA256, Int64(bitPattern: h.phash)])
            }
            for (sha, h) in crops {
                try db.execute(sql: "INSERT OR REPLACE INTO crop_hashes (crop_sha256, algorithm, phash) VALUES (?, ?, ?)",
                               arguments: [sha, hashAlgorithm, Int64(bitPattern: h)])
            }
            for (sha, d) in descriptors {
                try db.execute(sql: "INSERT OR REPLACE INTO descriptors (crop_sha256, model_fingerprint, descriptor) VALUES (?, ?, ?)",
                               arguments: [sha, descriptorFingerprint, DescriptorBlob.encode(d)])
            }
            for (location, reason) in problems {
                try db.execute(sql: "INSERT INTO run_problems (run_id, location, reason) VALUES (?, ?, ?)", arguments: [runID, location, reason])
            }
        }
    }

    package func recordDecisions(_ decisions: [CurationDecision], aliases: [IdentityAlias]) throws {
        try catalog.pool.write { [runID] db in
            for d in decisions {
                try db.execute(sql: """
                    INSERT INTO curation_decisions (run_id, kind, file_id, kept_file_id, identity_id, other_identity_id, group_id, score, reason)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """, arguments: [runID, d.kind.rawValue, d.fileID, d.keptFileID, d.identityID, d.otherIdentityID, d.groupID,
                                     d.score, d.reason])
            }
            // An alias already recorded stays as it was: applying merges never rewrites history.
            for a in aliases {
                try db.execute(sql: """
                    INSERT OR IGNORE INTO identity_aliases (identity_id, canonical_identity_id, run_id, score, reason)
                    VALUES (?, ?, ?, ?, ?)
                    """, arguments: [a.identityID, a.canonicalIdentityID, runID, a.score, a.reason])
            }
        }
    }

    package func finish(status: String, counts: [String: Int]) async throws {
        try RunRecorder.finish(catalog, runID: runID, status: status, counts: counts)
    }

    /// `curate --reset`: removes every curation decision and alias. Images, files, faces, stored
    /// hashes and descriptors stay (they are facts about content, not decisions).
    package static func reset(_ catalog: Catalog) throws -> (decisions: Int, aliases: Int) {
        try catalog.pool.write { db in
            try db.execute(sql: "DELETE FROM curation_decisions")
            let decisions = db.changesCount
            try db.execute(sql: "DELETE FROM identity_aliases")
            return (decisions, db.changesCount)
        }
    }
}

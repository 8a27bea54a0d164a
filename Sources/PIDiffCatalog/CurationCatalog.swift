import Foundation
import PIDiffModel
import GRDB

/// Curation's reads of the catalog. All SQL for curation lives here and in `CurationWriter`.
extension Catalog {
    /// Every readable, decodable photo under the ingest fingerprint, with its selected face and
    /// aligned crops, in path order.
    package func curationInputs(ingestFingerprint fp: String) throws -> [CurationFile] {
        try pool.read { db in
            try CurationInputRow.fetchAll(db, sql: """
                SELECT f.id, f.path, f.identity_id, i.name, f.sha256, im.width, im.height, f.byte_size, f.mtime_ns,
                       fa.landmarks68, fa.quad, fa.face_size, fa.sharpness, fa.yaw, fa.crop512, fa.crop256
                FROM files f
                JOIN identities i ON i.id = f.identity_id
                JOIN images im ON im.sha256 = f.sha256
                JOIN image_results r ON r.sha256 = f.sha256 AND r.params_fingerprint = ?
                LEFT JOIN faces fa ON fa.sha256 = f.sha256 AND fa.params_fingerprint = r.params_fingerprint AND fa.selected
                WHERE f.read_error IS NULL AND r.outcome IN ('ok', 'no_face')
                ORDER BY f.path
                """, arguments: [fp]).map(\.file)
        }
    }

    /// A file with its selected face's columns (all NULL when it has none).
    private struct CurationInputRow: Decodable, FetchableRecord {
        var id: Int64
        var path: String
        var identityID: Int64
        var name: String
        var sha256: String
        var width: Int?
        var height: Int?
        var byteSize: Int?
        var mtimeNs: Int64?
        var landmarks68: PointList?
        var quad: PointList?
        var faceSize: Double?
        var sharpness: Double?
        var yaw: Double?
        var crop512: String?
        var crop256: String?

        enum CodingKeys: String, CodingKey {
            case id, path, identityID = "identity_id", name, sha256, width, height, byteSize = "byte_size", mtimeNs = "mtime_ns"
            case landmarks68, quad, faceSize = "face_size", sharpness, yaw, crop512, crop256
        }

        var file: CurationFile {
            var face: CurationFile.Face?
            if let landmarks68, let quad, landmarks68.points.count == 68, quad.points.count == 4, let faceSize, let yaw,
               let descriptorCrop = crop512 ?? crop256, let hashCrop = crop256 ?? crop512 {
                face = CurationFile.Face(landmarks: Landmarks68(points: landmarks68.points), quad: AlignmentQuad(corners: quad.points),
                                         faceSize: faceSize, sharpness: sharpness, yaw: yaw,
                                         descriptorCrop: descriptorCrop, hashCrop: hashCrop)
            }
            return CurationFile(fileID: id, path: path, identityID: identityID, identity: name, sha256: sha256,
                                width: width ?? 0, height: height ?? 0, face: face, byteSize: byteSize, mtimeNs: mtimeNs)
        }
    }

    package func storedImageHashes(algorithm: String) throws -> [String: ImageHashes] {
        try pool.read { db in
            var out: [String: ImageHashes] = [:]
            let hashes = try ImageHashRecord.filter(ImageHashRecord.Columns.algorithm == algorithm).fetchCursor(db)
            while let h = try hashes.next() {
                out[h.sha256] = ImageHashes(pixelSHA256: h.pixelSHA256, phash: UInt64(bitPattern: h.phash))
            }
            return out
        }
    }

    package func storedCropHashes(algorithm: String) throws -> [String: UInt64] {
        try pool.read { db in
            var out: [String: UInt64] = [:]
            let hashes = try CropHashRecord.filter(CropHashRecord.Columns.algorithm == algorithm).fetchCursor(db)
            while let h = try hashes.next() { out[h.cropSHA256] = UInt64(bitPattern: h.phash) }
            return out
        }
    }

    package func storedDescriptors(modelFingerprint: String) throws -> [String: FaceDescriptor] {
        try pool.read { db in
            var out: [String: FaceDescriptor] = [:]
            let descriptors = try DescriptorRecord.filter(DescriptorRecord.Columns.modelFingerprint == modelFingerprint).fetchCursor(db)
            while let d = try descriptors.next() { out[d.cropSHA256] = DescriptorBlob.decode(d.descriptor) }
            return out
        }
    }

    /// The most recent completed curate run, if any.
    public func latestCurationRun() throws -> Int64? {
        try pool.read { db in
            try RunRecord.latest("curate", status: "completed").fetchOne(db)?.id
        }
    }

    /// The decisions of one curate run with the paths and identity names they refer to.
    public func curationFindings(runID: Int64) throws -> [CurationFinding] {
        try pool.read { db in
            try FindingRow.fetchAll(db, sql: """
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
                """, arguments: [runID]).map {
                CurationFinding(kind: $0.kind, path: $0.path, keptPath: $0.keptPath, identity: $0.identity,
                                otherIdentity: $0.otherIdentity, groupID: $0.groupID, score: $0.score, reason: $0.reason)
            }
        }
    }

    /// A decision with the paths and names its ids refer to.
    private struct FindingRow: Decodable, FetchableRecord {
        var kind: CurationDecision.Kind
        var groupID: Int?
        var score: Double
        var reason: String
        var path: String?
        var keptPath: String?
        var identity: String?
        var otherIdentity: String?
        enum CodingKeys: String, CodingKey {
            case kind, groupID = "group_id", score, reason, path, keptPath = "kept_path", identity, otherIdentity = "other_identity"
        }
    }

    /// Identity aliases recorded by `--apply-merges`: alias name → canonical name.
    public func identityAliases() throws -> [String: String] {
        try pool.read { db in
            var out: [String: String] = [:]
            for pair in try AliasNames.fetchAll(db, sql: """
                SELECT a.name AS alias, c.name AS canonical FROM identity_aliases x
                JOIN identities a ON a.id = x.identity_id JOIN identities c ON c.id = x.canonical_identity_id
                """) { out[pair.alias] = pair.canonical }
            return out
        }
    }

    private struct AliasNames: Decodable, FetchableRecord {
        var alias: String
        var canonical: String
    }

    /// Paths of the readable files of each named identity, in path order.
    public func filePaths(identities names: Set<String>) throws -> [String: [String]] {
        try pool.read { db in
            var out: [String: [String]] = [:]
            for file in try IdentityPath.fetchAll(db, sql: """
                SELECT i.name, f.path FROM files f JOIN identities i ON i.id = f.identity_id
                WHERE f.read_error IS NULL ORDER BY f.path
                """) where names.contains(file.name) {
                out[file.name, default: []].append(file.path)
            }
            return out
        }
    }

    private struct IdentityPath: Decodable, FetchableRecord {
        var name: String
        var path: String
    }

    /// For review sheets: each file path → the absolute path of its selected face's 256 crop
    /// under the current ingest fingerprint (files without a face are absent).
    public func reviewCrops() throws -> [String: String] {
        guard let fp = try currentIngestFingerprint() else { return [:] }
        let root = try dataRoot()
        return try pool.read { db in
            var out: [String: String] = [:]
            for crop in try PathCrop.fetchAll(db, sql: """
                SELECT f.path, fa.crop256 FROM files f
                JOIN faces fa ON fa.sha256 = f.sha256 AND fa.params_fingerprint = ? AND fa.selected
                WHERE fa.crop256 IS NOT NULL
                """, arguments: [fp]) {
                out[crop.path] = root.appendingPathComponent(crop.crop256).path
            }
            return out
        }
    }

    private struct PathCrop: Decodable, FetchableRecord {
        var path: String
        var crop256: String
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
            // Stored features are facts about content: computing one again replaces it.
            for (sha, h) in images {
                try ImageHashRecord(sha256: sha, algorithm: hashAlgorithm, pixelSHA256: h.pixelSHA256, phash: Int64(bitPattern: h.phash))
                    .insert(db, onConflict: .replace)
            }
            for (sha, h) in crops {
                try CropHashRecord(cropSHA256: sha, algorithm: hashAlgorithm, phash: Int64(bitPattern: h)).insert(db, onConflict: .replace)
            }
            for (sha, d) in descriptors {
                try DescriptorRecord(cropSHA256: sha, modelFingerprint: descriptorFingerprint, descriptor: DescriptorBlob.encode(d))
                    .insert(db, onConflict: .replace)
            }
            for (location, reason) in problems {
                try RunProblemRecord(runID: runID, location: location, reason: reason).insert(db)
            }
        }
    }

    /// Records a run's decisions and aliases. A merge a person accepted replaces whatever alias
    /// the identity had (an earlier run's proposal); a proposed alias never replaces one already
    /// recorded: applying proposals never rewrites history.
    package func recordDecisions(_ decisions: [CurationDecision], accepted: [IdentityAlias] = [], proposed: [IdentityAlias] = []) throws {
        try catalog.pool.write { [runID] db in
            for d in decisions {
                try CurationDecisionRecord(d, runID: runID).insert(db)
            }
            for (aliases, conflict) in [(accepted, Database.ConflictResolution.replace), (proposed, .ignore)] {
                for a in aliases {
                    let existing = try IdentityAliasRecord.fetchOne(db, key: a.identityID)
                    if conflict == .replace, existing?.canonicalIdentityID == a.canonicalIdentityID { continue }  // already so
                    try IdentityAliasRecord(identityID: a.identityID, canonicalIdentityID: a.canonicalIdentityID, runID: runID,
                                            score: a.score, reason: a.reason)
                        .insert(db, onConflict: conflict)
                }
            }
            // An identity that an earlier proposal merged into one a person has since merged
            // elsewhere follows it there (aliases stay one level deep).
            for a in accepted {
                try db.execute(sql: "UPDATE identity_aliases SET canonical_identity_id = ? WHERE canonical_identity_id = ?",
                               arguments: [a.canonicalIdentityID, a.identityID])
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
            (try CurationDecisionRecord.deleteAll(db), try IdentityAliasRecord.deleteAll(db))
        }
    }
}

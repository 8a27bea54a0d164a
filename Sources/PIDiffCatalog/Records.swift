import Foundation
import PIDiffModel
import GRDB

// One Codable struct per catalog table. Property names are Swift's; `CodingKeys` are the column
// names of the migrations in Catalog.swift, spelled exactly (the schema is not changed here).
// A nil optional is written as NULL, so an upsert clears a column as the old positional
// statements did. Rows that join several tables decode into small private structs beside the
// query that reads them.

// MARK: - Points (landmarks68, quad)

/// Points as the catalog stores them: a JSON array of `[x, y]` pairs (`faces.landmarks68`,
/// `faces.quad`). GRDB writes a Codable array column as JSON text, so this conformance is the one
/// place that format is written and read; a malformed value fails the fetch that reads it.
struct PointList: Codable, Equatable, Sendable {
    var points: [Point]

    init(_ points: [Point]) { self.points = points }

    /// `[[x, y], …]`, as `faces --json` and the shards carry them.
    var pairs: [[Double]] { points.map { [$0.x, $0.y] } }

    init(from decoder: Decoder) throws {
        var container = try decoder.unkeyedContainer()
        var points: [Point] = []
        while !container.isAtEnd {
            let pair = try container.decode([Double].self)
            guard pair.count == 2 else {
                throw DecodingError.dataCorruptedError(in: container, debugDescription: "point \(points.count): [x, y] expected, got \(pair)")
            }
            points.append(Point(x: pair[0], y: pair[1]))
        }
        self.points = points
    }

    func encode(to encoder: Encoder) throws {
        var container = encoder.unkeyedContainer()
        for p in points { try container.encode([p.x, p.y]) }
    }
}

// MARK: - Runs

/// `runs`: one row per command that changed the catalog.
struct RunRecord: Codable, FetchableRecord, MutablePersistableRecord, Sendable {
    static let databaseTableName = "runs"
    var id: Int64?
    var command: String
    /// running | completed | failed | interrupted
    var status: String
    var startedAt: String
    var endedAt: String?
    var paramsFingerprint: String
    /// JSON object.
    var parameters: String
    /// JSON object of counts, set when the run ends.
    var counts: String?

    enum CodingKeys: String, CodingKey {
        case id, command, status, startedAt = "started_at", endedAt = "ended_at"
        case paramsFingerprint = "params_fingerprint", parameters, counts
    }
    enum Columns {
        static let id = Column(CodingKeys.id)
        static let command = Column(CodingKeys.command)
        static let status = Column(CodingKeys.status)
        static let endedAt = Column(CodingKeys.endedAt)
        static let paramsFingerprint = Column(CodingKeys.paramsFingerprint)
        static let counts = Column(CodingKeys.counts)
    }

    init(command: String, status: String, startedAt: String, endedAt: String? = nil, paramsFingerprint: String,
         parameters: String, counts: String? = nil) {
        self.command = command
        self.status = status
        self.startedAt = startedAt
        self.endedAt = endedAt
        self.paramsFingerprint = paramsFingerprint
        self.parameters = parameters
        self.counts = counts
    }

    mutating func didInsert(_ inserted: InsertionSuccess) { id = inserted.rowID }

    /// The runs of `command`, latest first (optionally only those that ended with `status`).
    static func latest(_ command: String, status: String? = nil) -> QueryInterfaceRequest<RunRecord> {
        let runs = filter(Columns.command == command).order(Columns.id.desc)
        return status.map { runs.filter(Columns.status == $0) } ?? runs
    }

    /// The counts as `status` shows them (nil when absent or not a JSON object of integers).
    var countsByName: [String: Int]? {
        counts.flatMap { try? JSONDecoder().decode([String: Int].self, from: Data($0.utf8)) }
    }
}

/// `run_problems`: something a run could not do, named by its location.
struct RunProblemRecord: Codable, FetchableRecord, PersistableRecord, Sendable {
    static let databaseTableName = "run_problems"
    var id: Int64?
    var runID: Int64
    var location: String
    var reason: String

    init(runID: Int64, location: String, reason: String) {
        self.runID = runID
        self.location = location
        self.reason = reason
    }

    enum CodingKeys: String, CodingKey { case id, runID = "run_id", location, reason }
}

// MARK: - Ingest

/// `meta`: catalog-wide settings (the data root).
struct MetaRecord: Codable, FetchableRecord, PersistableRecord, Sendable {
    static let databaseTableName = "meta"
    var key: String
    var value: String
}

/// `sources`: a folder tree or manifest that ingest reads.
struct SourceRecord: Codable, FetchableRecord, PersistableRecord, Sendable {
    static let databaseTableName = "sources"
    var id: Int64?
    var kind: SourceKind
    var location: String
    var firstRunID: Int64?

    enum CodingKeys: String, CodingKey { case id, kind, location, firstRunID = "first_run_id" }
    enum Columns { static let location = Column(CodingKeys.location) }
}

/// `identities`: one row per identity name (NFC).
struct IdentityRecord: Codable, FetchableRecord, PersistableRecord, Sendable {
    static let databaseTableName = "identities"
    var id: Int64?
    var name: String
    enum CodingKeys: String, CodingKey { case id, name }
    enum Columns { static let name = Column(CodingKeys.name) }
}

/// `images`: content facts, keyed by the SHA-256 of the file's bytes.
struct ImageRecord: Codable, FetchableRecord, PersistableRecord, Sendable {
    static let databaseTableName = "images"
    var sha256: String
    var byteSize: Int
    var format: String?
    var width: Int?
    var height: Int?
    enum CodingKeys: String, CodingKey { case sha256, byteSize = "byte_size", format, width, height }
}

/// `image_results`: what ingest made of one image content under one parameters fingerprint.
struct ImageResultRecord: Codable, FetchableRecord, PersistableRecord, Sendable {
    static let databaseTableName = "image_results"
    var sha256: String
    var paramsFingerprint: String
    var outcome: ImageOutcome
    var reason: String?
    var facesFound: Int
    var runID: Int64
    enum CodingKeys: String, CodingKey {
        case sha256, paramsFingerprint = "params_fingerprint", outcome, reason, facesFound = "faces_found", runID = "run_id"
    }
}

/// `files`: one row per path seen; what the path held the last time it was read.
struct FileRecord: Codable, FetchableRecord, PersistableRecord, Sendable {
    static let databaseTableName = "files"
    var id: Int64?
    var path: String
    var sourceID: Int64
    var identityID: Int64
    var byteSize: Int?
    var mtimeNs: Int64?
    var sha256: String?
    var readError: String?
    var caption: String?
    var race: String?
    var age: String?
    var gender: String?
    var origin: String?
    var hint: String?
    var runID: Int64

    enum CodingKeys: String, CodingKey {
        case id, path, sourceID = "source_id", identityID = "identity_id", byteSize = "byte_size", mtimeNs = "mtime_ns"
        case sha256, readError = "read_error", caption, race, age, gender, origin, hint, runID = "run_id"
    }
    enum Columns {
        static let sha256 = Column(CodingKeys.sha256)
        static let readError = Column(CodingKeys.readError)
        static let race = Column(CodingKeys.race)
        static let age = Column(CodingKeys.age)
        static let gender = Column(CodingKeys.gender)
    }

    /// The manifest's raw value of one label attribute.
    func label(_ attribute: LabelAttribute) -> String? {
        switch attribute {
        case .race: return race
        case .age: return age
        case .gender: return gender
        }
    }
}

/// `faces`: one detected face of one image content under one ingest fingerprint.
struct FaceRecord: Codable, FetchableRecord, PersistableRecord, Sendable {
    static let databaseTableName = "faces"
    var id: Int64?
    var sha256: String
    var paramsFingerprint: String
    var faceIndex: Int
    var selected: Bool
    var boxLeft: Double
    var boxTop: Double
    var boxRight: Double
    var boxBottom: Double
    var detScore: Double
    var landmarks68: PointList
    var quad: PointList
    var faceSize: Double
    var sharpness: Double?
    var rollDegrees: Double
    var yaw: Double
    var outsideFraction: Double
    var padded: Bool?
    var qualityOK: Bool?
    var qualityReason: String?
    /// Paths relative to the data root.
    var crop512: String?
    var crop256: String?

    enum CodingKeys: String, CodingKey {
        case id, sha256, paramsFingerprint = "params_fingerprint", faceIndex = "face_index", selected
        case boxLeft = "box_left", boxTop = "box_top", boxRight = "box_right", boxBottom = "box_bottom", detScore = "det_score"
        case landmarks68, quad, faceSize = "face_size", sharpness, rollDegrees = "roll_degrees", yaw
        case outsideFraction = "outside_fraction", padded, qualityOK = "quality_ok", qualityReason = "quality_reason"
        case crop512, crop256
    }
    enum Columns {
        static let sha256 = Column(CodingKeys.sha256)
        static let paramsFingerprint = Column(CodingKeys.paramsFingerprint)
        static let selected = Column(CodingKeys.selected)
        static let qualityOK = Column(CodingKeys.qualityOK)
    }

    /// The row of one face of an ingest analysis.
    init(_ f: FaceDraft, sha256: String, fingerprint: String) {
        self.sha256 = sha256
        paramsFingerprint = fingerprint
        faceIndex = f.index
        selected = f.selected
        boxLeft = f.box.left
        boxTop = f.box.top
        boxRight = f.box.right
        boxBottom = f.box.bottom
        detScore = f.box.score
        landmarks68 = PointList(f.landmarks.points)
        quad = PointList(f.quad.corners)
        faceSize = f.quality.faceSize
        sharpness = f.quality.sharpness
        rollDegrees = f.quality.rollDegrees
        yaw = f.quality.yaw
        outsideFraction = f.quality.outsideFraction
        padded = f.padded
        qualityOK = f.quality.passed
        qualityReason = f.quality.reason
        crop512 = f.crops[512]
        crop256 = f.crops[256]
    }

    /// The 68 landmarks, or nil when the row does not hold 68 points.
    var landmarks: Landmarks68? { landmarks68.points.count == 68 ? Landmarks68(points: landmarks68.points) : nil }
    /// The alignment quad, or nil when the row does not hold 4 corners.
    var alignmentQuad: AlignmentQuad? { quad.points.count == 4 ? AlignmentQuad(corners: quad.points) : nil }
    /// `[left, top, right, bottom]`, as `faces --json` prints the box.
    var bbox: [Double] { [boxLeft, boxTop, boxRight, boxBottom] }
    /// The quality measures by column name, as the shards carry them (an unmeasured sharpness is absent).
    var qualityMeasures: [String: Double] {
        var out = ["face_size": faceSize, "roll_degrees": rollDegrees, "yaw": yaw, "outside_fraction": outsideFraction]
        if let sharpness { out["sharpness"] = sharpness }
        return out
    }
}

// MARK: - Curation

/// `image_hashes`: decoded-pixel SHA-256 and whole-image pHash of one image content.
struct ImageHashRecord: Codable, FetchableRecord, PersistableRecord, Sendable {
    static let databaseTableName = "image_hashes"
    var sha256: String
    var algorithm: String
    var pixelSHA256: String
    /// The 64-bit hash's bit pattern (SQLite integers are signed).
    var phash: Int64
    enum CodingKeys: String, CodingKey { case sha256, algorithm, pixelSHA256 = "pixel_sha256", phash }
    enum Columns { static let algorithm = Column(CodingKeys.algorithm) }
}

/// `crop_hashes`: pHash of an aligned face crop, keyed by the crop's SHA-256.
struct CropHashRecord: Codable, FetchableRecord, PersistableRecord, Sendable {
    static let databaseTableName = "crop_hashes"
    var cropSHA256: String
    var algorithm: String
    var phash: Int64
    enum CodingKeys: String, CodingKey { case cropSHA256 = "crop_sha256", algorithm, phash }
    enum Columns { static let algorithm = Column(CodingKeys.algorithm) }
}

/// `descriptors`: identity descriptor of the face in one aligned crop (see `DescriptorBlob`).
struct DescriptorRecord: Codable, FetchableRecord, PersistableRecord, Sendable {
    static let databaseTableName = "descriptors"
    var cropSHA256: String
    var modelFingerprint: String
    var descriptor: Data
    enum CodingKeys: String, CodingKey { case cropSHA256 = "crop_sha256", modelFingerprint = "model_fingerprint", descriptor }
    enum Columns { static let modelFingerprint = Column(CodingKeys.modelFingerprint) }
}

/// `curation_decisions`: what a curate run concluded.
struct CurationDecisionRecord: Codable, FetchableRecord, PersistableRecord, Sendable {
    static let databaseTableName = "curation_decisions"
    var id: Int64?
    var runID: Int64
    var kind: CurationDecision.Kind
    var fileID: Int64?
    var keptFileID: Int64?
    var identityID: Int64?
    var otherIdentityID: Int64?
    var groupID: Int?
    var score: Double
    var reason: String

    enum CodingKeys: String, CodingKey {
        case id, runID = "run_id", kind, fileID = "file_id", keptFileID = "kept_file_id", identityID = "identity_id"
        case otherIdentityID = "other_identity_id", groupID = "group_id", score, reason
    }

    init(_ d: CurationDecision, runID: Int64) {
        self.runID = runID
        kind = d.kind
        fileID = d.fileID
        keptFileID = d.keptFileID
        identityID = d.identityID
        otherIdentityID = d.otherIdentityID
        groupID = d.groupID
        score = d.score
        reason = d.reason
    }
}

/// `identity_aliases`: an identity recorded as another name of a canonical one.
struct IdentityAliasRecord: Codable, FetchableRecord, PersistableRecord, Sendable {
    static let databaseTableName = "identity_aliases"
    var identityID: Int64
    var canonicalIdentityID: Int64
    var runID: Int64
    var score: Double
    var reason: String
    enum CodingKeys: String, CodingKey {
        case identityID = "identity_id", canonicalIdentityID = "canonical_identity_id", runID = "run_id", score, reason
    }
}

// MARK: - Masks

/// `masks`: the mask of one selected face under one mask parameters fingerprint.
struct MaskRecord: Codable, FetchableRecord, PersistableRecord, Sendable {
    static let databaseTableName = "masks"
    var sha256: String
    var faceFingerprint: String
    var faceIndex: Int
    var maskFingerprint: String
    var method: String
    /// Paths relative to the data root.
    var mask512: String?
    var mask256: String?
    var e4eInput: String?
    var coverage: Double?
    var ok: Bool
    var reason: String?
    var runID: Int64

    enum CodingKeys: String, CodingKey {
        case sha256, faceFingerprint = "face_fingerprint", faceIndex = "face_index", maskFingerprint = "mask_fingerprint", method
        case mask512, mask256, e4eInput = "e4e_input", coverage, ok, reason, runID = "run_id"
    }
    enum Columns {
        static let faceFingerprint = Column(CodingKeys.faceFingerprint)
        static let maskFingerprint = Column(CodingKeys.maskFingerprint)
    }

    /// The primary key, for `fetchOne(_:key:)`.
    static func key(sha256: String, faceFingerprint: String, faceIndex: Int, maskFingerprint: String) -> [String: (any DatabaseValueConvertible)?] {
        [CodingKeys.sha256.rawValue: sha256, CodingKeys.faceFingerprint.rawValue: faceFingerprint,
         CodingKeys.faceIndex.rawValue: faceIndex, CodingKeys.maskFingerprint.rawValue: maskFingerprint]
    }
}

// MARK: - Labels

/// `manual_labels`: a correction from `labels import` (`path` empty = the whole identity).
struct ManualLabelRecord: Codable, FetchableRecord, PersistableRecord, Sendable {
    static let databaseTableName = "manual_labels"
    var identity: String
    var path: String
    /// race | age | gender, as stored; a value this build does not know is skipped by readers.
    var attribute: String
    var value: String
    var source: String
    var runID: Int64
    enum CodingKeys: String, CodingKey { case identity, path, attribute, value, source, runID = "run_id" }
}

/// `classifier_labels`: FairFace-style probabilities of one selected face under one model.
struct ClassifierLabelRecord: Codable, FetchableRecord, PersistableRecord, Sendable {
    static let databaseTableName = "classifier_labels"
    var sha256: String
    var faceFingerprint: String
    var faceIndex: Int
    var modelFingerprint: String
    /// JSON arrays of probabilities (see `ClassifierLabelRecord.probabilities`).
    var raceProbs: String
    var genderProbs: String
    var ageProbs: String
    var runID: Int64
    enum CodingKeys: String, CodingKey {
        case sha256, faceFingerprint = "face_fingerprint", faceIndex = "face_index", modelFingerprint = "model_fingerprint"
        case raceProbs = "race_probs", genderProbs = "gender_probs", ageProbs = "age_probs", runID = "run_id"
    }

    /// Probabilities as stored: six decimals, so a re-run with the same model writes the same text.
    static func json(_ probabilities: [Double]) -> String {
        "[" + probabilities.map { String(format: "%.6f", $0) }.joined(separator: ",") + "]"
    }
    /// A stored probabilities column read back (empty when unreadable, which counts as unknown).
    static func probabilities(_ json: String) -> [Double] {
        (try? JSONDecoder().decode([Double].self, from: Data(json.utf8))) ?? []
    }
}

// MARK: - Splits and encodings

/// `splits`: a named, immutable draw.
struct SplitRecord: Codable, FetchableRecord, PersistableRecord, Sendable {
    static let databaseTableName = "splits"
    var name: String
    var runID: Int64
    var createdAt: String
    var seed: Int
    var parameters: String
    var quotas: String
    enum CodingKeys: String, CodingKey { case name, runID = "run_id", createdAt = "created_at", seed, parameters, quotas }
}

/// `split_items`: one photo of a split, with the content it held when the split was drawn.
struct SplitItemRecord: Codable, FetchableRecord, PersistableRecord, Sendable {
    static let databaseTableName = "split_items"
    var splitName: String
    var fileID: Int64
    var identity: String
    /// train | reference | style
    var role: String
    var path: String
    var sha256: String

    enum CodingKeys: String, CodingKey {
        case splitName = "split_name", fileID = "file_id", identity, role, path, sha256
    }
    enum Columns {
        static let splitName = Column(CodingKeys.splitName)
        static let identity = Column(CodingKeys.identity)
        static let role = Column(CodingKeys.role)
        static let path = Column(CodingKeys.path)
    }

    init(_ item: SplitSelection.Item, split: String) {
        splitName = split
        fileID = item.fileID
        identity = item.identity
        role = item.role
        path = item.path
        sha256 = item.sha256
    }

    var item: SplitSelection.Item { SplitSelection.Item(identity: identity, role: role, path: path, sha256: sha256, fileID: fileID) }
}

/// `encodings`: an encoding that exists for a photo, keyed on content, preprocessing and models.
struct EncodingRecord: Codable, FetchableRecord, PersistableRecord, Sendable {
    static let databaseTableName = "encodings"
    var sha256: String
    var preprocessingFingerprint: String
    var modelFingerprint: String
    var encodedFile: String
    var sampleKey: String
    var recordedAt: String

    enum CodingKeys: String, CodingKey {
        case sha256, preprocessingFingerprint = "preprocessing_fingerprint", modelFingerprint = "model_fingerprint"
        case encodedFile = "encoded_file", sampleKey = "sample_key", recordedAt = "recorded_at"
    }

    /// The primary key, for `fetchOne(_:key:)` and `exists(_:key:)`.
    static func key(sha256: String, preprocessing: String, model: String) -> [String: (any DatabaseValueConvertible)?] {
        [CodingKeys.sha256.rawValue: sha256, CodingKeys.preprocessingFingerprint.rawValue: preprocessing,
         CodingKeys.modelFingerprint.rawValue: model]
    }
}

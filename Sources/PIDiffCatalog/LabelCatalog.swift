import Foundation
import PIDiffModel
import GRDB

/// Labels of one identity (and of its photos where they differ), as `labels show` prints them.
public struct IdentityLabels: Codable, Sendable {
    public var identity: String
    public var race: ResolvedLabel
    public var age: ResolvedLabel
    public var gender: ResolvedLabel
    /// Per-photo age where a photo's own age bracket is known and differs from the identity's.
    public var imageAges: [String: String]
    package enum CodingKeys: String, CodingKey { case identity, race, age, gender, imageAges = "image_ages" }
    package init(identity: String, race: ResolvedLabel, age: ResolvedLabel, gender: ResolvedLabel, imageAges: [String: String]) {
        self.identity = identity
        self.race = race
        self.age = age
        self.gender = gender
        self.imageAges = imageAges
    }
}

/// A manual correction row from `labels import`.
public struct ManualLabel: Sendable, Equatable {
    public var identity: String
    public var path: String
    public var attribute: LabelAttribute
    public var value: String
    package init(identity: String, path: String, attribute: LabelAttribute, value: String) {
        self.identity = identity
        self.path = path
        self.attribute = attribute
        self.value = value
    }
}

/// A manifest value that the `labels:` mapping places nowhere (it counts as unknown).
public struct UnmappedLabel: Sendable, Equatable {
    public var attribute: LabelAttribute
    public var value: String
    public var identities: Int
    public var photos: Int
    package init(attribute: LabelAttribute, value: String, identities: Int, photos: Int) {
        self.attribute = attribute
        self.value = value
        self.identities = identities
        self.photos = photos
    }
}

extension Catalog {
    /// Manifest label values of readable photos that `mapping` does not place, most photos first:
    /// `labels import` refuses such values, but a manifest's only become `unknown` at balance time,
    /// so they are listed where the balance is reported.
    public func unmappedManifestLabels(mapping: LabelMapping) throws -> [UnmappedLabel] {
        try pool.read { db in
            var seen: [String: (attribute: LabelAttribute, value: String, identities: Set<Int64>, photos: Int)] = [:]
            typealias Columns = FileRecord.Columns
            let labelled = FileRecord.filter(Columns.sha256 != nil && Columns.readError == nil
                                             && (Columns.race != nil || Columns.age != nil || Columns.gender != nil))
            for file in try labelled.fetchAll(db) {
                for attribute in LabelAttribute.allCases {
                    guard let raw = file.label(attribute), !raw.trimmingCharacters(in: .whitespaces).isEmpty,
                          mapping.normalise(attribute, raw) == nil else { continue }
                    let key = "\(attribute.rawValue)\u{0}\(raw)"
                    seen[key, default: (attribute, raw, [], 0)].photos += 1
                    seen[key]!.identities.insert(file.identityID)
                }
            }
            return seen.values.map { UnmappedLabel(attribute: $0.attribute, value: $0.value, identities: $0.identities.count, photos: $0.photos) }
                .sorted { ($0.photos, $1.attribute.rawValue, $1.value) > ($1.photos, $0.attribute.rawValue, $0.value) }
        }
    }
    /// Every identity name in the catalog.
    public func identityNames() throws -> [String] {
        try pool.read { try String.fetchAll($0, sql: "SELECT name FROM identities ORDER BY name") }
    }

    /// Stores manual corrections (one writer, one transaction); a later import of the same key wins.
    public func importManualLabels(_ labels: [ManualLabel], source: String) throws -> Int64 {
        try pool.write { db in
            let run = try RunRecorder.recordCompleted(db, command: "labels import", fingerprint: "",
                                                           parameters: "{\"source\":\"\(source)\"}", counts: "{\"labels\":\(labels.count)}")
            for l in labels {
                try ManualLabelRecord(identity: l.identity, path: l.path, attribute: l.attribute.rawValue, value: l.value, source: source,
                                      runID: run)
                    .insert(db, onConflict: .replace)
            }
            return run
        }
    }

    /// Resolves every identity's labels: manual > manifest > classifier (see LabelResolver).
    public func identityLabels(mapping: LabelMapping, classifierFingerprint: String? = nil) throws -> [IdentityLabels] {
        let fp = try currentIngestFingerprint()
        return try pool.read { db in
            var obs: [String: [LabelObservation]] = [:]
            var imageAge: [String: [String: String]] = [:]
            let identities = try String.fetchAll(db, sql: "SELECT name FROM identities ORDER BY name")
            // Manifest labels of readable files.
            for file in try NamedFile.fetchAll(db, sql: """
                SELECT i.name, f.* FROM files f JOIN identities i ON i.id = f.identity_id
                WHERE f.sha256 IS NOT NULL AND f.read_error IS NULL
                """) {
                for attr in LabelAttribute.allCases {
                    if let v = mapping.normalise(attr, file.file.label(attr)) {
                        obs[file.name, default: []].append(LabelObservation(attribute: attr, value: v, provenance: .manifest, confidence: 1))
                        if attr == .age { imageAge[file.name, default: [:]][file.file.path] = v }
                    }
                }
            }
            // Classifier probabilities of selected faces.
            if let fp, let cfp = classifierFingerprint {
                for row in try ClassifiedPhoto.fetchAll(db, sql: """
                    SELECT DISTINCT i.name, f.path, c.race_probs, c.gender_probs, c.age_probs FROM classifier_labels c
                    JOIN faces fa ON fa.sha256 = c.sha256 AND fa.params_fingerprint = c.face_fingerprint AND fa.face_index = c.face_index AND fa.selected
                    JOIN files f ON f.sha256 = c.sha256 JOIN identities i ON i.id = f.identity_id
                    WHERE c.face_fingerprint = ? AND c.model_fingerprint = ?
                    """, arguments: [fp, cfp]) {
                    let probs = ClassifierLabelRecord.probabilities
                    for o in FairFace.observations(race: probs(row.raceProbs), gender: probs(row.genderProbs), age: probs(row.ageProbs),
                                                   mapping: mapping) {
                        obs[row.name, default: []].append(o)
                        if o.attribute == .age, imageAge[row.name]?[row.path] == nil { imageAge[row.name, default: [:]][row.path] = o.value }
                    }
                }
            }
            // Manual corrections.
            for label in try ManualLabelRecord.fetchAll(db) {
                guard let attr = LabelAttribute(rawValue: label.attribute) else { continue }
                let value = mapping.normalise(attr, label.value) ?? "unknown"
                if label.path.isEmpty {
                    obs[label.identity, default: []].append(LabelObservation(attribute: attr, value: value, provenance: .manual, confidence: 1))
                } else if attr == .age {
                    imageAge[label.identity, default: [:]][label.path] = value
                }
            }
            return identities.map { name in
                let o = obs[name] ?? []
                let age = LabelResolver.resolve(o, attribute: .age)
                return IdentityLabels(identity: name, race: LabelResolver.resolve(o, attribute: .race), age: age,
                                      gender: LabelResolver.resolve(o, attribute: .gender),
                                      imageAges: (imageAge[name] ?? [:]).filter { $0.value != age.value })
            }
        }
    }

    /// A file with its identity's name.
    private struct NamedFile: Decodable, FetchableRecord {
        var name: String
        /// Decoded from the row's `files` columns.
        var file: FileRecord
    }

    /// One photo's classifier probabilities (JSON arrays, see `ClassifierLabelRecord`).
    private struct ClassifiedPhoto: Decodable, FetchableRecord {
        var name: String
        var path: String
        var raceProbs: String
        var genderProbs: String
        var ageProbs: String
        enum CodingKeys: String, CodingKey { case name, path, raceProbs = "race_probs", genderProbs = "gender_probs", ageProbs = "age_probs" }
    }

    /// Selected faces with a 256 crop that have no classifier result under `modelFingerprint`.
    package func pendingClassifierFaces(modelFingerprint: String) throws -> [(sha256: String, faceIndex: Int, crop256: String)] {
        guard let fp = try currentIngestFingerprint() else { return [] }
        return try pool.read { db in
            try FaceRecord.fetchAll(db, sql: """
                SELECT * FROM faces fa WHERE params_fingerprint = ? AND selected AND crop256 IS NOT NULL
                  AND NOT EXISTS (SELECT 1 FROM classifier_labels c WHERE c.sha256 = fa.sha256 AND c.face_fingerprint = fa.params_fingerprint
                                  AND c.face_index = fa.face_index AND c.model_fingerprint = ?)
                ORDER BY sha256
                """, arguments: [fp, modelFingerprint]).compactMap { face in face.crop256.map { (face.sha256, face.faceIndex, $0) } }
        }
    }

    package func storeClassifierResults(_ results: [(sha256: String, faceIndex: Int, race: [Double], gender: [Double], age: [Double])],
                                modelFingerprint: String) throws {
        guard let fp = try currentIngestFingerprint() else { return }
        try pool.write { db in
            let run = try RunRecorder.recordCompleted(db, command: "labels classify", fingerprint: modelFingerprint,
                                                           parameters: "{}", counts: "{\"faces\":\(results.count)}")
            let json = ClassifierLabelRecord.json
            for r in results {
                try ClassifierLabelRecord(sha256: r.sha256, faceFingerprint: fp, faceIndex: r.faceIndex, modelFingerprint: modelFingerprint,
                                          raceProbs: json(r.race), genderProbs: json(r.gender), ageProbs: json(r.age), runID: run)
                    .insert(db, onConflict: .replace)
            }
        }
    }

    /// Model fingerprint of the latest classifier run, if any.
    public func currentClassifierFingerprint() throws -> String? {
        try pool.read { try RunRecord.latest("labels classify").fetchOne($0)?.paramsFingerprint }
    }
}

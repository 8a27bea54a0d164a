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
            for row in try Row.fetchAll(db, sql: """
                SELECT identity_id, race, age, gender FROM files
                WHERE sha256 IS NOT NULL AND read_error IS NULL AND (race IS NOT NULL OR age IS NOT NULL OR gender IS NOT NULL)
                """) {
                for attribute in LabelAttribute.allCases {
                    guard let raw: String = row[attribute.rawValue], !raw.trimmingCharacters(in: .whitespaces).isEmpty,
                          mapping.normalise(attribute, raw) == nil else { continue }
                    let key = "\(attribute.rawValue)\u{0}\(raw)"
                    seen[key, default: (attribute, raw, [], 0)].photos += 1
                    if let id: Int64 = row["identity_id"] { seen[key]!.identities.insert(id) }
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
                try db.execute(sql: "INSERT OR REPLACE INTO manual_labels (identity, path, attribute, value, source, run_id) VALUES (?, ?, ?, ?, ?, ?)",
                               arguments: [l.identity, l.path, l.attribute.rawValue, l.value, source, run])
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
            for row in try Row.fetchAll(db, sql: """
                SELECT i.name, f.path, f.race, f.age, f.gender FROM files f JOIN identities i ON i.id = f.identity_id
                WHERE f.sha256 IS NOT NULL AND f.read_error IS NULL
                """) {
                let name: String = row["name"]
                for attr in LabelAttribute.allCases {
                    if let v = mapping.normalise(attr, row[attr.rawValue]) {
                        obs[name, default: []].append(LabelObservation(attribute: attr, value: v, provenance: .manifest, confidence: 1))
                        if attr == .age { imageAge[name, default: [:]][row["path"]] = v }
                    }
                }
            }
            // Classifier probabilities of selected faces.
            if let fp, let cfp = classifierFingerprint {
                for row in try Row.fetchAll(db, sql: """
                    SELECT DISTINCT i.name, f.path, c.race_probs, c.gender_probs, c.age_probs FROM classifier_labels c
                    JOIN faces fa ON fa.sha256 = c.sha256 AND fa.params_fingerprint = c.face_fingerprint AND fa.face_index = c.face_index AND fa.selected
                    JOIN files f ON f.sha256 = c.sha256 JOIN identities i ON i.id = f.identity_id
                    WHERE c.face_fingerprint = ? AND c.model_fingerprint = ?
                    """, arguments: [fp, cfp]) {
                    let name: String = row["name"]
                    func probs(_ key: String) -> [Double] { (try? JSONDecoder().decode([Double].self, from: Data((row[key] as String).utf8))) ?? [] }
                    for o in FairFace.observations(race: probs("race_probs"), gender: probs("gender_probs"), age: probs("age_probs"), mapping: mapping) {
                        obs[name, default: []].append(o)
                        if o.attribute == .age, imageAge[name]?[row["path"]] == nil { imageAge[name, default: [:]][row["path"]] = o.value }
                    }
                }
            }
            // Manual corrections.
            for row in try Row.fetchAll(db, sql: "SELECT identity, path, attribute, value FROM manual_labels") {
                let name: String = row["identity"], path: String = row["path"]
                guard let attr = LabelAttribute(rawValue: row["attribute"]) else { continue }
                let value = mapping.normalise(attr, row["value"]) ?? "unknown"
                if path.isEmpty {
                    obs[name, default: []].append(LabelObservation(attribute: attr, value: value, provenance: .manual, confidence: 1))
                } else if attr == .age {
                    imageAge[name, default: [:]][path] = value
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

    /// Selected faces with a 256 crop that have no classifier result under `modelFingerprint`.
    package func pendingClassifierFaces(modelFingerprint: String) throws -> [(sha256: String, faceIndex: Int, crop256: String)] {
        guard let fp = try currentIngestFingerprint() else { return [] }
        return try pool.read { db in
            try Row.fetchAll(db, sql: """
                SELECT sha256, face_index, crop256 FROM faces fa WHERE params_fingerprint = ? AND selected AND crop256 IS NOT NULL
                  AND NOT EXISTS (SELECT 1 FROM classifier_labels c WHERE c.sha256 = fa.sha256 AND c.face_fingerprint = fa.params_fingerprint
                                  AND c.face_index = fa.face_index AND c.model_fingerprint = ?)
                ORDER BY sha256
                """, arguments: [fp, modelFingerprint]).map { ($0["sha256"], $0["face_index"], $0["crop256"]) }
        }
    }

    package func storeClassifierResults(_ results: [(sha256: String, faceIndex: Int, race: [Double], gender: [Double], age: [Double])],
                                modelFingerprint: String) throws {
        guard let fp = try currentIngestFingerprint() else { return }
        try pool.write { db in
            let run = try RunRecorder.recordCompleted(db, command: "labels classify", fingerprint: modelFingerprint,
                                                           parameters: "{}", counts: "{\"faces\":\(results.count)}")
            func json(_ v: [Double]) -> String { "[" + v.map { String(format: "%.6f", $0) }.joined(separator: ",") + "]" }
            for r in results {
                try db.execute(sql: """
                    INSERT OR REPLACE INTO classifier_labels (sha256, face_fingerprint, face_index, model_fingerprint, race_probs, gender_probs, age_probs, run_id)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                    """, arguments: [r.sha256, fp, r.faceIndex, modelFingerprint, json(r.race), json(r.gender), json(r.age), run])
            }
        }
    }

    /// Model fingerprint of the latest classifier run, if any.
    public func currentClassifierFingerprint() throws -> String? {
        try pool.read { try String.fetchOne($0, sql: "SELECT params_fingerprint FROM runs WHERE command = 'labels classify' ORDER BY id DESC LIMIT 1") }
    }
}

import Foundation
import PIDiffModel
import GRDB

/// Everything the exporter writes for one selected photo.
public struct ExportSample: Sendable {
    public var identity: String
    public var role: String
    public var path: String
    public var sha256: String
    public var caption: String?
    public var crop512: String?
    public var mask512: String?
    public var e4eInput: String?
    public var landmarks68: [[Double]]
    public var quad: [[Double]]
    public var quality: [String: Double]
    public var faceFingerprint: String
    public var maskFingerprint: String?
    package init(identity: String, role: String, path: String, sha256: String, caption: String? = nil, crop512: String? = nil, mask512: String? = nil, e4eInput: String? = nil, landmarks68: [[Double]], quad: [[Double]], quality: [String: Double], faceFingerprint: String, maskFingerprint: String? = nil) {
        self.identity = identity
        self.role = role
        self.path = path
        self.sha256 = sha256
        self.caption = caption
        self.crop512 = crop512
        self.mask512 = mask512
        self.e4eInput = e4eInput
        self.landmarks68 = landmarks68
        self.quad = quad
        self.quality = quality
        self.faceFingerprint = faceFingerprint
        self.maskFingerprint = maskFingerprint
    }
}

extension Catalog {
    /// The split's photos with their artefacts under the current ingest and mask fingerprints,
    /// in a stable order (identity, role, path). Faces and masks are those of the content the split
    /// recorded (`split_items.sha256`), not of whatever the file holds now: a photo overwritten
    /// after the split was drawn does not change, or break, the split's export.
    public func exportSamples(split: String) throws -> [ExportSample] {
        let items = try splitItems(split)
        guard let fp = try currentIngestFingerprint() else { return [] }
        let mfp = try currentMaskFingerprint()
        return try pool.read { db in
            try items.map { item in
                let face = try Row.fetchOne(db, sql: """
                    SELECT fa.*, (SELECT caption FROM files WHERE id = ?) AS caption FROM faces fa
                    WHERE fa.sha256 = ? AND fa.params_fingerprint = ? AND fa.selected
                    """, arguments: [item.fileID, item.sha256, fp])
                let mask = try Row.fetchOne(db, sql: """
                    SELECT mask512, e4e_input FROM masks WHERE sha256 = ? AND face_fingerprint = ? AND face_index = ? AND mask_fingerprint = ? AND ok
                    """, arguments: [item.sha256, fp, face?["face_index"] as Int? ?? -1, mfp])
                func decode(_ s: String?) -> [[Double]] { s.flatMap { try? JSONDecoder().decode([[Double]].self, from: Data($0.utf8)) } ?? [] }
                var quality: [String: Double] = [:]
                for key in ["face_size", "sharpness", "roll_degrees", "yaw", "outside_fraction"] {
                    if let v = face?[key] as Double? { quality[key] = v }
                }
                return ExportSample(identity: item.identity, role: item.role, path: item.path, sha256: item.sha256,
                                    caption: face?["caption"], crop512: face?["crop512"], mask512: mask?["mask512"],
                                    e4eInput: mask?["e4e_input"], landmarks68: decode(face?["landmarks68"]), quad: decode(face?["quad"]),
                                    quality: quality, faceFingerprint: fp, maskFingerprint: mfp)
            }
        }
    }

    /// Records which encodings exist, keyed on (source content, preprocessing, models); a row whose
    /// encoding now sits in another file or under another key (a re-export with other shard sizes
    /// or grouping) is updated to where it is. Returns how many rows were added or moved.
    public func recordEncodings(_ rows: [(sha256: String, preprocessing: String, model: String, file: String, key: String)]) throws -> Int {
        // One row per encoding: a split holding one content twice (two keys) keeps the first key,
        // rather than the two swapping places on every run.
        var seen = Set<String>()
        let rows = rows.sorted { ($0.file, $0.key) < ($1.file, $1.key) }.filter { seen.insert("\($0.sha256) \($0.preprocessing) \($0.model)").inserted }
        return try pool.write { db in
            var inserted = 0
            for r in rows {
                try db.execute(sql: """
                    INSERT INTO encodings (sha256, preprocessing_fingerprint, model_fingerprint, encoded_file, sample_key, recorded_at)
                    VALUES (?, ?, ?, ?, ?, ?)
                    ON CONFLICT (sha256, preprocessing_fingerprint, model_fingerprint) DO UPDATE
                    SET encoded_file = excluded.encoded_file, sample_key = excluded.sample_key, recorded_at = excluded.recorded_at
                    WHERE encoded_file != excluded.encoded_file OR sample_key != excluded.sample_key
                    """, arguments: [r.sha256, r.preprocessing, r.model, r.file, r.key, ISO8601DateFormatter().string(from: Date())])
                inserted += db.changesCount
            }
            return inserted
        }
    }

    /// How many of `keys` (sha256, preprocessing fingerprint) are encoded under `model`.
    public func encodedCount(_ keys: [(sha256: String, preprocessing: String)], model: String) throws -> Int {
        try pool.read { db in
            try keys.reduce(0) { n, k in
                n + ((try Bool.fetchOne(db, sql: "SELECT 1 FROM encodings WHERE sha256 = ? AND preprocessing_fingerprint = ? AND model_fingerprint = ?",
                                        arguments: [k.sha256, k.preprocessing, model]) ?? false) ? 1 : 0)
            }
        }
    }
}

extension Catalog {
    /// Records a finished `pidiff train` run and the weight files it left in `outDirectory`.
    public func recordTrainingRun(split: String, outDirectory: String, started: Date, arguments: [String], processes: Int = 1) throws {
        let files = (FileManager.default.enumerator(atPath: outDirectory)?.allObjects as? [String] ?? [])
            .filter { $0.hasSuffix("pidiff.safetensors") }.sorted()
        let params = try JSONSerialization.data(withJSONObject: ["split": split, "out": outDirectory, "arguments": arguments,
                                                                 "processes": processes] as [String: Any], options: [.sortedKeys])
        let counts = try JSONSerialization.data(withJSONObject: ["weights": files.count], options: [.sortedKeys])
        try pool.write { db in
            _ = try RunRecorder.recordCompleted(db, command: "train", started: started, fingerprint: split,
                                                     parameters: String(decoding: params, as: UTF8.self), counts: String(decoding: counts, as: UTF8.self))
        }
    }
}

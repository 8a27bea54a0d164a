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
    /// Where the photo came from, as its source said (`files.origin`: a manifest's `source`, a
    /// Parquet file and row).
    public var origin: String?
    /// The URL, licence and source of a photo that `fetch` downloaded (joined by content).
    public var fetched: FetchedProvenance?
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
    package init(identity: String, role: String, path: String, sha256: String, caption: String?, origin: String?, crop512: String?, mask512: String?, e4eInput: String?, landmarks68: [[Double]], quad: [[Double]], quality: [String: Double], faceFingerprint: String, maskFingerprint: String?) {
        self.init(identity: identity, role: role, path: path, sha256: sha256, caption: caption, crop512: crop512, mask512: mask512, e4eInput: e4eInput,
                  landmarks68: landmarks68, quad: quad, quality: quality, faceFingerprint: faceFingerprint, maskFingerprint: maskFingerprint)
        self.origin = origin
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
        let fetched = try fetchedProvenance()
        return try pool.read { db in
            try items.map { item in
                let face = try FaceRecord
                    .filter(FaceRecord.Columns.sha256 == item.sha256 && FaceRecord.Columns.paramsFingerprint == fp && FaceRecord.Columns.selected)
                    .fetchOne(db)
                // A mask counts only when it passed; there is none to look for without a face or a masks run.
                let mask = try face.flatMap { face in
                    try mfp.flatMap { mfp in
                        try MaskRecord.fetchOne(db, key: MaskRecord.key(sha256: item.sha256, faceFingerprint: fp, faceIndex: face.faceIndex,
                                                                        maskFingerprint: mfp))
                    }
                }.flatMap { $0.ok ? $0 : nil }
                let file = try face == nil ? nil : FileRecord.fetchOne(db, key: item.fileID)
                var sample = ExportSample(identity: item.identity, role: item.role, path: item.path, sha256: item.sha256,
                                          caption: file?.caption, origin: file?.origin, crop512: face?.crop512, mask512: mask?.mask512,
                                          e4eInput: mask?.e4eInput, landmarks68: face?.landmarks68.pairs ?? [], quad: face?.quad.pairs ?? [],
                                          quality: face?.qualityMeasures ?? [:], faceFingerprint: fp, maskFingerprint: mfp)
                sample.fetched = fetched[item.sha256]
                return sample
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
                // An encoding already recorded where it is stays as it is (its recorded_at too).
                if let existing = try EncodingRecord.fetchOne(db, key: EncodingRecord.key(sha256: r.sha256, preprocessing: r.preprocessing, model: r.model)),
                   existing.encodedFile == r.file, existing.sampleKey == r.key { continue }
                try EncodingRecord(sha256: r.sha256, preprocessingFingerprint: r.preprocessing, modelFingerprint: r.model, encodedFile: r.file,
                                   sampleKey: r.key, recordedAt: ISO8601DateFormatter().string(from: Date()))
                    .upsert(db)
                inserted += 1
            }
            return inserted
        }
    }

    /// How many of `keys` (sha256, preprocessing fingerprint) are encoded under `model`.
    public func encodedCount(_ keys: [(sha256: String, preprocessing: String)], model: String) throws -> Int {
        try pool.read { db in
            try keys.reduce(0) { n, k in
                n + (try EncodingRecord.exists(db, key: EncodingRecord.key(sha256: k.sha256, preprocessing: k.preprocessing, model: model)) ? 1 : 0)
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

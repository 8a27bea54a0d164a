import Foundation
import GRDB
import PIDiffModel

public enum StyleError: Error, CustomStringConvertible {
    case noSuchPhoto(String)
    case notUsable(String, String)
    case notInSplit(String, String)
    case alreadyInSplit(String, String, String)
    public var description: String {
        switch self {
        case .noSuchPhoto(let p): return "\(p): no catalogued photo with this path or SHA-256 (ingest it first)"
        case .notUsable(let p, let why): return "\(p): cannot be a style photo: \(why)"
        case .notInSplit(let identity, let split): return "identity \(identity) is not in split \(split)"
        case .alreadyInSplit(let p, let split, let role): return "\(p) is already in split \(split) as a \(role) photo"
        }
    }
}

extension Catalog {
    /// Adds a style photo (any person's) to `identity`'s training set in `split`, with the role
    /// `style`: it needs an aligned crop and a passing mask under the current parameters, and is
    /// exempt from the identity-purity and cross-identity duplicate exclusions (that is its point).
    /// Recorded as a `splits add-style` run. Returns the photo's path.
    public func addStylePhoto(split: String, identity: String, path: String?, sha256: String?) throws -> SplitSelection.Item {
        guard let faceFP = try currentIngestFingerprint() else { throw StyleError.notUsable(path ?? sha256 ?? "", "no ingest run yet") }
        let maskFP = try currentMaskFingerprint()
        return try pool.write { db in
            guard try SplitRecord.exists(db, key: split) else { throw SplitError.missing(split) }
            let members = try SplitItemRecord.filter(SplitItemRecord.Columns.splitName == split).fetchAll(db)
            guard members.contains(where: { $0.identity == identity }) else { throw StyleError.notInSplit(identity, split) }
            struct Candidate: Decodable, FetchableRecord { var id: Int64; var path: String; var sha256: String }
            let named = path ?? sha256 ?? ""
            let file = try Candidate.fetchOne(db, sql: """
                SELECT id, path, sha256 FROM files WHERE read_error IS NULL AND sha256 IS NOT NULL AND (path = :path OR sha256 = :sha)
                ORDER BY (path = :path) DESC, path LIMIT 1
                """, arguments: ["path": path, "sha": sha256])
            guard let file else { throw StyleError.noSuchPhoto(named) }
            // By content: a copy of a split photo catalogued under another path is that photo.
            if let member = members.first(where: { $0.fileID == file.id || $0.sha256 == file.sha256 }) {
                throw StyleError.alreadyInSplit(member.path, split, member.role)
            }
            let usable = try Bool.fetchOne(db, sql: """
                SELECT 1 FROM faces fa WHERE fa.sha256 = :sha AND fa.params_fingerprint = :fp AND fa.selected AND fa.crop512 IS NOT NULL
                  AND EXISTS (SELECT 1 FROM masks m WHERE m.sha256 = fa.sha256 AND m.face_fingerprint = fa.params_fingerprint
                              AND m.face_index = fa.face_index AND m.mask_fingerprint = :mfp AND m.ok)
                """, arguments: ["sha": file.sha256, "fp": faceFP, "mfp": maskFP]) ?? false
            guard usable else { throw StyleError.notUsable(file.path, "no aligned face with a passing mask under the current parameters (run pidiff-data masks)") }
            let item = SplitSelection.Item(identity: identity, role: "style", path: file.path, sha256: file.sha256, fileID: file.id)
            try SplitItemRecord(item, split: split).insert(db)
            let parameters = String(decoding: try JSONEncoder.sorted.encode(["split": split, "identity": identity, "path": file.path]), as: UTF8.self)
            _ = try RunRecorder.recordCompleted(db, command: "splits add-style", fingerprint: "", parameters: parameters, counts: "{\"items\":1}")
            return item
        }
    }
}

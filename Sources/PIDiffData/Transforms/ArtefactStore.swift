import Foundation
import PIDiffModel
import PIDiffNative
import PIDiffCatalog

/// Content-addressed artefact store under the data root: `<kind>/<aa>/<sha256>.<ext>`.
/// Writes go to a temporary name and are renamed into place, so a killed run leaves either the
/// whole file or none; identical content is stored once.
public struct ArtefactStore: Sendable {
    public let root: URL

    public init(root: URL) { self.root = root }

    /// Stores `data`, returning its path relative to the root.
    @discardableResult
    public func put(_ data: Data, kind: String, ext: String) throws -> String {
        let sha = Hashing.sha256Hex(data)
        let relative = "\(kind)/\(sha.prefix(2))/\(sha).\(ext)"
        try write(relative, data: data, sha: sha)
        return relative
    }

    /// Stores `data` at `relative`, a name derived from what the data was made from (the
    /// export's context crops): made once, found by later runs without recomputing it.
    public func put(named relative: String, data: Data) throws {
        try write(relative, data: data, sha: Hashing.sha256Hex(data))
    }

    private func write(_ relative: String, data: Data, sha: String) throws {
        let url = root.appendingPathComponent(relative)
        if FileManager.default.fileExists(atPath: url.path) { return }
        let dir = url.deletingLastPathComponent()
        do {
            try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
            // Unique per call: two workers storing identical content at once must not share a
            // temporary file (the second rename would find it gone).
            let tmp = dir.appendingPathComponent(".\(sha).\(ProcessInfo.processInfo.processIdentifier).\(UUID().uuidString).tmp")
            do {
                try data.write(to: tmp)
            } catch {
                // A full disk leaves a partial temporary file behind: remove it so a failed run
                // does not fill the data root with debris.
                try? FileManager.default.removeItem(at: tmp)
                throw error
            }
            if rename(tmp.path, url.path) != 0 {
                let reason = String(cString: strerror(errno))
                try? FileManager.default.removeItem(at: tmp)
                throw StoreError.write(url.path, reason)
            }
        } catch let e as StoreError { throw e } catch {
            throw StoreError.write(url.path, error.localizedDescription)
        }
    }

    public func url(_ relative: String) -> URL { root.appendingPathComponent(relative) }
}

public enum StoreError: Error, CustomStringConvertible {
    case write(String, String)
    public var description: String {
        switch self { case .write(let p, let r): return "cannot write artefact \(p): \(r)" }
    }
}

import Foundation
import PIDiffModel
#if canImport(Glibc)
import Glibc
#endif

/// An exclusive advisory lock (flock) on `<catalog>.lock`, held for a whole run so two ingests
/// never interleave on one catalog. The kernel releases it when the process dies, SIGKILL included.
public final class CatalogLock {
    private let fd: Int32

    /// `scope` names a second lock beside the catalog's (`run` → `<catalog>.run.lock`). The lock
    /// belongs to the file the path resolves to: a symlink to a catalog takes the catalog's lock.
    public convenience init(catalogPath: String, scope: String = "") throws {
        let lockPath = Self.resolved(catalogPath) + (scope.isEmpty ? "" : ".\(scope)") + ".lock"
        try self.init(lockPath: lockPath) { CatalogError.locked(catalogPath, lockPath) }
    }

    /// Exclusive use of an output folder (export, encode, train, sample into `--out`): two runs
    /// writing one folder would interleave shards, encodings or weights.
    public convenience init(outputFolder: URL) throws {
        try FileManager.default.createDirectory(at: outputFolder, withIntermediateDirectories: true)
        let lockPath = Self.resolved(outputFolder.path) + "/.pidiff-output.lock"
        try self.init(lockPath: lockPath) { CatalogError.outputLocked(outputFolder.path, lockPath) }
    }

    /// `path` with symlinks resolved (for a file that does not exist yet: its folder's).
    public static func resolved(_ path: String) -> String {
        let url = URL(fileURLWithPath: path).standardizedFileURL
        if FileManager.default.fileExists(atPath: url.path) { return url.resolvingSymlinksInPath().path }
        return url.deletingLastPathComponent().resolvingSymlinksInPath().appendingPathComponent(url.lastPathComponent).path
    }

    private init(lockPath: String, busy: () -> CatalogError) throws {
        let dir = URL(fileURLWithPath: lockPath).deletingLastPathComponent().path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        fd = open(lockPath, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw CatalogError.open(lockPath, String(cString: strerror(errno))) }
        if flock(fd, LOCK_EX | LOCK_NB) != 0 {
            close(fd)
            throw busy()
        }
    }

    deinit {
        flock(fd, LOCK_UN)
        close(fd)
    }
}

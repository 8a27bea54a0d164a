import Foundation
import PIDiffModel
#if canImport(Glibc)
import Glibc
#endif

/// An exclusive advisory lock (flock) on `<catalog>.lock`, held for a whole run so two ingests
/// never interleave on one catalog. The kernel releases it when the process dies, SIGKILL included.
public final class CatalogLock {
    private let fd: Int32

    /// `scope` names a second lock beside the catalog's (`run` → `<catalog>.run.lock`).
    public init(catalogPath: String, scope: String = "") throws {
        let lockPath = catalogPath + (scope.isEmpty ? "" : ".\(scope)") + ".lock"
        let dir = URL(fileURLWithPath: lockPath).deletingLastPathComponent().path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        fd = open(lockPath, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw CatalogError.open(lockPath, String(cString: strerror(errno))) }
        if flock(fd, LOCK_EX | LOCK_NB) != 0 {
            close(fd)
            throw CatalogError.locked(catalogPath, lockPath)
        }
    }

    deinit {
        flock(fd, LOCK_UN)
        close(fd)
    }
}

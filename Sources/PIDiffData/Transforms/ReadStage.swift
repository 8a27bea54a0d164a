import Foundation
import PIDiffModel

#if canImport(Glibc)
import Glibc
#endif

/// A file's bytes and what the read stage learnt about them.
struct FileBytes {
    var data: Data
    var sha256: String
    var byteSize: Int
    var mtimeNs: Int64
}

/// Read stage: stat + read + SHA-256. Errors name the reason (missing, loop, permission, empty).
typealias stat_t = Glibc.stat
private func posixStat(_ path: String, _ st: inout stat_t) -> Int32 { stat(path, &st) }

enum ReadStage {
    static func stat(_ path: String) -> Result<FileStat, ScanProblem> {
        var st = stat_t()
        guard posixStat(path, &st) == 0 else {
            return .failure(ScanProblem(location: path, reason: readReason(errno)))
        }
        guard (st.st_mode & S_IFMT) == S_IFREG else {
            return .failure(ScanProblem(location: path, reason: "not a regular file"))
        }
        let ns = Int64(st.st_mtim.tv_sec) * 1_000_000_000 + Int64(st.st_mtim.tv_nsec)
        return .success(FileStat(byteSize: Int(st.st_size), mtimeNs: ns))
    }

    static func read(_ path: String) throws -> FileBytes {
        let st: FileStat
        switch stat(path) {
        case .success(let s): st = s
        case .failure(let p): throw p
        }
        guard st.byteSize > 0 else { throw ScanProblem(location: path, reason: "zero-byte file") }
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path), options: .mappedIfSafe) } catch {
            throw ScanProblem(location: path, reason: "cannot read: \(error.localizedDescription)")
        }
        guard !data.isEmpty else { throw ScanProblem(location: path, reason: "zero-byte file") }
        return FileBytes(data: data, sha256: Hashing.sha256Hex(data), byteSize: data.count, mtimeNs: st.mtimeNs)
    }

    private static func readReason(_ code: Int32) -> String {
        switch code {
        case ELOOP: return "symlink loop"
        case ENOENT: return "file not found (or dangling symlink)"
        case EACCES: return "permission denied"
        default: return String(cString: strerror(code))
        }
    }
}

import Foundation

/// What ingest made of one image content.
public enum ImageOutcome: String, Codable, Sendable, CaseIterable {
    case ok, noFace = "no_face", decodeError = "decode_error", notImage = "not_image"
    case tooSmall = "too_small", tooLarge = "too_large"
}

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
    struct Stat: Sendable, Equatable { var byteSize: Int; var mtimeNs: Int64 }

    static func stat(_ path: String) -> Result<Stat, ScanProblem> {
        var st = stat_t()
        guard posixStat(path, &st) == 0 else {
            return .failure(ScanProblem(location: path, reason: readReason(errno)))
        }
        guard (st.st_mode & S_IFMT) == S_IFREG else {
            return .failure(ScanProblem(location: path, reason: "not a regular file"))
        }
        let ns = Int64(st.st_mtim.tv_sec) * 1_000_000_000 + Int64(st.st_mtim.tv_nsec)
        return .success(Stat(byteSize: Int(st.st_size), mtimeNs: ns))
    }

    static func read(_ path: String) throws -> FileBytes {
        let st: Stat
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

/// Decode stage: header check (format, dimensions, pixel budget) before any pixel is decoded,
/// then decode with EXIF orientation applied.
enum DecodeStage {
    struct Refusal: Error {
        var outcome: ImageOutcome
        var reason: String
        var header: ImageHeader?
    }

    static func decode(_ bytes: Data, parameters p: IngestParameters) throws -> (NativeImage, ImageHeader) {
        let header: ImageHeader
        do { header = try ImageHeader.parse(bytes) } catch let problem as ImageHeader.Problem {
            throw Refusal(outcome: problem == .unrecognised ? .notImage : .decodeError, reason: problem.description)
        } catch { throw Refusal(outcome: .decodeError, reason: "\(error)") }
        let pixels = header.width * header.height
        guard pixels <= p.maxPixels else {
            throw Refusal(outcome: .tooLarge,
                          reason: "\(header.width)×\(header.height) exceeds max_pixels \(p.maxPixels) (possible decompression bomb)",
                          header: header)
        }
        guard header.width > 0, header.height > 0 else {
            throw Refusal(outcome: .decodeError, reason: "header declares an empty image", header: header)
        }
        if let truncated = ImageHeader.truncation(of: bytes, format: header.format) {
            throw Refusal(outcome: .decodeError, reason: truncated, header: header)
        }
        let image: NativeImage
        do { image = try NativeImage.decode(bytes, maxPixels: p.maxPixels) } catch {
            throw Refusal(outcome: .decodeError, reason: "\(error)", header: header)
        }
        guard min(image.width, image.height) >= p.minSide else {
            throw Refusal(outcome: .tooSmall,
                          reason: "\(image.width)×\(image.height) is below min_side \(p.minSide)", header: header)
        }
        return (image, header)
    }
}

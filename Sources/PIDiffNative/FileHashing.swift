import Foundation
import PIDiffModel

extension Hashing {
    /// SHA-256 of a file, streamed in 4 MiB chunks (model files, stored images, weights).
    public static func sha256Hex(fileAt url: URL) throws -> String {
        let handle = try FileHandle(forReadingFrom: url)
        defer { try? handle.close() }
        var stream = SHA256Stream()
        while let chunk = try handle.read(upToCount: 4 << 20), !chunk.isEmpty { stream.update(chunk) }
        return stream.finish().sha256
    }
}

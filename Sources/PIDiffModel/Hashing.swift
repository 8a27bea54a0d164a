import Crypto
import Foundation

public enum Hashing {
    public static func sha256Hex(_ data: Data) -> String {
        SHA256.hash(data: data).map { String(format: "%02x", $0) }.joined()
    }

    /// SHA-256 of a file, streamed in 4 MiB chunks.
    public static func sha256Hex(fileAt url: URL) throws -> String {
        let handle = try FileHandle(forReadingFrom: url)
        defer { try? handle.close() }
        var hasher = SHA256()
        while let chunk = try handle.read(upToCount: 4 << 20), !chunk.isEmpty { hasher.update(data: chunk) }
        return hasher.finalize().map { String(format: "%02x", $0) }.joined()
    }

    /// SHA-256 of a string dictionary in canonical form (sorted keys, JSON).
    public static func fingerprint(_ payload: [String: String]) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let data = (try? encoder.encode(payload)) ?? Data()
        return sha256Hex(data)
    }
}

/// SHA-256 and length of bytes handed over piece by piece (a tar as it is written).
public struct SHA256Stream {
    private var hasher = SHA256()
    private var count = 0
    public init() {}
    public mutating func update(_ data: Data) {
        hasher.update(data: data)
        count += data.count
    }
    /// Bytes in place (a network buffer), without copying them into a `Data`.
    public mutating func update(_ bytes: UnsafeRawBufferPointer) {
        hasher.update(bufferPointer: bytes)
        count += bytes.count
    }
    /// The hex digest and the number of bytes.
    public func finish() -> (sha256: String, bytes: Int) {
        (hasher.finalize().map { String(format: "%02x", $0) }.joined(), count)
    }
}

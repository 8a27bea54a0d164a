import Crypto
import Foundation

public enum Hashing {
    public static func sha256Hex(_ data: Data) -> String { hex(SHA256.hash(data: data)) }

    /// Lower-case hex of bytes (a digest), through a table: `String(format:)` per byte cost a
    /// quarter of fetch's CPU time per URL.
    public static func hex<Bytes: Sequence<UInt8>>(_ bytes: Bytes) -> String {
        let digits = Array(bytes)
        return String(unsafeUninitializedCapacity: digits.count * 2) { out in
            for (i, byte) in digits.enumerated() {
                out[2 * i] = hexDigits[Int(byte >> 4)]
                out[2 * i + 1] = hexDigits[Int(byte & 0x0F)]
            }
            return digits.count * 2
        }
    }
    private static let hexDigits: [UInt8] = Array("0123456789abcdef".utf8)

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
    public func finish() -> (sha256: String, bytes: Int) { (Hashing.hex(hasher.finalize()), count) }
}

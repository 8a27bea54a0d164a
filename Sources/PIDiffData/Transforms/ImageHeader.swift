import Foundation
import PIDiffModel
import PIDiffNative
import PIDiffCatalog

/// Format and dimensions read from an image file's header, before any decoding. Decompression
/// bombs are refused on these numbers, so a 100 000² PNG never reaches the decoder.
public struct ImageHeader: Equatable, Sendable {
    public enum Format: String, Sendable { case jpeg, png, webp, bmp }
    public var format: Format
    public var width: Int
    public var height: Int

    public enum Problem: Error, Equatable, CustomStringConvertible {
        case unrecognised
        case truncatedHeader(Format)
        public var description: String {
            switch self {
            case .unrecognised: return "not an image (unrecognised header)"
            case .truncatedHeader(let f): return "truncated \(f.rawValue) header"
            }
        }
    }

    /// Detects files cut short: decoders happily return a partly grey image for a truncated JPEG,
    /// which would then enter the dataset. JPEG must end with an EOI marker (trailing junk after
    /// it is tolerated), PNG with an IEND chunk.
    public static func truncation(of data: Data, format: Format) -> String? {
        let tail = [UInt8](data.suffix(64 * 1024))
        switch format {
        case .jpeg:
            // Follow the segments: an EXIF thumbnail's own end marker (inside APP1) must not count.
            if let whole = jpegReachesEndOfImage(data) { return whole ? nil : "truncated JPEG: no end-of-image marker" }
            for i in stride(from: tail.count - 2, through: 0, by: -1) where tail[i] == 0xFF && tail[i + 1] == 0xD9 { return nil }
            return "truncated JPEG: no end-of-image marker"
        case .png:
            let iend = Array("IEND".utf8)
            if tail.count >= 8, (0...(tail.count - 4)).reversed().contains(where: { tail[$0..<$0 + 4].elementsEqual(iend) }) { return nil }
            return "truncated PNG: no IEND chunk"
        case .webp, .bmp:
            return nil
        }
    }

    /// Walks a JPEG's marker segments (skipping each by its length, so APPn payloads such as an
    /// EXIF thumbnail are never scanned) and its entropy-coded scans (where 0xFF is stuffed as
    /// FF 00 and restart markers FF D0–D7 stay inside the scan) to the end-of-image marker.
    /// true: EOI reached; false: the data ends first; nil: the structure cannot be followed
    /// (then the caller falls back to looking for any EOI near the end).
    static func jpegReachesEndOfImage(_ data: Data) -> Bool? {
        data.withUnsafeBytes { (raw: UnsafeRawBufferPointer) -> Bool? in
            let b = raw.bindMemory(to: UInt8.self), n = b.count
            guard n >= 4, b[0] == 0xFF, b[1] == 0xD8 else { return nil }
            var i = 2, inScan = false
            while i + 1 < n {
                if inScan {
                    guard b[i] == 0xFF else { i += 1; continue }
                    let m = b[i + 1]
                    if m == 0x00 || (0xD0...0xD7).contains(m) { i += 2; continue }
                    if m == 0xFF { i += 1; continue }
                    inScan = false // a marker: EOI, or a table/scan header of a progressive image
                    continue
                }
                guard b[i] == 0xFF else { return nil }
                let m = b[i + 1]
                if m == 0xFF { i += 1; continue } // fill byte
                if m == 0xD9 { return true }
                if m == 0x01 || m == 0xD8 || (0xD0...0xD7).contains(m) { i += 2; continue }
                guard i + 3 < n else { return false }
                let length = Int(b[i + 2]) << 8 | Int(b[i + 3])
                guard length >= 2 else { return nil }
                if m == 0xDA { inScan = true }
                i += 2 + length
            }
            return false
        }
    }

    /// The format the first bytes announce (their signature), or nil: enough to tell an image
    /// from an HTML page after 12 bytes, before its header can be parsed.
    static func format(of b: [UInt8]) -> Format? {
        if b.starts(with: [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]) { return .png }
        if b.starts(with: [0xFF, 0xD8]) { return .jpeg }
        if b.count >= 12, b[0...3].elementsEqual("RIFF".utf8), b[8...11].elementsEqual("WEBP".utf8) { return .webp }
        if b.starts(with: [0x42, 0x4D]) { return .bmp }
        return nil
    }

    /// Parses the header of `data`. Throws `Problem` when the bytes are not a supported image.
    public static func parse(_ data: Data) throws -> ImageHeader {
        let b = [UInt8](data.prefix(64 * 1024))
        func be16(_ i: Int) -> Int { Int(b[i]) << 8 | Int(b[i + 1]) }
        func be32(_ i: Int) -> Int { be16(i) << 16 | be16(i + 2) }
        func le16(_ i: Int) -> Int { Int(b[i]) | Int(b[i + 1]) << 8 }
        func le32(_ i: Int) -> Int32 { Int32(bitPattern: UInt32(le16(i)) | UInt32(le16(i + 2)) << 16) }

        switch format(of: b) {
        case .png?:
            guard b.count >= 24, b[12...15].elementsEqual("IHDR".utf8) else { throw Problem.truncatedHeader(.png) }
            return ImageHeader(format: .png, width: be32(16), height: be32(20))
        case .jpeg?:
            // Walk the marker segments to the first start-of-frame.
            var i = 2
            while i + 4 <= b.count {
                guard b[i] == 0xFF else { i += 1; continue }
                let marker = b[i + 1]
                if marker == 0xFF { i += 1; continue }
                if marker == 0xD8 || marker == 0x01 || (0xD0...0xD7).contains(marker) { i += 2; continue }
                let length = be16(i + 2)
                let isSOF = (0xC0...0xCF).contains(marker) && ![0xC4, 0xC8, 0xCC].contains(marker)
                if isSOF {
                    guard i + 9 <= b.count else { break }
                    return ImageHeader(format: .jpeg, width: be16(i + 7), height: be16(i + 5))
                }
                if marker == 0xDA || marker == 0xD9 { break }
                i += 2 + length
            }
            throw Problem.truncatedHeader(.jpeg)
        case .webp?:
            guard b.count >= 30 else { throw Problem.truncatedHeader(.webp) }
            let chunk = String(decoding: b[12...15], as: UTF8.self)
            switch chunk {
            case "VP8 ":
                return ImageHeader(format: .webp, width: le16(26) & 0x3FFF, height: le16(28) & 0x3FFF)
            case "VP8L":
                let bits = UInt32(le16(21)) | UInt32(le16(23)) << 16
                return ImageHeader(format: .webp, width: Int(bits & 0x3FFF) + 1, height: Int((bits >> 14) & 0x3FFF) + 1)
            case "VP8X":
                let w = Int(b[24]) | Int(b[25]) << 8 | Int(b[26]) << 16
                let h = Int(b[27]) | Int(b[28]) << 8 | Int(b[29]) << 16
                return ImageHeader(format: .webp, width: w + 1, height: h + 1)
            default:
                throw Problem.truncatedHeader(.webp)
            }
        case .bmp?:
            guard b.count >= 26 else { throw Problem.truncatedHeader(.bmp) }
            return ImageHeader(format: .bmp, width: Int(abs(le32(18))), height: Int(abs(le32(22))))
        case nil:
            throw Problem.unrecognised
        }
    }
}

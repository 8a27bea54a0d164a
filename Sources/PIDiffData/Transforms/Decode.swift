import Foundation
import PIDiffModel
import PIDiffNative
import PIDiffCatalog

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

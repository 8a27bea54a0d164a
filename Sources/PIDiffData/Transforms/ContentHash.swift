import Foundation
import PIDiffModel
import PIDiffNative
import PIDiffCatalog

/// Content hashes for duplicate search: SHA-256 of the decoded pixels (exact duplicates with
/// different bytes) and 64-bit pHashes of the whole image and of the aligned face crop (near
/// duplicates). Computed once per content and stored, keyed on that content.
enum ContentHashStage {
    /// Bump when the hash definitions change; stored rows of another version are recomputed.
    static let algorithm = "pixels-sha256+opencv-phash-v1"

    /// Reads the source file, checks it still holds the content ingest saw, decodes and hashes.
    static func imageHashes(path: String, expectedSHA256: String) throws -> ImageHashes {
        let bytes = try ReadStage.read(path)
        guard bytes.sha256 == expectedSHA256 else {
            throw CurationError.artefact(path, "content changed since ingest (SHA-256 \(bytes.sha256.prefix(12))…, catalog has \(expectedSHA256.prefix(12))…); re-run pidiff-data ingest")
        }
        let image: NativeImage
        do { image = try NativeImage.decode(bytes.data, maxPixels: Int.max) } catch {
            throw CurationError.artefact(path, "cannot decode: \(error)")
        }
        return ImageHashes(pixelSHA256: try image.pixelSHA256(), phash: try image.perceptualHash())
    }

    /// pHash of an aligned face crop stored under the data root.
    static func cropHash(_ relative: String, store: ArtefactStore) throws -> UInt64 {
        try loadCrop(relative, store: store).perceptualHash()
    }

    static func loadCrop(_ relative: String, store: ArtefactStore) throws -> NativeImage {
        let url = store.url(relative)
        let data: Data
        do { data = try Data(contentsOf: url) } catch {
            throw CurationError.artefact(url.path, "aligned crop missing or unreadable (\(error.localizedDescription)); re-run pidiff-data ingest")
        }
        do { return try NativeImage.decode(data, maxPixels: 100_000_000) } catch {
            throw CurationError.artefact(url.path, "aligned crop does not decode: \(error)")
        }
    }
}

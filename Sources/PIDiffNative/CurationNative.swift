import CFaceNative
import Foundation
import PIDiffModel


/// dlib's face recognition ResNet (dlib_face_recognition_resnet_model_v1.dat). A forward pass keeps
/// per-layer state: not thread-safe, one per worker.
public final class DescriptorModel {
    package let handle: OpaquePointer
    public static let dimension = Int(FN_DESCRIPTOR_DIM)

    public init(path: String) throws {
        var err = FNError()
        var out: OpaquePointer?
        try NativeError.check(fn_descriptor_create(path, &out, &err), &err, "load descriptor model \(path)")
        handle = out!
    }
    deinit { fn_descriptor_free(handle) }

    /// The descriptor of the face whose 68 landmarks (in `image` pixels) are given.
    public func describe(_ image: NativeImage, landmarks: Landmarks68) throws -> FaceDescriptor {
        var err = FNError()
        let xy = landmarks.points.flatMap { [$0.x, $0.y] }
        var out = FaceDescriptor(repeating: 0, count: Self.dimension)
        let code = xy.withUnsafeBufferPointer { xyp in
            out.withUnsafeMutableBufferPointer { fn_describe(handle, image.handle, xyp.baseAddress, $0.baseAddress, &err) }
        }
        try NativeError.check(code, &err, "describe face")
        return out
    }
}

extension NativeImage {
    /// OpenCV img_hash pHash as 64 bits; Hamming distance is `(a ^ b).nonzeroBitCount`.
    public func perceptualHash() throws -> UInt64 {
        var err = FNError()
        var h: UInt64 = 0
        try NativeError.check(fn_phash(handle, &h, &err), &err, "pHash")
        return h
    }

    /// SHA-256 of the decoded pixels (with the dimensions): equal for re-encoded copies that
    /// decode to identical pixels (e.g. a JPEG and a PNG made from its decoded pixels).
    public func pixelSHA256() throws -> String {
        var header = Data("bgr8:\(width)x\(height):".utf8)
        header.append(contentsOf: try bgrPixels())
        return Hashing.sha256Hex(header)
    }

    /// Lays tiles out on a grid (see `fn_contact_sheet`).
    public static func contactSheet(_ tiles: [ContactSheetTile], rows: Int, columns: Int, tileSize: Int) throws -> NativeImage {
        var err = FNError()
        var out: OpaquePointer?
        let handles: [OpaquePointer?] = tiles.map { $0.image.handle }
        let rowIdx = tiles.map { Int32($0.row) }, colIdx = tiles.map { Int32($0.column) }
        let colours = tiles.flatMap { [$0.frameBGR.0, $0.frameBGR.1, $0.frameBGR.2] }
        let labels = tiles.map { strdup($0.caption) }
        defer { labels.forEach { free($0) } }
        let constLabels = labels.map { UnsafePointer<CChar>($0) }
        let code = handles.withUnsafeBufferPointer { h in
            constLabels.withUnsafeBufferPointer { l in
                fn_contact_sheet(h.baseAddress, rowIdx, colIdx, colours, l.baseAddress, Int32(tiles.count), Int32(rows),
                                 Int32(columns), Int32(tileSize), &out, &err)
            }
        }
        try NativeError.check(code, &err, "contact sheet")
        return withExtendedLifetime(tiles) { NativeImage(handle: out!) }
    }
}

/// One thumbnail of a contact sheet.
public struct ContactSheetTile {
    public var image: NativeImage
    public var row: Int
    public var column: Int
    public var frameBGR: (UInt8, UInt8, UInt8)
    public var caption: String

    public init(image: NativeImage, row: Int, column: Int, frameBGR: (UInt8, UInt8, UInt8), caption: String) {
        self.image = image
        self.row = row
        self.column = column
        self.frameBGR = frameBGR
        self.caption = caption
    }
}

/// Euclidean distances between descriptor blocks with one OpenBLAS sgemm per block.
public enum DescriptorDistances {
    /// `a` holds `a.count / dim` rows, `b` likewise; returns a row-major (na × nb) matrix.
    public static func block(_ a: [Float], _ b: [Float], dimension dim: Int = DescriptorModel.dimension) throws -> [Float] {
        let na = a.count / dim, nb = b.count / dim
        guard na > 0, nb > 0 else { return [] }
        var out = [Float](repeating: 0, count: na * nb)
        var err = FNError()
        let code = out.withUnsafeMutableBufferPointer { o in
            fn_euclidean_distances(a, Int32(na), b, Int32(nb), Int32(dim), o.baseAddress, &err)
        }
        try NativeError.check(code, &err, "descriptor distances")
        return out
    }

    public static func distance(_ a: FaceDescriptor, _ b: FaceDescriptor) -> Float {
        var s: Float = 0
        for i in 0..<min(a.count, b.count) { let d = a[i] - b[i]; s += d * d }
        return s.squareRoot()
    }
}

extension NativeImage {
    /// The part of the image inside the rectangle (clamped to the image).
    public func cropped(x: Int, y: Int, width: Int, height: Int) throws -> NativeImage {
        var err = FNError()
        var out: OpaquePointer?
        try NativeError.check(fn_image_crop(handle, Int32(x), Int32(y), Int32(width), Int32(height), &out, &err), &err, "crop")
        return NativeImage(handle: out!)
    }

    /// Rotated about the centre by `degrees` (counter-clockwise), same size, border replicated.
    public func rotated(degrees: Double) throws -> NativeImage {
        var err = FNError()
        var out: OpaquePointer?
        try NativeError.check(fn_image_rotate(handle, degrees, &out, &err), &err, "rotate")
        return NativeImage(handle: out!)
    }
}

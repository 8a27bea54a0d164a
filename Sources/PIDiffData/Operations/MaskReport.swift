import Foundation
import PIDiffModel
import PIDiffNative
import PIDiffCatalog

/// `masks report`: coverage statistics of every selected face's mask, flagged masks with their
/// reasons, and a contact sheet (crop | mask | e4e input per face) to look at.
public struct MaskReport: Codable, Sendable {
    /// Selected faces with a mask, one per distinct image (as `masks` and `status` count them).
    public var faces: Int
    public var ok: Int
    public var flagged: Int
    /// File paths those faces are listed under (`entries`): a photo stored under two paths is
    /// one face listed twice.
    public var files: Int
    /// min, median, mean, max of the mask's coverage of the 256 crop.
    public var coverage: [String: Double]
    public var entries: [MaskReportRow]

    public init(catalog: Catalog) throws {
        entries = try catalog.maskReport()
        // A face's crop is content-addressed: one crop per distinct image's face, however many
        // paths list it (so a copied photo does not weigh twice in the statistics either).
        var okByFace: [String: Bool] = [:], coverageByFace: [String: Double] = [:]
        for entry in entries {
            okByFace[entry.crop256] = entry.ok
            coverageByFace[entry.crop256] = entry.coverage
        }
        let cov = coverageByFace.values.sorted()
        coverage = cov.isEmpty ? [:] : ["min": cov.first!, "max": cov.last!, "mean": cov.reduce(0, +) / Double(cov.count), "median": cov[cov.count / 2]]
        faces = okByFace.count
        ok = okByFace.values.filter { $0 }.count
        flagged = faces - ok
        files = entries.count
    }

    /// A row per face (at most `limit`): crop | mask | e4e input, framed green (ok) or red (flagged).
    public func writeSheet(to file: URL, limit: Int) throws {
        var tiles: [ContactSheetTile] = []
        for (index, row) in entries.prefix(limit).enumerated() {
            let frame: (UInt8, UInt8, UInt8) = row.ok ? (60, 180, 60) : (50, 50, 220)
            let captions = [URL(fileURLWithPath: row.path).lastPathComponent,
                            row.coverage.map { String(format: "coverage %.2f", $0) } ?? (row.reason ?? "no mask"), "e4e input"]
            for (column, path) in [row.crop256, row.mask256, row.e4eInput].enumerated() {
                guard let path, let data = FileManager.default.contents(atPath: path) else { continue }
                tiles.append(ContactSheetTile(image: try NativeImage.decode(data, maxPixels: 1 << 24), row: index,
                                              column: column, frameBGR: frame, caption: captions[column]))
            }
        }
        try OutputPath.write(NativeImage.contactSheet(tiles, rows: min(entries.count, limit), columns: 3, tileSize: 192).pngData(), to: file)
    }
}

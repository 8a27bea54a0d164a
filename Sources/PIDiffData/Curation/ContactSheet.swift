import Foundation
import PIDiffModel
import PIDiffNative
import PIDiffCatalog

/// PNG contact sheets of curation findings for human review: `duplicates-NNN.png` (a row per
/// group: kept photo framed green, duplicates red), `impostors-NNN.png` (the flagged face in red,
/// then other photos of its identity in grey) and `merges-NNN.png` (photos of the two identities
/// of a same-person candidate, blue and orange). Faces show as their aligned 256 crop; photos
/// without one as the whole image.
public struct ContactSheetWriter {
    public var tileSize = 128
    public var columns = 8
    public var rowsPerSheet = 24
    /// File path → aligned crop path (see `Catalog.reviewCrops`).
    public var crops: [String: String]
    /// Identity → its photos (see `Catalog.filePaths(identities:)`).
    public var photosOf: [String: [String]]

    public init(crops: [String: String], photosOf: [String: [String]]) {
        self.crops = crops
        self.photosOf = photosOf
    }

    static let green: (UInt8, UInt8, UInt8) = (60, 180, 60), red: (UInt8, UInt8, UInt8) = (50, 50, 220)
    static let grey: (UInt8, UInt8, UInt8) = (130, 130, 130), blue: (UInt8, UInt8, UInt8) = (200, 120, 40)
    static let orange: (UInt8, UInt8, UInt8) = (40, 140, 240)

    private struct Cell { var path: String; var colour: (UInt8, UInt8, UInt8); var caption: String }

    /// Writes the sheets into `directory`; returns the files written.
    public func write(_ report: CurationReport, to directory: URL) throws -> [URL] {
        try OutputPath.prepareFolder(directory)
        var duplicateRows: [[Cell]] = [], impostorRows: [[Cell]] = [], mergeRows: [[Cell]] = []
        var groups: [Int: [CurationReportLine]] = [:]
        for l in report.lines {
            switch l.kind {
            case "exact_duplicate", "near_duplicate": groups[l.group ?? -1, default: []].append(l)
            case "impostor":
                guard let path = l.paths.first else { continue }
                let others = (photosOf[l.identities?.first ?? ""] ?? []).filter { $0 != path }.prefix(columns - 1)
                impostorRows.append([Cell(path: path, colour: Self.red, caption: String(format: "%.2f %@", l.score, name(path)))]
                    + others.map { Cell(path: $0, colour: Self.grey, caption: name($0)) })
            case "same_person":
                guard let ids = l.identities, ids.count == 2 else { continue }
                let half = columns / 2
                mergeRows.append((photosOf[ids[0]] ?? []).prefix(half).map { Cell(path: $0, colour: Self.blue, caption: ids[0]) }
                    + (photosOf[ids[1]] ?? []).prefix(half).map { Cell(path: $0, colour: Self.orange, caption: ids[1]) })
            default: continue
            }
        }
        for key in groups.keys.sorted() {
            let members = groups[key]!
            guard let kept = members.first?.kept else { continue }
            duplicateRows.append([Cell(path: kept, colour: Self.green, caption: "kept " + name(kept))]
                + members.prefix(columns - 1).map { l in
                    Cell(path: l.paths.first ?? "", colour: Self.red,
                         caption: (l.kind == "exact_duplicate" ? "exact " : "\(Int(l.score)) bits ") + name(l.paths.first ?? ""))
                })
        }
        var written: [URL] = []
        var thumbnails: [String: NativeImage] = [:]
        for (stem, rows) in [("duplicates", duplicateRows), ("impostors", impostorRows), ("merges", mergeRows)] where !rows.isEmpty {
            for (n, start) in stride(from: 0, to: rows.count, by: rowsPerSheet).enumerated() {
                let page = Array(rows[start..<min(start + rowsPerSheet, rows.count)])
                var tiles: [ContactSheetTile] = []
                for (r, row) in page.enumerated() {
                    for (c, cell) in row.prefix(columns).enumerated() {
                        let image = try thumbnails[cell.path] ?? thumbnail(cell.path)
                        thumbnails[cell.path] = image
                        tiles.append(ContactSheetTile(image: image, row: r, column: c, frameBGR: cell.colour, caption: cell.caption))
                    }
                }
                let sheet = try NativeImage.contactSheet(tiles, rows: page.count, columns: columns, tileSize: tileSize)
                let url = directory.appendingPathComponent(String(format: "%@-%03d.png", stem, n + 1))
                try sheet.pngData().write(to: url)
                written.append(url)
            }
        }
        return written
    }

    private func name(_ path: String) -> String { URL(fileURLWithPath: path).lastPathComponent }

    /// The aligned crop when there is one, else the photo shrunk to the tile size.
    private func thumbnail(_ path: String) throws -> NativeImage {
        let source = crops[path] ?? path
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: source)) } catch {
            throw CurationError.artefact(source, "cannot read for the contact sheet (\(error.localizedDescription))")
        }
        let image = try NativeImage.decode(data, maxPixels: 400_000_000)
        let s = Double(tileSize) / Double(max(image.width, image.height))
        guard s < 1 else { return image }
        return try image.resized(width: max(1, Int(Double(image.width) * s)), height: max(1, Int(Double(image.height) * s)))
    }
}

import Foundation

/// A file's size and modification time, as the read stage saw them.
public struct FileStat: Sendable, Equatable {
    public var byteSize: Int
    public var mtimeNs: Int64
    public init(byteSize: Int, mtimeNs: Int64) { self.byteSize = byteSize; self.mtimeNs = mtimeNs }
}

/// What a worker hands to the catalog writer for one scanned item.
package enum IngestResult: Sendable {
    package struct FileInfo: Sendable {
        package var sha256: String
        package var byteSize: Int
        package var mtimeNs: Int64
        package init(sha256: String, byteSize: Int, mtimeNs: Int64) { self.sha256 = sha256; self.byteSize = byteSize; self.mtimeNs = mtimeNs }
    }
    /// The scan could not produce an item.
    case problem(ScanProblem)
    /// Same path, size and mtime, already ingested under this fingerprint: nothing to do.
    case unchanged
    /// Same content, new path or new metadata: only the file row changes.
    case reused(ScanItem, FileInfo)
    case unreadable(ScanItem, FileStat?, reason: String)
    case analysed(ScanItem, FileInfo, ImageAnalysis, StageTimings)
}

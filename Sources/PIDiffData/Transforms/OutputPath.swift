import Foundation
import PIDiffModel
import PIDiffNative
import PIDiffCatalog

/// Where commands write: folders made on demand, and errors that say what is in the way.
/// Foundation's own errors here read "The operation could not be completed (NSCocoaErrorDomain
/// error 512)" on Linux, naming neither the path nor the reason.
public enum OutputPath {
    public struct Failure: Error, CustomStringConvertible {
        public var path: String
        public var reason: String
        public var description: String { "cannot write \(path): \(reason)" }
    }

    /// Creates `folder` and its parents; a file in the way, or a folder that cannot be made, is a
    /// `Failure` naming it.
    public static func prepareFolder(_ folder: URL) throws {
        var ancestor = folder.standardizedFileURL
        var isDirectory: ObjCBool = false
        while !FileManager.default.fileExists(atPath: ancestor.path, isDirectory: &isDirectory) {
            ancestor.deleteLastPathComponent()
        }
        guard isDirectory.boolValue else {
            throw Failure(path: folder.path, reason: "\(ancestor.path) is a file, not a folder")
        }
        do { try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true) } catch {
            throw Failure(path: folder.path, reason: "cannot create the folder under \(ancestor.path) (\(String(cString: strerror(errno))))")
        }
    }

    /// Marks `folder` as a pidiff-data output (`Scanner.outputMarker`), so an ingest of a folder
    /// that contains it does not take its images for photos.
    public static func markAsOutput(_ folder: URL) throws {
        let marker = folder.appendingPathComponent(Scanner.outputMarker)
        guard !FileManager.default.fileExists(atPath: marker.path) else { return }
        try write(Data("written by pidiff-data; ingest does not scan this folder\n".utf8), to: marker)
    }

    /// Writes `data` to `file`, creating its folder first.
    public static func write(_ data: Data, to file: URL) throws {
        try prepareFolder(file.deletingLastPathComponent())
        do { try data.write(to: file, options: .atomic) } catch {
            throw Failure(path: file.path, reason: String(cString: strerror(errno)))
        }
    }
}

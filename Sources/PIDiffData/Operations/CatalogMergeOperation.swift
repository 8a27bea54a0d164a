import Foundation
import PIDiffModel
import PIDiffCatalog

/// Merges partition catalogs into one under the target's lock (each part's lock too, so a part
/// still being written is not merged half-way).
public struct CatalogMergeOperation: Sendable {
    public var parts: [String]
    public var into: String

    public init(parts: [String], into: String) {
        self.parts = parts
        self.into = into
    }

    public func run() throws -> [Catalog.MergeSummary] {
        let lock = try CatalogLock(catalogPath: into)
        defer { withExtendedLifetime(lock) {} }
        let target = try Catalog(path: into)
        return try parts.map { path in
            guard FileManager.default.fileExists(atPath: path) else { throw CatalogError.open(path, "no such catalog") }
            guard CatalogLock.resolved(path) != CatalogLock.resolved(into) else { throw CatalogError.open(path, "is the target itself") }
            let partLock = try CatalogLock(catalogPath: path)
            defer { withExtendedLifetime(partLock) {} }
            return try target.merge(part: try Catalog(path: path))
        }
    }
}

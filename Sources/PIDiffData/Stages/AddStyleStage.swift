import Foundation
import PIDiffModel
import PIDiffCatalog
import PIDiffNative

/// `splits add-style`: one style photo (any person's face) joins an identity's training set in a
/// split, with the role `style` (paper §3.4.4: six photos of the identity plus one carrying the
/// wanted style).
public struct AddStyleStage: Stage {
    public static let name = "splits_add_style"
    public struct Parameters: Sendable {
        public var split: String
        public var identity: String
        /// The style photo by catalogued path, or by content.
        public var path: String?
        public var sha256: String?
        public init(split: String, identity: String, path: String?, sha256: String?) {
            self.split = split
            self.identity = identity
            self.path = path
            self.sha256 = sha256
        }
    }
    public var parameters: Parameters

    public init(_ parameters: Parameters) { self.parameters = parameters }

    public func run(in workspace: Workspace) async throws -> StageReport {
        let p = parameters
        let lock = try workspace.lock()
        defer { withExtendedLifetime(lock) {} }
        let path = p.path.map { URL(fileURLWithPath: $0).standardizedFileURL.path }
        // A photo given by path is also found by its content: a copy of a catalogued photo, kept
        // elsewhere, is that photo.
        var sha256 = p.sha256
        if sha256 == nil, let path, FileManager.default.isReadableFile(atPath: path) {
            sha256 = try? Hashing.sha256Hex(fileAt: URL(fileURLWithPath: path))
        }
        let item = try workspace.catalog().addStylePhoto(split: p.split, identity: IdentityName.normalized(p.identity),
                                                         path: path, sha256: sha256)
        return StageReport(stage: Self.name, lines: ["split \(p.split): \(item.identity) trains with style photo \(item.path)"],
                           counts: ["split": p.split], artefacts: ["split": p.split])
    }
}

import Foundation
import PIDiffModel
import PIDiffCatalog

/// `splits create`: an immutable split of named identities (no demographic labels needed), with
/// the same photo picks and exclusions as balanced selection.
public struct NamedSplitStage: Stage {
    public static let name = "splits_create"
    public struct Parameters: Codable, Sendable {
        public var name: String
        public var identities: [String]
        public var imagesPerIdentity: Int
        public var referenceImages: Int
        enum CodingKeys: String, CodingKey {
            case name, identities, imagesPerIdentity = "images_per_identity", referenceImages = "reference_images"
        }
        public init(name: String, identities: [String], imagesPerIdentity: Int = 6, referenceImages: Int = 1) {
            self.name = name
            self.identities = identities
            self.imagesPerIdentity = imagesPerIdentity
            self.referenceImages = referenceImages
        }
    }
    public var parameters: Parameters

    public init(_ parameters: Parameters) { self.parameters = parameters }

    public func run(in workspace: Workspace) async throws -> StageReport {
        let p = parameters
        guard SplitName.isValid(p.name) else { throw SplitError.invalidName(p.name) }
        let lock = try workspace.lock()
        defer { withExtendedLifetime(lock) {} }
        let catalog = try workspace.catalog()
        let selection = try NamedSelection.select(try catalog.balanceInputs(mapping: workspace.config.labels),
                                                  catalogued: Set(try catalog.identityNames()), names: p.identities,
                                                  imagesPerIdentity: p.imagesPerIdentity, referenceImages: p.referenceImages)
        let recorded = String(decoding: try JSONEncoder.sorted.encode(p), as: UTF8.self)
        try catalog.storeSplit(name: p.name, seed: 0, parameters: recorded, selection: selection, command: "splits create")
        let lines = ["split \(p.name): \(p.identities.count) identities, \(selection.items.count) photos"]
            + p.identities.map { name in
                let mine = selection.items.filter { $0.identity == IdentityName.normalized(name) }
                return "  \(name): \(mine.filter { $0.role == "train" }.count) train, reference "
                    + mine.filter { $0.role == "reference" }.map { URL(fileURLWithPath: $0.path).lastPathComponent }.joined(separator: ", ")
            }
        return StageReport(stage: Self.name, lines: lines, counts: ["split": p.name, "photos": "\(selection.items.count)"],
                           artefacts: ["split": p.name], json: selection.items.map { ["identity": $0.identity, "role": $0.role, "path": $0.path, "sha256": $0.sha256] })
    }
}

import Foundation
import PIDiffModel

extension PipelineConfig {
    /// The pipeline file at `url` (nil: every default), read and decoded; an unreadable or invalid
    /// file is an error naming it.
    public static func load(_ url: URL?) throws -> PipelineConfig {
        guard let url else { return PipelineConfig() }
        let text: String
        do { text = try String(contentsOf: url, encoding: .utf8) } catch {
            throw PipelineError.unreadable(url.path, error.localizedDescription)
        }
        return try decode(yaml: text, path: url.path)
    }
}

import Foundation
import PIDiffModel
import PIDiffNative
import PIDiffCatalog
import Logging

/// swift-log handler writing one JSON object per line to stderr: `ts`, `level`, `label`,
/// `message` and the metadata (a `run_id` on every line of a `pidiff-data run`), so cron logs can
/// be filtered with jq or shipped as they are.
public struct JSONLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level = .info
    let label: String
    private static let lock = NSLock()

    public init(label: String) { self.label = label }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var obj: [String: Any] = ["ts": ISO8601DateFormatter().string(from: Date()), "level": event.level.rawValue, "label": label,
                                  "message": event.message.description]
        for (k, v) in metadata.merging(event.metadata ?? [:], uniquingKeysWith: { $1 }) { obj[k] = Self.plain(v) }
        guard let data = try? JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys, .withoutEscapingSlashes]) else { return }
        Self.lock.lock()
        FileHandle.standardError.write(data + Data("\n".utf8))
        Self.lock.unlock()
    }

    static func plain(_ v: Logger.MetadataValue) -> Any {
        switch v {
        case .string(let s): return s
        case .stringConvertible(let c): return c.description
        case .array(let a): return a.map(plain)
        case .dictionary(let d): return d.mapValues(plain)
        }
    }
}

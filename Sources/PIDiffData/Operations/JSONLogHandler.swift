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
        let fields = metadata.merging(event.metadata ?? [:], uniquingKeysWith: { $1 }).mapValues(Self.plain)
        guard let line = Self.line(level: event.level.rawValue, label: label, message: event.message.description, metadata: fields) else { return }
        Self.lock.lock()
        FileHandle.standardError.write(line)
        Self.lock.unlock()
    }

    /// One log line as every JSON line on stderr is written: the metadata with `ts`, `level`,
    /// `label` and `message`, keys sorted, newline-terminated (nil if it cannot be encoded).
    public static func line(level: String, label: String, message: String, metadata: [String: Any] = [:]) -> Data? {
        var obj = metadata
        obj["ts"] = ISO8601DateFormatter().string(from: Date())
        obj["level"] = level
        obj["label"] = label
        obj["message"] = message
        guard var data = try? JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys, .withoutEscapingSlashes]) else { return nil }
        data.append(10)
        return data
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

/// While a `run` goes on, stderr (fd 2) is a pipe read by this object, so that what native
/// libraries print there themselves (libpng's "iCCP: known incorrect sRGB profile", OpenCV or
/// dlib warnings, which no handler of ours sees) cannot break the JSON-lines contract: a line that
/// is already a JSON object passes through as it is, any other becomes a `warning` with label
/// `pidiff-data.native` and the run's metadata. `stop()` puts the real stderr back.
public final class StderrAsJSONLines: @unchecked Sendable {
    private let saved: Int32
    private let readEnd: Int32
    private let finished = DispatchSemaphore(value: 0)
    private let lock = NSLock()
    private var metadata: [String: String]
    private var stopped = false
    /// The capture in progress, for the signal handler (`stopActive`).
    nonisolated(unsafe) private static var active: StderrAsJSONLines?
    private static let activeLock = NSLock()

    /// nil when the pipe cannot be made (stderr is then left as it is).
    public init?(metadata: [String: String]) {
        fflush(nil) // every C stream: what is buffered goes where it was meant to
        var fds: [Int32] = [0, 0]
        // Close-on-exec: children (the trainer) inherit fd 2, the pipe's write end, but neither
        // its read end nor the saved stderr.
        guard pipe(&fds) == 0 else { return nil }
        _ = fcntl(fds[0], F_SETFD, FD_CLOEXEC) // (Glibc's pipe2 is not visible to Swift; nothing forks yet)
        let saved = fcntl(2, F_DUPFD_CLOEXEC, 0)
        guard saved >= 0, dup2(fds[1], 2) >= 0 else {
            close(fds[0]); close(fds[1])
            if saved >= 0 { close(saved) }
            return nil
        }
        close(fds[1])
        self.saved = saved
        self.readEnd = fds[0]
        self.metadata = metadata
        Thread.detachNewThread { [self] in pump() }
        Self.activeLock.lock()
        Self.active = self
        Self.activeLock.unlock()
    }

    /// Stops the capture in progress, if any (every line written so far is out), and returns its
    /// metadata: a signal handler about to end the process says why as a JSON line too.
    public static func stopActive() -> [String: String]? {
        activeLock.lock()
        let capture = active
        activeLock.unlock()
        guard let capture else { return nil }
        capture.lock.lock()
        let metadata = capture.metadata
        capture.lock.unlock()
        capture.stop()
        return metadata
    }

    /// Metadata for the lines from now on (`stage`), nil to drop a key.
    public func set(_ key: String, _ value: String?) {
        lock.lock(); defer { lock.unlock() }
        metadata[key] = value
    }

    /// The real stderr back, once every line written so far is out (a child still holding the
    /// pipe is waited for at most two seconds).
    public func stop() {
        lock.lock()
        let already = stopped
        stopped = true
        lock.unlock()
        guard !already else { return }
        Self.activeLock.lock()
        if Self.active === self { Self.active = nil }
        Self.activeLock.unlock()
        fflush(nil) // every C stream: what is buffered goes where it was meant to
        dup2(saved, 2) // the pipe's last write end closes: the reader sees its end
        _ = finished.wait(timeout: .now() + 2)
    }

    private func pump() {
        var pending: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 1 << 14)
        while true {
            let n = read(readEnd, &buffer, buffer.count)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            pending.append(contentsOf: buffer[0..<n])
            while let newline = pending.firstIndex(of: 10) {
                forward(pending[..<newline])
                pending.removeSubrange(...newline)
            }
            // Output that never ends its line is passed on in 1 MiB pieces rather than held.
            if pending.count >= 1 << 20 {
                forward(pending[...])
                pending.removeAll(keepingCapacity: true)
            }
        }
        if !pending.isEmpty { forward(pending[...]) }
        close(readEnd)
        close(saved)
        finished.signal()
    }

    private func forward(_ line: ArraySlice<UInt8>) {
        let data = Data(line)
        var out = data
        if (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] == nil {
            let text = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            guard !text.isEmpty else { return }
            lock.lock()
            let metadata = self.metadata
            lock.unlock()
            guard let line = JSONLogHandler.line(level: "warning", label: "pidiff-data.native", message: text, metadata: metadata) else { return }
            out = line
        } else {
            out.append(10)
        }
        out.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let n = write(saved, raw.baseAddress! + offset, raw.count - offset)
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { return }
                offset += n
            }
        }
    }
}

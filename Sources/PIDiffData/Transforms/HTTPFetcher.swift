import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import PIDiffModel

/// One attempt at one URL with AsyncHTTPClient: redirects followed here (each hop's scheme and
/// address checked, loops and long chains refused), the body streamed to a temporary file while
/// it is hashed and counted against the byte limit, and the format sniffed from the bytes.
struct HTTPFetcher: Sendable {
    let client: HTTPClient
    let parameters: FetchParameters
    /// Where bodies are written while they arrive (inside the inbox, so the final rename is atomic).
    let partialFolder: URL
    let addresses = AddressPolicy.Cache()

    struct Download: Sendable {
        var temporary: URL
        var sha256: String
        var bytes: Int
        var format: ImageHeader.Format
        var finalURL: String
        var httpStatus: Int
    }

    /// Why an attempt failed. `transient` failures are retried (with `retryAfter` when the server
    /// said how long to wait); `permanent` ones are not.
    enum Failure: Error, Sendable {
        case transient(String, http: Int?, retryAfter: Double?)
        case permanent(String, http: Int?)
        /// Refused before any request was made (scheme, address, a malformed URL).
        case refused(String)
        /// This machine could not store the body (disk full, read-only, permissions): not the
        /// URL's fault, so the run stops and no attempt is counted against it.
        case local(String)
        var message: String {
            switch self { case .transient(let m, _, _), .permanent(let m, _), .refused(let m), .local(let m): return m }
        }
        var http: Int? {
            switch self {
            case .transient(_, let h, _), .permanent(_, let h): return h
            case .refused, .local: return nil
            }
        }
    }

    /// The HTTP client for `parameters`: timeouts, gzip/deflate decoding bounded by the byte
    /// limit, connections per host, and no automatic redirects (`attempt` follows them).
    static func makeClient(_ parameters: FetchParameters) -> HTTPClient {
        func amount(_ seconds: Double) -> TimeAmount { .milliseconds(Int64((seconds * 1000).rounded())) }
        var configuration = HTTPClient.Configuration(
            redirectConfiguration: .disallow,
            timeout: .init(connect: amount(parameters.connectTimeout), read: amount(parameters.readTimeout)),
            connectionPool: .init(idleTimeout: .seconds(30), concurrentHTTP1ConnectionsPerHostSoftLimit: parameters.perHost),
            decompression: .enabled(limit: .size(parameters.maxBytes)))
        configuration.httpVersion = .automatic
        return HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
    }

    func attempt(_ url: String) async -> Result<Download, Failure> {
        do {
            return .success(try await withDeadline(parameters.totalTimeout) { try await self.follow(url) })
        } catch let failure as Failure {
            return .failure(failure)
        } catch is DeadlineExceeded {
            return .failure(.transient("no complete response within fetch.total_timeout \(Self.seconds(parameters.totalTimeout))", http: nil, retryAfter: nil))
        } catch {
            return .failure(Self.classify(error))
        }
    }

    private func follow(_ first: String) async throws -> Download {
        var current = first
        var visited: Set<String> = [first]
        for hop in 0...parameters.maxRedirects {
            // A hop refused after a redirect says where the redirect led; the first URL's own
            // refusal made no request at all.
            func refuse(_ why: String) -> Failure {
                hop == 0 ? .refused(why) : .permanent("redirected to \(current): \(why)", http: nil)
            }
            guard let url = URL(string: current), let scheme = url.scheme?.lowercased(), let host = url.host, !host.isEmpty else {
                throw refuse("not a URL: \(current.debugDescription)")
            }
            guard scheme == "http" || scheme == "https" else {
                throw refuse("scheme \(scheme) is not fetched (http and https only)")
            }
            if !parameters.allowPrivate, let why = await addresses.refusal(host: host.lowercased()) {
                throw refuse("\(why); fetch.allow_private (--allow-private) permits it")
            }
            var request = HTTPClientRequest(url: current)
            request.headers.add(name: "User-Agent", value: parameters.userAgent)
            request.headers.add(name: "Accept", value: "image/jpeg, image/png, image/webp, image/bmp;q=0.9, image/*;q=0.5")
            request.headers.add(name: "Accept-Encoding", value: "gzip, deflate")
            let response = try await client.execute(request, deadline: .now() + .milliseconds(Int64(parameters.totalTimeout * 1000)))
            let status = Int(response.status.code)
            if (300..<400).contains(status), status != 304 {
                _ = try? await response.body.collect(upTo: 64 * 1024)  // a redirect's own body is small, and unused
                guard let location = response.headers.first(name: "Location"),
                      let next = URL(string: location, relativeTo: url)?.absoluteURL.absoluteString else {
                    throw Failure.permanent("HTTP \(status) without a usable Location", http: status)
                }
                guard visited.insert(next).inserted else { throw Failure.permanent("redirect loop (back to \(next))", http: status) }
                current = next
                continue
            }
            guard status == 200 else {
                _ = try? await response.body.collect(upTo: 64 * 1024)
                let retryAfter = response.headers.first(name: "Retry-After").flatMap(Self.retryAfterSeconds)
                let text = "HTTP \(status) \(response.status.reasonPhrase)"
                if status == 408 || status == 425 || status == 429 || status >= 500 {
                    throw Failure.transient(text + (retryAfter.map { ", Retry-After \(Self.seconds($0))" } ?? ""), http: status, retryAfter: retryAfter)
                }
                throw Failure.permanent(text, http: status)
            }
            if let directive = Self.optOut(response.headers[canonicalForm: "X-Robots-Tag"].map(String.init),
                                           disallowed: parameters.disallowedHeaderDirectives, userAgent: parameters.userAgent) {
                throw Failure.permanent("the site opts out: X-Robots-Tag \(directive) (fetch.disallowed_header_directives)", http: status)
            }
            let encoded = response.headers.first(name: "Content-Encoding").map { !$0.isEmpty && $0.lowercased() != "identity" } ?? false
            if !encoded, let length = response.headers.first(name: "Content-Length").flatMap(Int.init), length > parameters.maxBytes {
                throw Failure.permanent("Content-Length \(length) bytes exceeds fetch.max_bytes \(parameters.maxBytes)", http: status)
            }
            return try await store(response.body, finalURL: current, status: status)
        }
        throw Failure.permanent("more than fetch.max_redirects \(parameters.maxRedirects) redirects", http: nil)
    }

    /// Streams the body into a temporary file, hashing and counting it; stops at the byte limit
    /// or as soon as the first bytes show it is not an image.
    private func store(_ body: HTTPClientResponse.Body, finalURL: String, status: Int) async throws -> Download {
        let temporary = partialFolder.appendingPathComponent(UUID().uuidString + ".part")
        guard FileManager.default.createFile(atPath: temporary.path, contents: nil), let handle = FileHandle(forWritingAtPath: temporary.path) else {
            throw Failure.local("cannot write \(temporary.path): \(String(cString: strerror(errno)))")
        }
        var keep = false
        defer {
            try? handle.close()
            if !keep { try? FileManager.default.removeItem(at: temporary) }
        }
        var hash = SHA256Stream()
        var head = Data()
        var bytes = 0
        var sniffed = false
        for try await buffer in body {
            bytes += buffer.readableBytes
            guard bytes <= parameters.maxBytes else {
                throw Failure.permanent("body exceeds fetch.max_bytes \(parameters.maxBytes) bytes", http: status)
            }
            do {
                try buffer.withUnsafeReadableBytes { raw in
                    hash.update(raw)
                    try handle.write(contentsOf: raw)
                }
            } catch {
                throw Failure.local("cannot write \(temporary.path): \(Self.posixReason(error))")
            }
            if head.count < 64 * 1024 { head.append(contentsOf: buffer.readableBytesView.prefix(64 * 1024 - head.count)) }
            if !sniffed, head.count >= 16 {
                sniffed = true
                if let why = Self.notAnImage(head) { throw Failure.permanent(why, http: status) }
            }
        }
        guard bytes > 0 else { throw Failure.permanent("empty body", http: status) }
        if let why = Self.notAnImage(head) { throw Failure.permanent(why, http: status) }
        let header: ImageHeader
        do { header = try ImageHeader.parse(head) } catch {
            throw Failure.permanent("\(error) in the bytes received (\(Self.describe(head)))", http: status)
        }
        guard header.width > 0, header.height > 0 else {
            throw Failure.permanent("\(header.format.rawValue) declares a \(header.width)×\(header.height) image", http: status)
        }
        if header.format == .jpeg || header.format == .png,
           let mapped = try? Data(contentsOf: temporary, options: .alwaysMapped),
           let truncated = ImageHeader.truncation(of: mapped, format: header.format) {
            throw Failure.permanent("\(truncated) (the server's file is cut short)", http: status)
        }
        let digest = hash.finish()
        keep = true
        return Download(temporary: temporary, sha256: digest.sha256, bytes: digest.bytes, format: header.format, finalURL: finalURL, httpStatus: status)
    }

    /// A reason when the first bytes are plainly not one of the formats ingest reads (HTML,
    /// JSON, text, GIF, SVG), whatever the Content-Type said.
    static func notAnImage(_ head: Data) -> String? {
        let b = [UInt8](head.prefix(16))
        if ImageHeader.format(of: b) != nil { return nil }
        if b.starts(with: Array("GIF8".utf8)) { return "a GIF image, which ingest does not read (JPEG, PNG, WebP, BMP)" }
        return "not an image: the bytes are \(describe(head))"
    }

    /// What the first bytes look like, for messages.
    static func describe(_ head: Data) -> String {
        let text = String(decoding: head.prefix(64), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines).lowercased()
        if text.hasPrefix("<!doctype html") || text.hasPrefix("<html") || text.contains("<head") { return "HTML" }
        if text.hasPrefix("<?xml") || text.hasPrefix("<svg") { return "XML or SVG" }
        if text.hasPrefix("{") || text.hasPrefix("[") { return "JSON" }
        let printable = head.prefix(64).allSatisfy { (0x20...0x7E).contains($0) || $0 == 0x0A || $0 == 0x0D || $0 == 0x09 }
        return printable ? "text" : "unrecognised binary (starts \(Hashing.hex(head.prefix(8))))"
    }

    /// The first disallowed directive among `X-Robots-Tag` values (`noai, noimageai`, or
    /// `agent: noindex` when the agent is `*` or names our user agent's product), or nil.
    static func optOut(_ values: [String], disallowed: [String], userAgent: String) -> String? {
        let ours = userAgent.split(separator: "/").first.map { $0.lowercased() } ?? ""
        let refused = Set(disallowed.map { $0.lowercased() })
        var agent: String? = nil
        for value in values {
            for token in value.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces).lowercased() }) {
                var directive = token
                if let colon = token.firstIndex(of: ":") {
                    agent = token[..<colon].trimmingCharacters(in: .whitespaces)
                    directive = token[token.index(after: colon)...].trimmingCharacters(in: .whitespaces)
                }
                let applies = agent == nil || agent == "*" || agent == ours
                if applies, refused.contains(directive) { return agent.map { "\($0): \(directive)" } ?? directive }
            }
            agent = nil
        }
        return nil
    }

    /// Retry-After as seconds from now: a number of seconds or an HTTP date.
    static func retryAfterSeconds(_ value: String) -> Double? {
        let trimmed = value.trimmingCharacters(in: .whitespaces)
        // A number too large to mean anything (or not finite) is a wait longer than any limit.
        if let seconds = Double(trimmed), seconds >= 0 { return seconds.isFinite ? min(seconds, 1e9) : 1e9 }
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "GMT")
        formatter.dateFormat = "EEE, dd MMM yyyy HH:mm:ss zzz"
        return formatter.date(from: trimmed).map { max(0, $0.timeIntervalSinceNow) }
    }

    static func seconds(_ s: Double) -> String {
        guard s.isFinite, abs(s) < 1e15 else { return "\(s) s" }
        return s == s.rounded() ? "\(Int64(s)) s" : String(format: "%.1f s", s)
    }

    /// The system's reason for a failed write, without Foundation's "The operation could not be
    /// completed" wrapping.
    static func posixReason(_ error: any Error) -> String {
        if let posix = (error as NSError).userInfo[NSUnderlyingErrorKey] as? NSError, posix.domain == NSPOSIXErrorDomain {
            return String(cString: strerror(Int32(posix.code)))
        }
        if (error as NSError).domain == NSPOSIXErrorDomain { return String(cString: strerror(Int32((error as NSError).code))) }
        return error.localizedDescription
    }

    /// A client or network error as a failure: timeouts and broken connections are transient,
    /// the rest (TLS, a decompression bomb, an unusable URL) permanent.
    static func classify(_ error: any Error) -> Failure {
        if let e = error as? HTTPClientError {
            if e == .readTimeout { return .transient("no byte for fetch.read_timeout", http: nil, retryAfter: nil) }
            if e == .connectTimeout { return .transient("could not connect within fetch.connect_timeout", http: nil, retryAfter: nil) }
            if e == .deadlineExceeded { return .transient("no response within fetch.total_timeout", http: nil, retryAfter: nil) }
            if e == .remoteConnectionClosed {
                return .transient("the server closed the connection before the end of the body", http: nil, retryAfter: nil)
            }
            if e == .invalidURL || e == .emptyHost || e == .emptyScheme { return .permanent("not a fetchable URL (\(e))", http: nil) }
            return .transient("\(e)", http: nil, retryAfter: nil)
        }
        let text = "\(error)"
        // NIO's decompressor errors (a type of swift-nio-extras, named here rather than imported).
        if String(reflecting: type(of: error)).contains("DecompressionError") {
            return text == "limit" ? .permanent("decoded body exceeds fetch.max_bytes (a compression bomb?)", http: nil)
                                   : .permanent("corrupt Content-Encoding body (\(text))", http: nil)
        }
        if text.contains("NIOSSL") || text.contains("handshake") || text.contains("certificate") {
            return .permanent("TLS: \(text)", http: nil)
        }
        return .transient(text, http: nil, retryAfter: nil)
    }

}

struct DeadlineExceeded: Error {}

/// Runs `operation`, cancelling it when `seconds` pass first (the client's own deadline covers
/// only the response head; a body that drips is cut here).
func withDeadline<T: Sendable>(_ seconds: Double, _ operation: @escaping @Sendable () async throws -> T) async throws -> T {
    let work = Task { try await operation() }
    let expired = DeadlineFlag()
    let timer = DispatchSource.makeTimerSource(queue: .global())
    timer.schedule(deadline: .now() + seconds)
    timer.setEventHandler { expired.set(); work.cancel() }
    timer.resume()
    defer { timer.cancel() }  // off the timer heap now, not when `seconds` have passed
    return try await withTaskCancellationHandler {
        do { return try await work.value } catch { if expired.isSet { throw DeadlineExceeded() }; throw error }
    } onCancel: { work.cancel() }
}

/// Set once by the deadline timer; read after the work ends.
final class DeadlineFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    func set() { lock.lock(); value = true; lock.unlock() }
    var isSet: Bool { lock.lock(); defer { lock.unlock() }; return value }
}

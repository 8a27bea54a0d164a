import Foundation

/// Parameters of `fetch` (URL lists into an inbox of identity folders, Docs/sources.md). None
/// changes what an image is: files are named by their content, so nothing here is fingerprinted.
public struct FetchParameters: Codable, Equatable, Sendable {
    /// Downloads in flight at once, over all hosts.
    public var concurrency = 16
    /// Downloads in flight at once to one host (politeness; a list sorted by host waits on it).
    public var perHost = 4
    /// Seconds to open a connection (TCP and TLS).
    public var connectTimeout = 10.0
    /// Seconds without a byte arriving before an attempt gives up.
    public var readTimeout = 30.0
    /// Seconds one attempt may take from request to last byte (a slow drip ends here).
    public var totalTimeout = 120.0
    /// Attempts per URL within one run (timeouts, connection errors, 408, 429, 5xx are retried).
    public var attemptsPerRun = 3
    /// Attempts per URL over all runs; a URL that reached it is not tried again.
    public var maxAttempts = 9
    /// First retry delay in seconds; doubled per attempt with full jitter, capped by `backoff_max`.
    public var backoffBase = 0.5
    public var backoffMax = 30.0
    /// A Retry-After longer than this (seconds) ends the URL's attempts for this run.
    public var maxRetryAfter = 120.0
    /// Bytes one image may have (after gzip decoding); enforced while streaming.
    public var maxBytes = 20_000_000
    /// Redirects followed per attempt (each hop is checked like the first URL).
    public var maxRedirects = 5
    /// Fetch from loopback, private and link-local addresses (off: such URLs are refused).
    public var allowPrivate = false
    public var userAgent = "pidiff-data-fetch/1 (identity dataset curation)"
    /// An image whose `X-Robots-Tag` carries one of these (for all agents or for ours) is not
    /// stored: the site opted out (img2dataset's default list).
    public var disallowedHeaderDirectives = ["noai", "noimageai", "noindex", "noimageindex"]

    public init() {}
    public init(from decoder: Decoder) throws { self = try Self.decoded(from: decoder) }
    public func encode(to encoder: Encoder) throws { try encodeFields(to: encoder) }

    public func validate() throws {
        try refuseOutOfRange("fetch", [
            ("concurrency", (1...1024).contains(concurrency), "1…1024"),
            ("per_host", (1...1024).contains(perHost), "1…1024"),
            ("connect_timeout", connectTimeout > 0 && connectTimeout <= 86_400, "> 0 and ≤ 86400 s"),
            ("read_timeout", readTimeout > 0 && readTimeout <= 86_400, "> 0 and ≤ 86400 s"),
            ("total_timeout", totalTimeout > 0 && totalTimeout <= 86_400, "> 0 and ≤ 86400 s"),
            ("attempts_per_run", (1...100).contains(attemptsPerRun), "1…100"),
            ("max_attempts", (1...10_000).contains(maxAttempts), "1…10000"),
            ("backoff_base", backoffBase >= 0 && backoffBase <= 86_400, "0…86400 s"),
            ("backoff_max", backoffMax >= backoffBase && backoffMax <= 86_400, "≥ backoff_base and ≤ 86400 s"),
            ("max_retry_after", maxRetryAfter >= 0 && maxRetryAfter <= 86_400, "0…86400 s"),
            ("max_bytes", (1024...(1 << 31)).contains(maxBytes), "1024…2147483648"),
            ("max_redirects", (0...20).contains(maxRedirects), "0…20"),
            ("user_agent", !userAgent.isEmpty && !userAgent.contains(where: \.isNewline), "one non-empty line"),
        ])
    }
}

extension FetchParameters: ParameterSection {
    public static let section = "fetch"
    public static let algorithmVersion = "fetch-1"
    public static let fields: [ParameterField<FetchParameters>] = [
        .field(\.concurrency, "concurrency", "downloads in flight at once, all hosts", fingerprint: .never),
        .field(\.perHost, "per_host", "downloads in flight at once to one host", fingerprint: .never),
        .field(\.connectTimeout, "connect_timeout", "seconds to connect (TCP + TLS)", fingerprint: .never),
        .field(\.readTimeout, "read_timeout", "seconds without a byte before an attempt gives up", fingerprint: .never),
        .field(\.totalTimeout, "total_timeout", "seconds one attempt may take, first byte to last", fingerprint: .never),
        .field(\.attemptsPerRun, "attempts_per_run", "tries per URL in one run (timeouts, 408, 429, 5xx retried)", fingerprint: .never),
        .field(\.maxAttempts, "max_attempts", "tries per URL over all runs, then it is given up", fingerprint: .never),
        .field(\.backoffBase, "backoff_base", "first retry delay (s), doubled per try, full jitter", fingerprint: .never),
        .field(\.backoffMax, "backoff_max", "longest retry delay (s)", fingerprint: .never),
        .field(\.maxRetryAfter, "max_retry_after", "a longer Retry-After (s) leaves the URL for a later run", fingerprint: .never),
        .field(\.maxBytes, "max_bytes", "largest image in bytes (after gzip), enforced while streaming", fingerprint: .never),
        .field(\.maxRedirects, "max_redirects", "redirects followed per try", fingerprint: .never),
        .field(\.allowPrivate, "allow_private", "fetch from loopback, private and link-local addresses", fingerprint: .never),
        .field(\.userAgent, "user_agent", fingerprint: .never),
        .field(\.disallowedHeaderDirectives, "disallowed_header_directives", "X-Robots-Tag directives that refuse an image (opt-outs)",
               fingerprint: .never),
    ]
}

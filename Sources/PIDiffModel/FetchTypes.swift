import Foundation

/// One line of a URL list: whose photo, where it is, and what may be said about where it came from.
public struct FetchListEntry: Equatable, Sendable {
    public var identity: String
    public var url: String
    public var license: String?
    public var source: String?
    /// `list:line`, for messages.
    public var location: String
    public init(identity: String, url: String, license: String? = nil, source: String? = nil, location: String) {
        self.identity = identity
        self.url = url
        self.license = license
        self.source = source
        self.location = location
    }
}

/// A URL's state in the catalog (`fetch_urls.status`).
public enum FetchStatus: String, Codable, Sendable, CaseIterable {
    /// Stored in the inbox (`path`), or its content already was (the same image at another URL).
    case done
    /// Failed in a way that may pass (timeouts, connection errors, 408, 429, 5xx): a later run
    /// tries again until `fetch.max_attempts`.
    case failed
    /// Will not become an image by asking again (404, not an image, too large, a refused
    /// address, a redirect loop, the same content already stored for another identity).
    case rejected
}

/// Where a fetched photo came from, as its list said; follows the photo (by its SHA-256) into the
/// HTML report and the shard JSON.
public struct FetchedProvenance: Codable, Equatable, Sendable {
    public var url: String
    public var license: String?
    public var source: String?
    public init(url: String, license: String? = nil, source: String? = nil) {
        self.url = url
        self.license = license
        self.source = source
    }
}

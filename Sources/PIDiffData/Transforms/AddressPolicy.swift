import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Which network addresses `fetch` may connect to. A URL list from the web must not make the
/// machine fetch from itself or its private network (a cloud metadata service at 169.254.169.254,
/// an admin page on 10.x): loopback, private, link-local, shared (CGNAT), multicast and reserved
/// addresses are refused unless `fetch.allow_private` is set.
///
/// The host is resolved here and every address it resolves to is checked; the HTTP client then
/// resolves it again to connect, so a DNS server that answers differently the second time
/// (rebinding) is not caught (Docs/sources.md).
enum AddressPolicy {
    /// Why `host` may not be fetched from (nil: it may), after resolving it.
    static func refusal(host: String) async -> String? {
        let bare = host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host
        if let bytes = ipv4(bare) { return isPublicIPv4(bytes) ? nil : "address \(bare) is not public (loopback, private, link-local or reserved)" }
        if let bytes = ipv6(bare) { return isPublicIPv6(bytes) ? nil : "address \(bare) is not public (loopback, private, link-local or reserved)" }
        let resolved: [(String, Bool)]
        do { resolved = try await resolve(bare) } catch { return nil }  // the client reports the DNS failure itself
        if let (address, _) = resolved.first(where: { !$0.1 }) {
            return "\(bare) resolves to \(address), which is not public (loopback, private, link-local or reserved)"
        }
        return nil
    }

    /// Verdicts per host for a minute: a list with thousands of URLs on a few hosts resolves each
    /// host about once a minute, not once per URL. Bounded: cleared when it holds 10 000 hosts.
    actor Cache {
        private var verdicts: [String: (refusal: String?, at: Date)] = [:]
        func refusal(host: String) async -> String? {
            if let hit = verdicts[host], Date().timeIntervalSince(hit.at) < 60 { return hit.refusal }
            let verdict = await AddressPolicy.refusal(host: host)
            if verdicts.count >= 10_000 { verdicts.removeAll() }
            verdicts[host] = (verdict, Date())
            return verdict
        }
    }

    struct ResolutionFailure: Error { var message: String }

    /// The addresses `host` resolves to, each with whether it is public. getaddrinfo blocks, so it
    /// runs on a dispatch thread, not on the concurrency pool's few threads.
    static func resolve(_ host: String) async throws -> [(String, Bool)] {
        try await withCheckedThrowingContinuation { continuation in
            DispatchQueue.global().async {
                var hints = addrinfo()
                hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
                var list: UnsafeMutablePointer<addrinfo>?
                let status = getaddrinfo(host, nil, &hints, &list)
                guard status == 0 else {
                    continuation.resume(throwing: ResolutionFailure(message: String(cString: gai_strerror(status))))
                    return
                }
                defer { freeaddrinfo(list) }
                var out: [(String, Bool)] = []
                var node = list
                while let info = node?.pointee {
                    if info.ai_family == AF_INET, let sa = info.ai_addr {
                        let bytes = sa.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { p in
                            withUnsafeBytes(of: p.pointee.sin_addr) { Array($0) }
                        }
                        out.append((bytes.map(String.init).joined(separator: "."), isPublicIPv4(bytes)))
                    } else if info.ai_family == AF_INET6, let sa = info.ai_addr {
                        let bytes = sa.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { p in
                            withUnsafeBytes(of: p.pointee.sin6_addr) { Array($0) }
                        }
                        out.append((ipv6Text(bytes), isPublicIPv6(bytes)))
                    }
                    node = info.ai_next
                }
                continuation.resume(returning: out)
            }
        }
    }

    static func ipv4(_ text: String) -> [UInt8]? {
        var addr = in_addr()
        return inet_pton(AF_INET, text, &addr) == 1 ? withUnsafeBytes(of: addr) { Array($0) } : nil
    }

    static func ipv6(_ text: String) -> [UInt8]? {
        var addr = in6_addr()
        return inet_pton(AF_INET6, text, &addr) == 1 ? withUnsafeBytes(of: addr) { Array($0) } : nil
    }

    static func ipv6Text(_ bytes: [UInt8]) -> String {
        var addr = in6_addr()
        withUnsafeMutableBytes(of: &addr) { $0.copyBytes(from: bytes) }
        var buffer = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        return inet_ntop(AF_INET6, &addr, &buffer, socklen_t(buffer.count)) != nil ? String(cString: buffer) : "?"
    }

    /// Globally routable unicast IPv4 (RFC 6890 special-purpose blocks excluded).
    static func isPublicIPv4(_ b: [UInt8]) -> Bool {
        guard b.count == 4 else { return false }
        switch (b[0], b[1], b[2]) {
        case (0, _, _), (10, _, _), (127, _, _): return false                 // this network, private, loopback
        case (100, 64...127, _): return false                                  // shared address space (CGNAT)
        case (169, 254, _): return false                                       // link-local (cloud metadata)
        case (172, 16...31, _): return false                                   // private
        case (192, 0, 0), (192, 0, 2), (192, 88, 99), (192, 168, _): return false
        case (198, 18...19, _), (198, 51, 100), (203, 0, 113): return false   // benchmarking, documentation
        case (224...255, _, _): return false                                   // multicast, reserved, broadcast
        default: return true
        }
    }

    static func isPublicIPv6(_ b: [UInt8]) -> Bool {
        guard b.count == 16 else { return false }
        if b.allSatisfy({ $0 == 0 }) { return false }                                    // ::
        if b[0..<15].allSatisfy({ $0 == 0 }) && b[15] == 1 { return false }              // ::1
        if b[0..<10].allSatisfy({ $0 == 0 }) && b[10] == 0xFF && b[11] == 0xFF {         // ::ffff:a.b.c.d
            return isPublicIPv4(Array(b[12..<16]))
        }
        if b[0] == 0x00, b[1] == 0x64, b[2] == 0xFF, b[3] == 0x9B { return isPublicIPv4(Array(b[12..<16])) }  // NAT64
        if b[0..<12].allSatisfy({ $0 == 0 }) { return isPublicIPv4(Array(b[12..<16])) }                   // ::a.b.c.d (compatible)
        if b[0..<8].allSatisfy({ $0 == 0 }) && b[8] == 0xFF && b[9] == 0xFF && b[10] == 0 && b[11] == 0 { // ::ffff:0:a.b.c.d
            return isPublicIPv4(Array(b[12..<16]))
        }
        if b[0] == 0x20, b[1] == 0x02 { return isPublicIPv4(Array(b[2..<6])) }                           // 6to4 2002::/16
        if b[0] == 0x20, b[1] == 0x01, b[2] == 0, b[3] == 0 { return false }                             // Teredo 2001::/32
        if b[0] & 0xFE == 0xFC { return false }                                          // unique local fc00::/7
        if b[0] == 0xFE && b[1] & 0xC0 == 0x80 { return false }                         // link-local fe80::/10
        if b[0] == 0xFF { return false }                                                 // multicast
        if b[0] == 0x20, b[1] == 0x01, b[2] == 0x0D, b[3] == 0xB8 { return false }       // documentation
        return true
    }
}

import Foundation
import PIDiffModel
import PIDiffNative
import PIDiffCatalog

/// Exact radius search over 64-bit perceptual hashes with multi-index hashing (Norouzi, Punjani
/// and Fleet, "Fast Search in Hamming Space with Multi-Index Hashing", CVPR 2012).
///
/// The 64 bits are cut into `m` disjoint chunks. If two hashes differ in at most `r` bits, some
/// chunk differs in at most ⌊r/m⌋ bits (were every chunk ≥ ⌊r/m⌋+1 apart, the total would exceed
/// r). So each chunk gets a table from chunk value to the hashes holding it; a query probes, in
/// every chunk, all values within ⌊r/m⌋ bits of its own chunk, and verifies each candidate with a
/// popcount. No pair within `r` is missed, and nothing is compared all-pairs.
///
/// The chunk count is chosen per index from a cost model (probes + expected candidates). The
/// textbook choice m = r + 1 (every sub-radius 0) has 7-bit chunks at r = 8: at a million hashes
/// each bucket holds ~8,000 entries and a query verifies ~70,000 candidates. m = 3 (21/21/22-bit
/// chunks, sub-radius 2) probes ~700 buckets that hold ~0.5 entries each — about 70× less work.
/// Tables are counting-sorted arrays (bucket offsets + hashes stored in bucket order), so
/// verifying a bucket reads contiguous memory.
public struct NearDuplicateIndex: Sendable {
    public let radius: Int
    public let count: Int
    /// Chunk layout: `bits[c]` wide, starting at bit `shifts[c]`.
    public let bits: [Int]
    let shifts: [Int]
    /// Per chunk: `offsets[c][v] ..< offsets[c][v + 1]` is the bucket of chunk value v.
    let offsets: [[UInt32]]
    /// Per chunk: ids and hashes in bucket order.
    let ids: [[UInt32]]
    let sortedHashes: [[UInt64]]
    /// Per chunk: XOR masks of every value within the sub-radius of 0.
    let masks: [[UInt32]]
    /// Widest chunk allowed: a table has 2^bits offsets (2^22 × 4 B = 16 MiB).
    static let maxChunkBits = 22

    public var subRadius: Int { radius / bits.count }

    public init(hashes: [UInt64], radius: Int) {
        precondition(radius >= 0 && radius < 64, "radius must be in 0..<64")
        precondition(hashes.count < Int(UInt32.max), "at most 2^32 − 1 hashes")
        self.radius = radius
        count = hashes.count
        let m = Self.chunkCount(n: hashes.count, radius: radius)
        var widths = [Int](repeating: 64 / m, count: m)
        for c in 0..<(64 % m) { widths[m - 1 - c] += 1 }
        bits = widths
        var s = 0
        shifts = widths.map { w in defer { s += w }; return s }

        var offsets: [[UInt32]] = [], ids: [[UInt32]] = [], sorted: [[UInt64]] = []
        for c in 0..<m {
            let mask = (UInt64(1) << UInt64(widths[c])) - 1, shift = UInt64(shifts[c])
            var off = [UInt32](repeating: 0, count: (1 << widths[c]) + 1)
            for h in hashes { off[Int((h >> shift) & mask) + 1] += 1 }
            for v in 0..<(1 << widths[c]) { off[v + 1] += off[v] }
            var cursor = off
            var bucketIDs = [UInt32](repeating: 0, count: hashes.count)
            var bucketHashes = [UInt64](repeating: 0, count: hashes.count)
            for (i, h) in hashes.enumerated() {
                let v = Int((h >> shift) & mask)
                let at = Int(cursor[v])
                bucketIDs[at] = UInt32(i)
                bucketHashes[at] = h
                cursor[v] += 1
            }
            offsets.append(off)
            ids.append(bucketIDs)
            sorted.append(bucketHashes)
        }
        self.offsets = offsets
        self.ids = ids
        self.sortedHashes = sorted
        masks = widths.map { Self.probeMasks(width: $0, subRadius: radius / m) }
    }

    /// Chunk count minimising probes + expected candidates per query for uniform hashes.
    static func chunkCount(n: Int, radius: Int) -> Int {
        var best = 0, bestCost = Double.infinity
        // More than r + 1 chunks only adds probes, except that chunks must be narrow enough for a
        // table (≥ 3 chunks of ≤ 22 bits), which small radii need too.
        for m in 1...max(radius + 1, 3) {
            let width = 64 / m
            guard width <= maxChunkBits else { continue }
            let s = radius / m
            var probes = 0.0, term = 1.0
            for k in 0...s { if k > 0 { term *= Double(width - k + 1) / Double(k) }; probes += term }
            let candidates = probes * Double(n) / pow(2.0, Double(width))
            let cost = Double(m) * (probes + candidates)
            if cost < bestCost { bestCost = cost; best = m }
        }
        return max(best, 1)
    }

    /// Every chunk value within the sub-radius of 0 (XOR masks with ≤ ⌊r/m⌋ bits set), per
    /// chunk: probing value v ^ mask for each mask visits all buckets a query must check.
    private static func probeMasks(width: Int, subRadius s: Int) -> [UInt32] {
        var masks: [UInt32] = [0]
        func extend(_ mask: UInt32, from bit: Int, depth: Int) {
            guard depth < s else { return }
            for b in bit..<width {
                let m = mask | (1 << UInt32(b))
                masks.append(m)
                extend(m, from: b + 1, depth: depth + 1)
            }
        }
        extend(0, from: 0, depth: 0)
        return masks
    }

    /// Calls `found(id, distance)` once for every indexed hash within `radius` of `query`.
    /// With `afterID`, only ids greater than it are reported (a self-join visits each pair once).
    public func search(_ query: UInt64, afterID: Int = -1, _ found: (Int, Int) -> Void) {
        for c in 0..<bits.count {
            probe(chunk: c, query: query, idAbove: Int64(afterID)) { id, d in found(Int(id), d) }
        }
    }

    /// Probes chunk c's buckets within the sub-radius of the query's chunk value and emits each
    /// entry with an id above `idAbove` that is within the radius and that no earlier chunk finds.
    @inline(__always)
    private func probe(chunk c: Int, query: UInt64, idAbove: Int64, _ emit: (UInt32, Int) -> Void) {
        let own = Int((query >> UInt64(shifts[c])) & ((UInt64(1) << UInt64(bits[c])) - 1))
        let s = subRadius, r = radius
        offsets[c].withUnsafeBufferPointer { off in
            ids[c].withUnsafeBufferPointer { idp in
                sortedHashes[c].withUnsafeBufferPointer { hp in
                    for mask in masks[c] {
                        let v = own ^ Int(mask)
                        var k = Int(off[v])
                        let end = Int(off[v + 1])
                        while k < end {
                            if Int64(idp[k]) > idAbove {
                                let x = hp[k] ^ query
                                let d = x.nonzeroBitCount
                                if d <= r && !foundEarlier(x, before: c, subRadius: s) { emit(idp[k], d) }
                            }
                            k += 1
                        }
                    }
                }
            }
        }
    }

    /// Whether chunk c' < c already differs by at most the sub-radius (that chunk reported it).
    @inline(__always) private func foundEarlier(_ xor: UInt64, before c: Int, subRadius s: Int) -> Bool {
        var c2 = 0
        while c2 < c {
            let mask = (UInt64(1) << UInt64(bits[c2])) - 1
            if ((xor >> UInt64(shifts[c2])) & mask).nonzeroBitCount <= s { return true }
            c2 += 1
        }
        return false
    }

    /// Every pair (i < j) of indexed hashes within `radius`, on `workers` threads.
    ///
    /// Each chunk's table is joined with itself by walking its entries in bucket order: consecutive
    /// queries then share their chunk value's neighbourhood, so the few hundred buckets they probe
    /// stay in cache instead of costing a cache miss each (a 10× difference at a million hashes).
    /// A pair is reported by the first chunk in which it is within the sub-radius, by its smaller id.
    public func selfJoin(_ hashes: [UInt64], workers: Int = ProcessInfo.processInfo.activeProcessorCount) -> [HashPair] {
        precondition(hashes.count == count, "selfJoin takes the hashes the index was built from")
        let w = max(1, min(workers, hashes.count))
        let n = count
        // Each (chunk, worker) task writes only its own slot.
        nonisolated(unsafe) let results = UnsafeMutableBufferPointer<[HashPair]>.allocate(capacity: w * bits.count)
        results.initialize(repeating: [])
        defer { results.deinitialize(); results.deallocate() }
        for c in 0..<bits.count {
            DispatchQueue.concurrentPerform(iterations: w) { worker in
                var local: [HashPair] = []
                let table = sortedHashes[c], tableIDs = ids[c]
                for q in (n * worker / w)..<(n * (worker + 1) / w) {
                    let queryID = tableIDs[q]
                    probe(chunk: c, query: table[q], idAbove: Int64(queryID)) { id, d in
                        local.append(HashPair(a: queryID, b: id, distance: UInt8(d)))
                    }
                }
                results[c * w + worker] = local
            }
        }
        return results.flatMap { $0 }
    }
}

/// Two hashes of an index (a < b) and their Hamming distance.
public struct HashPair: Hashable, Sendable {
    public var a: UInt32
    public var b: UInt32
    public var distance: UInt8
}

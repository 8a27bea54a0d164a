import AsyncAlgorithms
import Foundation
import PIDiffModel
import PIDiffNative
import PIDiffCatalog

/// Producers (the scanner and the workers of a stage) send results into one channel; a single
/// consumer (the catalog writer) reads them. Either side can fail, and neither may leave the
/// other waiting forever on the channel:
/// - when the producers end, normally or by an error, the channel is finished, so the consumer
///   commits what arrived and returns;
/// - when the consumer fails (a commit error: disk full, database busy too long), the producers
///   are cancelled and the rest of the channel is drained, so no worker blocks in `send`.
enum ResultPipe {
    struct Outcome<Value: Sendable>: Sendable {
        /// What the consumer returned, or its error.
        var consumed: Result<Value, any Error>
        /// Whether the producers finished, or their error (a `CancellationError` after the
        /// consumer failed).
        var produced: Result<Void, any Error>

        /// The consumer's value when both sides succeeded; otherwise the error that explains the
        /// stop (the consumer's first: a producer's cancellation only follows from it).
        func get() throws -> Value {
            let value = try consumed.get()
            try produced.get()
            return value
        }
    }

    static func run<Element: Sendable, Value: Sendable>(
        _ channel: AsyncChannel<Element>,
        producers: @escaping @Sendable () async throws -> Void,
        consumer: (AsyncChannel<Element>) async throws -> Value
    ) async -> Outcome<Value> {
        let producing = Task {
            defer { channel.finish() }
            try await producers()
        }
        let consumed: Result<Value, any Error>
        do {
            consumed = .success(try await consumer(channel))
        } catch {
            producing.cancel()
            for await _ in channel {}
            consumed = .failure(error)
        }
        return Outcome(consumed: consumed, produced: await producing.result)
    }
}

/// The consumer's results waiting for one catalog transaction: due at 64 of them, or once the
/// oldest has waited `maxAge` seconds, so a killed run loses at most that much committed work
/// whatever the stage's pace (ingest makes tens of results a second, masks a few).
struct CommitBatch<Item> {
    var limit = 64
    var maxAge: TimeInterval = 0.25
    private(set) var items: [Item] = []
    private var oldest = Date()

    /// Adds `item`; true when the batch should be committed now.
    mutating func add(_ item: Item, now: Date = Date()) -> Bool {
        if items.isEmpty { oldest = now }
        items.append(item)
        return items.count >= limit || now.timeIntervalSince(oldest) >= maxAge
    }

    /// The items, leaving the batch empty.
    mutating func take() -> [Item] {
        defer { items.removeAll(keepingCapacity: true) }
        return items
    }
}

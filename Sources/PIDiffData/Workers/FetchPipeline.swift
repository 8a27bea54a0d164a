import AsyncHTTPClient
import Foundation
import PIDiffModel
import PIDiffCatalog

/// `fetch`: URL lists → downloads (bounded overall and per host, retried with backoff) →
/// content-addressed files `INBOX/<identity>/<sha256 prefix>.<ext>` → one state row per URL in the
/// catalog. The list is read as it goes and the catalog asked about a batch of lines at a time, so
/// memory does not grow with the list. A rerun skips what is stored and retries what failed.
public struct FetchPipeline: Sendable {
    public var lists: [String]
    public var inbox: URL
    public var catalogPath: String
    public var parameters: FetchParameters
    public var progress: ProgressMode

    public init(lists: [String], inbox: String, catalogPath: String, parameters: FetchParameters, progress: ProgressMode = .off) {
        self.lists = lists
        self.inbox = URL(fileURLWithPath: inbox).standardizedFileURL
        self.catalogPath = catalogPath
        self.parameters = parameters
        self.progress = progress
    }

    public struct Summary: Codable, Sendable {
        public var runID: Int64
        /// URL lines read (entries, not counting lines that were problems).
        public var listed = 0
        /// Stored by this run.
        public var downloaded = 0
        /// Bytes stored by this run.
        public var bytes = 0
        /// Fetched, but the same content was already in the inbox (another URL, or an earlier run).
        public var sameContent = 0
        /// Stored by an earlier run (skipped).
        public var alreadyDone = 0
        /// Failed in this run in a way that may pass; a later run retries them.
        public var failed = 0
        /// Refused for good in this run (404, not an image, too large, a refused address…).
        public var rejected = 0
        /// Skipped: rejected by an earlier run, or out of attempts.
        public var rejectedEarlier = 0
        public var givenUp = 0
        /// The same URL listed again in this run (fetched once).
        public var repeatedLines = 0
        /// HTTP attempts made in this run, retries included.
        public var attempts = 0
        /// Lines that were not usable entries, and URLs listed for another identity than before.
        public var problemCount = 0
        public var problems: [String] = []
        public var rejectedLists: [String] = []
        public var seconds = 0.0
        public var downloadsPerSecond = 0.0

        enum CodingKeys: String, CodingKey {
            case runID = "run_id", listed, downloaded, bytes, sameContent = "same_content", alreadyDone = "already_done", failed, rejected
            case rejectedEarlier = "rejected_earlier", givenUp = "given_up", repeatedLines = "repeated_lines", attempts
            case problemCount = "problem_count", problems, rejectedLists = "rejected_lists", seconds, downloadsPerSecond = "downloads_per_second"
        }

        public var counts: [String: Int] {
            ["listed": listed, "downloaded": downloaded, "bytes": bytes, "same_content": sameContent, "already_done": alreadyDone,
             "failed": failed, "rejected": rejected, "rejected_earlier": rejectedEarlier, "given_up": givenUp,
             "repeated_lines": repeatedLines, "attempts": attempts, "problems": problemCount]
        }
    }

    /// Lines read and looked up in the catalog at a time.
    static let batchLines = 256

    public func run() async throws -> Summary {
        try parameters.validate()
        let lock = try CatalogLock(catalogPath: catalogPath)
        try OutputPath.prepareFolder(inbox)
        let inboxLock = try CatalogLock(outputFolder: inbox)
        defer { withExtendedLifetime((lock, inboxLock)) {} }
        let catalog = try Catalog(path: catalogPath)
        let partial = inbox.appendingPathComponent(".partial")
        // Bodies of a run that was killed (no other run writes here: the inbox is locked).
        try? FileManager.default.removeItem(at: partial)
        try OutputPath.prepareFolder(partial)
        defer { try? FileManager.default.removeItem(at: partial) }

        let paramsJSON = String(decoding: try JSONEncoder.sorted.encode(parameters), as: UTF8.self)
        let runID = try RunRecorder.begin(catalog, command: "fetch", fingerprint: Hashing.fingerprint(parameters.fingerprintPayload),
                                          parameters: paramsJSON)
        let start = Date()
        let ledger = FetchLedger(catalog: catalog, inbox: inbox, runID: runID, progress: Progress(stage: "fetch", unit: "URLs", total: nil, mode: progress))
        let client = HTTPFetcher.makeClient(parameters)
        let fetcher = HTTPFetcher(client: client, parameters: parameters, partialFolder: partial)
        let gate = HostGate(perHost: parameters.perHost)
        let parameters = self.parameters
        var rejectedLists: [String] = []
        do {
            try await withThrowingTaskGroup(of: Void.self) { group in
                var running = 0
                for list in lists {
                    let reader: FetchListReader
                    do { reader = try FetchListReader(path: list) } catch let problem as ScanProblem {
                        rejectedLists.append("\(problem.location): \(problem.reason)")
                        continue
                    }
                    var done = false
                    while !done {
                        var batch: [FetchListEntry] = []
                        while batch.count < Self.batchLines {
                            let event: FetchListReader.Event?
                            do { event = try reader.next() } catch let problem as ScanProblem {
                                await ledger.problem(problem.location, problem.reason)
                                event = nil
                            }
                            guard let event else { done = true; break }
                            switch event {
                            case .entry(let entry): batch.append(entry)
                            case .problem(let location, let reason): await ledger.problem(location, reason)
                            }
                        }
                        let stored = try catalog.fetchStates(batch.map(\.url))
                        for entry in batch {
                            guard let record = await ledger.claim(entry, stored: stored[entry.url], parameters: parameters) else { continue }
                            if running >= parameters.concurrency {
                                try await group.next()
                                running -= 1
                            }
                            group.addTask {
                                let finished = await Self.fetch(record, fetcher: fetcher, gate: gate, parameters: parameters, ledger: ledger)
                                try await ledger.finish(finished.record, download: finished.download)
                            }
                            running += 1
                        }
                    }
                }
                try await group.waitForAll()
            }
            try await ledger.flush()
        } catch {
            try? await client.shutdown()
            var summary = await ledger.summary
            summary.rejectedLists = rejectedLists
            try? await ledger.flush()
            try? RunRecorder.finish(catalog, runID: runID, status: "failed", counts: summary.counts)
            throw error
        }
        try? await client.shutdown()
        var summary = await ledger.summary
        summary.rejectedLists = rejectedLists
        summary.seconds = Date().timeIntervalSince(start)
        summary.downloadsPerSecond = summary.seconds > 0 ? Double(summary.downloaded + summary.sameContent) / summary.seconds : 0
        await ledger.finishProgress()
        try RunRecorder.finish(catalog, runID: runID, status: "completed", counts: summary.counts)
        return summary
    }

    /// Tries one URL up to `attempts_per_run` times (and `max_attempts` over all runs), waiting
    /// between tries: Retry-After when the server gave one, else exponential backoff with full
    /// jitter. The host's slot is held only while a request is in flight.
    static func fetch(_ start: FetchURLRecord, fetcher: HTTPFetcher, gate: HostGate, parameters: FetchParameters,
                      ledger: FetchLedger) async -> (record: FetchURLRecord, download: HTTPFetcher.Download?) {
        var record = start
        let host = URL(string: record.url)?.host?.lowercased() ?? ""
        var tries = 0
        while true {
            await gate.enter(host)
            let result = await fetcher.attempt(record.url)
            await gate.leave(host)
            tries += 1
            record.attempts += 1
            await ledger.countAttempt()
            switch result {
            case .success(let download):
                record.httpStatus = download.httpStatus
                record.finalURL = download.finalURL == record.url ? nil : download.finalURL
                return (record, download)
            case .failure(let failure):
                record.httpStatus = failure.http
                record.error = failure.message
                guard case .transient(_, _, let retryAfter) = failure else {
                    record.status = .rejected
                    return (record, nil)
                }
                record.status = .failed
                if record.attempts >= parameters.maxAttempts {
                    record.error = failure.message + "; given up after \(record.attempts) attempts (fetch.max_attempts)"
                    return (record, nil)
                }
                if tries >= parameters.attemptsPerRun { return (record, nil) }
                if let retryAfter, retryAfter > parameters.maxRetryAfter {
                    record.error = failure.message + "; longer than fetch.max_retry_after, left for a later run"
                    return (record, nil)
                }
                let backoff = min(parameters.backoffMax, parameters.backoffBase * pow(2, Double(tries - 1)))
                let delay = retryAfter ?? Double.random(in: 0...backoff)
                do { try await Task.sleep(nanoseconds: UInt64(delay * 1_000_000_000)) } catch { return (record, nil) }
            }
        }
    }
}

/// Downloads in flight per host, at most `perHost`; others wait their turn in arrival order.
actor HostGate {
    private let perHost: Int
    private var inFlight: [String: Int] = [:]
    private var waiting: [String: [CheckedContinuation<Void, Never>]] = [:]
    init(perHost: Int) { self.perHost = perHost }

    func enter(_ host: String) async {
        if inFlight[host, default: 0] < perHost {
            inFlight[host, default: 0] += 1
            return
        }
        await withCheckedContinuation { waiting[host, default: []].append($0) }
    }

    func leave(_ host: String) {
        if var queue = waiting[host], !queue.isEmpty {
            let next = queue.removeFirst()
            waiting[host] = queue.isEmpty ? nil : queue
            next.resume()  // the slot passes on
        } else {
            inFlight[host, default: 1] -= 1
            if inFlight[host] == 0 { inFlight[host] = nil }
        }
    }
}

/// The one place that decides what happens to a URL and its file: which lines are fetched, where
/// a body is stored (one file per content), and the state rows, written in batches.
actor FetchLedger {
    private let catalog: Catalog
    private let inbox: URL
    private let runID: Int64
    private var progress: Progress
    private(set) var summary: FetchPipeline.Summary
    /// URLs of this run: in flight or finished (bounded by the batch buffer: older ones are in the catalog).
    private var inFlight: Set<String> = []
    private var unsaved: [FetchURLRecord] = []
    private var unsavedURLs: Set<String> = []
    /// Contents stored but not yet saved to the catalog: SHA-256 → (identity, url, path).
    private var unsavedContent: [String: (identity: String, url: String, path: String)] = [:]
    private var problems: [(location: String, reason: String)] = []
    private var finished = 0
    static let saveEvery = 64

    init(catalog: Catalog, inbox: URL, runID: Int64, progress: Progress) {
        self.catalog = catalog
        self.inbox = inbox
        self.runID = runID
        self.progress = progress
        summary = FetchPipeline.Summary(runID: runID)
    }

    func problem(_ location: String, _ reason: String) {
        summary.problemCount += 1
        if summary.problems.count < 1000 { summary.problems.append("\(location): \(reason)") }
        problems.append((location, reason))
    }

    func countAttempt() { summary.attempts += 1 }

    /// The record to fetch for `entry`, or nil when it is skipped (counted).
    func claim(_ entry: FetchListEntry, stored: FetchURLRecord?, parameters: FetchParameters) -> FetchURLRecord? {
        summary.listed += 1
        if inFlight.contains(entry.url) || unsavedURLs.contains(entry.url) || stored?.runID == runID {
            summary.repeatedLines += 1
            return nil
        }
        guard var record = stored else {
            inFlight.insert(entry.url)
            return FetchURLRecord(entry: entry, runID: runID)
        }
        if record.identity != entry.identity {
            problem(entry.location, "\(entry.url) is listed for \(entry.identity.debugDescription) here and for "
                    + "\(record.identity.debugDescription) at \(record.listedAt); kept \(record.identity.debugDescription)")
            return nil
        }
        switch record.status {
        case .done:
            if let path = record.path, record.inbox == inbox.path, FileManager.default.fileExists(atPath: inbox.appendingPathComponent(path).path) {
                summary.alreadyDone += 1
                return nil
            }
            if record.path == nil { summary.alreadyDone += 1; return nil }  // same content as another URL, stored there
        case .rejected:
            summary.rejectedEarlier += 1
            return nil
        case .failed:
            if record.attempts >= parameters.maxAttempts {
                summary.givenUp += 1
                return nil
            }
        }
        // Retried, or stored before but the file is gone (or was fetched into another inbox).
        record.license = entry.license ?? record.license
        record.source = entry.source ?? record.source
        record.runID = runID
        inFlight.insert(entry.url)
        return record
    }

    /// Stores a finished download under its content's name and records the URL's state.
    func finish(_ finishedRecord: FetchURLRecord, download: HTTPFetcher.Download?) throws {
        var record = finishedRecord
        record.updatedAt = ISO8601DateFormatter().string(from: Date())
        record.runID = runID
        if let download {
            record.sha256 = download.sha256
            record.bytes = download.bytes
            record.format = download.format.rawValue
            record.error = nil
            let ext = download.format == .jpeg ? "jpg" : download.format.rawValue
            let relative = "\(record.identity)/\(download.sha256.prefix(16)).\(ext)"
            let owner = try unsavedContent[download.sha256].map { (identity: $0.identity, url: $0.url) }
                ?? catalog.fetchedContent(sha256: download.sha256).map { (identity: $0.identity, url: $0.url) }
            if let owner, owner.identity != record.identity {
                // One content, one identity: a second identity's copy would be a cross-identity duplicate.
                try? FileManager.default.removeItem(at: download.temporary)
                record.status = .rejected
                record.error = "same content as \(owner.url), stored for \(owner.identity.debugDescription)"
                summary.rejected += 1
            } else {
                let target = inbox.appendingPathComponent(relative)
                if FileManager.default.fileExists(atPath: target.path) {
                    try? FileManager.default.removeItem(at: download.temporary)
                    summary.sameContent += 1
                } else {
                    try OutputPath.prepareFolder(target.deletingLastPathComponent())
                    guard rename(download.temporary.path, target.path) == 0 else {
                        throw OutputPath.Failure(path: target.path, reason: String(cString: strerror(errno)))
                    }
                    summary.downloaded += 1
                    summary.bytes += download.bytes
                }
                record.status = .done
                record.inbox = inbox.path
                record.path = relative
                unsavedContent[download.sha256] = (record.identity, record.url, relative)
            }
        } else {
            switch record.status {
            case .rejected: summary.rejected += 1
            default: summary.failed += 1
            }
        }
        inFlight.remove(record.url)
        unsaved.append(record)
        unsavedURLs.insert(record.url)
        finished += 1
        progress.update(done: finished)
        if unsaved.count >= Self.saveEvery { try flush() }
    }

    /// Saves the buffered states and problems in one transaction each.
    func flush() throws {
        try catalog.saveFetchStates(unsaved)
        try catalog.recordProblems(runID: runID, problems)
        unsaved.removeAll(keepingCapacity: true)
        unsavedURLs.removeAll(keepingCapacity: true)
        unsavedContent.removeAll(keepingCapacity: true)
        problems.removeAll()
    }

    func finishProgress() { progress.finish() }
}

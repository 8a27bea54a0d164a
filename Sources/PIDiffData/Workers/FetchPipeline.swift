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
    /// URLs earlier runs rejected (a private address, too large, not an image, an opt-out) are
    /// fetched again, their attempts counted afresh: for after the setting that refused them changed.
    public var retryRejected: Bool

    public init(lists: [String], inbox: String, catalogPath: String, parameters: FetchParameters, progress: ProgressMode = .off,
                retryRejected: Bool = false) {
        self.lists = lists
        // Symlinks resolved: the same inbox reached another way is the same inbox (stored paths,
        // the skip of stored URLs).
        self.inbox = URL(fileURLWithPath: inbox).standardizedFileURL.resolvingSymlinksInPath()
        self.catalogPath = catalogPath
        self.parameters = parameters
        self.progress = progress
        self.retryRejected = retryRejected
    }

    public struct Summary: Codable, Sendable {
        public var runID: Int64
        /// URL lines read as entries (lines that are not entries are problems, not counted here).
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
        /// HTTP requests started in this run, retries included (URLs refused before any request,
        /// for their scheme or address, make none).
        public var attempts = 0
        /// Lines that were not usable entries, and URLs listed for another identity than before.
        public var problemCount = 0
        /// The cap on `problems` (all of them are in the catalog's run problems).
        public var problemsListedMax = 1000
        public var problems: [String] = []
        public var rejectedLists: [String] = []
        public var seconds = 0.0
        public var downloadsPerSecond = 0.0

        enum CodingKeys: String, CodingKey {
            case runID = "run_id", listed, downloaded, bytes, sameContent = "same_content", alreadyDone = "already_done", failed, rejected
            case rejectedEarlier = "rejected_earlier", givenUp = "given_up", repeatedLines = "repeated_lines", attempts
            case problemCount = "problem_count", problemsListedMax = "problems_listed_max", problems, rejectedLists = "rejected_lists", seconds, downloadsPerSecond = "downloads_per_second"
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
        let reserved = try Self.catalogFolders(catalog)
        if let folder = reserved.first(where: { inbox.path == $0.path || inbox.path.hasPrefix($0.path + "/") }) {
            throw PipelineError.invalid(inbox.path, "inside the catalog's own folder \(folder.path); give an inbox of its own")
        }
        let partial = inbox.appendingPathComponent(".partial")
        // Bodies of a run that was killed (no other run writes here: the inbox is locked).
        try? FileManager.default.removeItem(at: partial)
        try OutputPath.prepareFolder(partial)
        defer { try? FileManager.default.removeItem(at: partial) }

        let paramsJSON = String(decoding: try JSONEncoder.sorted.encode(parameters), as: UTF8.self)
        let runID = try RunRecorder.begin(catalog, command: "fetch", fingerprint: Hashing.fingerprint(parameters.fingerprintPayload),
                                          parameters: paramsJSON)
        let start = Date()
        let ledger = FetchLedger(catalog: catalog, inbox: inbox, runID: runID, progress: Progress(stage: "fetch", unit: "URLs", total: nil, mode: progress),
                                 reservedNames: Set(reserved.filter { $0.deletingLastPathComponent().path == inbox.path }.map(\.lastPathComponent)))
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
                        await ledger.snapshotTaken()
                        for entry in batch {
                            guard let record = await ledger.claim(entry, stored: stored[entry.url], parameters: parameters,
                                                                         retryRejected: retryRejected) else { continue }
                            if running >= parameters.concurrency {
                                try await group.next()
                                running -= 1
                            }
                            group.addTask {
                                // Nil: cancelled (the run is stopping); nothing is recorded against the URL.
                                guard let finished = try await Self.fetch(record, fetcher: fetcher, gate: gate, parameters: parameters,
                                                                          ledger: ledger) else { return }
                                try await ledger.finish(finished.record, download: finished.download, parameters: parameters)
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
            try? await ledger.flush()
            try? RunRecorder.finish(catalog, runID: runID, status: "failed", counts: await ledger.summary.counts)
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
                      ledger: FetchLedger) async throws -> (record: FetchURLRecord, download: HTTPFetcher.Download?)? {
        var record = start
        let host = URL(string: record.url)?.host?.lowercased() ?? ""
        var tries = 0
        while true {
            await gate.enter(host)
            let result = await fetcher.attempt(record.url)
            await gate.leave(host)
            if Task.isCancelled { return nil }
            if case .failure(.local(let why)) = result { throw FetchStopped(reason: why) }
            if case .failure(.refused(let why)) = result {
                record.status = .rejected
                record.error = why
                return (record, nil)
            }
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
                do { try await Task.sleep(nanoseconds: UInt64(delay * 1_000_000_000)) } catch { return nil }
            }
        }
    }
}

/// This machine cannot store what it downloads (disk full, read-only, permissions): the run
/// stops, and no URL is charged an attempt for it.
struct FetchStopped: Error, CustomStringConvertible {
    var reason: String
    var description: String { "fetch stopped: \(reason); URLs not yet stored are tried again by the next run" }
}

extension FetchPipeline {
    /// The catalog's file, its sidecars, data root and work folder: an inbox must not be inside
    /// them, and no identity folder of an inbox may be one of them.
    static func catalogFolders(_ catalog: Catalog) throws -> [URL] {
        let file = URL(fileURLWithPath: CatalogLock.resolved(catalog.path))
        // The recorded data root, else the default ingest would record: fetch itself fixes none
        // (a later `ingest --data-root` still chooses it).
        let dataRoot = try catalog.recordedDataRoot() ?? URL(fileURLWithPath: catalog.path + ".data").standardizedFileURL
        return [dataRoot.resolvingSymlinksInPath(), URL(fileURLWithPath: file.path + ".work"), file]
            + ["-wal", "-shm", "-journal", ".lock", ".run.lock"].map { URL(fileURLWithPath: file.path + $0) }
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
    /// URLs of this run in flight, with their identity.
    private var inFlight: [String: String] = [:]
    /// Finished, not yet saved.
    private var unsaved: [FetchURLRecord] = []
    private var unsavedURLs: [String: String] = [:]
    /// Saved since the catalog was last asked about a batch of lines (that answer is older than
    /// these rows): URL → identity. Bounded by what finishes while one batch is claimed.
    private var savedSinceSnapshot: [String: String] = [:]
    /// Folder names an identity may not take (the catalog's own files, when the inbox holds them).
    private let reservedNames: Set<String>
    /// Contents stored but not yet saved to the catalog: SHA-256 → (identity, url, path).
    private var unsavedContent: [String: (identity: String, url: String, path: String)] = [:]
    private var problems: [(location: String, reason: String)] = []
    private var finished = 0
    /// Finished URLs are saved 64 at a time, or when one finishes two seconds after the last save:
    /// a run killed on slow hosts loses at most that much work (the files stay; a rerun finds them
    /// as stored content).
    static let saveEvery = 64
    static let saveAfter: TimeInterval = 2
    private var lastSave = Date.distantPast

    init(catalog: Catalog, inbox: URL, runID: Int64, progress: Progress, reservedNames: Set<String> = []) {
        self.catalog = catalog
        self.inbox = inbox
        self.runID = runID
        self.progress = progress
        self.reservedNames = reservedNames
        summary = FetchPipeline.Summary(runID: runID)
    }

    func problem(_ location: String, _ reason: String) {
        summary.problemCount += 1
        if summary.problems.count < summary.problemsListedMax { summary.problems.append("\(location): \(reason)") }
        problems.append((location, reason))
        if problems.count >= 256 { try? saveProblems() }
    }

    /// The catalog was just asked about the next batch: rows saved before are in its answer.
    func snapshotTaken() { savedSinceSnapshot.removeAll(keepingCapacity: true) }

    func countAttempt() { summary.attempts += 1 }

    /// The record to fetch for `entry`, or nil when it is skipped (counted).
    func claim(_ entry: FetchListEntry, stored: FetchURLRecord?, parameters: FetchParameters, retryRejected: Bool) -> FetchURLRecord? {
        summary.listed += 1
        if reservedNames.contains(entry.identity) {
            problem(entry.location, "identity \(entry.identity.debugDescription) would be the folder of the catalog's own files in this inbox")
            return nil
        }
        // Listed before in this run: in flight, finished but unsaved, or saved after the catalog
        // answered for this batch.
        if let identity = inFlight[entry.url] ?? unsavedURLs[entry.url] ?? savedSinceSnapshot[entry.url]
            ?? (stored?.runID == runID ? stored?.identity : nil) {
            if identity == entry.identity {
                summary.repeatedLines += 1
            } else {
                listedTwice(entry, kept: identity, where: "earlier in this run")
            }
            return nil
        }
        guard var record = stored else {
            inFlight[entry.url] = entry.identity
            return FetchURLRecord(entry: entry, runID: runID)
        }
        if record.identity != entry.identity {
            listedTwice(entry, kept: record.identity, where: "at \(record.listedAt)")
            return nil
        }
        switch record.status {
        case .done:
            if let path = record.path, record.inbox == inbox.path, FileManager.default.fileExists(atPath: inbox.appendingPathComponent(path).path) {
                summary.alreadyDone += 1
                return nil
            }
        case .rejected:
            guard retryRejected else {
                summary.rejectedEarlier += 1
                return nil
            }
            record.attempts = 0
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
        inFlight[entry.url] = entry.identity
        return record
    }

    /// A URL listed for a second identity: the first is kept.
    private func listedTwice(_ entry: FetchListEntry, kept identity: String, where earlier: String) {
        problem(entry.location, "\(entry.url) is listed for \(entry.identity.debugDescription) here and for "
                + "\(identity.debugDescription) \(earlier); kept \(identity.debugDescription)")
    }

    /// Stores a finished download under its content's name and records the URL's state.
    func finish(_ finishedRecord: FetchURLRecord, download: HTTPFetcher.Download?, parameters: FetchParameters) throws {
        var record = finishedRecord
        record.updatedAt = Date().ISO8601Format()
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
            if let owner, owner.identity != record.identity, owner.url != record.url {
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
                    stored(record: &record, relative: relative, sha256: download.sha256)
                } else if let why = try place(download.temporary, at: target) {
                    // This identity's folder cannot be made (a file in the way, a name the file
                    // system refuses): the URL is refused with why, the run goes on.
                    try? FileManager.default.removeItem(at: download.temporary)
                    record.status = .rejected
                    record.error = "cannot store it as \(relative): \(why)"
                    summary.rejected += 1
                } else {
                    summary.downloaded += 1
                    summary.bytes += download.bytes
                    stored(record: &record, relative: relative, sha256: download.sha256)
                }
            }
        } else {
            switch record.status {
            case .rejected: summary.rejected += 1
            default:
                if record.attempts >= parameters.maxAttempts { summary.givenUp += 1 } else { summary.failed += 1 }
            }
        }
        inFlight[record.url] = nil
        unsaved.append(record)
        unsavedURLs[record.url] = record.identity
        finished += 1
        progress.update(done: finished)
        if unsaved.count >= Self.saveEvery || Date().timeIntervalSince(lastSave) >= Self.saveAfter { try flush() }
    }

    private func stored(record: inout FetchURLRecord, relative: String, sha256: String) {
        record.status = .done
        record.inbox = inbox.path
        record.path = relative
        unsavedContent[sha256] = (record.identity, record.url, relative)
    }

    /// Moves a complete body to its place; the reason when the item's own path is at fault, a
    /// thrown `FetchStopped` when this machine cannot write at all (full, read-only).
    private func place(_ temporary: URL, at target: URL) throws -> String? {
        let folder = target.deletingLastPathComponent()
        if mkdir(folder.path, 0o755) != 0 && errno != EEXIST { return try Self.itemFault(errno) }
        var isFolder: ObjCBool = false
        guard FileManager.default.fileExists(atPath: folder.path, isDirectory: &isFolder), isFolder.boolValue else {
            return "\(folder.lastPathComponent) is a file, not a folder"
        }
        return rename(temporary.path, target.path) == 0 ? nil : try Self.itemFault(errno)
    }

    /// The reason for an error of one item's path; machine-wide errors stop the run.
    private static func itemFault(_ code: Int32) throws -> String {
        let reason = String(cString: strerror(code))
        if [ENOSPC, EROFS, EDQUOT, EACCES, EPERM, EIO].contains(code) { throw FetchStopped(reason: reason) }
        return reason
    }

    /// Saves the buffered states and problems in one transaction each.
    func flush() throws {
        lastSave = Date()
        try catalog.saveFetchStates(unsaved)
        try saveProblems()
        for record in unsaved { savedSinceSnapshot[record.url] = record.identity }
        unsaved.removeAll(keepingCapacity: true)
        unsavedURLs.removeAll(keepingCapacity: true)
        unsavedContent.removeAll(keepingCapacity: true)
    }

    private func saveProblems() throws {
        try catalog.recordProblems(runID: runID, problems)
        problems.removeAll(keepingCapacity: true)
    }

    func finishProgress() { progress.finish() }
}

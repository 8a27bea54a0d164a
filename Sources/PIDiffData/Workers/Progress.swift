import Foundation

/// How a long stage reports progress: redrawn in place on a terminal, a JSON line every few
/// seconds otherwise (cron logs, `run`), or not at all (library use, tests).
public enum ProgressMode: Sendable {
    case terminal, jsonLines, off

    /// `terminal` when stderr is one, else `jsonLines`.
    public static var forStandardError: ProgressMode { isatty(STDERR_FILENO) == 1 ? .terminal : .jsonLines }
}

/// `done/total unit, rate, ETA` for one stage. The unit says what is counted (photos, faces,
/// samples, artefacts): counts never mix things.
struct Progress {
    let stage: String
    let unit: String
    let total: Int?
    let mode: ProgressMode
    let start = Date()
    private var last = Date()
    /// The latest count, and the count the latest JSON line showed (nil: none printed yet).
    private var done = 0
    private var printed: Int?
    /// Seconds between JSON lines; the first comes after this long, so short stages print none.
    /// `$PIDIFF_PROGRESS_INTERVAL` (seconds, ≥ 0) sets another: a log that wants fewer lines, a
    /// test that wants every one.
    static let jsonInterval: TimeInterval = ProcessInfo.processInfo.environment["PIDIFF_PROGRESS_INTERVAL"]
        .flatMap { TimeInterval($0) }.flatMap { $0 >= 0 && $0.isFinite ? $0 : nil } ?? 10

    init(stage: String, unit: String, total: Int?, mode: ProgressMode) {
        self.stage = stage
        self.unit = unit
        self.total = total
        self.mode = mode
    }

    mutating func update(done: Int) {
        self.done = done
        let now = Date()
        switch mode {
        case .off: return
        case .terminal: guard now.timeIntervalSince(last) > 0.2 || done == total else { return }
        case .jsonLines: guard now.timeIntervalSince(last) >= Self.jsonInterval else { return }
        }
        last = now
        emit(done: done, now: now)
    }

    private mutating func emit(done: Int, now: Date) {
        let elapsed = now.timeIntervalSince(start)
        let rate = elapsed > 0 ? Double(done) / elapsed : 0
        let eta = total.flatMap { total in rate > 0 ? Double(max(0, total - done)) / rate : nil }
        if mode == .terminal {
            let of = total.map { "/\($0)" } ?? ""
            let etaText = eta.map { String(format: "  ETA %02d:%02d", Int($0) / 60, Int($0) % 60) } ?? ""
            FileHandle.standardError.write(Data(String(format: "\r%@: %d%@ %@  %.1f/s%@  ", stage, done, of, unit, rate, etaText).utf8))
        } else {
            var line: [String: Any] = ["progress": stage, "unit": unit, "done": done, "elapsed_s": Int(elapsed), "per_s": (rate * 100).rounded() / 100]
            if let total { line["total"] = total }
            if let eta { line["eta_s"] = Int(eta) }
            if let data = try? JSONSerialization.data(withJSONObject: line, options: [.sortedKeys]) {
                FileHandle.standardError.write(data + Data("\n".utf8))
            }
            printed = done
        }
    }

    /// Ends the line on a terminal. In JSON lines, a stage that printed any line prints its
    /// final count too, so its log ends at the total rather than up to an interval before it.
    func finish() {
        switch mode {
        case .off: return
        case .terminal: FileHandle.standardError.write(Data("\n".utf8))
        case .jsonLines:
            guard let printed, printed != done else { return }
            var last = self
            last.emit(done: done, now: Date())
        }
    }
}

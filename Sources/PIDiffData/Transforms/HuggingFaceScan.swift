import Foundation
import CSV
import PIDiffModel

/// Hugging Face dataset layouts as sources (Docs/sources.md).
enum HuggingFace {
    static let metadataNames: Set<String> = ["metadata.csv", "metadata.jsonl"]

    /// Whether `folder`'s root holds an imagefolder metadata file. Both at once is refused, as the
    /// `datasets` library refuses it: which one holds the labels would be a guess.
    static func isImageFolder(_ folder: String) throws -> Bool {
        let present = metadataNames.sorted().filter { FileManager.default.fileExists(atPath: folder + "/" + $0) }
        if present.count > 1 {
            throw ScanProblem(location: folder, reason: "holds both \(present.joined(separator: " and ")); keep one metadata file")
        }
        return !present.isEmpty
    }
}

extension Scanner {
    // MARK: imagefolder

    /// `metadata.csv` (streamed row by row through CSV.swift) or `metadata.jsonl`: each row's
    /// `file_name`, relative to the folder, is a photo of the identity in the identity column; the
    /// label columns give its caption and raw labels. Rows are emitted in file order.
    func scanImageFolder(_ folder: String, emit: (ScanEvent) async throws -> Void) async throws {
        let csvPath = folder + "/metadata.csv", jsonlPath = folder + "/metadata.jsonl"
        if FileManager.default.fileExists(atPath: csvPath) {
            try await scanMetadataCSV(csvPath, folder: folder, emit: emit)
        } else {
            try await scanMetadataJSONL(jsonlPath, folder: folder, emit: emit)
        }
    }

    /// One metadata row as an item, or the problem that keeps it out. `location` names the file and row.
    private func imageFolderItem(_ value: (String) -> String?, folder: String, metadata: String, location: String) -> ScanEvent {
        let hf = huggingFace
        guard let fileName = value("file_name") else {
            return .problem(ScanProblem(location: location, reason: "no `file_name`"))
        }
        guard let identity = value(hf.identityColumn) else {
            return .problem(ScanProblem(location: location, reason: "identity column `\(hf.identityColumn)` is empty"))
        }
        let path = URL(fileURLWithPath: folder).appendingPathComponent(fileName).standardizedFileURL.path
        guard !fileName.hasPrefix("/"), path.hasPrefix(folder + "/") else {
            return .problem(ScanProblem(location: location, reason: "file_name \(fileName.debugDescription) is outside the folder holding the metadata"))
        }
        var item = ScanItem(path: path, identity: identity, sourceKind: .imagefolder, sourceLocation: folder)
        item.caption = hf.captionColumn.isEmpty ? nil : value(hf.captionColumn)
        item.labels = RawLabels(race: hf.raceColumn.isEmpty ? nil : value(hf.raceColumn),
                                age: hf.ageColumn.isEmpty ? nil : value(hf.ageColumn),
                                gender: hf.genderColumn.isEmpty ? nil : value(hf.genderColumn))
        return .item(item)
    }

    /// Refuses a source whose header lacks `file_name` or the identity column, naming what it has.
    private func requireColumns(_ columns: [String], in metadata: String) throws {
        for (column, setting) in [("file_name", nil), (huggingFace.identityColumn, "huggingface.identity_column")] as [(String, String?)]
        where !columns.contains(column) {
            throw ScanProblem(location: metadata, reason: "no \(setting == nil ? "" : "identity ")column `\(column)` (columns present: "
                              + (columns.isEmpty ? "none" : columns.joined(separator: ", ")) + ")" + (setting.map { "; set \($0)" } ?? ""))
        }
    }

    private func scanMetadataCSV(_ metadata: String, folder: String, emit: (ScanEvent) async throws -> Void) async throws {
        guard let stream = InputStream(fileAtPath: metadata) else {
            throw ScanProblem(location: metadata, reason: "cannot open metadata file")
        }
        let reader: CSVReader
        do { reader = try CSVReader(stream: stream, hasHeaderRow: true) } catch {
            throw ScanProblem(location: metadata, reason: "no header row (\(error))")
        }
        var header = reader.headerRow ?? []
        if let first = header.first, first.hasPrefix("\u{FEFF}") { header[0] = String(first.dropFirst()) }  // a UTF-8 byte-order mark
        try requireColumns(header, in: metadata)
        let index = Dictionary(header.enumerated().map { ($0.element, $0.offset) }, uniquingKeysWith: { first, _ in first })
        // Records are numbered as lines are in a file without quoted line breaks: the header is 1.
        var record = 1
        while let row = reader.next() {
            record += 1
            let location = "\(metadata):\(record)"
            // CSV.swift stops at bytes that are not UTF-8 (`unicodeDecoding`) or a failing read, and
            // the row it was reading is cut short: it is not used, and the rows before it are kept.
            // `cannotReadFile` is how it reports the end of the file.
            if let error = reader.error, !Self.isEndOfFile(error) {
                throw ScanProblem(location: location, reason: "cannot read on (\(error)); rows before it were scanned")
            }
            if row == [""] { continue }  // a blank line
            guard row.count == header.count else {
                try await emit(.problem(ScanProblem(location: location, reason: "\(row.count) fields, the header has \(header.count)")))
                continue
            }
            let event = imageFolderItem({ column in index[column].flatMap { row[$0].isEmpty ? nil : row[$0] } },
                                        folder: folder, metadata: metadata, location: location)
            try await emit(event)
        }
        if let error = reader.error, !Self.isEndOfFile(error) {
            throw ScanProblem(location: "\(metadata):\(record + 1)", reason: "cannot read on (\(error)); rows before it were scanned")
        }
    }

    static func isEndOfFile(_ error: Error) -> Bool {
        if let error = error as? CSVError, case .cannotReadFile = error { return true }
        return false
    }

    private func scanMetadataJSONL(_ metadata: String, folder: String, emit: (ScanEvent) async throws -> Void) async throws {
        // The first object decides the columns the source has (as the header does for CSV).
        var checked = false
        try await jsonLines(metadata, emit: emit) { number, obj in
            if !checked {
                try requireColumns(obj.keys.sorted(), in: metadata)
                checked = true
            }
            try await emit(imageFolderItem({ Scanner.text(obj[$0]) }, folder: folder, metadata: metadata, location: "\(metadata):\(number)"))
        }
        if !checked { throw ScanProblem(location: metadata, reason: "no JSON object lines") }
    }

    // MARK: Parquet

    /// Rows of a Parquet file, read by pyarrow in a child process (`ParquetRows`), as items whose
    /// path is the stored, content-addressed image and whose origin is `<file>#row=<index>`.
    func scanParquet(_ file: String, emit: (ScanEvent) async throws -> Void) async throws {
        guard let cache = sourceCache else {
            throw ScanProblem(location: file, reason: "Parquet sources need a catalog's data root to store their images in")
        }
        var rowsSeen = 0
        let finished = try await runParquetReader(file, cache: cache, countOnly: false) { line in
            switch line["type"] as? String {
            case "row":
                guard let row = line["row"] as? Int, let identity = line["identity"] as? String, let path = line["path"] as? String else {
                    throw ScanProblem(location: file, reason: "the Parquet reader sent a malformed row line")
                }
                rowsSeen += 1
                var item = ScanItem(path: path, identity: identity, sourceKind: .parquet, sourceLocation: file)
                let labels = line["labels"] as? [String: String] ?? [:]
                item.caption = labels["caption"]
                item.labels = RawLabels(race: labels["race"], age: labels["age"], gender: labels["gender"])
                item.origin = "\(file)#row=\(row)"
                try await emit(.item(item))
            case "problem":
                let rows = line["rows"] as? String ?? "?"
                try await emit(.problem(ScanProblem(location: "\(file)#row\(rows.contains("-") ? "s" : "")=\(rows)",
                                                    reason: line["reason"] as? String ?? "unreadable row")))
            default:
                break
            }
        }
        guard finished else {
            throw ScanProblem(location: file, reason: "the Parquet reader stopped after \(rowsSeen) rows without reaching the end")
        }
    }

    /// Rows the Parquet file says it has (from its footer, nothing extracted): the progress total.
    func parquetRowCount(_ file: String) async -> Int {
        var rows = 0
        _ = try? await runParquetReader(file, cache: sourceCache ?? "/nonexistent", countOnly: true) { line in
            if line["type"] as? String == "schema" { rows = line["rows"] as? Int ?? 0 }
        }
        return rows
    }

    /// Runs the reader, handing each line to `body`; true when the reader reached the file's end
    /// (or, counting, its schema). A `refused` line is a source-level `ScanProblem`; a `fatal` one
    /// (the cache cannot be written) stops the run as any data-root failure does.
    private func runParquetReader(_ file: String, cache: String, countOnly: Bool,
                                  body: ([String: Any]) async throws -> Void) async throws -> Bool {
        let hf = huggingFace
        let request = ParquetRows.Request(parquet: file, cache: cache, identity: hf.identityColumn, image: hf.imageColumn,
                                          labels: Dictionary(uniqueKeysWithValues: hf.labelColumns.map { ($0.label, $0.column) }),
                                          batchRows: hf.parquetBatchRows, countOnly: countOnly,
                                          partition: partition.map { [$0.index, $0.count] },
                                          rowKey: (file as NSString).lastPathComponent + "#row=")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: python)
        process.arguments = (python == "/usr/bin/env" ? ["python3"] : [])
            + ["-", String(decoding: try JSONEncoder.sorted.encode(request), as: UTF8.self)]  // the program comes on stdin
        let stdout = Pipe()
        let errURL = FileManager.default.temporaryDirectory.appendingPathComponent("pidiff-parquet-\(UUID().uuidString).err")
        FileManager.default.createFile(atPath: errURL.path, contents: nil)
        defer { try? FileManager.default.removeItem(at: errURL) }
        let errHandle = try FileHandle(forWritingTo: errURL)
        process.standardOutput = stdout
        process.standardError = errHandle
        let stdin = Pipe()
        process.standardInput = stdin
        do { try process.run() } catch {
            try? errHandle.close()
            throw ScanProblem(location: file, reason: "cannot start \(python) to read Parquet (\(error)); set PIDIFF_PYTHON to a Python with pyarrow")
        }
        try? errHandle.close()
        // The program is a few kB, well under a pipe's buffer: the write does not wait for the child.
        try? stdin.fileHandleForWriting.write(contentsOf: Data(ParquetRows.script.utf8))
        try? stdin.fileHandleForWriting.close()
        let output = stdout.fileHandleForReading
        var finished = false
        do {
            defer {
                // Closing our end first makes a child still writing stop at the pipe (EPIPE).
                try? output.close()
                if process.isRunning { process.terminate() }
                process.waitUntilExit()
            }
            let reader = LineReader(handle: output)
            while let next = reader.next() {
                try Task.checkCancellation()
                guard case .text(let text) = next, !text.isEmpty else { continue }
                guard let line = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any] else {
                    throw ScanProblem(location: file, reason: "the Parquet reader wrote something that is not a JSON line: \(text.prefix(200))")
                }
                switch line["type"] as? String {
                case "refused": throw ScanProblem(location: file, reason: line["reason"] as? String ?? "refused")
                case "fatal": throw ParquetSourceError.cache(file, line["reason"] as? String ?? "cannot store images")
                case "end": finished = true
                case "schema" where countOnly: finished = true; try await body(line)
                default: try await body(line)
                }
            }
        }
        if !finished || process.terminationStatus != 0 {
            let stderr = ((try? String(contentsOf: errURL, encoding: .utf8)) ?? "").split(separator: "\n").suffix(3).joined(separator: " | ")
            if !finished {
                throw ScanProblem(location: file, reason: "the Parquet reader (\(python)) stopped with exit status \(process.terminationStatus)"
                                  + (stderr.isEmpty ? "" : ": \(stderr)"))
            }
        }
        return finished
    }
}

/// The source cache under the data root cannot be written: like any data-root failure, this stops
/// the run (every later row would fail the same way) instead of being recorded per row.
public enum ParquetSourceError: Error, CustomStringConvertible {
    case cache(String, String)
    public var description: String {
        switch self {
        case .cache(let file, let why):
            return "ingest stopped reading \(file): \(why) (the data root must be writable and have free space; run ingest again once it is fixed)"
        }
    }
}

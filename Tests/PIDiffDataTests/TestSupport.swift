import Foundation
import XCTest
@testable import PIDiffData
@testable import PIDiffModel
@testable import PIDiffNative
@testable import PIDiffCatalog

/// Paths and helpers shared by the tests. Tests use the real sample photos and models that
/// scripts/setup.sh puts in the cache; they fail with a pointer to setup when those are missing.
enum TestSupport {
    static let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static var fixtures: URL { repoRoot.appendingPathComponent("Tests/Fixtures") }
    static var sampleIdentities: URL { ModelStore.cacheDirectory.appendingPathComponent("sample/identities") }
    static var obama: URL { sampleIdentities.appendingPathComponent("obama/obama.jpg") }
    static var python: String { repoRoot.appendingPathComponent(".venv/bin/python").path }

    /// The CLI built next to the test bundle (swift build builds it before swift test runs).
    static var cli: URL {
        let bundle = Bundle.main.bundleURL.deletingLastPathComponent()
        for dir in [bundle, repoRoot.appendingPathComponent(".build/debug")] {
            let url = dir.appendingPathComponent("pidiff-data")
            if FileManager.default.isExecutableFile(atPath: url.path) { return url }
        }
        return repoRoot.appendingPathComponent(".build/debug/pidiff-data")
    }

    static func requireAssets(file: StaticString = #filePath, line: UInt = #line) throws {
        guard FileManager.default.fileExists(atPath: obama.path),
              FileManager.default.fileExists(atPath: ModelStore().directory.appendingPathComponent(ModelStore.predictor68).path) else {
            XCTFail("sample photos or models missing under \(ModelStore.cacheDirectory.path): run scripts/setup.sh", file: file, line: line)
            throw XCTSkip("assets missing")
        }
    }

    /// Every test's folders live in one folder per test process, removed when the process exits
    /// (the encode test alone writes ~450 MB); PIDIFF_KEEP_TEST_FILES=1 keeps it for a look.
    static let scratchRoot: URL = {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("pidiff-tests-\(getpid())")
        atexit {
            if ProcessInfo.processInfo.environment["PIDIFF_KEEP_TEST_FILES"] == nil {
                try? FileManager.default.removeItem(at: TestSupport.scratchRoot)
            }
        }
        return root
    }()

    static func temporaryDirectory(_ name: String = #function) throws -> URL {
        let safe = name.filter { $0.isLetter || $0.isNumber }
        let url = scratchRoot.appendingPathComponent("\(safe)-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }

    struct ProcessResult { var status: Int32; var stdout: String; var stderr: String }

    /// Runs a program to completion, capturing its output.
    @discardableResult
    static func run(_ executable: String, _ arguments: [String], environment: [String: String]? = nil) throws -> ProcessResult {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: executable)
        p.arguments = arguments
        if let environment { p.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 } }
        // stdout through a pipe, stderr through a file: neither can fill up and block the child.
        let out = Pipe()
        let errURL = FileManager.default.temporaryDirectory.appendingPathComponent("pidiff-stderr-\(UUID().uuidString)")
        FileManager.default.createFile(atPath: errURL.path, contents: nil)
        defer { try? FileManager.default.removeItem(at: errURL) }
        let errHandle = try FileHandle(forWritingTo: errURL)
        p.standardOutput = out
        p.standardError = errHandle
        try p.run()
        let outData = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        try errHandle.close()
        let errData = (try? Data(contentsOf: errURL)) ?? Data()
        return ProcessResult(status: p.terminationStatus, stdout: String(decoding: outData, as: UTF8.self),
                             stderr: String(decoding: errData, as: UTF8.self))
    }

    static func runCLI(_ arguments: [String]) throws -> ProcessResult { try run(cli.path, arguments) }

    /// Ingests `sources` in-process and returns the summary.
    static func ingest(_ sources: [URL], catalog: URL, config: PipelineConfig = PipelineConfig()) async throws -> IngestSummary {
        try await IngestPipeline(sources: sources.map(\.path), catalogPath: catalog.path, config: config).run()
    }

    /// Rows of the data tables, without run ids and timestamps, in a stable order: two catalogs
    /// built from the same inputs must produce equal dumps.
    static func dataDump(_ catalogPath: String) throws -> [String] {
        let catalog = try Catalog(path: catalogPath)
        return try catalog.pool.read { db in
            var lines: [String] = []
            let queries = [
                "SELECT i.name, f.path, f.byte_size, f.mtime_ns, f.sha256, f.read_error FROM files f JOIN identities i ON i.id = f.identity_id ORDER BY f.path",
                "SELECT sha256, byte_size, format, width, height FROM images ORDER BY sha256",
                "SELECT sha256, params_fingerprint, outcome, reason, faces_found FROM image_results ORDER BY sha256",
                "SELECT sha256, face_index, selected, box_left, box_top, landmarks68, crop512, crop256, quality_ok FROM faces ORDER BY sha256, face_index",
            ]
            for sql in queries {
                for row in try Row.fetchAll(db, sql: sql) { lines.append(row.description) }
            }
            return lines
        }
    }
}

import GRDB

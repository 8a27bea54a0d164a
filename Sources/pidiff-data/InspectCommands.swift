import ArgumentParser
import Foundation
import PIDiffModel
import PIDiffNative
import PIDiffCatalog
import PIDiffData

struct StatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Counts by stage and outcome, and the last runs.",
        discussion: "Example: pidiff-data status --catalog data/catalog.sqlite --json")

    @OptionGroup var catalog: CatalogOptions
    @Flag(help: "Print JSON.") var json = false
    @Option(help: "How many recent runs to show.") var runs = 5
    @Flag(help: "List every problem of the latest run of each command (one per line; with --json, one JSON object per line).")
    var problems = false

    func run() async throws {
        do {
            if problems {
                for p in try catalog.open().latestProblems() {
                    if json { try p.printJSON(pretty: false) } else { print("\(p.command) run \(p.runID)\t\(p.location)\t\(p.reason)") }
                }
                return
            }
            let status = try catalog.open().status(lastRuns: runs)
            if json { try status.printJSON(); return }
            print("catalog \(catalog.catalog)")
            print("  files (paths) \(status.files), identities \(status.identities), distinct images \(status.images), unreadable files \(status.unreadable)")
            print("  outcomes, per file: " + status.outcomes.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))
            print("  faces \(status.faces) (all detected; one selected per image: \(status.selectedFaces), of which passing quality \(status.qualityPassed))")
            let fetched = try catalog.open().fetchStatusCounts()
            if !fetched.isEmpty {
                print("  fetched URLs \(fetched.values.reduce(0, +)): " + FetchStatus.allCases.map { "\($0.rawValue) \(fetched[$0] ?? 0)" }.joined(separator: ", ")
                      + " (pidiff-data fetch --failures lists the errors)")
            }
            print("  runs:")
            for r in status.runs {
                let counts = (r.counts ?? [:]).sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
                print("    #\(r.id) \(r.command) \(r.status) \(r.startedAt) → \(r.endedAt ?? "-")  \(counts)")
            }
        } catch { fail(error) }
    }
}

struct FacesCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "faces",
        abstract: "List faces: path, identity, box, 68 landmarks (original pixels), crops and quality; a line per face per file path (a photo stored under two paths is listed under each; status counts faces per distinct image).",
        discussion: "Example: pidiff-data faces --catalog data/catalog.sqlite --json | head -1")

    @OptionGroup var catalog: CatalogOptions
    @Flag(help: "One JSON object per face per line.") var json = false
    @Flag(name: .customLong("selected-only"), help: "Only the face each photo contributes.") var selectedOnly = false

    func run() async throws {
        do {
            for face in try catalog.open().faceReports(selectedOnly: selectedOnly) {
                if json {
                    try face.printJSON(pretty: false)
                } else {
                    let q = face.qualityOK.map { $0 ? "ok" : "fail: \(face.qualityReason ?? "")" } ?? "-"
                    print(String(format: "%@  %@  face %d%@  size %.0f px  quality %@", face.identity, face.path, face.faceIndex,
                                 face.selected ? "*" : "", face.faceSize, q))
                }
            }
        } catch { fail(error) }
    }
}

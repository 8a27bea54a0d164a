import Foundation
import PIDiffModel

/// What a stage's outputs were made from, written beside them once they are complete: a later
/// run that would make them from the same inputs can skip the work (cron `run`s of train and
/// sample).
struct InputsRecord {
    let file: URL
    let inputs: [String: String]

    /// Whether the outputs beside `file` were made from exactly these inputs.
    var isCurrent: Bool {
        guard let data = try? Data(contentsOf: file) else { return false }
        return (try? JSONDecoder().decode([String: String].self, from: data)) == inputs
    }

    /// Runs `make`, the record removed first (a failed run leaves none) and written once it succeeds.
    func making(_ make: () throws -> Void) throws {
        try? FileManager.default.removeItem(at: file)
        try make()
        try OutputPath.write(try JSONEncoder.sorted.encode(inputs), to: file)
    }
}

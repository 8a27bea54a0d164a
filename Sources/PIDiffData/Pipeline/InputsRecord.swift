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

extension InputsRecord {
    /// The base model's files as the file system describes them (path, size, modification time
    /// in ns, in name order), hashed: weights replaced or rewritten in place under the same path
    /// are a new base model, found without reading gigabytes on every cron run. A model given by
    /// a name rather than a folder is its name.
    static func baseModel(_ sd: String) -> String {
        let root = URL(fileURLWithPath: sd).resolvingSymlinksInPath()
        guard let walker = FileManager.default.enumerator(at: root, includingPropertiesForKeys: nil) else { return sd }
        var lines: [String] = []
        for case let url as URL in walker {
            // Regular files, links followed (a Hugging Face cache links to its blobs).
            guard case .success(let file) = ReadStage.stat(url.path) else { continue }
            lines.append("\(url.path.dropFirst(root.path.count)) \(file.byteSize) \(file.mtimeNs)")
        }
        return lines.isEmpty ? sd : Hashing.sha256Hex(Data(lines.sorted().joined(separator: "\n").utf8))
    }
}


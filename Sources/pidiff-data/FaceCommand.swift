import ArgumentParser
import Foundation
import PIDiffModel
import PIDiffNative
import PIDiffData

struct FaceCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "face",
        abstract: "Prepare the e4e input of any photo, without a catalog: the same steps and parameters as ingest and masks.",
        discussion: """
            Per photo, in OUT: NAME.e4e.png (256² face on white, what e4e encodes), NAME.crop512.png (aligned crop),
            NAME.mask256.png and NAME.json (landmarks, quad, quality, mask, which face). NAME is the file name
            without its extension. A photo with no usable face, or with several faces and neither --largest nor
            --face-index, is a one-line error naming it; the others are still prepared, and the exit status is 3.
            Example: pidiff-data face me.jpg --out face/ && pidiff sample --image face/me.e4e.png ...
            """)
    @Argument(help: "Photos.") var photos: [String]
    @Option(help: "Output folder.") var out: String
    @Option(help: "Pipeline file (its ingest: and mask: sections).") var pipeline: String?
    @Option(help: "Folder holding the dlib models (default: $PIDIFF_MODELS or $PIDIFF_CACHE/models).") var models: String?
    @Option(name: .customLong("face-index"), help: "With several faces: this one (0 = the largest).") var faceIndex: Int?
    @Flag(help: "With several faces: the largest.") var largest = false
    @Flag(help: "One JSON object per photo per line on stdout.") var json = false

    func validate() throws {
        if largest && faceIndex != nil { throw ValidationError("choose one of --largest and --face-index") }
        if let faceIndex, faceIndex < 0 { throw ValidationError("--face-index must be 0 or more") }
    }

    func run() async throws {
        try await runCommand {
            let choice: FacePreparation.Choice = largest ? .largest : faceIndex.map { .index($0) } ?? .onlyOne
            let preparation = FacePreparation(config: try PipelineConfig.load(pipeline.map { URL(fileURLWithPath: $0) }),
                                              models: ModelStore(directory: models.map { URL(fileURLWithPath: $0) }), choice: choice)
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
            let results = try preparation.run(photos: photos, out: URL(fileURLWithPath: out)) { result in
                if let error = result.error { FileHandle.standardError.write(Data((Terminal.escaped("pidiff-data: \(result.photo): \(error)") + "\n").utf8)) }
                if json, let line = try? encoder.encode(result) { Swift.print(String(decoding: line, as: UTF8.self)) }
                else if result.ok { print("\(result.photo) → \(out)/\(result.e4eInput ?? "")") }
            }
            if results.contains(where: { !$0.ok }) { throw ExitCode(ExitStatus.partial.rawValue) }
        }
    }
}

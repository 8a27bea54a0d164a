import Foundation
import PIDiffModel

/// Where the dlib model files live. scripts/setup.sh fills `$PIDIFF_CACHE/models` (default
/// `~/.cache/pidiff-data/models`); `PIDIFF_MODELS` or `--models` point elsewhere.
public struct ModelStore: Sendable {
    public static let predictor68 = "shape_predictor_68_face_landmarks.dat"
    public static let predictor5 = "shape_predictor_5_face_landmarks.dat"
    public static let mmodDetector = "mmod_human_face_detector.dat"
    public static let faceDescriptor = "dlib_face_recognition_resnet_model_v1.dat"

    public let directory: URL

    public init(directory: URL? = nil) {
        let env = ProcessInfo.processInfo.environment
        if let directory {
            self.directory = directory
        } else if let models = env["PIDIFF_MODELS"], !models.isEmpty {
            self.directory = URL(fileURLWithPath: models)
        } else {
            self.directory = ModelStore.cacheDirectory.appendingPathComponent("models")
        }
    }

    /// `$PIDIFF_CACHE`, else `~/.cache/pidiff-data`.
    public static var cacheDirectory: URL {
        let env = ProcessInfo.processInfo.environment
        if let cache = env["PIDIFF_CACHE"], !cache.isEmpty { return URL(fileURLWithPath: cache) }
        let home = env["HOME"] ?? NSHomeDirectory()
        return URL(fileURLWithPath: home).appendingPathComponent(".cache/pidiff-data")
    }

    /// Path of a model file, or an error that says how to get it.
    public func path(_ name: String) throws -> String {
        let url = directory.appendingPathComponent(name)
        guard FileManager.default.fileExists(atPath: url.path) else {
            throw ModelError.missing(name: name, directory: directory.path)
        }
        return url.path
    }

    /// SHA-256 of a model file: part of every fingerprint of what the model produces.
    public func fingerprint(_ name: String) throws -> String {
        try Hashing.sha256Hex(fileAt: URL(fileURLWithPath: path(name)))
    }
}

public enum ModelError: Error, CustomStringConvertible {
    case missing(name: String, directory: String)
    public var description: String {
        switch self {
        case .missing(let name, let dir):
            return "model \(name) not found in \(dir); run scripts/setup.sh or set PIDIFF_MODELS / --models"
        }
    }
}

import Foundation

/// Detector choice for `FaceModel`.
public enum DetectorKind: String, Codable, Sendable, CaseIterable {
    case hog, mmod
}

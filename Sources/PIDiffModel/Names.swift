import Foundation

/// Split names become file names (`NAME-000000.tar`) and trainer arguments: ASCII letters,
/// digits, `_` and `-`, at most 64, starting with a letter or digit (a leading `-` would read as
/// an option to the trainer's command line).
public enum SplitName {
    public static func isValid(_ name: String) -> Bool {
        guard let first = name.unicodeScalars.first, name.count <= 64 else { return false }
        let allowed = { (c: Unicode.Scalar) in c.isASCII && (CharacterSet.alphanumerics.contains(c) || c == "_" || c == "-") }
        return allowed(first) && first != "-" && first != "_" && name.unicodeScalars.allSatisfy(allowed)
    }
}

/// A 128-D identity descriptor from dlib's face recognition ResNet. Two faces of the same person
/// are typically closer than 0.6 (Euclidean); different people further apart.
public typealias FaceDescriptor = [Float]

extension JSONEncoder {
    /// Sorted keys, unescaped slashes: the canonical JSON of fingerprints and stored parameters.
    package static var sorted: JSONEncoder {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return e
    }
}

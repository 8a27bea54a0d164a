import Foundation

/// A stage's parameters, declared once: each field's YAML key, help text and whether it changes
/// what the stage produces. Decoding (unknown keys refused, defaults from `init()`), the JSON a run
/// records, the fingerprint payload and the documented `Pipelines/default.yaml` are all derived
/// from `fields`, so a parameter cannot be decoded but forgotten by the fingerprint, or documented
/// with a stale default.
public protocol ParameterSection: Codable, Equatable, Sendable {
    /// The defaults.
    init()
    /// The pipeline file's section name.
    static var section: String { get }
    /// Every stored property, in the order `default.yaml` lists them.
    static var fields: [ParameterField<Self>] { get }
    /// Bumped when the stage's code changes what it produces for the same parameters.
    static var algorithmVersion: String { get }
    /// Refuses values that cannot mean anything, naming the parameter.
    func validate() throws
}

/// Whether a parameter enters the fingerprint of the stage's output.
public enum Fingerprinting<Root>: Sendable {
    case always
    /// Settings that never change results (worker counts, what happens to vanished photos).
    case never
    /// Only when the rest of the parameters use it (the ONNX settings of the ONNX mask method).
    case when(@Sendable (Root) -> Bool)
}

/// One parameter of a section.
public struct ParameterField<Root>: Sendable {
    public let key: String
    public let help: String
    public let fingerprinting: Fingerprinting<Root>
    /// Shown commented out in `default.yaml` (an optional without a default, or an alternative's setting).
    public let commentedOut: Bool
    let decode: @Sendable (inout Root, KeyedDecodingContainer<ParameterKey>) throws -> Void
    let encode: @Sendable (Root, inout KeyedEncodingContainer<ParameterKey>) throws -> Void
    /// The value as the fingerprint and `default.yaml` write it (`nil`: an optional that is unset).
    let text: @Sendable (Root) -> String?
    let yaml: @Sendable (Root) -> String?

    /// A field stored at `keyPath` under the YAML key `key`.
    public static func field<V: ParameterValue>(_ keyPath: WritableKeyPath<Root, V>, _ key: String, _ help: String = "",
                                                fingerprint: Fingerprinting<Root> = .always, commentedOut: Bool = false) -> Self {
        nonisolated(unsafe) let keyPath = keyPath
        return ParameterField(
            key: key, help: help, fingerprinting: fingerprint, commentedOut: commentedOut,
            decode: { root, c in
                if let value = try c.decodeIfPresent(V.self, forKey: ParameterKey(key)) { root[keyPath: keyPath] = value }
            },
            encode: { root, c in try c.encode(root[keyPath: keyPath], forKey: ParameterKey(key)) },
            text: { $0[keyPath: keyPath].parameterText },
            yaml: { $0[keyPath: keyPath].yamlText })
    }

    func isFingerprinted(in root: Root) -> Bool {
        switch fingerprinting {
        case .always: return true
        case .never: return false
        case .when(let condition): return condition(root)
        }
    }
}

/// A coding key for any field name.
public struct ParameterKey: CodingKey, Sendable {
    public let stringValue: String
    public var intValue: Int? { nil }
    public init(_ name: String) { stringValue = name }
    public init(stringValue: String) { self.stringValue = stringValue }
    public init?(intValue: Int) { nil }
}

extension ParameterSection {
    /// Decodes the fields a mapping names over the defaults, refusing keys no field has.
    public static func decoded(from decoder: Decoder) throws -> Self {
        let known = fields.map(\.key)
        let c = try decoder.container(keyedBy: ParameterKey.self)
        let unknown = c.allKeys.map(\.stringValue).filter { !known.contains($0) }
        guard unknown.isEmpty else { throw PipelineError.unknownKeys(codingPathText(decoder.codingPath), unknown.sorted(), known) }
        var value = Self()
        for field in fields { try field.decode(&value, c) }
        try value.validate()
        return value
    }

    /// Encodes every field (the JSON a run records as its parameters).
    public func encodeFields(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: ParameterKey.self)
        for field in Self.fields { try field.encode(self, &c) }
    }

    /// The output-affecting parameters as canonical strings, plus the algorithm version: what the
    /// stage's fingerprint is made of (models enter it through their SHA-256, added by the stage).
    public var fingerprintPayload: [String: String] {
        var payload = ["algorithm_version": Self.algorithmVersion]
        for field in Self.fields where field.isFingerprinted(in: self) {
            if let text = field.text(self) { payload[field.key] = text }
        }
        return payload
    }

    /// Every field's value as text (unset optionals left out), fingerprinted or not.
    public var fingerprintPayloadAll: [String: String] {
        Self.fields.reduce(into: [:]) { payload, field in if let text = field.text(self) { payload[field.key] = text } }
    }

    /// Parameters a run recorded (`runs.parameters`), read back leniently: keys of older versions
    /// and the settings that never change results are dropped.
    public static func recorded(_ json: String) throws -> Self {
        guard let stored = try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any] else {
            throw PipelineError.invalid("recorded \(section) parameters", "not a JSON object")
        }
        let kept = Set(fields.filter { if case .never = $0.fingerprinting { return false } else { return true } }.map(\.key))
        return try JSONDecoder().decode(Self.self, from: JSONSerialization.data(withJSONObject: stored.filter { kept.contains($0.key) }))
    }

    /// This section of `default.yaml`: every field with its default and help.
    public static func defaultYAML() -> [String] {
        let defaults = Self()
        var lines = ["\(section):"]
        for field in fields {
            let value = field.yaml(defaults)
            let entry = "\(field.key): \(value ?? "")".trimmingCharacters(in: .whitespaces)
            let prefix = field.commentedOut || value == nil ? "  # " : "  "
            var line = prefix + entry
            if !field.help.isEmpty { line = line.padding(toLength: max(line.count + 1, 27), withPad: " ", startingAt: 0) + "# " + field.help }
            lines.append(line)
        }
        return lines
    }
}

func codingPathText(_ path: [CodingKey]) -> String {
    path.reduce(into: "") { text, key in
        if let index = key.intValue { text += "[\(index)]" } else { text += (text.isEmpty ? "" : ".") + key.stringValue }
    }
}

/// A parameter value's canonical text (fingerprints) and YAML form.
public protocol ParameterValue: Codable, Sendable {
    var parameterText: String? { get }
    var yamlText: String? { get }
}
extension ParameterValue where Self: CustomStringConvertible {
    public var parameterText: String? { description }
    public var yamlText: String? { description }
}
extension Int: ParameterValue {}
extension Double: ParameterValue {}
extension Float: ParameterValue {}
extension Bool: ParameterValue {}
extension String: ParameterValue {}
extension ParameterValue where Self: RawRepresentable, RawValue == String {
    public var parameterText: String? { rawValue }
    public var yamlText: String? { rawValue }
}
extension Array: ParameterValue where Element: ParameterValue {
    public var parameterText: String? { map { $0.parameterText ?? "" }.joined(separator: ",") }
    public var yamlText: String? { "[" + map { $0.yamlText ?? "" }.joined(separator: ", ") + "]" }
}
extension Optional: ParameterValue where Wrapped: ParameterValue {
    public var parameterText: String? { self?.parameterText }
    public var yamlText: String? { self?.yamlText }
}

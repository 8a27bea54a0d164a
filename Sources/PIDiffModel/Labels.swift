import Foundation

/// Demographic attributes the balance stage works with.
public enum LabelAttribute: String, Codable, Sendable, CaseIterable {
    case race, age, gender
}

/// Where a label came from, in increasing order of authority.
public enum LabelProvenance: String, Codable, Sendable, Comparable {
    case classifier, manifest, manual
    package var rank: Int { self == .classifier ? 0 : self == .manifest ? 1 : 2 }
    public static func < (a: Self, b: Self) -> Bool { a.rank < b.rank }
}

/// One normalised label with its provenance and confidence.
public struct ResolvedLabel: Codable, Equatable, Sendable {
    public var value: String
    public var provenance: LabelProvenance?
    public var confidence: Double
    public static let unknown = ResolvedLabel(value: "unknown", provenance: nil, confidence: 0)
    package init(value: String, provenance: LabelProvenance? = nil, confidence: Double) {
        self.value = value
        self.provenance = provenance
        self.confidence = confidence
    }
}

/// How free-form labels become the balance grid's categories (pipeline file, `labels:` section).
/// Values not in a map stay `unknown`: nothing is guessed.
public struct LabelMapping: Codable, Equatable, Sendable {
    /// Free-form race → category (keys compared case-insensitively, trimmed).
    public var race: [String: String] = [
        "white": "White", "caucasian": "White", "european": "White",
        "black": "Black", "african": "Black", "african american": "Black",
        "asian": "Asian", "east asian": "Asian", "southeast asian": "Asian", "south east asian": "Asian",
    ]
    public var gender: [String: String] = ["male": "male", "man": "male", "m": "male", "female": "female", "woman": "female", "f": "female"]
    /// Age brackets as inclusive lower bounds with names, ascending: an age in years falls in the
    /// last bracket whose lower bound it reaches.
    public var ageBrackets: [AgeBracket] = [AgeBracket(name: "0-20", from: 0), AgeBracket(name: "21-50", from: 21), AgeBracket(name: "51+", from: 51)]
    /// Free-form age strings that name a bracket directly ("21-50", "adult"…).
    public var ageNames: [String: String] = [:]
    /// The 7 FairFace races → categories (indices: White, Black, Latino_Hispanic, East Asian,
    /// Southeast Asian, Indian, Middle Eastern); unmapped ones stay unknown.
    public var fairfaceRace: [String] = ["White", "Black", "unknown", "Asian", "Asian", "unknown", "unknown"]
    /// Classifier results below this probability land in `unknown`.
    public var minClassifierConfidence: Double = 0.6

    public struct AgeBracket: Codable, Equatable, Sendable {
        public var name: String
        public var from: Int
        package enum CodingKeys: String, CodingKey, CaseIterable { case name, from }
        public init(name: String, from: Int) { self.name = name; self.from = from }
        public init(from decoder: Decoder) throws {
            try refuseUnknownKeys(decoder, CodingKeys.self)
            let c = try decoder.container(keyedBy: CodingKeys.self)
            name = try c.decode(String.self, forKey: .name)
            from = try c.decode(Int.self, forKey: .from)
        }
    }

    public init() {}

    package enum CodingKeys: String, CodingKey, CaseIterable {
        case race, gender, ageBrackets = "age_brackets", ageNames = "age_names", fairfaceRace = "fairface_race"
        case minClassifierConfidence = "min_classifier_confidence"
    }

    public init(from decoder: Decoder) throws {
        try refuseUnknownKeys(decoder, CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let d = LabelMapping()
        race = try c.decodeIfPresent([String: String].self, forKey: .race) ?? d.race
        gender = try c.decodeIfPresent([String: String].self, forKey: .gender) ?? d.gender
        ageBrackets = try c.decodeIfPresent([AgeBracket].self, forKey: .ageBrackets) ?? d.ageBrackets
        ageNames = try c.decodeIfPresent([String: String].self, forKey: .ageNames) ?? d.ageNames
        fairfaceRace = try c.decodeIfPresent([String].self, forKey: .fairfaceRace) ?? d.fairfaceRace
        minClassifierConfidence = try c.decodeIfPresent(Double.self, forKey: .minClassifierConfidence) ?? d.minClassifierConfidence
    }

    private static func key(_ s: String) -> String { s.trimmingCharacters(in: .whitespaces).lowercased() }

    public var raceCategories: [String] { Array(Set(race.values)).sorted() }
    public var ageCategories: [String] { ageBrackets.map(\.name) }

    /// Normalises a source's free-form value; nil when it maps to nothing.
    public func normalise(_ attribute: LabelAttribute, _ raw: String?) -> String? {
        guard let raw, !raw.trimmingCharacters(in: .whitespaces).isEmpty else { return nil }
        let k = Self.key(raw)
        switch attribute {
        case .race: return race.first { Self.key($0.key) == k }?.value
        case .gender: return gender.first { Self.key($0.key) == k }?.value
        case .age:
            if let named = ageNames.first(where: { Self.key($0.key) == k })?.value { return named }
            if let b = ageBrackets.first(where: { Self.key($0.name) == k }) { return b.name }
            if let years = Double(k), years >= 0, years < 150 { return bracket(years: Int(years)) }
            return nil
        }
    }

    public func bracket(years: Int) -> String? {
        ageBrackets.last { years >= $0.from }?.name
    }

    /// FairFace's 9 age bins (0-2, 3-9, 10-19, 20-29, 30-39, 40-49, 50-59, 60-69, 70+) by their
    /// midpoints: a bin goes to the bracket holding most of it (20-29 → 21-50, 50-59 → 51+).
    package static let fairfaceAgeMidpoints = [1, 6, 15, 25, 35, 45, 55, 65, 75]
}

/// One label observation before resolution.
public struct LabelObservation: Sendable, Equatable {
    public var attribute: LabelAttribute
    public var value: String          // normalised category
    public var provenance: LabelProvenance
    public var confidence: Double
    package init(attribute: LabelAttribute, value: String, provenance: LabelProvenance, confidence: Double) {
        self.attribute = attribute
        self.value = value
        self.provenance = provenance
        self.confidence = confidence
    }
}

/// Resolves an identity's labels from its observations: the most authoritative provenance present
/// wins; within it, the most frequent value, with confidence = its share (× the mean classifier
/// probability for classifier results). Ties stay unknown rather than being guessed.
public enum LabelResolver {
    public static func resolve(_ observations: [LabelObservation], attribute: LabelAttribute) -> ResolvedLabel {
        let forAttr = observations.filter { $0.attribute == attribute }
        guard let top = forAttr.map(\.provenance).max() else { return .unknown }
        let pool = forAttr.filter { $0.provenance == top }
        var counts: [String: (n: Int, conf: Double)] = [:]
        for o in pool { counts[o.value, default: (0, 0)].n += 1; counts[o.value]!.conf += o.confidence }
        let sorted = counts.sorted { $0.value.n > $1.value.n || ($0.value.n == $1.value.n && $0.key < $1.key) }
        guard let best = sorted.first else { return .unknown }
        if sorted.count > 1 && sorted[1].value.n == best.value.n { return ResolvedLabel(value: "unknown", provenance: top, confidence: 0) }
        let share = Double(best.value.n) / Double(pool.count)
        return ResolvedLabel(value: best.key, provenance: top, confidence: share * best.value.conf / Double(best.value.n))
    }
}

import Foundation

/// FairFace-style classifier output: 18 logits = 7 race, 2 gender, 9 age bins.
public enum FairFace {
    public static let genders = ["male", "female"]

    package static func softmax(_ x: ArraySlice<Float>) -> [Double] {
        let m = x.max() ?? 0
        let e = x.map { exp(Double($0 - m)) }
        let s = e.reduce(0, +)
        return e.map { $0 / s }
    }

    /// Splits 18 logits into per-group probabilities.
    public static func probabilities(_ logits: [Float]) throws -> (race: [Double], gender: [Double], age: [Double]) {
        guard logits.count == 18 else {
            throw PipelineError.invalid("classifier", "expected 18 logits (7 race, 2 gender, 9 age), got \(logits.count)")
        }
        return (softmax(logits[0..<7]), softmax(logits[7..<9]), softmax(logits[9..<18]))
    }

    /// Observations for the label resolver: each group's argmax when its probability reaches the
    /// mapping's threshold; below it the attribute stays unknown. Age bins are summed into our
    /// brackets before the argmax, so probability mass split across 20-29/30-39 still counts.
    package static func observations(race: [Double], gender: [Double], age: [Double], mapping: LabelMapping) -> [LabelObservation] {
        var out: [LabelObservation] = []
        let threshold = mapping.minClassifierConfidence
        if race.count == 7 {
            var byCategory: [String: Double] = [:]
            for (i, p) in race.enumerated() where i < mapping.fairfaceRace.count { byCategory[mapping.fairfaceRace[i], default: 0] += p }
            if let best = byCategory.max(by: { $0.value < $1.value || ($0.value == $1.value && $0.key > $1.key) }),
               best.value >= threshold, best.key != "unknown" {
                out.append(LabelObservation(attribute: .race, value: best.key, provenance: .classifier, confidence: best.value))
            }
        }
        if gender.count == 2, let i = gender.indices.max(by: { gender[$0] < gender[$1] }), gender[i] >= threshold {
            out.append(LabelObservation(attribute: .gender, value: genders[i], provenance: .classifier, confidence: gender[i]))
        }
        if age.count == 9 {
            var byBracket: [String: Double] = [:]
            for (i, p) in age.enumerated() {
                if let b = mapping.bracket(years: LabelMapping.fairfaceAgeMidpoints[i]) { byBracket[b, default: 0] += p }
            }
            if let best = byBracket.max(by: { $0.value < $1.value || ($0.value == $1.value && $0.key > $1.key) }), best.value >= threshold {
                out.append(LabelObservation(attribute: .age, value: best.key, provenance: .classifier, confidence: best.value))
            }
        }
        return out
    }
}

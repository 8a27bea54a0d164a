import GRDB
import XCTest
@testable import PIDiffData
@testable import PIDiffModel
@testable import PIDiffNative
@testable import PIDiffCatalog

final class LabelMappingTests: XCTestCase {
    func testFreeFormValuesNormaliseAndUnknownsStayUnknown() {
        let m = LabelMapping()
        XCTAssertEqual(m.normalise(.race, " East Asian "), "Asian")
        XCTAssertEqual(m.normalise(.race, "white"), "White")
        XCTAssertNil(m.normalise(.race, "Martian"))
        XCTAssertNil(m.normalise(.race, ""))
        XCTAssertEqual(m.normalise(.age, "37"), "21-50")
        XCTAssertEqual(m.normalise(.age, "20"), "0-20")
        XCTAssertEqual(m.normalise(.age, "51"), "51+")
        XCTAssertEqual(m.normalise(.age, "21-50"), "21-50")
        XCTAssertNil(m.normalise(.age, "old"))
        XCTAssertEqual(m.normalise(.gender, "F"), "female")
    }

    func testManualBeatsManifestBeatsClassifierAndTiesStayUnknown() {
        let o = [
            LabelObservation(attribute: .race, value: "White", provenance: .manifest, confidence: 1),
            LabelObservation(attribute: .race, value: "Asian", provenance: .classifier, confidence: 0.9),
        ]
        XCTAssertEqual(LabelResolver.resolve(o, attribute: .race).value, "White")
        let manual = o + [LabelObservation(attribute: .race, value: "Black", provenance: .manual, confidence: 1)]
        XCTAssertEqual(LabelResolver.resolve(manual, attribute: .race), ResolvedLabel(value: "Black", provenance: .manual, confidence: 1))
        let tie = [LabelObservation(attribute: .age, value: "0-20", provenance: .manifest, confidence: 1),
                   LabelObservation(attribute: .age, value: "21-50", provenance: .manifest, confidence: 1)]
        XCTAssertEqual(LabelResolver.resolve(tie, attribute: .age).value, "unknown")
        XCTAssertEqual(LabelResolver.resolve([], attribute: .gender), .unknown)
    }

    func testFairFaceLogitsSplitIntoGroupsAndAgeBinsSumIntoBrackets() throws {
        var logits = [Float](repeating: 0, count: 18)
        logits[9 + 3] = 2; logits[9 + 4] = 2 // 20-29 and 30-39: each ~0.4, together > 0.6
        let p = try FairFace.probabilities(logits)
        XCTAssertEqual(p.race.reduce(0, +), 1, accuracy: 1e-9)
        let obs = FairFace.observations(race: p.race, gender: p.gender, age: p.age, mapping: LabelMapping())
        XCTAssertEqual(obs.map(\.attribute), [.age])
        XCTAssertEqual(obs.first?.value, "21-50")
        XCTAssertThrowsError(try FairFace.probabilities([1, 2, 3]))
    }

    func testCSVImportParsesQuotesAndNamesBadLines() throws {
        let ok = try ManualLabelCSV.parse("identity,race,age,path\n\"van der Berg, J\",East Asian,,\nobama,,55,/x/obama3.jpg\n", file: "f.csv")
        XCTAssertEqual(ok, [ManualLabel(identity: "van der Berg, J", path: "", attribute: .race, value: "East Asian"),
                            ManualLabel(identity: "obama", path: "/x/obama3.jpg", attribute: .age, value: "55")])
        XCTAssertThrowsError(try ManualLabelCSV.parse("identity,race\nobama\n", file: "f.csv")) { XCTAssertTrue("\($0)".contains("f.csv:2")) }
        XCTAssertThrowsError(try ManualLabelCSV.parse("name,race\n", file: "f.csv")) { XCTAssertTrue("\($0)".contains("identity")) }
    }

    func testCSVImportRejectsTyposAndUnknownIdentitiesListingEveryLine() throws {
        let csv = "identity,race,age\nobama,Blak,61 years\nobma,Black,\nbiden,White,unknown\n"
        XCTAssertThrowsError(try ManualLabelCSV.parse(csv, file: "f.csv", knownIdentities: ["obama", "biden"])) { error in
            let text = "\(error)"
            XCTAssertTrue(text.contains("f.csv:2: race \"Blak\""), text)
            XCTAssertTrue(text.contains("f.csv:2: age \"61 years\""), text)
            XCTAssertTrue(text.contains("f.csv:3: identity \"obma\" is not in the catalog"), text)
            XCTAssertTrue(text.contains("3 problems, nothing imported"), text)
        }
        // "unknown" clears a label on purpose; a decomposed "é" matches the catalog's NFC name.
        let ok = try ManualLabelCSV.parse("identity,age\nJose\u{301},unknown\n", file: "f.csv", knownIdentities: ["Jos\u{E9}"])
        XCTAssertEqual(ok.map(\.identity).first?.unicodeScalars.count, 4)
    }
}

final class LabelIntegrationTests: XCTestCase {
    func testManifestLabelsManualOverridesAndClassifier() async throws {
        try TestSupport.requireAssets()
        let dir = try TestSupport.temporaryDirectory()
        let catalogPath = dir.appendingPathComponent("c.sqlite")
        _ = try await TestSupport.ingest([ModelStore.cacheDirectory.appendingPathComponent("sample/manifest.jsonl")], catalog: catalogPath)
        let catalog = try Catalog(path: catalogPath.path)
        var labels = Dictionary(uniqueKeysWithValues: try catalog.identityLabels(mapping: LabelMapping()).map { ($0.identity, $0) })
        XCTAssertEqual(labels["obama"]?.race, ResolvedLabel(value: "Black", provenance: .manifest, confidence: 1))
        XCTAssertEqual(labels["obama"]?.age.value, "21-50")
        XCTAssertEqual(labels["biden"]?.age.value, "51+")

        let csv = dir.appendingPathComponent("fix.csv")
        try "identity,race,age,path\nbiden,East Asian,,\nobama,,60,\(TestSupport.sampleIdentities.path)/obama/obama3.jpg\n".write(to: csv, atomically: true, encoding: .utf8)
        let imported = try TestSupport.runCLI(["labels", "import", csv.path, "--catalog", catalogPath.path])
        XCTAssertEqual(imported.status, 0, imported.stderr)
        labels = Dictionary(uniqueKeysWithValues: try catalog.identityLabels(mapping: LabelMapping()).map { ($0.identity, $0) })
        XCTAssertEqual(labels["biden"]?.race, ResolvedLabel(value: "Asian", provenance: .manual, confidence: 1))
        XCTAssertEqual(labels["biden"]?.age.value, "51+", "a manual race leaves the manifest age alone")
        XCTAssertEqual(labels["obama"]?.imageAges.values.first, "51+", "per-image age where it differs")

        // Classifier: a confident model labels the unlabelled identity; a flat one leaves it unknown.
        let folders = dir.appendingPathComponent("folders.sqlite")
        _ = try await TestSupport.ingest([TestSupport.sampleIdentities], catalog: folders)
        for (mode, race, age, gender) in [("--flat", "unknown", "unknown", "unknown"), ("--confident", "Asian", "21-50", "female")] {
            let model = dir.appendingPathComponent("fairface\(mode).onnx")
            let made = try TestSupport.run(TestSupport.python, [TestSupport.fixtures.appendingPathComponent("make_fairface_onnx.py").path, model.path, mode])
            XCTAssertEqual(made.status, 0, made.stderr)
            XCTAssertEqual(try LabelClassifier(catalogPath: folders.path, modelPath: model.path).run(), 7)
            let c = try Catalog(path: folders.path)
            let l = try XCTUnwrap(try c.identityLabels(mapping: LabelMapping(), classifierFingerprint: try c.currentClassifierFingerprint()).first { $0.identity == "unlabelled" })
            XCTAssertEqual([l.race.value, l.age.value, l.gender.value], [race, age, gender], mode)
            if mode == "--confident" { XCTAssertEqual(l.race.provenance, .classifier); XCTAssertGreaterThan(l.race.confidence, 0.99) }
        }
    }
}

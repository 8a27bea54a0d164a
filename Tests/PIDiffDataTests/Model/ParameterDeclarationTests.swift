import Foundation
import XCTest
@testable import PIDiffModel
@testable import PIDiffData
import Yams

/// Parameters are declared once (`ParameterSection.fields`); these tests fail when a stored
/// property is not declared, when an output-affecting one is left out of the fingerprint, or when
/// Pipelines/default.yaml no longer shows the defaults.
final class ParameterDeclarationTests: XCTestCase {
    private func snakeCase(_ name: String) -> String {
        name.reduce(into: "") { out, c in out += c.isUppercase ? "_" + c.lowercased() : String(c) }
    }

    private func checkDeclared<S: ParameterSection>(_ type: S.Type, notFingerprinted: Set<String>, value: S = S(), file: StaticString = #filePath, line: UInt = #line) {
        let properties = Set(Mirror(reflecting: value).children.compactMap(\.label).map(snakeCase))
        XCTAssertEqual(properties, Set(S.fields.map(\.key)), "\(S.section): every stored property is a declared field", file: file, line: line)
        let fingerprinted = Set(value.fingerprintPayload.keys).subtracting(["algorithm_version"])
        XCTAssertEqual(properties.subtracting(fingerprinted), notFingerprinted,
                       "\(S.section): only these settings may stay out of the fingerprint (they never change outputs)", file: file, line: line)
    }

    func testEveryParameterIsDeclaredAndEveryOutputAffectingOneIsFingerprinted() {
        checkDeclared(IngestParameters.self, notFingerprinted: ["workers", "vanished"])
        checkDeclared(CurationParameters.self, notFingerprinted: ["workers"])
        checkDeclared(CrossFaceIDParameters.self, notFingerprinted: ["identity_field"])
        // The ONNX settings count when the ONNX method is used; its model enters by its SHA-256.
        checkDeclared(MaskParameters.self, notFingerprinted: ["onnx_path", "onnx_input_size", "onnx_mean", "onnx_std", "onnx_keep_classes"])
        var onnx = MaskParameters()
        onnx.method = .onnx
        checkDeclared(MaskParameters.self, notFingerprinted: ["onnx_path"], value: onnx)
        // Which rows and URLs are read, not what is derived from an image's bytes (results are
        // keyed by content): declared, none fingerprinted.
        checkDeclared(HuggingFaceParameters.self, notFingerprinted: ["identity_column", "image_column", "caption_column", "race_column",
                                                                      "age_column", "gender_column", "parquet_batch_rows"])
        checkDeclared(FetchParameters.self, notFingerprinted: ["concurrency", "per_host", "connect_timeout", "read_timeout", "total_timeout",
                                                                "attempts_per_run", "max_attempts", "backoff_base", "backoff_max",
                                                                "max_retry_after", "max_bytes", "max_redirects", "allow_private", "user_agent",
                                                                "disallowed_header_directives"])
    }

    func testFingerprintsOfTheDefaultsAreUnchanged() {
        // Changing one of these re-derives every catalog's crops, masks or curation decisions:
        // bump the section's algorithm version on purpose, never by accident.
        XCTAssertEqual(Hashing.fingerprint(IngestParameters().fingerprintPayload), "4b6b9d8956f82ba51255a149d7a4d3e9460d0f2679752071966121aea36ac1fb")
    }

    func testDefaultYAMLIsTheParameterStructsDefaults() throws {
        let file = TestSupport.repoRoot.appendingPathComponent("Pipelines/default.yaml")
        XCTAssertEqual(try String(contentsOf: file, encoding: .utf8), PipelineConfig.defaultYAML(),
                       "regenerate it: swift run pidiff-data pipeline defaults > Pipelines/default.yaml")
        XCTAssertEqual(try YAMLDecoder().decode(PipelineConfig.self, from: PipelineConfig.defaultYAML()), PipelineConfig())
    }

    func testRecordedParametersRoundTripAndDropWhatNeverChangesResults() throws {
        var p = IngestParameters()
        p.detector = .mmod
        p.workers = 3
        let json = String(decoding: try JSONEncoder.sorted.encode(p), as: UTF8.self)
        let back = try IngestParameters.recorded(json.replacingOccurrences(of: "{", with: "{\"channel_capacity\":8,"))
        XCTAssertEqual(back.detector, .mmod)
        XCTAssertEqual(back.workers, 0)
        XCTAssertEqual(back.fingerprintPayload, p.fingerprintPayload)
    }

    func testAnUnknownKeyIsNamedWithTheKnownOnes() {
        XCTAssertThrowsError(try YAMLDecoder().decode(PipelineConfig.self, from: "mask:\n  hair_extnt: 2\n")) { error in
            let text = "\(error)"
            XCTAssertTrue(text.contains("hair_extnt") && text.contains("hair_extent") && text.contains("mask"), text)
        }
    }
}

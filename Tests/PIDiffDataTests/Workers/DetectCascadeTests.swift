import XCTest
@testable import PIDiffData
@testable import PIDiffModel
@testable import PIDiffNative

/// The HOG cascade scans dlib's image pyramid level by level: on the levels it scans it must give
/// exactly the boxes dlib's own detector gives; identity photos stop at the coarse levels; group
/// photos get every face the upsampled detector finds.
final class DetectCascadeTests: XCTestCase {
    var model: FaceModel!

    override func setUpWithError() throws {
        try TestSupport.requireAssets()
        model = try FaceModel(detector: .hog, mmodPath: nil, predictor68Path: ModelStore().path(ModelStore.predictor68))
    }

    func photo(_ path: String) throws -> NativeImage {
        try NativeImage.decode(Data(contentsOf: TestSupport.sampleIdentities.appendingPathComponent(path)), maxPixels: 1 << 30)
    }

    /// A generated group photo: obama.jpg's face (with some of its surroundings) pasted onto a grey
    /// 900×600 canvas once per entry, scaled so that its detector box is `side` pixels wide.
    func groupPhoto(sides: [Double]) throws -> NativeImage {
        let source = try photo("obama/obama.jpg")
        let box = try XCTUnwrap(model.detect(source, upsample: 0, maxSide: 0).boxes.first)
        let margin = box.width * 0.5
        let x0 = max(0, Int(box.left - margin)), y0 = max(0, Int(box.top - margin))
        let x1 = min(source.width, Int(box.right + margin)), y1 = min(source.height, Int(box.bottom + margin))
        let pixels = try source.bgrPixels()
        var cropped: [UInt8] = []
        for y in y0..<y1 { cropped += pixels[(y * source.width + x0) * 3 ..< (y * source.width + x1) * 3] }
        let face = try NativeImage.fromBGR(cropped, width: x1 - x0, height: y1 - y0)

        let width = 900, height = 600
        var canvas = [UInt8](repeating: 128, count: width * height * 3)
        var x = 10
        for side in sides {
            let scale = side / box.width
            let tile = try face.resized(width: Int(Double(face.width) * scale), height: Int(Double(face.height) * scale))
            let tilePixels = try tile.bgrPixels()
            let top = (height - tile.height) / 2
            for ty in 0..<tile.height {
                let dst = ((top + ty) * width + x) * 3
                canvas.replaceSubrange(dst ..< dst + tile.width * 3, with: tilePixels[ty * tile.width * 3 ..< (ty + 1) * tile.width * 3])
            }
            x += tile.width + 10
        }
        XCTAssertLessThanOrEqual(x, width, "the faces must fit the canvas")
        return try NativeImage.fromBGR(canvas, width: width, height: height)
    }

    func testScanningEveryLevelOnItsOwnGivesDlibsBoxes() throws {
        let photos = try ["obama/obama.jpg", "obama/obama3.jpg", "biden/biden.jpg"].map(photo) + [groupPhoto(sides: [100, 100, 45, 45, 45])]
        for image in photos {
            let dlib = try model.detect(image, upsample: 0, maxSide: 1024)
            XCTAssertGreaterThan(dlib.total, 0)
            // Every level at once, and the coarse levels first (then every level): the same boxes
            // and scores as dlib's call, in the same order but for boxes of equal scores (dlib
            // sorts each level's detections before they are merged; the copies of one face pasted
            // into the group photo score exactly alike).
            for coarseSide in [0, 512] {
                let cascade = try model.detectCascade(image, upsample: 0, maxSide: 1024, coarseSide: coarseSide, loneFaceBox: 100_000)
                XCTAssertEqual(cascade.boxes.sorted(by: Self.order), dlib.boxes.sorted(by: Self.order), "coarse side \(coarseSide)")
                XCTAssertEqual(cascade.total, dlib.total)
                XCTAssertTrue(cascade.passes.contains(.allLevels))
            }
        }
    }

    static func order(_ a: FaceBox, _ b: FaceBox) -> Bool { (a.score, a.left, a.top) > (b.score, b.left, b.top) }

    func testIdentityPhotosStopAtTheCoarseLevelsWithTheBoxesDlibGives() throws {
        let p = IngestParameters()
        for path in ["obama/obama.jpg", "obama/obama2.jpg", "obama/obama3.jpg", "biden/biden.jpg"] {
            let image = try photo(path)
            let found = try model.detectCascade(image, upsample: p.upsample, maxSide: p.detectMaxSide, coarseSide: p.detectCoarseSide,
                                                loneFaceBox: p.detectLoneFaceBox)
            XCTAssertEqual(found.passes, [.coarse], path)
            XCTAssertEqual(found.boxes, try model.detect(image, upsample: 0, maxSide: p.detectMaxSide).boxes, path)
        }
    }

    func testGroupPhotosGetEveryFaceTheUpsampledDetectorFinds() throws {
        // Two faces the levels without upsampling find, three only the upsampled ones find.
        let image = try groupPhoto(sides: [100, 100, 45, 45, 45])
        let reference = try model.detect(image, upsample: 1, maxSide: 1024)
        let unupsampled = try model.detect(image, upsample: 0, maxSide: 1024)
        XCTAssertEqual(reference.total, 5)
        XCTAssertEqual(unupsampled.total, 2, "ingest-1's cascade stopped here")

        let found = try DetectStage.detect(image, model: model, parameters: IngestParameters())
        XCTAssertEqual(found.passes, [.coarse, .allLevels, .upsampledFine])
        XCTAssertEqual(DetectBenchmark.matched(reference.boxes, by: found.boxes).count, 5)
        XCTAssertEqual(found.total, 5)
        // The faces found without upsampling keep dlib's boxes for them, so their landmarks and crops.
        for box in unupsampled.boxes { XCTAssertTrue(found.boxes.contains(box)) }
    }

    func testPhotosWhereNothingIsFoundWithoutUpsamplingGetDlibsUpsampledDetector() throws {
        let image = try groupPhoto(sides: [45, 45, 45])
        XCTAssertEqual(try model.detect(image, upsample: 0, maxSide: 1024).total, 0)
        let found = try DetectStage.detect(image, model: model, parameters: IngestParameters())
        XCTAssertEqual(found.passes, [.coarse, .allLevels, .upsampled])
        XCTAssertEqual(found.boxes.sorted(by: Self.order), try model.detect(image, upsample: 1, maxSide: 1024).boxes.sorted(by: Self.order))
        XCTAssertEqual(found.total, 3)
    }

    func testIngestRecordsTheSmallFacesOfAGroupPhoto() async throws {
        let dir = try TestSupport.temporaryDirectory()
        let folder = dir.appendingPathComponent("photos/group")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        try groupPhoto(sides: [100, 100, 45, 45, 45]).pngData().write(to: folder.appendingPathComponent("group.png"))
        let summary = try await TestSupport.ingest([dir.appendingPathComponent("photos")], catalog: dir.appendingPathComponent("c.sqlite"))
        XCTAssertEqual(summary.counts["faces_recorded"], 5)
    }

    func testAnotherWorkersModelFindsTheSameFacesAndLandmarks() throws {
        let image = try photo("obama/obama.jpg")
        let clone = try model.clone()
        let a = try model.detect(image, upsample: 0, maxSide: 1024), b = try clone.detect(image, upsample: 0, maxSide: 1024)
        XCTAssertEqual(a.boxes, b.boxes)
        let box = try XCTUnwrap(a.boxes.first)
        XCTAssertEqual(try model.landmarks68(image, box: box), try clone.landmarks68(image, box: box))
    }

    func testLandmarksAreTheSameWhereverTheFaceSitsInALargerPhoto() throws {
        let image = try photo("obama/obama.jpg")
        let box = try XCTUnwrap(model.detect(image, upsample: 0, maxSide: 1024).boxes.first)
        let landmarks = try model.landmarks68(image, box: box)
        // The photo placed 300 px right and 200 px down on a larger canvas.
        let dx = 300, dy = 200, width = image.width + dx + 50, height = image.height + dy + 50
        var canvas = [UInt8](repeating: 30, count: width * height * 3)
        let pixels = try image.bgrPixels()
        for y in 0..<image.height {
            let dst = ((y + dy) * width + dx) * 3
            canvas.replaceSubrange(dst ..< dst + image.width * 3, with: pixels[y * image.width * 3 ..< (y + 1) * image.width * 3])
        }
        let moved = try NativeImage.fromBGR(canvas, width: width, height: height)
        let shifted = FaceBox(left: box.left + Double(dx), top: box.top + Double(dy), right: box.right + Double(dx),
                              bottom: box.bottom + Double(dy), score: box.score)
        let there = try model.landmarks68(moved, box: shifted)
        XCTAssertEqual(there.points.map { Point(x: $0.x - Double(dx), y: $0.y - Double(dy)) }, landmarks.points)
    }

    func testImglabAnnotationsAreReadAndMatchedOneToOne() throws {
        let dir = try TestSupport.temporaryDirectory()
        let xml = dir.appendingPathComponent("faces.xml")
        try """
            <?xml version='1.0' encoding='ISO-8859-1'?>
            <dataset><images>
              <image file='a.jpg'>
                <box top='10' left='20' width='40' height='40'/>
                <box top='100' left='200' width='50' height='50' ignore='1'/>
                <box left="300" top="30" width="60" height="60"/>
              </image>
              <image file='sub/b.jpg' width='500' height='375'>
              </image>
            </images></dataset>
            """.write(to: xml, atomically: true, encoding: .utf8)
        let photos = try DetectBenchmark.readImglab(xml)
        XCTAssertEqual(photos.map(\.url.lastPathComponent), ["a.jpg", "b.jpg"])
        XCTAssertEqual(photos[1].url.path, dir.appendingPathComponent("sub/b.jpg").path)
        XCTAssertEqual(photos[0].faces, [FaceBox(left: 20, top: 10, right: 60, bottom: 50, score: 1),
                                         FaceBox(left: 300, top: 30, right: 360, bottom: 90, score: 1)])
        XCTAssertEqual(photos[1].faces, [])
        // IoU ≥ 0.5, one detection per face: the second box overlaps the second face too little.
        let boxes = [FaceBox(left: 22, top: 12, right: 62, bottom: 52, score: 1), FaceBox(left: 330, top: 60, right: 390, bottom: 120, score: 1)]
        XCTAssertEqual(DetectBenchmark.matched(photos[0].faces, by: boxes), [0])
        XCTAssertEqual(DetectBenchmark.matched(photos[0].faces, by: [boxes[0], boxes[0]]), [0])
    }
}

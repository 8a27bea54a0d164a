import Foundation
import PIDiffModel
import PIDiffNative

/// `pidiff-data bench detect`: which annotated faces each way of detecting finds, what it costs,
/// and whether the face ingest picks keeps its box. Three ways, on the same decoded photos:
/// - `hog_upsample_1`: dlib's HOG detector with one upsampling on the detection copy (the
///   reference a careful user would run);
/// - `cascade_ingest_1`: ingest-1's cascade, without upsampling first and upsampled only when
///   that finds nothing;
/// - `pipeline`: `DetectStage.boxes` with the pipeline's parameters (the ingest default).
public struct DetectBenchmark: Sendable {
    /// A photo and the faces marked on it (none for a photo that is only timed and compared).
    public struct Photo: Sendable {
        public var url: URL
        public var faces: [FaceBox]
        /// Enlargement applied before detection (annotated boxes are scaled with it).
        public var enlarge: Double = 1
        public var annotated: Bool
        public init(url: URL, faces: [FaceBox], enlarge: Double = 1, annotated: Bool) {
            self.url = url
            self.faces = faces
            self.enlarge = enlarge
            self.annotated = annotated
        }
    }

    public enum Strategy: String, CaseIterable, Codable, Sendable {
        case reference = "hog_upsample_1", ingest1 = "cascade_ingest_1", pipeline
    }

    public struct StrategyReport: Codable, Sendable {
        public var strategy: String
        /// Annotated faces matched by a detection (IoU ≥ 0.5, one detection per face).
        public var annotatedFound: Int
        public var recall: Double
        /// Of the annotated faces the reference finds, the share this strategy finds.
        public var recallOfReference: Double
        public var detections: Int
        /// Of every box the reference finds (annotated or not, so on the unannotated photos too),
        /// those this strategy finds (IoU ≥ 0.5, one to one).
        public var referenceBoxesFound: Int
        public var detectMsPerPhoto: Double
        public var detectMsPerAnnotatedPhoto: Double
        public var detectMsPerOtherPhoto: Double
        enum CodingKeys: String, CodingKey {
            case strategy, annotatedFound = "annotated_found", recall, recallOfReference = "recall_of_reference", detections
            case referenceBoxesFound = "reference_boxes_found"
            case detectMsPerPhoto = "detect_ms_per_photo", detectMsPerAnnotatedPhoto = "detect_ms_per_annotated_photo"
            case detectMsPerOtherPhoto = "detect_ms_per_other_photo"
        }
    }

    public struct PhotoReport: Codable, Sendable {
        public var photo: String
        public var width: Int
        public var height: Int
        public var annotated: Int
        /// Per strategy: detections, annotated faces found.
        public var found: [String: [Int]]
        /// Per strategy: the width of each box found, in photo pixels, largest first.
        public var widths: [String: [Int]]
        /// The face the `largest` policy picks has the same box under ingest-1's cascade and the pipeline.
        public var pickedSame: Bool?
        /// What the pipeline's HOG cascade scanned.
        public var passes: String?
        /// The largest face's box width over the photo's longer side.
        public var largestFace: Double?
        enum CodingKeys: String, CodingKey {
            case photo, width, height, annotated, found, widths, pickedSame = "picked_same", passes, largestFace = "largest_face"
        }
    }

    static func describe(_ passes: FaceModel.CascadePasses) -> String {
        [(FaceModel.CascadePasses.coarse, "coarse"), (.allLevels, "all_levels"), (.upsampled, "upsampled"), (.upsampledFine, "upsampled_fine")]
            .filter { passes.contains($0.0) }.map(\.1).joined(separator: "+")
    }

    public struct Report: Codable, Sendable {
        public var photos: Int
        public var annotatedPhotos: Int
        public var annotatedFaces: Int
        public var referenceBoxes: Int
        public var strategies: [StrategyReport]
        /// Photos where both ingest-1's cascade and the pipeline find a face, and of those the
        /// ones whose picked face has the same box (so the same landmarks and crops).
        public var pickedByBoth: Int
        public var pickedSame: Int
        public var perPhoto: [PhotoReport]
        enum CodingKeys: String, CodingKey {
            case photos, annotatedPhotos = "annotated_photos", annotatedFaces = "annotated_faces", referenceBoxes = "reference_boxes", strategies
            case pickedByBoth = "picked_by_both", pickedSame = "picked_same", perPhoto = "per_photo"
        }
    }

    public var photos: [Photo]
    public var parameters: IngestParameters
    public var models: ModelStore

    public init(photos: [Photo], parameters: IngestParameters, models: ModelStore) {
        self.photos = photos
        self.parameters = parameters
        self.models = models
    }

    /// The benchmark's photos: each imglab file's, once per enlargement factor, then every JPEG and
    /// PNG under `folders` (unannotated: timed and compared with the reference only).
    public static func photos(annotations: [URL], enlarged factors: [Double], folders: [URL]) throws -> [Photo] {
        var list: [Photo] = []
        for file in annotations {
            let annotated = try readImglab(file)
            for factor in factors { list += annotated.map { var p = $0; p.enlarge = factor; return p } }
        }
        for folder in folders {
            let enumerator = FileManager.default.enumerator(at: folder, includingPropertiesForKeys: nil)
            list += (enumerator?.allObjects as? [URL] ?? [])
                .filter { ["jpg", "jpeg", "png"].contains($0.pathExtension.lowercased()) }
                .sorted { $0.path < $1.path }
                .map { Photo(url: $0, faces: [], annotated: false) }
        }
        return list
    }

    /// The photos and face boxes of dlib's imglab XML (`<image file='…'><box top= left= width=
    /// height=/>…`), as in dlib's examples/faces/training.xml; boxes marked `ignore='1'` are left out.
    public static func readImglab(_ xml: URL) throws -> [Photo] {
        let text = try String(contentsOf: xml, encoding: .isoLatin1)
        let base = xml.deletingLastPathComponent()
        func attribute(_ name: String, in tag: Substring) -> String? {
            for quote in ["'", "\""] {
                if let r = tag.range(of: " \(name)=\(quote)") {
                    let rest = tag[r.upperBound...]
                    if let end = rest.firstIndex(of: Character(quote)) { return String(rest[..<end]) }
                }
            }
            return nil
        }
        var photos: [Photo] = []
        var scanner = text[...]
        while let open = scanner.range(of: "<") {
            let rest = scanner[open.upperBound...]
            guard let close = rest.firstIndex(of: ">") else { break }
            let tag = rest[..<close]
            scanner = rest[rest.index(after: close)...]
            if tag.hasPrefix("image "), let file = attribute("file", in: tag) {
                photos.append(Photo(url: URL(fileURLWithPath: file, relativeTo: base).standardizedFileURL, faces: [], annotated: true))
            } else if tag.hasPrefix("box "), !photos.isEmpty, attribute("ignore", in: tag) != "1",
                      let top = attribute("top", in: tag).flatMap(Double.init), let left = attribute("left", in: tag).flatMap(Double.init),
                      let width = attribute("width", in: tag).flatMap(Double.init), let height = attribute("height", in: tag).flatMap(Double.init) {
                photos[photos.count - 1].faces.append(FaceBox(left: left, top: top, right: left + width, bottom: top + height, score: 1))
            }
        }
        return photos
    }

    /// Intersection over union of two boxes.
    public static func iou(_ a: FaceBox, _ b: FaceBox) -> Double {
        let w = min(a.right, b.right) - max(a.left, b.left), h = min(a.bottom, b.bottom) - max(a.top, b.top)
        guard w > 0, h > 0 else { return 0 }
        let inter = w * h
        return inter / (a.area + b.area - inter)
    }

    /// Indices of the annotated faces matched one to one by detections with IoU ≥ 0.5, best
    /// overlaps first.
    public static func matched(_ faces: [FaceBox], by boxes: [FaceBox]) -> Set<Int> {
        var pairs: [(Double, Int, Int)] = []
        for (i, f) in faces.enumerated() {
            for (j, b) in boxes.enumerated() {
                let o = iou(f, b)
                if o >= 0.5 { pairs.append((o, i, j)) }
            }
        }
        var faceUsed = Set<Int>(), boxUsed = Set<Int>()
        for (_, i, j) in pairs.sorted(by: { $0.0 > $1.0 }) where !faceUsed.contains(i) && !boxUsed.contains(j) {
            faceUsed.insert(i)
            boxUsed.insert(j)
        }
        return faceUsed
    }

    func detect(_ strategy: Strategy, _ image: NativeImage, model: FaceModel, passes: inout FaceModel.CascadePasses?) throws -> [FaceBox] {
        let p = parameters, capacity = 64
        switch strategy {
        case .reference:
            return try model.detect(image, upsample: 1, maxSide: p.detectMaxSide, capacity: capacity).boxes
        case .ingest1:
            let quick = try model.detect(image, upsample: 0, maxSide: p.detectMaxSide, capacity: capacity)
            if quick.total > 0 { return quick.boxes }
            return try model.detect(image, upsample: 1, maxSide: p.detectMaxSide, capacity: capacity).boxes
        case .pipeline:
            var q = p
            q.maxFacesRecorded = capacity
            let found = try DetectStage.detect(image, model: model, parameters: q)
            passes = found.passes
            return found.boxes
        }
    }

    public func run() throws -> Report {
        let model = try FaceModel(detector: parameters.detector, mmodPath: parameters.detector == .mmod ? try models.path(ModelStore.mmodDetector) : nil,
                                  predictor68Path: try models.path(ModelStore.predictor68))
        var seconds = [Strategy: [Bool: Double]](), detections = [Strategy: Int](), found = [Strategy: Int]()
        var foundOfReference = [Strategy: Int](), referenceFound = 0
        var referenceBoxesFound = [Strategy: Int](), referenceBoxes = 0
        var perPhoto: [PhotoReport] = []
        var pickedByBoth = 0, pickedSame = 0
        for photo in photos {
            var image = try NativeImage.decode(Data(contentsOf: photo.url), maxPixels: parameters.maxPixels)
            var faces = photo.faces
            if photo.enlarge != 1 {
                image = try image.resized(width: Int((Double(image.width) * photo.enlarge).rounded()),
                                          height: Int((Double(image.height) * photo.enlarge).rounded()))
                faces = faces.map { FaceBox(left: $0.left * photo.enlarge, top: $0.top * photo.enlarge, right: $0.right * photo.enlarge,
                                            bottom: $0.bottom * photo.enlarge, score: $0.score) }
            }
            var boxes = [Strategy: [FaceBox]](), hits = [Strategy: Set<Int>]()
            var passes: FaceModel.CascadePasses?
            for strategy in Strategy.allCases {
                let t0 = DispatchTime.now().uptimeNanoseconds
                boxes[strategy] = try detect(strategy, image, model: model, passes: &passes)
                seconds[strategy, default: [:]][photo.annotated, default: 0] += Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
                hits[strategy] = Self.matched(faces, by: boxes[strategy]!)
                detections[strategy, default: 0] += boxes[strategy]!.count
                found[strategy, default: 0] += hits[strategy]!.count
            }
            referenceFound += hits[.reference]!.count
            referenceBoxes += boxes[.reference]!.count
            for strategy in Strategy.allCases {
                foundOfReference[strategy, default: 0] += hits[strategy]!.intersection(hits[.reference]!).count
                referenceBoxesFound[strategy, default: 0] += Self.matched(boxes[.reference]!, by: boxes[strategy]!).count
            }
            // `largest` is the default policy: the first box (boxes come largest first).
            var same: Bool?
            if let old = boxes[.ingest1]!.first, let new = boxes[.pipeline]!.first {
                pickedByBoth += 1
                same = old == new
                if old == new { pickedSame += 1 }
            }
            let name = photo.url.lastPathComponent + (photo.enlarge != 1 ? " ×\(photo.enlarge)" : "")
            perPhoto.append(PhotoReport(photo: name, width: image.width, height: image.height, annotated: faces.count,
                                        found: Dictionary(uniqueKeysWithValues: Strategy.allCases.map {
                                            ($0.rawValue, [boxes[$0]!.count, hits[$0]!.count])
                                        }),
                                        widths: Dictionary(uniqueKeysWithValues: Strategy.allCases.map {
                                            ($0.rawValue, boxes[$0]!.map { Int($0.width.rounded()) })
                                        }), pickedSame: same, passes: passes.map(Self.describe),
                                        largestFace: boxes[.pipeline]!.first.map { $0.width / Double(max(image.width, image.height)) }))
        }
        let annotated = photos.filter(\.annotated), faces = annotated.reduce(0) { $0 + $1.faces.count }
        let others = photos.count - annotated.count
        func ms(_ s: Double?, _ n: Int) -> Double { n > 0 ? 1000 * (s ?? 0) / Double(n) : 0 }
        let strategies = Strategy.allCases.map { s in
            StrategyReport(strategy: s.rawValue, annotatedFound: found[s] ?? 0,
                           recall: faces > 0 ? Double(found[s] ?? 0) / Double(faces) : 0,
                           recallOfReference: referenceFound > 0 ? Double(foundOfReference[s] ?? 0) / Double(referenceFound) : 0,
                           detections: detections[s] ?? 0, referenceBoxesFound: referenceBoxesFound[s] ?? 0,
                           detectMsPerPhoto: ms((seconds[s]?[true] ?? 0) + (seconds[s]?[false] ?? 0), photos.count),
                           detectMsPerAnnotatedPhoto: ms(seconds[s]?[true], annotated.count),
                           detectMsPerOtherPhoto: ms(seconds[s]?[false], others))
        }
        return Report(photos: photos.count, annotatedPhotos: annotated.count, annotatedFaces: faces, referenceBoxes: referenceBoxes,
                      strategies: strategies,
                      pickedByBoth: pickedByBoth, pickedSame: pickedSame, perPhoto: perPhoto)
    }
}

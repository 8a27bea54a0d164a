import Foundation

/// The `run:` section of a pipeline file: which stages `pidiff-data run` executes, in order, on
/// which catalog and sources. Strings may use `${VAR}` (environment) and a leading `~`.
public struct RunSpec: Codable, Equatable, Sendable {
    public enum Stage: String, Codable, Sendable, CaseIterable {
        case fetch, ingest, curate, masks, labels, balanceReport = "balance_report", select, export, encode, train, sample
    }
    public struct Select: Codable, Equatable, Sendable {
        public var name: String
        public var identities: Int
        public var imagesPerIdentity: Int = 6
        public var referenceImages: Int = 1
        public var seed: Int = 0
        package enum CodingKeys: String, CodingKey, CaseIterable { case name, identities, imagesPerIdentity = "images_per_identity", referenceImages = "reference_images", seed }
        public init(from decoder: Decoder) throws {
            try refuseUnknownKeys(decoder, CodingKeys.self)
            let c = try decoder.container(keyedBy: CodingKeys.self)
            name = try c.decode(String.self, forKey: .name)
            identities = try c.decode(Int.self, forKey: .identities)
            imagesPerIdentity = try c.decodeIfPresent(Int.self, forKey: .imagesPerIdentity) ?? 6
            referenceImages = try c.decodeIfPresent(Int.self, forKey: .referenceImages) ?? 1
            seed = try c.decodeIfPresent(Int.self, forKey: .seed) ?? 0
            guard identities >= 1, imagesPerIdentity >= 1, referenceImages >= 0 else {
                throw DecodingError.dataCorruptedError(forKey: .identities, in: c, debugDescription:
                    "select needs identities ≥ 1, images_per_identity ≥ 1 and reference_images ≥ 0")
            }
        }

        /// The drawing parameters in which a stored split (its `parameters` JSON, as `run` or
        /// `balance select` wrote it) differs from these, as `key stored -> wanted`.
        public func differences(fromStored parameters: String) -> [String] {
            let stored = (try? JSONSerialization.jsonObject(with: Data(parameters.utf8))) as? [String: Any] ?? [:]
            let wanted = ["identities": identities, "images_per_identity": imagesPerIdentity,
                          "reference_images": referenceImages, "seed": seed]
            return wanted.keys.sorted().compactMap { key in
                let before = stored[key] as? Int
                return before == wanted[key] ? nil : "\(key) \(before.map(String.init) ?? "unrecorded") -> \(wanted[key]!)"
            }
        }
        package init(name: String, identities: Int, imagesPerIdentity: Int = 6, referenceImages: Int = 1, seed: Int = 0) {
            self.name = name
            self.identities = identities
            self.imagesPerIdentity = imagesPerIdentity
            self.referenceImages = referenceImages
            self.seed = seed
        }
    }
    /// What the `fetch` stage downloads: URL lists into an inbox of identity folders, which
    /// `sources` must list for ingest to see what was fetched.
    public struct Fetch: Codable, Equatable, Sendable {
        public var lists: [String]
        public var inbox: String
        package enum CodingKeys: String, CodingKey, CaseIterable { case lists, inbox }
        public init(from decoder: Decoder) throws {
            try refuseUnknownKeys(decoder, CodingKeys.self)
            let c = try decoder.container(keyedBy: CodingKeys.self)
            lists = try c.decode([String].self, forKey: .lists)
            inbox = try c.decode(String.self, forKey: .inbox)
            guard !lists.isEmpty, !inbox.isEmpty else {
                throw DecodingError.dataCorruptedError(forKey: .lists, in: c, debugDescription: "fetch needs at least one list and an inbox")
            }
        }
        package init(lists: [String], inbox: String) {
            self.lists = lists
            self.inbox = inbox
        }
    }
    public struct Models: Codable, Equatable, Sendable {
        /// Write tiny random SD1.5/e4e models (`pidiff random-model --tiny`) into the work folder:
        /// the whole flow runs without downloaded weights, and outputs say they are random.
        public var tinyRandom: Bool = false
        public var e4e: String?
        public var sd: String?
        package enum CodingKeys: String, CodingKey, CaseIterable { case tinyRandom = "tiny_random", e4e, sd }
        public init(from decoder: Decoder) throws {
            try refuseUnknownKeys(decoder, CodingKeys.self)
            let c = try decoder.container(keyedBy: CodingKeys.self)
            tinyRandom = try c.decodeIfPresent(Bool.self, forKey: .tinyRandom) ?? false
            e4e = try c.decodeIfPresent(String.self, forKey: .e4e)
            sd = try c.decodeIfPresent(String.self, forKey: .sd)
        }
        package init(tinyRandom: Bool = false, e4e: String? = nil, sd: String? = nil) {
            self.tinyRandom = tinyRandom
            self.e4e = e4e
            self.sd = sd
        }
    }
    public var catalog: String
    public var sources: [String] = []
    public var stages: [Stage]
    public var work: String?
    public var target: Int = 500
    public var minImages: Int = 6
    public var select: Select?
    public var fetch: Fetch?
    public var models: Models?
    public var trainArguments: [String] = []
    /// Training processes (one per GPU) through accelerate; 1 runs `pidiff train` directly.
    public var trainProcesses: Int = 1
    public var samplePrompt: String = "a photo of S* reading in the library"
    public var sampleArguments: [String] = []

    package enum CodingKeys: String, CodingKey, CaseIterable {
        case catalog, sources, stages, work, target, minImages = "min_images", select, fetch, models
        case trainArguments = "train_arguments", trainProcesses = "train_processes", samplePrompt = "sample_prompt", sampleArguments = "sample_arguments"
    }

    public init(from decoder: Decoder) throws {
        try refuseUnknownKeys(decoder, CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        catalog = try c.decode(String.self, forKey: .catalog)
        sources = try c.decodeIfPresent([String].self, forKey: .sources) ?? []
        stages = try c.decode([Stage].self, forKey: .stages)
        work = try c.decodeIfPresent(String.self, forKey: .work)
        target = try c.decodeIfPresent(Int.self, forKey: .target) ?? 500
        minImages = try c.decodeIfPresent(Int.self, forKey: .minImages) ?? 6
        select = try c.decodeIfPresent(Select.self, forKey: .select)
        fetch = try c.decodeIfPresent(Fetch.self, forKey: .fetch)
        if stages.contains(.fetch) && fetch == nil {
            throw DecodingError.dataCorruptedError(forKey: .fetch, in: c, debugDescription: "the fetch stage needs run.fetch (lists, inbox)")
        }
        models = try c.decodeIfPresent(Models.self, forKey: .models)
        trainArguments = try c.decodeIfPresent([String].self, forKey: .trainArguments) ?? []
        trainProcesses = try c.decodeIfPresent(Int.self, forKey: .trainProcesses) ?? 1
        guard trainProcesses >= 1 else {
            throw DecodingError.dataCorruptedError(forKey: .trainProcesses, in: c, debugDescription: "train_processes must be at least 1")
        }
        samplePrompt = try c.decodeIfPresent(String.self, forKey: .samplePrompt) ?? "a photo of S* reading in the library"
        sampleArguments = try c.decodeIfPresent([String].self, forKey: .sampleArguments) ?? []
    }
    package init(catalog: String, sources: [String] = [], stages: [Stage], work: String? = nil, target: Int = 500, minImages: Int = 6, select: Select? = nil, models: Models? = nil, trainArguments: [String] = [], trainProcesses: Int = 1, samplePrompt: String = "a photo of S* reading in the library", sampleArguments: [String] = []) {
        self.catalog = catalog
        self.sources = sources
        self.stages = stages
        self.work = work
        self.target = target
        self.minImages = minImages
        self.select = select
        self.models = models
        self.trainArguments = trainArguments
        self.trainProcesses = trainProcesses
        self.samplePrompt = samplePrompt
        self.sampleArguments = sampleArguments
    }
}

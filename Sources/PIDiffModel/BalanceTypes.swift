import Foundation

/// One usable photo of an identity, with what selection ranks it by.
public struct UsableImage: Codable, Sendable, Equatable {
    public var fileID: Int64
    public var path: String
    public var sha256: String
    public var faceSize: Double
    public var sharpness: Double
    public var yaw: Double
    public var rollDegrees: Double

    /// Quality used to rank photos: resolution (face size, saturating at 512 px, the SD crop) ×
    /// sharpness (saturating) × frontalness. Each factor is in (0, 1].
    public var quality: Double {
        let resolution = min(faceSize, 512) / 512
        let sharp = sharpness / (sharpness + 50)
        let frontal = max(0.05, 1 - abs(yaw)) * max(0.05, cos(rollDegrees * .pi / 180))
        return resolution * max(sharp, 0.01) * frontal
    }
    package init(fileID: Int64, path: String, sha256: String, faceSize: Double, sharpness: Double, yaw: Double, rollDegrees: Double) {
        self.fileID = fileID
        self.path = path
        self.sha256 = sha256
        self.faceSize = faceSize
        self.sharpness = sharpness
        self.yaw = yaw
        self.rollDegrees = rollDegrees
    }
}

/// An identity with its resolved labels and usable photos.
public struct BalanceIdentity: Sendable {
    public var name: String
    public var race: String
    public var age: String
    public var gender: String
    public var images: [UsableImage]
    package init(name: String, race: String, age: String, gender: String, images: [UsableImage]) {
        self.name = name
        self.race = race
        self.age = age
        self.gender = gender
        self.images = images
    }
}

/// The balance report: one cell per race × age (× gender, or `all`), plus a total.
public struct BalanceCell: Codable, Sendable, Equatable {
    public var race: String
    public var age: String
    public var gender: String
    public var identities: Int
    public var images: Int
    public var pctAll: Double
    public var pctKnown: Double?
    public var shortfall: Int?
    package enum CodingKeys: String, CodingKey {
        case race, age, gender, identities, images, pctAll = "pct_all", pctKnown = "pct_known", shortfall
    }
    package init(race: String, age: String, gender: String, identities: Int, images: Int, pctAll: Double, pctKnown: Double? = nil, shortfall: Int? = nil) {
        self.race = race
        self.age = age
        self.gender = gender
        self.identities = identities
        self.images = images
        self.pctAll = pctAll
        self.pctKnown = pctKnown
        self.shortfall = shortfall
    }
}

/// A balanced draw of identities and their photos.
public struct SplitSelection: Codable, Sendable {
    public struct Quota: Codable, Sendable, Equatable {
        public var race: String
        public var age: String
        public var quota: Int
        public var selected: Int
        public var available: Int
        package init(race: String, age: String, quota: Int, selected: Int, available: Int) {
            self.race = race
            self.age = age
            self.quota = quota
            self.selected = selected
            self.available = available
        }
    }
    public struct Item: Codable, Sendable, Equatable {
        public var identity: String
        public var role: String // train | reference
        public var path: String
        public var sha256: String
        public var fileID: Int64
        package init(identity: String, role: String, path: String, sha256: String, fileID: Int64) {
            self.identity = identity
            self.role = role
            self.path = path
            self.sha256 = sha256
            self.fileID = fileID
        }
    }
    public var quotas: [Quota]
    public var items: [Item]
    /// Identities requested but not available anywhere (after redistribution).
    public var shortfall: Int
    package init(quotas: [Quota], items: [Item], shortfall: Int) {
        self.quotas = quotas
        self.items = items
        self.shortfall = shortfall
    }
}

import Foundation
import PIDiffModel
import PIDiffNative
import PIDiffCatalog

/// `pidiff-data report --html DIR`: a static site to browse the catalog without a server —
/// index (counts, last runs, balance heatmap), identities (every photo with its thumbnail and
/// whether it is kept, a duplicate, an impostor or rejected, and why), masks (every flagged mask
/// with its e4e input and the reason), curation groups and splits.
/// Thumbnails are small JPEGs written into `DIR/thumbs`; every link is relative, so the folder
/// can be copied or served anywhere. Source photos are named, not linked (they live outside DIR).
public struct HTMLReport: Sendable {
    public struct Summary: Codable, Sendable {
        public var directory: String
        public var pages: [String]
        public var thumbnails: Int
        public var identities: Int
        public var photos: Int
    }

    public static let pages = ["index.html", "identities.html", "masks.html", "curation.html", "splits.html"]
    /// Thumbnail edge in pixels (crops are square).
    public static let thumbnailSize = 96

    public var catalogPath: String
    public var directory: URL
    public var labels: LabelMapping
    public var minImages: Int
    public var target: Int
    /// How making the thumbnails reports progress on stderr.
    public var progress: ProgressMode

    public init(catalogPath: String, directory: URL, labels: LabelMapping = LabelMapping(), minImages: Int = 6, target: Int = 500,
                progress: ProgressMode = .off) {
        self.catalogPath = catalogPath
        self.directory = directory
        self.labels = labels
        self.minImages = minImages
        self.target = target
        self.progress = progress
    }

    public func write() throws -> Summary {
        guard FileManager.default.fileExists(atPath: catalogPath) else { throw CatalogError.open(catalogPath, "no such catalog") }
        let catalog = try Catalog(path: catalogPath)
        try OutputPath.prepareFolder(directory.appendingPathComponent("thumbs"))
        try OutputPath.markAsOutput(directory)
        let photos = try catalog.reportPhotos()
        var thumbs = ThumbnailWriter(directory: directory)
        let curateRun = try catalog.latestCurationRun()
        let findings = try curateRun.map { try catalog.curationFindings(runID: $0) } ?? []
        var pageThumbs: [String: String] = [:] // crop path → relative thumbnail; absent when the crop is unreadable
        // Masks under the current mask parameters: the e4e input (crop over white through the
        // mask) shows what the encoder gets; flagged ones are listed with their reason.
        let masks = try catalog.maskReport()
        // One thumbnail per face crop, then per e4e input: what takes the time on a large catalog.
        let images = Set(photos.compactMap(\.crop256)).sorted() + masks.compactMap(\.e4eInput)
        var progress = Progress(stage: "report", unit: "thumbnails", total: images.count, mode: images.isEmpty ? .off : self.progress)
        for (n, image) in images.enumerated() {
            if let thumb = thumbs.thumbnail(for: image) { pageThumbs[image] = thumb }
            progress.update(done: n + 1)
        }
        progress.finish()
        let view = ReportView(photos: photos, findings: findings, thumbs: pageThumbs, masks: masks, curated: curateRun != nil)

        let cells = BalanceReport.cells(try catalog.balanceInputs(mapping: labels), races: labels.raceCategories, ages: labels.ageCategories,
                                        target: target, minImages: minImages, byGender: false)
        try BalanceReport.heatmap(cells, minImages: minImages, target: target).pngData()
            .write(to: directory.appendingPathComponent("balance.png"))
        let identityLabels = try catalog.identityLabels(mapping: labels, classifierFingerprint: try catalog.currentClassifierFingerprint())
        let splits = try catalog.splits().map { ($0, try catalog.splitItems($0.name)) }

        let html: [String: String] = [
            "index.html": view.index(status: try catalog.status(lastRuns: 10), catalogPath: catalogPath, cells: cells, splits: splits.count),
            "identities.html": view.identities(labels: Dictionary(identityLabels.map { ($0.identity, $0) }, uniquingKeysWith: { first, _ in first }),
                                               aliases: try catalog.identityAliases()),
            "masks.html": view.masks(),
            "curation.html": view.curation(),
            "splits.html": view.splits(splits),
        ]
        for (name, page) in html {
            try Data(page.utf8).write(to: directory.appendingPathComponent(name), options: .atomic)
        }
        return Summary(directory: directory.path, pages: Self.pages, thumbnails: thumbs.written,
                       identities: Set(photos.map(\.identity)).count, photos: photos.count)
    }
}

/// Writes one JPEG thumbnail per crop content (the crop's file name is its SHA-256).
struct ThumbnailWriter {
    let directory: URL
    var written = 0

    /// Relative path of the thumbnail, or nil when the crop cannot be read (the page then says so
    /// instead of showing a broken image).
    mutating func thumbnail(for cropPath: String) -> String? {
        let name = "thumbs/\(URL(fileURLWithPath: cropPath).deletingPathExtension().lastPathComponent).jpg"
        let target = directory.appendingPathComponent(name)
        if FileManager.default.fileExists(atPath: target.path) { return name }
        guard let data = try? Data(contentsOf: URL(fileURLWithPath: cropPath)),
              let image = try? NativeImage.decode(data, maxPixels: 1 << 24),
              let jpeg = try? image.resized(width: HTMLReport.thumbnailSize, height: HTMLReport.thumbnailSize).jpegData(quality: 85),
              (try? jpeg.write(to: target, options: .atomic)) != nil else { return nil }
        written += 1
        return name
    }
}

/// The pages' HTML. Every catalog value goes through `escape` (identity names and paths may hold
/// quotes, `<`, `&` and any Unicode).
struct ReportView {
    let photos: [ReportPhoto]
    let findings: [CurationFinding]
    let thumbs: [String: String]
    /// Masks under the current mask parameters.
    let maskRows: [MaskReportRow]
    /// Identity name → anchor on identities.html (names are not safe as ids).
    let anchors: [String: String]
    /// Path → the photo.
    let byPath: [String: ReportPhoto]
    /// Path → the duplicate or impostor finding about it.
    let decisions: [String: CurationFinding]
    /// Whether curation has run: before it, no photo is "kept", only not yet checked.
    let curated: Bool

    init(photos: [ReportPhoto], findings: [CurationFinding], thumbs: [String: String], masks: [MaskReportRow] = [], curated: Bool = true) {
        self.curated = curated
        self.photos = photos
        self.findings = findings
        self.thumbs = thumbs
        self.maskRows = masks
        var anchors: [String: String] = [:]
        for name in photos.map(\.identity) where anchors[name] == nil { anchors[name] = "i\(anchors.count + 1)" }
        self.anchors = anchors
        byPath = Dictionary(photos.map { ($0.path, $0) }, uniquingKeysWith: { a, _ in a })
        var decisions: [String: CurationFinding] = [:]
        for f in findings where f.kind != .samePerson { if let p = f.path, decisions[p] == nil { decisions[p] = f } }
        self.decisions = decisions
    }

    static func escape(_ s: String) -> String {
        var out = ""
        out.reserveCapacity(s.count)
        for c in s {
            switch c {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&#39;"
            default: out.append(c)
            }
        }
        return out
    }

    private func e(_ s: String) -> String { Self.escape(s) }

    /// Kept, duplicate, impostor or rejected, with the reason.
    func verdict(_ p: ReportPhoto) -> (cls: String, text: String) {
        if let f = decisions[p.path] {
            switch f.kind {
            case .exactDuplicate, .nearDuplicate:
                let kept = f.keptPath.map { URL(fileURLWithPath: $0).lastPathComponent } ?? "?"
                return ("duplicate", "\(f.kind.rawValue) of \(kept): \(f.reason)")
            case .impostor: return ("impostor", "impostor: \(f.reason)")
            case .samePerson: break
            }
        }
        if p.outcome != "ok" { return ("rejected", p.outcome + (p.reason.map { ": \($0)" } ?? "")) }
        if p.qualityOK == false { return ("rejected", "quality: \(p.qualityReason ?? "failed")") }
        guard curated else { return ("uncurated", "not curated yet (pidiff-data curate checks duplicates and impostors)") }
        return ("kept", "kept")
    }

    func card(_ p: ReportPhoto, note: String? = nil) -> String {
        let v = verdict(p)
        let image: String
        if let crop = p.crop256, let thumb = thumbs[crop] {
            image = "<img src=\"\(e(thumb))\" width=\"\(HTMLReport.thumbnailSize)\" height=\"\(HTMLReport.thumbnailSize)\" alt=\"\(e(p.identity))\">"
        } else {
            image = "<div class=\"noimg\">\(p.crop256 == nil ? "no face" : "crop unreadable")</div>"
        }
        // A photo stored content-addressed from a Parquet row is named by its file and row, not by its hash.
        let name = p.origin.flatMap { $0.contains("#row=") ? URL(fileURLWithPath: $0).lastPathComponent : nil }
            ?? URL(fileURLWithPath: p.path).lastPathComponent
        var title = p.path + (p.origin.map { "\nfrom \($0)" } ?? "")
        var web = ""
        if let f = p.fetched {
            title += "\nfetched from \(f.url)" + (f.license.map { "\nlicence: \($0)" } ?? "") + (f.source.map { "\nsource: \($0)" } ?? "")
            web = "<br><a class=\"prov\" href=\"\(e(f.url))\">\(e(f.source ?? "web"))</a>" + (f.license.map { " · \(e($0))" } ?? "")
        }
        return "<figure class=\"\(v.cls)\" title=\"\(e(title))\">\(image)<figcaption><b>\(e(name))</b><br>\(e(note ?? v.text))\(web)</figcaption></figure>"
    }

    func card(path: String, note: String? = nil) -> String {
        if let p = byPath[path] { return card(p, note: note) }
        return "<figure class=\"rejected\" title=\"\(e(path))\"><div class=\"noimg\">not catalogued</div><figcaption>\(e(path))</figcaption></figure>"
    }

    func identityLink(_ name: String) -> String {
        guard let a = anchors[name] else { return e(name) }
        return "<a href=\"identities.html#\(a)\">\(e(name))</a>"
    }

    func page(_ title: String, _ body: String) -> String {
        let nav = HTMLReport.pages.map { p in
            "<a href=\"\(p)\">\(p == "index.html" ? "summary" : String(p.dropLast(5)))</a>"
        }.joined(separator: " · ")
        return """
            <!doctype html>
            <html lang="en"><head><meta charset="utf-8"><title>\(e(title))</title>
            <style>
            body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
            nav{margin-bottom:1em} table{border-collapse:collapse} td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}
            .grid{display:flex;flex-wrap:wrap;gap:8px} figure{margin:0;width:120px;padding:4px;border:3px solid #ccc;font-size:11px;overflow-wrap:anywhere}
            figure img,.noimg{display:block;width:96px;height:96px;background:#eee;margin:auto}
            .noimg{font-size:11px;text-align:center;line-height:96px}
            .kept{border-color:#3a3} .uncurated{border-color:#69c} .duplicate{border-color:#e90} .impostor{border-color:#d22} .rejected{border-color:#999;opacity:.7}
            </style></head>
            <body><nav>\(nav)</nav><h1>\(e(title))</h1>
            \(body)
            <script>
            // Reports an image that did not load on the console, where the headless check looks for it.
            addEventListener("load", () => { for (const i of document.images) if (!i.complete || i.naturalWidth === 0) console.error("image did not load: " + i.getAttribute("src")) })
            </script>
            </body></html>

            """
    }

    func index(status: CatalogStatus, catalogPath: String, cells: [BalanceCell], splits: Int) -> String {
        var b = "<p>Catalog <code>\(e(catalogPath))</code>, ingest fingerprint <code>\(e(status.fingerprint ?? "none"))</code></p>"
        b += "<table><tr><th>files</th><th>identities</th><th>distinct images</th><th>unreadable</th><th>faces</th><th>selected</th><th>passing quality</th><th>splits</th></tr>"
        b += "<tr>" + [status.files, status.identities, status.images, status.unreadable, status.faces, status.selectedFaces,
                       status.qualityPassed, splits].map { "<td>\($0)</td>" }.joined() + "</tr></table>"
        b += "<h2>Outcomes</h2><table>" + status.outcomes.sorted { $0.key < $1.key }
            .map { "<tr><td>\(e($0.key))</td><td>\($0.value)</td></tr>" }.joined() + "</table>"
        var counts: [String: Int] = [:]
        for p in photos { counts[verdict(p).cls, default: 0] += 1 }
        if !maskRows.isEmpty {
            b += "<h2>Masks</h2><p>\(maskRows.count) masked, \(maskRows.filter { !$0.ok }.count) flagged — see <a href=\"masks.html\">masks</a></p>"
        }
        if !curated {
            b += "<p class=\"note\">Curation has not run: no photo has been checked for duplicates or impostors yet (pidiff-data curate).</p>"
        }
        b += "<h2>Photos</h2><p>" + ["kept", "uncurated", "duplicate", "impostor", "rejected"].compactMap { name in counts[name].map { "\(name) \($0)" } }
            .joined(separator: ", ")
            + " — see <a href=\"identities.html\">identities</a>, <a href=\"curation.html\">curation</a>, <a href=\"splits.html\">splits</a></p>"
        let total = cells.last
        b += "<h2>Balance</h2><p>\(total?.identities ?? 0) identities with enough usable photos, \(total?.images ?? 0) photos.</p>"
        b += "<img src=\"balance.png\" alt=\"identities per race and age\">"
        b += "<h2>Last runs</h2><table><tr><th>#</th><th>command</th><th>status</th><th>started</th><th>ended</th><th>counts</th></tr>"
        for r in status.runs {
            let counts = (r.counts ?? [:]).sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
            b += "<tr><td>\(r.id)</td><td>\(e(r.command))</td><td>\(e(r.status))</td><td>\(e(r.startedAt))</td><td>\(e(r.endedAt ?? "-"))</td><td>\(e(counts))</td></tr>"
        }
        return page("pidiff-data catalog", b + "</table>")
    }

    func identities(labels: [String: IdentityLabels], aliases: [String: String]) -> String {
        var b = ""
        for (name, mine) in Dictionary(grouping: photos, by: \.identity).sorted(by: { $0.key < $1.key }) {
            let l = labels[name]
            let tags = [l?.race.value, l?.age.value, l?.gender.value].map { $0 ?? "unknown" }.joined(separator: " · ")
            let alias = aliases[name].map { " — alias of \(identityLink($0))" } ?? ""
            let kept = mine.filter { verdict($0).cls == "kept" }.count
            let summary = curated ? "\(kept) of \(mine.count) photos kept" : "\(mine.count) photos, not curated yet"
            b += "<section id=\"\(anchors[name]!)\"><h2>\(e(name))</h2><p>\(e(tags))\(alias) — \(summary)</p>"
            b += "<div class=\"grid\">" + mine.map { card($0) }.joined() + "</div></section>"
        }
        return page("Identities", b.isEmpty ? "<p>No photos catalogued.</p>" : b)
    }

    /// Flagged masks first (e4e input, photo, reason), then how many passed.
    func masks() -> String {
        guard !maskRows.isEmpty else { return page("Masks", "<p>No masks yet (pidiff-data masks).</p>") }
        let flagged = maskRows.filter { !$0.ok }
        var b = "<p>\(maskRows.count) faces masked: \(maskRows.count - flagged.count) ok, \(flagged.count) flagged. "
            + "A flagged mask lost the head above the brows, cut the head outline, or covers too little or too much of the crop; "
            + "each card shows the e4e input (the crop over white through the mask).</p>"
        b += "<h2>Flagged (\(flagged.count))</h2><div class=\"grid\">"
        for m in flagged {
            let image: String
            if let e4e = m.e4eInput, let thumb = thumbs[e4e] {
                image = "<img src=\"\(e(thumb))\" width=\"\(HTMLReport.thumbnailSize)\" height=\"\(HTMLReport.thumbnailSize)\" alt=\"e4e input\">"
            } else {
                image = "<div class=\"noimg\">\(m.e4eInput == nil ? "no mask" : "mask unreadable")</div>"
            }
            let name = URL(fileURLWithPath: m.path).lastPathComponent
            b += "<figure class=\"impostor\" title=\"\(e(m.path))\">\(image)<figcaption><b>\(e(name))</b> (\(identityLink(m.identity)))<br>"
                + "\(e(m.reason ?? "flagged"))</figcaption></figure>"
        }
        return page("Masks", b + "</div>")
    }

    func curation() -> String {
        guard !findings.isEmpty else { return page("Curation", "<p>No curate run with findings yet (pidiff-data curate).</p>") }
        var b = ""
        let duplicates = findings.filter { $0.kind == .exactDuplicate || $0.kind == .nearDuplicate }
        b += "<h2>Duplicate groups (\(Set(duplicates.map { $0.groupID ?? -1 }).count))</h2>"
        for (group, members) in Dictionary(grouping: duplicates, by: { $0.groupID ?? -1 }).sorted(by: { $0.key < $1.key }) {
            let kept = members.compactMap(\.keptPath).first
            b += "<h3>Group \(group): \(e(members[0].kind.rawValue))</h3><div class=\"grid\">"
            if let kept { b += card(path: kept, note: "kept") }
            b += members.compactMap { m in m.path.map { card(path: $0, note: String(format: "score %.3f: ", m.score) + m.reason) } }.joined()
            b += "</div>"
        }
        let impostors = findings.filter { $0.kind == .impostor }
        b += "<h2>Impostors (\(impostors.count))</h2><div class=\"grid\">"
        b += impostors.compactMap { f in f.path.map { card(path: $0, note: "in \(f.identity ?? "?"): \(f.reason)") } }.joined() + "</div>"
        let same = findings.filter { $0.kind == .samePerson }
        b += "<h2>Same person under two identities (\(same.count))</h2><table><tr><th>identity</th><th>identity</th><th>score</th><th>reason</th></tr>"
        for f in same {
            b += "<tr><td>\(identityLink(f.identity ?? "?"))</td><td>\(identityLink(f.otherIdentity ?? "?"))</td>"
                + "<td>\(String(format: "%.3f", f.score))</td><td>\(e(f.reason))</td></tr>"
        }
        return page("Curation", b + "</table>")
    }

    func splits(_ splits: [(SplitSummary, [SplitSelection.Item])]) -> String {
        guard !splits.isEmpty else { return page("Splits", "<p>No splits drawn yet (pidiff-data balance select).</p>") }
        var b = ""
        for (s, items) in splits {
            b += "<section><h2>\(e(s.name))</h2><p>created \(e(s.createdAt)), seed \(s.seed): \(s.identities) identities, "
                + "\(s.train) train, \(s.reference) reference photos</p>"
            for (identity, mine) in Dictionary(grouping: items, by: \.identity).sorted(by: { $0.key < $1.key }) {
                b += "<h3>\(identityLink(identity))</h3><div class=\"grid\">" + mine.map { card(path: $0.path, note: $0.role) }.joined() + "</div>"
            }
            b += "</section>"
        }
        return page("Splits", b)
    }
}

// swift-tools-version:6.0
import PackageDescription

// System libraries come from Debian: libopencv-dev (4.6), libdlib-dev (19.24), libpng-dev, libsqlite3-dev,
// libopenblas-dev. scripts/setup.sh installs them.
let package = Package(
    name: "pidiff-data",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "pidiff-data", targets: ["pidiff-data"]),
        .library(name: "PIDiffData", targets: ["PIDiffData"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
        .package(url: "https://github.com/apple/swift-async-algorithms", from: "1.1.4"),
        .package(url: "https://github.com/jpsim/Yams", from: "5.0.1"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        // Streaming CSV reader (rows pulled one at a time from an InputStream) for Hugging Face
        // imagefolder `metadata.csv` files.
        .package(url: "https://github.com/yaslab/CSV.swift", from: "2.5.2"),
        // HTTP client for `fetch` (URL lists): connection pooling per host, timeouts, streaming
        // bodies, gzip decompression with a size limit, HTTPS through swift-nio-ssl.
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
    ],
    targets: [
        // C++17 wrapper around OpenCV and dlib. Only a plain C API (opaque handles, error codes
        // with messages) crosses into Swift; no C++ exception escapes it.
        .target(
            name: "CFaceNative",
            cxxSettings: [
                .unsafeFlags(["-I/usr/include/opencv4", "-O2"]),
            ],
            linkerSettings: [
                .linkedLibrary("dlib"),
                .linkedLibrary("opencv_img_hash"),
                .linkedLibrary("opencv_dnn"),
                .linkedLibrary("opencv_imgcodecs"),
                .linkedLibrary("opencv_imgproc"),
                .linkedLibrary("opencv_core"),
                .linkedLibrary("png"),
                .linkedLibrary("openblas"),
                .linkedLibrary("stdc++"),
            ]
        ),
        // Layers, each a target so that a dependency pointing up is a build error:
        // Model (value types, parameters) <- Native (Swift over CFaceNative) and Catalog (GRDB,
        // all SQL) <- Data (stage transforms, stages, workspace) <- pidiff-data (CLI).
        .target(
            name: "PIDiffModel",
            dependencies: [
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Yams", package: "Yams"),
            ]
        ),
        .target(
            name: "PIDiffNative",
            dependencies: ["CFaceNative", "PIDiffModel"]
        ),
        .target(
            name: "PIDiffCatalog",
            dependencies: [
                "PIDiffModel",
                .product(name: "GRDB", package: "GRDB.swift"),
            ]
        ),
        .target(
            name: "PIDiffData",
            dependencies: [
                "PIDiffModel",
                "PIDiffNative",
                "PIDiffCatalog",
                .product(name: "AsyncAlgorithms", package: "swift-async-algorithms"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "CSV", package: "CSV.swift"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ]
        ),
        .executableTarget(
            name: "pidiff-data",
            dependencies: [
                "PIDiffData",
                "PIDiffModel",
                "PIDiffCatalog",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .testTarget(
            name: "PIDiffDataTests",
            dependencies: ["PIDiffData", "PIDiffModel", "PIDiffNative", "PIDiffCatalog", "CFaceNative",
                           .product(name: "GRDB", package: "GRDB.swift"), .product(name: "Yams", package: "Yams")]
        ),
    ],
    cxxLanguageStandard: .cxx17
)

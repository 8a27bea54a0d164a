import Dispatch

/// A task executor backed by its own serial dispatch queue. Ingest workers spend their time in
/// blocking C++ calls (decode, HOG, warps); running them here keeps Swift's cooperative pool free
/// for the scanner and the catalog writer, so both cores do face work without starving them.
final class WorkerExecutor: TaskExecutor, @unchecked Sendable {
    private let queue: DispatchQueue

    init(label: String) {
        queue = DispatchQueue(label: label, qos: .userInitiated)
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        queue.async { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
    }
}

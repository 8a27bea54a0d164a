import AsyncAlgorithms
import Foundation

/// The shape ingest and masks share: a feeder hands jobs to N workers through a bounded channel;
/// each worker runs on its own thread with its own state (dlib and OpenCV models are not
/// thread-safe) and sends results to one consumer, which tallies them and commits them to the
/// catalog in batched transactions. Channels hold one item at a time, so memory stays flat
/// whatever the input size; a failure on either side stops the other (`ResultPipe`).
enum WorkerPipeline {
    /// - `feed` sends jobs to the workers' channel and may send results straight to the writer
    ///   (items that need no work); the workers' channel is finished when it returns.
    /// - `makeWorker` runs once on each worker's thread and returns what processes a job there.
    /// - `record` updates the tally for each result; `commit` writes a batch.
    static func run<Job: Sendable, Output: Sendable, Tally: Sendable>(
        label: String, workers: Int,
        feed: @escaping @Sendable (_ jobs: AsyncChannel<Job>, _ results: AsyncChannel<Output>) async throws -> Void,
        makeWorker: @escaping @Sendable () throws -> (Job) throws -> Output,
        tally initial: Tally, record: (inout Tally, Output) -> Void,
        commit: ([Output]) async throws -> Void
    ) async -> ResultPipe.Outcome<Tally> {
        let jobs = AsyncChannel<Job>()
        let results = AsyncChannel<Output>()
        let workerCount = workers > 0 ? workers : ProcessInfo.processInfo.activeProcessorCount
        return await ResultPipe.run(results, producers: {
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask {
                    defer { jobs.finish() }
                    try await feed(jobs, results)
                }
                for w in 0..<workerCount {
                    group.addTask(executorPreference: WorkerExecutor(label: "pidiff.\(label).worker\(w)")) {
                        let process = try makeWorker()
                        for await job in jobs { await results.send(try process(job)) }
                    }
                }
                // Not waitForAll(): it waits for every child before rethrowing, and after a
                // worker fails the feeder can wait forever to hand it work. Throwing out of the
                // body cancels the remaining children instead.
                while try await group.next() != nil {}
            }
        }, consumer: { results in
            var tally = initial
            var batch = CommitBatch<Output>()
            for await result in results {
                record(&tally, result)
                if batch.add(result) { try await commit(batch.take()) }
            }
            try await commit(batch.take())
            return tally
        })
    }
}

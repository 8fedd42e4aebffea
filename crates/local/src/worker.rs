//! A worker thread fed by a bounded queue. Submitting to a full queue fails at once instead of waiting. A job
//! that panics is caught and counted; the thread goes on with the next job, so one bad request cannot disable
//! the model until a restart.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};

use crate::LocalError;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// What a worker has seen, for the metrics.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Jobs refused because the queue was full.
    pub busy: AtomicU64,
    /// Jobs that panicked (caught; the worker went on).
    pub panics: AtomicU64,
    /// Generations stopped because their request was abandoned (client gone, timeout).
    pub cancelled: AtomicU64,
}

#[derive(Debug, Clone)]
pub(crate) struct Worker {
    tx: SyncSender<Job>,
    depth: usize,
    stats: Arc<WorkerStats>,
}

impl Worker {
    /// Starts the thread. `depth` jobs may wait while one runs.
    pub(crate) fn spawn(name: &str, depth: usize) -> Result<Self, LocalError> {
        let (tx, rx) = sync_channel::<Job>(depth);
        let stats = Arc::new(WorkerStats::default());
        let counted = stats.clone();
        let thread = name.to_string();
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                // Ends when every sender is gone.
                while let Ok(job) = rx.recv() {
                    // A job owns everything it touches (the engines are shared read-only; a generation's context
                    // is its own), so nothing is left half-updated when it unwinds.
                    if std::panic::catch_unwind(AssertUnwindSafe(job)).is_err() {
                        counted.panics.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(worker = %thread, "a local inference job panicked; the worker goes on");
                    }
                }
            })
            .map_err(|e| LocalError::Engine(format!("cannot start {name}: {e}")))?;
        Ok(Self { tx, depth, stats })
    }

    pub(crate) fn submit(&self, job: impl FnOnce() + Send + 'static) -> Result<(), LocalError> {
        match self.tx.try_send(Box::new(job)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                self.stats.busy.fetch_add(1, Ordering::Relaxed);
                Err(LocalError::Busy(self.depth))
            }
            Err(TrySendError::Disconnected(_)) => Err(LocalError::Engine("the model's worker thread stopped".into())),
        }
    }

    pub(crate) fn stats(&self) -> &Arc<WorkerStats> {
        &self.stats
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    #[test]
    fn a_panicking_job_does_not_stop_the_worker() {
        let w = Worker::spawn("test-worker", 2).unwrap();
        w.submit(|| panic!("boom")).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        w.submit(move || tx.send(42).unwrap()).unwrap();
        assert_eq!(rx.recv_timeout(std::time::Duration::from_secs(30)).unwrap(), 42);
        assert_eq!(w.stats().panics.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_full_queue_refuses_at_once_and_counts() {
        let w = Worker::spawn("test-worker-full", 1).unwrap();
        let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        w.submit(move || {
            started_tx.send(()).unwrap();
            let _ = hold_rx.recv();
        })
        .unwrap();
        started_rx.recv_timeout(std::time::Duration::from_secs(30)).unwrap();
        w.submit(|| {}).unwrap(); // waits in the queue
        assert!(matches!(w.submit(|| {}), Err(LocalError::Busy(1))));
        assert_eq!(w.stats().busy.load(Ordering::Relaxed), 1);
        drop(hold_tx);
    }
}

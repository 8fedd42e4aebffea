//! A worker thread fed by a bounded queue. Submitting to a full queue fails at once instead of waiting.

use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};

use crate::LocalError;

type Job = Box<dyn FnOnce() + Send + 'static>;

#[derive(Debug, Clone)]
pub(crate) struct Worker {
    tx: SyncSender<Job>,
    depth: usize,
}

impl Worker {
    /// Starts the thread. `depth` jobs may wait while one runs.
    pub(crate) fn spawn(name: &str, depth: usize) -> Result<Self, LocalError> {
        let (tx, rx) = sync_channel::<Job>(depth);
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                // Ends when every sender is gone.
                while let Ok(job) = rx.recv() {
                    job();
                }
            })
            .map_err(|e| LocalError::Engine(format!("cannot start {name}: {e}")))?;
        Ok(Self { tx, depth })
    }

    pub(crate) fn submit(&self, job: impl FnOnce() + Send + 'static) -> Result<(), LocalError> {
        match self.tx.try_send(Box::new(job)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(LocalError::Busy(self.depth)),
            Err(TrySendError::Disconnected(_)) => Err(LocalError::Engine("the model's worker thread stopped".into())),
        }
    }
}

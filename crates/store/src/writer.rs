//! The request log's write path: a queue bounded in bytes between the request path and the store, drained by
//! one task into batched transactions.
//!
//! Memory is bounded by a semaphore of bytes (each queued row holds permits for its weight). When the queue is
//! full the configured policy applies, and is counted: `wait` (the request path waits for room; nothing is
//! lost) or `drop_bodies` (the row is kept without its bodies; only when even that does not fit does it wait).
//! A batch that fails to write is retried with backoff, never dropped; on shutdown the queue is drained.
//!
//! Waiting is real back-pressure: [`LogWriter::write`] returns once the row is queued, and the request path
//! awaits it (a non-streamed answer before it is sent, a stream before its last event). Only a row whose
//! request is already gone (the client disconnected) cannot wait: it waits in one of at most `max_waiting`
//! background waiters, and past those it is dropped, counted and reported.
//!
//! What "acknowledged" means is [`Acknowledge`]: by default a row is acknowledged once queued, so a process
//! killed with rows in the queue loses them. With [`Acknowledge::Committed`], [`LogWriter::write`] returns only
//! once the row's batch has committed (group commit: one transaction for every row that arrived meanwhile), so
//! an answer a client received has its row in the store, whatever happens to the process next. A commit that
//! takes longer than `acknowledge_timeout` (the store is down) stops holding the answer: the row stays queued,
//! and the early answer is counted in `ack_timeouts`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::{LogStore, Record};

/// When a row counts as acknowledged: when [`LogWriter::write`] returns, so when the answer may go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Acknowledge {
    /// Once the row is in the queue (lost if the process dies before its batch commits).
    #[default]
    Queued,
    /// Once the row's batch has committed to the store.
    Committed,
}

/// What to do when the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnFull {
    /// Wait for room: every row and body is kept, the request path slows down.
    #[default]
    Wait,
    /// Keep the row, drop its request and response bodies.
    DropBodies,
}

#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// The queue's bound, in bytes of queued rows (bodies included).
    pub max_queue_bytes: usize,
    /// Rows per transaction, at most.
    pub batch_max: usize,
    pub on_full: OnFull,
    /// Rows older than this are deleted (checked hourly); none when unset.
    pub retention: Option<Duration>,
    /// Rows that could not wait in line (their request is gone) and wait in the background, at most.
    pub max_waiting: usize,
    pub acknowledge: Acknowledge,
    /// With [`Acknowledge::Committed`]: the longest a write waits for its commit.
    pub acknowledge_timeout: Duration,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            max_queue_bytes: 64 << 20,
            batch_max: 512,
            on_full: OnFull::Wait,
            retention: None,
            max_waiting: 1024,
            acknowledge: Acknowledge::Queued,
            acknowledge_timeout: Duration::from_secs(5),
        }
    }
}

/// Counters of the write path, read by the metrics endpoint.
#[derive(Debug, Default)]
pub struct WriterStats {
    pub queued_rows: AtomicU64,
    pub queued_bytes: AtomicU64,
    pub written_rows: AtomicU64,
    pub batches: AtomicU64,
    pub write_errors: AtomicU64,
    /// Rows whose bodies were dropped because the queue was full (`drop_bodies`).
    pub bodies_dropped: AtomicU64,
    /// Rows that had to wait for room (`wait`).
    pub waited: AtomicU64,
    /// Rows waiting in the background now (their request is gone).
    pub waiting_detached: AtomicU64,
    /// Rows dropped: the queue was full and no background waiter was free, or the log was closed.
    pub dropped: AtomicU64,
    /// With [`Acknowledge::Committed`]: answers that went out before their row committed (the commit took
    /// longer than `acknowledge_timeout`, or the log closed first).
    pub ack_timeouts: AtomicU64,
}

struct Queued {
    record: Record,
    weight: u64,
    permit: OwnedSemaphorePermit,
    /// Told when the row's batch has committed ([`Acknowledge::Committed`] only).
    committed: Option<oneshot::Sender<()>>,
}

/// The handle the request path writes through; cheap to clone.
///
/// The channel to the drain task is unbounded in items on purpose: every item in it holds permits of `room`,
/// the semaphore of bytes, so the queue's memory is bounded by `max_queue_bytes` (a row weighs at least 512).
#[derive(Clone)]
pub struct LogWriter {
    tx: mpsc::UnboundedSender<Queued>,
    room: Arc<Semaphore>,
    capacity: usize,
    on_full: OnFull,
    stats: Arc<WriterStats>,
    /// Background waiters left for rows that cannot wait in line.
    waiters: Arc<Semaphore>,
    acknowledge: Acknowledge,
    acknowledge_timeout: Duration,
}

/// The drain task; `close` flushes what is queued and waits for it.
pub struct WriterTask {
    join: JoinHandle<()>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl LogWriter {
    /// Starts the drain task on the current runtime.
    pub fn spawn(store: Arc<dyn LogStore>, config: WriterConfig) -> (Self, WriterTask) {
        let (tx, rx) = mpsc::unbounded_channel();
        let capacity = config.max_queue_bytes.clamp(1 << 16, u32::MAX as usize);
        let stats = Arc::new(WriterStats::default());
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let join = tokio::spawn(drain(store, rx, stopping, config.clone(), stats.clone()));
        let writer = Self {
            tx,
            room: Arc::new(Semaphore::new(capacity)),
            capacity,
            on_full: config.on_full,
            stats,
            waiters: Arc::new(Semaphore::new(config.max_waiting)),
            acknowledge: config.acknowledge,
            acknowledge_timeout: config.acknowledge_timeout,
        };
        (writer, WriterTask { join, stop })
    }

    pub fn stats(&self) -> &Arc<WriterStats> {
        &self.stats
    }

    /// Queues a row, waiting for room when the queue is full and the policy says so, and, with
    /// [`Acknowledge::Committed`], for its commit. Cancel-safe: a write dropped before its row was queued hands
    /// the row to [`LogWriter::write_detached`], so no row is lost because its request went away while waiting.
    pub fn write(&self, record: Record) -> Write {
        Write { writer: self.clone(), record: Some(record), room: None, commit: None }
    }

    /// Queues a row from a context that cannot wait (the request is gone: its client disconnected). When the
    /// queue is full after the policy, the row waits in a background waiter if one of `max_waiting` is free, and
    /// is dropped (counted in `dropped`, reported) otherwise: the number of waiting rows stays bounded however
    /// long the store is slow.
    pub fn write_detached(&self, record: Record) {
        let Tried::Full(record) = self.try_write(record) else { return };
        let record = *record;
        match (self.waiters.clone().try_acquire_owned(), tokio::runtime::Handle::try_current()) {
            (Ok(waiter), Ok(rt)) => {
                let this = self.clone();
                this.stats.waiting_detached.fetch_add(1, Ordering::Relaxed);
                rt.spawn(async move {
                    this.write(record).await;
                    this.stats.waiting_detached.fetch_sub(1, Ordering::Relaxed);
                    drop(waiter);
                });
            }
            _ => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::error!(id = %record.id, "request log queue full and every background waiter busy; a row was dropped");
            }
        }
    }

    /// Queues at once if there is room (after applying `drop_bodies`), with what tells of its commit; gives the
    /// row back otherwise.
    fn try_write(&self, mut record: Record) -> Tried {
        let weight = self.weight(&record);
        if let Ok(permit) = self.room.clone().try_acquire_many_owned(weight) {
            return Tried::Queued(self.enqueue(record, permit));
        }
        if self.on_full == OnFull::DropBodies && (record.request_body.is_some() || record.response_body.is_some()) {
            record.request_body = None;
            record.response_body = None;
            self.stats.bodies_dropped.fetch_add(1, Ordering::Relaxed);
            let weight = self.weight(&record);
            if let Ok(permit) = self.room.clone().try_acquire_many_owned(weight) {
                return Tried::Queued(self.enqueue(record, permit));
            }
        }
        Tried::Full(Box::new(record))
    }

    fn weight(&self, record: &Record) -> u32 {
        u32::try_from(record.weight().min(self.capacity)).unwrap_or(u32::MAX)
    }

    fn enqueue(&self, record: Record, permit: OwnedSemaphorePermit) -> Option<oneshot::Receiver<()>> {
        let weight = permit.num_permits() as u64;
        self.stats.queued_rows.fetch_add(1, Ordering::Relaxed);
        self.stats.queued_bytes.fetch_add(weight, Ordering::Relaxed);
        let (committed, receiver) = match self.acknowledge {
            Acknowledge::Queued => (None, None),
            Acknowledge::Committed => {
                let (tx, rx) = oneshot::channel();
                (Some(tx), Some(rx))
            }
        };
        if let Err(e) = self.tx.send(Queued { record, weight, permit, committed }) {
            // Only after `close`: the process is stopping and the drain task is gone.
            self.stats.queued_rows.fetch_sub(1, Ordering::Relaxed);
            self.stats.queued_bytes.fetch_sub(weight, Ordering::Relaxed);
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::error!(id = %e.0.record.id, "request log closed; a row was not written");
        }
        receiver
    }

    /// Waits for a row's commit, at most `acknowledge_timeout`.
    fn commit(&self, receiver: oneshot::Receiver<()>) -> Commit {
        let stats = self.stats.clone();
        let timeout = self.acknowledge_timeout;
        Box::pin(async move {
            let reason = match tokio::time::timeout(timeout, receiver).await {
                Ok(Ok(())) => return,
                Ok(Err(_)) => "the request log closed before the row was written",
                Err(_) => "the request log store did not commit the row in time",
            };
            stats.ack_timeouts.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(timeout_ms = timeout.as_millis() as u64, "{reason}; answering before it is durable");
        })
    }
}

/// What trying to queue a row at once did.
enum Tried {
    /// Queued; with [`Acknowledge::Committed`], what tells of its commit.
    Queued(Option<oneshot::Receiver<()>>),
    /// No room: the row comes back.
    Full(Box<Record>),
}

/// The future of [`LogWriter::write`].
pub struct Write {
    writer: LogWriter,
    record: Option<Record>,
    room: Option<Room>,
    commit: Option<Commit>,
}

/// Waiting for room in the queue.
type Room = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, tokio::sync::AcquireError>> + Send>>;
/// Waiting for the row's commit (the row is queued: dropping this loses nothing).
type Commit = Pin<Box<dyn Future<Output = ()> + Send>>;

impl Future for Write {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(commit) = self.commit.as_mut() {
            futures::ready!(commit.as_mut().poll(cx));
            self.commit = None;
            return Poll::Ready(());
        }
        if self.room.is_none() {
            let Some(record) = self.record.take() else { return Poll::Ready(()) };
            match self.writer.try_write(record) {
                Tried::Queued(None) => return Poll::Ready(()),
                Tried::Queued(Some(receiver)) => {
                    self.commit = Some(self.writer.commit(receiver));
                    return self.poll(cx);
                }
                Tried::Full(record) => {
                    self.writer.stats.waited.fetch_add(1, Ordering::Relaxed);
                    let weight = self.writer.weight(&record);
                    self.record = Some(*record);
                    self.room = Some(Box::pin(self.writer.room.clone().acquire_many_owned(weight)));
                }
            }
        }
        let Some(room) = self.room.as_mut() else { return Poll::Ready(()) };
        let permit = futures::ready!(room.as_mut().poll(cx));
        self.room = None;
        match (permit, self.record.take()) {
            (Ok(permit), Some(record)) => {
                if let Some(receiver) = self.writer.enqueue(record, permit) {
                    self.commit = Some(self.writer.commit(receiver));
                    return self.poll(cx);
                }
            }
            (Err(_), Some(record)) => {
                // The semaphore is never closed; if it were, the row would be reported, not lost quietly.
                self.writer.stats.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::error!(id = %record.id, "request log queue unavailable; a row was dropped");
            }
            (_, None) => {}
        }
        Poll::Ready(())
    }
}

impl Drop for Write {
    fn drop(&mut self) {
        if let Some(record) = self.record.take() {
            self.writer.write_detached(record);
        }
    }
}

impl WriterTask {
    /// Writes every row queued so far, then stops; rows submitted later are refused (and said so). Clones of
    /// the writer may still exist (connections cut at the shutdown deadline hold some).
    pub async fn close(self) {
        let _ = self.stop.send(true);
        let _ = self.join.await;
    }
}

async fn drain(
    store: Arc<dyn LogStore>,
    mut rx: mpsc::UnboundedReceiver<Queued>,
    mut stopping: tokio::sync::watch::Receiver<bool>,
    cfg: WriterConfig,
    stats: Arc<WriterStats>,
) {
    let mut retention = cfg.retention.map(|_| tokio::time::interval(Duration::from_secs(3600)));
    loop {
        let first = tokio::select! {
            biased;
            q = rx.recv() => q,
            () = async { drop(stopping.wait_for(|s| *s).await) } => {
                // Whatever is queued now is written below; then the channel reports its end.
                rx.close();
                continue;
            }
            _ = tick(&mut retention) => {
                if let Some(age) = cfg.retention {
                    let cutoff = crate::now_ms() - i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
                    match store.purge_before(cutoff).await {
                        Ok(n) if n > 0 => tracing::info!(rows = n, "request log retention: old rows deleted"),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "request log retention failed"),
                    }
                }
                continue;
            }
        };
        let Some(first) = first else { break };
        let mut batch = vec![first];
        while batch.len() < cfg.batch_max {
            match rx.try_recv() {
                Ok(q) => batch.push(q),
                Err(_) => break,
            }
        }
        let mut rows = Vec::with_capacity(batch.len());
        let mut held = Vec::with_capacity(batch.len());
        let mut acks = Vec::new();
        for q in batch {
            rows.push(q.record);
            held.push((q.weight, q.permit));
            acks.extend(q.committed);
        }
        let mut backoff = Duration::from_millis(50);
        let mut failures = 0;
        loop {
            match store.insert(&rows).await {
                Ok(_) => {
                    stats.batches.fetch_add(1, Ordering::Relaxed);
                    stats.written_rows.fetch_add(rows.len() as u64, Ordering::Relaxed);
                    for ack in acks.drain(..) {
                        // The write that waited may be gone (its client left): nothing to tell.
                        let _ = ack.send(());
                    }
                    break;
                }
                Err(e) => {
                    failures += 1;
                    stats.write_errors.fetch_add(1, Ordering::Relaxed);
                    // While keel runs, a failing store is retried for as long as it takes (the queue's bound
                    // then applies its policy). Once keel is stopping, it gives up after a few tries, loudly.
                    if rx.is_closed() && failures >= 5 {
                        tracing::error!(error = %e, rows = rows.len(), "request log store unavailable at shutdown; rows lost");
                        break;
                    }
                    tracing::error!(error = %e, rows = rows.len(), "request log write failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        for (weight, _) in &held {
            stats.queued_rows.fetch_sub(1, Ordering::Relaxed);
            stats.queued_bytes.fetch_sub(*weight, Ordering::Relaxed);
        }
        drop(held); // releases the queue's room
    }
}

async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

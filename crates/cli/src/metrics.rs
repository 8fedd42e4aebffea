//! The metrics `keel serve` reads from its components at scrape time: admission control, connections and the
//! local models' workers (their counters live in the components; the server's metrics read them).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use keel_pipeline::Limiter;
use keel_pipeline::admission::LimiterStats;
use keel_server::{ConnStats, Source};

/// Admission decisions and requests in flight of one limiter; `scope` is "instance" or a model alias.
pub(crate) fn admission(scope: &str, limiter: &Arc<Limiter>) -> Vec<Source> {
    let decision = |outcome: &str, read: fn(&LimiterStats) -> &AtomicU64| {
        let l = limiter.clone();
        Source::counter_fn(
            "admission_decisions",
            "Admission control decisions by scope (instance or model alias) and outcome",
            &[("scope", scope), ("outcome", outcome)],
            move || read(l.stats()).load(Ordering::Relaxed),
        )
    };
    let l = limiter.clone();
    vec![
        decision("admitted", |s| &s.admitted),
        decision("queued", |s| &s.queued),
        decision("refused", |s| &s.refused),
        Source::gauge("in_flight", "Requests in flight by admission scope", &[("scope", scope)], move || {
            i64::try_from(l.in_flight()).unwrap_or(i64::MAX)
        }),
    ]
}

/// The accept loop's connections.
pub(crate) fn connections(stats: &Arc<ConnStats>) -> Vec<Source> {
    let counter = |name: &'static str, help: &'static str, read: fn(&ConnStats) -> &AtomicU64| {
        let s = stats.clone();
        Source::counter_fn(name, help, &[], move || read(&s).load(Ordering::Relaxed))
    };
    let open = stats.clone();
    vec![
        Source::gauge("connections_open", "Client connections open", &[], move || {
            i64::try_from(open.open.load(Ordering::Relaxed)).unwrap_or(i64::MAX)
        }),
        counter("connections_accepted", "Client connections accepted", |s| &s.accepted),
        counter("connections_refused", "Client connections refused at server.max_connections", |s| &s.refused),
        counter("connections_idle_closed", "Client connections closed for idleness", |s| &s.idle_closed),
    ]
}

/// A local provider's workers: queue-full refusals, caught panics, abandoned generations.
#[cfg(feature = "local")]
pub(crate) fn local(provider: &str, local: &keel_local::LocalProvider) -> Vec<Source> {
    let (chat, embed) = local.stats();
    let mut out = Vec::new();
    for (worker, stats) in [("chat", chat), ("embeddings", embed)] {
        let labels = [("provider", provider), ("worker", worker)];
        let read = |f: fn(&keel_local::WorkerStats) -> &AtomicU64| {
            let s = stats.clone();
            move || f(&s).load(Ordering::Relaxed)
        };
        out.push(Source::counter_fn(
            "local_queue_full",
            "Local model requests refused at once because the worker's queue was full",
            &labels,
            read(|s| &s.busy),
        ));
        out.push(Source::counter_fn(
            "local_panics",
            "Local inference jobs that panicked (caught; the worker went on)",
            &labels,
            read(|s| &s.panics),
        ));
        out.push(Source::counter_fn(
            "local_cancelled",
            "Local generations stopped because their request was abandoned",
            &labels,
            read(|s| &s.cancelled),
        ));
    }
    out
}

/// The response cache's writes and skipped semantic lookups.
pub(crate) fn cache(stats: &Arc<keel_pipeline::CacheStats>) -> Vec<Source> {
    let counter = |name: &'static str, help: &'static str, read: fn(&keel_pipeline::CacheStats) -> &AtomicU64| {
        let s = stats.clone();
        Source::counter_fn(name, help, &[], move || read(&s).load(Ordering::Relaxed))
    };
    vec![
        counter("cache_stored", "Answers stored in the response cache", |s| &s.stored),
        counter("cache_writes_dropped", "Answers not stored because the cache's write queue was full", |s| {
            &s.writes_dropped
        }),
        counter(
            "cache_semantic_embed_failures",
            "Semantic lookups skipped because the request's embedding failed (a plain miss)",
            |s| &s.embed_failures,
        ),
    ]
}

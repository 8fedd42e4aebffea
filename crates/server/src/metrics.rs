//! Prometheus metrics (`GET /metrics`, OpenMetrics text). Request metrics are recorded once per request by the
//! request log's finish path, so they count exactly what the log holds; circuit states and the log queue are
//! read at scrape time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use keel_pipeline::Breakers;
use keel_store::WriterStats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    pub endpoint: &'static str,
    pub model: String,
    pub status: u16,
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ModelLabels {
    pub model: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TokenLabels {
    pub model: String,
    /// "input", "output" or "cached_input".
    pub kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct AttemptLabels {
    pub provider: String,
    pub model: String,
    pub outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct GuardLabels {
    pub guard: &'static str,
    pub action: &'static str,
    pub route: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct FeedbackLabels {
    /// "positive" or "negative".
    pub verdict: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RouteLabels {
    /// The router the client named.
    pub router: String,
    /// The alias that served.
    pub to: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CacheLabels {
    pub outcome: &'static str,
}

/// A value another component keeps (an atomic it updates) that the metrics read at scrape time: admission
/// control, connections, local model workers, queues.
#[derive(Debug, Clone)]
pub struct Source {
    pub name: &'static str,
    pub help: &'static str,
    pub labels: Vec<(String, String)>,
    pub kind: SourceKind,
    /// The owner that may replace it ([`Metrics::replace_group`]); `None`: kept for the process's life.
    pub group: Option<&'static str>,
}

/// How a [`Source`] is read.
#[derive(Clone)]
pub enum SourceKind {
    Counter(Arc<dyn Fn() -> u64 + Send + Sync>),
    Gauge(Arc<dyn Fn() -> i64 + Send + Sync>),
}

impl std::fmt::Debug for SourceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceKind::Counter(_) => f.write_str("Counter(..)"),
            SourceKind::Gauge(_) => f.write_str("Gauge(..)"),
        }
    }
}

impl Source {
    /// A counter kept in an atomic.
    pub fn counter(name: &'static str, help: &'static str, labels: &[(&str, &str)], value: Arc<AtomicU64>) -> Self {
        Self::counter_fn(name, help, labels, move || value.load(Ordering::Relaxed))
    }

    /// A counter read by a function.
    pub fn counter_fn(
        name: &'static str,
        help: &'static str,
        labels: &[(&str, &str)],
        read: impl Fn() -> u64 + Send + Sync + 'static,
    ) -> Self {
        Self { name, help, labels: own(labels), kind: SourceKind::Counter(Arc::new(read)), group: None }
    }

    pub fn gauge(
        name: &'static str,
        help: &'static str,
        labels: &[(&str, &str)],
        read: impl Fn() -> i64 + Send + Sync + 'static,
    ) -> Self {
        Self { name, help, labels: own(labels), kind: SourceKind::Gauge(Arc::new(read)), group: None }
    }
}

fn own(labels: &[(&str, &str)]) -> Vec<(String, String)> {
    labels.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect()
}

/// Every metric keel exports.
pub struct Metrics {
    registry: Registry,
    pub(crate) requests: Family<RequestLabels, Counter>,
    pub(crate) duration: Family<ModelLabels, Histogram>,
    pub(crate) ttft: Family<ModelLabels, Histogram>,
    pub(crate) tokens: Family<TokenLabels, Counter>,
    pub(crate) cost: Family<ModelLabels, Counter<f64, AtomicU64>>,
    pub(crate) attempts: Family<AttemptLabels, Counter>,
    pub(crate) cache: Family<CacheLabels, Counter>,
    pub(crate) guard: Family<GuardLabels, Counter>,
    pub(crate) feedback: Family<FeedbackLabels, Counter>,
    /// Router decisions by router and the alias that served.
    pub(crate) routed: Family<RouteLabels, Counter>,
    /// Cascade steps whose answer failed the check, by router (label `model`: the router).
    pub(crate) escalations: Family<ModelLabels, Counter>,
    /// The latency escalations added: the time of the failed steps, per escalated request.
    pub(crate) escalation_time: Family<ModelLabels, Histogram>,
    /// The similarity of the nearest semantic candidate, per lookup that compared one.
    pub(crate) cache_similarity: Histogram,
    /// What cache hits saved: the upstream price of the answers they gave again.
    pub(crate) cache_saved: Counter<f64, AtomicU64>,
    sources: Arc<std::sync::Mutex<Vec<Source>>>,
    /// The circuit breakers of the configuration in force (replaced on reload).
    breakers: Arc<std::sync::RwLock<Breakers>>,
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0].into_iter()
}

impl Metrics {
    pub fn new(breakers: Breakers, log: Option<Arc<WriterStats>>) -> Self {
        let mut registry = Registry::with_prefix("keel");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("requests", "Requests by endpoint, model alias, HTTP status and outcome", requests.clone());
        let duration = Family::<ModelLabels, Histogram>::new_with_constructor(|| Histogram::new(latency_buckets()));
        registry.register(
            "request_duration_seconds",
            "Time from arrival to the last byte of the answer",
            duration.clone(),
        );
        let ttft = Family::<ModelLabels, Histogram>::new_with_constructor(|| Histogram::new(latency_buckets()));
        registry.register("time_to_first_token_seconds", "Time from arrival to the first streamed token", ttft.clone());
        let tokens = Family::<TokenLabels, Counter>::default();
        registry.register("tokens", "Tokens by model alias and kind", tokens.clone());
        let cost = Family::<ModelLabels, Counter<f64, AtomicU64>>::default();
        registry.register("cost_usd", "Spend in US dollars by model alias", cost.clone());
        let attempts = Family::<AttemptLabels, Counter>::default();
        registry.register("upstream_attempts", "Upstream attempts by target and outcome", attempts.clone());
        let cache = Family::<CacheLabels, Counter>::default();
        registry.register(
            "cache_lookups",
            "keel's response cache by outcome: hit, semantic_hit, miss, bypass",
            cache.clone(),
        );
        let cache_similarity =
            Histogram::new([0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.88, 0.9, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99, 1.0]);
        registry.register(
            "cache_semantic_similarity",
            "Similarity of the nearest semantic cache candidate, per lookup",
            cache_similarity.clone(),
        );
        let cache_saved = Counter::<f64, AtomicU64>::default();
        registry.register("cache_saved_usd", "Upstream spend the cache avoided, in US dollars", cache_saved.clone());
        let guard = Family::<GuardLabels, Counter>::default();
        registry.register(
            "guard_verdicts",
            "Guard verdicts by guard (injection, pii, output), action (flag, redact, block) and model alias",
            guard.clone(),
        );
        let feedback = Family::<FeedbackLabels, Counter>::default();
        registry.register(
            "feedback",
            "User feedback received (POST /v1/feedback), positive or negative",
            feedback.clone(),
        );
        let routed = Family::<RouteLabels, Counter>::default();
        registry.register("routed", "Requests to a router, by router and the model alias that served", routed.clone());
        let escalations = Family::<ModelLabels, Counter>::default();
        registry.register(
            "cascade_escalations",
            "Cascade steps whose answer failed the check, so that the next step was asked (label model: the router)",
            escalations.clone(),
        );
        let escalation_time =
            Family::<ModelLabels, Histogram>::new_with_constructor(|| Histogram::new(latency_buckets()));
        registry.register(
            "cascade_escalation_seconds",
            "Latency an escalation added: the time of the cascade steps that failed, per escalated request",
            escalation_time.clone(),
        );
        let sources = Arc::new(std::sync::Mutex::new(Vec::new()));
        let breakers = Arc::new(std::sync::RwLock::new(breakers));
        registry.register_collector(Box::new(Live { breakers: breakers.clone(), log, sources: sources.clone() }));
        Self {
            registry,
            requests,
            duration,
            ttft,
            tokens,
            cost,
            attempts,
            cache,
            cache_similarity,
            cache_saved,
            guard,
            feedback,
            routed,
            escalations,
            escalation_time,
            sources,
            breakers,
        }
    }

    /// The breakers of a reloaded configuration, read from the next scrape on.
    pub fn set_breakers(&self, breakers: Breakers) {
        if let Ok(mut b) = self.breakers.write() {
            *b = breakers;
        }
    }

    /// Counts one piece of user feedback.
    pub(crate) fn feedback(&self, positive: bool) {
        let verdict = if positive { "positive" } else { "negative" };
        self.feedback.get_or_create(&FeedbackLabels { verdict }).inc();
    }

    /// Adds values read at scrape time (sources of one name form one family).
    pub fn add(&self, more: impl IntoIterator<Item = Source>) {
        self.replace_group(None, more);
    }

    /// Replaces the sources of `group` (those a configuration version owns, such as its aliases' admission
    /// limiters) with `more`; `None` only adds.
    pub fn replace_group(&self, group: Option<&'static str>, more: impl IntoIterator<Item = Source>) {
        if let Ok(mut s) = self.sources.lock() {
            if let Some(g) = group {
                s.retain(|src| src.group != Some(g));
            }
            s.extend(more.into_iter().map(|mut src| {
                if group.is_some() {
                    src.group = group;
                }
                src
            }));
            // One family per name, in the order names were first added.
            let mut order: Vec<&'static str> = Vec::new();
            for src in s.iter() {
                if !order.contains(&src.name) {
                    order.push(src.name);
                }
            }
            s.sort_by_key(|src| order.iter().position(|n| *n == src.name));
        }
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::with_capacity(8192);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Values read at scrape time: circuit states, the request log's queue, and the other components' sources.
#[derive(Debug)]
struct Live {
    breakers: Arc<std::sync::RwLock<Breakers>>,
    log: Option<Arc<WriterStats>>,
    sources: Arc<std::sync::Mutex<Vec<Source>>>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    target: String,
}

impl Collector for Live {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let states = self.breakers.read().map(|b| b.states()).unwrap_or_default();
        let probe = ConstGauge::new(0i64);
        let mut family = encoder.encode_descriptor(
            "circuit_state",
            "Circuit breaker per target: 0 closed, 1 half-open, 2 open",
            None,
            probe.metric_type(),
        )?;
        for s in states {
            let value = match s.state {
                "open" => 2,
                "half_open" => 1,
                _ => 0,
            };
            let labels = TargetLabels { target: s.target };
            ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
        }
        if let Some(stats) = &self.log {
            let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
            let gauges = [
                ("log_queue_rows", "Rows waiting to be written to the request log", load(&stats.queued_rows)),
                (
                    "log_queue_bytes",
                    "Bytes of rows waiting to be written to the request log",
                    load(&stats.queued_bytes),
                ),
            ];
            for (name, help, value) in gauges {
                let g = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
                g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
            }
            let counters = [
                ("log_rows_written", "Rows written to the request log", load(&stats.written_rows)),
                ("log_write_errors", "Failed request log writes (retried)", load(&stats.write_errors)),
                (
                    "log_bodies_dropped",
                    "Rows whose bodies were dropped because the log queue was full",
                    load(&stats.bodies_dropped),
                ),
                ("log_queue_waits", "Rows that waited for room in a full log queue", load(&stats.waited)),
                (
                    "log_rows_dropped",
                    "Rows dropped: the log queue was full and no background waiter was free, or the log was closed",
                    load(&stats.dropped),
                ),
                (
                    "log_ack_timeouts",
                    "Answers sent before their log row committed ([log] acknowledge = \"committed\"): the store was slow or down",
                    load(&stats.ack_timeouts),
                ),
            ];
            for (name, help, value) in counters {
                let c = ConstCounter::new(value);
                c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
            }
        }
        let sources = self.sources.lock().map(|s| s.clone()).unwrap_or_default();
        let mut i = 0;
        while i < sources.len() {
            let first = &sources[i];
            let same = sources[i..].iter().take_while(|s| s.name == first.name).count();
            match &first.kind {
                SourceKind::Counter(_) => {
                    let mut family = encoder.encode_descriptor(
                        first.name,
                        first.help,
                        None,
                        ConstCounter::new(0u64).metric_type(),
                    )?;
                    for s in &sources[i..i + same] {
                        if let SourceKind::Counter(read) = &s.kind {
                            ConstCounter::new(read()).encode(family.encode_family(&s.labels)?)?;
                        }
                    }
                }
                SourceKind::Gauge(_) => {
                    let mut family =
                        encoder.encode_descriptor(first.name, first.help, None, ConstGauge::new(0i64).metric_type())?;
                    for s in &sources[i..i + same] {
                        if let SourceKind::Gauge(read) = &s.kind {
                            ConstGauge::new(read()).encode(family.encode_family(&s.labels)?)?;
                        }
                    }
                }
            }
            i += same;
        }
        Ok(())
    }
}

//! Configuration reload (SIGHUP, `POST /admin/config/reload`): what each version of the configuration builds
//! (providers, routes and routers, templates, guards, prices, circuit breakers, per-alias limits), what lives as
//! long as the process (the store and its log writer, keys and budgets, the response cache, collections, the
//! local models, instance admission, the listener), and the checks a new file passes before it serves.
//!
//! A reload reads the file, validates it whole, refuses what only a restart can change, builds the new version
//! beside the one in force, and swaps it in: from the next request on it serves, and requests already running
//! finish on the version they started on. Any refusal leaves the version in force serving, unchanged.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use futures::future::BoxFuture;
use keel_config::{Config, ProcessEnv, ProviderId, ProviderKind};
use keel_pipeline::cost::{Prices, SharedPrices};
use keel_pipeline::{Breakers, RouteLimits, RouteTable};
use keel_providers::{Provider, Providers};
use keel_server::{ConfigVersion, ReloadError, Reloaded};
use sha2::Digest;

/// Sections that only a restart may change: they configure what lives for the process.
const RESTART_ONLY: [&str; 8] = ["server", "store", "log", "auth", "telemetry", "cache", "rag", "online_evals"];

/// The metrics group of a version's own sources (its aliases' admission limiters), replaced on reload.
const ROUTE_METRICS: &str = "routes";

/// What every configuration version shares, built once at start.
pub(crate) struct Shared {
    pub cache: Option<keel_pipeline::CacheParts>,
    pub log: Arc<keel_server::RequestLog>,
    pub metrics: Arc<keel_server::Metrics>,
    pub prices: SharedPrices,
    pub store: Option<Arc<dyn keel_store::Store>>,
    pub auth: Option<Arc<keel_server::Auth>>,
    pub admin: keel_server::AdminAccess,
    pub admission: Arc<keel_pipeline::Limiter>,
    pub shutdown: keel_server::Shutdown,
    pub collections: Option<Arc<keel_rag::Collections>>,
    pub files_dir: Option<PathBuf>,
    pub limits: keel_server::ServerLimits,
    /// The local providers loaded at start, and the models each loaded.
    pub locals: BTreeMap<ProviderId, Arc<dyn Provider>>,
    pub local_models: BTreeSet<(ProviderId, String)>,
    pub reload: keel_server::ReloadHandle,
}

/// One configuration's parts.
pub(crate) struct Version {
    text: String,
    cfg: Config,
    pub info: ConfigVersion,
    providers: Providers,
    breakers: Breakers,
    route_limits: RouteLimits,
    pub app: keel_server::AppState,
}

/// The version of configuration text: its content hash.
pub(crate) fn version_of(text: &str, source: &str) -> ConfigVersion {
    let digest = sha2::Sha256::digest(text.as_bytes());
    let version = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    ConfigVersion { version, source: source.to_string(), since_ms: u64::try_from(keel_store::now_ms()).unwrap_or(0) }
}

/// What a new version starts from: the providers, breakers and limiters in force.
pub(crate) struct Base<'a> {
    pub providers: &'a Providers,
    /// Providers whose section did not change: they keep their connection pools.
    pub unchanged: &'a (dyn Fn(&ProviderId) -> bool + Sync),
    /// A target's breaker carries over (an open circuit stays open across a reload).
    pub breakers: &'a Breakers,
    /// An alias's limiter carries over when its limit is unchanged; `None` at start.
    pub route_limits: Option<&'a RouteLimits>,
}

/// Builds the parts of one configuration version from `base`.
pub(crate) fn build(
    shared: &Shared,
    cfg: Config,
    text: String,
    info: ConfigVersion,
    base: &Base<'_>,
) -> Result<(Version, Prices, RouteTable), String> {
    let kinds = cfg.providers.iter().map(|(id, p)| (id.clone(), p.kind)).collect();
    let prices = Prices::new(cfg.prices.clone(), kinds);
    let changed = cfg.providers.values().filter(|p| !(base.unchanged)(&p.id));
    let mut providers = Providers::from_config(changed).map_err(|e| format!("providers: {e}"))?;
    for id in cfg.providers.keys().filter(|id| (base.unchanged)(id)) {
        if let Some(p) = base.providers.get(id) {
            providers = providers.with(p.clone());
        }
    }
    for local in shared.locals.values() {
        providers = providers.with(local.clone());
    }
    let routes =
        RouteTable::build(cfg.models.values(), cfg.routers.values(), Some(&prices)).map_err(|e| e.to_string())?;
    let breakers = base.breakers.carry(routes.all_targets());
    let server = &cfg.server;
    // Each alias may take three quarters of the instance's slots: a stalled upstream leaves room for the rest.
    let limit_of = |alias: &str| cfg.models.get(alias).and_then(|m| m.max_in_flight);
    let default_in_flight = (server.max_in_flight * 3 / 4).max(1);
    let (queue, wait) = (server.admission_queue, server.admission_queue_timeout);
    let route_limits =
        base.route_limits.cloned().unwrap_or_default().carry(&routes, limit_of, default_in_flight, queue, wait);
    let templates = Arc::new(keel_pipeline::Templates::new(&cfg.templates)?);
    let app = keel_server::AppState::from_parts(keel_server::Parts {
        collections: shared.collections.clone(),
        routes: routes.clone(),
        providers: providers.clone(),
        cache: shared.cache.clone(),
        route_limits: route_limits.clone(),
        breakers: breakers.clone(),
        log: shared.log.clone(),
        feedback: shared.store.clone().map(|s| s as Arc<dyn keel_store::FeedbackStore>),
        store: shared.store.clone().map(|s| s as Arc<dyn keel_store::LogStore>),
        auth: shared.auth.clone(),
        admin: shared.admin.clone(),
        admission: shared.admission.clone(),
        shutdown: shared.shutdown.clone(),
        files_dir: shared.files_dir.clone(),
        templates,
        config: info.clone(),
        reload: Some(shared.reload.clone()),
        dashboard: shared.store.clone(),
    });
    Ok((Version { text, cfg, info, providers, breakers, route_limits, app }, prices, routes))
}

/// Makes `version` the one the process-wide parts describe: its prices, its aliases in the metrics' labels,
/// its breakers' states and its limiters in /metrics.
pub(crate) fn publish(shared: &Shared, version: &Version, prices: Prices, routes: &RouteTable) {
    shared.prices.set(prices);
    shared.log.set_known_models(routes.names());
    shared.metrics.set_breakers(version.breakers.clone());
    let mut sources = Vec::new();
    for (alias, limiter) in version.route_limits.all() {
        sources.extend(crate::metrics::admission(alias, limiter));
    }
    shared.metrics.replace_group(Some(ROUTE_METRICS), sources);
}

/// The aliases a router can send a request to (its rules' targets and default, a cascade's steps and judge, a
/// learned router's two sides and embedding model).
fn router_aliases(r: &keel_config::Router) -> Vec<&str> {
    match &r.kind {
        keel_config::RouterKind::Rules { rules, default } => {
            rules.iter().map(|rule| rule.to.as_str()).chain([default.as_str()]).collect()
        }
        keel_config::RouterKind::Cascade(c) => {
            let judge = match &c.check {
                keel_config::CascadeCheck::Judge { model, .. } => Some(model.as_str()),
                _ => None,
            };
            c.steps.iter().map(String::as_str).chain(judge).collect()
        }
        keel_config::RouterKind::Learned(l) => vec![l.small.as_str(), l.large.as_str(), l.embedding.as_str()],
    }
}

/// The model names (aliases, routers) and templates whose behaviour `changed` may alter in `new`: the entries
/// changed themselves, the aliases on a changed provider, routers reaching an affected alias, templates running
/// on an affected name; `None`: everything (a section that applies to every alias changed).
fn affected(new: &Config, changed: &[String]) -> Option<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    let mut providers = BTreeSet::new();
    for section in changed {
        match section.split_once('.') {
            Some(("models" | "routers" | "templates", name)) => {
                names.insert(name.to_string());
            }
            Some(("providers", name)) => {
                providers.insert(name.to_string());
            }
            // Prices change what a run costs (a cost gate), the global guard and reliability every alias.
            None if matches!(section.as_str(), "guard" | "reliability" | "prices") => return None,
            _ => {}
        }
    }
    for alias in new.models.values() {
        if alias.targets.iter().chain(&alias.context_fallback).any(|t| providers.contains(&*t.provider.0)) {
            names.insert(alias.name.clone());
        }
    }
    // Routers of routers are not configurable, so one pass over routers suffices.
    for r in new.routers.values() {
        if router_aliases(r).iter().any(|a| names.contains(*a)) {
            names.insert(r.name.clone());
        }
    }
    for t in new.templates.values() {
        if names.contains(&t.model) {
            names.insert(t.name.clone());
        }
    }
    Some(names)
}

/// The gate suites a change concerns: those whose model or template it may alter.
fn concerned<'a>(suites: &'a [keel_eval::Suite], affected: Option<&BTreeSet<String>>) -> Vec<&'a keel_eval::Suite> {
    suites
        .iter()
        .filter(|s| {
            let name = match &s.target {
                keel_eval::Target::Template { name, .. } => name,
                keel_eval::Target::Prompt { model, .. } => model,
            };
            affected.is_none_or(|a| a.contains(name))
        })
        .collect()
}

/// Reloads the configuration file on request; one reload at a time.
pub(crate) struct Reloader {
    file: Option<PathBuf>,
    shared: Shared,
    versions: keel_server::Versions,
    current: tokio::sync::Mutex<Version>,
    /// `--listen` given on the command line: it overrides the file's `server.listen` in every version.
    listen: std::net::SocketAddr,
}

impl Reloader {
    pub(crate) fn new(
        file: Option<PathBuf>,
        shared: Shared,
        versions: keel_server::Versions,
        current: Version,
    ) -> Arc<Self> {
        let listen = current.cfg.server.listen;
        let reloader = Arc::new(Self { file, shared, versions, current: tokio::sync::Mutex::new(current), listen });
        let weak: std::sync::Weak<dyn keel_server::Reload> =
            Arc::downgrade(&(reloader.clone() as Arc<dyn keel_server::Reload>));
        let _ = reloader.shared.reload.set(weak);
        reloader
    }

    async fn reload_now(&self) -> Result<Reloaded, ReloadError> {
        let path = self.file.as_ref().ok_or(ReloadError::NoFile)?;
        // Reloads are serialised; requests never wait on this lock (they read the version through the swap).
        let mut current = self.current.lock().await;
        let text = tokio::fs::read_to_string(path)
            .await
            .map_err(|e| ReloadError::Unreadable(format!("cannot read {}: {e}", path.display())))?;
        let previous = current.info.version.clone();
        if text == current.text {
            return Ok(Reloaded { version: previous.clone(), previous, changed: Vec::new() });
        }
        let mut cfg = keel_config::parse(&text, &ProcessEnv)
            .map_err(|errors| ReloadError::Invalid(errors.0.iter().map(ToString::to_string).collect()))?;
        cfg.server.listen = self.listen;
        let changed = keel_config::changed_sections(&current.text, &text)
            .map_err(|errors| ReloadError::Invalid(errors.0.iter().map(ToString::to_string).collect()))?;
        let restart = needs_restart(&current.cfg, &cfg, &changed, &self.shared.local_models);
        if !restart.is_empty() {
            return Err(ReloadError::NeedsRestart(restart));
        }
        let info = version_of(&text, &path.display().to_string());
        let unchanged = |id: &ProviderId| !changed.contains(&format!("providers.{id}"));
        let base = Base {
            providers: &current.providers,
            unchanged: &unchanged,
            breakers: &current.breakers,
            route_limits: Some(&current.route_limits),
        };
        let (next, prices, routes) =
            build(&self.shared, cfg, text, info, &base).map_err(|e| ReloadError::Invalid(vec![e]))?;
        // The gate of the configuration in force judges the change: the suites it concerns run against the new
        // version, on a port of its own, before it takes traffic.
        let gate = &current.cfg.reload;
        if !gate.gate.is_empty() {
            let dir = path.parent().unwrap_or(std::path::Path::new("."));
            let job = Gate {
                suites: gate.gate.iter().map(|p| dir.join(p)).collect(),
                affected: affected(&next.cfg, &changed),
                app: next.app.clone(),
                limits: self.shared.limits,
                store: self.shared.store.clone(),
                key: match &self.shared.auth {
                    Some(auth) if auth.enabled => Some(auth.admin_key.as_ref().map(|k| k.expose().to_string())),
                    _ => None,
                },
                timeout: gate.gate_timeout,
            };
            // A run's future is not `Send` (a higher-ranked lifetime in keel-eval's case stream), so it runs on a
            // blocking thread of the runtime, driven by the runtime's IO and timers.
            let handle = tokio::runtime::Handle::current();
            let failures = tokio::task::spawn_blocking(move || handle.block_on(job.run()))
                .await
                .map_err(|e| ReloadError::Failed(format!("reload gate: {e}")))??;
            if !failures.is_empty() {
                return Err(ReloadError::GateFailed(failures));
            }
        }
        publish(&self.shared, &next, prices, &routes);
        self.versions.swap(keel_server::router(next.app.clone(), self.shared.limits), &next.info);
        let version = next.info.version.clone();
        tracing::info!(%previous, %version, changed = %changed.join(", "), "configuration reloaded");
        *current = next;
        Ok(Reloaded { previous, version, changed })
    }
}

/// The evaluation gate of one reload: the suites of `[reload] gate` that the change concerns, run against the
/// new version served on a loopback port of its own (the version in force keeps serving everyone else), each run
/// stored like any `keel eval run`.
struct Gate {
    suites: Vec<PathBuf>,
    /// What the change may alter (`None`: everything).
    affected: Option<BTreeSet<String>>,
    app: keel_server::AppState,
    limits: keel_server::ServerLimits,
    store: Option<Arc<dyn keel_store::Store>>,
    /// `Some` when keys are required: the admin key the runs call keel with (`None` inside: it is not set).
    key: Option<Option<String>>,
    timeout: std::time::Duration,
}

impl Gate {
    /// The gate failures, `suite (run ID): why`; empty when every concerned suite passed (or none is concerned).
    async fn run(self) -> Result<Vec<String>, ReloadError> {
        let failed = |m: String| ReloadError::Failed(format!("reload gate: {m}"));
        let suites = self
            .suites
            .iter()
            .map(|p| keel_eval::Suite::load(p).map_err(|e| failed(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        let concerned = concerned(&suites, self.affected.as_ref());
        if concerned.is_empty() {
            return Ok(Vec::new());
        }
        let store = self
            .store
            .clone()
            .ok_or_else(|| failed("it stores its runs in keel's store: set [log] enabled = true".into()))?;
        let store = store as Arc<dyn keel_store::EvalStore>;
        let key = match self.key.clone() {
            Some(None) => {
                return Err(failed("with [auth] on, it calls keel with the admin key, which is not set".into()));
            }
            Some(Some(k)) => Some(k),
            None => None,
        };
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|e| failed(format!("binding a loopback port: {e}")))?;
        let addr = listener.local_addr().map_err(|e| failed(e.to_string()))?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let opts = keel_server::ConnOptions {
            grace: std::time::Duration::from_secs(1),
            header_read_timeout: std::time::Duration::from_secs(30),
            idle_timeout: std::time::Duration::from_secs(60),
            max_connections: 256,
            max_header_bytes: self.limits.max_header_bytes,
            stats: Arc::new(keel_server::ConnStats::default()),
        };
        let router = keel_server::router(self.app.clone(), self.limits);
        let server = tokio::spawn(keel_server::serve(
            listener,
            router,
            async move {
                let _ = stopped.await;
            },
            opts,
            || {},
        ));
        let runs = async {
            let keel = keel_eval::Keel::new(&format!("http://{addr}"), key, std::time::Duration::from_secs(300))
                .map_err(|e| failed(e.to_string()))?;
            let mut failures = Vec::new();
            for suite in concerned {
                let finished = keel_eval::run::run(suite, &keel, store.clone(), None, &|_| {}, std::future::pending())
                    .await
                    .map_err(|e| failed(format!("{}: {e}", suite.name)))?;
                let baseline = crate::eval::baseline(suite, &store, &finished.run.id)
                    .await
                    .map_err(|e| failed(format!("{}: {e:#}", suite.name)))?;
                let found = keel_eval::gate_failures(&suite.gate, &finished.summary, baseline.as_ref());
                tracing::info!(
                    suite = %suite.name,
                    run = %finished.run.id,
                    pass_rate = finished.summary.pass_rate,
                    passed = found.is_empty(),
                    "reload gate suite"
                );
                failures.extend(found.into_iter().map(|f| format!("{} (run {}): {f}", suite.name, finished.run.id)));
            }
            Ok(failures)
        };
        let outcome = tokio::time::timeout(self.timeout, runs).await.unwrap_or_else(|_| {
            Ok(vec![format!(
                "the gate suites did not finish within {} s (reload.gate_timeout_s)",
                self.timeout.as_secs()
            )])
        });
        let _ = stop.send(());
        let _ = server.await;
        outcome
    }
}

impl keel_server::Reload for Reloader {
    fn reload(&self) -> BoxFuture<'_, Result<Reloaded, ReloadError>> {
        Box::pin(async move {
            let result = self.reload_now().await;
            if let Err(e) = &result {
                tracing::warn!(error = %e, "configuration not reloaded; the version in force keeps serving");
            }
            result
        })
    }
}

/// What in `changed` only a restart can apply: the process-wide sections, the local providers (their models
/// are loaded at start), and local models that were not loaded.
fn needs_restart(
    old: &Config,
    new: &Config,
    changed: &[String],
    loaded: &BTreeSet<(ProviderId, String)>,
) -> Vec<String> {
    let is_local =
        |cfg: &Config, id: &str| cfg.providers.values().any(|p| &*p.id.0 == id && p.kind == ProviderKind::Local);
    let mut restart = Vec::new();
    for section in changed {
        let (top, name) = section.split_once('.').unwrap_or((section, ""));
        if RESTART_ONLY.contains(&top) {
            restart.push(format!("[{top}]"));
        } else if top == "providers" && (is_local(old, name) || is_local(new, name)) {
            restart.push(format!("[providers.{name}] (in-process models are loaded at start)"));
        }
    }
    for alias in new.models.values() {
        for t in alias.targets.iter().chain(&alias.context_fallback) {
            let local = new.providers.get(&t.provider).is_some_and(|p| p.kind == ProviderKind::Local);
            if local && !loaded.contains(&(t.provider.clone(), t.model.clone())) {
                restart.push(format!(
                    "[models.{}]: the in-process model {} is not loaded (models load at start)",
                    alias.name, t.model
                ));
            }
        }
    }
    restart.dedup();
    restart
}

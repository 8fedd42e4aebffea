//! `keel-mock-upstream`: serves the mock upstream for tests and benchmarks in other processes.

use std::io::Write as _;
use std::net::SocketAddr;

use anyhow::Context as _;
use clap::Parser;
use keel_testkit::MockUpstream;

/// A mock OpenAI/Anthropic upstream, scripted over HTTP through /_mock/script, /_mock/default,
/// /_mock/attempts and /_mock/reset.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mock = MockUpstream::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {}", mock.url())?;
    stdout.flush()?;
    drop(stdout);
    tokio::signal::ctrl_c().await.context("waiting for ctrl-c")?;
    Ok(())
}

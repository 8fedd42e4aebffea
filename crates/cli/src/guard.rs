//! `keel guard check`: runs a route's configured guards on text or on a JSONL file and prints what each guard
//! finds and would do, for operators tuning policy before they turn `block` on.

use std::io::BufRead;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use keel_config::{GuardAction, GuardPolicy};
use keel_pipeline::RouteTable;
use keel_pipeline::guard::{Engines, RouteGuard, TextSource, check_text};

#[derive(Debug, clap::Subcommand)]
pub enum GuardCommand {
    /// Check text (an argument, or one text per JSONL line: a string or `{"text": ..., "source": ...}`) and
    /// print one JSON line per text. Exits 0; the summary goes to stderr.
    Check(CheckArgs),
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The configuration whose guards to run (default: every guard on, `flag`, with PII `redact`).
    #[arg(long, short, env = "KEEL_CONFIG")]
    config: Option<PathBuf>,
    /// The model alias whose policy applies (default: the first guarded alias of the configuration).
    #[arg(long)]
    model: Option<String>,
    /// Where the text comes from: user, tool, retrieved (input checks) or answer (output checks: secrets,
    /// personal data, deny patterns, and the canary of the alias's route, as `keel serve` derives it from the
    /// same configuration).
    #[arg(long, default_value = "user")]
    source: String,
    /// A JSONL file of texts instead of TEXT.
    #[arg(long)]
    file: Option<PathBuf>,
    /// The text to check.
    text: Option<String>,
}

fn source(name: &str) -> anyhow::Result<TextSource> {
    Ok(match name {
        "user" => TextSource::User,
        "tool" => TextSource::Tool,
        "retrieved" => TextSource::Retrieved,
        "answer" => TextSource::Answer,
        other => anyhow::bail!("unknown source {other:?} (user, tool, retrieved, answer)"),
    })
}

/// Every guard on: what an operator checking text without a configuration wants to see.
fn everything_on() -> GuardPolicy {
    let mut pii: std::collections::BTreeMap<_, _> =
        keel_guard::Entity::ALL.into_iter().map(|e| (e, GuardAction::Redact)).collect();
    pii.insert(keel_guard::Entity::DateTime, GuardAction::Off);
    GuardPolicy {
        injection: GuardAction::Flag,
        pii,
        output: GuardAction::Flag,
        output_entities: keel_config::DEFAULT_OUTPUT_ENTITIES.to_vec(),
        deny: Vec::new(),
        canary: false,
        delimit_tool_results: true,
    }
}

pub fn run(command: GuardCommand) -> anyhow::Result<std::process::ExitCode> {
    let GuardCommand::Check(args) = command;
    let (alias, guard) = match &args.config {
        None => {
            let guard = RouteGuard::new("(all guards)", "", everything_on(), Arc::new(Engines::new()?))?;
            ("(all guards)".to_string(), Arc::new(guard))
        }
        Some(path) => {
            let cfg = keel_config::load(path, &keel_config::ProcessEnv).map_err(|e| anyhow::anyhow!("{e}"))?;
            let found = match &args.model {
                Some(m) => cfg.models.get(m).with_context(|| format!("no model alias {m:?} in {}", path.display()))?,
                None => cfg
                    .models
                    .values()
                    .find(|m| m.guard.is_some())
                    .with_context(|| format!("no alias of {} has guards ([guard])", path.display()))?,
            };
            let policy = found.guard.clone().with_context(|| format!("model alias {:?} has no guards", found.name))?;
            // The route's guards as `keel serve` builds them: its canary derives from the route's fingerprint, so
            // an answer carrying the canary the server puts in its prompts is caught here too.
            let routes = RouteTable::new(std::iter::once(found)).map_err(|e| anyhow::anyhow!("{e}"))?;
            let guard = match routes.plan(&found.name).and_then(|p| p.guard.clone()) {
                Some(guard) => guard,
                // Every guard of the route is off (the server runs none): checked all the same, finding nothing.
                None => Arc::new(RouteGuard::new(&found.name, "", policy, Arc::new(Engines::new()?))?),
            };
            (found.name.clone(), guard)
        }
    };
    let default_source = source(&args.source)?;
    let mut texts: Vec<(String, TextSource)> = Vec::new();
    match (&args.file, &args.text) {
        (Some(file), _) => {
            let f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
            for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
                let line = line?;
                if line.trim().is_empty() {
                    continue;
                }
                let value: serde_json::Value =
                    serde_json::from_str(&line).with_context(|| format!("{}:{}: not JSON", file.display(), i + 1))?;
                let (text, src) = match &value {
                    serde_json::Value::String(s) => (s.clone(), default_source),
                    serde_json::Value::Object(o) => {
                        let text = o
                            .get("text")
                            .and_then(|t| t.as_str())
                            .with_context(|| format!("{}:{}: no \"text\" string", file.display(), i + 1))?;
                        let src = match o.get("source").and_then(|s| s.as_str()) {
                            Some(s) => source(s)?,
                            None => default_source,
                        };
                        (text.to_string(), src)
                    }
                    _ => anyhow::bail!("{}:{}: expected a string or an object", file.display(), i + 1),
                };
                texts.push((text, src));
            }
        }
        (None, Some(text)) => texts.push((text.clone(), default_source)),
        (None, None) => anyhow::bail!("give a TEXT or --file"),
    }
    let mut counts: std::collections::BTreeMap<&'static str, usize> = Default::default();
    for (text, src) in &texts {
        let check = check_text(&guard, text, *src);
        *counts.entry(check.action).or_insert(0) += 1;
        println!("{}", serde_json::to_string(&check)?);
    }
    let summary: Vec<String> = counts.iter().map(|(a, n)| format!("{a}: {n}")).collect();
    eprintln!("{} text(s) checked with the guards of {alias}: {}", texts.len(), summary.join(", "));
    Ok(std::process::ExitCode::SUCCESS)
}

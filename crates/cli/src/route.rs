//! `keel route train`: a learned router's weights from eval runs of the same cases on a cheap and a large alias
//! (issue 16). Each case's prompt is embedded as the router will embed it at serve time
//! ([`keel_pipeline::router::learned::prompt_text`] of the request the case sent), labelled by whether the cheap
//! alias passed, and fitted by logistic regression; the threshold is chosen on out-of-fold predictions for the
//! target quality.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Subcommand;
use keel_pipeline::router::learned::{self, Case, Weights};
use keel_store::{EvalResult, EvalStore};
use serde_json::{Value, json};

#[derive(Debug, Subcommand)]
pub enum RouteCommand {
    /// Train a learned router from eval runs: `--small` runs of the cheap alias, each paired with the `--large`
    /// run of the same suite at the same position, on the same cases. Writes the weights file a router's
    /// `learned.weights` names.
    Train(TrainArgs),
}

#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// Eval runs (ids) of the cheap alias.
    #[arg(long, required = true, num_args = 1..)]
    small: Vec<String>,
    /// Eval runs of the large alias, in the same order.
    #[arg(long, required = true, num_args = 1..)]
    large: Vec<String>,
    /// The embeddings alias the router will use (its `learned.embedding`).
    #[arg(long, default_value = "all-minilm-l6-v2")]
    embedding: String,
    /// The routed pass rate must stay at least this share of the large alias's (on the training cases,
    /// out of fold).
    #[arg(long, default_value_t = 0.98)]
    target_quality: f64,
    /// Where to write the weights (JSON).
    #[arg(long, short)]
    out: PathBuf,
    /// The configuration: its store holds the runs, its templates render template suites' prompts, its
    /// embeddings alias embeds them.
    #[arg(long, short, env = "KEEL_CONFIG")]
    config: Option<PathBuf>,
}

/// Folds of the cross-validation that picks the regularisation and the threshold.
const FOLDS: usize = 5;
/// The regularisation strengths tried (the one with the lowest out-of-fold log-loss is kept).
const L2: [f64; 4] = [1e-4, 1e-3, 1e-2, 1e-1];
/// Prompts embedded per request.
const BATCH: usize = 32;

pub(crate) fn run(command: RouteCommand) -> anyhow::Result<std::process::ExitCode> {
    let quiet = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,ort=error"));
    let _ = tracing_subscriber::fmt().with_env_filter(quiet).with_writer(std::io::stderr).try_init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        match command {
            RouteCommand::Train(args) => train(args).await,
        }
    })?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// One training case: the text the router reads and both aliases' outcomes.
struct Sample {
    text: String,
    small: EvalResult,
    large: EvalResult,
}

async fn train(args: TrainArgs) -> anyhow::Result<()> {
    if args.small.len() != args.large.len() {
        bail!("{} --small runs but {} --large runs: give them in pairs", args.small.len(), args.large.len());
    }
    if !(0.0..=1.0).contains(&args.target_quality) {
        bail!("--target-quality is a share of the large alias's pass rate, from 0 to 1");
    }
    let cfg = crate::load(args.config.as_deref())?;
    let url = crate::store_url(args.config.as_deref())?;
    let store = keel_store::open(&url)
        .await
        .with_context(|| format!("opening keel's store {}", crate::logs::display_url(&url)))?;
    let store = store as Arc<dyn EvalStore>;
    let templates = keel_pipeline::Templates::new(&cfg.templates).map_err(anyhow::Error::msg)?;

    let mut samples = Vec::new();
    let mut runs = Vec::new();
    for (small_id, large_id) in args.small.iter().zip(&args.large) {
        let small_run = store.run(small_id).await?.with_context(|| format!("no eval run {small_id}"))?;
        let large_run = store.run(large_id).await?.with_context(|| format!("no eval run {large_id}"))?;
        // A run of a suite on another alias is stored as SUITE@MODEL: the pair must be of one suite.
        let suite = |s: &str| s.split_once('@').map_or(s, |(name, _)| name).to_string();
        if suite(&small_run.suite) != suite(&large_run.suite) {
            bail!(
                "run {small_id} is of suite {:?} but run {large_id} of {:?}: pair runs of the same suite",
                small_run.suite,
                large_run.suite
            );
        }
        let large: HashMap<String, EvalResult> =
            store.results(large_id).await?.into_iter().map(|r| (r.case_id.clone(), r)).collect();
        let mut paired = 0usize;
        for r in store.results(small_id).await? {
            let Some(l) = large.get(&r.case_id) else { continue };
            // A case that errored (a timeout, a 5xx) says nothing about what the alias can do.
            if [&r, l].iter().any(|x| x.detail.get("error").is_some_and(|e| !e.is_null())) {
                continue;
            }
            let text = case_text(&r, &templates).with_context(|| format!("run {small_id}, case {}", r.case_id))?;
            samples.push(Sample { text, large: l.clone(), small: r });
            paired += 1;
        }
        if paired == 0 {
            bail!("runs {small_id} and {large_id} share no case that both answered");
        }
        runs.push(json!({
            "suite": small_run.suite,
            "small_run": small_id,
            "large_run": large_id,
            "large_suite": large_run.suite,
            "cases": paired,
        }));
    }
    let passes = samples.iter().filter(|s| s.small.passed).count();
    if passes == 0 || passes == samples.len() {
        bail!(
            "the cheap alias passed {passes} of {} cases: a router learns from both outcomes; use more or harder cases",
            samples.len()
        );
    }

    // Embedded through keel's own route for the alias, exactly as the router will at serve time.
    let providers = keel_providers::Providers::from_config(cfg.providers.values()).context("building providers")?;
    let mut sources = Vec::new();
    let providers = crate::with_local_models(&cfg, providers, &mut sources).await?;
    let routes = keel_pipeline::RouteTable::new(cfg.models.values()).map_err(anyhow::Error::msg)?;
    let breakers = keel_pipeline::Breakers::new(routes.all_targets());
    let call = keel_pipeline::Call::new(providers, breakers);
    let embedder = keel_pipeline::RoutedEmbedder::new(call, &routes, &args.embedding)?;
    eprintln!("embedding {} prompts with {} ...", samples.len(), embedder.model());
    let mut x = Vec::with_capacity(samples.len());
    for chunk in samples.chunks(BATCH) {
        let vectors = embedder
            .embed(chunk.iter().map(|s| s.text.clone()).collect())
            .await
            .map_err(|e| anyhow::anyhow!("embedding the prompts: {e}"))?;
        x.extend(vectors);
    }
    let y: Vec<bool> = samples.iter().map(|s| s.small.passed).collect();

    let scored: Vec<(f64, Vec<f32>)> = L2
        .iter()
        .map(|l2| {
            let p = learned::out_of_fold(&x, &y, *l2, FOLDS);
            (learned::log_loss(&p, &y), p)
        })
        .collect();
    let (best, (loss, oof)) = scored
        .iter()
        .enumerate()
        .min_by(|a, b| a.1.0.total_cmp(&b.1.0))
        .context("no regularisation strength to try")?;
    let l2 = L2[best];
    let base = passes as f32 / samples.len() as f32;
    let constant_loss = learned::log_loss(&vec![base; y.len()], &y);
    // Costs as the runs recorded them. Where a run has none (an alias with no prices), every case is costed
    // 0 on the cheap alias and 1 on the large one: the cheapest threshold is then the one that sends the most
    // cases to the cheap alias.
    let unknown = samples.iter().filter(|s| s.small.cost_usd.is_none() || s.large.cost_usd.is_none()).count();
    if unknown > 0 {
        eprintln!(
            "warning: {unknown} of {} cases have no cost (an alias without prices?): the threshold is chosen by the \
             share of cases sent to the cheap alias instead",
            samples.len()
        );
    }
    let cases: Vec<Case> = samples
        .iter()
        .zip(oof)
        .map(|(s, p)| {
            let (small_cost, large_cost) = match (s.small.cost_usd, s.large.cost_usd) {
                (Some(a), Some(b)) if unknown == 0 => (a, b),
                _ => (0.0, 1.0),
            };
            Case { p: *p, small_pass: s.small.passed, large_pass: s.large.passed, small_cost, large_cost }
        })
        .collect();
    let choice = learned::choose_threshold(&cases, args.target_quality);
    let model = learned::fit(&x, &y, l2);
    let weights = Weights {
        format: learned::FORMAT.to_string(),
        embedding_model: embedder.model().to_string(),
        weights: model.weights,
        bias: model.bias,
        threshold: choice.threshold,
        trained: json!({
            "runs": runs,
            "cases": samples.len(),
            "small_passed": passes,
            "target_quality": args.target_quality,
            "l2": l2,
            "out_of_fold": {
                "log_loss": loss,
                "log_loss_of_a_constant": constant_loss,
                "choice": choice,
                "note": "the threshold was chosen on these same out-of-fold predictions: measure on held-out cases",
            },
        }),
    };
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(&weights)?;
    std::fs::write(&args.out, text + "\n").with_context(|| format!("writing {}", args.out.display()))?;

    let pct = |x: f64| format!("{:.1}%", 100.0 * x);
    let saved = if choice.large_cost > 0.0 { pct(1.0 - choice.cost / choice.large_cost) } else { "n/a".into() };
    println!("trained on {} cases ({} passed on the cheap alias), l2 {l2}", samples.len(), passes);
    println!("out-of-fold log-loss {loss:.4} (a constant: {constant_loss:.4})");
    println!(
        "threshold {:.3}: cheap alias for {} of cases; pass rate {} (large alone {}, cheap alone {}); cost saved {saved}",
        choice.threshold,
        pct(choice.small_share),
        pct(choice.pass_rate),
        pct(choice.large_pass_rate),
        pct(choice.small_pass_rate),
    );
    println!("wrote {}", args.out.display());
    Ok(())
}

/// The text the router will read for a case: the last user turn of the request it sent. A prompt suite stored
/// it; a template suite's is rendered again from the stored variables with the configuration's template.
fn case_text(r: &EvalResult, templates: &keel_pipeline::Templates) -> anyhow::Result<String> {
    if let Some(prompt) = r.detail.get("prompt").and_then(Value::as_str) {
        return Ok(prompt.to_string());
    }
    let Some(template) = r.detail.get("template").and_then(Value::as_str) else {
        bail!("the result has neither a prompt nor a template");
    };
    // Stored as NAME@VERSION (or NAME alone).
    let name = template.split_once('@').map_or(template, |(n, _)| n);
    let request = json!({
        "model": "",
        "messages": [],
        "keel_template": {"name": name, "variables": r.detail.get("input").cloned().unwrap_or(json!({}))},
    });
    let chat: keel_types::ChatRequest = serde_json::from_value(request)?;
    if let (Some((_, version)), Some(t)) = (template.split_once('@'), templates.get(name))
        && t.version != version
    {
        bail!(
            "the case ran template {name:?} at version {version}; the configuration has version {}: train with the \
             configuration the runs used",
            t.version
        );
    }
    let (chat, _) =
        templates.expand(chat).map_err(|e| anyhow::anyhow!("rendering template {name:?}: {}", e.message))?;
    Ok(learned::prompt_text(&chat))
}

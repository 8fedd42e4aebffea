//! `keel eval`: run a suite through keel (in this process on a loopback port, or a running keel with
//! `--url`), list and show runs, compare two runs. Exit codes: 0 when every gate passes, 1 when a gate fails
//! or the run could not be made (the message says which).

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use keel_eval::{Comparison, Keel, Resume, Suite, report};
use keel_store::{EvalResult, EvalRun, EvalStore};

#[derive(Debug, clap::Subcommand)]
pub enum EvalCommand {
    /// Run suites (TOML files). Each case goes through keel's request path; results are stored as they come.
    Run(RunArgs),
    /// Compare two runs case by case (regressions first) with McNemar's exact test.
    Compare(CompareArgs),
    /// List runs, newest first.
    Runs(RunsArgs),
    /// Print a stored run's summary and write its reports.
    Show(ShowArgs),
}

#[derive(Debug, clap::Args)]
pub struct Common {
    /// The configuration: its routes and templates serve the cases (in-process), its store keeps the runs.
    #[arg(long, short, env = "KEEL_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct Reports {
    /// Write everything (run, summary, every case) as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write JUnit XML here. With several suites, each suite's reports go to these paths with its name added
    /// before the extension (`eval.xml` → `eval.gsm8k.xml`).
    #[arg(long)]
    junit: Option<PathBuf>,
    /// Write a self-contained HTML report here.
    #[arg(long)]
    html: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Suite files.
    #[arg(required = true)]
    suites: Vec<PathBuf>,
    #[command(flatten)]
    common: Common,
    /// A running keel to evaluate instead of one started here (e.g. `http://127.0.0.1:8080`).
    #[arg(long, env = "KEEL_URL")]
    url: Option<String>,
    /// A virtual key for keel's API (when keys are required).
    #[arg(long, env = "KEEL_API_KEY")]
    api_key: Option<String>,
    /// Continue an interrupted run: its id, or `latest` (the newest unfinished run of the suite).
    #[arg(long)]
    resume: Option<String>,
    /// Skip the first N cases of each suite (with `--limit`, a slice: `--skip 300 --limit 200`).
    #[arg(long)]
    skip: Option<usize>,
    /// Only the first N cases of each suite (after `--skip`).
    #[arg(long)]
    limit: Option<usize>,
    /// Send the cases to this model alias or router instead of the suite's `model` (suites with a `prompt`; a
    /// template names its own model). The run is stored as `SUITE@MODEL`, so each model's runs are their own
    /// baselines.
    #[arg(long)]
    model: Option<String>,
    /// Requests in flight at once (over the suite's `concurrency`).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Gate: the pass rate must be at least this (over the suite's `[gate] min_pass_rate`).
    #[arg(long)]
    min_pass_rate: Option<f64>,
    /// Gate: compare with this run (`previous`: the suite's last finished run) and fail on a significant
    /// regression (over the suite's `[gate] baseline`).
    #[arg(long)]
    baseline: Option<String>,
    /// Per-request timeout, seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    #[command(flatten)]
    reports: Reports,
}

#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    run_a: String,
    run_b: String,
    #[command(flatten)]
    common: Common,
    /// Exit 1 when B regressed significantly against A.
    #[arg(long)]
    fail_on_regression: bool,
    /// The significance level of that gate.
    #[arg(long, default_value_t = 0.05)]
    significance: f64,
    /// Changed cases printed per direction.
    #[arg(long, default_value_t = 10)]
    show: usize,
    /// Write the comparison as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write it as a self-contained HTML page here.
    #[arg(long)]
    html: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct RunsArgs {
    /// Only this suite's runs.
    suite: Option<String>,
    #[command(flatten)]
    common: Common,
    #[arg(long, default_value_t = 20)]
    limit: u32,
}

#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    run: String,
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    reports: Reports,
}

pub(crate) fn run(command: EvalCommand) -> anyhow::Result<std::process::ExitCode> {
    let quiet = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,ort=error"));
    let _ = tracing_subscriber::fmt().with_env_filter(quiet).with_writer(std::io::stderr).try_init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let ok = runtime.block_on(async move {
        match command {
            EvalCommand::Run(args) => run_suites(args).await,
            EvalCommand::Compare(args) => compare(args).await,
            EvalCommand::Runs(args) => runs(args).await,
            EvalCommand::Show(args) => show(args).await,
        }
    })?;
    Ok(if ok { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::FAILURE })
}

async fn store(common: &Common) -> anyhow::Result<Arc<dyn EvalStore>> {
    let url = crate::store_url(common.config.as_deref())?;
    let store = keel_store::open(&url)
        .await
        .with_context(|| format!("opening keel's store {}", crate::logs::display_url(&url)))?;
    Ok(store as Arc<dyn EvalStore>)
}

/// keel serving in this process on a loopback port, until dropped.
struct InProcess {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl InProcess {
    async fn start(common: &Common) -> anyhow::Result<(Self, String)> {
        let mut cfg = crate::load(common.config.as_deref())?;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.context("binding a loopback port")?;
        let addr = listener.local_addr()?;
        cfg.server.listen = addr;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready, is_ready) = tokio::sync::oneshot::channel();
        let mut task = tokio::spawn(crate::serve_on(
            cfg,
            listener,
            async move {
                let _ = stopped.await;
            },
            Some(ready),
            None,
        ));
        // Loading models takes seconds; a configuration that cannot be served ends the task with its error.
        tokio::select! {
            r = is_ready => if r.is_err() {
                anyhow::bail!("keel did not start");
            },
            done = &mut task => {
                done.context("keel's task")??;
                anyhow::bail!("keel stopped before it served");
            }
        }
        Ok((Self { stop: Some(stop), task }, format!("http://{addr}")))
    }

    async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        (&mut self.task).await.context("keel's task")?
    }
}

async fn run_suites(args: RunArgs) -> anyhow::Result<bool> {
    let mut suites = Vec::new();
    for path in &args.suites {
        let mut suite = Suite::load(path)?;
        if let Some(n) = args.skip {
            suite.cases.drain(..n.min(suite.cases.len()));
        }
        if let Some(m) = &args.model {
            match &mut suite.target {
                keel_eval::Target::Prompt { model, .. } => *model = m.clone(),
                keel_eval::Target::Template { name, .. } => {
                    anyhow::bail!("--model: suite {:?} runs template {name:?}, which names its own model", suite.name)
                }
            }
            suite.name = format!("{}@{m}", suite.name);
        }
        if let Some(n) = args.limit {
            suite.cases.truncate(n);
        }
        // The slice and the model are part of what ran: a run of another slice or model is not resumed as
        // this one.
        if args.skip.is_some() || args.model.is_some() {
            let skip = args.skip.unwrap_or(0);
            let model = args.model.as_deref().unwrap_or("");
            suite.hash = format!("{}+skip{skip}+model:{model}", suite.hash);
        }
        if let Some(c) = args.concurrency {
            anyhow::ensure!((1..=64).contains(&c), "--concurrency: 1 to 64");
            suite.concurrency = c;
        }
        if let Some(r) = args.min_pass_rate {
            anyhow::ensure!((0.0..=1.0).contains(&r), "--min-pass-rate: between 0 and 1");
            suite.gate.min_pass_rate = Some(r);
        }
        if let Some(b) = &args.baseline {
            suite.gate.baseline = Some(b.clone());
        }
        suites.push(suite);
    }
    anyhow::ensure!(args.resume.is_none() || suites.len() == 1, "--resume continues one run: name one suite");
    let store = store(&args.common).await?;
    let (server, base) = match &args.url {
        Some(url) => (None, url.clone()),
        None => {
            let (s, base) = InProcess::start(&args.common).await?;
            (Some(s), base)
        }
    };
    let keel = Keel::new(&base, args.api_key.clone(), Duration::from_secs(args.timeout.max(1)))?;
    let mut all_passed = true;
    let mut outcome = Ok(());
    let many = suites.len() > 1;
    for suite in &suites {
        match run_one(suite, &keel, &store, &args, many).await {
            Ok(passed) => all_passed &= passed,
            Err(e) => {
                outcome = Err(e);
                break;
            }
        }
    }
    if let Some(s) = server {
        s.stop().await?;
    }
    outcome.map(|()| all_passed)
}

fn progress_printer(name: &str, total: u64) -> (indicatif::ProgressBar, impl Fn(keel_eval::Progress) + Send + Sync) {
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template(&format!(
        "{name} [{{bar:30}}] {{pos}}/{{len}} {{msg}} {{per_sec}}, {{eta}} left"
    )) {
        bar.set_style(style.progress_chars("=> "));
    }
    let terminal = std::io::stderr().is_terminal();
    let shown = bar.clone();
    let name = name.to_string();
    let step = (total / 10).max(1);
    let print = move |p: keel_eval::Progress| {
        shown.set_position(p.done);
        shown.set_message(format!("passed {}", p.passed));
        // Without a terminal (CI), a line every tenth of the run.
        if !terminal && (p.done.is_multiple_of(step) || p.done == p.total) && p.done > 0 {
            eprintln!("{name}: {}/{} cases, {} passed", p.done, p.total, p.passed);
        }
    };
    (bar, print)
}

/// Runs one suite, writes its reports and says whether it passed its gates.
/// `many`: several suites run, so each one's reports go to the paths given with its name added
/// (`--junit eval.xml` → `eval.gsm8k.xml`).
async fn run_one(
    suite: &Suite,
    keel: &Keel,
    store: &Arc<dyn EvalStore>,
    args: &RunArgs,
    many: bool,
) -> anyhow::Result<bool> {
    let resume = args.resume.as_deref().map(|r| if r == "latest" { Resume::Latest } else { Resume::Id(r.to_string()) });
    let (bar, progress) = progress_printer(&suite.name, suite.cases.len() as u64);
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let finished = keel_eval::run::run(suite, keel, store.clone(), resume, &progress, interrupt).await?;
    bar.finish_and_clear();
    print!("{}", report::text(&finished.run, &finished.summary));
    let reports = if many { args.reports.of_suite(&suite.name) } else { args.reports.clone() };
    write_reports(&reports, &finished.run, &finished.summary, &finished.results)?;
    if finished.interrupted {
        eprintln!(
            "interrupted after {} of {} cases: continue with `keel eval run {} --resume {}`",
            finished.results.len(),
            suite.cases.len(),
            suite.path.display(),
            finished.run.id
        );
        return Ok(false);
    }
    let baseline = baseline(suite, store, &finished.run.id).await?;
    match (&baseline, &suite.gate.baseline) {
        (Some(c), _) => print!("{}", report::compare_text(c, 5)),
        (None, Some(_)) => println!("  no previous finished run of {} to compare with", suite.name),
        (None, None) => {}
    }
    let failures = keel_eval::gate_failures(&suite.gate, &finished.summary, baseline.as_ref());
    for f in &failures {
        println!("  GATE FAILED: {f}");
    }
    if failures.is_empty()
        && (suite.gate.min_pass_rate.is_some() || baseline.is_some() || suite.gate.max_cost_usd.is_some())
    {
        println!("  gate passed");
    }
    Ok(failures.is_empty())
}

/// The comparison of run `id` of `suite` with the suite's baseline (`[gate] baseline`): `"previous"`, the last
/// other finished run of the suite (none yet: `None`), or a run id (which must exist).
pub(crate) async fn baseline(
    suite: &Suite,
    store: &Arc<dyn EvalStore>,
    id: &str,
) -> anyhow::Result<Option<Comparison>> {
    let Some(b) = &suite.gate.baseline else { return Ok(None) };
    let base = if b == "previous" {
        store.runs(Some(&suite.name), 50).await?.into_iter().find(|r| r.id != id && r.finished_ms.is_some())
    } else {
        Some(store.run(b).await?.with_context(|| format!("baseline run {b} not found"))?)
    };
    let Some(base) = base else { return Ok(None) };
    let before = store.results(&base.id).await?;
    let after = store.results(id).await?;
    Ok(Some(Comparison::of(&base.id, &before, id, &after)))
}

impl Reports {
    /// The paths with the suite's name before the extension.
    fn of_suite(&self, suite: &str) -> Self {
        let name = |p: &PathBuf| {
            let stem = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let file = match p.extension() {
                Some(ext) => format!("{stem}.{suite}.{}", ext.to_string_lossy()),
                None => format!("{stem}.{suite}"),
            };
            p.with_file_name(file)
        };
        Self {
            json: self.json.as_ref().map(name),
            junit: self.junit.as_ref().map(name),
            html: self.html.as_ref().map(name),
        }
    }
}

fn write_reports(r: &Reports, run: &EvalRun, s: &keel_eval::Summary, results: &[EvalResult]) -> anyhow::Result<()> {
    if let Some(p) = &r.json {
        std::fs::write(p, serde_json::to_vec_pretty(&report::json(run, s, results))?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &r.junit {
        std::fs::write(p, report::junit(run, s, results)).with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &r.html {
        std::fs::write(p, report::html(run, s, results)).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

async fn compare(args: CompareArgs) -> anyhow::Result<bool> {
    anyhow::ensure!(args.significance > 0.0 && args.significance < 1.0, "--significance: between 0 and 1");
    let store = store(&args.common).await?;
    for id in [&args.run_a, &args.run_b] {
        store.run(id).await?.with_context(|| format!("no run {id}"))?;
    }
    let a = store.results(&args.run_a).await?;
    let b = store.results(&args.run_b).await?;
    let c = Comparison::of(&args.run_a, &a, &args.run_b, &b);
    print!("{}", report::compare_text(&c, args.show));
    if let Some(p) = &args.json {
        std::fs::write(p, serde_json::to_vec_pretty(&c)?).with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &args.html {
        std::fs::write(p, report::compare_html(&c)).with_context(|| format!("writing {}", p.display()))?;
    }
    if args.fail_on_regression && c.significant_regression(args.significance) {
        println!("  GATE FAILED: significant regression (p = {:.4} < {})", c.p_value, args.significance);
        return Ok(false);
    }
    Ok(true)
}

async fn runs(args: RunsArgs) -> anyhow::Result<bool> {
    let store = store(&args.common).await?;
    println!("{:<38} {:<20} {:>7} {:>9} {:>10}  started", "run", "suite", "cases", "passed", "state");
    for r in store.runs(args.suite.as_deref(), args.limit).await? {
        let s = r.summary.as_ref().and_then(|s| serde_json::from_value::<keel_eval::Summary>(s.clone()).ok());
        let passed = s.map_or_else(|| "-".to_string(), |s| format!("{:.1}%", s.pass_rate * 100.0));
        let started = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(r.started_ms).unwrap_or(0)),
        );
        let state = if r.finished_ms.is_some() { "finished" } else { "unfinished" };
        println!("{:<38} {:<20} {:>7} {:>9} {:>10}  {started}", r.id, r.suite, r.cases, passed, state);
    }
    Ok(true)
}

async fn show(args: ShowArgs) -> anyhow::Result<bool> {
    let store = store(&args.common).await?;
    let run = store.run(&args.run).await?.with_context(|| format!("no run {}", args.run))?;
    let results = store.results(&run.id).await?;
    let summary = run
        .summary
        .clone()
        .and_then(|s| serde_json::from_value(s).ok())
        .unwrap_or_else(|| keel_eval::Summary::of(&results, 0.0));
    print!("{}", report::text(&run, &summary));
    write_reports(&args.reports, &run, &summary, &results)?;
    Ok(true)
}

//! `keel route train` as a user runs it: two `keel eval run`s of one prompt suite, one per alias (`--model`),
//! then training on them writes a weights file a learned router loads; the mistakes a user can make get a clear
//! error and write nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Output;

use keel_testkit::{MockUpstream, Reply};

const KEEL: &str = env!("CARGO_BIN_EXE_keel");

async fn keel(args: &[&str], config: &Path) -> Output {
    let mut cmd = tokio::process::Command::new(KEEL);
    cmd.args(args).arg("--config").arg(config).env_remove("OPENAI_API_KEY").env_remove("ANTHROPIC_API_KEY");
    cmd.output().await.unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn run_id(o: &Output) -> String {
    let out = String::from_utf8_lossy(&o.stdout);
    out.lines()
        .find_map(|l| l.split(" · run ").nth(1))
        .unwrap_or_else(|| panic!("no run id in {}", text(o)))
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learned_router_is_trained_from_two_eval_runs_and_loads() {
    let dir = std::env::temp_dir().join(format!("keel-route-train-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // The small model echoes the prompt (so it passes the cases that mention "alpha"); the large one always
    // answers "alpha"; embeddings come from the small model's mock.
    let (small, large) = (MockUpstream::start().await.unwrap(), MockUpstream::start().await.unwrap());
    large.set_default(Reply::text("alpha"));
    let config = dir.join("keel.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\nurl = \"sqlite://{d}/keel.db\"\n\
             [providers.s]\nkind = \"vllm\"\nbase_url = \"{s}/v1\"\n[providers.l]\nkind = \"vllm\"\nbase_url = \"{l}/v1\"\n\
             [prices.\"s/tiny\"]\ninput = 1.0\noutput = 1.0\n[prices.\"l/huge\"]\ninput = 10.0\noutput = 10.0\n\
             [models.small]\nprovider = \"s\"\nmodel = \"tiny\"\n[models.large]\nprovider = \"l\"\nmodel = \"huge\"\n\
             [models.embed]\nprovider = \"s\"\nmodel = \"mock-embed\"\n\
             [templates.t]\nmodel = \"small\"\nprompt = \"{{{{ q }}}}\"\n",
            d = dir.display(),
            s = small.url(),
            l = large.url()
        ),
    )
    .unwrap();
    let cases: String = (0..24)
        .map(|i| {
            let word = if i % 2 == 0 { "alpha" } else { "omega" };
            format!("{{\"id\": \"c{i}\", \"q\": \"question {i} about {word}\"}}\n")
        })
        .collect();
    std::fs::write(dir.join("cases.jsonl"), cases).unwrap();
    let suite = dir.join("suite.toml");
    std::fs::write(
        &suite,
        "name = \"words\"\ndataset = \"cases.jsonl\"\nmodel = \"small\"\nprompt = \"{{ q }}\"\n\
         [[checks]]\ntype = \"contains\"\nexpected = \"alpha\"\n",
    )
    .unwrap();
    let suite = suite.to_str().unwrap();

    let s = keel(&["eval", "run", suite, "--skip", "2", "--limit", "20"], &config).await;
    assert!(s.status.success(), "{}", text(&s));
    assert!(text(&s).contains("suite words · run"), "{}", text(&s));
    let l = keel(&["eval", "run", suite, "--model", "large", "--skip", "2", "--limit", "20"], &config).await;
    assert!(l.status.success(), "{}", text(&l));
    assert!(text(&l).contains("words@large"), "the run is stored per model: {}", text(&l));
    let (s, l) = (run_id(&s), run_id(&l));

    let out = dir.join("router/w.json");
    let t = keel(
        &[
            "route",
            "train",
            "--small",
            &s,
            "--large",
            &l,
            "--embedding",
            "embed",
            "--target-quality",
            "1",
            "--out",
            out.to_str().unwrap(),
        ],
        &config,
    )
    .await;
    assert!(t.status.success(), "{}", text(&t));
    assert!(text(&t).contains("trained on 20 cases (10 passed on the cheap alias)"), "{}", text(&t));
    let w = keel_pipeline::router::learned::Weights::load(&out).unwrap();
    assert_eq!((w.embedding_model.as_str(), w.weights.len()), ("mock-embed", 8));
    assert!((0.0..=1.0).contains(&w.threshold));
    assert_eq!(w.trained["runs"][0]["small_run"], s.as_str());
    // Target quality 1: the large alias passes everything, so only cases the small one passes may go to it.
    let choice = &w.trained["out_of_fold"]["choice"];
    assert!(choice["pass_rate"].as_f64().unwrap() >= 1.0 - 1e-9, "{choice}");

    // A learned router loads it.
    let learned = keel_config::parse(
        &format!(
            "[providers.s]\nkind = \"vllm\"\nbase_url = \"{}/v1\"\n[models.small]\nprovider = \"s\"\n[models.large]\n\
             provider = \"s\"\n[models.embed]\nprovider = \"s\"\nmodel = \"mock-embed\"\n[routers.r]\nlearned = {{ weights = \
             \"{}\", small = \"small\", large = \"large\", embedding = \"embed\" }}\n",
            small.url(),
            out.display()
        ),
        &std::collections::HashMap::<String, String>::new(),
    )
    .unwrap();
    keel_pipeline::RouteTable::build(learned.models.values(), learned.routers.values(), None).unwrap();

    // Mistakes: unpaired runs, a template suite with --model, runs the cheap alias passes entirely.
    let bad = keel(&["route", "train", "--small", &s, "--large", &l, &s, "--out", "x.json"], &config).await;
    assert!(!bad.status.success() && text(&bad).contains("give them in pairs"), "{}", text(&bad));
    let tsuite = dir.join("tsuite.toml");
    std::fs::write(
        &tsuite,
        "dataset = \"cases.jsonl\"\ntemplate = \"t\"\n[[checks]]\ntype = \"contains\"\nexpected = \"a\"\n",
    )
    .unwrap();
    let bad = keel(&["eval", "run", tsuite.to_str().unwrap(), "--model", "large"], &config).await;
    assert!(!bad.status.success() && text(&bad).contains("names its own model"), "{}", text(&bad));
    let bad = keel(
        &[
            "route",
            "train",
            "--small",
            &l,
            "--large",
            &l,
            "--embedding",
            "embed",
            "--out",
            dir.join("y.json").to_str().unwrap(),
        ],
        &config,
    )
    .await;
    assert!(!bad.status.success() && text(&bad).contains("passed 20 of 20 cases"), "{}", text(&bad));
    assert!(!dir.join("y.json").exists());
    // `keel config check` reads a learned router's weights as `keel serve` would.
    let checked = dir.join("checked.toml");
    let with_router = |weights: &Path| {
        format!(
            "{}\n[routers.r]\nlearned = {{ weights = \"{}\", small = \"small\", large = \"large\", embedding = \"embed\" }}\n",
            std::fs::read_to_string(&config).unwrap(),
            weights.display()
        )
    };
    std::fs::write(&checked, with_router(&out)).unwrap();
    let ok = std::process::Command::new(KEEL).args(["config", "check"]).arg(&checked).output().unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    std::fs::write(&checked, with_router(&dir.join("missing.json"))).unwrap();
    let bad = std::process::Command::new(KEEL).args(["config", "check"]).arg(&checked).output().unwrap();
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && err.contains("routers.r: cannot read"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

//! `keel eval` as a user runs it, against a keel started in its own process on a loopback port, whose model is
//! the mock upstream (it echoes the prompt, or answers from a script): a template change that breaks the
//! answers fails the baseline gate; an interrupted run resumes where it stopped; judges grade through keel; a
//! suite keel refuses stops at once.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Output;

use keel_testkit::{MockUpstream, Reply};

const KEEL: &str = env!("CARGO_BIN_EXE_keel");

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("keel-eval-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A configuration with one model `x` served by `mock`, the given templates, and its store in `dir`.
fn config(dir: &Path, mock: &MockUpstream, templates: &str) -> PathBuf {
    let path = dir.join("keel.toml");
    std::fs::write(
        &path,
        format!(
            "[store]\nurl = \"sqlite://{}/keel.db\"\n[providers.m]\nkind = \"vllm\"\nbase_url = \"{}/v1\"\n\
             [models.x]\nprovider = \"m\"\n{templates}",
            dir.display(),
            mock.url()
        ),
    )
    .unwrap();
    path
}

async fn keel(args: &[&str], config: &Path) -> Output {
    let mut cmd = tokio::process::Command::new(KEEL);
    cmd.args(args).arg("--config").arg(config).env_remove("OPENAI_API_KEY").env_remove("ANTHROPIC_API_KEY");
    cmd.output().await.unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// The id of the run a `keel eval run` printed (`suite NAME · run ID`).
fn run_id(o: &Output) -> String {
    let out = String::from_utf8_lossy(&o.stdout);
    out.lines()
        .find_map(|l| l.split(" · run ").nth(1))
        .unwrap_or_else(|| panic!("no run id in {out}"))
        .trim()
        .to_string()
}

async fn store(dir: &Path) -> std::sync::Arc<dyn keel_store::Store> {
    keel_store::open(&format!("sqlite://{}/keel.db", dir.display())).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_change_that_breaks_answers_fails_the_baseline_gate() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = scratch("gate");
    // The mock echoes the prompt: "echo: the answer is 7" carries the right number.
    let cases: String = (0..12)
        .map(|i| format!("{{\"id\": \"c{i}\", \"question\": \"the answer is {i}\", \"n\": \"{i}\"}}\n"))
        .collect();
    std::fs::write(dir.join("cases.jsonl"), cases).unwrap();
    let suite = dir.join("arith.toml");
    std::fs::write(
        &suite,
        "dataset = \"cases.jsonl\"\ntemplate = \"arith\"\ninputs = [\"question\"]\nconcurrency = 4\n\
         [[checks]]\ntype = \"numeric\"\nexpected = \"{{ n }}\"\n[gate]\nmin_pass_rate = 0.5\nbaseline = \"previous\"\n",
    )
    .unwrap();
    let v1 = config(&dir, &mock, "[templates.arith]\nmodel = \"x\"\nprompt = \"{{ question }}\"\n");
    let (junit, html, json) = (dir.join("r.xml"), dir.join("r.html"), dir.join("r.json"));
    let first = keel(
        &[
            "eval",
            "run",
            suite.to_str().unwrap(),
            "--junit",
            junit.to_str().unwrap(),
            "--html",
            html.to_str().unwrap(),
            "--json",
            json.to_str().unwrap(),
        ],
        &v1,
    )
    .await;
    assert!(first.status.success(), "{}", text(&first));
    assert!(text(&first).contains("passed 12/12"), "{}", text(&first));
    assert_eq!(mock.attempt_count(), 12);
    let sent = &mock.attempts()[0].body;
    assert!(sent.to_string().contains("the answer is"), "the template rendered in keel: {sent}");
    let junit_text = std::fs::read_to_string(&junit).unwrap();
    assert!(junit_text.contains("tests=\"12\" failures=\"0\" errors=\"0\""), "{junit_text}");
    assert!(std::fs::read_to_string(&html).unwrap().contains("12/12"));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["results"].as_array().unwrap().len(), 12);
    let first_id = run_id(&first);

    // The new version appends a digit: every answer but the one for 0 is now wrong.
    let v2 = config(&dir, &mock, "[templates.arith]\nmodel = \"x\"\nprompt = \"{{ question }}0\"\n");
    let second = keel(&["eval", "run", suite.to_str().unwrap()], &v2).await;
    let out = text(&second);
    assert_eq!(second.status.code(), Some(1), "{out}");
    assert!(out.contains("passed 1/12"), "{out}");
    assert!(out.contains("regressed 11 · improved 0"), "{out}");
    assert!(out.contains("GATE FAILED: pass rate 8.3% is under the gate's 50.0%"), "{out}");
    assert!(out.contains("GATE FAILED: a significant regression"), "{out}");
    let second_id = run_id(&second);

    // Each request's log row names the template version that made it; the two runs used two versions.
    let store = store(&dir).await;
    let rows = store
        .query(&keel_store::Query { template: Some("arith".into()), limit: Some(100), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(rows.len(), 24);
    let versions: std::collections::BTreeSet<_> = rows.iter().filter_map(|r| r.template_version.clone()).collect();
    assert_eq!(versions.len(), 2, "{versions:?}");

    let compare = keel(&["eval", "compare", &first_id, &second_id, "--fail-on-regression"], &v2).await;
    assert_eq!(compare.status.code(), Some(1), "{}", text(&compare));
    assert!(text(&compare).contains("McNemar exact p = 0.0010"), "{}", text(&compare));
    let back = keel(&["eval", "compare", &second_id, &first_id, "--fail-on-regression"], &v2).await;
    assert!(back.status.success(), "an improvement passes: {}", text(&back));
    let runs = keel(&["eval", "runs", "arith"], &v2).await;
    assert!(text(&runs).contains(&first_id) && text(&runs).contains(&second_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_run_resumes_without_running_a_case_twice() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set_default(Reply::echo().delay_before_headers(std::time::Duration::from_millis(150)));
    let dir = scratch("resume");
    let cases: String = (0..10).map(|i| format!("{{\"id\": {i}, \"q\": \"say {i}\"}}\n")).collect();
    std::fs::write(dir.join("cases.jsonl"), cases).unwrap();
    let suite = dir.join("say.toml");
    std::fs::write(
        &suite,
        "dataset = \"cases.jsonl\"\nmodel = \"x\"\nprompt = \"{{ q }}\"\nconcurrency = 1\n\
         [[checks]]\ntype = \"contains\"\nexpected = \"say {{ id }}\"\n",
    )
    .unwrap();
    let cfg = config(&dir, &mock, "");
    let mut child = tokio::process::Command::new(KEEL)
        .args(["eval", "run", suite.to_str().unwrap(), "--config", cfg.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupt once three cases are stored.
    let store = store(&dir).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let run = loop {
        assert!(std::time::Instant::now() < deadline, "the run never stored three results");
        if let Ok(Some(status)) = child.try_wait() {
            let out = child.wait_with_output().await.unwrap();
            panic!("the run ended ({status}) before three results were stored: {}", text(&out));
        }
        if let Some(r) = store.runs(Some("say"), 1).await.ok().and_then(|r| r.into_iter().next())
            && store.results(&r.id).await.unwrap().len() >= 3
        {
            break r;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let out = child.wait_with_output().await.unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("--resume"), "{}", text(&out));
    let stored = store.results(&run.id).await.unwrap().len();
    assert!((3..10).contains(&stored), "{stored}");
    assert!(store.run(&run.id).await.unwrap().unwrap().finished_ms.is_none());
    let before = mock.attempt_count();

    let resumed = keel(&["eval", "run", suite.to_str().unwrap(), "--resume", "latest"], &cfg).await;
    assert!(resumed.status.success(), "{}", text(&resumed));
    assert!(text(&resumed).contains("passed 10/10"), "{}", text(&resumed));
    assert_eq!(run_id(&resumed), run.id, "the same run, continued");
    assert_eq!(mock.attempt_count() - before, 10 - stored, "only the cases not stored ran again");
    let results = store.results(&run.id).await.unwrap();
    assert_eq!(results.iter().map(|r| r.seq).collect::<Vec<_>>(), (0..10).collect::<Vec<_>>());
    assert!(store.run(&run.id).await.unwrap().unwrap().finished_ms.is_some());
    let again = keel(&["eval", "run", suite.to_str().unwrap(), "--resume", &run.id], &cfg).await;
    assert!(!again.status.success() && text(&again).contains("is finished"), "{}", text(&again));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn judges_grade_through_keel_and_a_pairwise_judge_is_asked_both_ways() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = scratch("judge");
    std::fs::write(dir.join("cases.jsonl"), "{\"id\": \"a\", \"q\": \"Capital of France?\", \"ref\": \"Paris\"}\n{\"id\": \"b\", \"q\": \"Capital of Peru?\", \"ref\": \"Lima\"}\n").unwrap();
    let suite = dir.join("judged.toml");
    std::fs::write(
        &suite,
        "dataset = \"cases.jsonl\"\nmodel = \"x\"\nprompt = \"{{ q }}\"\nconcurrency = 1\n\
         [[checks]]\ntype = \"judge\"\nmodel = \"x\"\nrubric = \"The answer names {{ ref }}.\"\nreference = \"{{ ref }}\"\n",
    )
    .unwrap();
    let cfg = config(&dir, &mock, "");
    // One case at a time: its answer, then the judge's grade.
    mock.enqueue_many([
        Reply::text("Paris"),
        Reply::text("SCORE: 5\nIt names Paris."),
        Reply::text("Quito"),
        Reply::text("**Score:** 1 - wrong city"),
    ]);
    let out = keel(&["eval", "run", suite.to_str().unwrap()], &cfg).await;
    assert!(text(&out).contains("passed 1/2"), "{}", text(&out));
    let attempts = mock.attempts();
    assert_eq!(attempts.len(), 4);
    let judge_prompt = attempts[1].body.to_string();
    for part in ["The answer names Paris.", "Capital of France?", "<answer_to_grade>\\nParis"] {
        assert!(judge_prompt.contains(part), "{part} not in {judge_prompt}");
    }

    // Pairwise: a judge that always prefers the first answer it sees passes nothing on position alone.
    std::fs::write(
        &suite,
        "dataset = \"cases.jsonl\"\nmodel = \"x\"\nprompt = \"{{ q }}\"\nconcurrency = 1\nlimit = 1\n\
         [[checks]]\ntype = \"pairwise\"\nmodel = \"x\"\nreference = \"{{ ref }}\"\n",
    )
    .unwrap();
    mock.reset();
    mock.enqueue_many([Reply::text("Paris, I think"), Reply::text("WINNER: A"), Reply::text("WINNER: A")]);
    let out = keel(&["eval", "run", suite.to_str().unwrap(), "--limit", "1"], &cfg).await;
    assert!(text(&out).contains("passed 0/1"), "{}", text(&out));
    let bodies: Vec<String> = mock.attempts()[1..].iter().map(|a| a.body.to_string()).collect();
    let first_in = |b: &String| b.find("Paris, I think").unwrap() < b.find("<answer_b>").unwrap();
    assert_eq!(bodies.iter().filter(|b| first_in(b)).count(), 1, "once in each position: {bodies:?}");
    mock.reset();
    mock.enqueue_many([Reply::text("Paris"), Reply::text("WINNER: TIE"), Reply::text("WINNER: TIE")]);
    let out = keel(&["eval", "run", suite.to_str().unwrap(), "--limit", "1"], &cfg).await;
    assert!(text(&out).contains("passed 1/1"), "a consistent tie passes: {}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suite_keel_refuses_stops_at_once() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = scratch("refused");
    let cases: String = (0..50).map(|i| format!("{{\"id\": {i}, \"q\": \"{i}\"}}\n")).collect();
    std::fs::write(dir.join("cases.jsonl"), cases).unwrap();
    let suite = dir.join("nope.toml");
    std::fs::write(
        &suite,
        "dataset = \"cases.jsonl\"\ntemplate = \"missing\"\nconcurrency = 1\n[[checks]]\ntype = \"exact\"\nexpected = \"x\"\n",
    )
    .unwrap();
    let cfg = config(&dir, &mock, "");
    let out = keel(&["eval", "run", suite.to_str().unwrap()], &cfg).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("keel refused the suite's requests"), "{}", text(&out));
    assert!(
        text(&out).contains("no template \\\"missing\\\"") || text(&out).contains("no template \"missing\""),
        "{}",
        text(&out)
    );
    assert_eq!(mock.attempt_count(), 0);
    let store = store(&dir).await;
    let run = store.runs(Some("nope"), 1).await.unwrap().remove(0);
    assert_eq!(store.results(&run.id).await.unwrap().len(), 3, "stopped after the first three refusals");
}

//! Retrieval as a user runs it, with the local all-MiniLM-L6-v2: `keel ingest` of the real document sets in
//! ../shared/data (Markdown and HTML), incremental re-ingest, `keel search`, `POST /v1/search` on a running
//! keel (errors in the API's format), and `keel rag eval` gating on a floor. The two document sets are ingested
//! and searched on both index implementations: the embedded default and PostgreSQL with pgvector
//! (`KEEL_TEST_PGVECTOR_URL`, else `scripts/pgvector-server` starts one on 127.0.0.1:5433).
#![cfg(feature = "local")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const KEEL: &str = env!("CARGO_BIN_EXE_keel");

fn shared(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data").join(name)
}

/// Where collections live in a test.
#[derive(Clone, Copy, PartialEq)]
enum Backend {
    Embedded,
    Postgres,
}

fn pgvector_url() -> String {
    if let Ok(url) = std::env::var("KEEL_TEST_PGVECTOR_URL") {
        return url;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/pgvector-server");
    let out = Command::new(&script).output().unwrap();
    assert!(out.status.success(), "{}: {}", script.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A data directory and a configuration with only the local embeddings model.
fn setup(tag: &str) -> (PathBuf, PathBuf, u16) {
    setup_on(tag, Backend::Embedded)
}

/// As [`setup`], with the collections on `backend` (`[rag] postgres` for PostgreSQL).
fn setup_on(tag: &str, backend: Backend) -> (PathBuf, PathBuf, u16) {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let on = if backend == Backend::Postgres { "-pg" } else { "" };
    let dir = std::env::temp_dir().join(format!("keel-rag-{tag}{on}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("keel.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[log]\nenabled = false\n[providers.local]\nkind = \"local\"\n\
             [models.all-minilm-l6-v2]\nprovider = \"local\"\nmodel = \"all-minilm-l6-v2\"\n{}",
            match backend {
                Backend::Embedded => String::new(),
                Backend::Postgres => format!("[rag]\npostgres = \"{}\"\n", pgvector_url()),
            }
        ),
    )
    .unwrap();
    (dir, cfg, port)
}

fn keel(dir: &Path, cfg: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(KEEL).args(args).arg("--config").arg(cfg).env("KEEL_DATA_DIR", dir).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn ingest(dir: &Path, cfg: &Path, collection: &str, path: &Path) -> Value {
    let (code, out, err) = keel(dir, cfg, &["ingest", collection, path.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    serde_json::from_str(&out).unwrap()
}

fn search(dir: &Path, cfg: &Path, collection: &str, query: &str) -> Vec<Value> {
    let (code, out, err) = keel(dir, cfg, &["search", collection, query, "-k", "3", "--json"]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

fn sources(hits: &[Value]) -> Vec<String> {
    hits.iter().map(|h| h["source"].as_str().unwrap().rsplit('/').next().unwrap().to_string()).collect()
}

#[tokio::test]
async fn the_nodejs_docs_are_ingested_searched_and_served() {
    nodejs_docs(Backend::Embedded).await
}

#[tokio::test]
async fn the_nodejs_docs_are_ingested_searched_and_served_on_postgres() {
    nodejs_docs(Backend::Postgres).await
}

/// The Node.js API pages these tests ingest.
const NODE_PAGES: [&str; 12] = [
    "child_process.md",
    "readline.md",
    "crypto.md",
    "path.md",
    "url.md",
    "os.md",
    "events.md",
    "dns.md",
    "timers.md",
    "querystring.md",
    "punycode.md",
    "string_decoder.md",
];

async fn nodejs_docs(backend: Backend) {
    let (dir, cfg, port) = setup_on("node", backend);
    // PostgreSQL is shared: a name of this run's own.
    let node = format!("node-{}", std::process::id());
    let node = node.as_str();
    let _ = keel(&dir, &cfg, &["rag", "delete", node]);
    // A grounded alias on the local chat model, answering from this collection.
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!(
        "[models.grounded]\nprovider = \"local\"\nmodel = \"smollm2\"\n\
         rag = {{ collection = \"{node}\", k = 3 }}\n"
    ));
    std::fs::write(&cfg, text).unwrap();
    // A sixth of the corpus (the pages the queries below need and their neighbours): ingesting all of it with
    // the local embedding model takes a quarter of an hour on two cores, and retrieval quality over the whole
    // corpus is measured by `keel rag eval` (docs/rag.md), not here.
    let docs = dir.join("nodejs-docs");
    std::fs::create_dir_all(&docs).unwrap();
    for page in NODE_PAGES {
        std::fs::copy(shared("rag-docs-nodejs-18-api/files").join(page), docs.join(page)).unwrap();
    }
    let first = ingest(&dir, &cfg, node, &docs);
    let r = &first["report"];
    let n = NODE_PAGES.len();
    assert_eq!(r["files"], n, "{first}");
    assert_eq!(r["added"], n);
    assert_eq!(r["failed"].as_array().unwrap().len(), 0, "{first}");
    let chunks = r["chunks"].as_u64().unwrap();
    assert!(chunks > 200, "{first}");
    assert_eq!(first["collection_stats"]["chunks"].as_u64(), Some(chunks));

    // Nothing changed: nothing is embedded again.
    let again = ingest(&dir, &cfg, node, &docs);
    assert_eq!(again["report"]["unchanged"], n, "{again}");
    assert_eq!(again["report"]["chunks"], 0);

    // Known passages.
    let hits = search(&dir, &cfg, node, "read a file one line at a time with createInterface");
    assert!(sources(&hits).contains(&"readline.md".to_string()), "{hits:?}");
    let hits = search(&dir, &cfg, node, "compute a SHA-256 HMAC digest");
    assert!(sources(&hits).contains(&"crypto.md".to_string()), "{hits:?}");
    assert!(hits[0]["headings"].as_array().is_some_and(|h| !h.is_empty()), "{hits:?}");

    // Served over HTTP.
    let mut child = common::serve(&cfg, &dir, &[]);
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/v1/search");
    let post = |body: Value| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let r = http.post(&url).json(&body).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }
    };
    let (status, body) =
        post(serde_json::json!({"collection": node, "query": "spawn a child process and read its stdout", "k": 3}))
            .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["mode"], "hybrid");
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    assert!(sources(data).contains(&"child_process.md".to_string()), "{body}");
    for h in data {
        assert!(h["score"].is_number() && h["text"].is_string() && h["start"].is_number() && h["end"].is_number());
    }
    let (status, body) =
        post(serde_json::json!({"collection": node, "query": "spawn", "filter": {"kind": "html"}})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"].as_array().unwrap().len(), 0, "a filter nothing matches: {body}");
    let (status, body) = post(serde_json::json!({"collection": "nope", "query": "x"})).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "collection_not_found", "{body}");
    let (status, body) = post(serde_json::json!({"collection": node, "query": "x", "k": 0})).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["param"], "k", "{body}");
    let (status, body) = post(serde_json::json!({"collection": node, "query": "x", "mode": "fuzzy"})).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = post(serde_json::json!({"collection": node, "query": "x", "typo": 1})).await;
    assert_eq!(status, 400, "unknown fields are refused: {body}");
    // A grounded answer from the local model: the passages went into its prompt and come back as sources,
    // whole and streamed.
    let chat = format!("http://127.0.0.1:{port}/v1/chat/completions");
    let question = "How do I spawn a child process and read its output?";
    let r = http
        .post(&chat)
        .json(&serde_json::json!({"model": "grounded", "max_tokens": 24,
            "messages": [{"role": "user", "content": question}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let body: Value = r.json().await.unwrap();
    let cited = body["sources"].as_array().unwrap();
    assert_eq!(cited.len(), 3, "{body}");
    assert_eq!(cited[0]["index"], 1);
    assert!(sources(cited).contains(&"child_process.md".to_string()), "{body}");
    assert!(!body["choices"][0]["message"]["content"].as_str().unwrap().is_empty(), "{body}");
    let r = http
        .post(&chat)
        .json(&serde_json::json!({"model": "grounded", "max_tokens": 8, "stream": true,
            "messages": [{"role": "user", "content": question}]}))
        .send()
        .await
        .unwrap();
    let sse = r.text().await.unwrap();
    let first: Value = serde_json::from_str(sse.lines().find_map(|l| l.strip_prefix("data: ")).unwrap()).unwrap();
    assert!(sources(first["sources"].as_array().unwrap()).contains(&"child_process.md".to_string()), "{sse}");
    assert!(sse.trim_end().ends_with("data: [DONE]"), "{sse}");
    let _ = child.kill();
    let _ = child.wait();

    let (code, out, _) = keel(&dir, &cfg, &["rag", "list"]);
    assert_eq!(code, 0);
    assert!(out.lines().any(|l| l.starts_with(&format!("{node}\tall-minilm-l6-v2\t{n} files"))), "{out}");
    let (code, _, err) = keel(&dir, &cfg, &["rag", "delete", node]);
    assert_eq!(code, 0, "{err}");
    let (code, _, _) = keel(&dir, &cfg, &["search", node, "spawn"]);
    assert_ne!(code, 0, "a deleted collection is not searched");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_postgresql_html_manual_is_ingested_without_its_navigation() {
    postgresql_manual(Backend::Embedded)
}

#[test]
fn the_postgresql_html_manual_is_ingested_without_its_navigation_on_postgres() {
    postgresql_manual(Backend::Postgres)
}

fn postgresql_manual(backend: Backend) {
    let (dir, cfg, _) = setup_on("pg", backend);
    let name = format!("pgdocs-{}", std::process::id());
    let pg = name.as_str();
    let _ = keel(&dir, &cfg, &["rag", "delete", pg]);
    // The pages the queries below need, and every tenth of the other 1,168 (a ninth of the manual): ingesting
    // all of it takes a quarter of an hour on two cores; whole-corpus retrieval is measured by `keel rag eval`.
    let manual = shared("rag-docs-postgresql-15-html/files");
    let pages = dir.join("pg-manual");
    std::fs::create_dir_all(&pages).unwrap();
    let mut names: Vec<String> =
        std::fs::read_dir(&manual).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names.len(), 1168, "the manual as shipped");
    let picked: Vec<&String> = names
        .iter()
        .enumerate()
        .filter(|(i, n)| i % 10 == 0 || n.contains("vacuum") || *n == "sql-createindex.html")
        .map(|(_, n)| n)
        .collect();
    for n in &picked {
        std::fs::copy(manual.join(n), pages.join(n)).unwrap();
    }
    let report = ingest(&dir, &cfg, pg, &pages);
    let r = &report["report"];
    assert_eq!(r["files"], picked.len(), "{report}");
    assert_eq!(r["failed"].as_array().unwrap().len(), 0, "{report}");
    let hits = search(&dir, &cfg, pg, "VACUUM reclaims storage occupied by dead tuples");
    assert!(sources(&hits).iter().any(|s| s.contains("vacuum")), "{hits:?}");
    let hits = search(&dir, &cfg, pg, "create an index concurrently without locking out writes");
    assert!(sources(&hits).contains(&"sql-createindex.html".to_string()), "{hits:?}");
    // The "Prev / Up / Next" bars of every page are not indexed.
    let (code, out, _) = keel(&dir, &cfg, &["search", pg, "Prev Up Next Home", "--mode", "bm25", "-k", "20", "--json"]);
    assert_eq!(code, 0);
    let hits: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert!(hits.iter().all(|h| !h["text"].as_str().unwrap().contains("Prev")), "{hits:?}");
    let (code, _, err) = keel(&dir, &cfg, &["rag", "delete", pg]);
    assert_eq!(code, 0, "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A small BEIR dataset: the first documents of the SQuAD set and their queries.
fn small_beir(dir: &Path, docs: usize) -> PathBuf {
    let src = shared("squad-v1.1-dev-beir");
    let out = dir.join("squad-small");
    std::fs::create_dir_all(out.join("qrels")).unwrap();
    let corpus: Vec<String> =
        std::fs::read_to_string(src.join("corpus.jsonl")).unwrap().lines().take(docs).map(String::from).collect();
    let ids: std::collections::HashSet<String> =
        corpus.iter().map(|l| serde_json::from_str::<Value>(l).unwrap()["_id"].as_str().unwrap().to_string()).collect();
    std::fs::write(out.join("corpus.jsonl"), corpus.join("\n")).unwrap();
    let qrels = std::fs::read_to_string(src.join("qrels/test.tsv")).unwrap();
    let kept: Vec<&str> = qrels
        .lines()
        .filter(|l| l.starts_with("query-id") || l.split('\t').nth(1).is_some_and(|d| ids.contains(d)))
        .collect();
    std::fs::write(out.join("qrels/test.tsv"), kept.join("\n")).unwrap();
    std::fs::copy(src.join("queries.jsonl"), out.join("queries.jsonl")).unwrap();
    out
}

#[test]
fn rag_eval_reports_every_retriever_and_gates_on_floors() {
    let (dir, cfg, _) = setup("eval");
    let data = small_beir(&dir, 150);
    let report = dir.join("report.json");
    let (code, out, err) = keel(
        &dir,
        &cfg,
        &["rag", "eval", data.to_str().unwrap(), "--report", report.to_str().unwrap(), "--floor", "ndcg@10=0.5"],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let json: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let results = json["results"].as_array().unwrap();
    let ndcg = |name: &str| {
        results.iter().find(|r| r["retriever"].as_str().unwrap().starts_with(name)).unwrap()["metrics"]["ndcg@10"]
            .as_f64()
            .unwrap()
    };
    let (bm25, vector, hybrid) = (ndcg("bm25"), ndcg("vector"), ndcg("hybrid tmm"));
    assert!(bm25 > 0.5 && vector > 0.5, "{json}");
    assert!(hybrid >= bm25.max(vector), "hybrid {hybrid} under a single retriever ({bm25}, {vector})");
    // A floor that is not met fails the run.
    let (code, _, err) = keel(&dir, &cfg, &["rag", "eval", data.to_str().unwrap(), "--floor", "bm25:recall@1=0.999"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("FAIL: bm25 recall@1"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

//! The `keel` binary as a user runs it: configuration checks and a graceful stop on SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use keel_testkit::{MockUpstream, Reply};

const KEEL: &str = env!("CARGO_BIN_EXE_keel");

fn example_env(cmd: &mut Command) -> &mut Command {
    cmd.env("OPENAI_API_KEY", "a")
        .env("ANTHROPIC_API_KEY", "b")
        .env("AZURE_OPENAI_API_KEY", "c")
        .env("MY_ORG_ID", "o")
        .env("KEEL_ADMIN_KEY", "admin")
}

#[test]
fn the_example_config_is_valid() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../keel.example.toml");
    let out = example_env(Command::new(KEEL).args(["config", "check", example])).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (4 providers, 6 models)"));
}

#[test]
fn config_check_reports_every_problem_and_fails() {
    let dir = std::env::temp_dir().join(format!("keel-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(&file, "[providers.x]\nkind = \"opnai\"\n[models.m]\nprovider = \"y\"\n").unwrap();
    let out = Command::new(KEEL).args(["config", "check"]).arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("2 problem(s)"), "{err}");
    assert!(err.contains("providers.x.kind: unknown provider kind \"opnai\""), "{err}");
    assert!(err.contains("models.m.provider: unknown provider \"y\" (known: x)"), "{err}");
}

#[test]
fn serve_without_config_uses_the_embedded_default() {
    let out = Command::new(KEEL).args(["config", "default"]).env_remove("OPENAI_API_KEY").output().unwrap();
    assert!(out.status.success());
    let with_key = Command::new(KEEL).args(["config", "default"]).env("OPENAI_API_KEY", "k").output().unwrap();
    assert!(String::from_utf8_lossy(&with_key.stdout).contains("[providers.openai]"));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("[providers.openai]"));
}

/// Waits until `done` holds, checking every 10 ms; fails the test, saying what it waited for, after 30 s.
async fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "gave up waiting: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The data directory `start_keel` gives a keel on `port` (its request log is `keel.db` there).
fn data_dir(port: u16) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("keel-serve-{}-{port}", std::process::id()))
}

/// Starts `keel serve` on a free port with `[server]` extras and one model `x` served by `mock`; its store is
/// its own, in [`data_dir`].
fn start_keel(mock: &MockUpstream, server_extra: &str) -> (std::process::Child, u16) {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = data_dir(port);
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("keel.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n{server_extra}\n[providers.m]\nkind = \"vllm\"\nbase_url = \"{}/v1\"\n[models.x]\nprovider = \"m\"\n",
            mock.url()
        ),
    )
    .unwrap();
    let child = common::serve(&cfg, &dir, &[]);
    (child, port)
}

/// Sends a streamed chat request on a raw connection and returns everything keel sent back.
fn stream_request(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let body = r#"{"model":"x","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    write!(s, "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len()).unwrap();
    let mut rest = String::new();
    let _ = s.read_to_string(&mut rest);
    rest
}

/// SIGTERM stops accepting new connections but lets a stream in flight finish with `[DONE]`.
#[tokio::test]
async fn sigterm_finishes_the_stream_in_flight() {
    let mock = MockUpstream::start().await.unwrap();
    // A slow stream: eight words, 150 ms apart.
    mock.enqueue(Reply::text("a b c d e f g h").chunk_delay(Duration::from_millis(150)));
    let (mut child, port) = start_keel(&mock, "");
    let result = tokio::task::spawn_blocking(move || stream_request(port));
    // Wait until the upstream has the request, so the stream is in flight, then ask keel to stop.
    wait_until("the upstream has the request", || mock.attempt_count() > 0).await;
    let kill = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let body = result.await.unwrap();
    assert!(body.contains("data: [DONE]"), "the stream in flight completes: {body}");
    assert!(body.contains("\"h\""), "every word arrives: {body}");
    let status = child.wait().unwrap();
    assert!(status.success(), "keel exits cleanly after draining: {status:?}");
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "no longer accepting");
}

/// `GET path` on a raw connection: the whole response.
fn get(port: u16, path: &str) -> String {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return String::new() };
    write!(s, "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").unwrap();
    let mut rest = String::new();
    let _ = s.read_to_string(&mut rest);
    rest
}

/// With `shutdown_delay_ms`, SIGTERM first turns readiness off while keel still accepts and answers new
/// requests (a load balancer needs a few probe periods to stop sending), and only then closes the listener.
#[tokio::test]
async fn sigterm_turns_readiness_off_first_and_keeps_serving_during_the_delay() {
    let mock = MockUpstream::start().await.unwrap();
    mock.enqueue(Reply::text("still serving"));
    let (mut child, port) = start_keel(&mock, "shutdown_delay_ms = 5000");
    let ready = get(port, "/ready");
    assert!(ready.starts_with("HTTP/1.1 200") && ready.contains("\"ready\""), "{ready}");
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    wait_until("/ready answers 503", || get(port, "/ready").starts_with("HTTP/1.1 503")).await;
    assert!(get(port, "/ready").contains("\"draining\""));
    assert!(get(port, "/health").starts_with("HTTP/1.1 200"), "still alive while draining");
    let body = tokio::task::spawn_blocking(move || stream_request(port)).await.unwrap();
    assert!(body.starts_with("HTTP/1.1 200") && body.contains("data: [DONE]"), "a new request is served: {body}");
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
    assert!(status.success(), "{status:?}");
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "no longer accepting after the delay");
}

/// A stream that never ends cannot hold keel up for longer than `shutdown_grace_ms`: at the deadline it ends
/// with an explicit error event (not a cut connection), and its log row is written before keel exits.
#[tokio::test]
async fn sigterm_ends_a_stalled_stream_with_an_error_event_and_logs_it() {
    let mock = MockUpstream::start().await.unwrap();
    mock.enqueue(Reply::text("a b c").fault(keel_testkit::Fault::StallAfterChunks(2)));
    let (mut child, port) = start_keel(&mock, "shutdown_grace_ms = 300");
    let result = tokio::task::spawn_blocking(move || stream_request(port));
    wait_until("the upstream has the request", || mock.attempt_count() > 0).await;
    let started = std::time::Instant::now();
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() >= Duration::from_millis(300), "the grace period was given");
    let body = result.await.unwrap();
    assert!(!body.contains("[DONE]"), "a stalled stream is not completed: {body}");
    assert!(body.contains("\"code\":\"shutting_down\""), "it ends with an explicit error event: {body}");
    // The row was written before keel exited, with what was delivered.
    let url = format!("sqlite://{}/keel.db", data_dir(port).display());
    let store = keel_store::open(&url).await.unwrap();
    let rows = keel_store::LogStore::query(&*store, &keel_store::Query::default()).await.unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].outcome, keel_store::Outcome::Shutdown);
    assert_eq!(rows[0].error_class.as_deref(), Some("shutdown"));
    assert!(rows[0].tokens_out.is_some_and(|n| n > 0), "what was delivered is counted: {:?}", rows[0]);
}

#[test]
fn keel_logs_reads_the_store_filtered_newest_last() {
    let dir = std::env::temp_dir().join(format!("keel-logs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}/keel.db", dir.display());
    let now = keel_store::now_ms();
    let row = |i: i64, model: &str, status: u16| keel_store::Record {
        id: format!("req-{i}"),
        client_request_id: None,
        ts_ms: now - 60_000 + i,
        key_id: None,
        tenant: None,
        api: "openai".into(),
        endpoint: "chat".into(),
        model_requested: Some(model.into()),
        model_served: Some(format!("p/{model}")),
        status,
        outcome: if status == 200 { keel_store::Outcome::Ok } else { keel_store::Outcome::Error },
        error_class: (status != 200).then(|| "rate_limited".into()),
        stream: false,
        attempts: Vec::new(),
        ttft_ms: None,
        latency_ms: 12.0,
        tokens_in: Some(3),
        tokens_out: Some(4),
        tokens_cached: Some(0),
        cost_usd: Some(0.5),
        cache: None,
        request_body: None,
        response_body: None,
        metadata: serde_json::json!({}),
        template: None,
        template_version: None,
        routing: None,
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let store = keel_store::open(&url).await.unwrap();
        let rows = vec![row(1, "fast", 200), row(2, "smart", 429), row(3, "fast", 200), row(4, "fast", 500)];
        store.insert(&rows).await.unwrap();
    });
    let cfg = dir.join("keel.toml");
    std::fs::write(&cfg, format!("[store]\nurl = \"{url}\"\n")).unwrap();
    let out = Command::new(KEEL)
        .args(["logs", "--json", "--model", "fast", "--since", "10m", "--limit", "2", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ids: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["req-3", "req-4"], "the two newest `fast` rows, oldest first");
    let table = Command::new(KEEL).args(["logs", "--status", "429", "--config"]).arg(&cfg).output().unwrap();
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(text.contains("req-2") && text.contains("error:rate_limited") && !text.contains("req-1"), "{text}");
    let bad = Command::new(KEEL).args(["logs", "--since", "yesterday", "--config"]).arg(&cfg).output().unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("expected a duration"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn keel_keys_creates_lists_and_revokes() {
    let dir = std::env::temp_dir().join(format!("keel-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("keel.toml");
    std::fs::write(&cfg, format!("[store]\nurl = \"sqlite://{}/keel.db\"\n", dir.display())).unwrap();
    let run = |args: &[&str]| Command::new(KEEL).arg("keys").args(args).arg("--config").arg(&cfg).output().unwrap();
    let out = run(&["create", "--name", "ci", "--models", "fast,smart", "--daily-usd", "2.5", "--rpm", "60", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let key: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let secret = key["key"].as_str().unwrap();
    assert!(secret.starts_with("sk-keel-"));
    assert_eq!(key["models"], serde_json::json!(["fast", "smart"]));
    let list = String::from_utf8(run(&["list"]).stdout).unwrap();
    let id = key["id"].as_str().unwrap();
    assert!(list.contains(id) && list.contains("live") && list.contains("2.50") && !list.contains(secret), "{list}");
    assert!(run(&["revoke", id]).status.success());
    assert!(String::from_utf8(run(&["list"]).stdout).unwrap().contains("revoked"));
    assert!(!run(&["revoke", id]).status.success(), "revoking twice fails");
    let bad = run(&["create", "--name", "x", "--rpm", "0"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("rpm"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// With `[telemetry] otlp_endpoint`, each request becomes a span exported over OTLP/HTTP (protobuf) to
/// `/v1/traces`; a stand-in collector records what arrives. SIGTERM flushes the batch.
#[tokio::test]
async fn requests_are_exported_as_otlp_spans() {
    let mock = MockUpstream::start().await.unwrap();
    mock.enqueue(Reply::text("traced answer"));
    let collector = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let collector_url = format!("http://{}", collector.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel::<(String, Vec<u8>)>();
    std::thread::spawn(move || {
        for conn in collector.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line == "\r\n" || line.is_empty() {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let _ =
                conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n");
            let _ = tx.send((request_line, body));
        }
    });
    let extra = format!(
        "[telemetry]\notlp_endpoint = \"{collector_url}\"\nservice_name = \"keel-under-test\"\n[log]\nenabled = false\n"
    );
    let (mut child, port) = start_keel(&mock, &extra);
    let answer = tokio::task::spawn_blocking(move || stream_request(port)).await.unwrap();
    assert!(answer.contains("[DONE]"), "{answer}");
    let id = answer
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .map(|v| v.trim().to_string())
        .expect("x-request-id");
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    assert!(child.wait().unwrap().success());
    let (line, body) = rx.recv_timeout(Duration::from_secs(30)).expect("no export reached the collector");
    assert!(line.starts_with("POST /v1/traces "), "{line}");
    let has = |needle: &str| body.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(has("keel-under-test"), "the service name is in the resource");
    assert!(has(&id), "the request span carries the request id");
    assert!(has("POST /v1/chat/completions") && has("gen_ai.request.model"), "span name and attributes");
}

/// An operator reading the log or managing keys has no provider keys in the environment, and needs none.
#[test]
fn logs_and_keys_need_no_provider_keys() {
    let dir = std::env::temp_dir().join(format!("keel-cli-nokeys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("keel.toml");
    std::fs::write(
        &cfg,
        format!(
            "[store]\nurl = \"sqlite://{}/keel.db\"\n[providers.openai]\napi_key_env = \"OPENAI_API_KEY\"\n[models.m]\nprovider = \"openai\"\n",
            dir.display()
        ),
    )
    .unwrap();
    for args in [&["logs", "--config"][..], &["keys", "list", "--config"][..]] {
        let out = Command::new(KEEL).args(args).arg(&cfg).env_remove("OPENAI_API_KEY").output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    // `keel serve` does need them.
    let out = Command::new(KEEL).args(["config", "check"]).arg(&cfg).env_remove("OPENAI_API_KEY").output().unwrap();
    assert!(!out.status.success());
}

#[test]
fn config_check_gives_line_column_and_path_of_every_type_error() {
    let dir = std::env::temp_dir().join(format!("keel-cli-types-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(&file, "[server]\nlisten = 8080\nmax_body_bytes = \"big\"\n").unwrap();
    let out = Command::new(KEEL).args(["config", "check"]).arg(&file).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("2 problem(s)"), "{err}");
    assert!(
        err.contains("server.listen: invalid type: integer `8080`, expected a string (at line 2, column 1)"),
        "{err}"
    );
    assert!(err.contains("server.max_body_bytes: invalid type: string \"big\""), "{err}");
}

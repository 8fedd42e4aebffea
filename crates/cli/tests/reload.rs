//! Configuration reload on a running `keel serve`: through `POST /admin/config/reload` and SIGHUP, a valid file
//! serves from the next request on, an invalid one or one that needs a restart changes nothing, and a request
//! in flight finishes on the version it started on.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use keel_testkit::{MockUpstream, Reply};

/// A configuration with two upstreams, `a` and `b`, model `x` served by `x_on`, and `extra` appended.
fn config(port: u16, a: &MockUpstream, b: &MockUpstream, x_on: &str, extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\n[auth]\nopen_admin_on_loopback = true\n\
         [providers.a]\nkind = \"vllm\"\nbase_url = \"{}/v1\"\n[providers.b]\nkind = \"vllm\"\nbase_url = \"{}/v1\"\n\
         [models.x]\nprovider = \"{x_on}\"\n{extra}\n",
        a.url(),
        b.url()
    )
}

struct Keel {
    child: Child,
    port: u16,
    file: PathBuf,
}

impl Drop for Keel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Starts `keel serve --config FILE` with `text` (a function of the port) in a directory of its own.
fn start(text: impl Fn(u16) -> String) -> Keel {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("keel-reload-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    start_on(port, &dir, &text(port))
}

/// Starts `keel serve` on `port` with the configuration `text` written to `dir/keel.toml` (its store in `dir`).
fn start_on(port: u16, dir: &Path, text: &str) -> Keel {
    let file = dir.join("keel.toml");
    std::fs::write(&file, text).unwrap();
    let child = common::serve(&file, dir, &[]);
    Keel { child, port, file }
}

fn write(file: &Path, text: &str) {
    // Written whole, then renamed: keel never reads a half-written file (as an editor or a deploy tool does).
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, file).unwrap();
}

async fn chat(port: u16, model: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
        .json(&serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap()
}

fn version_of(resp: &reqwest::Response) -> String {
    resp.headers().get("x-keel-config-version").expect("every answer names its config version").to_str().unwrap().into()
}

async fn served_version(port: u16) -> String {
    let v: serde_json::Value =
        reqwest::get(format!("http://127.0.0.1:{port}/admin/config")).await.unwrap().json().await.unwrap();
    v["config"]["version"].as_str().unwrap().to_string()
}

async fn reload(port: u16) -> (u16, serde_json::Value) {
    let resp =
        reqwest::Client::new().post(format!("http://127.0.0.1:{port}/admin/config/reload")).send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

#[tokio::test]
async fn a_valid_file_serves_from_the_next_request_and_a_refused_one_changes_nothing() {
    let (a, b) = (MockUpstream::start().await.unwrap(), MockUpstream::start().await.unwrap());
    let keel = start(|port| config(port, &a, &b, "a", ""));
    let port = keel.port;

    let first = chat(port, "x").await;
    assert_eq!(first.status(), 200);
    let v1 = version_of(&first);
    assert_eq!(served_version(port).await, v1);
    assert_eq!((a.attempt_count(), b.attempt_count()), (1, 0));

    // Reloading an unchanged file changes nothing.
    let (status, body) = reload(port).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reloaded"]["version"], v1);
    assert_eq!(body["reloaded"]["changed"], serde_json::json!([]));

    // `x` moves to `b`, and a new alias `y` appears.
    write(&keel.file, &config(port, &a, &b, "b", "[models.y]\nprovider = \"a\"\n"));
    let (status, body) = reload(port).await;
    assert_eq!(status, 200, "{body}");
    let v2 = body["reloaded"]["version"].as_str().unwrap().to_string();
    assert_ne!(v2, v1);
    assert_eq!(body["reloaded"]["previous"], v1);
    assert_eq!(body["reloaded"]["changed"], serde_json::json!(["models.x", "models.y"]));
    let second = chat(port, "x").await;
    assert_eq!(second.status(), 200);
    assert_eq!(version_of(&second), v2);
    assert_eq!((a.attempt_count(), b.attempt_count()), (1, 1), "x is served by b from the next request on");
    assert_eq!(chat(port, "y").await.status(), 200, "the new alias serves");
    assert_eq!(a.attempt_count(), 2);

    // An invalid file is refused with every problem, and the version in force keeps serving.
    write(&keel.file, &config(port, &a, &b, "nowhere", ""));
    let (status, body) = reload(port).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "config_invalid");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("models.x.provider: unknown provider \"nowhere\""), "{message}");
    // A change only a restart can make is refused too, and says what it is.
    write(&keel.file, &config(port, &a, &b, "a", "").replace("[auth]", "[log]\nenabled = false\n[auth]"));
    let (status, body) = reload(port).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "restart_required");
    assert!(body["error"]["message"].as_str().unwrap().contains("[log]"), "{body}");
    let third = chat(port, "x").await;
    assert_eq!(version_of(&third), v2, "refused reloads left the version in force");
    assert_eq!(b.attempt_count(), 2);
    assert_eq!(chat(port, "y").await.status(), 200);

    // SIGHUP reloads too.
    write(&keel.file, &config(port, &a, &b, "a", ""));
    assert!(Command::new("kill").args(["-HUP", &keel.child.id().to_string()]).status().unwrap().success());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while served_version(port).await == v2 {
        assert!(std::time::Instant::now() < deadline, "SIGHUP did not reload within 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = a.attempt_count();
    let fourth = chat(port, "x").await;
    assert_ne!(version_of(&fourth), v2);
    assert_eq!(a.attempt_count(), before + 1, "x is back on a after SIGHUP");
    assert_eq!(chat(port, "y").await.status(), 404, "the alias the file no longer has is gone");
}

/// A stream that started before a reload finishes on its version; the next request uses the new one.
#[tokio::test]
async fn a_stream_in_flight_finishes_on_the_version_it_started_on() {
    let (a, b) = (MockUpstream::start().await.unwrap(), MockUpstream::start().await.unwrap());
    a.enqueue(Reply::text("one two three four five six").chunk_delay(Duration::from_millis(100)));
    let keel = start(|port| config(port, &a, &b, "a", ""));
    let port = keel.port;
    let stream = tokio::spawn(async move {
        let resp = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
            .json(&serde_json::json!({"model": "x", "stream": true, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        let version = version_of(&resp);
        (version, resp.text().await.unwrap())
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while a.attempt_count() == 0 {
        assert!(std::time::Instant::now() < deadline, "the stream never reached the upstream");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    write(&keel.file, &config(port, &a, &b, "b", ""));
    let (status, body) = reload(port).await;
    assert_eq!(status, 200, "{body}");
    let v2 = body["reloaded"]["version"].as_str().unwrap().to_string();
    let (v1, text) = stream.await.unwrap();
    assert_ne!(v1, v2);
    assert!(text.contains("\"six\""), "every word arrives: {text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "the stream completes: {text}");
    let next = chat(port, "x").await;
    assert_eq!(version_of(&next), v2);
    assert_eq!((a.attempt_count(), b.attempt_count()), (1, 1));
}

/// With `[reload] gate`, a change to what a suite runs is evaluated against the new version before it serves:
/// a failing gate keeps the version in force serving, a change no suite concerns runs no suite, and a passing
/// gate lets the change through.
#[tokio::test]
async fn a_change_that_fails_its_evaluation_gate_never_takes_traffic() {
    let [a, b, c] = [
        MockUpstream::start().await.unwrap(),
        MockUpstream::start().await.unwrap(),
        MockUpstream::start().await.unwrap(),
    ];
    a.set_default(Reply::text("Paris is the capital of France."));
    b.set_default(Reply::text("Lyon, I think."));
    c.set_default(Reply::text("Paris."));
    let gated = |port: u16, x_on: &str, y_on: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[auth]\nopen_admin_on_loopback = true\n[reload]\ngate = [\"capital.toml\"]\n\
             [providers.a]\nkind = \"vllm\"\nbase_url = \"{}/v1\"\n[providers.b]\nkind = \"vllm\"\nbase_url = \"{}/v1\"\n\
             [providers.c]\nkind = \"vllm\"\nbase_url = \"{}/v1\"\n\
             [models.x]\nprovider = \"{x_on}\"\n[models.y]\nprovider = \"{y_on}\"\n",
            a.url(),
            b.url(),
            c.url()
        )
    };
    // The suite sits beside the configuration file (gate paths are relative to it); `start` makes the directory.
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("keel-reload-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases: String =
        (0..3).map(|i| format!("{{\"id\": {i}, \"q\": \"What is the capital of France? ({i})\"}}\n")).collect();
    std::fs::write(dir.join("capital.jsonl"), cases).unwrap();
    std::fs::write(
        dir.join("capital.toml"),
        "name = \"capital\"\ndataset = \"capital.jsonl\"\nmodel = \"x\"\nprompt = \"{{ q }}\"\nconcurrency = 1\n\
         [[checks]]\ntype = \"contains\"\nexpected = \"Paris\"\n[gate]\nmin_pass_rate = 1.0\n",
    )
    .unwrap();
    let keel = start_on(port, &dir, &gated(port, "a", "a"));
    let v1 = version_of(&chat(port, "x").await);
    assert_eq!(a.attempt_count(), 1);

    // x moves to b, which answers wrong: the suite runs against the new version (on b) and fails its gate.
    write(&keel.file, &gated(port, "b", "a"));
    let (status, body) = reload(port).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "eval_gate_failed");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("capital (run "), "the failure names the suite and its stored run: {message}");
    assert_eq!(b.attempt_count(), 3, "every case ran against the new version");
    let served = chat(port, "x").await;
    assert_eq!(version_of(&served), v1, "the version in force keeps serving");
    assert_eq!((a.attempt_count(), b.attempt_count()), (2, 3));

    // A change no suite runs (y) is not evaluated.
    write(&keel.file, &gated(port, "a", "b"));
    let (status, body) = reload(port).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reloaded"]["changed"], serde_json::json!(["models.y"]));
    assert_eq!(b.attempt_count(), 3, "no suite ran");

    // x moves to c, which answers right: the gate passes and c serves.
    write(&keel.file, &gated(port, "c", "b"));
    let (status, body) = reload(port).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(c.attempt_count(), 3, "the suite ran against the new version first");
    let after = chat(port, "x").await;
    assert_eq!(version_of(&after), body["reloaded"]["version"].as_str().unwrap());
    assert_eq!(c.attempt_count(), 4);
}

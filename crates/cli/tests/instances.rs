//! Several `keel serve` instances on one store and one Redis: what one instance does, the others see.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::Child;
use std::time::Duration;

use keel_testkit::MockUpstream;

const ADMIN: &str = "admin-for-instances";

struct Instance {
    child: Child,
    url: String,
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts an instance on a free port, sharing `dir`'s store and the machine's Redis with the others.
fn instance(dir: &Path, mock: &MockUpstream, extra_auth: &str, extra: &str) -> Instance {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let file = dir.join(format!("keel-{port}.toml"));
    std::fs::write(
        &file,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[store]\nurl = \"sqlite://{}/keel.db\"\n\
             [auth]\nenabled = true\nredis = \"redis://127.0.0.1:6379\"\n{extra_auth}\n\
             [providers.m]\nkind = \"vllm\"\nbase_url = \"{}/v1\"\n[models.x]\nprovider = \"m\"\n{extra}\n",
            dir.display(),
            mock.url()
        ),
    )
    .unwrap();
    let child = common::serve(&file, dir, &[("KEEL_ADMIN_KEY", ADMIN)]);
    Instance { child, url: format!("http://127.0.0.1:{port}") }
}

async fn chat(url: &str, key: &str) -> u16 {
    reqwest::Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&serde_json::json!({"model": "x", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// A key revoked through one instance is refused by another at once, although that one trusts a verified key
/// for ten minutes: the revocation reaches it through Redis, not through its cache expiring.
#[tokio::test]
async fn a_key_revoked_on_one_instance_is_refused_by_another_within_moments() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = std::env::temp_dir().join(format!("keel-instances-{}-{}", std::process::id(), keel_store::now_ms()));
    std::fs::create_dir_all(&dir).unwrap();
    let ttl = "key_cache_ttl_ms = 600000";
    let a = instance(&dir, &mock, ttl, "");
    let b = instance(&dir, &mock, ttl, "");
    let http = reqwest::Client::new();
    let created: serde_json::Value = http
        .post(format!("{}/admin/keys", a.url))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({"name": "shared"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (id, key) = (created["id"].as_str().unwrap(), created["key"].as_str().unwrap());
    assert_eq!(chat(&b.url, key).await, 200, "b verifies the key and caches it");
    assert_eq!(chat(&a.url, key).await, 200);
    let revoked = http.delete(format!("{}/admin/keys/{id}", a.url)).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(revoked.status(), 200);
    assert_eq!(chat(&a.url, key).await, 401, "the revoking instance refuses it at once");
    // Ten minutes of cache on b: only the published revocation can make it refuse the key within 30 s.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while chat(&b.url, key).await == 200 {
        assert!(std::time::Instant::now() < deadline, "b still accepts the revoked key after 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(chat(&b.url, key).await, 401);
    drop((a, b));
    let _ = std::fs::remove_dir_all(&dir);
}

/// An answer cached on one instance is a semantic hit on another as soon as it is written: the entry reaches
/// the other instance's index through Redis (without it, only at that instance's next start).
// Multi-threaded: the mock answers the instances' start-up embedding while this thread waits for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_semantic_cache_entry_written_on_one_instance_is_found_by_another() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = std::env::temp_dir().join(format!("keel-semantic-{}-{}", std::process::id(), keel_store::now_ms()));
    std::fs::create_dir_all(&dir).unwrap();
    let semantic = "cache = { mode = \"read-write\", semantic = true, threshold = 0.9 }\n\
                    [models.emb]\nprovider = \"m\"\nmodel = \"up-emb\"\n[cache.semantic]\nmodel = \"emb\"\n";
    let a = instance(&dir, &mock, "", semantic);
    let b = instance(&dir, &mock, "", semantic);
    // A question no other run of this test asked (the channel is shared by every keel on this Redis).
    let question = format!("Which river flows through the city numbered {}?", keel_store::now_ms());
    let ask = |url: String, read_only: bool| {
        let question = question.clone();
        async move {
            let mut req = reqwest::Client::new()
                .post(format!("{url}/v1/chat/completions"))
                .bearer_auth(ADMIN)
                .json(&serde_json::json!({"model": "x", "messages": [{"role": "user", "content": question}]}));
            if read_only {
                req = req.header("x-keel-cache", "read");
            }
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 200);
            resp.headers().get("x-keel-cache").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default()
        }
    };
    assert_eq!(ask(b.url.clone(), true).await, "miss", "nothing is cached yet");
    assert_eq!(ask(a.url.clone(), false).await, "miss");
    // b only reads (a miss of its own would store its own answer): the entry a wrote must reach it.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let outcome = ask(b.url.clone(), true).await;
        if outcome == "semantic_hit" {
            break;
        }
        assert_eq!(outcome, "miss");
        assert!(std::time::Instant::now() < deadline, "a's entry did not reach b within 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop((a, b));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A circuit one instance's failures open is open on another instance within moments, although that one saw
/// no failure: its next request is refused without reaching the failing upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_circuit_one_instance_opens_is_open_on_another_within_moments() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set_default(keel_testkit::Reply::error(503, "server_error", "overloaded"));
    let dir = std::env::temp_dir().join(format!("keel-circuits-{}-{}", std::process::id(), keel_store::now_ms()));
    std::fs::create_dir_all(&dir).unwrap();
    // A provider name no other keel on this Redis uses (circuits are shared by target).
    let provider = format!("flaky{}", keel_store::now_ms());
    let extra = format!(
        "[providers.{provider}]\nkind = \"vllm\"\nbase_url = \"{}/v1\"\n[models.y]\nprovider = \"{provider}\"\n\
         [reliability]\nmax_attempts = 1\n[reliability.circuit]\nconsecutive_failures = 2\nopen_ms = 600000\n",
        mock.url()
    );
    let a = instance(&dir, &mock, "", &extra);
    let b = instance(&dir, &mock, "", &extra);
    let target = format!("{provider}/y");
    let state = |url: String| {
        let target = target.clone();
        async move {
            let body: serde_json::Value = reqwest::Client::new()
                .get(format!("{url}/admin/circuits"))
                .bearer_auth(ADMIN)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let circuits = body["circuits"].as_array().cloned().unwrap_or_default();
            let found = circuits.into_iter().find(|c| c["target"] == target.as_str());
            found.map(|c| c["state"].as_str().unwrap_or_default().to_string()).unwrap_or_default()
        }
    };
    let ask = |url: String| async move {
        reqwest::Client::new()
            .post(format!("{url}/v1/chat/completions"))
            .bearer_auth(ADMIN)
            .json(&serde_json::json!({"model": "y", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(state(b.url.clone()).await, "closed");
    for _ in 0..2 {
        assert_ne!(ask(a.url.clone()).await, 200);
    }
    assert_eq!(state(a.url.clone()).await, "open", "two failures open a's circuit");
    let opened = std::time::Instant::now();
    let deadline = opened + Duration::from_secs(30);
    while state(b.url.clone()).await != "open" {
        assert!(std::time::Instant::now() < deadline, "a's open circuit did not reach b within 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("the open circuit reached the other instance in {:?}", opened.elapsed());
    let before = mock.attempt_count();
    assert_ne!(ask(b.url.clone()).await, 200);
    assert_eq!(mock.attempt_count(), before, "b sends nothing to a target whose circuit a opened");
}

//! keel under a burst it cannot serve at once: 2,000 concurrent streamed requests against an upstream that takes
//! 2 s to answer. Every client gets an answer or a clean refusal (503 in the API's format, with `Retry-After`),
//! keel's memory stays under a stated bound (docs/benchmarks.md), the next request after the burst is served
//! as usual, and every refusal is counted in /metrics and written to the request log.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;
use std::time::Duration;

use keel_testkit::{MockUpstream, Reply};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CLIENTS: usize = 2_000;
/// The peak resident memory keel may reach during the burst (it idles at about 30 MiB without local models).
const RSS_BOUND_MIB: u64 = 256;

/// How one client fared.
#[derive(Debug, PartialEq, Eq)]
enum Fate {
    Served,
    Refused,
    Other(String),
}

async fn client(port: u16) -> Fate {
    let body = r#"{"model":"x","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let run = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(request.as_bytes()).await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&out).into_owned())
    };
    let answer = match tokio::time::timeout(Duration::from_secs(120), run).await {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => return Fate::Other(format!("io: {e}")),
        Err(_) => return Fate::Other("no answer within 120 s".into()),
    };
    if answer.starts_with("HTTP/1.1 200") && answer.contains("data: [DONE]") {
        Fate::Served
    } else if answer.starts_with("HTTP/1.1 503")
        && answer.to_ascii_lowercase().contains("retry-after: 1")
        && answer.contains("\"overloaded_error\"")
    {
        Fate::Refused
    } else {
        Fate::Other(answer.chars().take(300).collect())
    }
}

/// A GET over a fresh connection; the whole response.
async fn get(port: u16, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// The sum of a metric's samples whose labels include every one of `labels`.
fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with(['{', ' '])))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// keel's peak resident memory so far, in MiB (Linux).
fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib / 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_2000_clients_gets_answers_or_clean_refusals_in_bounded_memory() {
    // Two descriptors per client on this side (client and mock upstream ends).
    rlimit::increase_nofile_limit(u64::MAX).unwrap();
    let mock = MockUpstream::start().await.unwrap();
    mock.set_default(Reply::text("a slow answer").delay_before_headers(Duration::from_secs(2)));
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = std::env::temp_dir().join(format!("keel-overload-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("keel.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[providers.m]\nkind = \"vllm\"\nbase_url = \"{}/v1\"\n[models.x]\nprovider = \"m\"\n",
            mock.url()
        ),
    )
    .unwrap();
    let mut child = common::serve(&cfg, &dir, &[]);

    let burst: Vec<_> = (0..CLIENTS).map(|_| tokio::spawn(client(port))).collect();
    let mut fates = Vec::with_capacity(CLIENTS);
    for c in burst {
        fates.push(c.await.unwrap());
    }
    let peak = peak_rss_mib(child.id());
    // Right after the burst, keel serves as usual.
    let after = client(port).await;
    let metrics = get(port, "/metrics").await;
    // A graceful stop drains the request log before keel exits.
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let exited = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
    assert!(exited.success(), "{exited:?}");

    let served = fates.iter().filter(|f| **f == Fate::Served).count();
    let refused = fates.iter().filter(|f| **f == Fate::Refused).count();
    let others: Vec<_> = fates.iter().filter_map(|f| if let Fate::Other(s) = f { Some(s) } else { None }).collect();
    eprintln!("burst of {CLIENTS}: {served} served, {refused} refused, peak RSS {peak} MiB");
    assert!(
        others.is_empty(),
        "{} clients got neither an answer nor a clean refusal, e.g. {:?}",
        others.len(),
        others[0]
    );
    assert!(served >= 64, "keel served {served} of the burst");
    assert!(refused > 0, "a burst beyond capacity is shed");
    assert!(peak < RSS_BOUND_MIB, "peak RSS {peak} MiB is over the bound of {RSS_BOUND_MIB} MiB");
    assert_eq!(after, Fate::Served, "the request after the burst is served");

    // Every refusal is counted: by admission control (instance or alias), or by the connection limit.
    let admission = metric_sum(&metrics, "keel_admission_decisions_total", &["outcome=\"refused\""]);
    let connections = metric_sum(&metrics, "keel_connections_refused_total", &[]);
    assert_eq!(admission + connections, refused as f64, "refusals in /metrics:\n{metrics}");
    assert_eq!(
        metric_sum(&metrics, "keel_requests_total", &["status=\"503\""]),
        admission,
        "the requests counter agrees with admission control"
    );
    // ... and every request is in the log: each refusal and each answer, with its status.
    let url = format!("sqlite://{}/keel.db", dir.display());
    let store = keel_store::open(&url).await.unwrap();
    let count = |status: u16| {
        let store = store.clone();
        async move {
            let q = keel_store::Query { status: Some(status), limit: Some(10_000), ..Default::default() };
            keel_store::LogStore::query(&*store, &q).await.unwrap().len()
        }
    };
    assert_eq!(count(503).await as f64, admission, "every refusal of admission control is logged");
    assert_eq!(count(200).await, served + 1, "every answer is logged");
}

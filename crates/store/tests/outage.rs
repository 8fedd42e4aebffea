//! The request log through a PostgreSQL outage: keel talks to the real server on 127.0.0.1:5432 through a TCP
//! proxy the test can cut (every open connection dropped, new ones refused) and restore. While the database is
//! gone the queue holds rows within its bound, then its policy applies (`wait`: writers wait for room); an
//! answer acknowledged as committed is in the database; when the database is back, every row is written once.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_store::{Acknowledge, LogWriter, OnFull, PgStore, Query, Record, Store, WriterConfig};
use tokio::net::{TcpListener, TcpStream};

/// A TCP proxy to PostgreSQL that can be cut.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (u, c) = (up.clone(), conns.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !u.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is refused
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect("127.0.0.1:5432").await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                c.lock().unwrap().push(task.abort_handle());
            }
        });
        Self { port, up, conns }
    }

    /// The database is gone: open connections are cut, new ones refused.
    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

fn record(i: usize) -> Record {
    Record {
        id: format!("outage-{i:04}"),
        client_request_id: None,
        ts_ms: 1_900_000_000_000 + i as i64,
        key_id: None,
        tenant: None,
        api: "openai".into(),
        endpoint: "chat".into(),
        model_requested: Some("m".into()),
        model_served: Some("p/m".into()),
        status: 200,
        outcome: keel_store::Outcome::Ok,
        error_class: None,
        stream: false,
        attempts: Vec::new(),
        ttft_ms: None,
        latency_ms: 1.0,
        tokens_in: Some(1),
        tokens_out: Some(1),
        tokens_cached: None,
        cost_usd: None,
        cache: None,
        request_body: Some("x".repeat(2000)),
        response_body: None,
        metadata: serde_json::Value::Null,
        template: None,
        template_version: None,
        routing: None,
    }
}

async fn rows(store: &dyn Store) -> Vec<Record> {
    store.query(&Query { since_ms: Some(1_900_000_000_000), limit: Some(10_000), ..Query::default() }).await.unwrap()
}

async fn until(what: &str, deadline: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_rides_out_a_postgres_outage_and_loses_nothing_acknowledged() {
    let schema = format!("keel_outage_{}", std::process::id());
    let admin = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/test").await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))).execute(&admin).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}"))).execute(&admin).await.unwrap();
    let options = |port: u16| {
        sqlx::postgres::PgConnectOptions::from_str(&format!("postgres://postgres@127.0.0.1:{port}/test"))
            .unwrap()
            .options([("search_path", schema.as_str())])
    };
    let proxy = Proxy::start().await;
    let through_proxy: Arc<dyn Store> = Arc::new(PgStore::connect_with(options(proxy.port)).await.unwrap());
    let direct: Arc<dyn Store> = Arc::new(PgStore::connect_with(options(5432)).await.unwrap());

    let config = WriterConfig {
        max_queue_bytes: 1 << 16,
        batch_max: 8,
        on_full: OnFull::Wait,
        acknowledge: Acknowledge::Committed,
        acknowledge_timeout: Duration::from_millis(300),
        ..WriterConfig::default()
    };
    let (writer, task) = LogWriter::spawn(through_proxy, config);
    let stats = writer.stats().clone();

    // Acknowledged means committed: each row is in the database the moment its write returns.
    for i in 0..20 {
        writer.write(record(i)).await;
        assert_eq!(rows(&*direct).await.len(), i + 1, "row {i} acknowledged before it was committed");
    }
    assert_eq!(stats.ack_timeouts.load(Ordering::Relaxed), 0);

    // The database goes away under a stream of writes.
    proxy.cut();
    let mut writers = Vec::new();
    for i in 20..80 {
        let writer = writer.clone();
        writers.push(tokio::spawn(async move { writer.write(record(i)).await }));
    }
    until("failed writes and a full queue", Duration::from_secs(60), || {
        stats.write_errors.load(Ordering::Relaxed) > 0 && stats.waited.load(Ordering::Relaxed) > 0
    })
    .await;
    let queued = stats.queued_bytes.load(Ordering::Relaxed);
    assert!(queued <= 1 << 16, "the queue stays within its bound: {queued} bytes");
    until("answers released after the acknowledgement timeout", Duration::from_secs(60), || {
        stats.ack_timeouts.load(Ordering::Relaxed) > 0
    })
    .await;
    assert!(writers.iter().any(|w| !w.is_finished()), "past the bound, writers wait for room (policy `wait`)");
    assert_eq!(rows(&*direct).await.len(), 20, "nothing reaches the database while it is cut off");

    // Back: everything queued or waiting is written, each row exactly once.
    proxy.restore();
    for w in writers {
        tokio::time::timeout(Duration::from_secs(90), w).await.expect("a writer still waits after the outage").unwrap();
    }
    drop(writer);
    task.close().await;
    let mut ids: Vec<String> = rows(&*direct).await.into_iter().map(|r| r.id).collect();
    ids.sort();
    let expected: Vec<String> = (0..80).map(|i| format!("outage-{i:04}")).collect();
    assert_eq!(ids, expected, "every row, once");
    assert_eq!(stats.dropped.load(Ordering::Relaxed), 0);
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE"))).execute(&admin).await.unwrap();
}

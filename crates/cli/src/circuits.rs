//! Circuit-breaker state shared by every instance on one Redis: a circuit one instance opens (from its own
//! counts) or closes (its probe succeeded) is published on `PREFIX:circuits` and applied by every other
//! instance at once, and an open circuit is also kept as a key (`PREFIX:circuit:TARGET`, expiring when the
//! circuit's cool-down ends) so that an instance that starts or resubscribes learns what is open now.
//!
//! What is shared is the state, not the counts: each instance counts its own failures (no Redis call per
//! request), the first whose counts trip opens the circuit everywhere. Redis pub/sub delivers at most once;
//! what an instance misses while disconnected it reads back from the keys when it subscribes again, and a
//! missed closing only means its circuit probes on its own after the cool-down. Redis unreachable: every
//! instance's breakers go on working alone.

use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use keel_pipeline::{Breakers, Change, Transition};

/// The most time one Redis call may take (a breaker's own decision never waits on it).
const TIMEOUT: Duration = Duration::from_secs(2);

#[derive(serde::Serialize, serde::Deserialize)]
struct Message {
    /// The instance that sent it (its own messages come back to it and are skipped).
    origin: u64,
    target: String,
    /// Open for this much longer; absent: closed.
    open_for_ms: Option<u64>,
}

/// Starts sharing `breakers`'s transitions over the Redis at `url`: one task publishes this instance's, one
/// applies the others'. Both end when the process does.
pub(crate) async fn share(url: &str, prefix: &str, breakers: &Breakers) -> anyhow::Result<()> {
    let client = redis::Client::open(url)?;
    let config = redis::aio::ConnectionManagerConfig::new().set_response_timeout(Some(TIMEOUT));
    let conn = redis::aio::ConnectionManager::new_with_config(client.clone(), config).await?;
    let Some(mut transitions) = breakers.share() else { return Ok(()) };
    let origin = origin();
    let channel = format!("{prefix}:circuits");
    let key = {
        let prefix = prefix.to_string();
        move |target: &str| format!("{prefix}:circuit:{target}")
    };
    {
        let (channel, key) = (channel.clone(), key.clone());
        tokio::spawn(async move {
            while let Some(t) = transitions.recv().await {
                let mut conn = conn.clone();
                let k = key(&t.target);
                match tokio::time::timeout(TIMEOUT, publish(&mut conn, &channel, &k, origin, &t)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, target = t.target, "sharing a circuit's state failed"),
                    Err(_) => tracing::warn!(target = t.target, "sharing a circuit's state timed out"),
                }
            }
        });
    }
    let breakers = breakers.clone();
    tokio::spawn(async move {
        loop {
            let subscribed = async {
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(&channel).await?;
                Ok::<_, redis::RedisError>(pubsub)
            };
            match subscribed.await {
                Ok(pubsub) => {
                    // Subscribed first, then read the open circuits: nothing falls between the two.
                    if let Err(e) = catch_up(&client, &breakers, &key).await {
                        tracing::warn!(error = %e, "reading the shared circuits failed");
                    }
                    let mut messages = pubsub.into_on_message();
                    while let Some(msg) = messages.next().await {
                        let Ok(payload) = msg.get_payload::<String>() else { continue };
                        match serde_json::from_str::<Message>(&payload) {
                            Ok(m) if m.origin == origin => {}
                            Ok(m) => {
                                let change = match m.open_for_ms {
                                    Some(for_ms) => Change::Opened { for_ms },
                                    None => Change::Closed,
                                };
                                tracing::info!(target = m.target, ?change, "circuit state from another instance");
                                breakers.apply(&Transition { target: m.target, change });
                            }
                            Err(e) => tracing::warn!(error = %e, "an unreadable circuit message was skipped"),
                        }
                    }
                    tracing::warn!(%channel, "circuit channel closed; subscribing again");
                }
                Err(e) => tracing::warn!(error = %e, %channel, "cannot subscribe to the circuit channel"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    Ok(())
}

async fn publish(
    conn: &mut redis::aio::ConnectionManager,
    channel: &str,
    key: &str,
    origin: u64,
    t: &Transition,
) -> anyhow::Result<()> {
    let open_for_ms = match t.change {
        Change::Opened { for_ms } => Some(for_ms),
        Change::Closed => None,
    };
    let mut pipe = redis::pipe();
    match open_for_ms {
        Some(ms) => pipe.cmd("SET").arg(key).arg(1).arg("PX").arg(ms.max(1)).ignore(),
        None => pipe.cmd("DEL").arg(key).ignore(),
    };
    let payload = serde_json::to_string(&Message { origin, target: t.target.clone(), open_for_ms })?;
    pipe.cmd("PUBLISH").arg(channel).arg(payload).ignore();
    pipe.query_async::<()>(conn).await.context("redis")?;
    Ok(())
}

/// Opens here every circuit open elsewhere now, for what is left of its cool-down.
async fn catch_up(
    client: &redis::Client,
    breakers: &Breakers,
    key: &(impl Fn(&str) -> String + Send + Sync),
) -> anyhow::Result<()> {
    let targets = breakers.targets();
    if targets.is_empty() {
        return Ok(());
    }
    let mut conn = tokio::time::timeout(TIMEOUT, client.get_multiplexed_async_connection()).await??;
    let mut pipe = redis::pipe();
    for t in &targets {
        pipe.cmd("PTTL").arg(key(t));
    }
    let left: Vec<i64> = tokio::time::timeout(TIMEOUT, pipe.query_async(&mut conn)).await??;
    for (target, ms) in targets.into_iter().zip(left) {
        if let Ok(for_ms) = u64::try_from(ms)
            && for_ms > 0
        {
            breakers.apply(&Transition { target, change: Change::Opened { for_ms } });
        }
    }
    Ok(())
}

/// A random instance id: the process id and the clock, hashed with a random key.
fn origin() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.finish()
}

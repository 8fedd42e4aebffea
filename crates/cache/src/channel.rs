//! Semantic cache entries shared as they are written: an instance that stores an entry publishes it on a Redis
//! channel, and every other instance subscribed to it adds it to its own index. Without it, an instance sees
//! the others' entries only when it starts (loading the store).
//!
//! Redis pub/sub delivers at most once: an entry published while an instance is disconnected reaches it at its
//! next start (from the store), not before; a miss, never a wrong answer.

use std::time::Duration;

use futures::StreamExt;
use keel_store::SemanticRow;

use crate::CacheError;

/// One instance's end of the channel: it publishes its entries and ignores its own messages.
#[derive(Clone)]
pub struct Channel {
    client: redis::Client,
    conn: redis::aio::ConnectionManager,
    channel: String,
    /// This instance's id in the messages (its own are not added twice).
    origin: u64,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel").field("channel", &self.channel).field("origin", &self.origin).finish()
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Message {
    origin: u64,
    row: SemanticRow,
}

/// The most time publishing one entry may take (it is stored already; a late one is only a later hit elsewhere).
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);

impl Channel {
    /// On the Redis at `url`, on the channel `PREFIX:semantic`.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, CacheError> {
        let client = redis::Client::open(url).map_err(redis_error)?;
        let config = redis::aio::ConnectionManagerConfig::new().set_response_timeout(Some(PUBLISH_TIMEOUT));
        let conn = redis::aio::ConnectionManager::new_with_config(client.clone(), config).await.map_err(redis_error)?;
        Ok(Self { client, conn, channel: format!("{prefix}:semantic"), origin: rand_origin() })
    }

    /// Tells the other instances about an entry this one stored.
    pub async fn publish(&self, row: &SemanticRow) -> Result<(), CacheError> {
        let payload = serde_json::to_string(&Message { origin: self.origin, row: row.clone() })
            .map_err(|e| CacheError::Backend(e.to_string()))?;
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(&self.channel).arg(payload);
        match tokio::time::timeout(PUBLISH_TIMEOUT, cmd.query_async::<i64>(&mut conn)).await {
            Ok(r) => r.map(drop).map_err(redis_error),
            Err(_) => Err(CacheError::Backend(format!("publishing took over {PUBLISH_TIMEOUT:?}"))),
        }
    }

    /// Hands every entry another instance publishes to `add`, until `add` says to stop (returns `false`).
    /// Reconnects after a failure, a second apart.
    pub fn listen(&self, add: impl Fn(SemanticRow) -> bool + Send + 'static) -> tokio::task::JoinHandle<()> {
        let (client, channel, origin) = (self.client.clone(), self.channel.clone(), self.origin);
        tokio::spawn(async move {
            loop {
                let subscribed = async {
                    let mut pubsub = client.get_async_pubsub().await?;
                    pubsub.subscribe(&channel).await?;
                    Ok::<_, redis::RedisError>(pubsub)
                };
                match subscribed.await {
                    Ok(pubsub) => {
                        let mut messages = pubsub.into_on_message();
                        while let Some(msg) = messages.next().await {
                            let Ok(payload) = msg.get_payload::<String>() else { continue };
                            match serde_json::from_str::<Message>(&payload) {
                                Ok(m) if m.origin == origin => {}
                                Ok(m) => {
                                    if !add(m.row) {
                                        return;
                                    }
                                }
                                Err(e) => {
                                    tracing::warn!(error = %e, "an unreadable semantic cache message was skipped")
                                }
                            }
                        }
                        tracing::warn!(%channel, "semantic cache channel closed; subscribing again");
                    }
                    Err(e) => tracing::warn!(error = %e, %channel, "cannot subscribe to the semantic cache channel"),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    }
}

fn redis_error(e: redis::RedisError) -> CacheError {
    CacheError::Backend(format!("redis: {e}"))
}

/// A random instance id (no `rand` dependency here: the clock and the process id, hashed).
fn rand_origin() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.finish()
}

//! Key revocations across instances: an instance that revokes a key publishes its id on a Redis channel, and
//! every instance subscribed to it drops the key from its verification cache at once. Without it, another
//! instance would accept the key until its cached entry expires (`Keys`'s time to live).
//!
//! Redis pub/sub delivers at most once: a message sent while an instance is disconnected is lost to it, so an
//! instance that (re)subscribes forgets its whole cache (the next request of each key reads the store once).
//! The time to live stays the bound when Redis is unreachable.

use std::sync::Weak;
use std::time::Duration;

use futures::StreamExt;

use crate::{Keys, LimitsError};

/// Publishes revocations and listens for those of other instances.
pub struct Revocations {
    client: redis::Client,
    conn: redis::aio::ConnectionManager,
    channel: String,
}

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocations").field("channel", &self.channel).finish()
    }
}

/// The most time publishing a revocation may take (the revocation itself is already in the store).
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);

impl Revocations {
    /// On the Redis at `url`, on the channel `PREFIX:revoked`.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, LimitsError> {
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new().set_response_timeout(Some(PUBLISH_TIMEOUT));
        let conn = redis::aio::ConnectionManager::new_with_config(client.clone(), config).await?;
        Ok(Self { client, conn, channel: format!("{prefix}:revoked") })
    }

    /// Tells every instance that key `id` is revoked.
    pub async fn publish(&self, id: &str) -> Result<(), LimitsError> {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(&self.channel).arg(id);
        let publish = cmd.query_async::<i64>(&mut conn);
        match tokio::time::timeout(PUBLISH_TIMEOUT, publish).await {
            Ok(r) => r.map(drop).map_err(Into::into),
            Err(_) => Err(LimitsError::Timeout(PUBLISH_TIMEOUT)),
        }
    }

    /// What listens for the revocations published on this channel (by every instance, this one included).
    pub fn listener(&self) -> Listener {
        Listener { client: self.client.clone(), channel: self.channel.clone() }
    }
}

/// Listens for revocations: see [`Listener::spawn`].
#[derive(Debug)]
pub struct Listener {
    client: redis::Client,
    channel: String,
}

impl Listener {
    /// Listens until `keys` is dropped: each revocation leaves `keys`'s cache at once. Reconnects after a
    /// failure (a second apart), forgetting the whole cache each time it subscribes.
    pub fn spawn(self, keys: Weak<Keys>) -> tokio::task::JoinHandle<()> {
        let Listener { client, channel } = self;
        tokio::spawn(async move {
            loop {
                let subscribed = async {
                    let mut pubsub = client.get_async_pubsub().await?;
                    pubsub.subscribe(&channel).await?;
                    Ok::<_, redis::RedisError>(pubsub)
                };
                match subscribed.await {
                    Ok(pubsub) => {
                        let Some(k) = keys.upgrade() else { return };
                        // What was revoked while this instance was not listening is not known: start afresh.
                        k.forget_all();
                        drop(k);
                        let mut messages = pubsub.into_on_message();
                        while let Some(msg) = messages.next().await {
                            let Some(k) = keys.upgrade() else { return };
                            match msg.get_payload::<String>() {
                                Ok(id) => k.forget(&id),
                                Err(_) => k.forget_all(),
                            }
                        }
                        tracing::warn!(%channel, "key revocation channel closed; subscribing again");
                    }
                    Err(e) => tracing::warn!(error = %e, %channel, "cannot subscribe to key revocations"),
                }
                if keys.strong_count() == 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    }
}

//! Virtual key secrets: generated from the OS's CSPRNG, stored as their SHA-256 (a 190-bit random secret needs
//! no slow hash), verified through a short-lived cache so that the request path does not query the store for
//! every request. A key revoked through this process is refused at once; revoked elsewhere (the CLI, another
//! instance), within the cache's lifetime.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_store::{KeyRecord, KeyStore};
use rand::Rng;
use sha2::{Digest, Sha256};

use crate::LimitsError;

const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// A new secret: `sk-keel-` and 32 base-62 characters.
pub fn generate_secret() -> String {
    let mut rng = rand::rngs::OsRng;
    let body: String = (0..32).map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char).collect();
    format!("sk-keel-{body}")
}

/// Hex SHA-256 of a secret.
pub fn hash_secret(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a new key may do.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    pub name: String,
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(default)]
    pub budget_daily_usd: Option<f64>,
    #[serde(default)]
    pub budget_monthly_usd: Option<f64>,
    #[serde(default)]
    pub rpm: Option<u32>,
    #[serde(default)]
    pub tpm: Option<u64>,
}

/// Why a key cannot be created: the field at fault and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct InvalidKey {
    pub field: &'static str,
    pub problem: &'static str,
}

impl NewKey {
    /// Why this key cannot be created, if it cannot.
    pub fn validate(&self) -> Result<(), InvalidKey> {
        if self.name.trim().is_empty() {
            return Err(InvalidKey { field: "name", problem: "must not be empty" });
        }
        for (field, v) in [("budget_daily_usd", self.budget_daily_usd), ("budget_monthly_usd", self.budget_monthly_usd)]
        {
            if v.is_some_and(|v| !v.is_finite() || v < 0.0) {
                return Err(InvalidKey { field, problem: "must be a non-negative number of US dollars" });
            }
        }
        for (field, zero) in [("rpm", self.rpm == Some(0)), ("tpm", self.tpm == Some(0))] {
            if zero {
                return Err(InvalidKey { field, problem: "must be greater than 0 (leave unset for no limit)" });
            }
        }
        Ok(())
    }
}

/// The most secrets each of the caches holds. Past it, expired entries go first; if all are live, the cache
/// is emptied (what follows costs a store query per secret until the cache refills, nothing more).
const CACHE_MAX: usize = 100_000;

/// Verifies secrets against the store, with a cache of known keys and a negative cache of unknown secrets, so
/// that neither a valid key nor a flood of invalid ones reaches the store on every request.
pub struct Keys {
    store: Arc<dyn KeyStore>,
    ttl: Duration,
    cache: Mutex<HashMap<String, (Arc<KeyRecord>, Instant)>>,
    /// Hashes of secrets no key has, and when that was learned. A key created through this process is known
    /// at once (its secret is new); created elsewhere, within `ttl`.
    unknown: Mutex<HashMap<String, Instant>>,
    /// Counts the forgettings: a verification that read the store before one does not cache what it read
    /// (the key may have been revoked in between).
    generation: std::sync::atomic::AtomicU64,
    /// Where revocations are published for the other instances.
    revocations: Option<crate::Revocations>,
}

/// Inserts into a bounded cache: expired entries make room first, then everything.
fn bounded_insert<V>(cache: &mut HashMap<String, V>, key: String, value: V, expired: impl Fn(&V) -> bool) {
    if cache.len() >= CACHE_MAX {
        cache.retain(|_, v| !expired(v));
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
    }
    cache.insert(key, value);
}

impl Keys {
    pub fn new(store: Arc<dyn KeyStore>, ttl: Duration) -> Self {
        Self {
            store,
            ttl,
            cache: Mutex::new(HashMap::new()),
            unknown: Mutex::new(HashMap::new()),
            generation: std::sync::atomic::AtomicU64::new(0),
            revocations: None,
        }
    }

    /// Publishes this process's revocations to the other instances (which listen with
    /// [`crate::Revocations::listen`]).
    pub fn with_revocations(mut self, revocations: crate::Revocations) -> Self {
        self.revocations = Some(revocations);
        self
    }

    /// Drops key `id` from the cache: its next request reads the store.
    pub fn forget(&self, id: &str) {
        self.generation.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if let Ok(mut cache) = self.cache.lock() {
            cache.retain(|_, (k, _)| k.id != id);
        }
    }

    /// Drops every cached key and every remembered unknown secret.
    pub fn forget_all(&self) {
        self.generation.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if let Ok(mut cache) = self.cache.lock() {
            cache.clear();
        }
        if let Ok(mut unknown) = self.unknown.lock() {
            unknown.clear();
        }
    }

    pub fn store(&self) -> &Arc<dyn KeyStore> {
        &self.store
    }

    /// Creates a key; returns it and its secret (shown once, never stored).
    pub async fn create(&self, new: NewKey) -> Result<(KeyRecord, String), LimitsError> {
        let secret = generate_secret();
        let id = format!("key_{}", &hash_secret(&generate_secret())[..16]);
        let key = KeyRecord {
            id,
            name: new.name,
            hash: hash_secret(&secret),
            prefix: secret[..12].to_string(),
            tenant: new.tenant,
            created_ms: keel_store::now_ms(),
            revoked_ms: None,
            models: new.models,
            budget_daily_usd: new.budget_daily_usd,
            budget_monthly_usd: new.budget_monthly_usd,
            rpm: new.rpm,
            tpm: new.tpm,
        };
        self.store.create_key(&key).await?;
        Ok((key, secret))
    }

    /// Revokes a key; this process refuses it from now on, and so does every instance listening for
    /// revocations (the others within the cache's time to live).
    pub async fn revoke(&self, id: &str) -> Result<bool, LimitsError> {
        let done = self.store.revoke_key(id, keel_store::now_ms()).await?;
        self.forget(id);
        if done && let Some(r) = &self.revocations {
            // The store has the revocation: an instance that misses the message refuses the key when its
            // cached entry expires.
            if let Err(e) = r.publish(id).await {
                tracing::warn!(error = %e, key = id, "revocation not published; other instances refuse the key within the cache's lifetime");
            }
        }
        Ok(done)
    }

    /// The live (not revoked) key a secret belongs to.
    pub async fn verify(&self, secret: &str) -> Result<Option<Arc<KeyRecord>>, LimitsError> {
        let hash = hash_secret(secret);
        if let Ok(cache) = self.cache.lock()
            && let Some((key, at)) = cache.get(&hash)
            && at.elapsed() < self.ttl
        {
            return Ok(Some(key.clone()).filter(|k| k.revoked_ms.is_none()));
        }
        if let Ok(unknown) = self.unknown.lock()
            && unknown.get(&hash).is_some_and(|at| at.elapsed() < self.ttl)
        {
            return Ok(None);
        }
        let ttl = self.ttl;
        let generation = self.generation.load(std::sync::atomic::Ordering::SeqCst);
        let Some(key) = self.store.key_by_hash(&hash).await? else {
            if let Ok(mut unknown) = self.unknown.lock() {
                bounded_insert(&mut unknown, hash, Instant::now(), |at| at.elapsed() >= ttl);
            }
            return Ok(None);
        };
        let key = Arc::new(key);
        if let Ok(mut cache) = self.cache.lock()
            && self.generation.load(std::sync::atomic::Ordering::SeqCst) == generation
        {
            bounded_insert(&mut cache, hash, (key.clone(), Instant::now()), |(_, at)| at.elapsed() >= ttl);
        }
        Ok(Some(key).filter(|k| k.revoked_ms.is_none()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_random_and_hashed_stably() {
        let a = generate_secret();
        let b = generate_secret();
        assert_ne!(a, b);
        assert!(a.starts_with("sk-keel-") && a.len() == 40);
        assert_eq!(hash_secret("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn new_keys_are_validated() {
        assert!(NewKey { name: "ok".into(), ..NewKey::default() }.validate().is_ok());
        assert!(NewKey::default().validate().is_err());
        assert!(NewKey { name: "x".into(), budget_daily_usd: Some(-1.0), ..NewKey::default() }.validate().is_err());
        assert!(NewKey { name: "x".into(), rpm: Some(0), ..NewKey::default() }.validate().is_err());
    }
}

//! The response cache's wiring (`keel serve`) and `keel cache warm`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use keel_config::{CacheBackend, Config};
use keel_pipeline::{CacheParts, Embedder, RouteTable, Semantic};

/// The cache's parts, or none when no alias can use a cache (every mode off, and no client may ask for
/// one either: the `x-keel-cache` header needs the backend to exist, so it is built whenever `[cache]` or an
/// alias mentions it).
pub(crate) async fn parts(
    cfg: &Config,
    providers: &keel_providers::Providers,
    routes: &RouteTable,
    store: Option<Arc<dyn keel_store::CacheStore>>,
) -> anyhow::Result<CacheParts> {
    let exact: Arc<dyn keel_cache::ExactBackend> = match &cfg.cache.backend {
        CacheBackend::Memory { max_bytes } => Arc::new(keel_cache::MemoryBackend::new(*max_bytes)),
        CacheBackend::Redis { url } => Arc::new(
            keel_cache::RedisBackend::connect(url, "keel:cache:v1:")
                .await
                .with_context(|| format!("connecting to the cache's Redis at {url}"))?,
        ),
    };
    let semantic = if cfg.models.values().any(|m| m.cache.semantic.is_some()) {
        semantic(cfg, providers, routes, store).await?
    } else {
        None
    };
    Ok(CacheParts::new(exact, semantic))
}

async fn semantic(
    cfg: &Config,
    providers: &keel_providers::Providers,
    routes: &RouteTable,
    store: Option<Arc<dyn keel_store::CacheStore>>,
) -> anyhow::Result<Option<Semantic>> {
    let model = &cfg.cache.semantic_model;
    let target = routes
        .targets(model)
        .and_then(|t| t.first())
        .cloned()
        .with_context(|| format!("cache.semantic.model: unknown model alias {model:?}"))?;
    let embedder = Embedder::new(providers.clone(), target);
    // The index needs the vectors' size: one embedding tells it. An embeddings model that cannot answer now
    // leaves the semantic cache off (exact caching goes on), rather than keeping keel from starting.
    let probe = tokio::time::timeout(Duration::from_secs(60), embedder.embed(vec!["keel".into()])).await;
    let dims = match probe {
        Ok(Ok(v)) if v.first().is_some_and(|v| !v.is_empty()) => v[0].len(),
        Ok(Ok(_)) => {
            tracing::error!(model, "the semantic cache's embeddings model returned no vector; semantic cache off");
            return Ok(None);
        }
        Ok(Err(e)) => {
            tracing::error!(model, error = %e, "the semantic cache's embeddings model failed; semantic cache off");
            return Ok(None);
        }
        Err(_) => {
            tracing::error!(model, "the semantic cache's embeddings model did not answer; semantic cache off");
            return Ok(None);
        }
    };
    let index = Arc::new(keel_cache::SemanticIndex::new(dims, cfg.cache.max_semantic_entries));
    if let Some(store) = &store {
        let (index, store) = (index.clone(), store.clone());
        // Loaded in the background: until it is done, earlier entries are misses, never wrong answers.
        tokio::spawn(async move {
            match keel_pipeline::load_semantic(&index, &store).await {
                Ok(n) => tracing::info!(entries = n, "semantic cache loaded"),
                Err(e) => tracing::error!(error = %e, "loading the semantic cache failed"),
            }
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                let expired: Vec<i64> =
                    index.purge(keel_store::now_ms()).into_iter().filter_map(|i| i64::try_from(i).ok()).collect();
                if !expired.is_empty()
                    && let Err(e) = store.cache_delete(&expired).await
                {
                    tracing::warn!(error = %e, "deleting expired semantic cache entries failed");
                }
                let _ = store.cache_purge(keel_store::now_ms()).await;
            }
        });
    }
    // With a Redis (the exact cache's, else the counters'), entries are shared with the other instances as they
    // are written.
    let redis = match &cfg.cache.backend {
        CacheBackend::Redis { url } => Some(url.clone()),
        CacheBackend::Memory { .. } => cfg.auth.redis.clone(),
    };
    let channel = match redis {
        Some(url) => match keel_cache::Channel::connect(&url, "keel").await {
            Ok(channel) => {
                let weak = Arc::downgrade(&index);
                channel.listen(move |row| {
                    let Some(index) = weak.upgrade() else { return false };
                    // Inserting may build a scope's graph: CPU work, on the blocking pool.
                    tokio::task::spawn_blocking(move || {
                        if !keel_pipeline::insert_row(&index, &row) {
                            tracing::warn!(id = row.id, "a semantic cache entry of another instance was not added");
                        }
                    });
                    true
                });
                Some(channel)
            }
            Err(e) => {
                tracing::warn!(error = %e, "semantic cache entries are not shared as written (loaded at start only)");
                None
            }
        },
        None => None,
    };
    tracing::info!(model, dims, shared = channel.is_some(), "semantic cache on");
    Ok(Some(Semantic { index, embedder, store, channel }))
}

/// What `keel cache warm` did.
#[derive(Debug, Default)]
struct Tally {
    stored: u64,
    cached: u64,
    not_stored: u64,
    failed: u64,
}

/// Sends every request of a JSON Lines file (one OpenAI chat completion body per line) to a running keel with
/// `x-keel-cache: read-write` (`write` with `--refresh`), so their answers are cached before users ask.
pub(crate) async fn warm(
    file: &std::path::Path,
    url: &str,
    api_key: Option<&str>,
    concurrency: usize,
    refresh: bool,
) -> anyhow::Result<std::process::ExitCode> {
    use futures::StreamExt;
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let mut requests = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut body: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{}:{}: not JSON", file.display(), i + 1))?;
        let Some(obj) = body.as_object_mut() else {
            anyhow::bail!("{}:{}: expected a chat completion request object", file.display(), i + 1);
        };
        if !obj.contains_key("model") || !obj.contains_key("messages") {
            anyhow::bail!("{}:{}: a chat completion request needs model and messages", file.display(), i + 1);
        }
        obj.remove("stream");
        requests.push((i + 1, body));
    }
    let client = reqwest::Client::new();
    let endpoint = format!("{}/v1/chat/completions", url.trim_end_matches('/'));
    let mode = if refresh { "write" } else { "read-write" };
    let results = futures::stream::iter(requests)
        .map(|(line, body)| {
            let mut req = client.post(&endpoint).header("x-keel-cache", mode).json(&body);
            if let Some(k) = api_key {
                req = req.bearer_auth(k);
            }
            async move {
                let resp = req.send().await;
                (line, resp)
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect::<Vec<_>>()
        .await;
    let mut tally = Tally::default();
    for (line, resp) in results {
        match resp {
            Ok(r) if r.status().is_success() => {
                let outcome = r.headers().get("x-keel-cache").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                let finish = r.json::<keel_types::ChatResponse>().await.ok();
                let complete = finish.as_ref().is_some_and(keel_cache::storable);
                match outcome.as_str() {
                    "hit" | "semantic_hit" => tally.cached += 1,
                    "miss" | "bypass" if complete => tally.stored += 1,
                    "miss" | "bypass" => {
                        tally.not_stored += 1;
                        eprintln!("line {line}: answered but not cacheable (cut by the token limit or filtered)");
                    }
                    _ => {
                        tally.not_stored += 1;
                        eprintln!("line {line}: the cache is off for this model (its route's mode and x-keel-cache)");
                    }
                }
            }
            Ok(r) => {
                tally.failed += 1;
                let status = r.status();
                let body = r.text().await.unwrap_or_default();
                eprintln!("line {line}: HTTP {status}: {}", body.chars().take(300).collect::<String>());
            }
            Err(e) => {
                tally.failed += 1;
                eprintln!("line {line}: {e}");
            }
        }
    }
    println!(
        "warmed {} requests: {} stored, {} already cached, {} not cacheable, {} failed",
        tally.stored + tally.cached + tally.not_stored + tally.failed,
        tally.stored,
        tally.cached,
        tally.not_stored,
        tally.failed
    );
    Ok(if tally.failed > 0 || tally.not_stored > 0 {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    })
}

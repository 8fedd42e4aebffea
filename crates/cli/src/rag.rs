//! `keel ingest`, `keel search`, `keel rag eval|list|delete`: collections on the embedded index or in
//! PostgreSQL (`[rag] postgres`, `--postgres`), embeddings through keel's own request path (the configured
//! alias, its retries and fallbacks).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use futures::FutureExt;
use futures::future::BoxFuture;
use keel_rag::fusion::Fusion;
use keel_rag::{Chunker, Collections, Embed, EmbeddedStore, Filter, Mode, PgStore, Searcher, Store, TokenCount};

#[derive(Debug, clap::Args)]
pub(crate) struct Common {
    /// The configuration file whose models to use (default: the embedded default).
    #[arg(long, short, env = "KEEL_CONFIG")]
    config: Option<PathBuf>,
    /// Where collections live (default: `[rag] dir`, else `collections` in keel's data directory).
    #[arg(long, env = "KEEL_COLLECTIONS_DIR")]
    dir: Option<PathBuf>,
    /// Keep collections in this PostgreSQL database (pgvector) instead of a directory (default: `[rag]
    /// postgres`).
    #[arg(long, env = "KEEL_RAG_POSTGRES")]
    postgres: Option<String>,
    /// The embeddings model, a configured alias (default: `[rag] model`, else all-minilm-l6-v2).
    #[arg(long)]
    model: Option<String>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct IngestArgs {
    /// The collection (created on first use).
    collection: String,
    /// Files and directories (Markdown, HTML, plain text; directories recursively).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Metadata for every chunk of these files, `key=value` (repeatable), for search filters.
    #[arg(long = "meta")]
    meta: Vec<String>,
    #[command(flatten)]
    chunking: Chunking,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Chunking {
    /// Smallest chunk, in the embedding model's tokens (a shorter section stays whole; default: `[rag]
    /// min_tokens`, else 112).
    #[arg(long)]
    min_tokens: Option<usize>,
    /// Largest chunk, in the embedding model's tokens (default: `[rag] max_tokens`, else 224).
    #[arg(long)]
    max_tokens: Option<usize>,
    /// Tokens shared by neighbouring chunks (default: `[rag] overlap_tokens`, else 24).
    #[arg(long)]
    overlap: Option<usize>,
}

impl Chunking {
    fn sizes(&self, configured: keel_config::ChunkSizes) -> keel_config::ChunkSizes {
        keel_config::ChunkSizes {
            min_tokens: self.min_tokens.unwrap_or(configured.min_tokens),
            max_tokens: self.max_tokens.unwrap_or(configured.max_tokens),
            overlap_tokens: self.overlap.unwrap_or(configured.overlap_tokens),
        }
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct SearchArgs {
    collection: String,
    query: String,
    #[arg(long, default_value = "hybrid", value_parser = parse_mode)]
    mode: Mode,
    /// How many results.
    #[arg(short, default_value_t = 5)]
    k: usize,
    /// Only chunks whose metadata has `key=value` (repeatable; `kind`, `title`, `source` and `--meta` keys).
    #[arg(long)]
    filter: Vec<String>,
    /// One JSON array of results.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum RagCommand {
    /// Measure retrieval on a BEIR-layout dataset (corpus.jsonl, queries.jsonl, qrels/test.tsv): nDCG@10,
    /// recall@1/5/10/100 and MRR for BM25, vector and hybrid side by side.
    Eval(EvalArgs),
    /// List collections.
    List {
        #[command(flatten)]
        common: Common,
    },
    /// Delete a collection.
    Delete {
        collection: String,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Debug, clap::Args)]
pub(crate) struct EvalArgs {
    /// The dataset's directory.
    dataset: PathBuf,
    /// Only the first N queries.
    #[arg(long)]
    limit: Option<usize>,
    /// Fusions to compare besides keel's default (`rrf`, `rrf:K`, `mix:W`; repeatable).
    #[arg(long, value_parser = parse_fusion)]
    fusion: Vec<Fusion>,
    /// Write the results as JSON to this file.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Fail (exit 1) when a metric is under a floor: `[RETRIEVER:]METRIC=VALUE`, RETRIEVER `bm25`, `vector` or
    /// `hybrid` (the default), METRIC `ndcg@10`, `recall@1|5|10|100` or `mrr` (repeatable).
    #[arg(long)]
    floor: Vec<String>,
    /// Degrade the vector side on purpose: Gaussian noise of this norm added to each query's unit vector (a
    /// weaker embeddings model on the same data, to check that fusion does not lose to BM25 then).
    #[arg(long, default_value_t = 0.0)]
    dense_noise: f32,
    #[command(flatten)]
    chunking: Chunking,
    #[command(flatten)]
    common: Common,
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    Mode::parse(s).ok_or_else(|| format!("unknown mode {s:?} (bm25, vector, hybrid)"))
}

fn parse_fusion(s: &str) -> Result<Fusion, String> {
    Fusion::parse(s).ok_or_else(|| format!("unknown fusion {s:?} (rrf, rrf:K, mix:W)"))
}

/// Where the collections live: `--postgres`, `[rag] postgres`, else the directory.
async fn store(common: &Common) -> anyhow::Result<Arc<dyn Store>> {
    let cfg = crate::load(common.config.as_deref())?;
    store_of(common.postgres.clone().or(cfg.rag.postgres), common.dir.clone().unwrap_or(cfg.rag.dir)).await
}

async fn store_of(postgres: Option<String>, dir: PathBuf) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match postgres {
        Some(url) => Arc::new(PgStore::connect(&url).await.context("opening the collections' PostgreSQL database")?),
        None => Arc::new(EmbeddedStore::new(dir)),
    })
}

/// Embeddings through the request path.
pub(crate) struct Routed(pub(crate) keel_pipeline::RoutedEmbedder);

impl Embed for Routed {
    fn model(&self) -> String {
        self.0.model().to_string()
    }
    fn embed(&self, texts: Vec<String>) -> BoxFuture<'_, Result<Vec<Vec<f32>>, String>> {
        async move { self.0.embed(texts).await.map_err(|e| e.to_string()) }.boxed()
    }
}

/// Tokens counted with tiktoken, for a remote embeddings model whose tokenizer keel does not have.
struct Tiktoken(String);

impl TokenCount for Tiktoken {
    fn count(&self, text: &str) -> usize {
        keel_pipeline::cost::count_text(&self.0, text) as usize
    }
}

#[cfg(feature = "local")]
struct LocalTokens(keel_local::TokenCounter);

#[cfg(feature = "local")]
impl TokenCount for LocalTokens {
    fn count(&self, text: &str) -> usize {
        self.0.count(text)
    }
}

/// The model's embedder and token counter, and the configured chunk sizes.
struct Setup {
    embed: Arc<dyn Embed>,
    counter: Arc<dyn TokenCount>,
    sizes: keel_config::ChunkSizes,
}

async fn setup(common: &Common) -> anyhow::Result<Setup> {
    let cfg = crate::load(common.config.as_deref())?;
    let providers = keel_providers::Providers::from_config(cfg.providers.values()).context("building providers")?;
    let mut sources = Vec::new();
    let providers = crate::with_local_models(&cfg, providers, &mut sources).await?;
    let routes = keel_pipeline::RouteTable::new(cfg.models.values()).map_err(anyhow::Error::msg)?;
    let breakers = keel_pipeline::Breakers::new(routes.all_targets());
    let call = keel_pipeline::Call::new(providers, breakers);
    let model = common.model.clone().unwrap_or_else(|| cfg.rag.model.clone());
    let embedder = keel_pipeline::RoutedEmbedder::new(call, &routes, &model)?;
    let target = routes.targets(&model).and_then(|t| t.first()).cloned().context("the model has no target")?;
    let local = cfg.providers.get(&target.provider).is_some_and(|p| p.kind == keel_config::ProviderKind::Local);
    let counter: Arc<dyn TokenCount> =
        if local { local_counter(&cfg, &target).await? } else { Arc::new(Tiktoken(target.model.clone())) };
    Ok(Setup { embed: Arc::new(Routed(embedder)), counter, sizes: cfg.rag.chunks })
}

#[cfg(feature = "local")]
async fn local_counter(
    cfg: &keel_config::Config,
    target: &keel_config::ModelTarget,
) -> anyhow::Result<Arc<dyn TokenCount>> {
    let p = cfg.providers.get(&target.provider).context("the model's provider is not configured")?;
    let dir = keel_local::models::models_dir(p.local.models_dir.as_deref());
    let path = keel_local::models::resolve(&target.model, &dir).await.map_err(anyhow::Error::msg)?;
    let counter = keel_local::TokenCounter::open(&path).map_err(anyhow::Error::msg)?;
    Ok(Arc::new(LocalTokens(counter)))
}

#[cfg(not(feature = "local"))]
async fn local_counter(_: &keel_config::Config, _: &keel_config::ModelTarget) -> anyhow::Result<Arc<dyn TokenCount>> {
    anyhow::bail!("local models need a keel built with them (cargo feature `local`)")
}

fn chunker(sizes: keel_config::ChunkSizes, counter: Arc<dyn TokenCount>) -> anyhow::Result<Chunker> {
    Ok(Chunker::new(sizes.min_tokens, sizes.max_tokens, sizes.overlap_tokens, counter)?)
}

fn bar(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(&format!(
        "{what} [{{bar:30}}] {{pos}}/{{len}} chunks, {{per_sec}}, {{eta}} left"
    )) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

pub(crate) async fn ingest(args: IngestArgs) -> anyhow::Result<i32> {
    keel_rag::check_name(&args.collection)?;
    let meta: BTreeMap<String, String> = Filter::parse(&args.meta)?.all.into_iter().collect();
    if let Some(k) = meta.keys().find(|k| matches!(k.as_str(), "source" | "kind" | "title")) {
        anyhow::bail!("--meta {k}=…: {k} is set by keel");
    }
    let setup = setup(&args.common).await?;
    let chunker = chunker(args.chunking.sizes(setup.sizes), setup.counter.clone())?;
    let collections = Collections::new(store(&args.common).await?, setup.embed.clone(), Fusion::default(), None);
    let index = collections.writable(&args.collection).await?;
    let progress = bar(0, "embedding");
    let shown = progress.clone();
    let report =
        keel_rag::ingest::ingest(index.clone(), setup.embed.clone(), chunker, &args.paths, &meta, &move |p| match p {
            keel_rag::ingest::Progress::Planned { chunks, .. } => shown.set_length(chunks as u64),
            keel_rag::ingest::Progress::Embedded { chunks } => shown.set_position(chunks as u64),
        })
        .await?;
    progress.finish_and_clear();
    let stats = index.stats().await?;
    if args.json {
        let out = serde_json::json!({"collection": args.collection, "report": report, "collection_stats": stats});
        println!("{out}");
    } else {
        println!(
            "{}: {} files ({} new, {} changed, {} unchanged, {} removed, {} failed, {} not read), {} chunks and {} tokens \
             embedded in {:.1} s ({:.0} chunks/s; embeddings requests {:.1} s); the collection holds {} files, {} chunks",
            args.collection,
            report.files,
            report.added,
            report.replaced,
            report.unchanged,
            report.removed,
            report.failed.len(),
            report.ignored,
            report.chunks,
            report.tokens,
            report.seconds,
            report.chunks as f64 / report.seconds.max(1e-9),
            report.embed_seconds,
            stats.sources,
            stats.chunks,
        );
        for f in &report.failed {
            eprintln!("skipped {}: {}", f.source, f.reason);
        }
    }
    Ok(if report.failed.is_empty() { 0 } else { 2 })
}

pub(crate) async fn search(args: SearchArgs) -> anyhow::Result<i32> {
    let filter = Filter::parse(&args.filter)?;
    let store = store(&args.common).await?;
    store.open(&args.collection).await?;
    let setup = setup(&args.common).await?;
    let collections = Collections::new(store, setup.embed, Fusion::default(), None);
    let started = Instant::now();
    let hits = collections.search(&args.collection, &args.query, args.mode, args.k, &filter).await?;
    if args.json {
        println!("{}", serde_json::to_string(&hits)?);
        return Ok(0);
    }
    for (i, h) in hits.iter().enumerate() {
        let ranks = |r: Option<usize>| r.map_or("-".to_string(), |r| r.to_string());
        println!(
            "{}. {:.4}  {}:{}-{}  (bm25 #{}, vector #{})",
            i + 1,
            h.score,
            h.source,
            h.start,
            h.end,
            ranks(h.bm25_rank),
            ranks(h.vector_rank)
        );
        if !h.headings.is_empty() {
            println!("   {}", h.headings.join(" > "));
        }
        let text: String = h.text.split_whitespace().collect::<Vec<_>>().join(" ");
        let short: String = text.chars().take(240).collect();
        println!("   {short}{}", if short.len() < text.len() { "…" } else { "" });
    }
    eprintln!("{} results in {:.1} ms", hits.len(), started.elapsed().as_secs_f64() * 1000.0);
    Ok(0)
}

pub(crate) async fn command(command: RagCommand) -> anyhow::Result<i32> {
    match command {
        RagCommand::List { common } => {
            for (info, s) in store(&common).await?.list().await? {
                println!(
                    "{}\t{}\t{} files\t{} chunks\t{} tokens",
                    info.name, info.model, s.sources, s.chunks, s.tokens
                );
            }
            Ok(0)
        }
        RagCommand::Delete { collection, common } => {
            if store(&common).await?.delete(&collection).await? {
                println!("deleted {collection}");
                Ok(0)
            } else {
                eprintln!("no collection {collection:?}");
                Ok(1)
            }
        }
        RagCommand::Eval(args) => eval(args).await,
    }
}

/// The collections `keel serve` searches and adds documents to, when the configured embeddings model exists.
pub(crate) async fn serving(
    cfg: &keel_config::Config,
    call: keel_pipeline::Call,
    routes: &keel_pipeline::RouteTable,
) -> anyhow::Result<Option<Arc<keel_rag::Collections>>> {
    if routes.plan(&cfg.rag.model).is_none() {
        tracing::info!(model = %cfg.rag.model, "retrieval off: the collections' embeddings model is not configured");
        return Ok(None);
    }
    let embedder = keel_pipeline::RoutedEmbedder::new(call, routes, &cfg.rag.model)?;
    let target = routes.targets(&cfg.rag.model).and_then(|t| t.first()).cloned().context("the model has no target")?;
    let local = cfg.providers.get(&target.provider).is_some_and(|p| p.kind == keel_config::ProviderKind::Local);
    let counter: Arc<dyn TokenCount> =
        if local { local_counter(cfg, &target).await? } else { Arc::new(Tiktoken(target.model.clone())) };
    let store = store_of(cfg.rag.postgres.clone(), cfg.rag.dir.clone()).await?;
    tracing::info!(store = %store.describe(), model = %cfg.rag.model, "collections served at /v1/search");
    let chunker = chunker(cfg.rag.chunks, counter)?;
    Ok(Some(Arc::new(Collections::new(store, Arc::new(Routed(embedder)), Fusion::default(), Some(chunker)))))
}

async fn eval(args: EvalArgs) -> anyhow::Result<i32> {
    let mut data = keel_rag::eval::Beir::load(&args.dataset)?;
    if let Some(n) = args.limit {
        data.queries.truncate(n);
    }
    let floors = args.floor.iter().map(|f| parse_floor(f)).collect::<anyhow::Result<Vec<_>>>()?;
    let setup = setup(&args.common).await?;
    let dataset = args.dataset.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "dataset".into());
    let name: String = format!("eval-{dataset}-{}", setup.embed.model())
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' })
        .take(64)
        .collect();
    let sizes = args.chunking.sizes(setup.sizes);
    let chunker = chunker(sizes, setup.counter.clone())?;
    let collections = Collections::new(store(&args.common).await?, setup.embed.clone(), Fusion::default(), None);
    let index = collections.writable(&name).await?;
    let started = Instant::now();
    let progress = bar(0, "embedding the corpus");
    let shown = progress.clone();
    keel_rag::eval::ingest_corpus(index.clone(), setup.embed.clone(), &chunker, &data.corpus, &move |p| match p {
        keel_rag::ingest::Progress::Planned { chunks, .. } => shown.set_length(chunks as u64),
        keel_rag::ingest::Progress::Embedded { chunks } => shown.set_position(chunks as u64),
    })
    .await?;
    progress.finish_and_clear();
    let indexed = started.elapsed();
    let searcher = Searcher::new(index.clone(), setup.embed.clone(), Fusion::default())?;
    let mut fusions = vec![Fusion::default(), Fusion::Rrf { k: 60.0 }];
    for f in &args.fusion {
        if !fusions.contains(f) {
            fusions.push(*f);
        }
    }
    let started = Instant::now();
    let rows = keel_rag::eval::evaluate(&searcher, &data, &fusions, args.dense_noise, &|_| {}).await?;
    let evaluated = started.elapsed();
    println!(
        "{dataset}: {} documents ({} chunks), {} queries, model {}",
        data.corpus.len(),
        index.stats().await?.chunks,
        data.queries.len(),
        setup.embed.model()
    );
    println!(
        "{:<22} {:>8} {:>8} {:>8} {:>8} {:>10} {:>8}",
        "retriever", "nDCG@10", "R@1", "R@5", "R@10", "R@100", "MRR"
    );
    for r in &rows {
        let m = &r.metrics;
        println!(
            "{:<22} {:>8.4} {:>8.4} {:>8.4} {:>8.4} {:>10.4} {:>8.4}",
            r.retriever, m.ndcg10, m.recall1, m.recall5, m.recall10, m.recall100, m.mrr
        );
    }
    eprintln!(
        "corpus indexed in {:.1} s, queries evaluated in {:.1} s",
        indexed.as_secs_f64(),
        evaluated.as_secs_f64()
    );
    if let Some(path) = &args.report {
        let out = serde_json::json!({
            "dataset": dataset,
            "documents": data.corpus.len(),
            "queries": data.queries.len(),
            "model": setup.embed.model(),
            "chunking": {"min_tokens": sizes.min_tokens, "max_tokens": sizes.max_tokens, "overlap": sizes.overlap_tokens},
            "results": rows,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&out)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let mut failed = false;
    for (retriever, metric, floor) in floors {
        let row = rows.iter().find(|r| {
            r.retriever == retriever
                || (retriever == "hybrid" && r.retriever == format!("hybrid {}", Fusion::default().name()))
        });
        let value = row.and_then(|r| r.metrics.get(&metric)).context("unknown retriever or metric in --floor")?;
        if value < floor {
            eprintln!("FAIL: {retriever} {metric} = {value:.4} < floor {floor}");
            failed = true;
        }
    }
    Ok(if failed { 1 } else { 0 })
}

/// `[RETRIEVER:]METRIC=VALUE`.
fn parse_floor(s: &str) -> anyhow::Result<(String, String, f64)> {
    let (lhs, value) = s.split_once('=').with_context(|| format!("--floor {s}: expected [RETRIEVER:]METRIC=VALUE"))?;
    let (retriever, metric) = lhs.split_once(':').unwrap_or(("hybrid", lhs));
    if !matches!(retriever, "bm25" | "vector" | "hybrid") {
        anyhow::bail!("--floor {s}: retriever must be bm25, vector or hybrid");
    }
    if keel_rag::eval::Metrics::default().get(metric).is_none() {
        anyhow::bail!("--floor {s}: metric must be ndcg@10, recall@1, recall@5, recall@10, recall@100 or mrr");
    }
    let value: f64 = value.parse().with_context(|| format!("--floor {s}: {value:?} is not a number"))?;
    Ok((retriever.into(), metric.into(), value))
}

//! The index on PostgreSQL with pgvector, for deployments where several keel instances share collections.
//!
//! Layout: `keel_rag_collections` (one row per collection: its model, vector size, the next chunk id and the
//! counts BM25 needs) and `keel_rag_sources` (what each source's content hash and chunk ids are), plus two
//! tables per collection, named after its id: `keel_rag_chunks_<id>` (text, heading path, offsets, metadata
//! as JSONB, a `tsvector` of headings and text, its length, and the vector with an HNSW index) and
//! `keel_rag_terms_<id>` (each term's document frequency). A table per collection, rather than one shared
//! table, because an HNSW index needs one vector size, a search never has to skip other collections'
//! rows, and deleting a collection is a `DROP`.
//!
//! Keyword ranking is BM25 (k1 1.2, b 0.75, the same function as the embedded index's tantivy), computed in
//! SQL from the `tsvector`'s term frequencies and the terms table: PostgreSQL's own `ts_rank` has no inverse
//! document frequency, and the fusion needs both indexes to score alike. Candidates come from the GIN index
//! on the `tsvector`: the chunks holding any of the query's rarest terms, within a budget counted by document
//! frequency (Lucene's cutoff frequency; see `keyword_scored`). The text is English-stemmed
//! (`to_tsvector('english', …)`).
//!
//! An update is one transaction that first locks the collection's row, so writers on any number of
//! instances take turns and readers see either all of an update or none of it.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use pgvector::Vector;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, Executor, PgPool, Postgres, Row, Transaction};

use crate::index::{Filter, Index, SourceState, Stats, Store, StoredChunk, Update};
use crate::{CollectionInfo, RagError};

/// BM25's term-frequency saturation and length normalisation (tantivy's values).
const K1: f64 = 1.2;
const B: f64 = 0.75;
/// The chunks a keyword query scores at least, counted by its candidate terms' document frequencies (20 times
/// the results asked for, when more): see `keyword_scored`.
const KEYWORD_CANDIDATES: usize = 2_000;
/// Nearest-neighbour candidates the HNSW search keeps (pgvector's default is 40; the fusion asks for 100).
const EF_SEARCH: usize = 200;
/// Rows per `INSERT` when adding chunks.
const INSERT_ROWS: usize = 512;
/// Connections per keel instance.
const POOL: u32 = 8;

/// The base tables, created once per database (under an advisory lock: instances may start together).
const SCHEMA: &str = r"
CREATE EXTENSION IF NOT EXISTS vector;
CREATE TABLE IF NOT EXISTS keel_rag_collections (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    model TEXT NOT NULL,
    dims INTEGER NOT NULL,
    next_id BIGINT NOT NULL DEFAULT 0,
    chunks BIGINT NOT NULL DEFAULT 0,
    total_len BIGINT NOT NULL DEFAULT 0,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS keel_rag_sources (
    collection BIGINT NOT NULL REFERENCES keel_rag_collections (id) ON DELETE CASCADE,
    source TEXT NOT NULL,
    hash TEXT NOT NULL,
    first_id BIGINT NOT NULL,
    chunks BIGINT NOT NULL,
    tokens BIGINT NOT NULL,
    PRIMARY KEY (collection, source)
);
";

fn db(e: sqlx::Error) -> RagError {
    RagError::Index(format!("postgres: {e}"))
}

/// Collections in one PostgreSQL database.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    describe: String,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("at", &self.describe).finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects, and creates the base tables and the `vector` extension when they are not there (the
    /// extension needs a role that may create it, or a database where it exists already).
    pub async fn connect(url: &str) -> Result<Self, RagError> {
        let options: PgConnectOptions = url.parse().map_err(|e| RagError::Invalid(format!("postgres url: {e}")))?;
        let describe = format!(
            "postgres at {}:{}/{}",
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or("-")
        );
        let pool = PgPoolOptions::new()
            .max_connections(POOL)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .after_connect(|conn, _| {
                Box::pin(async move {
                    // Settings of the pgvector module, accepted before it is loaded; relaxed order lets a
                    // filtered search go on past the first candidates instead of returning too few.
                    let settings = format!("SET hnsw.ef_search = {EF_SEARCH}; SET hnsw.iterative_scan = relaxed_order");
                    sqlx::raw_sql(AssertSqlSafe(settings)).execute(&mut *conn).await?;
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(db)?;
        let mut tx = pool.begin().await.map_err(db)?;
        sqlx::query("SELECT pg_advisory_xact_lock(7316417102394817)").execute(&mut *tx).await.map_err(db)?;
        tx.execute(SCHEMA).await.map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(Self { pool, describe })
    }

    async fn find(&self, name: &str) -> Result<Option<PgIndex>, RagError> {
        crate::check_name(name)?;
        let row = sqlx::query("SELECT id, model, dims FROM keel_rag_collections WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        Ok(row.map(|r| {
            PgIndex::new(
                self.pool.clone(),
                r.get("id"),
                CollectionInfo {
                    name: name.to_string(),
                    model: r.get("model"),
                    dims: r.get::<i32, _>("dims") as usize,
                },
            )
        }))
    }

    async fn create(&self, info: CollectionInfo) -> Result<PgIndex, RagError> {
        crate::check_name(&info.name)?;
        if info.dims == 0 || info.dims > 2_000 {
            return Err(RagError::Invalid(format!(
                "vectors of {} dimensions (pgvector's HNSW index takes 1 to 2000)",
                info.dims
            )));
        }
        let mut tx = self.pool.begin().await.map_err(db)?;
        // A concurrent create of the same name waits on the unique index, then finds the row.
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO keel_rag_collections (name, model, dims) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING \
             RETURNING id",
        )
        .bind(&info.name)
        .bind(&info.model)
        .bind(info.dims as i32)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        let Some(id) = id else {
            tx.rollback().await.map_err(db)?;
            return self.find(&info.name).await?.ok_or_else(|| RagError::NoCollection(info.name.clone()));
        };
        let index = PgIndex::new(self.pool.clone(), id, info);
        let (chunks, terms, dims) = (&index.chunks, &index.terms, index.info.dims);
        let ddl = format!(
            "CREATE TABLE {chunks} (
                id BIGINT PRIMARY KEY,
                source TEXT NOT NULL,
                text TEXT NOT NULL,
                headings TEXT[] NOT NULL,
                start_at BIGINT NOT NULL,
                end_at BIGINT NOT NULL,
                meta JSONB NOT NULL,
                tsv TSVECTOR NOT NULL,
                len INTEGER NOT NULL,
                embedding vector({dims}) NOT NULL
            );
            CREATE INDEX ON {chunks} (source);
            CREATE INDEX ON {chunks} USING gin (tsv);
            CREATE INDEX ON {chunks} USING gin (meta jsonb_path_ops);
            CREATE INDEX ON {chunks} USING hnsw (embedding vector_cosine_ops);
            CREATE TABLE {terms} (term TEXT PRIMARY KEY, df BIGINT NOT NULL);"
        );
        sqlx::raw_sql(AssertSqlSafe(ddl)).execute(&mut *tx).await.map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(index)
    }

    /// The bytes a collection takes in the database: its tables with their indexes and TOAST.
    pub async fn disk_bytes(&self, name: &str) -> Result<u64, RagError> {
        let id = self.find(name).await?.map(|i| i.id).ok_or_else(|| RagError::NoCollection(name.into()))?;
        let (chunks, terms) = tables(id);
        let bytes: i64 =
            sqlx::query_scalar("SELECT pg_total_relation_size($1::regclass) + pg_total_relation_size($2::regclass)")
                .bind(chunks)
                .bind(terms)
                .fetch_one(&self.pool)
                .await
                .map_err(db)?;
        Ok(bytes.max(0) as u64)
    }

    /// Drops every collection whose name starts with `prefix` (tests clean up their own).
    pub async fn delete_prefixed(&self, prefix: &str) -> Result<usize, RagError> {
        let names: Vec<String> =
            sqlx::query_scalar("SELECT name FROM keel_rag_collections WHERE starts_with(name, $1)")
                .bind(prefix)
                .fetch_all(&self.pool)
                .await
                .map_err(db)?;
        for n in &names {
            self.delete_named(n).await?;
        }
        Ok(names.len())
    }

    async fn delete_named(&self, name: &str) -> Result<bool, RagError> {
        crate::check_name(name)?;
        let mut tx = self.pool.begin().await.map_err(db)?;
        let id: Option<i64> = sqlx::query_scalar("SELECT id FROM keel_rag_collections WHERE name = $1 FOR UPDATE")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
        let Some(id) = id else { return Ok(false) };
        let (chunks, terms) = tables(id);
        sqlx::raw_sql(AssertSqlSafe(format!("DROP TABLE IF EXISTS {chunks}; DROP TABLE IF EXISTS {terms}")))
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        sqlx::query("DELETE FROM keel_rag_collections WHERE id = $1").bind(id).execute(&mut *tx).await.map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(true)
    }
}

fn tables(id: i64) -> (String, String) {
    (format!("keel_rag_chunks_{id}"), format!("keel_rag_terms_{id}"))
}

impl Store for PgStore {
    fn open(&self, name: &str) -> BoxFuture<'_, Result<Arc<dyn Index>, RagError>> {
        let name = name.to_string();
        async move {
            match self.find(&name).await? {
                Some(i) => Ok(Arc::new(i) as Arc<dyn Index>),
                None => Err(RagError::NoCollection(name)),
            }
        }
        .boxed()
    }

    fn open_or_create(&self, info: CollectionInfo) -> BoxFuture<'_, Result<Arc<dyn Index>, RagError>> {
        async move {
            match self.find(&info.name).await? {
                Some(i) => crate::index::same_model(Arc::new(i), &info),
                // `create` returns the collection another keel created meanwhile: checked too.
                None => crate::index::same_model(Arc::new(self.create(info.clone()).await?), &info),
            }
        }
        .boxed()
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<(CollectionInfo, Stats)>, RagError>> {
        async move {
            let rows = sqlx::query(
                "SELECT c.name, c.model, c.dims, count(s.source) AS sources, coalesce(sum(s.chunks), 0)::BIGINT AS \
                 chunks, coalesce(sum(s.tokens), 0)::BIGINT AS tokens FROM keel_rag_collections c LEFT JOIN \
                 keel_rag_sources s ON s.collection = c.id GROUP BY c.id ORDER BY c.name",
            )
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
            Ok(rows
                .into_iter()
                .map(|r| {
                    let info = CollectionInfo {
                        name: r.get("name"),
                        model: r.get("model"),
                        dims: r.get::<i32, _>("dims") as usize,
                    };
                    let stats = Stats {
                        sources: r.get::<i64, _>("sources") as u64,
                        chunks: r.get::<i64, _>("chunks") as u64,
                        tokens: r.get::<i64, _>("tokens") as u64,
                    };
                    (info, stats)
                })
                .collect())
        }
        .boxed()
    }

    fn delete(&self, name: &str) -> BoxFuture<'_, Result<bool, RagError>> {
        let name = name.to_string();
        async move { self.delete_named(&name).await }.boxed()
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }
}

/// One collection in PostgreSQL.
#[derive(Clone)]
pub struct PgIndex {
    pool: PgPool,
    id: i64,
    info: CollectionInfo,
    chunks: String,
    terms: String,
}

impl std::fmt::Debug for PgIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgIndex").field("id", &self.id).field("name", &self.info.name).finish_non_exhaustive()
    }
}

/// A filter as a JSONB containment pattern; `None` when two conditions on one key can never both hold.
fn filter_json(filter: &Filter) -> Option<serde_json::Value> {
    let mut m = serde_json::Map::new();
    for (k, v) in &filter.all {
        match m.get(k) {
            Some(serde_json::Value::String(old)) if old != v => return None,
            _ => {
                m.insert(k.clone(), serde_json::Value::String(v.clone()));
            }
        }
    }
    Some(serde_json::Value::Object(m))
}

/// A table that is gone means the collection was deleted (by another instance, perhaps) under this handle.
fn gone(name: &str) -> impl Fn(sqlx::Error) -> RagError + '_ {
    move |e| match &e {
        sqlx::Error::Database(d) if d.code().as_deref() == Some("42P01") => RagError::NoCollection(name.to_string()),
        _ => db(e),
    }
}

impl PgIndex {
    fn new(pool: PgPool, id: i64, info: CollectionInfo) -> Self {
        let (chunks, terms) = tables(id);
        Self { pool, id, info, chunks, terms }
    }

    async fn sources_now(&self) -> Result<BTreeMap<String, SourceState>, RagError> {
        let rows =
            sqlx::query("SELECT source, hash, first_id, chunks, tokens FROM keel_rag_sources WHERE collection = $1")
                .bind(self.id)
                .fetch_all(&self.pool)
                .await
                .map_err(db)?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let state = SourceState {
                    hash: r.get("hash"),
                    first_id: r.get::<i64, _>("first_id") as u64,
                    chunks: r.get::<i64, _>("chunks") as u64,
                    tokens: r.get::<i64, _>("tokens") as u64,
                };
                (r.get("source"), state)
            })
            .collect())
    }

    async fn apply_now(&self, update: Update) -> Result<(), RagError> {
        let dims = self.info.dims;
        for s in &update.upsert {
            if let Some(bad) = s.chunks.iter().find(|c| c.vector.len() != dims) {
                return Err(RagError::Dimensions { want: dims, got: bad.vector.len() });
            }
        }
        let gone_err = gone(&self.info.name);
        let mut tx = self.pool.begin().await.map_err(db)?;
        let next: Option<i64> = sqlx::query_scalar("SELECT next_id FROM keel_rag_collections WHERE id = $1 FOR UPDATE")
            .bind(self.id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
        let mut next_id = next.ok_or_else(|| RagError::NoCollection(self.info.name.clone()))?;
        let mut removed: Vec<String> = update.remove.clone();
        removed.extend(update.upsert.iter().map(|s| s.source.clone()));
        removed.sort();
        removed.dedup();
        self.remove_sources(&mut tx, &removed).await.map_err(&gone_err)?;
        for s in &update.upsert {
            if s.chunks.is_empty() {
                continue;
            }
            let first_id = next_id;
            let mut meta = serde_json::Map::new();
            for (k, v) in &s.meta {
                meta.insert(k.clone(), serde_json::Value::String(v.clone()));
            }
            meta.insert("source".into(), serde_json::Value::String(s.source.clone()));
            let meta = serde_json::Value::Object(meta);
            for (n, rows) in s.chunks.chunks(INSERT_ROWS).enumerate() {
                let base = first_id + (n * INSERT_ROWS) as i64;
                let ids: Vec<i64> = (0..rows.len() as i64).map(|i| base + i).collect();
                let texts: Vec<&str> = rows.iter().map(|c| c.chunk.text.as_str()).collect();
                // Heading paths travel as one string each (arrays of arrays must be rectangular), split by
                // the unit separator, which text extraction never leaves in a heading.
                let headings: Vec<String> = rows.iter().map(|c| c.chunk.headings.join("\u{1f}")).collect();
                let starts: Vec<i64> = rows.iter().map(|c| c.chunk.start as i64).collect();
                let ends: Vec<i64> = rows.iter().map(|c| c.chunk.end as i64).collect();
                let vectors: Vec<Vector> = rows.iter().map(|c| Vector::from(c.vector.clone())).collect();
                let sql = format!(
                    "INSERT INTO {} (id, source, text, headings, start_at, end_at, meta, tsv, len, embedding)
                     SELECT r.id, $2, r.text, CASE WHEN r.h = '' THEN '{{}}'::TEXT[] ELSE string_to_array(r.h, chr(31)) END,
                            r.s, r.e, $3, v.tsv,
                            (SELECT coalesce(sum(cardinality(u.positions)), 0) FROM unnest(v.tsv) u), r.emb
                     FROM unnest($1::BIGINT[], $4::TEXT[], $5::TEXT[], $6::BIGINT[], $7::BIGINT[], $8::vector[])
                          AS r(id, text, h, s, e, emb)
                     CROSS JOIN LATERAL (SELECT to_tsvector('english', replace(r.h, chr(31), ' ') || ' ' || r.text) AS tsv) v",
                    self.chunks
                );
                sqlx::query(AssertSqlSafe(sql))
                    .bind(&ids)
                    .bind(&s.source)
                    .bind(&meta)
                    .bind(&texts)
                    .bind(&headings)
                    .bind(&starts)
                    .bind(&ends)
                    .bind(&vectors)
                    .execute(&mut *tx)
                    .await
                    .map_err(&gone_err)?;
            }
            let count = s.chunks.len() as i64;
            next_id += count;
            self.count_in(&mut tx, first_id, next_id).await.map_err(&gone_err)?;
            let tokens: i64 = s.chunks.iter().map(|c| c.chunk.tokens as i64).sum();
            sqlx::query(
                "INSERT INTO keel_rag_sources (collection, source, hash, first_id, chunks, tokens) VALUES ($1, $2, $3, \
                 $4, $5, $6)",
            )
            .bind(self.id)
            .bind(&s.source)
            .bind(&s.hash)
            .bind(first_id)
            .bind(count)
            .bind(tokens)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        }
        sqlx::query("UPDATE keel_rag_collections SET next_id = $2 WHERE id = $1")
            .bind(self.id)
            .bind(next_id)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)
    }

    /// Takes sources' chunks out, with their terms' document frequencies and the collection's counts.
    async fn remove_sources(&self, tx: &mut Transaction<'_, Postgres>, sources: &[String]) -> Result<(), sqlx::Error> {
        if sources.is_empty() {
            return Ok(());
        }
        let (chunks, terms) = (&self.chunks, &self.terms);
        let sql = format!(
            "UPDATE keel_rag_collections SET
                 chunks = chunks - g.n, total_len = total_len - g.len
             FROM (SELECT count(*) AS n, coalesce(sum(len), 0) AS len FROM {chunks} WHERE source = ANY($2)) g
             WHERE id = $1"
        );
        sqlx::query(AssertSqlSafe(sql)).bind(self.id).bind(sources).execute(&mut **tx).await?;
        let sql = format!(
            "UPDATE {terms} t SET df = t.df - g.n
             FROM (SELECT u.lexeme, count(*) AS n FROM {chunks} c CROSS JOIN LATERAL unnest(c.tsv) u
                   WHERE c.source = ANY($1) GROUP BY u.lexeme) g
             WHERE t.term = g.lexeme"
        );
        sqlx::query(AssertSqlSafe(sql)).bind(sources).execute(&mut **tx).await?;
        sqlx::query(AssertSqlSafe(format!("DELETE FROM {terms} WHERE df <= 0"))).execute(&mut **tx).await?;
        sqlx::query(AssertSqlSafe(format!("DELETE FROM {chunks} WHERE source = ANY($1)")))
            .bind(sources)
            .execute(&mut **tx)
            .await?;
        sqlx::query("DELETE FROM keel_rag_sources WHERE collection = $1 AND source = ANY($2)")
            .bind(self.id)
            .bind(sources)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Counts the chunks `from..to` in: their terms' document frequencies and the collection's totals.
    async fn count_in(&self, tx: &mut Transaction<'_, Postgres>, from: i64, to: i64) -> Result<(), sqlx::Error> {
        let (chunks, terms) = (&self.chunks, &self.terms);
        // Sorted, so two writers would take the terms' row locks in one order (the collection lock already
        // makes them take turns).
        let sql = format!(
            "INSERT INTO {terms} (term, df)
             SELECT u.lexeme, count(*) FROM {chunks} c CROSS JOIN LATERAL unnest(c.tsv) u
             WHERE c.id >= $1 AND c.id < $2 GROUP BY u.lexeme ORDER BY u.lexeme
             ON CONFLICT (term) DO UPDATE SET df = {terms}.df + excluded.df"
        );
        sqlx::query(AssertSqlSafe(sql)).bind(from).bind(to).execute(&mut **tx).await?;
        let sql = format!(
            "UPDATE keel_rag_collections SET chunks = chunks + g.n, total_len = total_len + g.len
             FROM (SELECT count(*) AS n, coalesce(sum(len), 0) AS len FROM {chunks} WHERE id >= $2 AND id < $3) g
             WHERE id = $1"
        );
        sqlx::query(AssertSqlSafe(sql)).bind(self.id).bind(from).bind(to).execute(&mut **tx).await?;
        Ok(())
    }

    async fn keyword_now(&self, query: &str, k: usize, filter: &Filter) -> Result<Vec<(u64, f32)>, RagError> {
        if k == 0 {
            return Ok(Vec::new());
        }
        let Some(pattern) = filter_json(filter) else { return Ok(Vec::new()) };
        // PostgreSQL text cannot hold NUL; it separates words like any control character.
        let query = query.replace('\0', " ");
        let budget = (k * 20).max(KEYWORD_CANDIDATES) as i64;
        let (rows, pruned) = self.keyword_scored(&query, k, &pattern, budget).await?;
        // A filter can leave fewer chunks than asked among the rare terms' candidates while chunks with only
        // the frequent terms pass it: then every term's chunks are candidates, as without the budget.
        if pruned && !filter.is_empty() && rows.len() < k {
            return Ok(self.keyword_scored(&query, k, &pattern, i64::MAX).await?.0);
        }
        Ok(rows)
    }

    /// BM25 over the chunks holding the query's rarest terms, up to `budget` of them counted by document
    /// frequency (the rarest term always), every query term scoring them; and whether terms were left out of
    /// the candidates. This is the cutoff frequency of Lucene's common-terms query: a chunk that holds only the
    /// query's most frequent terms seldom ranks above one holding a rare term, and without the cutoff a query
    /// with a frequent word ("function", "use") scores a large part of the collection term by term.
    async fn keyword_scored(
        &self,
        query: &str,
        k: usize,
        pattern: &serde_json::Value,
        budget: i64,
    ) -> Result<(Vec<(u64, f32)>, bool), RagError> {
        let (chunks, terms) = (&self.chunks, &self.terms);
        // The candidates' tsquery is made of the terms as quoted lexemes: no query text is ever parsed as
        // tsquery syntax, and no lexeme is normalised twice.
        let sql = format!(
            "WITH q AS (SELECT DISTINCT unnest(tsvector_to_array(to_tsvector('english', $1))) AS term),
                  qt AS (SELECT t.term, t.df FROM {terms} t JOIN q ON q.term = t.term WHERE t.df > 0),
                  ranked AS (SELECT term, df, sum(df) OVER (ORDER BY df, term) - df AS before FROM qt),
                  ct AS (SELECT term FROM ranked WHERE before = 0 OR before + df <= $5),
                  col AS (SELECT greatest(chunks, 1)::FLOAT8 AS n,
                                 greatest(total_len::FLOAT8 / greatest(chunks, 1), 1) AS avgdl
                          FROM keel_rag_collections WHERE id = $4),
                  cand AS (SELECT id, tsv, len FROM {chunks}
                           WHERE tsv @@ (SELECT string_agg('''' || replace(replace(term, '\\', '\\\\'), '''', '''''')
                                                           || '''', ' | ')
                                         FROM ct)::tsquery
                             AND meta @> $2),
                  scored AS (
                    SELECT c.id, sum(ln(1 + (col.n - qt.df + 0.5) / (qt.df + 0.5))
                                     * cardinality(u.positions) * ({K1} + 1)
                                     / (cardinality(u.positions) + {K1} * (1 - {B} + {B} * c.len / col.avgdl)))::FLOAT4
                                 AS score
                    FROM cand c CROSS JOIN col CROSS JOIN LATERAL unnest(c.tsv) u JOIN qt ON qt.term = u.lexeme
                    GROUP BY c.id ORDER BY score DESC, c.id LIMIT $3),
                  pruned AS (SELECT (SELECT count(*) FROM qt) > (SELECT count(*) FROM ct) AS p)
             SELECT id, score, pruned.p FROM scored CROSS JOIN pruned
             UNION ALL SELECT -1, 0, pruned.p FROM pruned"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(query)
            .bind(pattern)
            .bind(k as i64)
            .bind(self.id)
            .bind(budget)
            .fetch_all(&self.pool)
            .await
            .map_err(gone(&self.info.name))?;
        // The last row says whether terms were left out; the others are the hits, best first.
        let pruned = rows.last().is_some_and(|r| r.get::<bool, _>(2));
        let hits = rows
            .iter()
            .filter(|r| r.get::<i64, _>(0) >= 0)
            .map(|r| (r.get::<i64, _>(0) as u64, r.get::<f32, _>(1)))
            .collect();
        Ok((hits, pruned))
    }

    async fn vector_now(&self, query: Vec<f32>, k: usize, filter: &Filter) -> Result<Vec<(u64, f32)>, RagError> {
        if query.len() != self.info.dims {
            return Err(RagError::Dimensions { want: self.info.dims, got: query.len() });
        }
        if k == 0 {
            return Ok(Vec::new());
        }
        let Some(pattern) = filter_json(filter) else { return Ok(Vec::new()) };
        let condition = if filter.is_empty() { "" } else { "WHERE meta @> $3" };
        let sql = format!(
            "SELECT id, (1 - (embedding <=> $1))::FLOAT4 FROM {} {condition} ORDER BY embedding <=> $1 LIMIT $2",
            self.chunks
        );
        let mut q = sqlx::query(AssertSqlSafe(sql)).bind(Vector::from(query)).bind(k as i64);
        if !filter.is_empty() {
            q = q.bind(&pattern);
        }
        let rows = q.fetch_all(&self.pool).await.map_err(gone(&self.info.name))?;
        let mut out: Vec<(u64, f32)> =
            rows.into_iter().map(|r| (r.get::<i64, _>(0) as u64, r.get::<f32, _>(1))).collect();
        // An iterative (relaxed-order) scan may return neighbours slightly out of order.
        out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        Ok(out)
    }

    async fn chunks_now(&self, ids: Vec<u64>) -> Result<Vec<StoredChunk>, RagError> {
        let wanted: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
        let sql = format!(
            "SELECT id, source, text, headings, start_at, end_at, meta FROM {} WHERE id = ANY($1)",
            self.chunks
        );
        let rows =
            sqlx::query(AssertSqlSafe(sql)).bind(&wanted).fetch_all(&self.pool).await.map_err(gone(&self.info.name))?;
        let mut by_id = std::collections::HashMap::with_capacity(rows.len());
        for r in rows {
            let id = r.get::<i64, _>("id") as u64;
            let meta: serde_json::Value = r.get("meta");
            let meta = meta
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter(|(k, _)| k.as_str() != "source")
                        .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                        .collect()
                })
                .unwrap_or_default();
            by_id.insert(
                id,
                StoredChunk {
                    id,
                    source: r.get("source"),
                    text: r.get("text"),
                    headings: r.get("headings"),
                    start: r.get::<i64, _>("start_at") as u64,
                    end: r.get::<i64, _>("end_at") as u64,
                    meta,
                },
            );
        }
        let mut seen = HashSet::new();
        Ok(ids.into_iter().filter(|id| seen.insert(*id)).filter_map(|id| by_id.remove(&id)).collect())
    }
}

impl Index for PgIndex {
    fn info(&self) -> CollectionInfo {
        self.info.clone()
    }

    fn sources(&self) -> BoxFuture<'_, Result<BTreeMap<String, SourceState>, RagError>> {
        self.sources_now().boxed()
    }

    fn stats(&self) -> BoxFuture<'_, Result<Stats, RagError>> {
        async move {
            let row = sqlx::query(
                "SELECT count(*) AS sources, coalesce(sum(chunks), 0)::BIGINT AS chunks, coalesce(sum(tokens), \
                 0)::BIGINT AS tokens FROM keel_rag_sources WHERE collection = $1",
            )
            .bind(self.id)
            .fetch_one(&self.pool)
            .await
            .map_err(db)?;
            Ok(Stats {
                sources: row.get::<i64, _>("sources") as u64,
                chunks: row.get::<i64, _>("chunks") as u64,
                tokens: row.get::<i64, _>("tokens") as u64,
            })
        }
        .boxed()
    }

    /// Every read goes to the database, so a handle is stale only when its collection is gone or was
    /// recreated under the same name (another id).
    fn stale(&self) -> BoxFuture<'_, bool> {
        async move {
            let id: Result<Option<i64>, _> = sqlx::query_scalar("SELECT id FROM keel_rag_collections WHERE name = $1")
                .bind(&self.info.name)
                .fetch_optional(&self.pool)
                .await;
            !matches!(id, Ok(Some(id)) if id == self.id)
        }
        .boxed()
    }

    fn apply(&self, update: Update) -> BoxFuture<'_, Result<(), RagError>> {
        self.apply_now(update).boxed()
    }

    fn keyword(&self, query: String, k: usize, filter: Filter) -> BoxFuture<'_, Result<Vec<(u64, f32)>, RagError>> {
        async move { self.keyword_now(&query, k, &filter).await }.boxed()
    }

    fn vector(&self, query: Vec<f32>, k: usize, filter: Filter) -> BoxFuture<'_, Result<Vec<(u64, f32)>, RagError>> {
        async move { self.vector_now(query, k, &filter).await }.boxed()
    }

    fn chunks(&self, ids: Vec<u64>) -> BoxFuture<'_, Result<Vec<StoredChunk>, RagError>> {
        self.chunks_now(ids).boxed()
    }
}

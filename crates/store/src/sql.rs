//! The SQL both backends run. It is the same text for SQLite and PostgreSQL (`QueryBuilder` writes each one's
//! placeholders); a macro instantiates it per driver because sqlx's generic bounds over "any database" would
//! be longer than the code.

/// Columns of `requests`, in insert order.
pub(crate) const COLUMNS: &str = "id, ts_ms, key_id, tenant, api, endpoint, model_requested, model_served, status, \
     outcome, error_class, stream, attempts, ttft_ms, latency_ms, tokens_in, tokens_out, tokens_cached, cost_usd, \
     cache, request_body, response_body, metadata, client_request_id, template, template_version, router, routed_to, \
     route_reason, escalations";

/// [`COLUMNS`] of a table aliased `r`.
pub(crate) const COLUMNS_OF_R: &str = "r.id, r.ts_ms, r.key_id, r.tenant, r.api, r.endpoint, r.model_requested, \
     r.model_served, r.status, r.outcome, r.error_class, r.stream, r.attempts, r.ttft_ms, r.latency_ms, r.tokens_in, \
     r.tokens_out, r.tokens_cached, r.cost_usd, r.cache, r.request_body, r.response_body, r.metadata, \
     r.client_request_id, r.template, r.template_version, r.router, r.routed_to, r.route_reason, r.escalations";

pub(crate) const KEY_COLUMNS: &str = "id, name, hash, prefix, tenant, created_ms, revoked_ms, models, \
     budget_daily_usd, budget_monthly_usd, rpm, tpm";

/// `s` as the literal part of a `LIKE` pattern escaped with `\`.
pub(crate) fn like_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

pub(crate) fn to_i64(v: Option<u64>) -> Option<i64> {
    v.map(|n| i64::try_from(n).unwrap_or(i64::MAX))
}

pub(crate) fn to_u64(v: Option<i64>) -> Option<u64> {
    v.map(|n| u64::try_from(n).unwrap_or(0))
}

macro_rules! store_impl {
    ($store:ty, $db:ty, $json:path) => {
        impl $store {
            /// A `requests` row.
            fn record_row(row: &<$db as sqlx::Database>::Row) -> Result<crate::Record, crate::StoreError> {
                use sqlx::Row;
                let attempts: String = row.try_get("attempts")?;
                let metadata: String = row.try_get("metadata")?;
                Ok(crate::Record {
                    id: row.try_get("id")?,
                    client_request_id: row.try_get("client_request_id")?,
                    ts_ms: row.try_get("ts_ms")?,
                    key_id: row.try_get("key_id")?,
                    tenant: row.try_get("tenant")?,
                    api: row.try_get("api")?,
                    endpoint: row.try_get("endpoint")?,
                    model_requested: row.try_get("model_requested")?,
                    model_served: row.try_get("model_served")?,
                    status: u16::try_from(row.try_get::<i64, _>("status")?).unwrap_or(0),
                    outcome: {
                        let text: String = row.try_get("outcome")?;
                        crate::Outcome::parse(&text)
                            .ok_or_else(|| crate::StoreError::Invalid(format!("unknown outcome {text:?}")))?
                    },
                    error_class: row.try_get("error_class")?,
                    stream: row.try_get::<i64, _>("stream")? != 0,
                    attempts: serde_json::from_str(&attempts)
                        .map_err(|e| crate::StoreError::Invalid(format!("attempts: {e}")))?,
                    ttft_ms: row.try_get("ttft_ms")?,
                    latency_ms: row.try_get("latency_ms")?,
                    tokens_in: crate::sql::to_u64(row.try_get("tokens_in")?),
                    tokens_out: crate::sql::to_u64(row.try_get("tokens_out")?),
                    tokens_cached: crate::sql::to_u64(row.try_get("tokens_cached")?),
                    cost_usd: row.try_get("cost_usd")?,
                    cache: {
                        let text: Option<String> = row.try_get("cache")?;
                        match text {
                            Some(t) => Some(
                                crate::CacheStatus::parse(&t)
                                    .ok_or_else(|| crate::StoreError::Invalid(format!("unknown cache status {t:?}")))?,
                            ),
                            None => None,
                        }
                    },
                    request_body: row.try_get("request_body")?,
                    response_body: row.try_get("response_body")?,
                    metadata: serde_json::from_str(&metadata)
                        .map_err(|e| crate::StoreError::Invalid(format!("metadata: {e}")))?,
                    template: row.try_get("template")?,
                    template_version: row.try_get("template_version")?,
                    routing: {
                        let router: Option<String> = row.try_get("router")?;
                        match router {
                            Some(router) => Some(crate::Routing {
                                router,
                                to: row.try_get::<Option<String>, _>("routed_to")?.unwrap_or_default(),
                                reason: row.try_get::<Option<String>, _>("route_reason")?.unwrap_or_default(),
                                escalations: row
                                    .try_get::<Option<i64>, _>("escalations")?
                                    .and_then(|n| u32::try_from(n).ok())
                                    .unwrap_or(0),
                            }),
                            None => None,
                        }
                    },
                })
            }

            /// A `keys` row.
            fn key_row(row: &<$db as sqlx::Database>::Row) -> Result<crate::KeyRecord, crate::StoreError> {
                use sqlx::Row;
                let models: String = row.try_get("models")?;
                Ok(crate::KeyRecord {
                    id: row.try_get("id")?,
                    name: row.try_get("name")?,
                    hash: row.try_get("hash")?,
                    prefix: row.try_get("prefix")?,
                    tenant: row.try_get("tenant")?,
                    created_ms: row.try_get("created_ms")?,
                    revoked_ms: row.try_get("revoked_ms")?,
                    models: serde_json::from_str(&models)
                        .map_err(|e| crate::StoreError::Invalid(format!("key models: {e}")))?,
                    budget_daily_usd: row.try_get("budget_daily_usd")?,
                    budget_monthly_usd: row.try_get("budget_monthly_usd")?,
                    rpm: row.try_get::<Option<i64>, _>("rpm")?.map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
                    tpm: crate::sql::to_u64(row.try_get("tpm")?),
                })
            }
        }

        impl crate::LogStore for $store {
            fn insert<'a>(
                &'a self,
                rows: &'a [crate::Record],
            ) -> futures::future::BoxFuture<'a, Result<u64, crate::StoreError>> {
                Box::pin(async move {
                    use crate::sql::to_i64;
                    if rows.is_empty() {
                        return Ok(0);
                    }
                    let mut tx = self.pool.begin().await?;
                    let mut inserted = 0;
                    let mut rollup = crate::dashboard::Rollup::default();
                    // Bounded statement size: SQLite allows 32,766 parameters, 30 per row.
                    for chunk in rows.chunks(500) {
                        let mut qb =
                            sqlx::QueryBuilder::<$db>::new(format!("INSERT INTO requests ({}) ", crate::sql::COLUMNS));
                        qb.push_values(chunk, |mut b, r| {
                            b.push_bind(r.id.clone())
                                .push_bind(r.ts_ms)
                                .push_bind(r.key_id.clone())
                                .push_bind(r.tenant.clone())
                                .push_bind(r.api.clone())
                                .push_bind(r.endpoint.clone())
                                .push_bind(r.model_requested.clone())
                                .push_bind(r.model_served.clone())
                                .push_bind(i64::from(r.status))
                                .push_bind(r.outcome.as_str())
                                .push_bind(r.error_class.clone())
                                .push_bind(i64::from(r.stream))
                                .push_bind(serde_json::to_string(&r.attempts).unwrap_or_else(|_| "[]".into()))
                                .push_bind(r.ttft_ms)
                                .push_bind(r.latency_ms)
                                .push_bind(to_i64(r.tokens_in))
                                .push_bind(to_i64(r.tokens_out))
                                .push_bind(to_i64(r.tokens_cached))
                                .push_bind(r.cost_usd)
                                .push_bind(r.cache.map(crate::CacheStatus::as_str))
                                .push_bind(r.request_body.clone())
                                .push_bind(r.response_body.clone())
                                .push_bind(r.metadata.to_string())
                                .push_bind(r.client_request_id.clone())
                                .push_bind(r.template.clone())
                                .push_bind(r.template_version.clone())
                                .push_bind(r.routing.as_ref().map(|x| x.router.clone()))
                                .push_bind(r.routing.as_ref().map(|x| x.to.clone()))
                                .push_bind(r.routing.as_ref().map(|x| x.reason.clone()))
                                .push_bind(r.routing.as_ref().map(|x| i64::from(x.escalations)));
                        });
                        // The rows really inserted (a row already there, a batch retried, is not counted twice).
                        qb.push(" ON CONFLICT (id) DO NOTHING RETURNING id");
                        let ids: std::collections::HashSet<String> = {
                            use sqlx::Row;
                            let rows = qb.build().fetch_all(&mut *tx).await?;
                            rows.iter().map(|r| r.try_get::<String, _>("id")).collect::<Result<_, _>>()?
                        };
                        inserted += ids.len() as u64;
                        for r in chunk.iter().filter(|r| ids.contains(&r.id)) {
                            rollup.add(r);
                        }
                    }
                    // The dashboard's rollups, in the same transaction: they always agree with the rows.
                    let main: Vec<_> = rollup.main.into_iter().collect();
                    for chunk in main.chunks(500) {
                        let mut qb = sqlx::QueryBuilder::<$db>::new(
                            "INSERT INTO request_rollups (dim, hour_ms, name, requests, errors, tokens_in, \
                             tokens_out, cost_usd, cache_lookups, cache_hits, saved_usd, fallbacks, latency_sum_ms) ",
                        );
                        qb.push_values(chunk, |mut b, ((dim, hour, name), s)| {
                            b.push_bind(*dim)
                                .push_bind(*hour)
                                .push_bind(name.clone())
                                .push_bind(s.requests)
                                .push_bind(s.errors)
                                .push_bind(s.tokens_in)
                                .push_bind(s.tokens_out)
                                .push_bind(s.cost_usd)
                                .push_bind(s.cache_lookups)
                                .push_bind(s.cache_hits)
                                .push_bind(s.saved_usd)
                                .push_bind(s.fallbacks)
                                .push_bind(s.latency_sum_ms);
                        });
                        qb.push(
                            " ON CONFLICT (dim, hour_ms, name) DO UPDATE SET \
                             requests = request_rollups.requests + excluded.requests, \
                             errors = request_rollups.errors + excluded.errors, \
                             tokens_in = request_rollups.tokens_in + excluded.tokens_in, \
                             tokens_out = request_rollups.tokens_out + excluded.tokens_out, \
                             cost_usd = request_rollups.cost_usd + excluded.cost_usd, \
                             cache_lookups = request_rollups.cache_lookups + excluded.cache_lookups, \
                             cache_hits = request_rollups.cache_hits + excluded.cache_hits, \
                             saved_usd = request_rollups.saved_usd + excluded.saved_usd, \
                             fallbacks = request_rollups.fallbacks + excluded.fallbacks, \
                             latency_sum_ms = request_rollups.latency_sum_ms + excluded.latency_sum_ms",
                        );
                        qb.build().execute(&mut *tx).await?;
                    }
                    let hist: Vec<_> = rollup.hist.into_iter().collect();
                    for chunk in hist.chunks(2000) {
                        let mut qb =
                            sqlx::QueryBuilder::<$db>::new("INSERT INTO latency_rollups (hour_ms, kind, bucket, n) ");
                        qb.push_values(chunk, |mut b, ((hour, kind, bucket), n)| {
                            b.push_bind(*hour).push_bind(*kind).push_bind(*bucket).push_bind(*n);
                        });
                        qb.push(" ON CONFLICT (hour_ms, kind, bucket) DO UPDATE SET n = latency_rollups.n + excluded.n");
                        qb.build().execute(&mut *tx).await?;
                    }
                    let guards: Vec<_> = rollup.guards.into_iter().collect();
                    for chunk in guards.chunks(2000) {
                        let mut qb =
                            sqlx::QueryBuilder::<$db>::new("INSERT INTO guard_rollups (hour_ms, guard, action, n) ");
                        qb.push_values(chunk, |mut b, ((hour, guard, action), n)| {
                            b.push_bind(*hour).push_bind(guard.clone()).push_bind(action.clone()).push_bind(*n);
                        });
                        qb.push(" ON CONFLICT (hour_ms, guard, action) DO UPDATE SET n = guard_rollups.n + excluded.n");
                        qb.build().execute(&mut *tx).await?;
                    }
                    tx.commit().await?;
                    Ok(inserted)
                })
            }

            fn query<'a>(
                &'a self,
                q: &'a crate::Query,
            ) -> futures::future::BoxFuture<'a, Result<Vec<crate::Record>, crate::StoreError>> {
                Box::pin(async move {
                    let mut qb = sqlx::QueryBuilder::<$db>::new(format!(
                        "SELECT {} FROM requests WHERE 1 = 1",
                        crate::sql::COLUMNS
                    ));
                    if let Some(v) = &q.id {
                        qb.push(" AND (id = ").push_bind(v.clone());
                        qb.push(" OR client_request_id = ").push_bind(v.clone()).push(")");
                    }
                    if let Some(v) = &q.key_id {
                        qb.push(" AND key_id = ").push_bind(v.clone());
                    }
                    if let Some(v) = &q.model {
                        qb.push(" AND (model_requested = ").push_bind(v.clone());
                        qb.push(" OR model_served = ").push_bind(v.clone());
                        // The name is a pattern's literal: `%` and `_` in it match only themselves.
                        qb.push(" OR model_served LIKE ")
                            .push_bind(format!("%/{}", crate::sql::like_literal(v)))
                            .push(" ESCAPE '\\')");
                    }
                    if let Some(v) = &q.template {
                        qb.push(" AND template = ").push_bind(v.clone());
                    }
                    if let Some(v) = &q.router {
                        qb.push(" AND router = ").push_bind(v.clone());
                    }
                    if let Some(v) = q.status {
                        qb.push(" AND status = ").push_bind(i64::from(v));
                    }
                    if let Some(v) = q.outcome {
                        qb.push(" AND outcome = ").push_bind(v.as_str());
                    }
                    if let Some(v) = q.cache {
                        qb.push(" AND cache = ").push_bind(v.as_str());
                    }
                    if let Some(tag) = &q.tag {
                        { use $json as json; json::tag(&mut qb, tag) };
                    }
                    if let Some((key, value)) = &q.metadata {
                        { use $json as json; json::metadata(&mut qb, key, value) };
                    }
                    if let Some(v) = &q.text {
                        // A scan of the range's bodies (no full-text index): bounded by the time range and LIMIT.
                        let pattern = format!("%{}%", crate::sql::like_literal(&v.to_lowercase()));
                        qb.push(" AND (LOWER(request_body) LIKE ").push_bind(pattern.clone()).push(" ESCAPE '\\'");
                        qb.push(" OR LOWER(response_body) LIKE ").push_bind(pattern).push(" ESCAPE '\\')");
                    }
                    if let Some(v) = q.since_ms {
                        qb.push(" AND ts_ms >= ").push_bind(v);
                    }
                    if let Some(v) = q.until_ms {
                        qb.push(" AND ts_ms < ").push_bind(v);
                    }
                    qb.push(" ORDER BY ts_ms DESC, id DESC LIMIT ").push_bind(q.limit());
                    let rows = qb.build().fetch_all(&self.pool).await?;
                    rows.iter().map(Self::record_row).collect()
                })
            }

            fn purge_before(&self, ts_ms: i64) -> futures::future::BoxFuture<'_, Result<u64, crate::StoreError>> {
                Box::pin(async move {
                    let done =
                        sqlx::query("DELETE FROM requests WHERE ts_ms < $1").bind(ts_ms).execute(&self.pool).await?;
                    Ok(done.rows_affected())
                })
            }

            fn spend_since<'a>(
                &'a self,
                key_id: &'a str,
                since_ms: i64,
            ) -> futures::future::BoxFuture<'a, Result<f64, crate::StoreError>> {
                Box::pin(async move {
                    use sqlx::Row;
                    let row = sqlx::query(
                        "SELECT COALESCE(SUM(cost_usd), 0.0) AS spent FROM requests WHERE key_id = $1 AND ts_ms >= $2",
                    )
                    .bind(key_id.to_string())
                    .bind(since_ms)
                    .fetch_one(&self.pool)
                    .await?;
                    Ok(row.try_get::<f64, _>("spent")?)
                })
            }
        }

        impl crate::KeyStore for $store {
            fn create_key<'a>(
                &'a self,
                k: &'a crate::KeyRecord,
            ) -> futures::future::BoxFuture<'a, Result<(), crate::StoreError>> {
                Box::pin(async move {
                    sqlx::query(
                        "INSERT INTO keys (id, name, hash, prefix, tenant, created_ms, revoked_ms, models, \
                         budget_daily_usd, budget_monthly_usd, rpm, tpm) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                    )
                    .bind(k.id.clone())
                    .bind(k.name.clone())
                    .bind(k.hash.clone())
                    .bind(k.prefix.clone())
                    .bind(k.tenant.clone())
                    .bind(k.created_ms)
                    .bind(k.revoked_ms)
                    .bind(serde_json::to_string(&k.models).unwrap_or_else(|_| "[]".into()))
                    .bind(k.budget_daily_usd)
                    .bind(k.budget_monthly_usd)
                    .bind(k.rpm.map(i64::from))
                    .bind(crate::sql::to_i64(k.tpm))
                    .execute(&self.pool)
                    .await?;
                    Ok(())
                })
            }

            fn list_keys(&self) -> futures::future::BoxFuture<'_, Result<Vec<crate::KeyRecord>, crate::StoreError>> {
                Box::pin(async move {
                    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "SELECT {} FROM keys ORDER BY created_ms DESC, id",
                        crate::sql::KEY_COLUMNS
                    )))
                    .fetch_all(&self.pool)
                    .await?;
                    rows.iter().map(Self::key_row).collect()
                })
            }

            fn revoke_key<'a>(
                &'a self,
                id: &'a str,
                at_ms: i64,
            ) -> futures::future::BoxFuture<'a, Result<bool, crate::StoreError>> {
                Box::pin(async move {
                    let done = sqlx::query("UPDATE keys SET revoked_ms = $1 WHERE id = $2 AND revoked_ms IS NULL")
                        .bind(at_ms)
                        .bind(id.to_string())
                        .execute(&self.pool)
                        .await?;
                    Ok(done.rows_affected() == 1)
                })
            }

            fn key_by_hash<'a>(
                &'a self,
                hash: &'a str,
            ) -> futures::future::BoxFuture<'a, Result<Option<crate::KeyRecord>, crate::StoreError>> {
                Box::pin(async move {
                    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "SELECT {} FROM keys WHERE hash = $1",
                        crate::sql::KEY_COLUMNS
                    )))
                    .bind(hash.to_string())
                    .fetch_optional(&self.pool)
                    .await?;
                    row.as_ref().map(Self::key_row).transpose()
                })
            }
        }

        impl crate::CacheStore for $store {
            fn cache_put<'a>(
                &'a self,
                r: &'a crate::SemanticRow,
            ) -> futures::future::BoxFuture<'a, Result<(), crate::StoreError>> {
                Box::pin(async move {
                    sqlx::query(
                        "INSERT INTO semantic_cache (id, scope, created_ms, expires_ms, turns, vectors, answer) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING",
                    )
                    .bind(r.id)
                    .bind(r.scope.clone())
                    .bind(r.created_ms)
                    .bind(r.expires_ms)
                    .bind(r.turns.clone())
                    .bind(r.vectors.clone())
                    .bind(r.answer.clone())
                    .execute(&self.pool)
                    .await?;
                    Ok(())
                })
            }

            fn cache_load(
                &self,
                now_ms: i64,
            ) -> futures::future::BoxFuture<'_, Result<Vec<crate::SemanticRow>, crate::StoreError>> {
                Box::pin(async move {
                    use sqlx::Row;
                    let rows = sqlx::query(
                        "SELECT id, scope, created_ms, expires_ms, turns, vectors, answer FROM semantic_cache \
                         WHERE expires_ms > $1 ORDER BY created_ms, id",
                    )
                    .bind(now_ms)
                    .fetch_all(&self.pool)
                    .await?;
                    rows.iter()
                        .map(|row| {
                            Ok(crate::SemanticRow {
                                id: row.try_get("id")?,
                                scope: row.try_get("scope")?,
                                created_ms: row.try_get("created_ms")?,
                                expires_ms: row.try_get("expires_ms")?,
                                turns: row.try_get("turns")?,
                                vectors: row.try_get("vectors")?,
                                answer: row.try_get("answer")?,
                            })
                        })
                        .collect()
                })
            }

            fn cache_delete<'a>(
                &'a self,
                ids: &'a [i64],
            ) -> futures::future::BoxFuture<'a, Result<u64, crate::StoreError>> {
                Box::pin(async move {
                    let mut tx = self.pool.begin().await?;
                    let mut n = 0;
                    for id in ids {
                        n += sqlx::query("DELETE FROM semantic_cache WHERE id = $1")
                            .bind(*id)
                            .execute(&mut *tx)
                            .await?
                            .rows_affected();
                    }
                    tx.commit().await?;
                    Ok(n)
                })
            }

            fn cache_purge(&self, now_ms: i64) -> futures::future::BoxFuture<'_, Result<u64, crate::StoreError>> {
                Box::pin(async move {
                    let done = sqlx::query("DELETE FROM semantic_cache WHERE expires_ms <= $1")
                        .bind(now_ms)
                        .execute(&self.pool)
                        .await?;
                    Ok(done.rows_affected())
                })
            }
        }

        impl crate::Store for $store {
            fn backend(&self) -> &'static str {
                <$store>::BACKEND
            }
        }
    };
}

pub(crate) use store_impl;

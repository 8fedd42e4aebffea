//! Budget and rate counters, exact under concurrency.
//!
//! Budgets: before a request is sent, its worst-case cost (prompt tokens at the input price plus `max_tokens`
//! at the output price of the dearest target it may reach) is reserved against the key's day and month, in one
//! atomic step that admits it only if spent + reserved + this estimate stays within every budget. When the
//! request ends, the reservation is replaced by the real cost. So however many clients share a key, admitted
//! work never exceeds the budget by more than what the estimates under-counted.
//!
//! Rates: requests per minute are counted at admission; tokens per minute after the fact (a request is admitted
//! while the minute's tokens are under the limit), in fixed one-minute windows.
//!
//! Two implementations with the same semantics: in-process (one keel) and Redis (Lua scripts, several keels).
//! A period's spend starts from the request log's sum, so a restart does not reset budgets.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use keel_store::{KeyRecord, LogStore};

use crate::{LimitsError, Periods, to_nano};

/// The decision on one request.
#[derive(Debug)]
pub enum Admission {
    Admitted(Reservation),
    /// Refused: by which limit, a message for the client, and when trying again can succeed.
    Denied {
        limit: Limit,
        reason: String,
        retry_after: Duration,
    },
}

/// The limit that refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Requests per minute.
    Rpm,
    /// Tokens per minute.
    Tpm,
    DailyBudget,
    MonthlyBudget,
}

impl Limit {
    /// A budget (as opposed to a rate): a refusal may be re-checked with an exact, smaller estimate.
    pub fn is_budget(self) -> bool {
        matches!(self, Limit::DailyBudget | Limit::MonthlyBudget)
    }
}

/// What an admitted request holds until it ends.
#[derive(Debug, Clone)]
pub struct Reservation {
    pub key_id: String,
    /// Budget windows reserved against (`d2026-11-27`, `m2026-11`).
    pub windows: Vec<String>,
    pub estimate_nano: i64,
    pub minute: i64,
    /// Whether tokens count against a per-minute limit.
    pub counts_tokens: bool,
}

impl Reservation {
    fn new(key: &KeyRecord, windows: Vec<Window>, estimate_nano: i64, minute: i64) -> Self {
        Self {
            key_id: key.id.clone(),
            windows: windows.into_iter().map(|w| w.id).collect(),
            estimate_nano,
            minute,
            counts_tokens: key.tpm.is_some(),
        }
    }
}

/// One budget window to check at admission.
#[derive(Debug, Clone)]
struct Window {
    id: String,
    limit: Limit,
    limit_nano: i64,
    start_ms: i64,
    end_ms: i64,
}

/// Budget and rate counters.
pub trait Counters: Send + Sync + 'static {
    /// Admits or refuses a request of `key` whose worst-case cost is `estimate_usd`.
    fn admit<'a>(
        &'a self,
        key: &'a KeyRecord,
        estimate_usd: f64,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<Admission, LimitsError>>;

    /// The request ended: its real cost and tokens replace the reservation.
    fn settle<'a>(&'a self, r: &'a Reservation, cost_usd: f64, tokens: u64) -> BoxFuture<'a, Result<(), LimitsError>>;

    /// What a key has spent (settled) in the current day and month, in USD.
    fn spent<'a>(&'a self, key: &'a KeyRecord, now_ms: i64) -> BoxFuture<'a, Result<(f64, f64), LimitsError>>;
}

fn windows(key: &KeyRecord, p: &Periods) -> Vec<Window> {
    let mut out = Vec::new();
    if let Some(b) = key.budget_daily_usd {
        out.push(Window {
            id: p.day.clone(),
            limit: Limit::DailyBudget,
            limit_nano: to_nano(b),
            start_ms: p.day_start_ms,
            end_ms: p.day_end_ms,
        });
    }
    if let Some(b) = key.budget_monthly_usd {
        out.push(Window {
            id: p.month.clone(),
            limit: Limit::MonthlyBudget,
            limit_nano: to_nano(b),
            start_ms: p.month_start_ms,
            end_ms: p.month_end_ms,
        });
    }
    out
}

fn retry_after(now_ms: i64, end_ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(end_ms - now_ms).unwrap_or(0).max(1000))
}

/// In-process counters: one keel instance (several instances need Redis to share them).
///
/// The state sits behind a plain mutex held only for in-memory arithmetic, never across an await: a window's
/// first request reads the log's spend before taking the lock, so one slow query never stalls every other key.
pub struct LocalCounters {
    store: Arc<dyn LogStore>,
    state: Mutex<LocalState>,
}

#[derive(Default)]
struct LocalState {
    /// (key, window) -> (spent, reserved) in nano-dollars.
    budgets: HashMap<(String, String), (i64, i64)>,
    /// (key, minute) -> (requests, tokens).
    rates: HashMap<(String, i64), (u64, u64)>,
}

impl LocalCounters {
    pub fn new(store: Arc<dyn LogStore>) -> Self {
        Self { store, state: Mutex::new(LocalState::default()) }
    }
}

impl Counters for LocalCounters {
    fn admit<'a>(
        &'a self,
        key: &'a KeyRecord,
        estimate_usd: f64,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<Admission, LimitsError>> {
        Box::pin(async move {
            let p = Periods::at(now_ms);
            let wins = windows(key, &p);
            let estimate = to_nano(estimate_usd);
            // Seeding: a window this process has not counted yet starts from the log's sum, read without the
            // lock. Two first requests may both read it; the first to insert wins and the other's read is
            // dropped (both read the same log, before any reservation of this process existed).
            let missing: Vec<&Window> = {
                let st = self.state.lock().map_err(|_| poisoned())?;
                wins.iter().filter(|w| !st.budgets.contains_key(&(key.id.clone(), w.id.clone()))).collect()
            };
            let mut seeds = Vec::with_capacity(missing.len());
            for w in missing {
                seeds.push((w.id.clone(), to_nano(self.store.spend_since(&key.id, w.start_ms).await?)));
            }
            // One lock over check-and-reserve: the atomic step.
            let mut st = self.state.lock().map_err(|_| poisoned())?;
            if !seeds.is_empty() {
                // A new window: windows of past days and months are dropped, so the map holds at most two per
                // key (a reservation from before midnight settles against nothing, which is right).
                st.budgets.retain(|(_, w), _| *w == p.day || *w == p.month);
            }
            for (window, seed) in seeds {
                st.budgets.entry((key.id.clone(), window)).or_insert((seed, 0));
            }
            st.rates.retain(|(_, minute), _| *minute >= p.minute - 1);
            let rate = st.rates.get(&(key.id.clone(), p.minute)).copied().unwrap_or((0, 0));
            if key.rpm.is_some_and(|rpm| rate.0 >= u64::from(rpm)) {
                return Ok(rate_denied(Limit::Rpm, key, now_ms, &p));
            }
            if key.tpm.is_some_and(|tpm| rate.1 >= tpm) {
                return Ok(rate_denied(Limit::Tpm, key, now_ms, &p));
            }
            for w in &wins {
                let (spent, reserved) = st.budgets.get(&(key.id.clone(), w.id.clone())).copied().unwrap_or((0, 0));
                if spent.saturating_add(reserved).saturating_add(estimate) > w.limit_nano {
                    return Ok(budget_denied(w, spent, now_ms));
                }
            }
            for w in &wins {
                if let Some(v) = st.budgets.get_mut(&(key.id.clone(), w.id.clone())) {
                    v.1 += estimate;
                }
            }
            st.rates.entry((key.id.clone(), p.minute)).or_default().0 += 1;
            Ok(Admission::Admitted(Reservation::new(key, wins, estimate, p.minute)))
        })
    }

    fn settle<'a>(&'a self, r: &'a Reservation, cost_usd: f64, tokens: u64) -> BoxFuture<'a, Result<(), LimitsError>> {
        Box::pin(async move {
            let actual = to_nano(cost_usd);
            let mut st = self.state.lock().map_err(|_| poisoned())?;
            for w in &r.windows {
                if let Some(v) = st.budgets.get_mut(&(r.key_id.clone(), w.clone())) {
                    v.1 -= r.estimate_nano;
                    v.0 += actual;
                }
            }
            if r.counts_tokens
                && let Some(v) = st.rates.get_mut(&(r.key_id.clone(), r.minute))
            {
                v.1 += tokens;
            }
            Ok(())
        })
    }

    fn spent<'a>(&'a self, key: &'a KeyRecord, now_ms: i64) -> BoxFuture<'a, Result<(f64, f64), LimitsError>> {
        Box::pin(async move {
            let p = Periods::at(now_ms);
            let (day, month) = {
                let st = self.state.lock().map_err(|_| poisoned())?;
                let get = |w: &str| st.budgets.get(&(key.id.clone(), w.to_string())).map(|v| crate::from_nano(v.0));
                (get(&p.day), get(&p.month))
            };
            let day = match day {
                Some(d) => d,
                None => self.store.spend_since(&key.id, p.day_start_ms).await?,
            };
            let month = match month {
                Some(m) => m,
                None => self.store.spend_since(&key.id, p.month_start_ms).await?,
            };
            Ok((day, month))
        })
    }
}

fn poisoned() -> LimitsError {
    LimitsError::Poisoned
}

/// A refusal by a per-minute limit, until the minute ends.
fn rate_denied(limit: Limit, key: &KeyRecord, now_ms: i64, p: &Periods) -> Admission {
    let reason = match limit {
        Limit::Tpm => format!("rate limit: {} tokens per minute", key.tpm.unwrap_or(0)),
        _ => format!("rate limit: {} requests per minute", key.rpm.unwrap_or(0)),
    };
    Admission::Denied { limit, reason, retry_after: retry_after(now_ms, p.minute_end_ms) }
}

/// A refusal by a budget window, until it ends.
fn budget_denied(w: &Window, spent: i64, now_ms: i64) -> Admission {
    let kind = if w.limit == Limit::DailyBudget { "daily" } else { "monthly" };
    let reason = format!(
        "{kind} budget of ${:.2} reached (spent ${:.4}, plus requests in flight)",
        crate::from_nano(w.limit_nano),
        crate::from_nano(spent)
    );
    Admission::Denied { limit: w.limit, reason, retry_after: retry_after(now_ms, w.end_ms) }
}

/// Counters in Redis, shared by every keel instance pointing at it. Each decision is one Lua script, so it is
/// atomic across instances.
pub struct RedisCounters {
    store: Arc<dyn LogStore>,
    conn: redis::aio::ConnectionManager,
    admit: redis::Script,
    settle: redis::Script,
    prefix: String,
    /// Windows whose Redis counters this process knows exist (seeding reads the log only once).
    seeded: Mutex<std::collections::HashSet<String>>,
}

/// KEYS: budget hashes (fields spent, reserved), then the rate hash (fields n, tokens).
/// ARGV: estimate, rpm (0: none), tpm (0: none), rate ttl, then per budget: limit, seed (-1: not read; a
/// missing window is then reported instead of created), ttl.
/// Returns {1} admitted, {0, "rpm"|"tpm"}, {0, "budget", index, spent}, or {2, "seed"}: a window is missing
/// and no seed was given (Redis lost it: restarted, flushed, failed over), so the caller reads the log's spend
/// and asks again.
const ADMIT: &str = r#"
local est = tonumber(ARGV[1])
local rpm = tonumber(ARGV[2])
local tpm = tonumber(ARGV[3])
local nb = #KEYS - 1
local rate = KEYS[#KEYS]
for i = 1, nb do
  local base = 4 + (i - 1) * 3
  if tonumber(ARGV[base + 2]) < 0 and redis.call('EXISTS', KEYS[i]) == 0 then return {2, 'seed'} end
end
for i = 1, nb do
  local k = KEYS[i]
  local base = 4 + (i - 1) * 3
  if redis.call('EXISTS', k) == 0 then
    redis.call('HSET', k, 'spent', ARGV[base + 2], 'reserved', 0)
    redis.call('EXPIRE', k, tonumber(ARGV[base + 3]))
  end
end
local n = tonumber(redis.call('HGET', rate, 'n') or '0')
local used = tonumber(redis.call('HGET', rate, 'tokens') or '0')
if rpm > 0 and n >= rpm then return {0, 'rpm'} end
if tpm > 0 and used >= tpm then return {0, 'tpm'} end
for i = 1, nb do
  local k = KEYS[i]
  local limit = tonumber(ARGV[4 + (i - 1) * 3 + 1])
  local spent = tonumber(redis.call('HGET', k, 'spent'))
  local reserved = tonumber(redis.call('HGET', k, 'reserved'))
  if spent + reserved + est > limit then return {0, 'budget', i, spent} end
end
for i = 1, nb do redis.call('HINCRBY', KEYS[i], 'reserved', est) end
redis.call('HINCRBY', rate, 'n', 1)
redis.call('EXPIRE', rate, tonumber(ARGV[4]))
return {1}
"#;

/// KEYS: budget hashes, then the rate hash. ARGV: estimate, actual, tokens.
const SETTLE: &str = r#"
local nb = #KEYS - 1
for i = 1, nb do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('HINCRBY', KEYS[i], 'reserved', -tonumber(ARGV[1]))
    redis.call('HINCRBY', KEYS[i], 'spent', tonumber(ARGV[2]))
  end
end
if tonumber(ARGV[3]) > 0 and redis.call('EXISTS', KEYS[#KEYS]) == 1 then
  redis.call('HINCRBY', KEYS[#KEYS], 'tokens', tonumber(ARGV[3]))
end
return 1
"#;

/// The most time one Redis call may take: past it the counters count as unreachable (a request does not hang
/// on a partitioned Redis; what it gets then is `[auth] on_counters_error`).
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

async fn within<T>(call: impl Future<Output = redis::RedisResult<T>>) -> Result<T, LimitsError> {
    match tokio::time::timeout(REDIS_TIMEOUT, call).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(LimitsError::Timeout(REDIS_TIMEOUT)),
    }
}

impl RedisCounters {
    pub async fn connect(url: &str, store: Arc<dyn LogStore>) -> Result<Self, LimitsError> {
        Self::connect_with_prefix(url, store, "keel").await
    }

    /// With a key prefix of one's own (tests share one Redis).
    pub async fn connect_with_prefix(url: &str, store: Arc<dyn LogStore>, prefix: &str) -> Result<Self, LimitsError> {
        let client = redis::Client::open(url)?;
        // The client's own response timeout (500 ms by default) would cut under REDIS_TIMEOUT: a Redis that
        // stalls for a second (a fork for a snapshot, a busy machine) refused requests it should have admitted.
        let config = redis::aio::ConnectionManagerConfig::new().set_response_timeout(Some(REDIS_TIMEOUT));
        let conn = redis::aio::ConnectionManager::new_with_config(client, config).await?;
        Ok(Self {
            store,
            conn,
            admit: redis::Script::new(ADMIT),
            settle: redis::Script::new(SETTLE),
            prefix: prefix.to_string(),
            seeded: Mutex::new(std::collections::HashSet::new()),
        })
    }

    fn budget_key(&self, key_id: &str, window: &str) -> String {
        format!("{}:budget:{key_id}:{window}", self.prefix)
    }

    fn rate_key(&self, key_id: &str, minute: i64) -> String {
        format!("{}:rate:{key_id}:{minute}", self.prefix)
    }
}

impl Counters for RedisCounters {
    fn admit<'a>(
        &'a self,
        key: &'a KeyRecord,
        estimate_usd: f64,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<Admission, LimitsError>> {
        Box::pin(async move {
            let p = Periods::at(now_ms);
            let wins = windows(key, &p);
            let estimate = to_nano(estimate_usd);
            // At most twice: the second time with every window's seed read from the log, after Redis said it
            // had lost a window this process thought it held.
            let mut reseed = false;
            let out = loop {
                let mut inv = self.admit.prepare_invoke();
                let mut args: Vec<i64> = vec![
                    estimate,
                    key.rpm.map_or(0, i64::from),
                    key.tpm.map_or(0, |t| i64::try_from(t).unwrap_or(i64::MAX)),
                    120,
                ];
                for w in &wins {
                    let rkey = self.budget_key(&key.id, &w.id);
                    // The log's sum seeds a window Redis does not hold yet (first use, or Redis lost it); reading
                    // it costs a query, so only until this process has seen the window exist, and again when the
                    // script says it is gone.
                    let known = !reseed && self.seeded.lock().map(|s| s.contains(&rkey)).unwrap_or(false);
                    let seed = if known { -1 } else { to_nano(self.store.spend_since(&key.id, w.start_ms).await?) };
                    let ttl = (w.end_ms - now_ms) / 1000 + 86_400;
                    inv.key(rkey);
                    args.extend([w.limit_nano, seed, ttl]);
                }
                inv.key(self.rate_key(&key.id, p.minute));
                for a in &args {
                    inv.arg(*a);
                }
                let mut conn = self.conn.clone();
                let out: Vec<redis::Value> = within(inv.invoke_async(&mut conn)).await?;
                if matches!(out.first(), Some(redis::Value::Int(2))) && !reseed {
                    tracing::warn!(key = %key.id, "budget windows missing from Redis: seeding them again from the log");
                    reseed = true;
                    continue;
                }
                break out;
            };
            if let Ok(mut s) = self.seeded.lock() {
                for w in &wins {
                    s.insert(self.budget_key(&key.id, &w.id));
                }
            }
            let admitted = matches!(out.first(), Some(redis::Value::Int(1)));
            if admitted {
                return Ok(Admission::Admitted(Reservation::new(key, wins, estimate, p.minute)));
            }
            // The script's answer names the limit in its own protocol (see ADMIT), read once here.
            let what: String = out.get(1).and_then(|v| redis::from_redis_value(v.clone()).ok()).unwrap_or_default();
            let denied = match what.as_str() {
                "rpm" => rate_denied(Limit::Rpm, key, now_ms, &p),
                "tpm" => rate_denied(Limit::Tpm, key, now_ms, &p),
                _ => {
                    let i: usize = out.get(2).and_then(|v| redis::from_redis_value(v.clone()).ok()).unwrap_or(1);
                    let spent: i64 = out.get(3).and_then(|v| redis::from_redis_value(v.clone()).ok()).unwrap_or(0);
                    match wins.get(i.saturating_sub(1)) {
                        Some(w) => budget_denied(w, spent, now_ms),
                        None => Admission::Denied {
                            limit: Limit::DailyBudget,
                            reason: "budget reached".into(),
                            retry_after: Duration::from_secs(60),
                        },
                    }
                }
            };
            Ok(denied)
        })
    }

    fn settle<'a>(&'a self, r: &'a Reservation, cost_usd: f64, tokens: u64) -> BoxFuture<'a, Result<(), LimitsError>> {
        Box::pin(async move {
            let mut inv = self.settle.prepare_invoke();
            for w in &r.windows {
                inv.key(self.budget_key(&r.key_id, w));
            }
            inv.key(self.rate_key(&r.key_id, r.minute));
            let counted = if r.counts_tokens { i64::try_from(tokens).unwrap_or(i64::MAX) } else { 0 };
            inv.arg(r.estimate_nano).arg(to_nano(cost_usd)).arg(counted);
            let mut conn = self.conn.clone();
            let _: i64 = within(inv.invoke_async(&mut conn)).await?;
            Ok(())
        })
    }

    fn spent<'a>(&'a self, key: &'a KeyRecord, now_ms: i64) -> BoxFuture<'a, Result<(f64, f64), LimitsError>> {
        Box::pin(async move {
            let p = Periods::at(now_ms);
            let mut conn = self.conn.clone();
            let mut get = async |window: &str, start_ms: i64| -> Result<f64, LimitsError> {
                let v: Option<i64> = within(
                    redis::cmd("HGET").arg(self.budget_key(&key.id, window)).arg("spent").query_async(&mut conn),
                )
                .await?;
                match v {
                    Some(n) => Ok(crate::from_nano(n)),
                    None => Ok(self.store.spend_since(&key.id, start_ms).await?),
                }
            };
            let day = get(&p.day, p.day_start_ms).await?;
            let month = get(&p.month, p.month_start_ms).await?;
            Ok((day, month))
        })
    }
}

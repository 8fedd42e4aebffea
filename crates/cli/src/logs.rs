//! `keel logs`: the request log read back from the store, filtered, as a table or JSON lines.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use keel_store::{Query, Record};

use crate::LogsArgs;

pub(crate) async fn run(url: &str, args: &LogsArgs) -> anyhow::Result<()> {
    let store =
        keel_store::open(url).await.with_context(|| format!("opening the request log store {}", display_url(url)))?;
    let since_ms = args.since.as_deref().map(parse_since).transpose()?;
    let mut query = Query {
        key_id: args.key.clone(),
        model: args.model.clone(),
        status: args.status,
        outcome: args.outcome.map(|o| o.0),
        since_ms,
        limit: Some(args.limit),
        ..Query::default()
    };
    let mut rows = store.query(&query).await?;
    rows.reverse(); // oldest first on a terminal, like `tail`
    if !args.json {
        println!("{}", header());
    }
    let mut last_ts = keel_store::now_ms();
    for r in &rows {
        print_row(r, args.json)?;
    }
    if !args.follow {
        return Ok(());
    }
    // Rows are stamped when requests arrive and written when they finish, so each poll looks back a while (a
    // long request finishing now is not missed) and skips the ids it has already seen; what was already in the
    // log when following began counts as seen.
    const LOOK_BACK_MS: i64 = 600_000;
    query.limit = Some(10_000);
    query.since_ms = Some(last_ts - LOOK_BACK_MS);
    let mut seen: HashMap<String, i64> = store.query(&query).await?.into_iter().map(|r| (r.id, r.ts_ms)).collect();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        query.since_ms = Some(last_ts - LOOK_BACK_MS);
        let mut fresh = store.query(&query).await?;
        fresh.reverse();
        for r in fresh {
            if seen.insert(r.id.clone(), r.ts_ms).is_none() {
                print_row(&r, args.json)?;
                last_ts = last_ts.max(r.ts_ms);
            }
        }
        seen.retain(|_, ts| *ts >= last_ts - LOOK_BACK_MS);
    }
}

/// `15m`, `2h`, `7d` ago, or an RFC 3339 time, as milliseconds since the epoch.
pub(crate) fn parse_since(s: &str) -> anyhow::Result<i64> {
    let at = match humantime::parse_duration(s) {
        Ok(ago) => SystemTime::now().checked_sub(ago).unwrap_or(UNIX_EPOCH),
        Err(_) => humantime::parse_rfc3339_weak(s).with_context(|| {
            format!("--since {s:?}: expected a duration (15m, 2h, 7d) or a time (2026-11-27T10:00:00Z)")
        })?,
    };
    Ok(at.duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
}

fn header() -> String {
    format!(
        "{:<24} {:<36} {:>3} {:<19} {:<28} {:>9} {:>11} {:>10}",
        "time (UTC)", "id", "st", "outcome", "model → served", "ms", "tokens", "cost $"
    )
}

fn print_row(r: &Record, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(r)?);
        return Ok(());
    }
    let time = UNIX_EPOCH + Duration::from_millis(u64::try_from(r.ts_ms).unwrap_or(0));
    let model = match (&r.model_requested, &r.model_served) {
        (Some(m), Some(s)) => format!("{m} → {s}"),
        (Some(m), None) => m.clone(),
        _ => "-".into(),
    };
    let tokens = match (r.tokens_in, r.tokens_out) {
        (Some(i), Some(o)) => format!("{i}/{o}"),
        _ => "-".into(),
    };
    let cost = r.cost_usd.map_or_else(|| "-".into(), |c| format!("{c:.6}"));
    let outcome = match &r.error_class {
        Some(c) if r.outcome != keel_store::Outcome::Ok => format!("{}:{c}", r.outcome.as_str()),
        _ => r.outcome.as_str().to_string(),
    };
    println!(
        "{:<24} {:<36} {:>3} {:<19} {:<28} {:>9.1} {:>11} {:>10}",
        humantime::format_rfc3339_millis(time).to_string(),
        r.id,
        r.status,
        outcome,
        model,
        r.latency_ms,
        tokens,
        cost
    );
    Ok(())
}

/// A store URL without its password, for messages.
pub(crate) fn display_url(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.find(':') {
                Some(colon) => format!("{}{}:***{}", &url[..scheme + 3], &creds[..colon], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn passwords_are_hidden_in_messages() {
        assert_eq!(display_url("postgres://keel:s3cret@db:5432/keel"), "postgres://keel:***@db:5432/keel");
        assert_eq!(display_url("postgres://keel@db/keel"), "postgres://keel@db/keel");
        assert_eq!(display_url("sqlite:///var/lib/keel.db"), "sqlite:///var/lib/keel.db");
    }

    #[test]
    fn since_takes_durations_and_times() {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
        let t = parse_since("2h").unwrap();
        assert!((now - t - 7_200_000).abs() < 5_000);
        assert_eq!(parse_since("2026-11-27T10:00:00Z").unwrap(), 1_795_773_600_000);
        assert!(parse_since("yesterday").is_err());
    }
}

//! The web dashboard under `/ui`: server-rendered HTML (maud) with one embedded stylesheet and no script, so the
//! binary carries all of it, it works offline, pages paint at once and stay usable by keyboard and at any zoom.
//! Charts are inline SVG with their data as tables (`chart.rs`). Access is the admin key's: a login form sets a
//! signed, HTTP-only, `SameSite=Strict` session cookie (`session.rs`) and every form carries a CSRF token.
//! The collections pages (documents, chunks, a search showing each retriever's ranks) are in `collections.rs`.
//!
//! Server-rendered HTML rather than a front-end toolkit: the pages are lists, forms and small charts, which HTML
//! does natively; there is no bundle to build, pin or audit, and nothing in the binary but a few KB of CSS.

mod chart;
mod collections;
mod session;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde::Deserialize;

use crate::{AdminAccess, AppState};
use session::Signer;

const CSS: &str = include_str!("style.css");

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/ui", get(overview))
        .route("/ui/", get(overview))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/requests", get(requests))
        .route("/ui/requests/{id}", get(request))
        .route("/ui/keys", get(keys).post(create_key))
        .route("/ui/keys/{id}/revoke", post(revoke_key))
        .route("/ui/evals", get(evals))
        .route("/ui/evals/compare", get(compare))
        .route("/ui/evals/runs/{id}", get(eval_run))
        .route("/ui/collections", get(collections::list))
        .route("/ui/collections/{name}", get(collections::collection))
        .route("/ui/collections/{name}/document", get(collections::document))
}

// ------------------------------------------------------------------------------------------------- access

/// How the dashboard is entered: the admin key's, or open like `/admin/*` on a loopback-only listener.
enum Access {
    Key(Signer),
    Open(Signer),
    Closed,
}

fn access(app: &AppState) -> Access {
    match &app.inner.admin {
        AdminAccess::Key(k) => Access::Key(Signer::of(k.expose())),
        AdminAccess::OpenOnLoopback => {
            // No key to sign with: a secret of this process (forms it served stop working after a restart).
            static PROCESS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
            Access::Open(Signer::of(PROCESS.get_or_init(keel_limits::generate_secret)))
        }
        AdminAccess::Closed => Access::Closed,
    }
}

/// A signed-in page's CSRF token, and whether there is a session to end.
struct Session {
    csrf: String,
    signed_in: bool,
}

/// The session of a request, or the response that sends it to the login page.
fn session(app: &AppState, headers: &HeaderMap, here: &str) -> Result<Session, Box<Response>> {
    match access(app) {
        Access::Key(signer) => match session::cookie(headers) {
            Some(c) if signer.verify(&c, keel_store::now_ms()) => {
                Ok(Session { csrf: signer.csrf(&c), signed_in: true })
            }
            _ => Err(Box::new(Redirect::to(&format!("/ui/login?next={}", encode(here))).into_response())),
        },
        Access::Open(signer) => Ok(Session { csrf: signer.csrf("open"), signed_in: false }),
        Access::Closed => Err(Box::new(closed())),
    }
}

/// A state-changing form's CSRF token checked against the session; the refusal page otherwise.
fn check_csrf(app: &AppState, headers: &HeaderMap, token: &str) -> Result<(), Box<Response>> {
    let ok = match access(app) {
        Access::Key(signer) => session::cookie(headers)
            .is_some_and(|c| signer.verify(&c, keel_store::now_ms()) && signer.check_csrf(&c, token)),
        Access::Open(signer) => signer.check_csrf("open", token),
        Access::Closed => false,
    };
    if ok {
        Ok(())
    } else {
        Err(Box::new(message(
            StatusCode::FORBIDDEN,
            "Refused",
            "This form is out of date or did not come from this dashboard (its CSRF token does not match your session). Reload the page and try again.",
        )))
    }
}

fn closed() -> Response {
    message(
        StatusCode::FORBIDDEN,
        "Dashboard closed",
        "The dashboard needs the admin key: set KEEL_ADMIN_KEY (or [auth] admin_key_env) and restart keel.",
    )
}

fn message(status: StatusCode, title: &str, text: &str) -> Response {
    let body = layout(title, None, None, html! { h1 { (title) } p role="alert" { (text) } });
    (status, Html(body.into_string())).into_response()
}

#[derive(Deserialize)]
struct LoginForm {
    key: String,
    #[serde(default)]
    next: Option<String>,
}

#[derive(Deserialize, Default)]
struct Next {
    next: Option<String>,
}

async fn login_page(State(app): State<AppState>, Query(q): Query<Next>) -> Response {
    match access(&app) {
        Access::Key(_) => login_form(StatusCode::OK, q.next.as_deref(), None),
        Access::Open(_) => Redirect::to("/ui").into_response(),
        Access::Closed => closed(),
    }
}

fn login_form(status: StatusCode, next: Option<&str>, error: Option<&str>) -> Response {
    let body = layout(
        "Sign in",
        None,
        None,
        html! {
            h1 { "Sign in" }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            form.login method="post" action="/ui/login" {
                label for="key" { "Admin key" }
                input #key type="password" name="key" autocomplete="current-password" required autofocus;
                input type="hidden" name="next" value=(next.unwrap_or("/ui"));
                button type="submit" { "Sign in" }
            }
        },
    );
    (status, Html(body.into_string())).into_response()
}

async fn login(State(app): State<AppState>, headers: HeaderMap, Form(f): Form<LoginForm>) -> Response {
    let Access::Key(signer) = access(&app) else { return Redirect::to("/ui").into_response() };
    let AdminAccess::Key(key) = &app.inner.admin else { return closed() };
    if !crate::auth::same_secret(&f.key, key.expose()) {
        return login_form(StatusCode::UNAUTHORIZED, f.next.as_deref(), Some("Wrong admin key."));
    }
    // Only a path of the dashboard: never an open redirect.
    let next = f.next.filter(|n| n.starts_with("/ui") && !n.starts_with("//")).unwrap_or_else(|| "/ui".into());
    let cookie = session::set_cookie(&signer.issue(keel_store::now_ms()), &headers);
    ([(header::SET_COOKIE, cookie)], Redirect::to(&next)).into_response()
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(State(app): State<AppState>, headers: HeaderMap, Form(f): Form<CsrfForm>) -> Response {
    if let Err(r) = check_csrf(&app, &headers, &f.csrf) {
        return *r;
    }
    ([(header::SET_COOKIE, session::clear_cookie(&headers))], Redirect::to("/ui/login")).into_response()
}

// ------------------------------------------------------------------------------------------------- layout

#[derive(Clone, Copy, PartialEq)]
enum Tab {
    Overview,
    Requests,
    Keys,
    Evals,
    Collections,
}

fn layout(title: &str, session: Option<&Session>, tab: Option<Tab>, main: Markup) -> Markup {
    let link = |t: Tab, href: &str, text: &str| {
        html! { a href=(href) aria-current=[(tab == Some(t)).then_some("page")] { (text) } }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · keel" }
                style { (PreEscaped(CSS)) }
            }
            body {
                a.skip href="#main" { "Skip to content" }
                @if let Some(s) = session {
                    header {
                        span.brand { "keel" }
                        nav aria-label="Main" {
                            (link(Tab::Overview, "/ui", "Overview"))
                            (link(Tab::Requests, "/ui/requests", "Requests"))
                            (link(Tab::Keys, "/ui/keys", "Keys"))
                            (link(Tab::Evals, "/ui/evals", "Evaluations"))
                            (link(Tab::Collections, "/ui/collections", "Collections"))
                        }
                        @if s.signed_in {
                            form.logout method="post" action="/ui/logout" {
                                input type="hidden" name="csrf" value=(s.csrf);
                                button type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main #main { (main) }
            }
        }
    }
}

fn page(title: &str, s: &Session, tab: Tab, main: Markup) -> Response {
    let mut r = Html(layout(title, Some(s), Some(tab), main).into_string()).into_response();
    r.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    r
}

/// A signed-in page that reads the store: its session and the store, or the response that says why not.
fn signed_in_with_store<'a>(
    app: &'a AppState,
    headers: &HeaderMap,
    here: &str,
) -> Result<(Session, &'a Arc<dyn keel_store::Store>), Box<Response>> {
    Ok((session(app, headers, here)?, store(app)?))
}

fn store(app: &AppState) -> Result<&Arc<dyn keel_store::Store>, Box<Response>> {
    app.inner.dashboard.as_ref().ok_or_else(|| {
        Box::new(message(
            StatusCode::NOT_FOUND,
            "No store",
            "The dashboard reads keel's store: set [log] enabled = true.",
        ))
    })
}

fn failed(e: &keel_store::StoreError) -> Response {
    tracing::error!(error = %e, "dashboard: reading the store failed");
    message(StatusCode::SERVICE_UNAVAILABLE, "Store unavailable", "Reading keel's store failed; see keel's log.")
}

// ----------------------------------------------------------------------------------------------- overview

/// The ranges the pages offer: name, length, series bucket.
const RANGES: [(&str, i64, i64); 5] = [
    ("1h", 3_600_000, 300_000),
    ("24h", 86_400_000, 3_600_000),
    ("7d", 7 * 86_400_000, 86_400_000),
    ("30d", 30 * 86_400_000, 86_400_000),
    ("90d", 90 * 86_400_000, 86_400_000),
];

fn range_of(name: Option<&str>) -> (&'static str, keel_store::Range) {
    let (name, len, bucket) = RANGES.iter().copied().find(|r| Some(r.0) == name).unwrap_or(RANGES[1]);
    let now = keel_store::now_ms();
    // Buckets aligned to their width, so that a day is a UTC day.
    let since = (now - len) / bucket * bucket;
    (name, keel_store::Range { since_ms: since, until_ms: now + 1, bucket_ms: bucket })
}

fn range_nav(current: &str, path: &str) -> Markup {
    html! {
        nav.ranges aria-label="Range" {
            @for (name, _, _) in RANGES {
                a href=(format!("{path}?range={name}")) aria-current=[(name == current).then_some("page")] { (name) }
            }
        }
    }
}

#[derive(Deserialize, Default)]
struct RangeQuery {
    range: Option<String>,
}

async fn overview(State(app): State<AppState>, headers: HeaderMap, Query(q): Query<RangeQuery>) -> Response {
    let (s, store) = match signed_in_with_store(&app, &headers, "/ui") {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let (name, range) = range_of(q.range.as_deref());
    let o = match store.overview(range).await {
        Ok(o) => o,
        Err(e) => return failed(&e),
    };
    let quality = store
        .quality(&keel_store::QualityQuery {
            since_ms: Some(range.since_ms),
            until_ms: Some(range.until_ms),
            bucket_ms: Some(range.bucket_ms),
            ..keel_store::QualityQuery::default()
        })
        .await
        .unwrap_or_default();
    let t = &o.totals;
    let label = |ms: i64| time_label(ms, range.bucket_ms);
    // Every bucket of the range, the empty ones as zero (the database returns only buckets with requests).
    let by_start: HashMap<i64, &keel_store::Point> = o.series.iter().map(|p| (p.start_ms, p)).collect();
    let empty = keel_store::Point::default();
    let starts: Vec<i64> =
        (0..).map(|i| range.since_ms + i * range.bucket_ms).take_while(|t| *t < range.until_ms).take(1000).collect();
    let series = |f: fn(&keel_store::Point) -> f64| -> Vec<chart::Bar> {
        starts
            .iter()
            .map(|t| chart::Bar { label: label(*t), value: f(by_start.get(t).copied().unwrap_or(&empty)) })
            .collect()
    };
    let circuits = app.inner.breakers.states();
    let main = html! {
        h1 { "Overview" }
        (range_nav(name, "/ui"))
        dl.stats {
            (stat("Requests", "requests", &count(t.requests)))
            (stat("Error rate", "error_rate", &pct(ratio(t.errors, t.requests))))
            (stat("Latency p50", "latency_p50_ms", &ms(t.latency_p50_ms)))
            (stat("Latency p99", "latency_p99_ms", &ms(t.latency_p99_ms)))
            (stat("TTFT p50", "ttft_p50_ms", &ms(t.ttft_p50_ms)))
            (stat("Tokens", "tokens", &count(t.tokens_in + t.tokens_out)))
            (stat("Cost", "cost_usd", &usd(t.cost_usd)))
            (stat("Cache hit rate", "cache_hit_rate", &pct(ratio(t.cache_hits, t.cache_lookups))))
            (stat("Saved by cache", "saved_usd", &usd(t.saved_usd)))
            (stat("Retried or fell back", "fallbacks", &count(t.fallbacks)))
        }
        div.charts {
            (chart::bars("requests", "Requests", &series(|p| p.requests as f64), |v| count(v as u64)))
            (chart::bars("errors", "Errors", &series(|p| p.errors as f64), |v| count(v as u64)))
            (chart::bars("cost", "Cost", &series(|p| p.cost_usd), usd))
            (chart::bars("latency", "Mean latency", &series(|p| p.latency_avg_ms), |v| ms(Some(v))))
        }
        (groups("By model", "Model", &o.by_model, None))
        (groups("By key", "Key", &o.by_key, None))
        @if o.by_router.iter().any(|g| !g.name.is_empty()) {
            (groups("By router", "Router", &o.by_router, None))
        }
        section {
            h2 { "Guard verdicts" }
            @if o.guards.is_empty() { p { "No guard acted in this range." } } @else {
                table {
                    caption { "Guard verdicts" }
                    thead { tr { th scope="col" { "Guard" } th scope="col" { "Action" } th scope="col" { "Requests" } } }
                    tbody { @for g in &o.guards { tr { td { (g.guard) } td { (g.action) } td.num { (count(g.count)) } } } }
                }
            }
        }
        section {
            h2 { "Circuits" }
            @if circuits.is_empty() { p { "No upstream target." } } @else {
                table {
                    caption { "Circuits (this instance, now)" }
                    thead { tr { th scope="col" { "Target" } th scope="col" { "State" } th scope="col" { "Failures in window" } th scope="col" { "Times opened" } } }
                    tbody {
                        @for c in &circuits {
                            tr { td { (c.target) } td { span class=(format!("state {}", c.state)) { (c.state) } } td.num { (c.window_failures) "/" (c.window_requests) } td.num { (c.times_opened) } }
                        }
                    }
                }
            }
        }
        section {
            h2 { "Quality" }
            @if quality.is_empty() { p { "No feedback or evaluation scores in this range." } } @else {
                table {
                    caption { "Feedback and judge scores" }
                    thead { tr { th scope="col" { "Time" } th scope="col" { "Route" } th scope="col" { "Requests" } th scope="col" { "Feedback" } th scope="col" { "Positive" } th scope="col" { "Mean judge score" } } }
                    tbody {
                        @for q in &quality {
                            tr {
                                td { (label(q.bucket_ms)) }
                                td { (q.route.as_deref().unwrap_or("")) }
                                td.num { (count(q.requests)) }
                                td.num { (count(q.feedback)) }
                                td.num { (q.positive_rate().map(pct).unwrap_or_else(|| "—".into())) }
                                td.num { (q.eval_mean.map(|m| format!("{m:.2}")).unwrap_or_else(|| "—".into())) }
                            }
                        }
                    }
                }
            }
        }
    };
    page("Overview", &s, Tab::Overview, main)
}

fn stat(label: &str, key: &str, value: &str) -> Markup {
    html! { div { dt { (label) } dd data-stat=(key) { (value) } } }
}

fn groups(caption: &str, what: &str, rows: &[keel_store::Group], link: Option<&str>) -> Markup {
    html! {
        section {
            h2 { (caption) }
            @if rows.is_empty() { p { "No requests in this range." } } @else {
                table {
                    caption { (caption) }
                    thead { tr { th scope="col" { (what) } th scope="col" { "Requests" } th scope="col" { "Errors" } th scope="col" { "Tokens" } th scope="col" { "Cost" } th scope="col" { "Mean latency" } } }
                    tbody {
                        @for g in rows {
                            tr {
                                td {
                                    @if g.name.is_empty() { span.muted { "(none)" } }
                                    @else if let Some(l) = link { a href=(format!("{l}{}", encode(&g.name))) { (g.name) } }
                                    @else { (g.name) }
                                }
                                td.num { (count(g.requests)) }
                                td.num { (count(g.errors)) }
                                td.num { (count(g.tokens)) }
                                td.num { (usd(g.cost_usd)) }
                                td.num { (ms(Some(g.latency_avg_ms))) }
                            }
                        }
                    }
                }
            }
        }
    }
}

// ----------------------------------------------------------------------------------------------- requests

#[derive(Deserialize, Default)]
struct RequestFilter {
    range: Option<String>,
    model: Option<String>,
    key: Option<String>,
    status: Option<String>,
    outcome: Option<String>,
    cache: Option<String>,
    text: Option<String>,
    tag: Option<String>,
    /// `key=value` in the request's metadata.
    meta: Option<String>,
    /// Older than this (the last row of the previous page), in ms; text, so that a mangled link is refused on the
    /// page rather than by the query parser.
    before: Option<String>,
}

const PAGE_ROWS: u32 = 100;

async fn requests(State(app): State<AppState>, headers: HeaderMap, Query(f): Query<RequestFilter>) -> Response {
    let (s, store) = match signed_in_with_store(&app, &headers, "/ui/requests") {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let owned = |v: &Option<String>| given(v).map(str::to_string);
    let (name, range) = range_of(f.range.as_deref());
    let mut problems = Vec::new();
    let status =
        parsed(&f.status, |s| s.parse::<u16>().ok(), "Status must be an HTTP status code, such as 429.", &mut problems);
    let metadata = parsed(
        &f.meta,
        |m| m.split_once('=').map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).filter(|(k, _)| !k.is_empty()),
        "Metadata must be key=value, such as team=payments.",
        &mut problems,
    );
    let before = parsed(
        &f.before,
        |b| b.parse::<i64>().ok(),
        "Older than must be a time in milliseconds; the link was mangled.",
        &mut problems,
    );
    let q = keel_store::Query {
        model: owned(&f.model),
        key_id: owned(&f.key),
        status,
        outcome: given(&f.outcome).and_then(keel_store::Outcome::parse),
        cache: given(&f.cache).and_then(keel_store::CacheStatus::parse),
        text: owned(&f.text),
        tag: owned(&f.tag),
        metadata,
        since_ms: Some(range.since_ms),
        until_ms: Some(before.map_or(range.until_ms, |b| b.min(range.until_ms))),
        limit: Some(PAGE_ROWS),
        ..keel_store::Query::default()
    };
    let rows = match store.query(&q).await {
        Ok(r) => r,
        Err(e) => return failed(&e),
    };
    let value = |v: &Option<String>| v.clone().unwrap_or_default();
    let selected = |v: &Option<String>, o: &str| v.as_deref() == Some(o);
    let next = rows.last().filter(|_| rows.len() == PAGE_ROWS as usize).map(|last| {
        let before = last.ts_ms.to_string();
        let fields = [
            ("range", Some(name)),
            ("model", given(&f.model)),
            ("key", given(&f.key)),
            ("status", given(&f.status)),
            ("outcome", given(&f.outcome)),
            ("cache", given(&f.cache)),
            ("text", given(&f.text)),
            ("tag", given(&f.tag)),
            ("meta", given(&f.meta)),
            ("before", Some(before.as_str())),
        ];
        format!("/ui/requests?{}", query_of(&fields))
    });
    let main = html! {
        h1 { "Requests" }
        (range_nav(name, "/ui/requests"))
        @for p in &problems { p.error role="alert" { (p) } }
        form.filters role="search" method="get" action="/ui/requests" {
            input type="hidden" name="range" value=(name);
            div { label for="f-model" { "Model" } input #f-model name="model" value=(value(&f.model)); }
            div { label for="f-key" { "Key" } input #f-key name="key" value=(value(&f.key)) placeholder="key id"; }
            div { label for="f-status" { "Status" } input #f-status name="status" value=(value(&f.status)) inputmode="numeric" size="5"; }
            div {
                label for="f-outcome" { "Outcome" }
                select #f-outcome name="outcome" {
                    option value="" { "any" }
                    @for o in keel_store::Outcome::ALL { option value=(o.as_str()) selected[selected(&f.outcome, o.as_str())] { (o.as_str()) } }
                }
            }
            div {
                label for="f-cache" { "Cache" }
                select #f-cache name="cache" {
                    option value="" { "any" }
                    @for c in keel_store::CacheStatus::ALL { option value=(c.as_str()) selected[selected(&f.cache, c.as_str())] { (c.as_str()) } }
                }
            }
            div { label for="f-tag" { "Tag" } input #f-tag name="tag" value=(value(&f.tag)); }
            div { label for="f-meta" { "Metadata" } input #f-meta name="meta" value=(value(&f.meta)) placeholder="key=value"; }
            div { label for="f-text" { "Text" } input #f-text name="text" type="search" value=(value(&f.text)) placeholder="in logged bodies"; }
            button type="submit" { "Filter" }
        }
        p data-count=(rows.len()) { (rows.len()) @if rows.len() == PAGE_ROWS as usize { "+" } " requests, newest first." }
        table.requests {
            caption { "Requests" }
            thead { tr {
                th scope="col" { "Time (UTC)" } th scope="col" { "Request" } th scope="col" { "Model" } th scope="col" { "Served by" }
                th scope="col" { "Key" } th scope="col" { "Status" } th scope="col" { "Outcome" } th scope="col" { "Cache" }
                th scope="col" { "Latency" } th scope="col" { "Tokens" } th scope="col" { "Cost" }
            } }
            tbody {
                @for r in &rows {
                    tr {
                        td { (time_label(r.ts_ms, 1000)) }
                        td { a href=(format!("/ui/requests/{}", encode(&r.id))) { code { (r.id) } } }
                        td data-col="model" { (r.model_requested.as_deref().unwrap_or("")) }
                        td { (r.model_served.as_deref().unwrap_or("")) }
                        td { (r.key_id.as_deref().unwrap_or("")) }
                        td.num { (r.status) }
                        td { span class=(format!("outcome {}", r.outcome.as_str())) { (r.outcome.as_str()) } }
                        td { (r.cache.map(keel_store::CacheStatus::as_str).unwrap_or("")) }
                        td.num { (ms(Some(r.latency_ms))) }
                        td.num { (count(r.tokens_in.unwrap_or(0) + r.tokens_out.unwrap_or(0))) }
                        td.num { (r.cost_usd.map(usd).unwrap_or_default()) }
                    }
                }
            }
        }
        @if let Some(n) = next { p { a href=(n) { "Older requests" } } }
    };
    page("Requests", &s, Tab::Requests, main)
}

async fn request(State(app): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let (s, store) = match signed_in_with_store(&app, &headers, &format!("/ui/requests/{}", encode(&id))) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let rows =
        match store.query(&keel_store::Query { id: Some(id.clone()), limit: Some(1), ..Default::default() }).await {
            Ok(r) => r,
            Err(e) => return failed(&e),
        };
    let Some(r) = rows.into_iter().next() else {
        return message(
            StatusCode::NOT_FOUND,
            "Not found",
            "No logged request has this id (it may be older than the log's retention).",
        );
    };
    let feedback = store.feedback(&r.id).await.unwrap_or_default();
    let guard = r.metadata.get("guard").and_then(|g| g.as_array()).cloned().unwrap_or_default();
    let meta_text = serde_json::to_string_pretty(&r.metadata).unwrap_or_default();
    let main = html! {
        h1 { "Request " code { (r.id) } }
        section {
            h2 { "Summary" }
            dl.fields {
                dt { "Time (UTC)" } dd { (time_label(r.ts_ms, 1)) }
                @if let Some(c) = &r.client_request_id { dt { "Client request id" } dd { code { (c) } } }
                dt { "API" } dd { (r.api) " " (r.endpoint) @if r.stream { " (streamed)" } }
                dt { "Model asked" } dd { (r.model_requested.as_deref().unwrap_or("")) }
                dt { "Served by" } dd { (r.model_served.as_deref().unwrap_or("—")) }
                dt { "Key" } dd { (r.key_id.as_deref().unwrap_or("—")) }
                dt { "Status" } dd { (r.status) " · " (r.outcome.as_str()) @if let Some(e) = &r.error_class { " · " (e) } }
                dt { "Latency" } dd { (ms(Some(r.latency_ms))) @if let Some(t) = r.ttft_ms { " (first token " (ms(Some(t))) ")" } }
                dt { "Tokens" } dd { (count(r.tokens_in.unwrap_or(0))) " in, " (count(r.tokens_out.unwrap_or(0))) " out" @if let Some(c) = r.tokens_cached { ", " (count(c)) " cached" } }
                dt { "Cost" } dd { (r.cost_usd.map(usd).unwrap_or_else(|| "—".into())) }
                dt { "Cache" } dd { (r.cache.map(keel_store::CacheStatus::as_str).unwrap_or("—")) }
                @if let Some(rt) = &r.routing { dt { "Routing" } dd { (rt.router) " → " (rt.to) " (" (rt.reason) ", " (rt.escalations) " escalations)" } }
                @if let Some(t) = &r.template { dt { "Template" } dd { (t) " " (r.template_version.as_deref().unwrap_or("")) } }
            }
        }
        section {
            h2 { "Attempts" }
            @if r.attempts.is_empty() { p { "No upstream attempt (answered by keel: a cache hit or a refusal)." } } @else {
                table {
                    caption { "Attempts, in order" }
                    thead { tr { th scope="col" { "#" } th scope="col" { "Target" } th scope="col" { "Started at" } th scope="col" { "Took" } th scope="col" { "Status" } th scope="col" { "Outcome" } } }
                    tbody {
                        @for (i, a) in r.attempts.iter().enumerate() {
                            tr { td.num { (i + 1) } td { (a.provider) "/" (a.model) } td.num { (ms(Some(a.started_ms))) } td.num { (ms(Some(a.latency_ms))) } td.num { (a.status.map(|s| s.to_string()).unwrap_or_default()) } td { (a.outcome) } }
                        }
                    }
                }
            }
        }
        section {
            h2 { "Guard" }
            @if guard.is_empty() { p { "No guard acted." } } @else {
                ul { @for g in &guard { li { (g.get("guard").and_then(|v| v.as_str()).unwrap_or("")) ": " (g.get("action").and_then(|v| v.as_str()).unwrap_or("")) " — " (g.get("found").map(|f| f.to_string()).unwrap_or_default()) } } }
            }
        }
        section {
            h2 { "Bodies" }
            @match (&r.request_body, &r.response_body) {
                (None, None) => { p { "Bodies are not logged for this request ([log] bodies)." } }
                (req, resp) => {
                    h3 { "Request" } pre { (pretty(req.as_deref())) }
                    h3 { "Response" } pre { (pretty(resp.as_deref())) }
                }
            }
        }
        section {
            h2 { "Feedback" }
            @if feedback.is_empty() { p { "No feedback." } } @else {
                table {
                    caption { "Feedback" }
                    thead { tr { th scope="col" { "Source" } th scope="col" { "Name" } th scope="col" { "Score" } th scope="col" { "Comment" } } }
                    tbody { @for f in &feedback { tr { td { (format!("{:?}", f.source).to_lowercase()) } td { (f.name) } td.num { (format!("{:.2}", f.score)) } td { (f.comment.as_deref().unwrap_or("")) } } } }
                }
            }
        }
        section {
            h2 { "Metadata" }
            pre { (meta_text) }
        }
    };
    page("Request", &s, Tab::Requests, main)
}

fn pretty(body: Option<&str>) -> String {
    match body {
        None => "(not logged)".into(),
        Some(b) => serde_json::from_str::<serde_json::Value>(b)
            .ok()
            .and_then(|v| serde_json::to_string_pretty(&v).ok())
            .unwrap_or_else(|| b.to_string()),
    }
}

// --------------------------------------------------------------------------------------------------- keys

#[derive(Deserialize)]
struct KeyForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    budget_daily_usd: String,
    #[serde(default)]
    budget_monthly_usd: String,
    #[serde(default)]
    models: String,
}

/// The cookie that carries a new key's secret from the POST that made it to the page that shows it, once.
const FLASH: &str = "keel_new_key";

async fn keys(State(app): State<AppState>, headers: HeaderMap) -> Response {
    let flash = session::named_cookie(&headers, FLASH)
        .map(|v| form_urlencoded::parse(format!("v={v}").as_bytes()).map(|(_, v)| v.into_owned()).collect::<String>());
    let created = flash.as_deref().and_then(|f| f.split_once('\n'));
    let mut r = keys_page(&app, &headers, StatusCode::OK, created, &[]).await;
    if flash.is_some() {
        let clear = format!("{FLASH}=; Path=/ui/keys; HttpOnly; SameSite=Strict; Max-Age=0");
        if let Ok(v) = header::HeaderValue::from_str(&clear) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    r
}

async fn keys_page(
    app: &AppState,
    headers: &HeaderMap,
    status: StatusCode,
    created: Option<(&str, &str)>,
    problems: &[String],
) -> Response {
    let s = match session(app, headers, "/ui/keys") {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let Some(auth) = app.inner.auth.as_ref() else {
        return message(StatusCode::NOT_FOUND, "No keys", "Virtual keys need keel's store: set [log] enabled = true.");
    };
    let list = match auth.keys.store().list_keys().await {
        Ok(l) => l,
        Err(e) => return failed(&e),
    };
    let periods = keel_limits::Periods::at(keel_store::now_ms());
    let mut spent = HashMap::new();
    if let Some(log) = &app.inner.store {
        for k in list.iter().filter(|k| k.revoked_ms.is_none()) {
            let day = log.spend_since(&k.id, periods.day_start_ms).await.unwrap_or(0.0);
            let month = log.spend_since(&k.id, periods.month_start_ms).await.unwrap_or(0.0);
            spent.insert(k.id.clone(), (day, month));
        }
    }
    let budget = |spent: f64, budget: Option<f64>| match budget {
        Some(b) => format!("{} of {}", usd(spent), usd(b)),
        None => usd(spent),
    };
    let main = html! {
        h1 { "Keys" }
        @if let Some((name, secret)) = created {
            div.created {
                p { "Key " strong { (name) } " created. Copy its secret now: it is not shown again." }
                p #new-key-secret role="status" { code { (secret) } }
            }
        }
        @for p in problems { p.error role="alert" { (p) } }
        table {
            caption { "Keys" }
            thead { tr {
                th scope="col" { "Name" } th scope="col" { "Id" } th scope="col" { "Starts with" } th scope="col" { "Created (UTC)" }
                th scope="col" { "Models" } th scope="col" { "Spent today" } th scope="col" { "Spent this month" } th scope="col" { "Status" } th scope="col" { span.visually-hidden { "Actions" } }
            } }
            tbody {
                @for k in &list {
                    @let (day, month) = spent.get(&k.id).copied().unwrap_or((0.0, 0.0));
                    tr data-key=(k.id) {
                        td { (k.name) }
                        td { code { (k.id) } }
                        td { code { (k.prefix) "…" } }
                        td { (time_label(k.created_ms, 60_000)) }
                        td { @if k.models.is_empty() { "all" } @else { (k.models.join(", ")) } }
                        td.num data-spent-today=(format!("{day:.6}")) { (budget(day, k.budget_daily_usd)) }
                        td.num { (budget(month, k.budget_monthly_usd)) }
                        td { @if k.revoked_ms.is_some() { span.outcome.error { "revoked" } } @else { "active" } }
                        td {
                            @if k.revoked_ms.is_none() {
                                form method="post" action=(format!("/ui/keys/{}/revoke", encode(&k.id))) {
                                    input type="hidden" name="csrf" value=(s.csrf);
                                    button.danger type="submit" aria-label=(format!("Revoke {}", k.name)) { "Revoke" }
                                }
                            }
                        }
                    }
                }
            }
        }
        section {
            h2 { "New key" }
            form.new-key method="post" action="/ui/keys" {
                input type="hidden" name="csrf" value=(s.csrf);
                div { label for="k-name" { "Name" } input #k-name name="name" required; }
                div { label for="k-day" { "Daily budget (USD)" } input #k-day name="budget_daily_usd" inputmode="decimal"; }
                div { label for="k-month" { "Monthly budget (USD)" } input #k-month name="budget_monthly_usd" inputmode="decimal"; }
                div { label for="k-models" { "Models" } input #k-models name="models" placeholder="comma-separated; empty: all"; }
                button type="submit" { "Create key" }
            }
        }
    };
    let mut r = page("Keys", &s, Tab::Keys, main);
    *r.status_mut() = status;
    r
}

async fn create_key(State(app): State<AppState>, headers: HeaderMap, Form(f): Form<KeyForm>) -> Response {
    if let Err(r) = check_csrf(&app, &headers, &f.csrf) {
        return *r;
    }
    let Some(auth) = app.inner.auth.as_ref() else {
        return keys_page(&app, &headers, StatusCode::NOT_FOUND, None, &[]).await;
    };
    let mut problems = Vec::new();
    let mut money = |v: &str, what: &str| match v.trim() {
        "" => None,
        v => match v.parse::<f64>() {
            Ok(n) => Some(n),
            Err(_) => {
                problems.push(format!("{what} must be a number of US dollars, such as 5 or 0.25."));
                None
            }
        },
    };
    let new = keel_limits::NewKey {
        name: f.name.trim().to_string(),
        budget_daily_usd: money(&f.budget_daily_usd, "Daily budget"),
        budget_monthly_usd: money(&f.budget_monthly_usd, "Monthly budget"),
        models: f.models.split(',').map(str::trim).filter(|m| !m.is_empty()).map(str::to_string).collect(),
        ..keel_limits::NewKey::default()
    };
    if let Err(e) = new.validate() {
        problems.push(e.to_string());
    }
    if !problems.is_empty() {
        return keys_page(&app, &headers, StatusCode::UNPROCESSABLE_ENTITY, None, &problems).await;
    }
    match auth.keys.create(new).await {
        Ok((key, secret)) => {
            // Post/redirect/get: a reload of the page that shows the secret must not create another key. The
            // secret rides to that page in a cookie only it reads, once, and which it clears.
            let value: String = form_urlencoded::byte_serialize(format!("{}\n{secret}", key.name).as_bytes()).collect();
            let flash = format!("{FLASH}={value}; Path=/ui/keys; HttpOnly; SameSite=Strict; Max-Age=120");
            ([(header::SET_COOKIE, flash)], Redirect::to("/ui/keys")).into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "dashboard: creating a key failed");
            message(
                StatusCode::SERVICE_UNAVAILABLE,
                "Key store unavailable",
                "Creating the key failed; see keel's log.",
            )
        }
    }
}

async fn revoke_key(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Response {
    if let Err(r) = check_csrf(&app, &headers, &f.csrf) {
        return *r;
    }
    let Some(auth) = app.inner.auth.as_ref() else {
        return keys_page(&app, &headers, StatusCode::NOT_FOUND, None, &[]).await;
    };
    match auth.keys.revoke(&id).await {
        Ok(true) => Redirect::to("/ui/keys").into_response(),
        Ok(false) => {
            keys_page(&app, &headers, StatusCode::NOT_FOUND, None, &[format!("No live key with id {id}.")]).await
        }
        Err(e) => {
            tracing::error!(error = %e, "dashboard: revoking a key failed");
            message(
                StatusCode::SERVICE_UNAVAILABLE,
                "Key store unavailable",
                "Revoking the key failed; see keel's log.",
            )
        }
    }
}

// -------------------------------------------------------------------------------------------- evaluations

async fn evals(State(app): State<AppState>, headers: HeaderMap) -> Response {
    let (s, store) = match signed_in_with_store(&app, &headers, "/ui/evals") {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let runs = match store.runs(None, 200).await {
        Ok(r) => r,
        Err(e) => return failed(&e),
    };
    let run_label = |r: &keel_store::EvalRun| format!("{} · {} · {}", r.suite, time_label(r.started_ms, 60_000), r.id);
    let main = html! {
        h1 { "Evaluations" }
        @if runs.len() >= 2 {
            form.compare method="get" action="/ui/evals/compare" {
                div { label for="e-a" { "Baseline run" } select #e-a name="a" { @for r in &runs[1..] { option value=(r.id) { (run_label(r)) } } @if let Some(r) = runs.first() { option value=(r.id) { (run_label(r)) } } } }
                div { label for="e-b" { "Candidate run" } select #e-b name="b" { @for r in &runs { option value=(r.id) { (run_label(r)) } } } }
                button type="submit" { "Compare" }
            }
        }
        table {
            caption { "Runs" }
            thead { tr { th scope="col" { "Run" } th scope="col" { "Suite" } th scope="col" { "Started (UTC)" } th scope="col" { "Cases" } th scope="col" { "Passed" } th scope="col" { "State" } } }
            tbody {
                @for r in &runs {
                    tr {
                        td { a href=(format!("/ui/evals/runs/{}", encode(&r.id))) { code { (r.id) } } }
                        td { (r.suite) }
                        td { (time_label(r.started_ms, 60_000)) }
                        td.num { (r.cases) }
                        td.num { (summary_pass(r)) }
                        td { @if r.finished_ms.is_some() { "finished" } @else { "interrupted" } }
                    }
                }
            }
        }
        @if runs.is_empty() { p { "No evaluation run yet: " code { "keel eval run SUITE.toml" } " stores its runs here." } }
    };
    page("Evaluations", &s, Tab::Evals, main)
}

fn summary_pass(r: &keel_store::EvalRun) -> String {
    let Some(s) = &r.summary else { return "—".into() };
    match (s.get("passed").and_then(serde_json::Value::as_u64), s.get("cases").and_then(serde_json::Value::as_u64)) {
        (Some(p), Some(n)) => format!("{p}/{n} ({})", pct(ratio(p, n))),
        _ => s.get("pass_rate").and_then(serde_json::Value::as_f64).map(pct).unwrap_or_else(|| "—".into()),
    }
}

async fn eval_run(State(app): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let (s, store) = match signed_in_with_store(&app, &headers, "/ui/evals") {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let (run, results) = match (store.run(&id).await, store.results(&id).await) {
        (Ok(Some(run)), Ok(results)) => (run, results),
        (Ok(None), _) => return message(StatusCode::NOT_FOUND, "Not found", "No evaluation run has this id."),
        (Err(e), _) | (_, Err(e)) => return failed(&e),
    };
    let main = html! {
        h1 { "Run " code { (run.id) } }
        p { "Suite " strong { (run.suite) } ", started " (time_label(run.started_ms, 1000)) ", " (summary_pass(&run)) " passed." }
        table {
            caption { "Cases" }
            thead { tr { th scope="col" { "#" } th scope="col" { "Case" } th scope="col" { "Verdict" } th scope="col" { "Latency" } th scope="col" { "Output" } } }
            tbody {
                @for r in &results {
                    tr data-passed=(r.passed) {
                        td.num { (r.seq) } td { (r.case_id) }
                        td { @if r.passed { span.outcome.ok { "passed" } } @else { span.outcome.error { "failed" } } }
                        td.num { (ms(r.latency_ms)) }
                        td { (output_of(&r.detail)) }
                    }
                }
            }
        }
    };
    page("Evaluation run", &s, Tab::Evals, main)
}

fn output_of(detail: &serde_json::Value) -> String {
    let text = match detail.get("output") {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => detail.get("error").map(|e| e.to_string()).unwrap_or_default(),
    };
    let mut short: String = text.chars().take(200).collect();
    if short.len() < text.len() {
        short.push('…');
    }
    short
}

#[derive(Deserialize)]
struct CompareQuery {
    a: String,
    b: String,
}

async fn compare(State(app): State<AppState>, headers: HeaderMap, Query(q): Query<CompareQuery>) -> Response {
    let (s, store) = match signed_in_with_store(&app, &headers, "/ui/evals") {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let (a, b) = match (store.results(&q.a).await, store.results(&q.b).await) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return failed(&e),
    };
    if a.is_empty() || b.is_empty() {
        return message(StatusCode::NOT_FOUND, "Not found", "One of the two runs has no case results.");
    }
    let c = keel_eval::compare::Comparison::of(&q.a, &a, &q.b, &b);
    let unchanged: Vec<&keel_store::EvalResult> = {
        let changed: std::collections::HashSet<&str> =
            c.regressed.iter().chain(&c.improved).map(|x| x.case_id.as_str()).collect();
        b.iter().filter(|r| !changed.contains(r.case_id.as_str())).collect()
    };
    let main = html! {
        h1 { "Compare runs" }
        dl.stats {
            (stat("Baseline pass rate", "pass_rate_a", &pct(c.pass_rate_a)))
            (stat("Candidate pass rate", "pass_rate_b", &pct(c.pass_rate_b)))
            (stat("Regressed", "regressed", &count(c.regressed.len() as u64)))
            (stat("Improved", "improved", &count(c.improved.len() as u64)))
            (stat("McNemar p", "p_value", &format!("{:.4}", c.p_value)))
        }
        p { "Baseline " code { (c.run_a) } ", candidate " code { (c.run_b) } "; " (c.paired) " cases in both."
            @if c.significant_regression(0.05) { strong.error { " The candidate is worse beyond chance (p < 0.05)." } } }
        table {
            caption { "Cases" }
            thead { tr { th scope="col" { "Case" } th scope="col" { "Change" } th scope="col" { "Baseline output" } th scope="col" { "Candidate output" } } }
            tbody {
                @for x in &c.regressed {
                    tr data-change="regression" { td { (x.case_id) } td { span.outcome.error { "regressed" } } td { (output_of(&x.before)) } td { (output_of(&x.after)) } }
                }
                @for x in &c.improved {
                    tr data-change="improvement" { td { (x.case_id) } td { span.outcome.ok { "improved" } } td { (output_of(&x.before)) } td { (output_of(&x.after)) } }
                }
                @for r in &unchanged {
                    tr data-change="same" { td { (r.case_id) } td { @if r.passed { "both passed" } @else { "both failed" } } td { "" } td { (output_of(&r.detail)) } }
                }
            }
        }
    };
    page("Compare runs", &s, Tab::Evals, main)
}

// ------------------------------------------------------------------------------------------------- forms

/// A form field as given: trimmed, none when empty.
fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

/// A query string of the given fields, empty ones left out.
fn query_of(fields: &[(&str, Option<&str>)]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in fields {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            q.append_pair(k, v);
        }
    }
    q.finish()
}

/// A form field parsed. One that does not parse is ignored, and `problem` is added to what the page says.
fn parsed<T>(
    v: &Option<String>,
    parse: impl FnOnce(&str) -> Option<T>,
    problem: &'static str,
    problems: &mut Vec<&'static str>,
) -> Option<T> {
    let v = given(v)?;
    let p = parse(v);
    if p.is_none() {
        problems.push(problem);
    }
    p
}

// ------------------------------------------------------------------------------------------------ formats

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 { 0.0 } else { part as f64 / whole as f64 }
}

fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn pct(v: f64) -> String {
    format!("{:.1}%", v * 100.0)
}

fn usd(v: f64) -> String {
    if v != 0.0 && v.abs() < 0.01 { format!("${v:.6}") } else { format!("${v:.2}") }
}

fn ms(v: Option<f64>) -> String {
    match v {
        None => "—".into(),
        Some(v) if v >= 10_000.0 => format!("{:.1} s", v / 1000.0),
        Some(v) => format!("{v:.0} ms"),
    }
}

/// A UTC time, as precise as `unit_ms` asks (days, minutes or seconds).
fn time_label(ms: i64, unit_ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil(days);
    let (h, min, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    if unit_ms >= 86_400_000 {
        format!("{y}-{m:02}-{d:02}")
    } else if unit_ms >= 60_000 {
        format!("{y}-{m:02}-{d:02} {h:02}:{min:02}")
    } else {
        format!("{y}-{m:02}-{d:02} {h:02}:{min:02}:{s:02}")
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's `civil_from_days`; a few lines here
/// rather than a date crate for one label).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// A path segment or query value, percent-encoded.
fn encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(count(12), "12");
        assert_eq!(time_label(0, 1000), "1970-01-01 00:00:00");
        assert_eq!(time_label(1_796_607_538_000, 86_400_000), "2026-12-07");
        assert_eq!(time_label(951_782_400_000, 60_000), "2000-02-29 00:00");
        assert_eq!(usd(0.000_123), "$0.000123");
        assert_eq!(ms(Some(12_345.0)), "12.3 s");
    }
}

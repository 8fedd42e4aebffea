//! `keel quality` (production quality over time, from the request log and feedback) and `keel export`
//! (approved request/answer pairs and corrections as an OpenAI chat fine-tuning dataset).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use keel_store::{ExportQuery, Feedback, FeedbackSource, QualityQuery, QualityRow, Record};
use serde_json::{Value, json};

#[derive(Debug, clap::Args)]
pub(crate) struct QualityArgs {
    /// The configuration file whose store to read (default: the embedded default's).
    #[arg(long, short, env = "KEEL_CONFIG")]
    config: Option<PathBuf>,
    /// From this long ago (`24h`, `7d`, `30d`) or this time (RFC 3339).
    #[arg(long, default_value = "7d")]
    since: String,
    /// Only this route (the model alias clients ask for).
    #[arg(long)]
    route: Option<String>,
    /// Only requests that used this prompt template.
    #[arg(long)]
    template: Option<String>,
    /// hour, day or week.
    #[arg(long, default_value = "day")]
    bucket: String,
    /// One JSON object per row.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ExportArgs {
    /// The configuration file: its store, and its templates (a request made with a template is exported as
    /// the messages the template expanded to).
    #[arg(long, short, env = "KEEL_CONFIG")]
    config: Option<PathBuf>,
    /// Where to write the JSONL (default: standard output).
    #[arg(long, short)]
    out: Option<PathBuf>,
    #[arg(long, default_value = "90d")]
    since: String,
    #[arg(long)]
    route: Option<String>,
    #[arg(long)]
    template: Option<String>,
    /// Feedback that approves an answer: user, judge, check (comma-separated). Corrections always count.
    #[arg(long, value_delimiter = ',', default_value = "user")]
    sources: Vec<String>,
    /// The mean score an answer's feedback needs (none of it may be negative).
    #[arg(long, default_value_t = 0.5)]
    min_score: f64,
    #[arg(long, default_value_t = 100_000)]
    limit: u32,
}

pub(crate) async fn quality(args: QualityArgs) -> anyhow::Result<std::process::ExitCode> {
    let url = crate::store_url(args.config.as_deref())?;
    let store = keel_store::open(&url).await.with_context(|| format!("opening {}", crate::logs::display_url(&url)))?;
    let bucket_ms = keel_server::bucket_ms(Some(&args.bucket))
        .with_context(|| format!("--bucket {:?}: expected hour, day or week", args.bucket))?;
    let q = QualityQuery {
        since_ms: Some(crate::logs::parse_since(&args.since)?),
        until_ms: None,
        route: args.route,
        template: args.template,
        bucket_ms: Some(bucket_ms),
    };
    let rows = store.quality(&q).await?;
    if args.json {
        for r in &rows {
            println!("{}", r.to_json());
        }
    } else {
        print!("{}", table(&rows, bucket_ms));
    }
    Ok(std::process::ExitCode::SUCCESS)
}

fn table(rows: &[QualityRow], bucket_ms: i64) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<16} {:<16} {:<22} {:>8} {:>6} {:>6} {:>6} {:>8} {:>8} {:>6} {:>8} {:>6}",
        "bucket (UTC)",
        "route",
        "template@version",
        "requests",
        "errors",
        "schema",
        "guard",
        "feedback",
        "positive",
        "score",
        "eval n",
        "eval"
    );
    for r in rows {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(r.bucket_ms).unwrap_or(0));
        let at = humantime::format_rfc3339_seconds(at).to_string();
        let at = if bucket_ms >= QualityQuery::DAY_MS { at[..10].to_string() } else { at[..16].to_string() };
        let template = match (&r.template, &r.template_version) {
            (Some(t), Some(v)) => format!("{t}@{v}"),
            (Some(t), None) => t.clone(),
            _ => "-".into(),
        };
        let pct = |x: Option<f64>| x.map_or_else(|| "-".to_string(), |x| format!("{:.0}%", x * 100.0));
        let num = |x: Option<f64>| x.map_or_else(|| "-".to_string(), |x| format!("{x:.2}"));
        let _ = writeln!(
            out,
            "{:<16} {:<16} {:<22} {:>8} {:>6} {:>6} {:>6} {:>8} {:>8} {:>6} {:>8} {:>6}",
            at,
            r.route.as_deref().unwrap_or("-"),
            template,
            r.requests,
            r.errors,
            r.schema_failures,
            r.guarded,
            format!("{} ({})", r.feedback, pct(Some(r.feedback_rate()))),
            pct(r.positive_rate()),
            num(r.mean_score),
            r.evaluated,
            num(r.eval_mean),
        );
    }
    if rows.is_empty() {
        out.push_str("(no requests in this range)\n");
    }
    out
}

pub(crate) async fn export(args: ExportArgs) -> anyhow::Result<std::process::ExitCode> {
    let cfg = crate::load(args.config.as_deref())?;
    let templates = keel_pipeline::Templates::new(&cfg.templates).map_err(anyhow::Error::msg)?;
    let store = keel_store::open(&cfg.store)
        .await
        .with_context(|| format!("opening {}", crate::logs::display_url(&cfg.store)))?;
    let mut sources = Vec::new();
    for s in &args.sources {
        sources.push(FeedbackSource::parse(s).with_context(|| format!("--sources: unknown source {s:?}"))?);
    }
    anyhow::ensure!((0.0..=1.0).contains(&args.min_score), "--min-score: expected a number in [0, 1]");
    let q = ExportQuery {
        scope: QualityQuery {
            since_ms: Some(crate::logs::parse_since(&args.since)?),
            route: args.route,
            template: args.template,
            ..QualityQuery::default()
        },
        sources,
        min_score: args.min_score,
        limit: args.limit,
    };
    let approved = store.approved(&q).await?;
    let mut out: Box<dyn Write> = match &args.out {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    let (mut written, mut corrected) = (0, 0);
    let mut skipped: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for (record, feedback) in &approved {
        match example(record, feedback, &templates) {
            Ok((line, was_corrected)) => {
                writeln!(out, "{line}")?;
                written += 1;
                corrected += usize::from(was_corrected);
            }
            Err(why) => *skipped.entry(why).or_default() += 1,
        }
    }
    out.flush()?;
    eprintln!("{written} examples written ({corrected} from corrections) of {} approved requests", approved.len());
    for (why, n) in &skipped {
        eprintln!("  skipped {n}: {why}");
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// One fine-tuning example (OpenAI chat JSONL: `{"messages": [...]}`, with `tools` when the request had them)
/// from a logged request and its feedback; the answer is the newest correction, else the logged answer. `Err`
/// says why the row cannot be one (bodies not logged in full, a template changed since, …).
pub(crate) fn example(
    r: &Record,
    feedback: &[Feedback],
    templates: &keel_pipeline::Templates,
) -> Result<(Value, bool), String> {
    let body = r.request_body.as_deref().ok_or("request body not logged")?;
    let mut req: keel_types::ChatRequest = match r.api.as_str() {
        "anthropic" => {
            let m: keel_types::anthropic::MessagesRequest =
                serde_json::from_str(body).map_err(|_| "request body not logged in full".to_string())?;
            keel_translate::messages_request_to_chat(m).map_err(|e| format!("untranslatable request: {}", e.message))?
        }
        _ => serde_json::from_str(body).map_err(|_| "request body not logged in full".to_string())?,
    };
    if r.template.is_some() {
        let (expanded, used) = templates.expand(req).map_err(|e| format!("template: {e}"))?;
        if used.as_ref().map(|u| &*u.version) != r.template_version.as_deref() {
            return Err("its template changed since (another version)".into());
        }
        req = expanded;
    }
    if req.messages.is_empty() {
        return Err("no messages".into());
    }
    let correction = feedback.iter().rev().find_map(|f| f.correction.clone());
    let answer = match &correction {
        Some(text) => json!({"role": "assistant", "content": text}),
        None => logged_answer(r.response_body.as_deref().ok_or("answer not logged")?)?,
    };
    let mut messages: Vec<Value> = Vec::with_capacity(req.messages.len() + 1);
    for m in &req.messages {
        let v = serde_json::to_value(m).map_err(|e| e.to_string())?;
        if redacted(&v) {
            return Err("bodies logged redacted (log.bodies = \"redacted\")".into());
        }
        messages.push(v);
    }
    if redacted(&answer) {
        return Err("bodies logged redacted (log.bodies = \"redacted\")".into());
    }
    messages.push(answer);
    let mut line = json!({ "messages": messages });
    if let Some(tools) = &req.tools {
        line["tools"] = serde_json::to_value(tools).map_err(|e| e.to_string())?;
    }
    Ok((line, correction.is_some()))
}

/// The assistant message of a logged answer: a chat completion's first choice, or a stream's text.
fn logged_answer(body: &str) -> Result<Value, String> {
    let v: Value = serde_json::from_str(body).map_err(|_| "answer not logged in full".to_string())?;
    if let Some(message) = v.pointer("/choices/0/message") {
        let mut m = serde_json::Map::new();
        m.insert("role".into(), "assistant".into());
        for k in ["content", "tool_calls"] {
            if let Some(x) = message.get(k).filter(|x| !x.is_null()) {
                m.insert(k.into(), x.clone());
            }
        }
        return Ok(Value::Object(m));
    }
    match v.get("content") {
        Some(Value::String(text)) => Ok(json!({"role": "assistant", "content": text})),
        _ => Err("answer not logged in full".into()),
    }
}

/// Whether a message was logged with its texts replaced by their lengths.
fn redacted(v: &Value) -> bool {
    match v {
        Value::String(s) => s.starts_with("[redacted: ") && s.ends_with(" chars]"),
        Value::Array(items) => items.iter().any(redacted),
        Value::Object(m) => m.values().any(redacted),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn record(api: &str, request: Value, response: Value) -> Record {
        Record {
            id: "r1".into(),
            client_request_id: None,
            ts_ms: 0,
            key_id: None,
            tenant: None,
            api: api.into(),
            endpoint: "chat".into(),
            model_requested: Some("m".into()),
            model_served: None,
            status: 200,
            outcome: keel_store::Outcome::Ok,
            error_class: None,
            stream: false,
            attempts: vec![],
            ttft_ms: None,
            latency_ms: 1.0,
            tokens_in: None,
            tokens_out: None,
            tokens_cached: None,
            cost_usd: None,
            cache: None,
            request_body: Some(request.to_string()),
            response_body: Some(response.to_string()),
            metadata: json!({}),
            template: None,
            template_version: None,
            routing: None,
        }
    }

    fn fb(correction: Option<&str>) -> Feedback {
        Feedback {
            id: "f".into(),
            request_id: "r1".into(),
            ts_ms: 0,
            key_id: None,
            source: FeedbackSource::User,
            name: "user".into(),
            score: 1.0,
            comment: None,
            correction: correction.map(Into::into),
            meta: json!({}),
        }
    }

    fn completion(text: &str) -> Value {
        json!({"id": "c", "object": "chat.completion", "created": 0, "model": "m",
               "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]})
    }

    #[test]
    fn an_openai_request_and_its_answer_become_one_example() {
        let r = record(
            "openai",
            json!({"model": "m", "messages": [{"role": "system", "content": "Be brief."},
                                              {"role": "user", "content": "Capital of France?"}]}),
            completion("Paris."),
        );
        let (line, corrected) = example(&r, &[fb(None)], &keel_pipeline::Templates::default()).unwrap();
        assert!(!corrected);
        assert_eq!(
            line,
            json!({"messages": [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "Capital of France?"},
                                {"role": "assistant", "content": "Paris."}]})
        );
    }

    #[test]
    fn a_correction_replaces_the_answer_and_anthropic_requests_are_translated() {
        let r = record(
            "anthropic",
            json!({"model": "m", "max_tokens": 10, "system": "Be brief.",
                   "messages": [{"role": "user", "content": [{"type": "text", "text": "2+2?"}]}]}),
            completion("5"),
        );
        let (line, corrected) = example(&r, &[fb(None), fb(Some("4"))], &keel_pipeline::Templates::default()).unwrap();
        assert!(corrected);
        let messages = line["messages"].as_array().unwrap();
        assert_eq!(messages[0], json!({"role": "system", "content": "Be brief."}));
        assert_eq!(messages[1]["role"], "user");
        assert_eq!(messages.last().unwrap(), &json!({"role": "assistant", "content": "4"}));
    }

    #[test]
    fn a_template_request_is_exported_as_the_messages_it_expanded_to_at_its_version() {
        let cfg = keel_config::parse(
            r#"
            [providers.local]
            kind = "local"
            [models.m]
            provider = "local"
            model = "smollm2"
            [templates.capital]
            model = "m"
            system = "Answer with one word."
            prompt = "What is the capital of {{ country }}?"
            "#,
            &std::collections::HashMap::new(),
        )
        .unwrap();
        let templates = keel_pipeline::Templates::new(&cfg.templates).unwrap();
        let version = cfg.templates["capital"].version.clone();
        let mut r = record(
            "openai",
            json!({"model": "capital", "messages": [], "keel_template": {"name": "capital", "variables": {"country": "Peru"}}}),
            json!({"content": "Lima", "finish_reason": "stop", "error": null}),
        );
        r.template = Some("capital".into());
        r.template_version = Some(version);
        let (line, _) = example(&r, &[fb(None)], &templates).unwrap();
        assert_eq!(
            line,
            json!({"messages": [{"role": "system", "content": "Answer with one word."},
                                {"role": "user", "content": "What is the capital of Peru?"},
                                {"role": "assistant", "content": "Lima"}]})
        );
        r.template_version = Some("000000000000".into());
        assert_eq!(example(&r, &[fb(None)], &templates).unwrap_err(), "its template changed since (another version)");
    }

    #[test]
    fn redacted_or_truncated_bodies_are_refused_with_the_reason() {
        let r = record(
            "openai",
            json!({"model": "m", "messages": [{"role": "user", "content": "[redacted: 18 chars]"}]}),
            completion("[redacted: 6 chars]"),
        );
        assert!(example(&r, &[fb(None)], &keel_pipeline::Templates::default()).unwrap_err().contains("redacted"));
        let mut r = r;
        r.request_body = Some("{\"model\": \"m\", \"messages\": [{\"role\"…[truncated]".into());
        assert_eq!(
            example(&r, &[fb(None)], &keel_pipeline::Templates::default()).unwrap_err(),
            "request body not logged in full"
        );
    }
}

//! The eval's way into keel: its OpenAI API over HTTP, so every case runs through keel's own request path
//! (routes, fallbacks, guards, the log) exactly as an application's request would, whether keel runs in the
//! same process (`keel eval run` starts one on a loopback port) or elsewhere (`--url`).

use std::time::{Duration, Instant};

use serde_json::Value;

/// A running keel.
#[derive(Debug, Clone)]
pub struct Keel {
    http: reqwest::Client,
    base: String,
    api_key: Option<String>,
}

/// An answer and what keel said about it.
#[derive(Debug, Clone, Default)]
pub struct Reply {
    pub text: String,
    pub latency_ms: f64,
    pub cost_usd: Option<f64>,
    pub tokens_in: Option<u64>,
    pub tokens_out: Option<u64>,
    /// keel's `x-request-id` (the log row).
    pub request_id: Option<String>,
    /// `x-keel-template`: `name@version`.
    pub template: Option<String>,
    /// `x-keel-served-by`.
    pub served_by: Option<String>,
    pub finish_reason: Option<String>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// keel answered with an error (its status and message).
    #[error("HTTP {status}: {message}")]
    Status { status: u16, message: String },
    #[error("cannot reach keel: {0}")]
    Transport(String),
    #[error("unexpected answer: {0}")]
    Decode(String),
}

impl CallError {
    /// An error that says the request itself is wrong (a 4xx other than 408/429): the same for every case.
    pub fn is_client_error(&self) -> bool {
        matches!(self, CallError::Status { status, .. } if (400..500).contains(status) && *status != 408 && *status != 429)
    }
}

/// The most bytes of one answer the eval reads.
const MAX_ANSWER_BYTES: usize = 8 << 20;

impl Keel {
    /// `base`: keel's address (`http://127.0.0.1:8080`); `timeout`: per request.
    pub fn new(base: &str, api_key: Option<String>, timeout: Duration) -> Result<Self, CallError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .pool_max_idle_per_host(64)
            .build()
            .map_err(|e| CallError::Transport(e.to_string()))?;
        Ok(Self { http, base: base.trim_end_matches('/').to_string(), api_key })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.post(format!("{}{path}", self.base));
        if let Some(k) = &self.api_key {
            r = r.bearer_auth(k);
        }
        r
    }

    /// A chat completion (not streamed). `cache`: whether keel's response cache may answer; `metadata`: put in
    /// the request's log row (`x-keel-metadata`).
    pub async fn chat(&self, body: &Value, cache: bool, metadata: &Value) -> Result<Reply, CallError> {
        let started = Instant::now();
        let mut req = self.post("/v1/chat/completions").json(body).header("x-keel-tags", "eval");
        if !cache {
            req = req.header("x-keel-cache", "off");
        }
        if let Ok(v) = reqwest::header::HeaderValue::from_str(&metadata.to_string()) {
            req = req.header("x-keel-metadata", v);
        }
        let resp = req.send().await.map_err(|e| CallError::Transport(e.to_string()))?;
        let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let request_id = header("x-request-id");
        let template = header("x-keel-template");
        let served_by = header("x-keel-served-by");
        let cost_usd = header("x-keel-cost-usd").and_then(|v| v.parse::<f64>().ok());
        let status = resp.status().as_u16();
        let body = read_json(resp).await?;
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        if status != 200 {
            return Err(CallError::Status { status, message: error_message(&body) });
        }
        let choice = body.pointer("/choices/0").ok_or_else(|| CallError::Decode("no choices".into()))?;
        let message = choice.get("message").cloned().unwrap_or(Value::Null);
        // A tool call is the answer when the model made one: its arguments are what checks look at.
        let text = match message.get("content").and_then(Value::as_str) {
            Some(t) if !t.is_empty() => t.to_string(),
            _ => message
                .pointer("/tool_calls/0/function/arguments")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        };
        Ok(Reply {
            text,
            latency_ms,
            cost_usd,
            tokens_in: body.pointer("/usage/prompt_tokens").and_then(Value::as_u64),
            tokens_out: body.pointer("/usage/completion_tokens").and_then(Value::as_u64),
            request_id,
            template,
            served_by,
            finish_reason: choice.get("finish_reason").and_then(Value::as_str).map(str::to_string),
        })
    }

    /// Embeddings of `inputs`, in order.
    pub async fn embed(&self, model: &str, inputs: &[String]) -> Result<Vec<Vec<f32>>, CallError> {
        let resp = self
            .post("/v1/embeddings")
            .header("x-keel-tags", "eval")
            .json(&serde_json::json!({"model": model, "input": inputs}))
            .send()
            .await
            .map_err(|e| CallError::Transport(e.to_string()))?;
        let status = resp.status().as_u16();
        let body = read_json(resp).await?;
        if status != 200 {
            return Err(CallError::Status { status, message: error_message(&body) });
        }
        let data = body.get("data").and_then(Value::as_array).ok_or_else(|| CallError::Decode("no data".into()))?;
        let mut out = vec![Vec::new(); inputs.len()];
        for item in data {
            let i = item.get("index").and_then(Value::as_u64).and_then(|i| usize::try_from(i).ok());
            let v = item.get("embedding").and_then(Value::as_array);
            match (i, v) {
                (Some(i), Some(v)) if i < out.len() => {
                    out[i] = v.iter().filter_map(Value::as_f64).map(|x| x as f32).collect();
                }
                _ => return Err(CallError::Decode("an embedding without a valid index".into())),
            }
        }
        if out.iter().any(Vec::is_empty) {
            return Err(CallError::Decode("an input without its embedding".into()));
        }
        Ok(out)
    }
}

async fn read_json(mut resp: reqwest::Response) -> Result<Value, CallError> {
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| CallError::Transport(e.to_string()))? {
        if buf.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(CallError::Decode(format!("answer larger than {MAX_ANSWER_BYTES} bytes")));
        }
        buf.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&buf).map_err(|e| CallError::Decode(format!("not JSON: {e}")))
}

/// The message of an error body (OpenAI's shape), else the body.
fn error_message(body: &Value) -> String {
    body.pointer("/error/message").and_then(Value::as_str).map_or_else(|| body.to_string(), str::to_string)
}

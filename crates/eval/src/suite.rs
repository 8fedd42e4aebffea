//! A suite: a TOML file naming a JSONL dataset of cases, what to send for each (a template of keel's
//! configuration, or a model with a prompt), the checks each answer must pass, per-case limits and the gates
//! of the whole run.
//!
//! ```toml
//! name = "gsm8k"
//! dataset = "../shared/data/gsm8k/test-half-a.jsonl"   # relative to this file
//! template = "gsm8k"                                    # or: model = "smollm2" and prompt = "{{ question }}"
//! limit = 100
//! concurrency = 2
//!
//! [[checks]]
//! type = "numeric"
//! expected = "{{ final_answer }}"
//!
//! [limits]
//! max_latency_ms = 30000
//!
//! [gate]
//! min_pass_rate = 0.02
//! baseline = "previous"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::Digest as _;

use crate::EvalError;
use crate::check::{Check, CheckSpec};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSuite {
    name: Option<String>,
    description: Option<String>,
    dataset: String,
    #[serde(default = "default_id_field")]
    id_field: String,
    limit: Option<usize>,
    #[serde(default = "default_concurrency")]
    concurrency: usize,
    /// Read keel's response cache (default: no, every case is answered afresh).
    #[serde(default)]
    cache: bool,
    template: Option<String>,
    /// Pin the template's version: the run fails at once if the template changed.
    template_version: Option<String>,
    model: Option<String>,
    system: Option<String>,
    prompt: Option<String>,
    /// Case fields sent as the template's variables (default: every field).
    inputs: Option<Vec<String>>,
    /// Request fields merged into every request (`temperature`, `max_tokens`, …).
    #[serde(default)]
    params: BTreeMap<String, toml::Value>,
    /// The embeddings model of similarity checks (default `all-minilm-l6-v2`).
    embedding_model: Option<String>,
    #[serde(default)]
    checks: Vec<CheckSpec>,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    gate: Gate,
}

fn default_id_field() -> String {
    "id".into()
}

fn default_concurrency() -> usize {
    2
}

/// Per case: past a limit the case fails.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub max_latency_ms: Option<f64>,
    pub max_cost_usd: Option<f64>,
}

/// What makes a run fail (exit code non-zero).
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Gate {
    /// The pass rate must be at least this.
    pub min_pass_rate: Option<f64>,
    /// The whole run must cost at most this.
    pub max_cost_usd: Option<f64>,
    /// A run to compare with: `"previous"` (the last finished run of this suite) or a run id.
    pub baseline: Option<String>,
    /// Fail when the regression against the baseline is significant at this level (McNemar's exact test,
    /// paired by case). Default 0.05 when a baseline is set.
    pub significance: Option<f64>,
}

/// What each case sends.
#[derive(Debug, Clone)]
pub enum Target {
    /// A template of keel's configuration, called by name (`keel_template`).
    Template { name: String, version: Option<String> },
    /// A model alias with a prompt rendered here.
    Prompt { model: String, system: Option<String>, prompt: String },
}

/// One case of the dataset.
#[derive(Debug, Clone)]
pub struct Case {
    pub id: String,
    /// Its position in the dataset (0-based).
    pub seq: u64,
    pub fields: serde_json::Map<String, serde_json::Value>,
}

/// A validated suite with its cases loaded.
#[derive(Debug)]
pub struct Suite {
    pub name: String,
    pub description: Option<String>,
    pub path: PathBuf,
    pub dataset: PathBuf,
    pub target: Target,
    pub inputs: Option<Vec<String>>,
    pub params: serde_json::Map<String, serde_json::Value>,
    pub cache: bool,
    pub concurrency: usize,
    pub embedding_model: String,
    pub checks: Vec<Check>,
    pub limits: Limits,
    pub gate: Gate,
    pub cases: Vec<Case>,
    /// SHA-256 (16 hex digits) of the suite file and the cases it runs: resuming needs the same.
    pub hash: String,
}

/// The most cases a suite may hold (a bound on memory; split larger datasets).
pub const MAX_CASES: usize = 1_000_000;

impl Suite {
    /// Reads and validates a suite file and its dataset; every problem is reported with where it is.
    pub fn load(path: &Path) -> Result<Self, EvalError> {
        let text = std::fs::read_to_string(path).map_err(|e| EvalError::io(path, e))?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, EvalError> {
        let bad = |m: String| EvalError::Suite(format!("{}: {m}", path.display()));
        let raw: RawSuite = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        let name = raw
            .name
            .clone()
            .or_else(|| path.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "suite".into());
        let target = match (&raw.template, &raw.model, &raw.prompt) {
            (Some(t), None, None) if raw.system.is_none() => {
                Target::Template { name: t.clone(), version: raw.template_version.clone() }
            }
            (None, Some(m), Some(p)) => {
                for (what, text) in [("prompt", Some(p)), ("system", raw.system.as_ref())] {
                    if let Some(text) = text {
                        crate::render::check_template(text).map_err(|e| bad(format!("{what}: {e}")))?;
                    }
                }
                Target::Prompt { model: m.clone(), system: raw.system.clone(), prompt: p.clone() }
            }
            _ => {
                return Err(bad(
                    "say what each case sends: `template = NAME` (a template of keel's configuration), or `model` \
                     and `prompt` (and optionally `system`), not both"
                        .into(),
                ));
            }
        };
        if raw.checks.is_empty() {
            return Err(bad("no [[checks]]: a suite needs at least one".into()));
        }
        if !(1..=64).contains(&raw.concurrency) {
            return Err(bad("concurrency: 1 to 64".into()));
        }
        let checks = raw
            .checks
            .iter()
            .enumerate()
            .map(|(i, c)| Check::new(c).map_err(|e| bad(format!("checks[{i}]: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(r) = raw.gate.min_pass_rate
            && !(0.0..=1.0).contains(&r)
        {
            return Err(bad("gate.min_pass_rate: between 0 and 1".into()));
        }
        if let Some(a) = raw.gate.significance
            && !(a > 0.0 && a < 1.0)
        {
            return Err(bad("gate.significance: between 0 and 1, exclusive".into()));
        }
        let params = raw
            .params
            .iter()
            .map(|(k, v)| serde_json::to_value(v).map(|v| (k.clone(), v)))
            .collect::<Result<serde_json::Map<_, _>, _>>()
            .map_err(|e| bad(format!("params: {e}")))?;
        for reserved in ["model", "messages", "stream", "keel_template"] {
            if params.contains_key(reserved) {
                return Err(bad(format!("params.{reserved}: set by the suite itself")));
            }
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let dataset = base.join(&raw.dataset);
        let data = std::fs::read(&dataset).map_err(|e| EvalError::io(&dataset, e))?;
        let cases = parse_cases(&data, &raw.id_field, raw.limit)
            .map_err(|m| EvalError::Suite(format!("{}: {m}", dataset.display())))?;
        if cases.is_empty() {
            return Err(bad(format!("dataset {}: no cases", dataset.display())));
        }
        let mut hasher = sha2::Sha256::new();
        hasher.update(text.as_bytes());
        hasher.update([0]);
        for c in &cases {
            hasher.update(c.id.as_bytes());
            hasher.update([0]);
            hasher.update(serde_json::Value::Object(c.fields.clone()).to_string().as_bytes());
            hasher.update([0]);
        }
        let hash = hasher.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect();
        Ok(Suite {
            name,
            description: raw.description,
            path: path.to_path_buf(),
            dataset,
            target,
            inputs: raw.inputs,
            params,
            cache: raw.cache,
            concurrency: raw.concurrency,
            embedding_model: raw.embedding_model.unwrap_or_else(|| "all-minilm-l6-v2".into()),
            checks,
            limits: raw.limits,
            gate: raw.gate,
            cases,
            hash,
        })
    }

    /// The settings of a run, kept with it.
    pub fn meta(&self) -> serde_json::Value {
        let target = match &self.target {
            Target::Template { name, version } => serde_json::json!({"template": name, "pinned_version": version}),
            Target::Prompt { model, .. } => serde_json::json!({"model": model}),
        };
        serde_json::json!({
            "suite_file": self.path.display().to_string(),
            "dataset": self.dataset.display().to_string(),
            "target": target,
            "params": self.params,
            "cache": self.cache,
            "concurrency": self.concurrency,
            "checks": self.checks.iter().map(Check::label).collect::<Vec<_>>(),
            "limits": self.limits,
            "gate": self.gate,
            "keel_version": env!("CARGO_PKG_VERSION"),
        })
    }
}

/// Cases from JSON Lines: one object per line; blank lines skipped; the id from `id_field` (a string or a
/// number), else the line number. Ids must be unique: results are paired across runs by id.
fn parse_cases(data: &[u8], id_field: &str, limit: Option<usize>) -> Result<Vec<Case>, String> {
    let text = std::str::from_utf8(data).map_err(|e| format!("not UTF-8: {e}"))?;
    let mut cases = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (n, line) in text.lines().enumerate() {
        if limit.is_some_and(|l| cases.len() >= l) {
            break;
        }
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("line {}: not JSON: {e}", n + 1))?;
        let serde_json::Value::Object(fields) = value else {
            return Err(format!("line {}: a case is a JSON object", n + 1));
        };
        let id = match fields.get(id_field) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Number(x)) => x.to_string(),
            None => format!("line-{}", n + 1),
            Some(_) => return Err(format!("line {}: `{id_field}` must be a string or a number", n + 1)),
        };
        if !seen.insert(id.clone()) {
            return Err(format!("line {}: case id {id:?} appears twice", n + 1));
        }
        if cases.len() >= MAX_CASES {
            return Err(format!("more than {MAX_CASES} cases"));
        }
        cases.push(Case { id, seq: cases.len() as u64, fields });
    }
    Ok(cases)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn suite(toml: &str, data: &str) -> Result<Suite, EvalError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cases.jsonl"), data).unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(&path, toml).unwrap();
        Suite::load(&path)
    }

    const DATA: &str = "{\"id\": \"a\", \"q\": \"1+1\", \"n\": \"2\"}\n\n{\"id\": 7, \"q\": \"2+2\", \"n\": \"4\"}\n";

    #[test]
    fn a_suite_loads_its_cases_and_hashes_what_it_runs() {
        let toml = "dataset = \"cases.jsonl\"\nmodel = \"m\"\nprompt = \"{{ q }}\"\n\
                    [[checks]]\ntype = \"numeric\"\nexpected = \"{{ n }}\"\n";
        let s = suite(toml, DATA).unwrap();
        assert_eq!(s.name, "s");
        assert_eq!(s.cases.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), ["a", "7"]);
        assert_eq!(s.cases[1].seq, 1);
        let other = suite(toml, "{\"id\": \"a\", \"q\": \"1+1\", \"n\": \"3\"}\n").unwrap();
        assert_ne!(s.hash, other.hash, "a changed expectation is another suite");
        assert_eq!(suite(toml, DATA).unwrap().hash, s.hash);
    }

    #[test]
    fn mistakes_are_reported_with_where_they_are() {
        let cases = [
            ("dataset = \"cases.jsonl\"\nmodel = \"m\"\n[[checks]]\ntype = \"exact\"\nexpected = \"x\"\n", "template"),
            ("dataset = \"cases.jsonl\"\ntemplate = \"t\"\n", "no [[checks]]"),
            (
                "dataset = \"nope.jsonl\"\ntemplate = \"t\"\n[[checks]]\ntype = \"exact\"\nexpected = \"x\"\n",
                "nope.jsonl",
            ),
            (
                "dataset = \"cases.jsonl\"\ntemplate = \"t\"\n[[checks]]\ntype = \"regex\"\npattern = \"(\"\n",
                "checks[0]",
            ),
            ("dataset = \"cases.jsonl\"\ntemplate = \"t\"\n[[checks]]\ntype = \"shout\"\n", "shout"),
            (
                "dataset = \"cases.jsonl\"\nmodel = \"m\"\nprompt = \"{{ q\"\n[[checks]]\ntype = \"exact\"\nexpected = \"x\"\n",
                "prompt",
            ),
        ];
        for (toml, says) in cases {
            let e = suite(toml, DATA).unwrap_err().to_string();
            assert!(e.contains(says), "{says:?} not in {e}");
        }
        let dup = suite(
            "dataset = \"cases.jsonl\"\ntemplate = \"t\"\n[[checks]]\ntype = \"exact\"\nexpected = \"x\"\n",
            "{\"id\": 1}\n{\"id\": 1}\n",
        );
        assert!(dup.unwrap_err().to_string().contains("twice"));
    }
}

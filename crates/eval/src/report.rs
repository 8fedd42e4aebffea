//! Reports of a run: a terminal summary, JSON (everything), JUnit XML (what CI systems read) and one
//! self-contained HTML page (no scripts, no external assets) with every case's input, output, checks and, for
//! text expectations, a word diff of expected against actual. Comparisons of two runs: the same, regressions
//! first.

use std::fmt::Write as _;

use keel_store::{EvalResult, EvalRun};
use serde_json::Value;

use crate::check::Verdict;
use crate::compare::Comparison;
use crate::run::Summary;

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.0} ms"))
}

/// The terminal summary.
pub fn text(run: &EvalRun, s: &Summary) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "suite {} · run {}", run.suite, run.id);
    let _ = writeln!(
        o,
        "  passed {}/{} = {:.1}% (95% CI {:.1}–{:.1}%), failed {}, of which errors {}",
        s.passed,
        s.cases,
        s.pass_rate * 100.0,
        s.pass_rate_low * 100.0,
        s.pass_rate_high * 100.0,
        s.failed,
        s.errors
    );
    for (check, (p, n)) in &s.checks {
        let _ = writeln!(o, "  {check:<24} {p}/{n}");
    }
    let _ = writeln!(
        o,
        "  latency p50 {} p95 {} · tokens in {} out {} · cost ${:.6}{} · {:.1} s",
        ms(s.latency_p50_ms),
        ms(s.latency_p95_ms),
        s.tokens_in,
        s.tokens_out,
        s.cost_usd,
        if s.cost_known < s.cases {
            format!(" (known for {} of {} cases)", s.cost_known, s.cases)
        } else {
            String::new()
        },
        s.duration_ms / 1000.0
    );
    if !s.templates.is_empty() {
        let _ = writeln!(o, "  template {}", s.templates.join(", "));
    }
    if !s.served_by.is_empty() {
        let _ = writeln!(o, "  served by {}", s.served_by.join(", "));
    }
    o
}

/// The comparison of two runs, for a terminal: regressions first.
pub fn compare_text(c: &Comparison, show: usize) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{} → {}: {} paired cases, pass rate {:.1}% → {:.1}%",
        c.run_a,
        c.run_b,
        c.paired,
        c.pass_rate_a * 100.0,
        c.pass_rate_b * 100.0
    );
    let _ = writeln!(
        o,
        "  regressed {} · improved {} · both passed {} · both failed {} · McNemar exact p = {:.4}{}",
        c.regressed.len(),
        c.improved.len(),
        c.both_passed,
        c.both_failed,
        c.p_value,
        if c.only_a + c.only_b > 0 {
            format!(" · unpaired: {} only in A, {} only in B", c.only_a, c.only_b)
        } else {
            String::new()
        }
    );
    for (title, list) in [("regressed", &c.regressed), ("improved", &c.improved)] {
        for ch in list.iter().take(show) {
            let out = |d: &Value| one_line(d.get("output").and_then(Value::as_str).unwrap_or(""), 70);
            let _ = writeln!(o, "  {title:<9} {:<24} {:?} → {:?}", ch.case_id, out(&ch.before), out(&ch.after));
        }
        if list.len() > show {
            let _ = writeln!(o, "  … {} more {title}", list.len() - show);
        }
    }
    o
}

fn one_line(s: &str, n: usize) -> String {
    let flat: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &flat[..i]),
        None => flat,
    }
}

/// Everything: the run, its summary and every result.
pub fn json(run: &EvalRun, s: &Summary, results: &[EvalResult]) -> Value {
    serde_json::json!({"run": run, "summary": s, "results": results})
}

fn xml(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            // Characters XML 1.0 cannot carry at all.
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\r' | '\t') => o.push('\u{fffd}'),
            c => o.push(c),
        }
    }
    o
}

fn verdicts(r: &EvalResult) -> Vec<Verdict> {
    r.detail
        .get("checks")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|v| serde_json::from_value(v.clone()).ok()).collect())
        .unwrap_or_default()
}

fn describe(v: &Verdict) -> String {
    let mut s = v.check.clone();
    if let Some(e) = &v.expected {
        let _ = write!(s, ": expected {e}");
    }
    if let Some(g) = &v.got {
        let _ = write!(s, ", got {g}");
    }
    if let Some(sc) = v.score {
        let _ = write!(s, " (score {sc:.3})");
    }
    if let Some(n) = &v.note {
        let _ = write!(s, " — {n}");
    }
    s
}

/// JUnit XML: one test case per case; a failed check is a `failure`, a failed request an `error`.
pub fn junit(run: &EvalRun, s: &Summary, results: &[EvalResult]) -> String {
    let mut o = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let errors = results.iter().filter(|r| r.detail.get("error").is_some_and(|e| !e.is_null())).count();
    let _ = writeln!(
        o,
        "<testsuites name=\"keel eval\" tests=\"{}\" failures=\"{}\" errors=\"{}\" time=\"{:.3}\">",
        s.cases,
        s.failed as usize - errors,
        errors,
        s.duration_ms / 1000.0
    );
    let _ = writeln!(
        o,
        "  <testsuite name=\"{}\" id=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"{}\" time=\"{:.3}\">",
        xml(&run.suite),
        xml(&run.id),
        s.cases,
        s.failed as usize - errors,
        errors,
        s.duration_ms / 1000.0
    );
    for r in results {
        let time = r.latency_ms.unwrap_or(0.0) / 1000.0;
        let _ = write!(
            o,
            "    <testcase classname=\"{}\" name=\"{}\" time=\"{time:.3}\"",
            xml(&run.suite),
            xml(&r.case_id)
        );
        let output = r.detail.get("output").and_then(Value::as_str).unwrap_or("");
        if let Some(e) = r.detail.get("error").and_then(Value::as_str) {
            let _ = writeln!(o, ">\n      <error message=\"{}\"/>\n    </testcase>", xml(e));
        } else if r.passed {
            o.push_str("/>\n");
        } else {
            let failed: Vec<String> = verdicts(r).iter().filter(|v| !v.passed).map(describe).collect();
            let _ = writeln!(
                o,
                ">\n      <failure message=\"{}\">{}</failure>\n      <system-out>{}</system-out>\n    </testcase>",
                xml(&failed.join("; ")),
                xml(&failed.join("\n")),
                xml(output)
            );
        }
    }
    o.push_str("  </testsuite>\n</testsuites>\n");
    o
}

fn h(s: &str) -> String {
    xml(s)
}

/// A word diff of `expected` against `actual`: removed words struck, added ones marked.
fn diff(expected: &str, actual: &str) -> String {
    let d = similar::TextDiff::from_words(expected, actual);
    let mut o = String::new();
    for c in d.iter_all_changes() {
        let v = h(c.value());
        match c.tag() {
            similar::ChangeTag::Equal => o.push_str(&v),
            similar::ChangeTag::Delete => {
                let _ = write!(o, "<del>{v}</del>");
            }
            similar::ChangeTag::Insert => {
                let _ = write!(o, "<ins>{v}</ins>");
            }
        }
    }
    o
}

const STYLE: &str = "body{font:15px/1.45 system-ui,sans-serif;margin:2rem;max-width:90rem;color:#1b1b1b}\
table{border-collapse:collapse;width:100%}th,td{border:1px solid #ccc;padding:.35rem .5rem;vertical-align:top;\
text-align:left}th{background:#f2f2f2}pre{white-space:pre-wrap;margin:0;font:13px/1.4 ui-monospace,monospace}\
.pass{color:#0a6b2d;font-weight:600}.fail{color:#a4161a;font-weight:600}del{background:#fdd;text-decoration:line-through}\
ins{background:#dfd;text-decoration:none}details summary{cursor:pointer}.num{text-align:right}";

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" \
         content=\"width=device-width,initial-scale=1\"><title>{}</title><style>{STYLE}</style></head>\n<body>\n{body}\
         </body></html>\n",
        h(title)
    )
}

fn case_rows(o: &mut String, r: &EvalResult) {
    let out = r.detail.get("output").and_then(Value::as_str).unwrap_or("");
    let input = r.detail.get("prompt").and_then(Value::as_str).map_or_else(
        || serde_json::to_string_pretty(r.detail.get("input").unwrap_or(&Value::Null)).unwrap_or_default(),
        str::to_string,
    );
    let mut checks = String::new();
    for v in verdicts(r) {
        let class = if v.passed { "pass" } else { "fail" };
        let _ = write!(
            checks,
            "<div><span class=\"{class}\">{}</span> {}",
            if v.passed { "✓" } else { "✗" },
            h(&describe(&v))
        );
        if !v.passed
            && matches!(v.check.as_str(), "exact" | "contains")
            && let Some(e) = &v.expected
        {
            let _ = write!(checks, "<br><small>diff:</small> <pre>{}</pre>", diff(e, out));
        }
        checks.push_str("</div>");
    }
    if let Some(e) = r.detail.get("error").and_then(Value::as_str) {
        let _ = write!(checks, "<div><span class=\"fail\">error</span> {}</div>", h(e));
    }
    let _ = writeln!(
        o,
        "<tr><td>{}<br><span class=\"{}\">{}</span></td><td><details><summary>input</summary><pre>{}</pre></details></td>\
         <td><pre>{}</pre></td><td>{checks}</td><td class=\"num\">{}</td></tr>",
        h(&r.case_id),
        if r.passed { "pass" } else { "fail" },
        if r.passed { "passed" } else { "failed" },
        h(&input),
        h(out),
        ms(r.latency_ms)
    );
}

const CASE_HEAD: &str = "<table><thead><tr><th scope=\"col\">case</th><th scope=\"col\">input</th><th scope=\"col\">output</th><th scope=\"col\">checks</th><th scope=\"col\">latency</th></tr></thead><tbody>\n";

/// The HTML report of a run: summary, then failed cases first, then the rest.
pub fn html(run: &EvalRun, s: &Summary, results: &[EvalResult]) -> String {
    let mut o = String::new();
    let _ = write!(
        o,
        "<h1>Suite {} — run {}</h1>\n<p><strong>{}/{}</strong> passed ({:.1}%, 95% CI {:.1}–{:.1}%); {} failed, {} errors. Latency p50 {} p95 {}. Cost ${:.6}. Tokens {} in, {} out.</p>\n",
        h(&run.suite),
        h(&run.id),
        s.passed,
        s.cases,
        s.pass_rate * 100.0,
        s.pass_rate_low * 100.0,
        s.pass_rate_high * 100.0,
        s.failed,
        s.errors,
        ms(s.latency_p50_ms),
        ms(s.latency_p95_ms),
        s.cost_usd,
        s.tokens_in,
        s.tokens_out
    );
    o.push_str("<table><thead><tr><th scope=\"col\">check</th><th scope=\"col\">passed</th><th scope=\"col\">of</th></tr></thead><tbody>\n");
    for (c, (p, n)) in &s.checks {
        let _ = writeln!(o, "<tr><td>{}</td><td class=\"num\">{p}</td><td class=\"num\">{n}</td></tr>", h(c));
    }
    o.push_str("</tbody></table>\n");
    if !s.templates.is_empty() {
        let _ = writeln!(o, "<p>Template: {}</p>", h(&s.templates.join(", ")));
    }
    o.push_str("<h2>Cases, failed first</h2>\n");
    o.push_str(CASE_HEAD);
    for r in results.iter().filter(|r| !r.passed).chain(results.iter().filter(|r| r.passed)) {
        case_rows(&mut o, r);
    }
    o.push_str("</tbody></table>\n");
    page(&format!("keel eval: {}", run.suite), &o)
}

/// The HTML comparison of two runs: regressions first, each case's output before and after.
pub fn compare_html(c: &Comparison) -> String {
    let mut o = String::new();
    let _ = write!(
        o,
        "<h1>{} → {}</h1>\n<p>{} paired cases; pass rate {:.1}% → {:.1}%. Regressed <strong>{}</strong>, improved \
         <strong>{}</strong>, both passed {}, both failed {}. McNemar's exact test (paired, two-sided): p = {:.4}.</p>\n",
        h(&c.run_a),
        h(&c.run_b),
        c.paired,
        c.pass_rate_a * 100.0,
        c.pass_rate_b * 100.0,
        c.regressed.len(),
        c.improved.len(),
        c.both_passed,
        c.both_failed,
        c.p_value
    );
    for (title, list) in [("Regressed", &c.regressed), ("Improved", &c.improved)] {
        let _ = write!(
            o,
            "<h2>{title} ({})</h2>\n<table><thead><tr><th scope=\"col\">case</th><th scope=\"col\">before</th><th scope=\"col\">after</th><th scope=\"col\">diff</th></tr></thead><tbody>\n",
            list.len()
        );
        for ch in list {
            let out = |d: &Value| d.get("output").and_then(Value::as_str).unwrap_or("").to_string();
            let (a, b) = (out(&ch.before), out(&ch.after));
            let _ = writeln!(
                o,
                "<tr><td>{}</td><td><pre>{}</pre></td><td><pre>{}</pre></td><td><pre>{}</pre></td></tr>",
                h(&ch.case_id),
                h(&a),
                h(&b),
                diff(&a, &b)
            );
        }
        o.push_str("</tbody></table>\n");
    }
    page(&format!("keel eval: {} vs {}", c.run_a, c.run_b), &o)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn sample() -> (EvalRun, Vec<EvalResult>) {
        let run = EvalRun {
            id: "run-1".into(),
            suite: "s<&>".into(),
            suite_hash: "h".into(),
            started_ms: 0,
            finished_ms: Some(1),
            cases: 3,
            meta: serde_json::json!({}),
            summary: None,
        };
        let v = |passed| serde_json::json!([{"check": "exact", "passed": passed, "expected": "Paris"}]);
        let results = vec![
            EvalResult {
                run_id: "run-1".into(),
                case_id: "a".into(),
                seq: 0,
                passed: true,
                latency_ms: Some(10.0),
                cost_usd: None,
                detail: serde_json::json!({"output": "Paris", "checks": v(true)}),
            },
            EvalResult {
                run_id: "run-1".into(),
                case_id: "b\"<x>".into(),
                seq: 1,
                passed: false,
                latency_ms: Some(20.0),
                cost_usd: None,
                detail: serde_json::json!({"output": "Lyon <b>", "checks": v(false)}),
            },
            EvalResult {
                run_id: "run-1".into(),
                case_id: "c".into(),
                seq: 2,
                passed: false,
                latency_ms: None,
                cost_usd: None,
                detail: serde_json::json!({"error": "HTTP 503: overloaded"}),
            },
        ];
        (run, results)
    }

    #[test]
    fn junit_counts_failures_and_errors_apart_and_escapes_everything() {
        let (run, results) = sample();
        let s = Summary::of(&results, 1000.0);
        let x = junit(&run, &s, &results);
        assert!(x.contains("tests=\"3\" failures=\"1\" errors=\"1\""), "{x}");
        assert!(x.contains("name=\"b&quot;&lt;x&gt;\""));
        assert!(x.contains("<error message=\"HTTP 503: overloaded\"/>"));
        assert!(x.contains("exact: expected Paris"));
        assert!(!x.contains("<b>"), "outputs are escaped");
    }

    #[test]
    fn the_html_report_is_self_contained_escaped_and_puts_failures_first() {
        let (run, results) = sample();
        let s = Summary::of(&results, 1000.0);
        let page = html(&run, &s, &results);
        assert!(!page.contains("<script") && !page.contains("http://") && !page.contains("https://"));
        assert!(page.contains("Lyon &lt;b&gt;"));
        assert!(page.contains("<del>Paris</del>"), "the diff of a failed exact check");
        let failed_at = page.find("b&quot;&lt;x&gt;").unwrap();
        let passed_at = page.find("<td>a<br>").unwrap();
        assert!(failed_at < passed_at);
        assert!(page.contains("s&lt;&amp;&gt;"));
    }
}

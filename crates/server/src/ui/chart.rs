//! Charts as inline SVG drawn on the server: no script, nothing to download, and each chart comes with its data
//! as a table (its text alternative) in the same figure.

use maud::{Markup, html};

/// One bar: its label (a time) and value.
pub(crate) struct Bar {
    pub label: String,
    pub value: f64,
}

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 160.0;
const LEFT: f64 = 72.0;
const BOTTOM: f64 = 22.0;

/// A bar chart in a `<figure>`: `caption` names it, `unit` formats values, the table below lists every bar.
pub(crate) fn bars(id: &str, caption: &str, bars: &[Bar], unit: fn(f64) -> String) -> Markup {
    let max = bars.iter().map(|b| b.value).fold(0.0_f64, f64::max);
    let top = if max > 0.0 { max } else { 1.0 };
    let n = bars.len().max(1) as f64;
    let slot = (WIDTH - LEFT) / n;
    let bar_w = (slot * 0.8).max(1.0);
    let plot_h = HEIGHT - BOTTOM - 8.0;
    let summary = match bars.iter().max_by(|a, b| a.value.total_cmp(&b.value)) {
        Some(b) if max > 0.0 => format!("{caption}: {} buckets, highest {} at {}", bars.len(), unit(b.value), b.label),
        _ => format!("{caption}: no data in this range"),
    };
    let label_every = (bars.len() / 6).max(1);
    html! {
        figure.chart aria-labelledby=(format!("{id}-caption")) {
            figcaption id=(format!("{id}-caption")) { (caption) }
            svg viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) role="img" aria-label=(summary) preserveAspectRatio="none" {
                line x1=(LEFT) y1=(HEIGHT - BOTTOM) x2=(WIDTH) y2=(HEIGHT - BOTTOM) class="axis" {}
                text x=(LEFT - 6.0) y="14" text-anchor="end" class="tick" { (unit(top)) }
                text x=(LEFT - 6.0) y=(HEIGHT - BOTTOM) text-anchor="end" class="tick" { "0" }
                @for (i, b) in bars.iter().enumerate() {
                    @let h = (b.value / top * plot_h).max(if b.value > 0.0 { 1.0 } else { 0.0 });
                    @let x = LEFT + i as f64 * slot + (slot - bar_w) / 2.0;
                    rect x=(fmt(x)) y=(fmt(HEIGHT - BOTTOM - h)) width=(fmt(bar_w)) height=(fmt(h)) class="bar" {
                        title { (b.label) ": " (unit(b.value)) }
                    }
                    @if i % label_every == 0 {
                        text x=(fmt(x + bar_w / 2.0)) y=(HEIGHT - 6.0) text-anchor="middle" class="tick" { (b.label) }
                    }
                }
            }
            details {
                summary { "Data" }
                table {
                    caption.visually-hidden { (caption) " (data)" }
                    thead { tr { th scope="col" { "Time" } th scope="col" { (caption) } } }
                    tbody {
                        @for b in bars {
                            tr { td { (b.label) } td.num { (unit(b.value)) } }
                        }
                    }
                }
            }
        }
    }
}

fn fmt(v: f64) -> String {
    format!("{v:.1}")
}

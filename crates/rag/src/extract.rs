//! Documents into text with their structure: Markdown as it is, HTML converted to Markdown (headings, lists,
//! code blocks and tables kept, scripts, styles and navigation dropped), plain text as it is, PDF as its pages'
//! lines and paragraphs (src/pdf.rs). One structured form means one splitter and one way to find a chunk's
//! heading path.

use std::path::Path;

use htmd::element_handler::Handlers;

/// The kinds of document keel ingests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Markdown,
    Html,
    Text,
    Pdf,
}

impl Kind {
    /// The kind of a file, from its extension; `None` for what keel does not read.
    pub fn of(path: &Path) -> Option<Kind> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "md" | "markdown" | "mdx" => Some(Kind::Markdown),
            "html" | "htm" | "xhtml" => Some(Kind::Html),
            "txt" | "text" | "rst" => Some(Kind::Text),
            "pdf" => Some(Kind::Pdf),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Markdown => "markdown",
            Kind::Html => "html",
            Kind::Text => "text",
            Kind::Pdf => "pdf",
        }
    }

    /// Whether the extracted text is Markdown (and so split on its structure).
    pub fn structured(self) -> bool {
        matches!(self, Kind::Markdown | Kind::Html)
    }
}

/// A document's text, ready to split.
#[derive(Debug, Clone)]
pub struct Extracted {
    pub kind: Kind,
    pub text: String,
    /// The document's title when it has one (HTML `<title>`, else the first heading).
    pub title: Option<String>,
}

/// Why a document could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("not UTF-8 text")]
    NotText,
    #[error("HTML: {0}")]
    Html(String),
    #[error("PDF: {0}")]
    Pdf(String),
    #[error("no text in it")]
    Empty,
}

/// Extracts a document's text.
pub fn extract(kind: Kind, bytes: &[u8]) -> Result<Extracted, ExtractError> {
    let (text, title) = match kind {
        Kind::Pdf => crate::pdf::read(bytes)?,
        Kind::Markdown | Kind::Text => (utf8_text(bytes)?.replace("\r\n", "\n"), None),
        Kind::Html => {
            let raw = utf8_text(bytes)?;
            let title = html_title(raw);
            let converter = htmd::HtmlToMarkdown::builder()
                .skip_tags(vec!["script", "style", "head", "nav", "footer", "noscript", "iframe", "svg", "template"])
                .add_handler(vec!["div", "table", "ul", "header", "section"], |h: &dyn Handlers, e: htmd::Element| {
                    let chrome = e.attrs.iter().any(|a| is_chrome(&a.name.local, &a.value));
                    if chrome { None } else { h.fallback(e) }
                })
                .build();
            let md = converter.convert(raw).map_err(|e| ExtractError::Html(e.to_string()))?;
            (md, title)
        }
    };
    if text.trim().is_empty() {
        return Err(ExtractError::Empty);
    }
    let title = title.or_else(|| if kind.structured() { first_heading(&text) } else { None });
    Ok(Extracted { kind, text, title })
}

/// A text document's bytes as text: UTF-8 without NUL bytes, a byte-order mark dropped.
fn utf8_text(bytes: &[u8]) -> Result<&str, ExtractError> {
    let raw = std::str::from_utf8(bytes).map_err(|_| ExtractError::NotText)?;
    if raw.contains('\0') {
        return Err(ExtractError::NotText);
    }
    Ok(raw.strip_prefix('\u{feff}').unwrap_or(raw))
}

/// Classes of page chrome that generated documentation wraps around the content (DocBook's "Prev / Up /
/// Next" bars, breadcrumbs, site navigation): text in every page that would match every query.
const CHROME_CLASSES: &[&str] =
    &["navheader", "navfooter", "navigation", "navbar", "breadcrumb", "breadcrumbs", "skip-link", "sidebar"];

/// Whether an attribute marks an element as page chrome.
fn is_chrome(name: &str, value: &str) -> bool {
    (name == "class" && value.split_whitespace().any(|c| CHROME_CLASSES.contains(&c)))
        || (name == "role" && value == "navigation")
}

/// The text of an HTML document's `<title>`, white space collapsed.
fn html_title(html: &str) -> Option<String> {
    let lower = html.to_ascii_lowercase();
    let open = lower.find("<title")?;
    let start = open + lower[open..].find('>')? + 1;
    let end = start + lower[start..].find("</title")?;
    let title = html.get(start..end)?.split_whitespace().collect::<Vec<_>>().join(" ");
    (!title.is_empty()).then_some(title)
}

fn first_heading(md: &str) -> Option<String> {
    crate::chunk::headings(md).into_iter().next().map(|h| h.title)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn html_keeps_structure_and_drops_scripts() {
        let html = "<html><head><title>The  Title</title><style>p{}</style></head><body><nav>menu</nav>\
            <div class=\"navheader\"><table><tr><td>Prev</td><td>Up</td></tr></table></div>\
            <h1>Intro</h1><p>Hello <b>world</b>.</p><ul><li>one</li><li>two</li></ul>\
            <pre><code>let x = 1;</code></pre><table><tr><th>a</th><th>b</th></tr><tr><td>1</td><td>2</td></tr>\
            </table><script>alert(1)</script></body></html>";
        let e = extract(Kind::Html, html.as_bytes()).unwrap();
        assert_eq!(e.title.as_deref(), Some("The Title"));
        assert!(e.text.contains("# Intro"), "{}", e.text);
        assert!(e.text.contains("*   one") || e.text.contains("- one") || e.text.contains("* one"), "{}", e.text);
        assert!(e.text.contains("let x = 1;"), "{}", e.text);
        assert!(e.text.contains("| a | b |") || e.text.contains("a | b"), "{}", e.text);
        assert!(!e.text.contains("alert"), "{}", e.text);
        assert!(!e.text.contains("menu"), "{}", e.text);
        assert!(!e.text.contains("Prev"), "{}", e.text);
    }

    #[test]
    fn binary_and_empty_files_are_errors() {
        assert!(matches!(extract(Kind::Text, &[0xff, 0xfe, 0x00]), Err(ExtractError::NotText)));
        assert!(matches!(extract(Kind::Markdown, b"  \n\n "), Err(ExtractError::Empty)));
        assert!(matches!(extract(Kind::Text, b"a\0b"), Err(ExtractError::NotText)));
    }

    #[test]
    fn kinds_from_extensions() {
        assert_eq!(Kind::of(Path::new("a/B.MD")), Some(Kind::Markdown));
        assert_eq!(Kind::of(Path::new("x.htm")), Some(Kind::Html));
        assert_eq!(Kind::of(Path::new("manual.PDF")), Some(Kind::Pdf));
        assert_eq!(Kind::of(Path::new("x.png")), None);
        assert_eq!(Kind::of(Path::new("README")), None);
    }
}

//! PDF documents into text: each page's text in reading order of its content stream, lines where the text moves
//! down a line, a blank line (a paragraph) where it moves down more than one and a half times the font size, and
//! between pages.
//!
//! lopdf parses the file: its parser bounds nesting, decompressed stream sizes and the page tree, which hostile
//! files are made to exhaust (pdf-extract, the usual choice, panics by design on what it does not support and
//! pins an older lopdf without those bounds). lopdf's own `extract_text` ignores text positioning, so words of
//! one text block run together; the walk over the content operators below is ours for that reason: it keeps
//! lines, words and paragraphs apart, which BM25 and the chunker both depend on.
//!
//! What is left out, and said so in docs/rag.md: text drawn inside form XObjects, text in fonts without a usable
//! encoding (when that is all of a file's text, the file is refused as having no text), images (no OCR).

use std::collections::BTreeMap;

use lopdf::content::Content;
use lopdf::{Document, Encoding, LoadOptions, Object};

use crate::extract::ExtractError;

/// Pages read from one PDF at most: past it the file is refused, never cut short.
pub const MAX_PAGES: usize = 10_000;
/// What any one stream (a page's content, a font's map, an object stream) may inflate to.
const MAX_STREAM_BYTES: usize = 64 << 20;

/// The text of a PDF and its title (the document information's `Title`), or why there is none.
pub(crate) fn read(bytes: &[u8]) -> Result<(String, Option<String>), ExtractError> {
    // lopdf bounds its recursion and allocations, but it parses hostile input: a panic in it is this file's
    // failure, reported like any other, never the ingest run's or the server's.
    std::panic::catch_unwind(|| read_unguarded(bytes))
        .unwrap_or_else(|_| Err(ExtractError::Pdf("the PDF reader failed on this file".into())))
}

fn read_unguarded(bytes: &[u8]) -> Result<(String, Option<String>), ExtractError> {
    let options = LoadOptions { max_decompressed_size: Some(MAX_STREAM_BYTES), ..LoadOptions::default() };
    let doc = Document::load_mem_with_options(bytes, options).map_err(|e| ExtractError::Pdf(e.to_string()))?;
    let pages = doc.get_pages();
    if pages.len() > MAX_PAGES {
        return Err(ExtractError::Pdf(format!("{} pages is more than the {MAX_PAGES} keel reads", pages.len())));
    }
    let mut text = String::new();
    let mut undecoded = 0usize;
    for (number, page) in pages {
        let content = doc
            .get_page_content_with_limit(page, MAX_STREAM_BYTES)
            .and_then(|data| Content::decode(&data))
            .map_err(|e| ExtractError::Pdf(format!("page {number}: {e}")))?;
        // A font whose encoding cannot be read leaves its strings undecoded (counted), not the page unread.
        let fonts: BTreeMap<Vec<u8>, Encoding> = doc
            .get_page_fonts(page)
            .map_err(|e| ExtractError::Pdf(format!("page {number}: {e}")))?
            .into_iter()
            .filter_map(|(name, font)| {
                font.get_font_encoding_with_limit(&doc, MAX_STREAM_BYTES).ok().map(|e| (name, e))
            })
            .collect();
        let mut walk = Walk::new(&fonts);
        for op in &content.operations {
            walk.step(&op.operator, &op.operands);
        }
        undecoded += walk.undecoded;
        let page_text = tidy(&walk.out);
        if !page_text.is_empty() {
            if !text.is_empty() {
                text.push_str("\n\n");
            }
            text.push_str(&page_text);
        }
    }
    if text.trim().is_empty() && undecoded > 0 {
        return Err(ExtractError::Pdf(format!("its text ({undecoded} strings) is in fonts keel cannot decode")));
    }
    Ok((text, title(&doc)))
}

/// The document information's title, when it has a non-empty one.
fn title(doc: &Document) -> Option<String> {
    let info = match doc.trailer.get(b"Info").ok()? {
        Object::Reference(id) => doc.get_object(*id).ok()?,
        other => other,
    };
    let raw = info.as_dict().ok()?.get(b"Title").ok()?;
    let t = lopdf::decode_text_string(raw).ok()?;
    let t = t.split_whitespace().collect::<Vec<_>>().join(" ");
    (!t.is_empty()).then_some(t)
}

/// A number operand, integer or real.
fn num(o: Option<&Object>) -> Option<f32> {
    match o? {
        Object::Integer(i) => Some(*i as f32),
        Object::Real(r) => Some(*r),
        _ => None,
    }
}

/// What separates the next shown text from what came before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Gap {
    None,
    Space,
    Line,
    Paragraph,
}

/// The text state of one page's content stream, as far as reading order needs it: the current font's encoding
/// and size, the text line's vertical position in user space, and the leading.
struct Walk<'a> {
    fonts: &'a BTreeMap<Vec<u8>, Encoding<'a>>,
    font: Option<&'a Encoding<'a>>,
    size: f32,
    /// The text matrix's vertical scale (a `Tm`'s `d`), which `Td` offsets and the font size are multiplied by.
    scale: f32,
    /// The current line's vertical position in user space.
    y: f32,
    leading: f32,
    /// Where the last shown text was, if any text was shown on this page.
    shown_y: Option<f32>,
    pending: Gap,
    out: String,
    undecoded: usize,
}

impl<'a> Walk<'a> {
    fn new(fonts: &'a BTreeMap<Vec<u8>, Encoding<'a>>) -> Self {
        Self {
            fonts,
            font: None,
            size: 10.0,
            scale: 1.0,
            y: 0.0,
            leading: 0.0,
            shown_y: None,
            pending: Gap::None,
            out: String::new(),
            undecoded: 0,
        }
    }

    fn step(&mut self, operator: &str, operands: &[Object]) {
        match operator {
            "BT" => {
                self.y = 0.0;
                self.scale = 1.0;
            }
            "Tf" => {
                self.font = operands.first().and_then(|n| n.as_name().ok()).and_then(|n| self.fonts.get(n));
                if let Some(size) = num(operands.get(1)).filter(|s| s.is_finite() && *s != 0.0) {
                    self.size = size.abs();
                }
            }
            "TL" => self.leading = num(operands.first()).unwrap_or(0.0),
            "Td" | "TD" => {
                let tx = num(operands.first()).unwrap_or(0.0);
                let ty = num(operands.get(1)).unwrap_or(0.0);
                if operator == "TD" {
                    self.leading = -ty;
                }
                self.move_to(self.y + ty * self.scale, tx != 0.0);
            }
            "Tm" => {
                let c = num(operands.get(2)).unwrap_or(0.0);
                let d = num(operands.get(3)).unwrap_or(1.0);
                let scale = c.hypot(d);
                self.scale = if scale.is_finite() && scale > 0.0 { scale } else { 1.0 };
                self.move_to(num(operands.get(5)).unwrap_or(0.0), true);
            }
            "T*" => self.next_line(),
            "Tj" => self.show(operands.first()),
            "'" => {
                self.next_line();
                self.show(operands.first());
            }
            "\"" => {
                self.next_line();
                self.show(operands.get(2));
            }
            "TJ" => {
                if let Some(Object::Array(items)) = operands.first() {
                    for item in items {
                        match item {
                            // A shift left of more than a quarter of the font's width unit is a word space.
                            Object::Integer(_) | Object::Real(_) if num(Some(item)).is_some_and(|n| n < -250.0) => {
                                self.pending = self.pending.max(Gap::Space);
                            }
                            Object::String(..) => self.show(Some(item)),
                            _ => {}
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn next_line(&mut self) {
        let leading = if self.leading == 0.0 { self.size } else { self.leading };
        self.move_to(self.y - leading * self.scale, true);
    }

    /// The line moves to `y`: compared with the last shown text, the same line (a space if the move went
    /// sideways), the next line, or further down (a paragraph).
    fn move_to(&mut self, y: f32, sideways: bool) {
        self.y = if y.is_finite() { y } else { self.y };
        let Some(shown) = self.shown_y else { return };
        let line = self.size * self.scale;
        let dy = (shown - self.y).abs();
        let gap = if dy < 0.5 * line {
            if sideways { Gap::Space } else { Gap::None }
        } else if dy > 1.5 * line {
            Gap::Paragraph
        } else {
            Gap::Line
        };
        self.pending = self.pending.max(gap);
    }

    fn show(&mut self, operand: Option<&Object>) {
        let Some(Object::String(bytes, _)) = operand else { return };
        let Some(encoding) = self.font else {
            self.undecoded += 1;
            return;
        };
        let mut text = String::new();
        if encoding.write_to_string(bytes, &mut text).is_err() {
            self.undecoded += 1;
            return;
        }
        if text.is_empty() {
            return;
        }
        if !self.out.is_empty() {
            match self.pending {
                Gap::None => {}
                Gap::Space if self.out.ends_with(char::is_whitespace) || text.starts_with(char::is_whitespace) => {}
                Gap::Space => self.out.push(' '),
                Gap::Line => self.out.push('\n'),
                Gap::Paragraph => self.out.push_str("\n\n"),
            }
        }
        self.pending = Gap::None;
        self.out.push_str(&text);
        self.shown_y = Some(self.y);
    }
}

/// A page's text with lines' ends trimmed, runs of spaces made one, and at most one blank line in a row.
fn tidy(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut blank = true;
    for line in text.lines() {
        let line = line.split_whitespace().collect::<Vec<_>>().join(" ");
        if line.is_empty() {
            if !blank {
                out.push('\n');
            }
            blank = true;
            continue;
        }
        out.push_str(&line);
        out.push('\n');
        blank = false;
    }
    out.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use lopdf::content::Operation;
    use lopdf::{Stream, dictionary};

    /// A PDF made the way word processors write one: each paragraph a text block of lines moved with `Td`, words
    /// kerned with `TJ`, headings in a larger bold font; one page per entry of `pages`.
    fn sample(pages: &[&[(&str, &[&str])]], title: Option<&str>) -> Vec<u8> {
        let mut doc = Document::with_version("1.5");
        let pages_id = doc.new_object_id();
        let body = doc.add_object(
            dictionary! {"Type"=>"Font","Subtype"=>"Type1","BaseFont"=>"Helvetica","Encoding"=>"WinAnsiEncoding"},
        );
        let bold = doc.add_object(
            dictionary! {"Type"=>"Font","Subtype"=>"Type1","BaseFont"=>"Helvetica-Bold","Encoding"=>"WinAnsiEncoding"},
        );
        let mut kids = Vec::new();
        for sections in pages {
            let mut ops = Vec::new();
            let mut y = 780;
            for (heading, paragraphs) in *sections {
                ops.push(Operation::new("BT", vec![]));
                ops.push(Operation::new("Tf", vec!["F2".into(), 18.into()]));
                ops.push(Operation::new("Td", vec![72.into(), y.into()]));
                ops.push(Operation::new("Tj", vec![Object::string_literal(*heading)]));
                ops.push(Operation::new("ET", vec![]));
                y -= 30;
                for paragraph in *paragraphs {
                    ops.push(Operation::new("BT", vec![]));
                    ops.push(Operation::new("Tf", vec!["F1".into(), 11.into()]));
                    ops.push(Operation::new("Td", vec![72.into(), y.into()]));
                    // Lines of six words, the words kerned apart in one TJ array, the next line 13 units down.
                    let words: Vec<&str> = paragraph.split(' ').collect();
                    for (i, line) in words.chunks(6).enumerate() {
                        if i > 0 {
                            ops.push(Operation::new("Td", vec![0.into(), (-13).into()]));
                            y -= 13;
                        }
                        let mut items = Vec::new();
                        for (j, w) in line.iter().enumerate() {
                            if j > 0 {
                                items.push(Object::Integer(-278));
                            }
                            items.push(Object::string_literal(*w));
                        }
                        ops.push(Operation::new("TJ", vec![Object::Array(items)]));
                    }
                    ops.push(Operation::new("ET", vec![]));
                    y -= 24;
                }
            }
            let content = doc.add_object(Stream::new(dictionary! {}, Content { operations: ops }.encode().unwrap()));
            kids.push(Object::Reference(doc.add_object(dictionary! {
                "Type"=>"Page", "Parent"=>pages_id, "Contents"=>content,
                "Resources"=>dictionary! {"Font"=>dictionary! {"F1"=>body, "F2"=>bold}},
            })));
        }
        let count = kids.len() as i64;
        doc.objects.insert(
            pages_id,
            Object::Dictionary(dictionary! {
                "Type"=>"Pages", "Kids"=>kids, "Count"=>count,
                "MediaBox"=>vec![0.into(), 0.into(), 595.into(), 842.into()],
            }),
        );
        let catalog = doc.add_object(dictionary! {"Type"=>"Catalog", "Pages"=>pages_id});
        doc.trailer.set("Root", catalog);
        if let Some(t) = title {
            let info = doc.add_object(dictionary! {"Title"=>Object::string_literal(t)});
            doc.trailer.set("Info", info);
        }
        let mut out = Vec::new();
        doc.save_to(&mut out).unwrap();
        out
    }

    #[test]
    fn lines_words_paragraphs_and_pages_kept_apart() {
        let pdf = sample(
            &[
                &[(
                    "Installing keel",
                    &[
                        "Download the binary for your platform and put it on the path of every machine that serves",
                        "Then run the first command.",
                    ],
                )],
                &[("Configuring routes", &["Edit the configuration file next."])],
            ],
            Some("The  keel manual"),
        );
        let (text, title) = read(&pdf).unwrap();
        assert_eq!(title.as_deref(), Some("The keel manual"));
        let expected = "Installing keel\n\n\
            Download the binary for your platform\nand put it on the path\nof every machine that serves\n\n\
            Then run the first command.\n\n\
            Configuring routes\n\nEdit the configuration file next.";
        assert_eq!(text, expected);
    }

    #[test]
    fn broken_files_are_errors_not_panics() {
        assert!(matches!(read(b"not a pdf at all"), Err(ExtractError::Pdf(_))));
        let pdf = sample(&[&[("Title", &["Some words here."])]], None);
        for cut in [10, pdf.len() / 3, pdf.len() / 2, pdf.len() - 40] {
            let _ = read(&pdf[..cut]); // an error or what could be read; never a panic
        }
        // Every byte flipped in turn in the first kilobyte: no panic escapes.
        let mut bad = pdf.clone();
        for i in (0..bad.len().min(1024)).step_by(7) {
            bad[i] ^= 0x5a;
            let _ = read(&bad);
            bad[i] ^= 0x5a;
        }
    }

    #[test]
    fn a_file_without_text_is_refused() {
        let pdf = sample(&[&[]], None);
        let (text, _) = read(&pdf).unwrap();
        assert!(text.is_empty(), "{text:?}");
        let refused = crate::extract::extract(crate::extract::Kind::Pdf, &pdf);
        assert!(matches!(refused, Err(ExtractError::Empty)), "{refused:?}");
    }
}

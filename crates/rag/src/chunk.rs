//! Chunking on semantic boundaries within a token range, with overlap: `text-splitter` cuts Markdown at
//! headings, then blocks (paragraphs, lists, code), then sentences, then words, and plain text at paragraphs,
//! sentences, then words; sizes are counted in the embedding model's own tokens. Each chunk keeps its byte
//! offsets in the extracted text and the path of headings above it.

use std::sync::Arc;

use pulldown_cmark::{Event, Parser, Tag, TagEnd};
use text_splitter::{ChunkConfig, ChunkSizer, MarkdownSplitter, TextSplitter};

use crate::RagError;
use crate::extract::Extracted;

/// Counts tokens the way the embedding model does.
pub trait TokenCount: Send + Sync {
    fn count(&self, text: &str) -> usize;
}

/// An estimate for when the model's tokenizer is not known: about four bytes per token, as English text with
/// BPE and WordPiece vocabularies averages, and never fewer tokens than words.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApproxTokens;

impl TokenCount for ApproxTokens {
    fn count(&self, text: &str) -> usize {
        (text.len() / 4).max(text.split_whitespace().count())
    }
}

#[derive(Clone)]
struct Sizer(Arc<dyn TokenCount>);

impl ChunkSizer for Sizer {
    fn size(&self, chunk: &str) -> usize {
        self.0.count(chunk)
    }
}

/// One chunk of a document.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    pub text: String,
    /// Byte offsets of the chunk in the extracted text.
    pub start: usize,
    pub end: usize,
    /// The headings above the chunk, outermost first (the document's title first when it has one).
    pub headings: Vec<String>,
    pub tokens: usize,
}

impl Chunk {
    /// The text the embedding model sees: the heading path, then the chunk, so that a chunk deep in a section
    /// still carries what the section is about.
    pub fn embedding_text(&self) -> String {
        if self.headings.is_empty() {
            self.text.clone()
        } else {
            format!("{}\n\n{}", self.headings.join(" > "), self.text)
        }
    }
}

/// The chunking settings: a range of tokens per chunk and the tokens shared by neighbours.
#[derive(Clone)]
pub struct Chunker {
    markdown: Arc<MarkdownSplitter<Sizer>>,
    text: Arc<TextSplitter<Sizer>>,
    counter: Arc<dyn TokenCount>,
}

impl std::fmt::Debug for Chunker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chunker").finish_non_exhaustive()
    }
}

impl Chunker {
    /// Chunks of `min..=max` tokens where the structure allows (a short section stays whole), `overlap` tokens
    /// repeated between neighbours.
    pub fn new(min: usize, max: usize, overlap: usize, counter: Arc<dyn TokenCount>) -> Result<Self, RagError> {
        if min == 0 || min > max {
            return Err(RagError::Invalid(format!("chunk size: need 0 < min <= max, got {min}..={max}")));
        }
        if overlap >= min {
            return Err(RagError::Invalid(format!("chunk overlap {overlap} must be below the minimum size {min}")));
        }
        let config = || {
            ChunkConfig::new(min..=max)
                .with_sizer(Sizer(counter.clone()))
                .with_overlap(overlap)
                .map_err(|e| RagError::Invalid(e.to_string()))
        };
        Ok(Self {
            markdown: Arc::new(MarkdownSplitter::new(config()?)),
            text: Arc::new(TextSplitter::new(config()?)),
            counter,
        })
    }

    /// Splits a document.
    pub fn split(&self, doc: &Extracted) -> Vec<Chunk> {
        let pieces: Vec<(usize, &str)> = if doc.kind.structured() {
            self.markdown.chunk_indices(&doc.text).collect()
        } else {
            self.text.chunk_indices(&doc.text).collect()
        };
        let headings = if doc.kind.structured() { headings(&doc.text) } else { Vec::new() };
        pieces
            .into_iter()
            .filter(|(_, t)| !t.trim().is_empty())
            .map(|(start, text)| {
                let mut path: Vec<String> = doc.title.iter().cloned().collect();
                path.extend(heading_path(&headings, start));
                if path.len() >= 2 && path[0] == path[1] {
                    path.remove(0);
                }
                Chunk {
                    text: text.to_string(),
                    start,
                    end: start + text.len(),
                    headings: path,
                    tokens: self.counter.count(text),
                }
            })
            .collect()
    }
}

/// A heading of a Markdown document.
#[derive(Debug, Clone, PartialEq)]
pub struct Heading {
    pub offset: usize,
    pub level: usize,
    pub title: String,
}

/// The headings of a Markdown document, in order.
pub fn headings(md: &str) -> Vec<Heading> {
    let mut out = Vec::new();
    let mut open: Option<(usize, usize, String)> = None;
    for (event, range) in Parser::new(md).into_offset_iter() {
        match event {
            Event::Start(Tag::Heading { level, .. }) => open = Some((range.start, level as usize, String::new())),
            Event::Text(t) | Event::Code(t) => {
                if let Some((_, _, title)) = open.as_mut() {
                    title.push_str(&t);
                }
            }
            Event::End(TagEnd::Heading(_)) => {
                if let Some((offset, level, title)) = open.take() {
                    let title = title.split_whitespace().collect::<Vec<_>>().join(" ");
                    if !title.is_empty() {
                        out.push(Heading { offset, level, title });
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// The headings in force at `offset`: the last of each level above it, outermost first.
fn heading_path(headings: &[Heading], offset: usize) -> Vec<String> {
    let mut stack: Vec<&Heading> = Vec::new();
    for h in headings.iter().take_while(|h| h.offset <= offset) {
        while stack.last().is_some_and(|top| top.level >= h.level) {
            stack.pop();
        }
        stack.push(h);
    }
    stack.into_iter().map(|h| h.title.clone()).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::extract::{Kind, extract};

    struct Words;
    impl TokenCount for Words {
        fn count(&self, text: &str) -> usize {
            text.split_whitespace().count()
        }
    }

    fn chunker(min: usize, max: usize, overlap: usize) -> Chunker {
        Chunker::new(min, max, overlap, Arc::new(Words)).unwrap()
    }

    #[test]
    fn chunks_stay_in_range_keep_offsets_and_heading_paths() {
        let mut md = String::from("# Guide\n\nIntro words here.\n\n## Install\n\n");
        for i in 0..40 {
            md.push_str(&format!("Sentence number {i} about installing the tool. "));
        }
        md.push_str("\n\n### On Linux\n\nUse the package manager.\n\n## Usage\n\nRun it.\n");
        let doc = extract(Kind::Markdown, md.as_bytes()).unwrap();
        let chunks = chunker(15, 40, 10).split(&doc);
        assert!(chunks.len() > 5, "{chunks:#?}");
        for c in &chunks {
            assert_eq!(&doc.text[c.start..c.end], c.text, "offsets point at the chunk");
            assert!(c.tokens <= 40, "{c:?}");
        }
        let install = chunks.iter().find(|c| c.text.contains("Sentence number 20")).unwrap();
        assert_eq!(install.headings, vec!["Guide", "Install"]);
        let linux = chunks.iter().find(|c| c.text.contains("package manager")).unwrap();
        // The path is the headings in force where the chunk starts; a heading inside the chunk is in its text.
        assert_eq!(linux.headings[..2], ["Guide", "Install"]);
        assert!(linux.headings.last().is_some_and(|h| h == "On Linux") || linux.text.contains("### On Linux"));
        let usage = chunks.iter().find(|c| c.text.contains("Run it")).unwrap();
        assert_eq!(usage.headings, vec!["Guide", "Usage"], "a sibling section pops the deeper heading");
        // Neighbours inside the long section share words (the overlap).
        let long: Vec<&Chunk> = chunks.iter().filter(|c| c.text.contains("Sentence number")).collect();
        assert!(long.len() >= 3);
        assert!(long.windows(2).any(|w| w[1].start < w[0].end), "no overlap between neighbours");
    }

    #[test]
    fn long_text_without_structure_is_cut_at_sentences() {
        let text: String = (0..60).map(|i| format!("This is sentence {i} of the text. ")).collect();
        let doc = extract(Kind::Text, text.as_bytes()).unwrap();
        let chunks = chunker(20, 30, 0).split(&doc);
        assert!(chunks.len() >= 10);
        for c in &chunks {
            assert!(c.text.trim_end().ends_with('.'), "cut inside a sentence: {:?}", c.text);
            assert!(c.headings.is_empty());
        }
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(Chunker::new(0, 10, 0, Arc::new(Words)).is_err());
        assert!(Chunker::new(20, 10, 0, Arc::new(Words)).is_err());
        assert!(Chunker::new(5, 10, 5, Arc::new(Words)).is_err());
    }
}

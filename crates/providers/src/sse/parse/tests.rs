//! The parser against the crate it replaces (eventsource-stream, kept as a dev-dependency for this): the same
//! events for the same bytes, however they are cut into chunks; and the work it does stays linear in the bytes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;

use futures::StreamExt;

use super::{Event, Parser};

fn ours(chunks: &[Vec<u8>]) -> (Vec<Event>, usize) {
    let mut parser = Parser::default();
    let mut out = VecDeque::new();
    for c in chunks {
        parser.feed(c, &mut out).unwrap();
    }
    (out.into_iter().collect(), parser.work)
}

fn theirs(chunks: &[Vec<u8>]) -> Vec<Event> {
    use eventsource_stream::Eventsource;
    let body = futures::stream::iter(chunks.iter().cloned().map(Ok::<_, std::io::Error>));
    futures::executor::block_on(body.eventsource().collect::<Vec<_>>())
        .into_iter()
        .map(|e| {
            let e = e.unwrap();
            Event { event: e.event, data: e.data }
        })
        .collect()
}

/// A small deterministic generator (xorshift), so that a failure can be replayed from its case number.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const PIECES: &[&str] = &[
    "data:",
    "data: ",
    "data:  two",
    "event:",
    "event: delta",
    "event:x",
    ":",
    ": keep-alive",
    " ",
    "\r",
    "\n",
    "\r\n",
    "a",
    "é",
    "日本",
    "{\"k\":[1,2]}",
    "id: 7",
    "id",
    "retry: 10",
    "data",
    "dat",
    "DATA:",
    "\u{FEFF}",
];

/// `chunks` without their first `n` bytes, cut at the same places.
fn skip(chunks: &[Vec<u8>], mut n: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for c in chunks {
        let k = n.min(c.len());
        n -= k;
        if k < c.len() {
            out.push(c[k..].to_vec());
        }
    }
    out
}

#[test]
fn the_same_events_as_eventsource_stream_for_any_input_cut_anywhere() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut compared = 0;
    for case in 0..20_000 {
        let mut text = String::new();
        if rng.below(10) == 0 {
            text.push('\u{FEFF}');
        }
        for _ in 0..rng.below(40) {
            text.push_str(PIECES[rng.below(PIECES.len())]);
        }
        let bytes = text.as_bytes();
        // Cut anywhere, inside UTF-8 characters and between CR and LF included.
        let mut chunks = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let most = if rng.below(2) == 0 { 3 } else { 40 };
            let n = 1 + rng.below(most);
            let end = (at + n).min(bytes.len());
            chunks.push(bytes[at..end].to_vec());
            at = end;
        }
        // eventsource-stream 0.2 panics on a leading byte-order mark (it slices the string one byte into the
        // three-byte character): it is given the body without it, which is what the format says a leading BOM
        // is worth. A second BOM right after the first is part of the first field's name; that case is left out.
        let bom = usize::from(text.starts_with('\u{FEFF}')) * 3;
        if text[bom..].starts_with('\u{FEFF}') {
            continue;
        }
        assert_eq!(ours(&chunks).0, theirs(&skip(&chunks, bom)), "case {case}: {text:?} in {} chunks", chunks.len());
        compared += 1;
    }
    assert!(compared > 19_000, "{compared} cases compared");
}

#[test]
fn an_event_without_its_empty_line_is_dropped_at_the_end() {
    let chunks = vec![b"data: a\n\ndata: b\n".to_vec()];
    assert_eq!(ours(&chunks).0, vec![Event { event: "message".into(), data: "a".into() }]);
}

#[test]
fn a_line_that_is_not_utf8_is_an_error_after_the_events_before_it() {
    let mut parser = Parser::default();
    let mut out = VecDeque::new();
    assert!(parser.feed(b"data: ok\n\ndata: \xFF\xFE\n\n", &mut out).is_err());
    assert_eq!(out.len(), 1);
}

#[test]
fn the_work_is_linear_in_the_bytes_however_they_are_cut() {
    // One long line arriving a byte at a time (eventsource-stream parses it from the start again each time).
    let line = format!("data: {}\n\n", "x".repeat(200_000));
    let bytes: Vec<Vec<u8>> = line.bytes().map(|b| vec![b]).collect();
    let (events, work) = ours(&bytes);
    assert_eq!(events.len(), 1);
    assert!(work <= 3 * line.len(), "{work} units of work for {} bytes", line.len());
    // Many short events in one chunk (eventsource-stream copies the rest of the buffer after each line).
    let many = "data: {\"choices\":[]}\n\n".repeat(20_000);
    let (events, work) = ours(&[many.as_bytes().to_vec()]);
    assert_eq!(events.len(), 20_000);
    assert!(work <= 3 * many.len(), "{work} units of work for {} bytes", many.len());
    // A long line and short ones interleaved, in chunks of every size.
    let mixed = format!("{}data: {}\n\n{}", "data: a\n\n".repeat(1000), "y".repeat(50_000), "data: b\n\n".repeat(1000));
    for size in [1, 2, 7, 64, 1000] {
        let chunks: Vec<Vec<u8>> = mixed.as_bytes().chunks(size).map(<[u8]>::to_vec).collect();
        let (events, work) = ours(&chunks);
        assert_eq!(events.len(), 2001);
        assert!(work <= 4 * mixed.len(), "chunks of {size}: {work} units of work for {} bytes", mixed.len());
    }
}

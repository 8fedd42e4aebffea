//! The server-sent events parser (the WHATWG event stream format): bytes in, events out, in time linear in the
//! bytes however the body is cut into chunks.
//!
//! Written by hand because the crate keel used before (eventsource-stream 0.2) parses its buffer from the start
//! again on every chunk and copies what remains after every line: quadratic in the length of a line that
//! arrives in many pieces and in the number of lines of one chunk. Fuzzing showed it (a 10-million-input run took
//! hours), and an upstream that sends one long line in small pieces could hold a core for minutes; it also
//! panics on a body that starts with a byte-order mark (it slices one byte into the three-byte character). Its
//! behaviour is otherwise kept exactly and checked against it in `parse/tests.rs`: lines end at CRLF, LF or
//! CR (a CR at the end of what has arrived waits for the next byte); a leading byte-order mark is dropped; `:`
//! starts a comment; `data` lines are joined with LF; an empty line dispatches the event unless it has no data;
//! an event left without its empty line when the body ends is dropped. keel reads only `event` and `data`.

use std::collections::VecDeque;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Event {
    /// The event type (`message` when the stream named none).
    pub event: String,
    pub data: String,
}

/// A line that is not UTF-8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NotUtf8(pub std::str::Utf8Error);

impl std::fmt::Display for NotUtf8 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for NotUtf8 {}

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// The parser's state between chunks.
#[derive(Debug, Default)]
pub(crate) struct Parser {
    buf: Vec<u8>,
    /// Where the unconsumed bytes of `buf` start.
    start: usize,
    /// Up to where `buf` has been searched for a line end (nothing before it is searched again).
    scanned: usize,
    /// Whether the first bytes were seen (and a byte-order mark dropped).
    started: bool,
    event: String,
    data: String,
    /// Bytes searched, validated or moved so far: what the tests check stays linear in the input.
    #[cfg(test)]
    work: usize,
}

impl Parser {
    #[cfg(test)]
    fn count(&mut self, n: usize) {
        self.work += n;
    }

    #[cfg(not(test))]
    fn count(&mut self, _: usize) {}

    /// Takes the next chunk of the body; the events it completes are appended to `out`. A line that is not
    /// UTF-8 is an error, after the events before it.
    pub(crate) fn feed(&mut self, chunk: &[u8], out: &mut VecDeque<Event>) -> Result<(), NotUtf8> {
        self.buf.extend_from_slice(chunk);
        if !self.started {
            let head = &self.buf[self.start..];
            if head.len() < BOM.len() && BOM.starts_with(head) {
                return Ok(()); // maybe the start of a byte-order mark: wait for more
            }
            self.started = true;
            if head.starts_with(BOM) {
                self.start += BOM.len();
                self.scanned = self.start;
            }
        }
        loop {
            let Some(offset) = self.buf[self.scanned..].iter().position(|b| matches!(b, b'\r' | b'\n')) else {
                self.count(self.buf.len() - self.scanned);
                self.scanned = self.buf.len();
                break;
            };
            self.count(offset + 1);
            let end = self.scanned + offset;
            let terminator = match (self.buf[end], self.buf.get(end + 1)) {
                (b'\r', Some(b'\n')) => 2,
                // A CR with nothing after it yet: it may be the first half of CRLF.
                (b'\r', None) => {
                    self.scanned = end;
                    break;
                }
                _ => 1,
            };
            self.count(end - self.start);
            let line = std::str::from_utf8(&self.buf[self.start..end]).map_err(NotUtf8)?;
            if let Some(event) = line_of(line, &mut self.event, &mut self.data) {
                out.push_back(event);
            }
            self.start = end + terminator;
            self.scanned = self.start;
        }
        // Consumed bytes are dropped once they are at least half of the buffer: each byte is moved at most a
        // bounded number of times in all.
        if self.start > 0 && self.start * 2 >= self.buf.len() {
            self.count(self.buf.len() - self.start);
            self.buf.drain(..self.start);
            self.scanned -= self.start;
            self.start = 0;
        }
        Ok(())
    }
}

/// Applies one line to the event being built; returns the event an empty line dispatches.
fn line_of(line: &str, event: &mut String, data: &mut String) -> Option<Event> {
    if line.is_empty() {
        let mut data = std::mem::take(data);
        let kind = std::mem::take(event);
        if data.is_empty() {
            return None;
        }
        data.pop(); // the LF after the last data line
        let kind = if kind.is_empty() { "message".to_string() } else { kind };
        return Some(Event { event: kind, data });
    }
    if line.starts_with(':') {
        return None;
    }
    let (name, value) = match line.split_once(':') {
        Some((name, value)) => (name, value.strip_prefix(' ').unwrap_or(value)),
        None => (line, ""),
    };
    match name {
        "event" => *event = value.to_string(),
        "data" => {
            data.push_str(value);
            data.push('\n');
        }
        // `id` and `retry` matter to a browser reconnecting; keel never reconnects a stream (it continues on a
        // fallback instead, docs/reliability.md), so they are read and ignored.
        _ => {}
    }
    None
}

#[cfg(test)]
mod tests;

//! Turning generated token bytes into text deltas: UTF-8 that may split across tokens, and stop sequences that
//! may split across deltas. Written here because it is specific to token-by-token generation.

/// Accumulates token bytes and releases text that is safe to send: complete UTF-8, and never a part of the
/// text that could still turn out to be the start of a stop sequence.
#[derive(Debug)]
pub(crate) struct TextAssembler {
    stops: Vec<String>,
    bytes: Vec<u8>,
    /// Decoded text not yet released.
    held: String,
}

/// What one step released.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Text to send (possibly empty); generation goes on.
    Text(String),
    /// A stop sequence was produced: the text before it, and generation must end.
    Stopped(String),
}

impl TextAssembler {
    pub(crate) fn new(stops: Vec<String>) -> Self {
        Self { stops: stops.into_iter().filter(|s| !s.is_empty()).collect(), bytes: Vec::new(), held: String::new() }
    }

    pub(crate) fn push(&mut self, piece: &[u8]) -> Step {
        self.bytes.extend_from_slice(piece);
        let valid = match std::str::from_utf8(&self.bytes) {
            Ok(s) => s.len(),
            // An incomplete sequence at the end waits for the next token; an invalid one is replaced.
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => {
                let text = String::from_utf8_lossy(&self.bytes).into_owned();
                self.bytes.clear();
                self.held.push_str(&text);
                return self.release();
            }
        };
        let rest = self.bytes.split_off(valid);
        let text = String::from_utf8(std::mem::replace(&mut self.bytes, rest)).unwrap_or_default();
        self.held.push_str(&text);
        self.release()
    }

    fn release(&mut self) -> Step {
        if let Some((at, _)) = self.stops.iter().filter_map(|s| self.held.find(s.as_str()).map(|i| (i, s))).min() {
            let before = self.held[..at].to_string();
            self.held.clear();
            return Step::Stopped(before);
        }
        // Hold back the longest suffix that is a prefix of some stop sequence.
        let mut keep = 0;
        for stop in &self.stops {
            for len in (keep + 1..stop.len()).rev() {
                if stop.is_char_boundary(len) && self.held.ends_with(&stop[..len]) {
                    keep = len;
                    break;
                }
            }
        }
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_string();
        self.held.drain(..cut);
        Step::Text(out)
    }

    /// The text still held when generation ends without a stop sequence.
    pub(crate) fn finish(&mut self) -> String {
        let mut out = std::mem::take(&mut self.held);
        out.push_str(&String::from_utf8_lossy(&std::mem::take(&mut self.bytes)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&[u8]]) -> (Vec<Step>, String) {
        let mut a = TextAssembler::new(stops.iter().map(|s| s.to_string()).collect());
        let steps = pieces.iter().map(|p| a.push(p)).collect();
        (steps, a.finish())
    }

    #[test]
    fn utf8_split_across_tokens_is_joined() {
        let e = "é".as_bytes();
        let (steps, rest) = run(&[], &[b"caf", &e[..1], &e[1..], b"!"]);
        assert_eq!(
            steps,
            [Step::Text("caf".into()), Step::Text(String::new()), Step::Text("é".into()), Step::Text("!".into())]
        );
        assert_eq!(rest, "");
    }

    #[test]
    fn stop_sequences_split_across_tokens_are_caught_and_never_sent() {
        let (steps, _) = run(&["END"], &[b"one E", b"N", b"D two"]);
        assert_eq!(steps, [Step::Text("one ".into()), Step::Text(String::new()), Step::Stopped("".into())]);
        let (steps, rest) = run(&["END"], &[b"one E", b"x"]);
        assert_eq!(steps, [Step::Text("one ".into()), Step::Text("Ex".into())]);
        assert_eq!(rest, "");
    }
}

//! A streaming scanner that tells when concatenated fragments have formed one complete JSON object or array.

/// Tracks nesting outside strings, byte by byte. Structural characters are ASCII, so bytes of multi-byte UTF-8
/// characters never match them, and a fragment may end anywhere, even inside a string or an escape.
#[derive(Debug, Clone, Default)]
pub(crate) struct JsonScan {
    depth: u32,
    in_string: bool,
    escaped: bool,
    complete: bool,
}

impl JsonScan {
    pub(crate) fn feed(&mut self, fragment: &str) {
        for b in fragment.bytes() {
            if self.complete {
                return;
            }
            if self.in_string {
                match b {
                    _ if self.escaped => self.escaped = false,
                    b'\\' => self.escaped = true,
                    b'"' => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth = self.depth.saturating_add(1),
                b'}' | b']' if self.depth > 0 => {
                    self.depth -= 1;
                    self.complete = self.depth == 0;
                }
                _ => {}
            }
        }
    }

    /// Whether the fragments so far hold a complete top-level object or array.
    pub(crate) fn is_complete(&self) -> bool {
        self.complete
    }
}

#[cfg(test)]
mod tests {
    use super::JsonScan;

    fn complete_after(fragments: &[&str]) -> Vec<bool> {
        let mut scan = JsonScan::default();
        fragments
            .iter()
            .map(|f| {
                scan.feed(f);
                scan.is_complete()
            })
            .collect()
    }

    #[test]
    fn completes_on_the_closing_brace() {
        assert_eq!(complete_after(&["{\"a\":", "[1,{\"b\":2}]", "}"]), [false, false, true]);
        assert_eq!(complete_after(&["{}"]), [true]);
        assert_eq!(complete_after(&["", " "]), [false, false]);
    }

    #[test]
    fn ignores_braces_and_escaped_quotes_in_strings() {
        assert_eq!(complete_after(&["{\"a\":\"}\\", "\"}", "\"}"]), [false, false, true]);
        assert_eq!(complete_after(&["{\"q\":\"\\u00", "e9}\"", "}"]), [false, false, true]);
        assert_eq!(complete_after(&["{\"k\":\"\\\\", "\"}"]), [false, true]);
    }

    #[test]
    fn a_stray_closer_does_not_complete() {
        assert_eq!(complete_after(&["}", "{", "}"]), [false, false, true]);
    }
}

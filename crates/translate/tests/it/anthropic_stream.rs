//! A strict reader of Anthropic event sequences: it checks the order a client relies on and reassembles blocks.

use keel_types::anthropic::{AUsage, BlockDelta, ContentBlock, StopReason, StreamEvent};

/// One block as a client would reassemble it: its start and the concatenation of its deltas.
#[derive(Debug, PartialEq)]
pub enum Block {
    Text(String),
    Thinking(String),
    /// `id`, `name` and the concatenated `partial_json`.
    ToolUse(String, String, String),
}

#[derive(Debug, PartialEq)]
pub struct Assembled {
    pub blocks: Vec<Block>,
    pub stop_reason: Option<StopReason>,
    pub usage: Option<AUsage>,
    /// Whether the stream ended with `message_stop` (false: it ended with `error`, or was cut short).
    pub stopped: bool,
}

/// Read `events` as an Anthropic client would, panicking on anything out of order: `message_start` first, one
/// block open at a time, indexes 0, 1, 2…, deltas of the open block's kind only, `message_delta` then
/// `message_stop` last, or `error` last.
pub fn assemble(events: &[keel_types::anthropic::StreamEvent]) -> Assembled {
    let mut out = Assembled { blocks: Vec::new(), stop_reason: None, usage: None, stopped: false };
    let mut open: Option<(u32, Block)> = None;
    let mut ended = false;
    let mut delta_seen = false;
    for (n, event) in events.iter().enumerate() {
        assert!(!ended, "event {n} after the end: {event:?}");
        if n == 0 {
            assert!(matches!(event, StreamEvent::MessageStart { .. }), "first event must be message_start");
            continue;
        }
        match event {
            StreamEvent::MessageStart { .. } => panic!("second message_start at {n}"),
            StreamEvent::Ping => {}
            StreamEvent::ContentBlockStart { index, content_block } => {
                assert!(open.is_none(), "block {index} starts while another is open");
                assert!(!delta_seen, "block after message_delta");
                assert_eq!(*index as usize, out.blocks.len(), "block indexes go 0, 1, 2…");
                let block = match content_block {
                    ContentBlock::Text { text, .. } => Block::Text(text.clone()),
                    ContentBlock::Thinking { thinking, .. } => Block::Thinking(thinking.clone()),
                    ContentBlock::ToolUse { id, name, input, .. } => {
                        assert_eq!(input, &serde_json::json!({}), "tool_use starts with empty input");
                        Block::ToolUse(id.clone(), name.clone(), String::new())
                    }
                    other => panic!("unexpected block {other:?}"),
                };
                open = Some((*index, block));
            }
            StreamEvent::ContentBlockDelta { index, delta } => {
                let Some((open_index, block)) = open.as_mut() else { panic!("delta for {index} with no open block") };
                assert_eq!(index, open_index, "delta for a block that is not open");
                match (block, delta) {
                    (Block::Text(s), BlockDelta::TextDelta { text }) => s.push_str(text),
                    (Block::Thinking(s), BlockDelta::ThinkingDelta { thinking }) => s.push_str(thinking),
                    (Block::ToolUse(_, _, s), BlockDelta::InputJsonDelta { partial_json }) => s.push_str(partial_json),
                    (block, delta) => panic!("delta {delta:?} does not fit block {block:?}"),
                }
            }
            StreamEvent::ContentBlockStop { index } => {
                let Some((open_index, block)) = open.take() else { panic!("stop of {index} with no open block") };
                assert_eq!(*index, open_index, "stop of a block that is not open");
                out.blocks.push(block);
            }
            StreamEvent::MessageDelta { delta, usage } => {
                assert!(open.is_none(), "message_delta while a block is open");
                assert!(!delta_seen, "second message_delta");
                delta_seen = true;
                out.stop_reason = delta.stop_reason.clone();
                out.usage = Some(usage.clone());
            }
            StreamEvent::MessageStop => {
                assert!(delta_seen, "message_stop before message_delta");
                out.stopped = true;
                ended = true;
            }
            StreamEvent::Error { .. } => ended = true,
        }
    }
    out
}

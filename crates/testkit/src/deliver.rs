//! Writes a rendered response to the socket, applying the reply's delays and fault.

use std::io;
use std::time::Duration;

use crate::answer::Rendered;
use crate::http::{Conn, Framing, LAST_CHUNK, chunk, response_head};
use crate::reply::{Fault, Reply};

/// What replaces a non-stream body or a stream event under `Fault::MalformedChunkAt`.
const MALFORMED_BODY: &[u8] = b"{not json";
const MALFORMED_EVENT: &[u8] = b"data: {not json\n\n";

/// How writing a response ended.
enum End {
    /// The response is complete; the connection may carry another request.
    Complete,
    /// The response was cut short; close the connection.
    Cut,
    /// The response was cut short; keep the connection open and silent.
    Stall,
}

/// Writes `rendered` as the answer to one request. Returns the connection when it can carry
/// another request, `None` when it is finished (closed, reset, held until the client left, or
/// broken by a write error).
pub(crate) async fn deliver(mut conn: Conn, rendered: Rendered, reply: &Reply, keep_alive: bool) -> Option<Conn> {
    sleep_ms(reply.delay_before_headers_ms).await;
    match reply.fault {
        Some(Fault::ResetBeforeHeaders) => {
            conn.reset();
            return None;
        }
        Some(Fault::NoResponse) => {
            conn.hold_until_closed().await;
            return None;
        }
        _ => {}
    }
    let written = match rendered {
        Rendered::Whole { status, content_type, body } => {
            let body = match reply.fault {
                Some(Fault::MalformedChunkAt(_)) => MALFORMED_BODY.to_vec(),
                _ => body,
            };
            let head = response_head(status, &content_type, Framing::Length(body.len()), &reply.headers, keep_alive);
            write_whole(&mut conn, head, &body, reply.fault).await
        }
        Rendered::Stream { status, events } => {
            let head = response_head(status, "text/event-stream", Framing::Chunked, &reply.headers, keep_alive);
            write_stream(&mut conn, head, events, reply).await
        }
    };
    match written {
        Ok(End::Complete) if keep_alive => Some(conn),
        Ok(End::Complete | End::Cut) => None,
        Ok(End::Stall) => {
            conn.hold_until_closed().await;
            None
        }
        Err(error) => {
            tracing::debug!(%error, "mock upstream: write failed");
            None
        }
    }
}

async fn write_whole(conn: &mut Conn, mut out: Vec<u8>, body: &[u8], fault: Option<Fault>) -> io::Result<End> {
    // Under Cut and Stall the head announces the full length, but only half of the body follows.
    let (body, end) = match fault {
        Some(Fault::CutAfterChunks(_)) => (&body[..body.len() / 2], End::Cut),
        Some(Fault::StallAfterChunks(_)) => (&body[..body.len() / 2], End::Stall),
        _ => (body, End::Complete),
    };
    out.extend_from_slice(body);
    conn.write_all(&out).await?;
    Ok(end)
}

async fn write_stream(conn: &mut Conn, head: Vec<u8>, mut events: Vec<String>, reply: &Reply) -> io::Result<End> {
    if reply.fault == Some(Fault::NoDone) {
        events.pop();
    }
    let stop_at = match reply.fault {
        Some(Fault::CutAfterChunks(n)) => Some((n as usize, End::Cut)),
        Some(Fault::StallAfterChunks(n)) => Some((n as usize, End::Stall)),
        _ => None,
    };
    let malformed_at = match reply.fault {
        Some(Fault::MalformedChunkAt(n)) => Some(n as usize),
        _ => None,
    };
    conn.write_all(&head).await?;
    sleep_ms(reply.first_chunk_delay_ms).await;
    for (index, event) in events.iter().enumerate() {
        if let Some((n, _)) = &stop_at
            && index == *n
        {
            break;
        }
        if index > 0 {
            sleep_ms(reply.chunk_delay_ms).await;
        }
        let data = match malformed_at == Some(index) {
            true => MALFORMED_EVENT,
            false => event.as_bytes(),
        };
        conn.write_all(&chunk(data)).await?;
    }
    if let Some((_, end)) = stop_at {
        return Ok(end);
    }
    conn.write_all(LAST_CHUNK).await?;
    Ok(End::Complete)
}

async fn sleep_ms(ms: u64) {
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

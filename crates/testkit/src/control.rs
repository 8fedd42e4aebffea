//! The `/_mock/*` endpoints, which let a test in another process script the mock over HTTP.
//! Requests to them are not recorded as attempts and take no reply from the queue.

use serde_json::json;

use crate::answer::Rendered;
use crate::openai;
use crate::reply::Reply;
use crate::route::Control;
use crate::state::Shared;

pub(crate) fn handle(control: Control, body: &[u8], shared: &Shared) -> Rendered {
    match control {
        Control::Script => match serde_json::from_slice::<Vec<Reply>>(body) {
            Ok(replies) => {
                let count = replies.len();
                shared.enqueue(replies);
                Rendered::json(200, &json!({"enqueued": count}))
            }
            Err(error) => bad_request(&format!("expected a JSON array of replies: {error}")),
        },
        Control::Default => match serde_json::from_slice::<Reply>(body) {
            Ok(reply) => {
                shared.set_default(reply);
                Rendered::json(200, &json!({"ok": true}))
            }
            Err(error) => bad_request(&format!("expected one reply: {error}")),
        },
        Control::Attempts => match serde_json::to_vec(&shared.attempts()) {
            Ok(body) => Rendered::Whole { status: 200, content_type: "application/json".to_owned(), body },
            Err(error) => {
                let body = openai::error_body("server_error", &error.to_string(), None);
                Rendered::json(500, &body)
            }
        },
        Control::Reset => {
            shared.reset();
            Rendered::json(200, &json!({"ok": true}))
        }
    }
}

fn bad_request(message: &str) -> Rendered {
    Rendered::json(400, &openai::error_body("invalid_request_error", message, None))
}

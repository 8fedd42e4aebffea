//! The accept loop and the per-connection request loop.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::control;
use crate::deliver::deliver;
use crate::http::Conn;
use crate::reply::Reply;
use crate::route::{Route, not_found, render};
use crate::state::{Attempt, Shared};

/// Accepts connections until the task is aborted; each connection gets its own task.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                // Each SSE event must leave as soon as it is written, not wait for Nagle.
                if let Err(error) = stream.set_nodelay(true) {
                    tracing::debug!(%error, "mock upstream: could not set TCP_NODELAY");
                }
                tokio::spawn(connection(Conn::new(stream), Arc::clone(&shared)));
            }
            Err(error) => {
                // Usually out of file descriptors: back off instead of spinning.
                tracing::warn!(%error, "mock upstream: accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Serves requests on one connection until it closes, a request is malformed, or a fault ends it.
async fn connection(mut conn: Conn, shared: Arc<Shared>) {
    loop {
        let request = match conn.read_request().await {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(error) => {
                tracing::debug!(%error, "mock upstream: closing connection on a bad request");
                return;
            }
        };
        let keep_alive = request.keep_alive;
        let route = Route::of(&request.method, request.path());
        let next = if let Route::Control(which) = route {
            let rendered = control::handle(which, &request.body, &shared);
            deliver(conn, rendered, &Reply::default(), keep_alive).await
        } else {
            let json: Option<serde_json::Value> = serde_json::from_slice(&request.body).ok();
            let missing = (route == Route::NotFound).then(|| not_found(&request.method, &request.target));
            let attempt = Attempt {
                method: request.method,
                path: request.target,
                headers: request.headers,
                body: json.clone().unwrap_or_default(),
                at_ms: shared.elapsed_ms(),
            };
            if let Some(missing) = missing {
                shared.record(attempt);
                deliver(conn, missing, &Reply::default(), keep_alive).await
            } else {
                let reply = shared.record_and_take(attempt);
                let rendered = render(&route, json.as_ref(), &reply, &shared);
                deliver(conn, rendered, &reply, keep_alive).await
            }
        };
        let Some(next) = next else {
            return;
        };
        conn = next;
    }
}

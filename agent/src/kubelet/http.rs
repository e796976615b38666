//! What the node's HTTP endpoints ([`super::server`]) and the streaming handlers
//! ([`super::exec`], [`super::portforward`]) share: the handlers' state, Kubernetes `Status`
//! error bodies, query-string parsing and the websocket's normal closure. Its own module so
//! that the router can name the handlers without them importing the router back.

#![allow(
    clippy::result_large_err,
    reason = "a bad parameter's error is the axum Response sent for it, built once per request"
)]

use std::sync::Arc;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::directory::PodDirectory;
use crate::runtime::Runtime;

/// Shared by the handlers.
#[derive(Clone)]
pub struct ServerState {
    /// The pods of this node.
    pub directory: Arc<dyn PodDirectory>,
    /// The runtime (exec).
    pub runtime: Arc<Runtime>,
    /// Who may call, and what they may do.
    pub auth: Arc<super::auth::KubeletAuth>,
    /// Cancelled at shutdown: open streams end.
    pub shutdown: CancellationToken,
    /// The previous CPU readings, for `/stats/summary`'s rates.
    pub cpu_rates: Arc<super::stats_summary::CpuRates>,
}

/// A Kubernetes `Status` error response.
pub fn status_response(code: StatusCode, reason: &str, message: impl Into<String>) -> Response {
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message.into(),
        "reason": reason,
        "code": code.as_u16(),
    });
    (code, Json(body)).into_response()
}

/// Accepts the websocket upgrade of a streaming request (`verb`: exec, attach) in the best
/// channel subprotocol both sides speak, or answers the 400 Status kubectl shows: SPDY (no
/// websocket upgrade) and clients offering none of [`super::streaming::PROTOCOLS`] are refused.
pub fn accept_streaming(
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    verb: &str,
) -> Result<(WebSocketUpgrade, String), Response> {
    use super::streaming::PROTOCOLS;
    let bad = |msg: String| status_response(StatusCode::BAD_REQUEST, "BadRequest", msg);
    let Ok(ws) = ws else {
        return Err(bad(format!(
            "{verb} needs a websocket upgrade ({}); SPDY is not supported",
            PROTOCOLS.join(" or ")
        )));
    };
    let ws = ws.protocols(PROTOCOLS);
    match ws.selected_protocol().and_then(|p| p.to_str().ok()) {
        Some(protocol) => {
            let protocol = protocol.to_owned();
            Ok((ws, protocol))
        }
        None => Err(bad(format!(
            "no supported streaming protocol offered; this node speaks {}",
            PROTOCOLS.join(", ")
        ))),
    }
}

/// A normal closure (1000) of a websocket: clients (gorilla/websocket in kubectl) treat a
/// close without a status code as an error.
pub fn normal_close() -> axum::extract::ws::Message {
    axum::extract::ws::Message::Close(Some(axum::extract::ws::CloseFrame {
        code: axum::extract::ws::close_code::NORMAL,
        reason: "".into(),
    }))
}

/// Parses the repeated-key query string of the kubelet's endpoints.
pub fn query_pairs(raw: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(raw.unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

/// A boolean query parameter as Kubernetes reads them (`true`, `1`; absent is false).
pub fn query_bool(pairs: &[(String, String)], key: &str) -> Result<bool, Response> {
    match pairs.iter().rev().find(|(k, _)| k == key) {
        None => Ok(false),
        Some((_, v)) => match v.as_str() {
            "" | "true" | "1" | "True" | "TRUE" => Ok(true),
            "false" | "0" | "False" | "FALSE" => Ok(false),
            other => Err(status_response(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("invalid value {other:?} for {key}: not a boolean"),
            )),
        },
    }
}

/// Turns a panic while handling one request into a 500 Status, logged, instead of a dropped
/// connection (as kube-apiserver's and the kubelet's panic recovery).
pub async fn catch_panic(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use futures::FutureExt as _;
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    match std::panic::AssertUnwindSafe(next.run(request))
        .catch_unwind()
        .await
    {
        Ok(response) => response,
        Err(panic) => {
            let message = skiff_k8s::crash::panic_message(panic.as_ref());
            tracing::error!(%method, %path, panic = %message, "a request handler panicked");
            status_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "Internal error occurred: the server panicked handling the request",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt as _;

    async fn boom() -> &'static str {
        panic!("boom")
    }

    #[tokio::test]
    async fn a_panicking_handler_is_a_500_status_and_the_router_goes_on() {
        let app = axum::Router::new()
            .route("/boom", axum::routing::get(boom))
            .route("/ok", axum::routing::get(|| async { "ok" }))
            .layer(axum::middleware::from_fn(catch_panic));
        let get = |path: &str| {
            http::Request::get(path)
                .body(axum::body::Body::empty())
                .expect("request")
        };
        let response = app.clone().oneshot(get("/boom")).await.expect("response");
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .expect("body");
        let status: serde_json::Value = serde_json::from_slice(&body).expect("a Status");
        assert_eq!(status["reason"], "InternalError");
        let response = app.oneshot(get("/ok")).await.expect("response");
        assert_eq!(response.status(), StatusCode::OK);
    }
}

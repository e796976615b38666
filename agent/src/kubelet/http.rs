//! What the node's HTTP endpoints ([`super::server`]) and the exec handler ([`super::exec`])
//! share: the handlers' state, Kubernetes `Status` error bodies and query-string parsing. Its
//! own module so that the router can name the exec handler without the handler importing the
//! router back.

#![allow(
    clippy::result_large_err,
    reason = "a bad parameter's error is the axum Response sent for it, built once per request"
)]

use std::sync::Arc;

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

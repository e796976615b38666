//! `GET /snapshot`: a consistent backup of the whole store, streamed (see
//! [`crate::store::snapshot`] for the file it is). `skiff-control snapshot save` is its client.
//!
//! It is a non-resource URL, so only users granted `get` on `/snapshot` may take one: the
//! bootstrap roles grant it to nobody but `cluster-admin` (whose rules cover every URL), which
//! is right, as a snapshot holds every Secret.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;

use super::{ApiError, ApiState};
use crate::store::snapshot;

/// The path served.
pub const PATH: &str = "/snapshot";

/// The snapshot's media type: JSON lines.
pub const CONTENT_TYPE: &str = "application/jsonl";

/// Streams a snapshot of the store as it is now.
pub async fn save(State(state): State<Arc<ApiState>>) -> Result<Response, ApiError> {
    let (revision, entries) = state
        .store
        .snapshot()
        .await
        .map_err(|e| ApiError::Internal(format!("taking a snapshot: {e}")))?;
    tracing::info!(revision, "streaming a snapshot of the store");
    // A failure half-way ends the body early, without the checksum line: the client sees a
    // truncated snapshot and says so, rather than saving something unrestorable.
    let body = snapshot::encode(revision, entries).map(|chunk| {
        chunk.map_err(|e| {
            tracing::error!(error = %e, "snapshot failed while streaming");
            std::io::Error::other(e.to_string())
        })
    });
    Ok((
        [
            (http::header::CONTENT_TYPE, CONTENT_TYPE),
            (http::header::CACHE_CONTROL, "no-store"),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

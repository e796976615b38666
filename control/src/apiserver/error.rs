//! `ApiError`: every failure of the API as a Kubernetes `Status` with the matching HTTP code.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::store::StoreError;

/// One invalid field, as a `StatusCause`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The cause type: `FieldValueRequired`, `FieldValueInvalid`, ...
    pub reason: &'static str,
    /// The field path, e.g. `spec.containers[0].image`.
    pub field: String,
    /// What is wrong, as Kubernetes phrases it.
    pub message: String,
}

impl FieldError {
    /// A required field is missing.
    pub fn required(field: impl Into<String>) -> Self {
        Self {
            reason: "FieldValueRequired",
            field: field.into(),
            message: "Required value".into(),
        }
    }

    /// A field has a bad value.
    pub fn invalid(field: impl Into<String>, value: &str, detail: impl AsRef<str>) -> Self {
        Self {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: format!("Invalid value: {value:?}: {}", detail.as_ref()),
        }
    }

    /// The same error with another message (`Required value: <detail>`).
    pub fn with_message(mut self, detail: &str) -> Self {
        self.message = format!("{}: {detail}", self.message);
        self
    }

    /// A field may not be changed.
    pub fn immutable(field: impl Into<String>) -> Self {
        Self {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: "field is immutable".into(),
        }
    }

    /// A field is not allowed here (`Forbidden: <detail>`, as Go's `field.Forbidden` reads).
    pub fn forbidden(field: impl Into<String>, detail: impl AsRef<str>) -> Self {
        Self {
            reason: "FieldValueForbidden",
            field: field.into(),
            message: format!("Forbidden: {}", detail.as_ref()),
        }
    }

    /// A field has a bad value that is not a string, shown as Go's `%#v` renders it
    /// (`[]string{"/x"}`); `rendered` is that text.
    pub fn invalid_rendered(field: impl Into<String>, rendered: &str, detail: &str) -> Self {
        Self {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: format!("Invalid value: {rendered}: {detail}"),
        }
    }
}

/// Errors of the API, each mapped to a `Status` reason and code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The object or resource does not exist (404 NotFound).
    #[error("{kind} {name:?} not found")]
    NotFound {
        /// Resource (plural) or kind.
        kind: String,
        /// Name asked for.
        name: String,
    },
    /// The path names no resource this server serves (404 NotFound).
    #[error("the server could not find the requested resource")]
    UnknownResource,
    /// Create of an existing name (409 AlreadyExists).
    #[error("{kind} {name:?} already exists")]
    AlreadyExists {
        /// Resource (plural).
        kind: String,
        /// Name.
        name: String,
    },
    /// Stale resourceVersion or failed precondition (409 Conflict).
    #[error("Operation cannot be fulfilled on {kind} {name:?}: {detail}")]
    Conflict {
        /// Resource (plural).
        kind: String,
        /// Name.
        name: String,
        /// Why.
        detail: String,
    },
    /// The object fails validation (422 Invalid).
    #[error("{kind} {name:?} is invalid: {}", render_causes(.causes))]
    Invalid {
        /// Kind.
        kind: String,
        /// Name.
        name: String,
        /// The invalid fields.
        causes: Vec<FieldError>,
    },
    /// The request cannot be parsed or makes no sense (400 BadRequest).
    #[error("{0}")]
    BadRequest(String),
    /// Missing or wrong credentials (401 Unauthorized).
    #[error("Unauthorized")]
    Unauthorized,
    /// Refused on purpose, e.g. creating in a terminating namespace (403 Forbidden).
    #[error("{0}")]
    Forbidden(String),
    /// The verb is not supported on this resource (405 MethodNotAllowed).
    #[error("the server does not allow this method on the requested resource")]
    MethodNotAllowed,
    /// A watch or continue token is older than the store keeps (410 Expired/Gone).
    #[error("too old resource version: {0}")]
    Gone(String),
    /// A continue token's snapshot is no longer kept (410 Expired); carries the token that reads
    /// the rest of the list at the newest revision instead.
    #[error("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.")]
    ContinueExpired(String),
    /// The request body media type is not supported (415).
    #[error(
        "the body of the request was in an unknown format - accepted media types include: {0}"
    )]
    UnsupportedMediaType(String),
    /// The store failed (500 InternalError).
    #[error("Internal error occurred: {0}")]
    Internal(String),
}

fn render_causes(causes: &[FieldError]) -> String {
    causes
        .iter()
        .map(|c| format!("{}: {}", c.field, c.message))
        .collect::<Vec<_>>()
        .join(", ")
}

impl ApiError {
    /// The HTTP status code.
    pub fn code(&self) -> StatusCode {
        match self {
            ApiError::NotFound { .. } | ApiError::UnknownResource => StatusCode::NOT_FOUND,
            ApiError::AlreadyExists { .. } | ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Gone(_) | ApiError::ContinueExpired(_) => StatusCode::GONE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            ApiError::NotFound { .. } | ApiError::UnknownResource => "NotFound",
            ApiError::AlreadyExists { .. } => "AlreadyExists",
            ApiError::Conflict { .. } => "Conflict",
            ApiError::Invalid { .. } => "Invalid",
            ApiError::BadRequest(_) => "BadRequest",
            ApiError::Unauthorized => "Unauthorized",
            ApiError::Forbidden(_) => "Forbidden",
            ApiError::MethodNotAllowed => "MethodNotAllowed",
            ApiError::Gone(_) | ApiError::ContinueExpired(_) => "Expired",
            ApiError::UnsupportedMediaType(_) => "UnsupportedMediaType",
            ApiError::Internal(_) => "InternalError",
        }
    }

    /// The `Status` object for this error.
    pub fn status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": self.reason(),
            "code": self.code().as_u16(),
        });
        let details = match self {
            ApiError::NotFound { kind, name } | ApiError::AlreadyExists { kind, name } => {
                Some(json!({"name": name, "kind": kind}))
            }
            ApiError::Conflict { kind, name, .. } => Some(json!({"name": name, "kind": kind})),
            ApiError::Invalid { kind, name, causes } => Some(json!({
                "name": name,
                "kind": kind,
                "causes": causes.iter().map(|c| json!({
                    "reason": c.reason, "message": c.message, "field": c.field,
                })).collect::<Vec<_>>(),
            })),
            _ => None,
        };
        if let Some(details) = details {
            status["details"] = details;
        }
        if let ApiError::ContinueExpired(token) = self {
            status["metadata"]["continue"] = json!(token);
        }
        status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.code().is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let mut response = (self.code(), axum::Json(self.status())).into_response();
        if matches!(self, ApiError::Unauthorized) {
            response.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

impl ApiError {
    /// Maps a store error for the resource `kind` and object `name`.
    pub fn from_store(e: StoreError, kind: &str, name: &str) -> Self {
        match e {
            StoreError::AlreadyExists(_) => ApiError::AlreadyExists { kind: kind.into(), name: name.into() },
            StoreError::NotFound(_) => ApiError::NotFound { kind: kind.into(), name: name.into() },
            StoreError::Conflict { .. } => ApiError::Conflict {
                kind: kind.into(),
                name: name.into(),
                detail: "the object has been modified; please apply your changes to the latest version and try again"
                    .into(),
            },
            StoreError::Gone { requested, .. } => ApiError::Gone(requested.to_string()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

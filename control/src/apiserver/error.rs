//! `ApiError`: every failure of the API as a Kubernetes `Status` with the matching HTTP code.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::auth::go_format::quote;
use super::auth::{RequestInfo, UserInfo};
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

/// The Retry-After of a 429: kube-apiserver's max-in-flight filter asks for one second.
pub const RETRY_AFTER_SECONDS: u32 = 1;

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
    /// A server-side apply would change fields other managers own (409 Conflict, Kubernetes'
    /// `NewApplyConflict`): the message lists the managers and fields, each field a cause.
    #[error("{message}")]
    ApplyConflict {
        /// Kubernetes' conflict message.
        message: String,
        /// (field path, `conflict with "manager" ...`) per conflicting field.
        causes: Vec<(String, String)>,
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
    /// Not permitted to this user: Kubernetes' `NewForbidden(group/resource, name, message)`
    /// (403 Forbidden), e.g. an authorization denial ([`forbidden`]) or an escalation attempt.
    #[error("{}", forbidden_text(.group, .resource, .name, .message))]
    Denied {
        /// The API group, empty for core.
        group: String,
        /// The resource (plural, without subresource); empty with the group for a
        /// non-resource path.
        resource: String,
        /// The object's name, if the request named one.
        name: String,
        /// Why (`User "alice" cannot ...`).
        message: String,
    },
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
    /// The store cannot be reached now (503 ServiceUnavailable, Kubernetes'
    /// `NewServiceUnavailable`): etcd down or without a leader; the client may retry.
    #[error("{0}")]
    ServiceUnavailable(String),
    /// The body, a patch or its result is over a size or count limit (413
    /// RequestEntityTooLarge, Kubernetes' `NewRequestEntityTooLargeError`).
    #[error("Request entity too large: {0}")]
    TooLarge(String),
    /// Over the requests-in-flight limit (429 TooManyRequests with Retry-After, as
    /// kube-apiserver's max-in-flight filter answers).
    #[error("Too many requests, please try again later.")]
    TooManyRequests,
    /// The request ran past its timeout (504 Timeout, as kube-apiserver's timeout filter).
    #[error("{0}")]
    Timeout(String),
    /// A watch from a resourceVersion the store has not reached (504 Timeout with the cause
    /// ResourceVersionTooLarge, Kubernetes' `NewTooLargeResourceVersionError`).
    #[error("Timeout: Too large resource version: {requested}, current: {current}")]
    TooLargeResourceVersion {
        /// The revision asked for.
        requested: u64,
        /// The store's revision.
        current: u64,
    },
}

/// The message of Kubernetes' `NewForbidden`: `<resource>[.<group>] "<name>" is forbidden:
/// <message>`, without the name part when there is no name, and `forbidden: <message>` when
/// there is neither group nor resource.
fn forbidden_text(group: &str, resource: &str, name: &str, message: &str) -> String {
    let qualified = if group.is_empty() {
        resource.to_owned()
    } else {
        format!("{resource}.{group}")
    };
    match (qualified.as_str(), name) {
        ("", _) => format!("forbidden: {message}"),
        (qualified, "") => format!("{qualified} is forbidden: {message}"),
        (qualified, name) => format!("{qualified} {} is forbidden: {message}", quote(name)),
    }
}

/// The 403 for a request `user` may not make, worded exactly as kube-apiserver's authorization
/// filter words it (`responsewriters.Forbidden`):
///
/// - `User "alice" cannot delete resource "pods" in API group "" in the namespace "prod"`,
/// - `... at the cluster scope` without a namespace,
/// - `User "alice" cannot get path "/metrics"` for a non-resource request,
///
/// with the subresource as `pods/log`, `&`, `<` and `>` HTML-escaped, and `: <reason>` added
/// when the authorizer gave a reason; wrapped as `NewForbidden` of the request's group,
/// resource and name.
pub fn forbidden(user: &UserInfo, info: &RequestInfo, reason: &str) -> ApiError {
    let text = if !info.is_resource_request {
        format!(
            "User {} cannot {} path {}",
            quote(&user.name),
            info.verb,
            quote(&info.path)
        )
    } else {
        let resource = if info.subresource.is_empty() {
            info.resource.clone()
        } else {
            format!("{}/{}", info.resource, info.subresource)
        };
        let scope = if info.namespace.is_empty() {
            "at the cluster scope".to_owned()
        } else {
            format!("in the namespace {}", quote(&info.namespace))
        };
        format!(
            "User {} cannot {} resource {} in API group {} {scope}",
            quote(&user.name),
            info.verb,
            quote(&resource),
            quote(&info.api_group),
        )
    };
    // Kubernetes keeps its error messages from looking like HTML; quotes are fine.
    let mut message = text
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    if !reason.is_empty() {
        message.push_str(": ");
        message.push_str(reason);
    }
    ApiError::Denied {
        group: info.api_group.clone(),
        resource: info.resource.clone(),
        name: info.name.clone(),
        message,
    }
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
            ApiError::AlreadyExists { .. }
            | ApiError::Conflict { .. }
            | ApiError::ApplyConflict { .. } => StatusCode::CONFLICT,
            ApiError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) | ApiError::Denied { .. } => StatusCode::FORBIDDEN,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Gone(_) | ApiError::ContinueExpired(_) => StatusCode::GONE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::ServiceUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Timeout(_) | ApiError::TooLargeResourceVersion { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            ApiError::NotFound { .. } | ApiError::UnknownResource => "NotFound",
            ApiError::AlreadyExists { .. } => "AlreadyExists",
            ApiError::Conflict { .. } | ApiError::ApplyConflict { .. } => "Conflict",
            ApiError::Invalid { .. } => "Invalid",
            ApiError::BadRequest(_) => "BadRequest",
            ApiError::Unauthorized => "Unauthorized",
            ApiError::Forbidden(_) | ApiError::Denied { .. } => "Forbidden",
            ApiError::MethodNotAllowed => "MethodNotAllowed",
            ApiError::Gone(_) | ApiError::ContinueExpired(_) => "Expired",
            ApiError::UnsupportedMediaType(_) => "UnsupportedMediaType",
            ApiError::Internal(_) => "InternalError",
            ApiError::ServiceUnavailable(_) => "ServiceUnavailable",
            ApiError::TooLarge(_) => "RequestEntityTooLarge",
            ApiError::TooManyRequests => "TooManyRequests",
            ApiError::Timeout(_) | ApiError::TooLargeResourceVersion { .. } => "Timeout",
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
            ApiError::Denied {
                group,
                resource,
                name,
                ..
            } => {
                // StatusDetails' fields are all omitempty, but the details object is always
                // there (`"details": {}` for a non-resource path).
                let mut details = serde_json::Map::new();
                for (field, value) in [("name", name), ("group", group), ("kind", resource)] {
                    if !value.is_empty() {
                        details.insert(field.into(), json!(value));
                    }
                }
                Some(Value::Object(details))
            }
            ApiError::Invalid { kind, name, causes } => Some(json!({
                "name": name,
                "kind": kind,
                "causes": causes.iter().map(|c| json!({
                    "reason": c.reason, "message": c.message, "field": c.field,
                })).collect::<Vec<_>>(),
            })),
            ApiError::ApplyConflict { causes, .. } => Some(json!({
                "causes": causes.iter().map(|(field, message)| json!({
                    "reason": "FieldManagerConflict", "message": message, "field": field,
                })).collect::<Vec<_>>(),
            })),
            ApiError::TooManyRequests => Some(json!({"retryAfterSeconds": RETRY_AFTER_SECONDS})),
            ApiError::TooLargeResourceVersion { .. } => Some(json!({
                "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
                "retryAfterSeconds": 1,
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
        if matches!(self, ApiError::TooManyRequests) {
            response.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from(RETRY_AFTER_SECONDS),
            );
        }
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
            e @ StoreError::Unavailable(_) => ApiError::ServiceUnavailable(e.to_string()),
            StoreError::TooLarge { reason, .. } => ApiError::TooLarge(reason),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::auth::resolve;

    fn alice() -> UserInfo {
        UserInfo {
            name: "alice".into(),
            groups: vec!["system:authenticated".into()],
            ..UserInfo::default()
        }
    }

    fn denied(method: http::Method, url: &str, reason: &str) -> ApiError {
        let (path, query) = match url.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (url, None),
        };
        forbidden(&alice(), &resolve(&method, path, query), reason)
    }

    #[test]
    fn forbidden_messages_match_kubernetes() {
        use http::Method as M;
        let cases = [
            (
                denied(M::DELETE, "/api/v1/namespaces/prod/pods/x", ""),
                r#"pods "x" is forbidden: User "alice" cannot delete resource "pods" in API group "" in the namespace "prod""#,
            ),
            (
                denied(M::GET, "/api/v1/namespaces/prod/pods", ""),
                r#"pods is forbidden: User "alice" cannot list resource "pods" in API group "" in the namespace "prod""#,
            ),
            (
                denied(M::GET, "/api/v1/nodes", ""),
                r#"nodes is forbidden: User "alice" cannot list resource "nodes" in API group "" at the cluster scope"#,
            ),
            (
                denied(
                    M::PATCH,
                    "/apis/apps/v1/namespaces/prod/deployments/web/scale",
                    "",
                ),
                r#"deployments.apps "web" is forbidden: User "alice" cannot patch resource "deployments/scale" in API group "apps" in the namespace "prod""#,
            ),
            (
                denied(M::GET, "/api/v1/namespaces/prod/pods/x/log", ""),
                r#"pods "x" is forbidden: User "alice" cannot get resource "pods/log" in API group "" in the namespace "prod""#,
            ),
            (
                denied(M::GET, "/metrics", ""),
                r#"forbidden: User "alice" cannot get path "/metrics""#,
            ),
            (
                denied(
                    M::GET,
                    "/apis/rbac.authorization.k8s.io/v1/clusterroles",
                    r#"RBAC: clusterrole.rbac.authorization.k8s.io "view" not found"#,
                ),
                r#"clusterroles.rbac.authorization.k8s.io is forbidden: User "alice" cannot list resource "clusterroles" in API group "rbac.authorization.k8s.io" at the cluster scope: RBAC: clusterrole.rbac.authorization.k8s.io "view" not found"#,
            ),
            (
                denied(M::GET, "/a<b>&c", "<reason>"),
                r#"forbidden: User "alice" cannot get path "/a&lt;b&gt;&amp;c": <reason>"#,
            ),
            (
                denied(M::GET, "/api/v1/namespaces/prod", ""),
                r#"namespaces "prod" is forbidden: User "alice" cannot get resource "namespaces" in API group "" in the namespace "prod""#,
            ),
        ];
        for (error, message) in cases {
            assert_eq!(error.to_string(), message);
            assert_eq!(error.code(), StatusCode::FORBIDDEN);
        }
    }

    #[test]
    fn denied_statuses_carry_kubernetes_details() {
        let status = denied(
            http::Method::DELETE,
            "/apis/apps/v1/namespaces/prod/deployments/web",
            "",
        )
        .status();
        assert_eq!(status["reason"], "Forbidden");
        assert_eq!(status["code"], 403);
        assert_eq!(status["status"], "Failure");
        assert_eq!(
            status["details"],
            json!({"name": "web", "group": "apps", "kind": "deployments"})
        );
        let core_list = denied(http::Method::GET, "/api/v1/pods", "").status();
        assert_eq!(core_list["details"], json!({"kind": "pods"}));
        let path = denied(http::Method::GET, "/healthz", "").status();
        assert_eq!(path["details"], json!({}));
    }

    #[test]
    fn denied_without_a_request_words_new_forbidden() {
        let escalation = ApiError::Denied {
            group: "rbac.authorization.k8s.io".into(),
            resource: "roles".into(),
            name: "r".into(),
            message: "user \"alice\" (groups=[]) is attempting to grant RBAC permissions not currently held:\n{}".into(),
        };
        assert!(escalation
            .to_string()
            .starts_with(r#"roles.rbac.authorization.k8s.io "r" is forbidden: user "alice""#));
    }

    #[test]
    fn store_outages_are_503_and_oversized_objects_413() {
        let unavailable = ApiError::from_store(
            StoreError::Unavailable("etcd: no answer within 10s".into()),
            "configmaps",
            "a",
        );
        assert_eq!(unavailable.code(), StatusCode::SERVICE_UNAVAILABLE);
        let status = unavailable.status();
        assert_eq!(status["reason"], "ServiceUnavailable");
        assert_eq!(status["code"], 503);
        let too_large = ApiError::from_store(
            StoreError::TooLarge {
                key: "core/configmaps/default/a".into(),
                reason: "etcdserver: request is too large".into(),
            },
            "configmaps",
            "a",
        );
        assert_eq!(too_large.code(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(too_large.status()["reason"], "RequestEntityTooLarge");
        assert!(too_large.to_string().contains("request is too large"));
    }
}

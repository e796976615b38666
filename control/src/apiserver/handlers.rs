//! HTTP glue: parses resource paths, query parameters and bodies, and renders results
//! (objects, lists, Tables, Status) for every resource through one set of handlers.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde_json::{json, Value};
use skiff_k8s::labels::LabelSelector;

use super::apply;
use super::auth::{self, UserInfo};
use super::error::{ApiError, FieldError};
use super::objects::{
    DeleteOptions, FieldValidation, ListOptions, Subresource, WriteOptions, Written,
};
use super::patch::PatchKind;
use super::registry::ResourceDef;
use super::selectors::{FieldSelector, SelectorError};
use super::table::{table, table_of_items, IncludeObject};
use super::validation::MAX_SECONDS;
use super::{limits, watch, ApiState};

/// What a resource URL addresses.
#[derive(Debug)]
pub struct Target {
    /// The resource.
    pub def: Arc<ResourceDef>,
    /// Namespace from the path.
    pub namespace: Option<String>,
    /// Object name from the path; `None` for collections.
    pub name: Option<String>,
    /// Subresource from the path.
    pub subresource: Subresource,
}

/// Parses the path after `/api/v1/` or `/apis/G/V/`.
fn parse_target(
    state: &ApiState,
    group: &str,
    version: &str,
    rest: &str,
) -> Result<Target, ApiError> {
    let segs: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    let find = |plural: &str| {
        state
            .registry
            .find(group, version, plural)
            .ok_or(ApiError::UnknownResource)
    };
    let (def, namespace, name, sub) = match segs.as_slice() {
        ["namespaces", ns, plural, tail @ ..] if !matches!(*plural, "status" | "finalize") => {
            let def = find(plural)?;
            if !def.namespaced {
                return Err(ApiError::UnknownResource);
            }
            (
                def,
                Some((*ns).to_owned()),
                tail.first().copied(),
                tail.get(1).copied(),
            )
        }
        [plural, tail @ ..] => (
            find(plural)?,
            None,
            tail.first().copied(),
            tail.get(1).copied(),
        ),
        [] => return Err(ApiError::UnknownResource),
    };
    if segs.len() > if namespace.is_some() { 5 } else { 3 } {
        return Err(ApiError::UnknownResource);
    }
    let subresource = match sub {
        None => Subresource::Main,
        Some("status") if def.subresources.status => Subresource::Status,
        Some("scale") if def.subresources.scale => Subresource::Scale,
        Some(other) => def
            .strategy
            .subresource(other, namespace.is_some())
            .ok_or(ApiError::UnknownResource)?,
    };
    Ok(Target {
        def,
        namespace,
        name: name.filter(|n| !n.is_empty()).map(str::to_owned),
        subresource,
    })
}

/// `/api/{version}/{*rest}`.
pub async fn core_resource(
    State(state): State<Arc<ApiState>>,
    Path((version, rest)): Path<(String, String)>,
    Extension(user): Extension<Arc<UserInfo>>,
    method: Method,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_or_status(body)?;
    let target = parse_target(&state, "", &version, &rest)?;
    dispatch(state, user, target, method, query, headers, body).await
}

/// `/apis/{group}/{version}/{*rest}`.
pub async fn group_resource(
    State(state): State<Arc<ApiState>>,
    Path((group, version, rest)): Path<(String, String, String)>,
    Extension(user): Extension<Arc<UserInfo>>,
    method: Method,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_or_status(body)?;
    let target = parse_target(&state, &group, &version, &rest)?;
    let deprecation = target.def.strategy.deprecation_warning().map(str::to_owned);
    let result = dispatch(state, user, target, method, query, headers, body).await;
    Ok(with_deprecation(result, deprecation))
}

/// Every request to a deprecated version is answered with its warning (success or not), as
/// Kubernetes does for custom resource versions marked `deprecated`.
fn with_deprecation(result: Result<Response, ApiError>, warning: Option<String>) -> Response {
    let mut response = result.unwrap_or_else(IntoResponse::into_response);
    if let Some(h) = warning.and_then(|w| http::HeaderValue::from_str(&format!("299 - {w:?}")).ok())
    {
        response.headers_mut().append(http::header::WARNING, h);
    }
    response
}

fn selector_error(e: SelectorError) -> ApiError {
    ApiError::BadRequest(e.to_string())
}

/// Parses list/watch options from the query.
pub fn list_options(
    def: &ResourceDef,
    query: &HashMap<String, String>,
) -> Result<ListOptions, ApiError> {
    let labels = LabelSelector::parse(query.get("labelSelector").map_or("", String::as_str))
        .map_err(|e| selector_error(e.into()))?;
    let fields = FieldSelector::parse(
        query.get("fieldSelector").map_or("", String::as_str),
        &def.strategy.field_selectors(),
    )
    .map_err(selector_error)?;
    let limit = match query.get("limit").filter(|l| !l.is_empty()) {
        Some(l) => match l.parse::<i64>() {
            Ok(n) if n > 0 => Some(n as usize),
            Ok(_) => None,
            Err(_) => return Err(ApiError::BadRequest(format!("invalid limit {l:?}"))),
        },
        None => None,
    };
    let continue_token = query.get("continue").filter(|c| !c.is_empty()).cloned();
    Ok(ListOptions {
        labels,
        fields,
        limit,
        continue_token,
    })
}

fn write_options(query: &HashMap<String, String>) -> Result<WriteOptions, ApiError> {
    let dry_run = match query.get("dryRun").map(String::as_str) {
        None | Some("") => false,
        Some("All") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "unsupported dryRun value {other:?}: only All is supported"
            )))
        }
    };
    let field_validation = match query.get("fieldValidation").map(String::as_str) {
        None | Some("") | Some("Warn") => FieldValidation::Warn,
        Some("Strict") => FieldValidation::Strict,
        Some("Ignore") => FieldValidation::Ignore,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "fieldValidation must be one of Ignore, Warn, Strict, not {other:?}"
            )))
        }
    };
    Ok(WriteOptions {
        dry_run,
        field_validation,
        ..WriteOptions::default()
    })
}

/// The write options of a create, update or patch: [`write_options`] and the field manager
/// (`?fieldManager=`, else the User-Agent's first part, as Kubernetes names managers).
fn write_options_of(
    query: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<WriteOptions, ApiError> {
    let mut opts = write_options(query)?;
    let manager = match query.get("fieldManager").filter(|m| !m.is_empty()) {
        Some(manager) => {
            apply::validate_field_manager(manager).map_err(|cause| ApiError::Invalid {
                kind: "PatchOptions.meta.k8s.io".into(),
                name: String::new(),
                causes: vec![cause],
            })?;
            Some(manager.clone())
        }
        None => headers
            .get(http::header::USER_AGENT)
            .and_then(|ua| ua.to_str().ok())
            .map(apply::manager_from_user_agent)
            .filter(|m| !m.is_empty()),
    };
    opts.field_manager = manager;
    Ok(opts)
}

/// The media type of server-side apply patches.
const APPLY_PATCH: &str = "application/apply-patch+yaml";

/// `?force=`: only for apply patches, as Kubernetes' `ValidatePatchOptions`.
fn force_option(query: &HashMap<String, String>, apply: bool) -> Result<bool, ApiError> {
    let force = match query.get("force").map(String::as_str) {
        None | Some("") | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "invalid force value {other:?}: must be true or false"
            )))
        }
    };
    if force && !apply {
        return Err(ApiError::Invalid {
            kind: "PatchOptions.meta.k8s.io".into(),
            name: String::new(),
            causes: vec![FieldError::forbidden(
                "force",
                "may not be specified for non-apply patch",
            )],
        });
    }
    Ok(force)
}

fn content_type(headers: &HeaderMap) -> &str {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
}

/// Decodes a JSON, YAML or protobuf body; large bodies off the async workers.
async fn decode_body(
    state: &ApiState,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::BadRequest("the request body is empty".into()));
    }
    let media = content_type(headers)
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned();
    let body = body.clone();
    state
        .off_workers(body.len(), move || decode_media(&media, &body))
        .await?
}

/// Decodes `body` of media type `media`. Nesting is limited by the decoders (128 levels in
/// serde_json and serde_yaml, far more than any Kubernetes object needs), YAML aliases by a
/// node budget.
fn decode_media(media: &str, body: &[u8]) -> Result<Value, ApiError> {
    let value: Value = match media {
        super::protobuf::CONTENT_TYPE => {
            let mut v = super::protobuf::decode(body)
                .map_err(|e| ApiError::BadRequest(format!("error decoding protobuf: {e}")))?;
            super::defaults::drop_plain_zeros(&mut v);
            v
        }
        m if m.contains("yaml") => limits::yaml_to_json(body, limits::yaml_node_budget(body.len()))
            .map_err(|e| ApiError::BadRequest(format!("error decoding YAML: {e}")))?,
        m if m.contains("json") || m.is_empty() => serde_json::from_slice(body)
            .map_err(|e| ApiError::BadRequest(format!("error decoding JSON: {e}")))?,
        _ => {
            return Err(ApiError::UnsupportedMediaType(
                "application/json, application/yaml, application/vnd.kubernetes.protobuf".into(),
            ))
        }
    };
    Ok(value)
}

/// The body, or the Status for one over [`limits::MAX_BODY_BYTES`] (axum's own answer is
/// plain text).
pub fn body_or_status(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(format!("limit is {}", limits::MAX_BODY_BYTES))
        } else {
            ApiError::BadRequest(format!("reading the request body failed: {e}"))
        }
    })
}

/// What representation the client asked for.
fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .next()
        .is_some_and(|first| first.contains("as=Table"))
}

/// Warning text beyond which warnings are cut short (kube-apiserver's warning recorder):
/// once the warnings exceed this many characters in all, every one is cut to
/// [`WARNING_ITEM_CHARS`], and further ones are dropped when the cut ones fill it again.
/// Warnings echo what clients sent (PodSecurity quotes annotation values), so their headers
/// must not grow with the request.
const WARNING_TOTAL_CHARS: usize = 4 * 1024;
/// See [`WARNING_TOTAL_CHARS`].
const WARNING_ITEM_CHARS: usize = 256;

/// The warnings a response carries, de-duplicated and bounded as kube-apiserver's recorder
/// does it one warning at a time.
fn bounded_warnings(warnings: &[String]) -> Vec<String> {
    let cut = |w: &str| w.chars().take(WARNING_ITEM_CHARS).collect::<String>();
    let mut recorded: Vec<&str> = Vec::new();
    let mut out: Vec<String> = Vec::new();
    let (mut written, mut truncating) = (0, false);
    for w in warnings {
        if w.is_empty() || (truncating && written >= WARNING_TOTAL_CHARS) {
            continue;
        }
        if recorded.contains(&w.as_str()) {
            continue;
        }
        recorded.push(w);
        let len = w.chars().count();
        if truncating {
            written += len.min(WARNING_ITEM_CHARS);
            out.push(cut(w));
        } else if written + len <= WARNING_TOTAL_CHARS {
            written += len;
            out.push(w.clone());
        } else {
            truncating = true;
            out = recorded.iter().map(|r| cut(r)).collect();
            written = out.iter().map(|o| o.chars().count()).sum();
        }
    }
    out
}

fn json_response(code: StatusCode, value: &Value, warnings: &[String]) -> Response {
    let mut response = (code, axum::Json(value)).into_response();
    for w in &bounded_warnings(warnings) {
        if let Ok(h) = http::HeaderValue::from_str(&format!("299 - {w:?}")) {
            response.headers_mut().append(http::header::WARNING, h);
        }
    }
    response
}

/// An object of `def` as its version serves it (see `objects::served`); other objects (a
/// Scale, a Status) pass as they are.
fn served(def: &ResourceDef, object: Value) -> Value {
    if def.strategy.converts() && object.get("kind").and_then(Value::as_str) == Some(&def.kind) {
        super::objects::served(def, object)
    } else {
        object
    }
}

fn written(def: &ResourceDef, code: StatusCode, mut w: Written) -> Response {
    w.object = served(def, w.object);
    json_response(code, &w.object, &w.warnings)
}

async fn delete_options(
    state: &ApiState,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    body: &Bytes,
) -> Result<DeleteOptions, ApiError> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        decode_body(state, headers, body).await?
    };
    let grace = match query.get("gracePeriodSeconds") {
        Some(g) => Some(
            g.parse::<i64>()
                .map_err(|_| ApiError::BadRequest(format!("invalid gracePeriodSeconds {g:?}")))?,
        ),
        None => body.get("gracePeriodSeconds").and_then(Value::as_i64),
    };
    // Bounded so that the deletionTimestamp (now + grace) stays a time; Kubernetes reads a
    // negative grace period as "at once", so only the top is checked.
    if let Some(g) = grace.filter(|g| *g > MAX_SECONDS) {
        return Err(ApiError::Invalid {
            kind: "DeleteOptions".into(),
            name: String::new(),
            causes: vec![FieldError::invalid_rendered(
                "gracePeriodSeconds",
                &g.to_string(),
                &format!("must be less than or equal to {MAX_SECONDS}"),
            )],
        });
    }
    let propagation = query.get("propagationPolicy").cloned().or_else(|| {
        body.get("propagationPolicy")
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    if let Some(p) = &propagation {
        if !["Background", "Foreground", "Orphan"].contains(&p.as_str()) {
            return Err(ApiError::BadRequest(format!(
                "propagationPolicy must be Background, Foreground or Orphan, not {p:?}"
            )));
        }
    }
    let dry_run = query.get("dryRun").is_some_and(|d| d == "All")
        || body
            .get("dryRun")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|v| v == "All"));
    Ok(DeleteOptions {
        grace_period_seconds: grace,
        propagation_policy: propagation,
        precondition_uid: body
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(str::to_owned),
        precondition_resource_version: body
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_owned),
        dry_run,
    })
}

/// Renders a list as a `<Kind>List` or a Table.
fn list_response(
    def: &ResourceDef,
    items: Vec<Bytes>,
    revision: u64,
    continue_token: Option<String>,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let mut list_meta = json!({"resourceVersion": revision.to_string()});
    if let Some(c) = continue_token {
        list_meta["continue"] = json!(c);
    }
    if wants_table(headers) {
        let include = IncludeObject::parse(query.get("includeObject").map(String::as_str));
        let table = table_of_items(&def.strategy.columns(), &items, list_meta, include)
            .map_err(|e| ApiError::Internal(format!("stored object does not decode: {e}")))?;
        return Ok(json_response(StatusCode::OK, &table, &[]));
    }
    // Stored in another version: each item goes out as this version serves it.
    let items = if def.strategy.converts() {
        items
            .into_iter()
            .map(|raw| {
                if !def.strategy.needs_served_form(&raw) {
                    return Ok(raw);
                }
                let value = serde_json::from_slice::<Value>(&raw).map_err(|e| {
                    ApiError::Internal(format!("stored object does not decode: {e}"))
                })?;
                Ok(Bytes::from(
                    serde_json::to_vec(&served(def, value)).unwrap_or_default(),
                ))
            })
            .collect::<Result<Vec<_>, ApiError>>()?
    } else {
        items
    };
    // The stored bytes are the items' JSON: the list is assembled without decoding them.
    let head = format!(
        r#"{{"kind":{},"apiVersion":{},"metadata":{},"items":["#,
        json!(format!("{}List", def.kind)),
        json!(def.api_version()),
        list_meta
    );
    let mut body =
        Vec::with_capacity(head.len() + items.iter().map(|i| i.len() + 1).sum::<usize>() + 2);
    body.extend_from_slice(head.as_bytes());
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(item);
    }
    body.extend_from_slice(b"]}");
    Ok(([(http::header::CONTENT_TYPE, "application/json")], body).into_response())
}

async fn dispatch(
    state: Arc<ApiState>,
    user: Arc<UserInfo>,
    t: Target,
    method: Method,
    query: HashMap<String, String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let def = &t.def;
    let ns = t.namespace.as_deref();
    // Custom resources have no protobuf form (Kubernetes answers 415 alike).
    if def.origin.is_some() && content_type(&headers) == super::protobuf::CONTENT_TYPE {
        return Err(ApiError::UnsupportedMediaType(
            "application/json, application/yaml".into(),
        ));
    }
    if let Some(review) = def.strategy.review() {
        // A create-only review (SubjectAccessReview, TokenReview, ...): decoded and checked as
        // a create, answered with its status, never stored.
        return match (method, t.name.as_deref(), t.subresource) {
            (Method::POST, None, Subresource::Main) => {
                let mut object = decode_body(&state, &headers, &body).await?;
                state.check_type_meta(def, &mut object, &def.kind, &def.api_version())?;
                if ns.is_some() && object.get("metadata").is_none_or(Value::is_null) {
                    object["metadata"] = json!({});
                }
                if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
                    match (ns, meta.get("namespace").and_then(Value::as_str)) {
                        (Some(p), Some(b)) if !b.is_empty() && p != b => {
                            return Err(ApiError::BadRequest(
                                "the namespace of the provided object does not match the namespace sent on the request".into(),
                            ))
                        }
                        (Some(p), _) => {
                            meta.insert("namespace".into(), json!(p));
                        }
                        (None, _) => {
                            meta.remove("namespace");
                        }
                    }
                }
                let (object, warnings) = state.decode(def, object, &write_options(&query)?)?;
                let answer = review.answer(&state, &user, ns, object).await?;
                Ok(json_response(StatusCode::CREATED, &answer, &warnings))
            }
            _ => Err(ApiError::MethodNotAllowed),
        };
    }
    if let Some(source) = def.strategy.computed() {
        // A read-only computed kind (metrics.k8s.io): get and list, nothing else, no watch.
        return match (method, t.name.as_deref(), t.subresource) {
            (Method::GET, None, Subresource::Main) => {
                if query.get("watch").is_some_and(|w| w == "true" || w == "1") {
                    return Err(ApiError::MethodNotAllowed);
                }
                let opts = list_options(def, &query)?;
                let items = source.list(&state, ns, &opts).await?;
                let list_meta = json!({});
                if wants_table(&headers) {
                    let include =
                        IncludeObject::parse(query.get("includeObject").map(String::as_str));
                    let refs: Vec<&Value> = items.iter().collect();
                    return Ok(json_response(
                        StatusCode::OK,
                        &table(&def.strategy.columns(), &refs, list_meta, include),
                        &[],
                    ));
                }
                let list = json!({
                    "kind": format!("{}List", def.kind),
                    "apiVersion": def.api_version(),
                    "metadata": list_meta,
                    "items": items,
                });
                Ok(json_response(StatusCode::OK, &list, &[]))
            }
            (Method::GET, Some(name), Subresource::Main) => {
                let object = source.get(&state, ns, name).await?;
                if wants_table(&headers) {
                    let include =
                        IncludeObject::parse(query.get("includeObject").map(String::as_str));
                    return Ok(json_response(
                        StatusCode::OK,
                        &table(&def.strategy.columns(), &[&object], json!({}), include),
                        &[],
                    ));
                }
                Ok(json_response(StatusCode::OK, &object, &[]))
            }
            _ => Err(ApiError::MethodNotAllowed),
        };
    }
    if t.subresource == Subresource::Token {
        return match (method, t.name.as_deref(), ns) {
            (Method::POST, Some(name), Some(ns)) => {
                let mut request = decode_body(&state, &headers, &body).await?;
                state.check_type_meta(
                    def,
                    &mut request,
                    "TokenRequest",
                    "authentication.k8s.io/v1",
                )?;
                let opts = write_options(&query)?;
                let answer = auth::service_account::token_request::create(
                    &state,
                    ns,
                    name,
                    request,
                    opts.dry_run,
                )
                .await?;
                Ok(json_response(StatusCode::CREATED, &answer, &[]))
            }
            _ => Err(ApiError::MethodNotAllowed),
        };
    }
    if t.subresource == Subresource::Binding {
        return match (method, t.name.as_deref(), ns) {
            (Method::POST, Some(name), Some(ns)) => {
                let binding = decode_body(&state, &headers, &body).await?;
                let status = state
                    .bind_pod(ns, name, binding, &write_options(&query)?)
                    .await?;
                Ok(json_response(StatusCode::CREATED, &status, &[]))
            }
            _ => Err(ApiError::MethodNotAllowed),
        };
    }
    match (method, t.name.as_deref()) {
        (Method::GET, None) => {
            let opts = list_options(def, &query)?;
            if query.get("watch").is_some_and(|w| w == "true" || w == "1") {
                return watch::serve(
                    state,
                    def.clone(),
                    t.namespace,
                    opts,
                    &query,
                    wants_table(&headers),
                )
                .await;
            }
            let page = state.list(def, ns, &opts).await?;
            // Rendering thousands of items (a Table decodes each one) runs off the async
            // workers when the list is large, bounded like decoding.
            let size = page.items.iter().map(Bytes::len).sum();
            let (def, headers, query) = (def.clone(), headers.clone(), query.clone());
            state
                .off_workers(size, move || {
                    list_response(
                        &def,
                        page.items,
                        page.revision,
                        page.continue_token,
                        &headers,
                        &query,
                    )
                })
                .await?
        }
        (Method::GET, Some(name)) => {
            let object = state.get(def, ns, name).await?;
            let object = if t.subresource == Subresource::Scale {
                super::objects::scale_of(def, &object)
            } else {
                object
            };
            if wants_table(&headers) && t.subresource == Subresource::Main {
                let include = IncludeObject::parse(query.get("includeObject").map(String::as_str));
                let rv = object
                    .pointer("/metadata/resourceVersion")
                    .cloned()
                    .unwrap_or_default();
                return Ok(json_response(
                    StatusCode::OK,
                    &table(
                        &def.strategy.columns(),
                        &[&object],
                        json!({"resourceVersion": rv}),
                        include,
                    ),
                    &[],
                ));
            }
            let object = if t.subresource == Subresource::Main {
                served(def, object)
            } else {
                object
            };
            Ok(json_response(StatusCode::OK, &object, &[]))
        }
        (Method::POST, None) => {
            let object = decode_body(&state, &headers, &body).await?;
            let w = state
                .create(def, ns, object, &write_options_of(&query, &headers)?)
                .await?;
            Ok(written(def, StatusCode::CREATED, w))
        }
        (Method::PUT, Some(name)) => {
            let object = decode_body(&state, &headers, &body).await?;
            let w = state
                .update(
                    def,
                    ns,
                    name,
                    object,
                    t.subresource,
                    &write_options_of(&query, &headers)?,
                )
                .await?;
            Ok(written(def, StatusCode::OK, w))
        }
        (Method::PATCH, Some(name))
            if content_type(&headers).split(';').next().map(str::trim) == Some(APPLY_PATCH) =>
        {
            let mut opts = write_options_of(&query, &headers)?;
            // An applier names itself: the User-Agent does not stand in (Kubernetes validates
            // the query's fieldManager before defaulting it).
            if query.get("fieldManager").is_none_or(String::is_empty) {
                opts.field_manager = None;
            }
            let force = force_option(&query, true)?;
            if body.iter().all(u8::is_ascii_whitespace) {
                return Err(ApiError::BadRequest("the request body is empty".into()));
            }
            let raw = body.clone();
            // YAML is a superset of JSON: one decoder takes both, nesting and aliases bounded.
            let config = state
                .off_workers(body.len(), move || {
                    limits::yaml_to_json(&raw, limits::yaml_node_budget(raw.len()))
                })
                .await?
                .map_err(|e| ApiError::BadRequest(format!("error decoding YAML: {e}")))?;
            // Applying to an object that does not exist creates it: that needs the right to
            // create too, as kube-apiserver checks.
            let create = auth::RequestInfo {
                is_resource_request: true,
                path: String::new(),
                verb: "create".into(),
                api_prefix: if def.group.is_empty() { "api" } else { "apis" }.into(),
                api_group: def.group.clone(),
                api_version: def.version.clone(),
                namespace: ns.unwrap_or_default().into(),
                resource: def.plural.clone(),
                subresource: String::new(),
                name: name.into(),
            };
            let decision = state.authorizer.authorize(&user, &create).await;
            let create_refusal = (!decision.allowed)
                .then(|| super::error::forbidden(&user, &create, &decision.reason));
            let w = state
                .apply(
                    def,
                    ns,
                    name,
                    config,
                    force,
                    create_refusal,
                    t.subresource,
                    &opts,
                )
                .await?;
            Ok(written(def, StatusCode::OK, w))
        }
        (Method::PATCH, Some(name)) => {
            let ct = content_type(&headers);
            let kind = PatchKind::from_content_type(ct).ok_or_else(|| {
                ApiError::UnsupportedMediaType(
                    "application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml".into(),
                )
            })?;
            force_option(&query, false)?;
            let raw = body.clone();
            let patch: Value = state
                .off_workers(body.len(), move || serde_json::from_slice(&raw))
                .await?
                .map_err(|e| ApiError::BadRequest(format!("error decoding patch: {e}")))?;
            let w = state
                .patch(
                    def,
                    ns,
                    name,
                    kind,
                    Arc::new(patch),
                    t.subresource,
                    &write_options_of(&query, &headers)?,
                )
                .await?;
            Ok(written(def, StatusCode::OK, w))
        }
        (Method::DELETE, Some(name)) if t.subresource == Subresource::Main => {
            let opts = delete_options(&state, &headers, &query, &body).await?;
            let object = state.delete(def, ns, name, &opts).await?;
            let gone = object.pointer("/metadata/deletionTimestamp").is_none()
                || state
                    .store
                    .get(&def.key(ns, name))
                    .await
                    .ok()
                    .flatten()
                    .is_none();
            Ok(json_response(
                if gone {
                    StatusCode::OK
                } else {
                    StatusCode::ACCEPTED
                },
                &served(def, object),
                &[],
            ))
        }
        (Method::DELETE, None) => {
            let list = list_options(def, &query)?;
            let opts = delete_options(&state, &headers, &query, &body).await?;
            let deleted = state.delete_collection(def, ns, &list, &opts).await?;
            let revision = state.store.revision();
            let deleted = deleted
                .iter()
                .map(|d| Bytes::from(serde_json::to_vec(d).unwrap_or_default()))
                .collect();
            list_response(def, deleted, revision, None, &HeaderMap::new(), &query)
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_are_deduplicated_and_bounded_as_kube_apiserver_does() {
        let short = vec!["a".to_owned(), "b".to_owned(), "a".to_owned()];
        assert_eq!(bounded_warnings(&short), ["a", "b"]);
        let long = "x".repeat(3000);
        let more = "y".repeat(2000);
        let many: Vec<String> = std::iter::once(long.clone())
            .chain(std::iter::once(more))
            .chain((0..40).map(|i| format!("{i:0>300}")))
            .collect();
        let out = bounded_warnings(&many);
        // Past 4096 characters every warning is cut to 256, and warnings stop once the cut
        // ones reach 4096 again.
        assert!(out.iter().all(|w| w.chars().count() <= WARNING_ITEM_CHARS));
        assert_eq!(out[0], long[..256]);
        assert_eq!(out.len(), 16, "16 x 256 = 4096");
        let total: usize = out.iter().map(String::len).sum();
        assert_eq!(total, WARNING_TOTAL_CHARS);
    }

    fn state() -> Arc<ApiState> {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::RedbStore::open(&dir.path().join("db")).unwrap();
        std::mem::forget(dir);
        ApiState::new(Arc::new(store), "t".into(), Default::default()).0
    }

    #[test]
    fn paths_parse_to_targets() {
        let s = state();
        let t = parse_target(&s, "", "v1", "namespaces/default/pods/kubia/status").unwrap();
        assert_eq!(
            (
                t.def.kind.as_str(),
                t.namespace.as_deref(),
                t.name.as_deref(),
                t.subresource
            ),
            ("Pod", Some("default"), Some("kubia"), Subresource::Status)
        );
        let t = parse_target(&s, "", "v1", "namespaces/default").unwrap();
        assert_eq!(
            (t.def.kind.as_str(), t.name.as_deref()),
            ("Namespace", Some("default"))
        );
        let t = parse_target(&s, "", "v1", "namespaces/x/status").unwrap();
        assert_eq!(
            (t.def.kind.as_str(), t.subresource),
            ("Namespace", Subresource::Status)
        );
        let t = parse_target(&s, "apps", "v1", "namespaces/a/deployments/d/scale").unwrap();
        assert_eq!(t.subresource, Subresource::Scale);
        let t = parse_target(&s, "", "v1", "nodes").unwrap();
        assert!(t.name.is_none());
        assert!(parse_target(&s, "", "v1", "namespaces/a/nodes").is_err());
        assert!(parse_target(&s, "", "v1", "widgets").is_err());
        assert!(parse_target(&s, "", "v1", "namespaces/a/pods/p/exec/x").is_err());
        assert!(parse_target(&s, "", "v1", "namespaces/a/configmaps/c/scale").is_err());
    }
}

//! `POST /api/v1/namespaces/{ns}/serviceaccounts/{name}/token`: TokenRequest
//! (`kubectl create token`), answered as kube-apiserver's `serviceaccount/storage/token.go`
//! does: defaults and limits on the lifetime, the audiences, an optional bound Pod, Secret or
//! Node checked against the store, and a signed token in the status. Nothing is stored.

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest};
use k8s_openapi::jiff::Timestamp;
use serde_json::Value;
use skiff_k8s::time;

use super::claims::{Claims, Private, Ref};
use crate::apiserver::auth::user::SERVICE_ACCOUNT_PREFIX;
use crate::apiserver::error::{ApiError, FieldError};
use crate::apiserver::ApiState;
use crate::store::keys::{self, Collection};

/// The lifetime a request that names none gets (`SetDefaults_TokenRequestSpec`).
pub const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;
/// The shortest lifetime a request may ask for.
const MIN_EXPIRATION_SECONDS: i64 = 600;
/// The longest lifetime a request may ask for (2^32 s).
const MAX_EXPIRATION_SECONDS: i64 = 1 << 32;

/// Issues a token for the ServiceAccount `ns/name`; `body` is the decoded TokenRequest.
pub async fn create(
    state: &ApiState,
    ns: &str,
    name: &str,
    body: Value,
    dry_run: bool,
) -> Result<Value, ApiError> {
    let mut request: TokenRequest = serde_json::from_value(body)
        .map_err(|e| ApiError::BadRequest(format!("decoding TokenRequest: {e}")))?;
    for (what, given, path) in [
        ("name", request.metadata.name.as_deref(), name),
        ("namespace", request.metadata.namespace.as_deref(), ns),
    ] {
        if given.is_some_and(|g| !g.is_empty() && g != path) {
            return Err(ApiError::BadRequest(format!(
                "the {what} of the TokenRequest ({:?}) does not match the {what} of the request ({path:?})",
                given.unwrap_or_default()
            )));
        }
    }
    let spec = request.spec.get_or_insert_with(Default::default);
    let mut expiration = spec
        .expiration_seconds
        .unwrap_or(DEFAULT_EXPIRATION_SECONDS);
    validate_expiration(name, expiration)?;
    if let Some(max) = state.tokens.max_expiration_seconds() {
        expiration = expiration.min(max);
    }
    spec.expiration_seconds = Some(expiration);
    let audiences = match spec.audiences.take().filter(|a| !a.is_empty()) {
        Some(named) => named,
        None => state.tokens.audiences().to_vec(),
    };
    spec.audiences = Some(audiences.clone());

    let account = get(state, keys::SERVICE_ACCOUNTS, Some(ns), name).await?;
    let mut private = Private {
        namespace: ns.into(),
        serviceaccount: Ref {
            name: name.into(),
            uid: uid(&account),
        },
        ..Private::default()
    };
    if let Some(reference) = &spec.bound_object_ref {
        bind(state, ns, reference, &mut private).await?;
    }
    // NodeRestriction: a node asks only for tokens bound to a pod it runs.
    if let Some(node) = crate::apiserver::auth::current_user()
        .as_deref()
        .and_then(|u| crate::apiserver::auth::node::node_name(u).map(str::to_owned))
    {
        let why = match (&private.pod, &private.node) {
            (None, _) => Some("node requested token not bound to a pod"),
            (Some(_), Some(n)) if n.name == node => None,
            (Some(_), _) => {
                Some("node requested token bound to a pod scheduled on a different node")
            }
        };
        if let Some(why) = why {
            return Err(ApiError::Forbidden(format!(
                "serviceaccounts {name:?} is forbidden: {why}"
            )));
        }
    }

    let now = Timestamp::now().as_second();
    let exp = now + expiration;
    let claims = Claims {
        iss: state.tokens.issuer().into(),
        sub: format!("{SERVICE_ACCOUNT_PREFIX}{ns}:{name}"),
        aud: audiences,
        exp,
        iat: now,
        nbf: now,
        jti: uuid::Uuid::new_v4().to_string(),
        kubernetes: private,
    };
    let token = if dry_run {
        String::new()
    } else {
        state.tokens.sign(&claims).map_err(ApiError::Internal)?
    };
    let mut answer = serde_json::to_value(&request)
        .map_err(|e| ApiError::Internal(format!("encoding TokenRequest: {e}")))?;
    answer["kind"] = "TokenRequest".into();
    answer["apiVersion"] = "authentication.k8s.io/v1".into();
    let meta = &mut answer["metadata"];
    meta["name"] = name.into();
    meta["namespace"] = ns.into();
    meta["creationTimestamp"] = time::now().into();
    answer["status"] = serde_json::json!({
        "token": token,
        "expirationTimestamp": Timestamp::from_second(exp).map(time::format).unwrap_or_default(),
    });
    Ok(answer)
}

fn validate_expiration(name: &str, seconds: i64) -> Result<(), ApiError> {
    let detail = if seconds < MIN_EXPIRATION_SECONDS {
        "may not specify a duration less than 10 minutes"
    } else if seconds > MAX_EXPIRATION_SECONDS {
        "may not specify a duration larger than 2^32 seconds"
    } else {
        return Ok(());
    };
    Err(ApiError::Invalid {
        kind: "TokenRequest".into(),
        name: name.into(),
        causes: vec![FieldError::invalid_rendered(
            "spec.expirationSeconds",
            &seconds.to_string(),
            detail,
        )],
    })
}

async fn get(
    state: &ApiState,
    collection: Collection<'static>,
    ns: Option<&str>,
    name: &str,
) -> Result<Value, ApiError> {
    state
        .store
        .get(&collection.key(ns, name))
        .await
        .map_err(|e| ApiError::from_store(e, collection.plural, name))?
        .ok_or_else(|| ApiError::NotFound {
            kind: collection.plural.into(),
            name: name.into(),
        })
}

fn uid(object: &Value) -> String {
    object
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// Checks the bound object and records it (and a bound pod's node) in the claims.
async fn bind(
    state: &ApiState,
    ns: &str,
    reference: &BoundObjectReference,
    private: &mut Private,
) -> Result<(), ApiError> {
    let kind = reference.kind.as_deref().unwrap_or_default();
    let api_version = reference.api_version.as_deref().unwrap_or_default();
    let name = reference.name.as_deref().unwrap_or_default();
    let collection = match (api_version, kind) {
        ("v1", "Pod") => keys::PODS,
        ("v1", "Secret") => keys::SECRETS,
        ("v1", "Node") => keys::NODES,
        _ => {
            return Err(ApiError::BadRequest(format!(
                "cannot bind token for object of type {}, Kind={kind}",
                if api_version.is_empty() {
                    "/"
                } else {
                    api_version
                }
            )))
        }
    };
    if name.is_empty() {
        return Err(ApiError::BadRequest(
            "cannot bind token to an object without a name".into(),
        ));
    }
    let object = get(state, collection, Some(ns), name).await?;
    let actual = uid(&object);
    if let Some(wanted) = reference.uid.as_deref().filter(|u| !u.is_empty()) {
        if wanted != actual {
            return Err(ApiError::Conflict {
                kind: kind.into(),
                name: name.into(),
                detail: format!(
                    "the UID in the bound object reference ({wanted}) does not match the UID in record. The object might have been deleted and then recreated"
                ),
            });
        }
    }
    let bound = Ref {
        name: name.into(),
        uid: actual,
    };
    match kind {
        "Pod" => {
            let node = object
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty());
            if let Some(node) = node {
                let node_uid = state
                    .store
                    .get(&keys::NODES.key(None, node))
                    .await
                    .ok()
                    .flatten()
                    .map(|n| uid(&n))
                    .unwrap_or_default();
                private.node = Some(Ref {
                    name: node.into(),
                    uid: node_uid,
                });
            }
            private.pod = Some(bound);
        }
        "Secret" => private.secret = Some(bound),
        _ => private.node = Some(bound),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_outside_the_limits_are_invalid() {
        assert!(validate_expiration("sa", 600).is_ok());
        assert!(validate_expiration("sa", 1 << 32).is_ok());
        let short = validate_expiration("sa", 599).unwrap_err().to_string();
        assert!(
            short.contains("may not specify a duration less than 10 minutes"),
            "{short}"
        );
        let long = validate_expiration("sa", (1 << 32) + 1)
            .unwrap_err()
            .to_string();
        assert!(long.contains("larger than 2^32 seconds"), "{long}");
    }
}

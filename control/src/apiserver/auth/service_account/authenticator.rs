//! Bearer tokens that are ServiceAccount JWTs: the signature and times are checked by the
//! signer, then the objects the token names are read back, as kube-apiserver's
//! `pkg/serviceaccount` validator does, so a token stops working when its account or the pod
//! it is bound to is gone (or was recreated under the same name).

use std::collections::BTreeMap;

use serde_json::Value;

use super::claims::{Claims, Ref};
use super::signer::Rejection;
use crate::apiserver::auth::user::{AUTHENTICATED, SERVICE_ACCOUNT_PREFIX};
use crate::apiserver::auth::UserInfo;
use crate::apiserver::ApiState;
use crate::store::keys::{self, Collection};

/// The group of every ServiceAccount.
pub const ALL_SERVICE_ACCOUNTS: &str = "system:serviceaccounts";

/// A bound object deleted longer ago than this no longer backs its tokens (Kubernetes gives
/// a pod's processes this long to stop while its token still works).
const DELETED_GRACE_SECONDS: i64 = 60;

/// The user of a valid token and the audiences it was accepted for.
#[derive(Debug, Clone, PartialEq)]
pub struct Authenticated {
    /// `system:serviceaccount:<ns>:<name>`, its groups and the bound objects in `extra`.
    pub user: UserInfo,
    /// The token's audiences that were asked for.
    pub audiences: Vec<String>,
}

/// Authenticates `token` for any of `audiences`: `Ok(None)` if it is not a ServiceAccount
/// token of this cluster, an error if it is one that must be refused.
pub async fn authenticate(
    state: &ApiState,
    token: &str,
    audiences: &[String],
) -> Result<Option<Authenticated>, Rejection> {
    let Some(claims) = state.tokens.verify(token)? else {
        return Ok(None);
    };
    let accepted: Vec<String> = claims
        .aud
        .iter()
        .filter(|a| audiences.contains(a))
        .cloned()
        .collect();
    if accepted.is_empty() {
        return Err(format!(
            "token audiences {:?} is invalid for the target audiences {:?}",
            claims.aud, audiences
        ));
    }
    let user = validate(state, &claims).await?;
    Ok(Some(Authenticated {
        user,
        audiences: accepted,
    }))
}

/// Reads back what the claims name and builds the user.
async fn validate(state: &ApiState, claims: &Claims) -> Result<UserInfo, Rejection> {
    let private = &claims.kubernetes;
    let ns = private.namespace.as_str();
    let sa = &private.serviceaccount;
    if ns.is_empty() || sa.name.is_empty() {
        return Err("service account token has no namespace or service account name".into());
    }
    if claims.sub != format!("{SERVICE_ACCOUNT_PREFIX}{ns}:{}", sa.name) {
        return Err("service account token's subject does not match its claims".into());
    }
    let account = lookup(state, keys::SERVICE_ACCOUNTS, Some(ns), &sa.name)
        .await?
        .ok_or_else(|| format!("serviceaccounts {:?} not found", sa.name))?;
    let account_uid = uid(&account);
    if !sa.uid.is_empty() && account_uid != sa.uid {
        return Err(format!(
            "service account UID ({account_uid}) does not match claim ({})",
            sa.uid
        ));
    }
    let mut extra = BTreeMap::new();
    let mut put = |k: &str, v: &str| {
        extra.insert(
            format!("authentication.kubernetes.io/{k}"),
            vec![v.to_owned()],
        );
    };
    if let Some(pod) = &private.pod {
        bound(state, keys::PODS, Some(ns), pod, "pod").await?;
        put("pod-name", &pod.name);
        put("pod-uid", &pod.uid);
    }
    if let Some(secret) = &private.secret {
        bound(state, keys::SECRETS, Some(ns), secret, "secret").await?;
    }
    if let Some(node) = &private.node {
        // A pod-bound token names the pod's node for information; only a token bound to the
        // node itself dies with it, as in Kubernetes.
        if private.pod.is_none() {
            bound(state, keys::NODES, None, node, "node").await?;
        }
        put("node-name", &node.name);
        if !node.uid.is_empty() {
            put("node-uid", &node.uid);
        }
    }
    if !claims.jti.is_empty() {
        put("credential-id", &format!("JTI={}", claims.jti));
    }
    Ok(UserInfo {
        name: claims.sub.clone(),
        uid: account_uid.to_owned(),
        groups: vec![
            ALL_SERVICE_ACCOUNTS.into(),
            format!("{ALL_SERVICE_ACCOUNTS}:{ns}"),
            AUTHENTICATED.into(),
        ],
        extra,
    })
}

async fn lookup(
    state: &ApiState,
    collection: Collection<'static>,
    ns: Option<&str>,
    name: &str,
) -> Result<Option<Value>, Rejection> {
    state
        .store
        .get(&collection.key(ns, name))
        .await
        .map_err(|e| format!("reading {} {name:?}: {e}", collection.plural))
}

fn uid(object: &Value) -> &str {
    object
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// The object a token is bound to must still exist, be the same object, and not have been
/// deleted more than a minute ago.
async fn bound(
    state: &ApiState,
    collection: Collection<'static>,
    ns: Option<&str>,
    reference: &Ref,
    what: &str,
) -> Result<(), Rejection> {
    let invalidated = || "service account token has been invalidated".to_owned();
    let object = lookup(state, collection, ns, &reference.name)
        .await?
        .ok_or_else(invalidated)?;
    if uid(&object) != reference.uid {
        return Err(format!(
            "{what} UID ({}) does not match claim ({})",
            uid(&object),
            reference.uid
        ));
    }
    if let Some(deleted) = object
        .pointer("/metadata/deletionTimestamp")
        .and_then(Value::as_str)
        .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
    {
        if deleted.as_second()
            < k8s_openapi::jiff::Timestamp::now().as_second() - DELETED_GRACE_SECONDS
        {
            return Err(invalidated());
        }
    }
    Ok(())
}

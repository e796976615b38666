//! Impersonation (`kubectl --as`, `--as-group`, `--as-uid`): the `Impersonate-User`,
//! `Impersonate-Group`, `Impersonate-Uid` and `Impersonate-Extra-<key>` headers make a request
//! run as another user, if the requester may `impersonate` each part, as Kubernetes' filter
//! checks: `users` (or `serviceaccounts` for `system:serviceaccount:<ns>:<name>`) by name,
//! `groups` by name, and in `authentication.k8s.io` `uids` and `userextras/<key>`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::http::HeaderMap;

use super::user::{AUTHENTICATED, SERVICE_ACCOUNT_PREFIX};
use super::{Authorizer, RequestInfo, UserInfo};
use crate::apiserver::error::{forbidden, ApiError};

const USER: &str = "impersonate-user";
const GROUP: &str = "impersonate-group";
const UID: &str = "impersonate-uid";
const EXTRA_PREFIX: &str = "impersonate-extra-";
const ANONYMOUS: &str = "system:anonymous";

/// What the headers ask for, if anything.
#[derive(Debug, Default, PartialEq, Eq)]
struct Wanted {
    user: Option<String>,
    groups: Vec<String>,
    uid: Option<String>,
    extra: BTreeMap<String, Vec<String>>,
}

fn wanted(headers: &HeaderMap) -> Result<Option<Wanted>, ApiError> {
    let text = |v: &axum::http::HeaderValue| {
        v.to_str()
            .map(str::to_owned)
            .map_err(|_| ApiError::BadRequest("impersonation headers must be text".into()))
    };
    let mut w = Wanted::default();
    for (name, value) in headers {
        let name = name.as_str();
        if name == USER {
            // An empty user is no user, as in kube-apiserver: with no groups, uid or extra
            // the request is not impersonating (found by the API fuzzer, which got a 500).
            w.user = Some(text(value)?).filter(|u| !u.is_empty());
        } else if name == GROUP {
            w.groups.push(text(value)?);
        } else if name == UID {
            w.uid = Some(text(value)?);
        } else if let Some(key) = name.strip_prefix(EXTRA_PREFIX) {
            // Keys are percent-encoded in the header name (kubectl escapes them).
            let key = percent_decode(key);
            w.extra.entry(key).or_default().push(text(value)?);
        }
    }
    if w == Wanted::default() {
        return Ok(None);
    }
    if w.user.as_deref().is_none_or(str::is_empty) {
        return Err(ApiError::Internal(
            "requested impersonation of groups, uid or extra without impersonating a user".into(),
        ));
    }
    Ok(Some(w))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn check(
    authorizer: &Authorizer,
    requester: &UserInfo,
    info: RequestInfo,
) -> Result<(), ApiError> {
    let decision = authorizer.authorize(requester, &info).await;
    if decision.allowed {
        Ok(())
    } else {
        Err(forbidden(requester, &info, &decision.reason))
    }
}

fn attributes(
    group: &str,
    resource: &str,
    subresource: &str,
    namespace: &str,
    name: &str,
) -> RequestInfo {
    RequestInfo {
        is_resource_request: true,
        verb: "impersonate".into(),
        api_prefix: if group.is_empty() { "api" } else { "apis" }.into(),
        api_group: group.into(),
        api_version: "v1".into(),
        namespace: namespace.into(),
        resource: resource.into(),
        subresource: subresource.into(),
        name: name.into(),
        ..RequestInfo::default()
    }
}

/// The user the request runs as: `requester` itself without impersonation headers, else the
/// impersonated user once every part of it is allowed. The headers are removed.
pub async fn impersonate(
    authorizer: &Authorizer,
    requester: Arc<UserInfo>,
    headers: &mut HeaderMap,
) -> Result<Arc<UserInfo>, ApiError> {
    let Some(w) = wanted(headers)? else {
        return Ok(requester);
    };
    let name = w.user.unwrap_or_default();
    let service_account = name
        .strip_prefix(SERVICE_ACCOUNT_PREFIX)
        .and_then(|rest| rest.split_once(':'))
        .map(|(ns, sa)| (ns.to_owned(), sa.to_owned()));
    match &service_account {
        Some((ns, sa)) => {
            check(
                authorizer,
                &requester,
                attributes("", "serviceaccounts", "", ns, sa),
            )
            .await?
        }
        None => {
            check(
                authorizer,
                &requester,
                attributes("", "users", "", "", &name),
            )
            .await?
        }
    }
    for g in &w.groups {
        check(authorizer, &requester, attributes("", "groups", "", "", g)).await?;
    }
    if let Some(uid) = &w.uid {
        check(
            authorizer,
            &requester,
            attributes("authentication.k8s.io", "uids", "", "", uid),
        )
        .await?;
    }
    for (key, values) in &w.extra {
        for v in values {
            check(
                authorizer,
                &requester,
                attributes("authentication.k8s.io", "userextras", key, "", v),
            )
            .await?;
        }
    }
    let mut groups = w.groups;
    if groups.is_empty() {
        if let Some((ns, _)) = &service_account {
            groups = vec![
                "system:serviceaccounts".to_owned(),
                format!("system:serviceaccounts:{ns}"),
            ];
        }
    }
    // Kubernetes adds system:authenticated to every impersonated user but the anonymous one.
    if name != ANONYMOUS && !groups.iter().any(|g| g == AUTHENTICATED) {
        groups.push(AUTHENTICATED.to_owned());
    }
    let impersonation: Vec<_> = headers
        .keys()
        .filter(|k| {
            let k = k.as_str();
            k == USER || k == GROUP || k == UID || k.starts_with(EXTRA_PREFIX)
        })
        .cloned()
        .collect();
    for k in impersonation {
        headers.remove(k);
    }
    Ok(Arc::new(UserInfo {
        name,
        uid: w.uid.unwrap_or_default(),
        groups,
        extra: w.extra,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn headers_are_read_and_a_group_without_a_user_is_refused() {
        assert_eq!(wanted(&headers(&[])).unwrap(), None);
        let w = wanted(&headers(&[
            ("Impersonate-User", "alice"),
            ("Impersonate-Group", "a"),
            ("Impersonate-Group", "b"),
            ("Impersonate-Extra-Scopes%2Fx", "v"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(w.user.as_deref(), Some("alice"));
        assert_eq!(w.groups, ["a", "b"]);
        assert_eq!(
            w.extra.get("Scopes/x".to_lowercase().as_str()),
            Some(&vec!["v".to_owned()])
        );
        assert!(wanted(&headers(&[("Impersonate-Group", "a")])).is_err());
    }

    /// kube-apiserver reads an empty Impersonate-User as none: alone it impersonates nobody
    /// (the fuzzer's input got a 500 here); with a group it is a group without a user.
    #[test]
    fn an_empty_user_header_is_no_impersonation() {
        assert_eq!(wanted(&headers(&[("Impersonate-User", "")])).unwrap(), None);
        assert!(wanted(&headers(&[
            ("Impersonate-User", ""),
            ("Impersonate-Group", "a")
        ]))
        .is_err());
    }
}

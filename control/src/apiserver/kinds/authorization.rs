//! authorization.k8s.io/v1: SelfSubjectAccessReview, SubjectAccessReview,
//! LocalSubjectAccessReview and SelfSubjectRulesReview, the create-only questions "may I / may
//! they do this" and "what may I do here", as Kubernetes' `pkg/registry/authorization` answers
//! them: never stored, validated as `pkg/apis/authorization/validation` does, the attributes
//! turned into a [`RequestInfo`] as `authorizationutil.ResourceAttributesFrom` and
//! `NonResourceAttributesFrom` do, and decided by the server's own [`Authorizer`] chain.
//!
//! [`Authorizer`]: crate::apiserver::auth::Authorizer

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use k8s_openapi::api::authorization::v1::{
    LocalSubjectAccessReview, NonResourceAttributes, ResourceAttributes,
    SelfSubjectAccessReview, SelfSubjectRulesReview, SubjectAccessReview,
    SubjectAccessReviewSpec, SubjectAccessReviewStatus,
};
use serde_json::{json, Value};

use super::{Review, Strategy, CREATE_ONLY};
use crate::apiserver::auth::{RequestInfo, UserInfo};
use crate::apiserver::error::{ApiError, FieldError};
use crate::apiserver::registry::ResourceDef;
use crate::apiserver::ApiState;

/// The served resources.
pub fn resources() -> Vec<ResourceDef> {
    vec![
        ResourceDef::of::<LocalSubjectAccessReview>(Kind(Which::LocalSubjectAccess)),
        ResourceDef::of::<SelfSubjectAccessReview>(Kind(Which::SelfSubjectAccess)),
        ResourceDef::of::<SelfSubjectRulesReview>(Kind(Which::SelfSubjectRules)),
        ResourceDef::of::<SubjectAccessReview>(Kind(Which::SubjectAccess)),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    SelfSubjectAccess,
    SubjectAccess,
    LocalSubjectAccess,
    SelfSubjectRules,
}

struct Kind(Which);

impl Strategy for Kind {
    fn prepare_for_create(&self, _object: &mut Value) {}

    fn verbs(&self) -> &'static [&'static str] {
        CREATE_ONLY
    }

    fn review(&self) -> Option<&dyn Review> {
        Some(self)
    }
}

impl Review for Kind {
    fn answer<'a>(
        &'a self,
        state: &'a ApiState,
        user: &'a UserInfo,
        namespace: Option<&'a str>,
        object: Value,
    ) -> BoxFuture<'a, Result<Value, ApiError>> {
        Box::pin(async move {
            match self.0 {
                Which::SelfSubjectRules => rules_review(state, user, object).await,
                which => access_review(state, user, namespace, which, object).await,
            }
        })
    }
}

/// Go's `%#v` of a non-nil attributes pointer, as `field.Invalid` prints it.
fn go_struct(name: &str, fields: &[(&str, &Option<String>)]) -> String {
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{k}:{:?}", v.as_deref().unwrap_or_default()))
        .collect();
    format!("&authorization.{name}{{{}}}", body.join(", "))
}

/// `ValidateSubjectAccessReviewSpec` (with `user_required`) and
/// `ValidateSelfSubjectAccessReviewSpec` (without).
fn validate_spec(spec: &SubjectAccessReviewSpec, user_required: bool) -> Vec<FieldError> {
    let mut errs = Vec::new();
    match (&spec.resource_attributes, &spec.non_resource_attributes) {
        (Some(_), Some(n)) => errs.push(FieldError::invalid_rendered(
            "spec.nonResourceAttributes",
            &go_struct(
                "NonResourceAttributes",
                &[("Path", &n.path), ("Verb", &n.verb)],
            ),
            "cannot be specified in combination with resourceAttributes",
        )),
        (None, None) => errs.push(FieldError::invalid(
            "spec.resourceAttributes",
            "null",
            "exactly one of nonResourceAttributes or resourceAttributes must be specified",
        )),
        _ => {}
    }
    if user_required
        && spec.user.as_deref().unwrap_or_default().is_empty()
        && spec.groups.as_ref().is_none_or(Vec::is_empty)
    {
        errs.push(FieldError::invalid(
            "spec.user",
            spec.user.as_deref().unwrap_or_default(),
            "at least one of user or group must be specified",
        ));
    }
    errs
}

/// The metadata of a review must be empty (but for a LocalSubjectAccessReview's namespace),
/// as `ValidateSubjectAccessReview` and its siblings require.
fn validate_metadata(object: &Value, allow_namespace: bool) -> Option<FieldError> {
    let mut meta = object.get("metadata")?.as_object()?.clone();
    meta.remove("managedFields");
    if allow_namespace {
        meta.remove("namespace");
    }
    meta.retain(|_, v| !v.is_null());
    if meta.is_empty() {
        return None;
    }
    let detail = if allow_namespace {
        "must be empty except for namespace"
    } else {
        "must be empty"
    };
    Some(FieldError::invalid_rendered(
        "metadata",
        &Value::Object(meta).to_string(),
        detail,
    ))
}

/// A resource request as `ResourceAttributesFrom` builds it: an empty version matches all.
pub fn resource_request(attrs: &ResourceAttributes) -> RequestInfo {
    let s = |v: &Option<String>| v.clone().unwrap_or_default();
    let version = s(&attrs.version);
    RequestInfo {
        is_resource_request: true,
        verb: s(&attrs.verb),
        api_group: s(&attrs.group),
        api_version: if version.is_empty() { "*".into() } else { version },
        namespace: s(&attrs.namespace),
        resource: s(&attrs.resource),
        subresource: s(&attrs.subresource),
        name: s(&attrs.name),
        ..RequestInfo::default()
    }
}

/// A non-resource request as `NonResourceAttributesFrom` builds it.
pub fn non_resource_request(attrs: &NonResourceAttributes) -> RequestInfo {
    RequestInfo {
        is_resource_request: false,
        path: attrs.path.clone().unwrap_or_default(),
        verb: attrs.verb.clone().unwrap_or_default(),
        ..RequestInfo::default()
    }
}

/// The user a SubjectAccessReview asks about (`AuthorizationAttributesFrom`).
fn subject(spec: &SubjectAccessReviewSpec) -> UserInfo {
    UserInfo {
        name: spec.user.clone().unwrap_or_default(),
        uid: spec.uid.clone().unwrap_or_default(),
        groups: spec.groups.clone().unwrap_or_default(),
        extra: spec
            .extra
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect::<BTreeMap<_, _>>(),
    }
}

fn invalid(kind: &str, causes: Vec<FieldError>) -> ApiError {
    ApiError::Invalid {
        kind: kind.into(),
        name: String::new(),
        causes,
    }
}

fn spec_of(object: &Value) -> Result<SubjectAccessReviewSpec, ApiError> {
    serde_json::from_value(object.get("spec").cloned().unwrap_or_else(|| json!({})))
        .map_err(|e| ApiError::BadRequest(format!("spec cannot be decoded: {e}")))
}

/// SelfSubjectAccessReview, SubjectAccessReview and LocalSubjectAccessReview.
async fn access_review(
    state: &ApiState,
    user: &UserInfo,
    namespace: Option<&str>,
    which: Which,
    mut object: Value,
) -> Result<Value, ApiError> {
    let kind = match which {
        Which::SelfSubjectAccess => "SelfSubjectAccessReview",
        Which::SubjectAccess => "SubjectAccessReview",
        Which::LocalSubjectAccess | Which::SelfSubjectRules => "LocalSubjectAccessReview",
    };
    let mut spec = spec_of(&object)?;
    let mut causes = validate_spec(&spec, which != Which::SelfSubjectAccess);
    causes.extend(validate_metadata(
        &object,
        which == Which::LocalSubjectAccess,
    ));
    if !causes.is_empty() {
        return Err(invalid(kind, causes));
    }
    if which == Which::LocalSubjectAccess {
        let namespace = namespace.unwrap_or_default();
        if namespace.is_empty() {
            return Err(ApiError::BadRequest(
                "namespace is required on this type: ".into(),
            ));
        }
        if let Some(attrs) = spec.resource_attributes.as_mut() {
            match attrs.namespace.as_deref().unwrap_or_default() {
                "" => {
                    attrs.namespace = Some(namespace.to_owned());
                    object["spec"]["resourceAttributes"]["namespace"] = json!(namespace);
                }
                ns if ns != namespace => {
                    return Err(ApiError::BadRequest(format!(
                        "spec.resourceAttributes.namespace must equal namespace: {ns:?} != {namespace:?}"
                    )))
                }
                _ => {}
            }
        }
    }
    let subject = match which {
        Which::SelfSubjectAccess => user.clone(),
        _ => subject(&spec),
    };
    let request = match (&spec.resource_attributes, &spec.non_resource_attributes) {
        (Some(attrs), _) => resource_request(attrs),
        (None, Some(attrs)) => non_resource_request(attrs),
        (None, None) => unreachable!("validated: exactly one is set"),
    };
    let decision = state.authorizer.authorize(&subject, &request).await;
    let status = SubjectAccessReviewStatus {
        allowed: decision.allowed,
        denied: None,
        evaluation_error: None,
        reason: (!decision.reason.is_empty()).then_some(decision.reason),
    };
    object["status"] = serde_json::to_value(status)
        .map_err(|e| ApiError::Internal(format!("status does not encode: {e}")))?;
    Ok(object)
}

/// SelfSubjectRulesReview: what the requester may do in `spec.namespace`.
async fn rules_review(
    state: &ApiState,
    user: &UserInfo,
    mut object: Value,
) -> Result<Value, ApiError> {
    let namespace = object
        .pointer("/spec/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if namespace.is_empty() {
        return Err(ApiError::BadRequest("no namespace on request".into()));
    }
    let status = state
        .authorizer
        .rules_for(user, &namespace)
        .await
        .into_status();
    let mut status = serde_json::to_value(status)
        .map_err(|e| ApiError::Internal(format!("status does not encode: {e}")))?;
    // Kubernetes' rule lists have no omitempty: an empty one is `[]`, not absent.
    for list in ["resourceRules", "nonResourceRules"] {
        if status.get(list).is_none() {
            status[list] = json!([]);
        }
    }
    object["status"] = status;
    Ok(object)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_attributes_become_a_request_with_all_versions() {
        let attrs = ResourceAttributes {
            verb: Some("list".into()),
            resource: Some("pods".into()),
            namespace: Some("a".into()),
            ..ResourceAttributes::default()
        };
        let r = resource_request(&attrs);
        assert!(r.is_resource_request);
        assert_eq!(
            (r.verb.as_str(), r.api_version.as_str(), r.namespace.as_str()),
            ("list", "*", "a")
        );
        let r = non_resource_request(&NonResourceAttributes {
            path: Some("/healthz".into()),
            verb: Some("get".into()),
        });
        assert!(!r.is_resource_request);
        assert_eq!(r.path, "/healthz");
    }

    #[test]
    fn specs_are_validated_as_kubernetes_does() {
        let errs = validate_spec(&SubjectAccessReviewSpec::default(), true);
        let messages: Vec<_> = errs.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(
            messages,
            [
                "Invalid value: \"null\": exactly one of nonResourceAttributes or resourceAttributes must be specified",
                "Invalid value: \"\": at least one of user or group must be specified",
            ]
        );
        let both = SubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes::default()),
            non_resource_attributes: Some(NonResourceAttributes {
                path: Some("/x".into()),
                verb: Some("get".into()),
            }),
            groups: Some(vec!["g".into()]),
            ..SubjectAccessReviewSpec::default()
        };
        let errs = validate_spec(&both, true);
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].field, "spec.nonResourceAttributes");
    }
}

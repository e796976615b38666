//! authentication.k8s.io/v1: SelfSubjectReview ("who am I", `kubectl auth whoami`) and
//! TokenReview ("whose token is this", for webhooks and aggregated servers), create-only and
//! never stored, as Kubernetes' `pkg/registry/authentication` answers them. The only token
//! skiff issues is the admin token, so that is the only one a TokenReview authenticates.

use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{SelfSubjectReview, TokenReview};
use serde_json::{json, Value};
use skiff_k8s::time;

use super::{Review, Strategy, CREATE_ONLY};
use crate::apiserver::auth::UserInfo;
use crate::apiserver::error::ApiError;
use crate::apiserver::registry::ResourceDef;
use crate::apiserver::ApiState;

/// The served resources.
pub fn resources() -> Vec<ResourceDef> {
    vec![
        ResourceDef::of::<SelfSubjectReview>(Kind(Which::SelfSubject)),
        ResourceDef::of::<TokenReview>(Kind(Which::Token)),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    SelfSubject,
    Token,
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
        _namespace: Option<&'a str>,
        object: Value,
    ) -> BoxFuture<'a, Result<Value, ApiError>> {
        Box::pin(async move {
            match self.0 {
                Which::SelfSubject => Ok(self_subject_review(user)),
                Which::Token => token_review(state, object),
            }
        })
    }
}

fn user_info(user: &UserInfo) -> Value {
    serde_json::to_value(user).unwrap_or_else(|_| json!({}))
}

/// A new SelfSubjectReview, created now, whose status is the requester.
fn self_subject_review(user: &UserInfo) -> Value {
    json!({
        "kind": "SelfSubjectReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": time::now()},
        "status": {"userInfo": user_info(user)},
    })
}

/// The request's TokenReview with its status: authenticated as the admin for the admin token
/// (compared in constant time), not authenticated for anything else.
fn token_review(state: &ApiState, mut object: Value) -> Result<Value, ApiError> {
    let token = object
        .pointer("/spec/token")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if token.is_empty() {
        return Err(ApiError::BadRequest(
            "token is required for TokenReview in authentication".into(),
        ));
    }
    let status = if crate::apiserver::constant_time_eq(token.as_bytes(), state.token.as_bytes())
    {
        let mut status = json!({
            "authenticated": true,
            "user": user_info(&UserInfo::admin()),
        });
        if let Some(audiences) = object
            .pointer("/spec/audiences")
            .and_then(Value::as_array)
            .filter(|a| !a.is_empty())
        {
            status["audiences"] = Value::Array(audiences.clone());
        }
        status
    } else {
        json!({"user": {}, "error": "invalid bearer token"})
    };
    object["status"] = status;
    Ok(object)
}

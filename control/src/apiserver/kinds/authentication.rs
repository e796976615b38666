//! authentication.k8s.io/v1: SelfSubjectReview ("who am I", `kubectl auth whoami`) and
//! TokenReview ("whose token is this", for webhooks and aggregated servers), create-only and
//! never stored, as Kubernetes' `pkg/registry/authentication` answers them. A TokenReview
//! authenticates the admin token, ServiceAccount tokens and bootstrap tokens for the
//! audiences it names.

use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{SelfSubjectReview, TokenReview};
use serde_json::{json, Value};
use skiff_k8s::time;

use super::{Review, Strategy, CREATE_ONLY};
use crate::apiserver::auth::{bootstrap_token, service_account, UserInfo};
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
                Which::Token => token_review(state, object).await,
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

/// The status of a TokenReview of what may be a bootstrap token: like the admin token it is
/// not tied to an audience, so it is accepted for the API server's own.
async fn bootstrap_token_status(
    state: &ApiState,
    token: &str,
    audiences: &[String],
    requested: &[String],
) -> Value {
    let unauthenticated = |error: &str| json!({"user": {}, "error": error});
    let own: Vec<&String> = audiences
        .iter()
        .filter(|a| state.tokens.audiences().contains(a))
        .collect();
    match bootstrap_token::authenticate(state, token).await {
        Ok(Some(_)) if own.is_empty() => {
            unauthenticated("token audiences are invalid for the target audiences")
        }
        Ok(Some(user)) => {
            let mut status = json!({"authenticated": true, "user": user_info(&user)});
            if !requested.is_empty() {
                status["audiences"] = json!(own);
            }
            status
        }
        Ok(None) => unauthenticated("invalid bearer token"),
        Err(_) => unauthenticated("invalid bearer token"),
    }
}

/// The request's TokenReview with its status. The admin token is not tied to an audience, so
/// it is accepted for the API server's own; a ServiceAccount token must name one of the
/// review's audiences (the API server's when it names none), and the status lists those it
/// matched. Anything else is `authenticated: false` with the reason.
async fn token_review(state: &ApiState, mut object: Value) -> Result<Value, ApiError> {
    let token = object
        .pointer("/spec/token")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if token.is_empty() {
        return Err(ApiError::BadRequest(
            "token is required for TokenReview in authentication".into(),
        ));
    }
    let requested: Vec<String> = object
        .pointer("/spec/audiences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let audiences = if requested.is_empty() {
        state.tokens.audiences().to_vec()
    } else {
        requested.clone()
    };
    let unauthenticated = |error: &str| json!({"user": {}, "error": error});
    let status = if crate::apiserver::constant_time_eq(token.as_bytes(), state.token.as_bytes())
    {
        let own: Vec<&String> = audiences
            .iter()
            .filter(|a| state.tokens.audiences().contains(a))
            .collect();
        if own.is_empty() {
            unauthenticated("token audiences are invalid for the target audiences")
        } else {
            let mut status = json!({"authenticated": true, "user": user_info(&UserInfo::admin())});
            if !requested.is_empty() {
                status["audiences"] = json!(own);
            }
            status
        }
    } else {
        match service_account::authenticate(state, &token, &audiences).await {
            Ok(Some(found)) => {
                let mut status = json!({"authenticated": true, "user": user_info(&found.user)});
                if !requested.is_empty() {
                    status["audiences"] = json!(found.audiences);
                }
                status
            }
            Ok(None) => bootstrap_token_status(state, &token, &audiences, &requested).await,
            Err(reason) => unauthenticated(&format!("[invalid bearer token, {reason}]")),
        }
    };
    object["status"] = status;
    Ok(object)
}

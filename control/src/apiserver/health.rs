//! `/readyz`, `/livez` and `/healthz` as lists of named checks, as kube-apiserver serves
//! them: `?verbose` lists each check (`[+]ping ok`, `[-]name failed: reason withheld`) and
//! the verdict (`readyz check passed`), `?exclude=name` skips one, and a failing check makes
//! the answer 500 with the list even without `?verbose`. Reasons are logged, not sent, as
//! Kubernetes withholds them from the (unauthenticated) caller.

use std::sync::{Arc, RwLock};

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Deserialize;

use super::ApiState;

type Check = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Readiness checks other parts of the process register (the controller manager, ...).
#[derive(Clone, Default)]
pub struct Checks {
    checks: Arc<RwLock<Vec<(String, Check)>>>,
}

impl std::fmt::Debug for Checks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.results().into_iter().map(|(n, _)| n).collect();
        f.debug_struct("Checks").field("names", &names).finish()
    }
}

impl Checks {
    /// Adds (or replaces) the check `name`.
    pub fn add(&self, name: &str, check: impl Fn() -> Result<(), String> + Send + Sync + 'static) {
        let mut checks = self.checks.write().unwrap_or_else(|p| p.into_inner());
        checks.retain(|(n, _)| n != name);
        checks.push((name.to_owned(), Arc::new(check)));
    }

    fn results(&self) -> Vec<(String, Result<(), String>)> {
        let checks = self
            .checks
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        checks.into_iter().map(|(n, c)| (n, c())).collect()
    }
}

/// The query of a health endpoint.
#[derive(Debug, Default, Deserialize)]
pub struct HealthQuery {
    verbose: Option<String>,
    exclude: Option<String>,
}

/// How long the store may take to answer the readiness read.
const STORE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The store answers a read in time (kube-apiserver's etcd check reads a key too): a backend
/// that refuses work after an I/O error, or hangs, fails it. A store whose last commit failed
/// (a full disk) fails it too, though it may still answer reads.
async fn store_check(state: &ApiState) -> Result<(), String> {
    state.store.health()?;
    match tokio::time::timeout(STORE_TIMEOUT, state.store.get("/registry/health")).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {STORE_TIMEOUT:?}")),
    }
}

fn answer(
    endpoint: &str,
    results: Vec<(String, Result<(), String>)>,
    query: &HealthQuery,
) -> Response {
    let excluded = |name: &str| {
        query
            .exclude
            .as_deref()
            .is_some_and(|e| e.split(',').any(|x| x == name))
    };
    let mut body = String::new();
    let mut failed = false;
    for (name, result) in results.iter().filter(|(n, _)| !excluded(n)) {
        match result {
            Ok(()) => body.push_str(&format!("[+]{name} ok\n")),
            Err(why) => {
                failed = true;
                tracing::warn!(check = %name, reason = %why, "{endpoint} check failed");
                body.push_str(&format!("[-]{name} failed: reason withheld\n"));
            }
        }
    }
    if failed {
        body.push_str(&format!("{endpoint} check failed\n"));
        return (StatusCode::INTERNAL_SERVER_ERROR, body).into_response();
    }
    if query.verbose.is_some() {
        body.push_str(&format!("{endpoint} check passed\n"));
        return (StatusCode::OK, body).into_response();
    }
    (StatusCode::OK, "ok").into_response()
}

/// `GET /readyz`: ping, the store and every registered check.
pub async fn readyz(
    State(state): State<Arc<ApiState>>,
    Query(query): Query<HealthQuery>,
) -> Response {
    let mut results = vec![
        ("ping".to_owned(), Ok(())),
        ("store".to_owned(), store_check(&state).await),
    ];
    results.extend(state.readiness.results());
    answer("readyz", results, &query)
}

/// `GET /livez` and `/healthz`: the process answers (restarting it would not mend a failing
/// controller, so those are readiness only).
pub async fn livez(Query(query): Query<HealthQuery>) -> Response {
    answer("livez", vec![("ping".to_owned(), Ok(()))], &query)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn text(r: Response) -> (StatusCode, String) {
        let status = r.status();
        let body = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn checks_are_listed_and_a_failure_is_a_500() {
        let ok = vec![
            ("ping".to_owned(), Ok(())),
            ("controller-manager".to_owned(), Ok(())),
        ];
        let quiet = HealthQuery::default();
        assert_eq!(
            text(answer("readyz", ok.clone(), &quiet)).await,
            (StatusCode::OK, "ok".into())
        );
        let verbose = HealthQuery {
            verbose: Some(String::new()),
            exclude: None,
        };
        assert_eq!(
            text(answer("readyz", ok, &verbose)).await,
            (
                StatusCode::OK,
                "[+]ping ok\n[+]controller-manager ok\nreadyz check passed\n".into()
            )
        );
        let failing = vec![
            ("ping".to_owned(), Ok(())),
            (
                "controller-manager".to_owned(),
                Err("controller x restarting".to_owned()),
            ),
        ];
        assert_eq!(
            text(answer("readyz", failing.clone(), &quiet)).await,
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "[+]ping ok\n[-]controller-manager failed: reason withheld\nreadyz check failed\n"
                    .into()
            )
        );
        let exclude = HealthQuery {
            verbose: None,
            exclude: Some("controller-manager".into()),
        };
        assert_eq!(
            text(answer("readyz", failing, &exclude)).await.0,
            StatusCode::OK
        );
    }
}

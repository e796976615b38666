//! `/readyz` lists named checks as kube-apiserver does, and reports the controller manager.

mod common;

use common::api;
use http::{Method, StatusCode};
use serde_json::Value;
use skiff_control::manager::supervise::Health;

#[tokio::test]
async fn readyz_lists_checks_and_fails_with_the_controller_manager() {
    let a = api().await;
    let (code, body) = a.call(Method::GET, "/readyz", None).await;
    assert_eq!((code, body), (StatusCode::OK, Value::String("ok".into())));
    let health = Health::default();
    a.state.readiness.add("controller-manager", {
        let health = health.clone();
        move || health.check()
    });
    let (code, body) = a.call(Method::GET, "/readyz?verbose", None).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(
        body,
        Value::String(
            "[+]ping ok\n[+]store ok\n[+]controller-manager ok\nreadyz check passed\n".into()
        )
    );
    health.set_stopped("leader election ended");
    let (code, body) = a.call(Method::GET, "/readyz", None).await;
    assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        body,
        Value::String(
            "[+]ping ok\n[+]store ok\n[-]controller-manager failed: reason withheld\nreadyz check failed\n"
                .into()
        )
    );
    // Liveness does not depend on the controllers: restarting would not mend them.
    let (code, _) = a.call(Method::GET, "/livez", None).await;
    assert_eq!(code, StatusCode::OK);
}

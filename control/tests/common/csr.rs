//! CertificateSigningRequests for the certificate and bootstrap token tests, and requests made
//! as other users through the router.

use axum::body::Body;
use base64::Engine as _;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use serde_json::{json, Value};
use tower::ServiceExt;

use super::{Api, TOKEN};

/// The CSR collection.
pub const CSRS: &str = "/apis/certificates.k8s.io/v1/certificatesigningrequests";

/// A PEM certificate request for `cn` (and `org`) naming `sans` (IPs or DNS names).
pub fn request_pem(cn: &str, org: Option<&str>, sans: &[&str]) -> String {
    let key = KeyPair::generate().unwrap();
    let names: Vec<String> = sans.iter().map(|s| (*s).to_owned()).collect();
    let mut params = CertificateParams::new(names).unwrap();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    if let Some(org) = org {
        params
            .distinguished_name
            .push(DnType::OrganizationName, org);
    }
    params.serialize_request(&key).unwrap().pem().unwrap()
}

/// A CertificateSigningRequest named `name` for `pem`.
pub fn csr(name: &str, pem: &str, signer: &str, usages: &[&str]) -> Value {
    json!({"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
        "metadata": {"name": name},
        "spec": {"request": base64::engine::general_purpose::STANDARD.encode(pem),
            "signerName": signer, "usages": usages}})
}

/// Who makes a request.
#[derive(Debug, Clone, Copy)]
pub enum As<'a> {
    /// The admin token.
    Admin,
    /// The admin impersonating a user in groups.
    User(&'a str, &'a [&'a str]),
    /// A bearer token.
    Bearer(&'a str),
    /// No credentials.
    Anonymous,
}

/// A JSON request to the router as `who`.
pub async fn call(
    a: &Api,
    who: As<'_>,
    method: Method,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json");
    match who {
        As::Admin => req = req.header("authorization", format!("Bearer {TOKEN}")),
        As::User(user, groups) => {
            req = req
                .header("authorization", format!("Bearer {TOKEN}"))
                .header("impersonate-user", user);
            for g in groups {
                req = req.header("impersonate-group", *g);
            }
        }
        As::Bearer(token) => req = req.header("authorization", format!("Bearer {token}")),
        As::Anonymous => {}
    }
    let req = req
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap();
    let resp = a.router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, value)
}

/// Appends a condition and PUTs the CSR to `/approval`, as `kubectl certificate approve`
/// (or `deny`) does.
pub async fn decide(a: &Api, who: As<'_>, name: &str, ty: &str) -> (StatusCode, Value) {
    let (code, mut current) =
        call(a, As::Admin, Method::GET, &format!("{CSRS}/{name}"), None).await;
    assert_eq!(code, StatusCode::OK, "{current}");
    if !current["status"].is_object() {
        current["status"] = json!({});
    }
    let mut conditions = current["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    conditions.push(
        json!({"type": ty, "status": "True", "reason": "KubectlApprove",
        "message": "This CSR was approved by kubectl certificate approve."}),
    );
    current["status"]["conditions"] = json!(conditions);
    call(
        a,
        who,
        Method::PUT,
        &format!("{CSRS}/{name}/approval"),
        Some(current),
    )
    .await
}

/// The types of a CSR's conditions.
pub fn condition_types(csr: &Value) -> Vec<String> {
    csr["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c["type"].as_str().unwrap_or_default().to_owned())
        .collect()
}

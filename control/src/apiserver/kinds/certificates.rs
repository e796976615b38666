//! certificates.k8s.io/v1 CertificateSigningRequest (short name `csr`), stored as Kubernetes'
//! `pkg/registry/certificates` stores it:
//!
//! - on create the requester is recorded: `spec.username`, `uid`, `groups` and `extra` are the
//!   authenticated user's, whatever the client sent, and the status starts empty (nobody
//!   creates a pre-approved request);
//! - validation as `pkg/apis/certificates/validation`: the request is a PEM `CERTIFICATE
//!   REQUEST` signed by its own key, the signer name a qualified `domain/path` (and not the
//!   legacy signer), usages known and not repeated, `expirationSeconds` at least 600,
//!   conditions well formed with Approved and Denied exclusive, a certificate only
//!   `CERTIFICATE` PEM blocks;
//! - the spec never changes after create;
//! - `/status` (the signer's) may set the certificate once and add conditions, but cannot
//!   add, change or remove Approved or Denied, which are kept as they were; `/approval` (the
//!   approver's: `kubectl certificate approve|deny`) changes only the conditions. Approved,
//!   Denied and Failed conditions are never removed. Who may approve or sign is checked by
//!   the certificates admission plugins ([`admission::certificates`]);
//! - `kubectl get csr` prints NAME, AGE, SIGNERNAME, REQUESTOR, REQUESTEDDURATION, CONDITION.
//!
//! [`admission::certificates`]: crate::apiserver::admission::certificates

use futures::future::BoxFuture;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use serde_json::{json, Value};
use skiff_k8s::names::dns_label_errors;

use super::Strategy;
use crate::apiserver::admission::certificates as admission;
use crate::apiserver::auth::current_user;
use crate::apiserver::error::FieldError;
use crate::apiserver::objects::Subresource;
use crate::apiserver::registry::ResourceDef;
use crate::apiserver::table::{human_duration, Column, AGE, NAME};
use crate::apiserver::validation::{not_supported, str_at, NameRule};
use crate::apiserver::{ApiError, ApiState};
use crate::certificates::condition::{APPROVED, DENIED, FAILED};
use crate::certificates::{request, signers, usages};

/// The served resources.
pub fn resources() -> Vec<ResourceDef> {
    vec![ResourceDef::of::<CertificateSigningRequest>(Csr)
        .short_names(&["csr"])
        .with_status()]
}

struct Csr;

/// The shortest `expirationSeconds` a CSR may ask for.
const MIN_EXPIRATION_SECONDS: i64 = 600;
/// Go's `DNS1123SubdomainMaxLength`, the longest signer domain.
const MAX_DOMAIN: usize = 253;

fn conditions(csr: &Value) -> &[Value] {
    csr.pointer("/status/conditions")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn condition_type(c: &Value) -> &str {
    c.get("type").and_then(Value::as_str).unwrap_or_default()
}

fn of_type<'a>(csr: &'a Value, ty: &str) -> Vec<&'a Value> {
    conditions(csr)
        .iter()
        .filter(|c| condition_type(c) == ty)
        .collect()
}

fn certificate(csr: &Value) -> &str {
    csr.pointer("/status/certificate")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn conditions_mut(csr: &mut Value) -> Option<&mut Vec<Value>> {
    csr.pointer_mut("/status/conditions")
        .and_then(Value::as_array_mut)
}

/// `populateConditionTimestamps`: a condition without `lastUpdateTime` was updated now; one
/// without `lastTransitionTime` keeps that of the old condition of the same type and status,
/// or transitioned now.
fn stamp_conditions(old: &Value, new: &mut Value) {
    let now = skiff_k8s::time::now();
    let Some(list) = conditions_mut(new) else {
        return;
    };
    for c in list.iter_mut() {
        let Some(map) = c.as_object_mut() else {
            continue;
        };
        if !map.get("lastUpdateTime").is_some_and(Value::is_string) {
            map.insert("lastUpdateTime".into(), json!(now));
        }
        if !map.get("lastTransitionTime").is_some_and(Value::is_string) {
            let (ty, status) = (map.get("type").cloned(), map.get("status").cloned());
            let kept = conditions(old)
                .iter()
                .find(|o| {
                    o.get("type") == ty.as_ref()
                        && o.get("status") == status.as_ref()
                        && o.get("lastTransitionTime").is_some_and(Value::is_string)
                })
                .and_then(|o| o.get("lastTransitionTime").cloned());
            map.insert(
                "lastTransitionTime".into(),
                kept.unwrap_or_else(|| json!(now)),
            );
        }
    }
}

/// `preserveConditionInstances`: the conditions of `ty` are the old object's, whatever a
/// `/status` write sent.
fn keep_conditions(old: &Value, new: &mut Value, ty: &str) {
    let kept: Vec<Value> = of_type(old, ty).into_iter().cloned().collect();
    if conditions_mut(new).is_none() {
        if kept.is_empty() {
            return;
        }
        if !new.get("status").is_some_and(Value::is_object) {
            new["status"] = json!({});
        }
        new["status"]["conditions"] = json!([]);
    }
    let list = conditions_mut(new).expect("conditions exist now");
    list.retain(|c| condition_type(c) != ty);
    list.extend(kept);
}

impl Strategy for Csr {
    /// The requester is whoever is authenticated, not what the client claims, and the status
    /// starts empty.
    fn prepare_for_create(&self, object: &mut Value) {
        let Some(map) = object.as_object_mut() else {
            return;
        };
        map.remove("status");
        let spec = map.entry("spec").or_insert_with(|| json!({}));
        let Some(spec) = spec.as_object_mut() else {
            return;
        };
        for field in ["username", "uid", "groups", "extra"] {
            spec.remove(field);
        }
        let Some(user) = current_user() else {
            return;
        };
        if !user.name.is_empty() {
            spec.insert("username".into(), json!(user.name));
        }
        if !user.uid.is_empty() {
            spec.insert("uid".into(), json!(user.uid));
        }
        if !user.groups.is_empty() {
            spec.insert("groups".into(), json!(user.groups));
        }
        if !user.extra.is_empty() {
            spec.insert("extra".into(), json!(user.extra));
        }
    }

    fn name_rule(&self) -> NameRule {
        // Kubernetes: "We don't care what you call your certificate requests."
        NameRule::PathSegment
    }

    /// `SetDefaults_CertificateSigningRequestCondition`: a condition's status is `True`.
    fn default(&self, object: &mut Value) {
        for c in conditions_mut(object).into_iter().flatten() {
            if let Some(map) = c.as_object_mut() {
                if map.get("status").and_then(Value::as_str).is_none_or(str::is_empty) {
                    map.insert("status".into(), json!("True"));
                }
            }
        }
    }

    fn admit<'a>(
        &'a self,
        state: &'a ApiState,
        object: &'a mut Value,
    ) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async move { admission::restrict_subject(state, object) })
    }

    fn validate(&self, object: &Value, errs: &mut Vec<FieldError>) {
        validate_request(object, errs);
        validate_signer_name(str_at(object, "/spec/signerName").unwrap_or(""), errs);
        validate_usages(object, errs);
        if let Some(seconds) = object
            .pointer("/spec/expirationSeconds")
            .and_then(Value::as_i64)
        {
            if seconds < MIN_EXPIRATION_SECONDS {
                errs.push(FieldError::invalid_rendered(
                    "spec.expirationSeconds",
                    &seconds.to_string(),
                    "may not specify a duration less than 600 seconds (10 minutes)",
                ));
            }
        }
        validate_conditions(object, errs);
        if let Err(reason) = validate_certificate(certificate(object)) {
            errs.push(FieldError::invalid_rendered(
                "status.certificate",
                "\"<certificate data>\"",
                &reason,
            ));
        }
    }

    fn validate_update(&self, old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
        if old.get("spec") != new.get("spec") {
            errs.push(FieldError::immutable("spec"));
        }
        for ty in [APPROVED, DENIED, FAILED] {
            if of_type(new, ty).len() < of_type(old, ty).len() {
                errs.push(FieldError::forbidden(
                    "status.conditions",
                    format!("updates may not remove a condition of type {ty:?}"),
                ));
            }
        }
        let (was, is) = (certificate(old), certificate(new));
        if !was.is_empty() && was != is {
            errs.push(FieldError::forbidden(
                "status.certificate",
                "updates may not modify existing certificate content",
            ));
        }
    }

    fn before_subresource_update(
        &self,
        state: &ApiState,
        sub: Subresource,
        old: &Value,
        new: &mut Value,
    ) -> Result<(), ApiError> {
        match sub {
            Subresource::Status => {
                // Approving and denying is /approval's, under its own permission.
                keep_conditions(old, new, APPROVED);
                keep_conditions(old, new, DENIED);
                stamp_conditions(old, new);
                if certificate(old) != certificate(new) {
                    admission::check_signing(state, new)?;
                }
            }
            Subresource::Approval => {
                stamp_conditions(old, new);
                admission::check_approval(state, new)?;
            }
            _ => {}
        }
        Ok(())
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            AGE,
            Column::new("SignerName", "string", |o, _| {
                json!(str_at(o, "/spec/signerName")
                    .filter(|s| !s.is_empty())
                    .unwrap_or("<none>"))
            }),
            Column::new("Requestor", "string", |o, _| {
                json!(str_at(o, "/spec/username").unwrap_or(""))
            }),
            Column::new("RequestedDuration", "string", |o, _| {
                json!(o
                    .pointer("/spec/expirationSeconds")
                    .and_then(Value::as_i64)
                    .map_or_else(|| "<none>".to_owned(), human_duration))
            }),
            Column::new("Condition", "string", |o, _| json!(condition_summary(o))),
        ]
    }

    fn field_selectors(&self) -> Vec<&str> {
        vec!["spec.signerName"]
    }

    fn subresource(&self, name: &str, namespaced_path: bool) -> Option<Subresource> {
        (name == "approval" && !namespaced_path).then_some(Subresource::Approval)
    }

    fn discovery_subresources(&self) -> Vec<Value> {
        vec![json!({
            "name": "certificatesigningrequests/approval", "singularName": "",
            "namespaced": false, "kind": "CertificateSigningRequest",
            "verbs": ["get", "patch", "update"],
        })]
    }
}

/// The CONDITION column: Denied, Approved or Pending, then `,Failed` and `,Issued`.
fn condition_summary(csr: &Value) -> String {
    let has = |ty: &str| !of_type(csr, ty).is_empty();
    let mut out = if has(DENIED) {
        "Denied".to_owned()
    } else if has(APPROVED) {
        "Approved".to_owned()
    } else {
        "Pending".to_owned()
    };
    if has(FAILED) {
        out.push_str(",Failed");
    }
    if !certificate(csr).is_empty() {
        out.push_str(",Issued");
    }
    out
}

/// Go's `%#v` of a byte slice, as `field.Invalid` shows `spec.request`.
fn go_bytes(bytes: &[u8]) -> String {
    let items: Vec<String> = bytes.iter().map(|b| format!("0x{b:x}")).collect();
    format!("[]byte{{{}}}", items.join(", "))
}

fn validate_request(csr: &Value, errs: &mut Vec<FieldError>) {
    let bytes = admission::request_bytes(csr).unwrap_or_default();
    if let Err(e) = request::parse(&bytes) {
        errs.push(FieldError::invalid_rendered(
            "spec.request",
            &go_bytes(&bytes),
            &e.to_string(),
        ));
    }
}

/// `ValidateSignerName`: `<domain>/<path>`, the domain at least two DNS labels, the path
/// dot-separated DNS labels; and, in v1, not the legacy signer.
fn validate_signer_name(name: &str, errs: &mut Vec<FieldError>) {
    const FIELD: &str = "spec.signerName";
    if name.is_empty() {
        errs.push(FieldError::required(FIELD));
        return;
    }
    let segments: Vec<&str> = name.split('/').collect();
    let [domain, path] = segments[..] else {
        errs.push(FieldError::invalid(
            FIELD,
            name,
            "must be a fully qualified domain and path of the form 'example.com/signer-name'",
        ));
        return;
    };
    if domain.len() > MAX_DOMAIN {
        errs.push(too_long(FIELD, MAX_DOMAIN));
    }
    let labels: Vec<&str> = domain.split('.').collect();
    for label in &labels {
        let problems = dns_label_errors(label);
        if !problems.is_empty() {
            for p in problems {
                errs.push(FieldError::invalid(
                    FIELD,
                    domain,
                    format!("validating label {label:?}: {p}"),
                ));
            }
            break;
        }
    }
    if labels.len() < 2 {
        errs.push(FieldError::invalid(
            FIELD,
            domain,
            "should be a domain with at least two segments separated by dots",
        ));
    }
    for label in path.split('.') {
        let problems = dns_label_errors(label);
        if !problems.is_empty() {
            for p in problems {
                errs.push(FieldError::invalid(
                    FIELD,
                    path,
                    format!("validating label {label:?}: {p}"),
                ));
            }
            break;
        }
    }
    if path.len() > MAX_DOMAIN - 1 {
        errs.push(too_long(FIELD, MAX_DOMAIN - 1));
    }
    if name == signers::LEGACY_UNKNOWN {
        errs.push(FieldError::invalid(
            FIELD,
            name,
            "the legacy signerName is not allowed via this API version",
        ));
    }
}

fn too_long(field: &str, max: usize) -> FieldError {
    FieldError {
        reason: "FieldValueTooLong",
        field: field.into(),
        message: format!("Too long: may not be more than {max} bytes"),
    }
}

fn validate_usages(csr: &Value, errs: &mut Vec<FieldError>) {
    let list = csr
        .pointer("/spec/usages")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    if list.is_empty() {
        errs.push(
            FieldError::required("spec.usages").with_message("usages must be provided"),
        );
    }
    let known = usages::names();
    let mut seen = Vec::new();
    for (i, usage) in list.iter().enumerate() {
        let usage = usage.as_str().unwrap_or_default();
        let field = format!("spec.usages[{i}]");
        if usages::lookup(usage).is_none() {
            errs.push(not_supported(&field, usage, &known));
        }
        if seen.contains(&usage) {
            errs.push(FieldError {
                reason: "FieldValueDuplicate",
                field,
                message: format!("Duplicate value: {usage:?}"),
            });
        }
        seen.push(usage);
    }
}

/// `validateConditions`: a type each; Approved and Denied only `True`, others `True`,
/// `False` or `Unknown`; Approved and Denied exclusive; each type once.
fn validate_conditions(csr: &Value, errs: &mut Vec<FieldError>) {
    let (mut approved, mut denied) = (false, false);
    let mut seen: Vec<&str> = Vec::new();
    for (i, c) in conditions(csr).iter().enumerate() {
        let at = format!("status.conditions[{i}]");
        let ty = condition_type(c);
        if ty.is_empty() {
            errs.push(FieldError::required(format!("{at}.type")));
        }
        let allowed: &[&str] = if ty == APPROVED || ty == DENIED {
            &["True"]
        } else {
            &["False", "True", "Unknown"]
        };
        match c.get("status").and_then(Value::as_str).unwrap_or_default() {
            "" => errs.push(FieldError::required(format!("{at}.status"))),
            s if !allowed.contains(&s) => {
                errs.push(not_supported(format!("{at}.status"), s, allowed))
            }
            _ => {}
        }
        let exclusive = || {
            FieldError::invalid(
                format!("{at}.type"),
                ty,
                "Approved and Denied conditions are mutually exclusive",
            )
        };
        match ty {
            APPROVED => {
                approved = true;
                if denied {
                    errs.push(exclusive());
                }
            }
            DENIED => {
                denied = true;
                if approved {
                    errs.push(exclusive());
                }
            }
            _ => {}
        }
        if seen.contains(&ty) {
            errs.push(FieldError {
                reason: "FieldValueDuplicate",
                field: format!("{at}.type"),
                message: format!("Duplicate value: {ty:?}"),
            });
        }
        seen.push(ty);
    }
}

/// `validateCertificate`: empty, or only `CERTIFICATE` PEM blocks without headers, each a
/// certificate.
fn validate_certificate(b64: &str) -> Result<(), String> {
    use base64::Engine as _;
    if b64.is_empty() {
        return Ok(());
    }
    let pem = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| e.to_string())?;
    let mut blocks = 0;
    for block in x509_parser::pem::Pem::iter_from_buffer(&pem) {
        let Ok(block) = block else {
            break;
        };
        if block.label != "CERTIFICATE" {
            return Err(format!(
                "only CERTIFICATE PEM blocks are allowed, found {:?}",
                block.label
            ));
        }
        x509_parser::parse_x509_certificate(&block.contents)
            .map_err(|e| format!("x509: malformed certificate: {e}"))?;
        blocks += 1;
    }
    if blocks == 0 {
        return Err("must contain at least one CERTIFICATE PEM block".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::apiserver::kinds::testing::{defaulted, validate, validate_update};
    use crate::certificates::request::testing::csr;

    const G: &str = "certificates.k8s.io";

    fn condition(ty: &str, reason: &str, message: &str) -> Value {
        json!({"type": ty, "status": "True", "reason": reason, "message": message})
    }
    const K: &str = "CertificateSigningRequest";

    fn object(request: &str, signer: &str, usages: &[&str]) -> Value {
        use base64::Engine as _;
        json!({"metadata": {"name": "c"}, "spec": {
            "request": base64::engine::general_purpose::STANDARD.encode(request),
            "signerName": signer, "usages": usages}})
    }

    fn causes(o: &Value) -> Vec<(String, String)> {
        validate(G, K, &defaulted(G, K, o.clone()))
            .into_iter()
            .map(|e| (e.field, e.message))
            .collect()
    }

    #[test]
    fn a_good_request_is_valid() {
        let (pem, _) = csr("system:node:n1", &["system:nodes"], &[]);
        let o = object(&pem, signers::KUBE_APISERVER_CLIENT_KUBELET, &["client auth"]);
        assert_eq!(causes(&o), []);
    }

    #[test]
    fn bad_requests_get_kubernetes_causes() {
        let (pem, _) = csr("alice", &[], &[]);
        let got = causes(&object("nope", "", &[]));
        let fields: Vec<&str> = got.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["spec.request", "spec.signerName", "spec.usages"]);
        assert!(got[0].1.ends_with(": PEM block type must be CERTIFICATE REQUEST"), "{}", got[0].1);
        assert!(got[0].1.starts_with("Invalid value: []byte{0x6e, 0x6f"), "{}", got[0].1);
        assert_eq!(got[2].1, "Required value: usages must be provided");

        let got = causes(&object(&pem, "example", &["client auth", "bogus", "client auth"]));
        assert_eq!(
            got,
            [
                (
                    "spec.signerName".to_owned(),
                    r#"Invalid value: "example": must be a fully qualified domain and path of the form 'example.com/signer-name'"#.to_owned()
                ),
                (
                    "spec.usages[1]".to_owned(),
                    format!(r#"Unsupported value: "bogus": supported values: {}"#,
                        usages::names().iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", "))
                ),
                ("spec.usages[2]".to_owned(), r#"Duplicate value: "client auth""#.to_owned()),
            ]
        );
        assert_eq!(
            causes(&object(&pem, "example/x", &["client auth"])),
            [(
                "spec.signerName".to_owned(),
                r#"Invalid value: "example": should be a domain with at least two segments separated by dots"#.to_owned()
            )]
        );
        assert_eq!(
            causes(&object(&pem, "Example.com/x", &["client auth"]))[0].1,
            r#"Invalid value: "Example.com": validating label "Example": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"#
        );
        assert_eq!(
            causes(&object(&pem, signers::LEGACY_UNKNOWN, &["client auth"])),
            [(
                "spec.signerName".to_owned(),
                r#"Invalid value: "kubernetes.io/legacy-unknown": the legacy signerName is not allowed via this API version"#.to_owned()
            )]
        );
        let mut short = object(&pem, "example.com/x", &["client auth"]);
        short["spec"]["expirationSeconds"] = json!(599);
        assert_eq!(
            causes(&short),
            [(
                "spec.expirationSeconds".to_owned(),
                "Invalid value: 599: may not specify a duration less than 600 seconds (10 minutes)".to_owned()
            )]
        );
    }

    #[test]
    fn conditions_are_checked_and_defaulted() {
        let (pem, _) = csr("alice", &[], &[]);
        let mut o = object(&pem, "example.com/x", &["client auth"]);
        o["status"] = json!({"conditions": [
            {"type": "Approved"}, {"type": "Denied", "status": "False"},
            {"type": "Approved"}, {"type": "Custom", "status": "Maybe"}, {"status": "True"}]});
        let o = defaulted(G, K, o);
        assert_eq!(o["status"]["conditions"][0]["status"], "True");
        let got: Vec<(String, String)> = validate(G, K, &o)
            .into_iter()
            .map(|e| (e.field, e.message))
            .collect();
        let pair = |f: &str, m: &str| (f.to_owned(), m.to_owned());
        assert_eq!(
            got,
            [
                pair("status.conditions[1].status", r#"Unsupported value: "False": supported values: "True""#),
                pair("status.conditions[1].type", r#"Invalid value: "Denied": Approved and Denied conditions are mutually exclusive"#),
                pair("status.conditions[2].type", r#"Invalid value: "Approved": Approved and Denied conditions are mutually exclusive"#),
                pair("status.conditions[2].type", r#"Duplicate value: "Approved""#),
                pair("status.conditions[3].status", r#"Unsupported value: "Maybe": supported values: "False", "True", "Unknown""#),
                pair("status.conditions[4].type", "Required value"),
            ]
        );
    }

    #[test]
    fn the_spec_and_decisions_stay() {
        let (pem, _) = csr("alice", &[], &[]);
        let mut old = defaulted(G, K, object(&pem, "example.com/x", &["client auth"]));
        old["status"] = json!({"conditions": [condition("Approved", "A", "m")], "certificate": "Y2VydA=="});
        let mut new = old.clone();
        new["spec"]["usages"] = json!(["client auth", "digital signature"]);
        new["status"]["conditions"] = json!([]);
        new["status"]["certificate"] = json!("b3RoZXI=");
        let got: Vec<String> = validate_update(G, K, &old, &new)
            .into_iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect();
        assert_eq!(
            got,
            [
                "spec: field is immutable",
                r#"status.conditions: Forbidden: updates may not remove a condition of type "Approved""#,
                "status.certificate: Forbidden: updates may not modify existing certificate content",
            ]
        );
    }

    #[test]
    fn status_writes_keep_approval_and_stamp_conditions() {
        let old = json!({"status": {"conditions": [
            {"type": "Approved", "status": "True", "lastTransitionTime": "2020-01-01T00:00:00Z"}]}});
        let mut new = json!({"status": {"conditions": [
            {"type": "Denied", "status": "True"}, {"type": "Failed", "status": "True"}]}});
        keep_conditions(&old, &mut new, APPROVED);
        keep_conditions(&old, &mut new, DENIED);
        let types: Vec<&str> = conditions(&new).iter().map(condition_type).collect();
        assert_eq!(types, ["Failed", "Approved"]);
        stamp_conditions(&old, &mut new);
        assert_eq!(
            new["status"]["conditions"][1]["lastTransitionTime"],
            "2020-01-01T00:00:00Z"
        );
        assert!(new["status"]["conditions"][0]["lastUpdateTime"].is_string());
        assert!(new["status"]["conditions"][0]["lastTransitionTime"].is_string());
    }

    #[test]
    fn the_condition_column_reads_like_kubectls() {
        let with = |conds: Value, cert: &str| json!({"status": {"conditions": conds, "certificate": cert}});
        assert_eq!(condition_summary(&json!({})), "Pending");
        assert_eq!(
            condition_summary(&with(json!([{"type": "Approved"}]), "eA==")),
            "Approved,Issued"
        );
        assert_eq!(
            condition_summary(&with(json!([{"type": "Approved"}, {"type": "Failed"}]), "")),
            "Approved,Failed"
        );
        assert_eq!(condition_summary(&with(json!([{"type": "Denied"}]), "")), "Denied");
    }
}

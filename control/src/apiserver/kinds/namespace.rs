//! core/v1 Namespace: `status.phase` Active on create, deletion marks it Terminating and the
//! namespace controller empties and then removes it; the system namespaces cannot be deleted.

use k8s_openapi::api::core::v1::Namespace as K;
use serde_json::{json, Value};

use super::Strategy;
use crate::apiserver::defaults::{default_field, obj};
use crate::apiserver::error::ApiError;
use crate::apiserver::objects::Subresource;
use crate::apiserver::registry::ResourceDef;
use crate::apiserver::table::{s, Column, AGE, NAME};
use crate::apiserver::validation::NameRule;
use crate::apiserver::ApiState;

/// Namespaces that cannot be deleted.
const PROTECTED_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public"];

/// The served resource.
pub fn resources() -> Vec<ResourceDef> {
    vec![ResourceDef::of::<K>(Namespace).short_names(&["ns"]).with_status()]
}

struct Namespace;

impl Strategy for Namespace {
    fn prepare_for_create(&self, object: &mut Value) {
        object["status"] = json!({"phase": "Active"});
    }

    fn default(&self, object: &mut Value) {
        let map = object.as_object_mut().expect("objects are maps");
        default_field(map, "spec", json!({}));
        if let Some(spec) = obj(object, "spec") {
            default_field(spec, "finalizers", json!(["kubernetes"]));
        }
    }

    fn name_rule(&self) -> NameRule {
        NameRule::DnsLabel
    }

    fn check_delete(&self, name: &str) -> Result<(), ApiError> {
        if PROTECTED_NAMESPACES.contains(&name) {
            return Err(ApiError::Forbidden(format!(
                "namespaces {name:?} is forbidden: this namespace may not be deleted"
            )));
        }
        Ok(())
    }

    fn terminates(&self) -> bool {
        true
    }

    fn terminating(&self, object: &mut Value) {
        object["status"]["phase"] = json!("Terminating");
    }

    fn terminated(&self, state: &ApiState, name: &str) {
        // The receiver lives as long as the server; a closed queue means shutdown.
        let _ = state.namespace_queue.send(name.to_owned());
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            Column::new("Status", "string", |o, _| json!(s(o, "/status/phase"))),
            AGE,
        ]
    }

    fn field_selectors(&self) -> Vec<&str> {
        vec!["status.phase"]
    }

    fn subresource(&self, name: &str, _namespaced_path: bool) -> Option<Subresource> {
        // `finalize` writes the object (its spec.finalizers) like an update.
        (name == "finalize").then_some(Subresource::Main)
    }

    fn verbs(&self) -> &'static [&'static str] {
        &[
            "create", "delete", "get", "list", "patch", "update", "watch",
        ]
    }
}

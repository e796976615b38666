//! ReplicationController controller: the ReplicaSet logic ([`super::replicaset`]) over the
//! older kind, whose selector is a plain label map and whose template may be absent.

use k8s_openapi::api::core::v1::ReplicationController;
use kube::core::Selector;
use serde_json::Value;

use super::replicaset::{self, ReplicaOwner, ReplicaSetError, Spec};
use crate::client::Context;

impl ReplicaOwner for ReplicationController {
    const COMPONENT: &'static str = "replication-controller";
    fn spec_view(&self) -> Result<Spec, ReplicaSetError> {
        let spec = self.spec.clone().unwrap_or_default();
        // An RC without a selector selects its template's labels (the API defaults it so).
        let selector = spec.selector.clone().or_else(|| {
            spec.template
                .as_ref()
                .and_then(|t| t.metadata.as_ref())
                .and_then(|m| m.labels.clone())
        });
        Ok(Spec {
            replicas: spec.replicas.unwrap_or(1),
            selector: selector.map(Selector::from_iter).unwrap_or_default(),
            template: spec.template,
            min_ready_seconds: spec.min_ready_seconds.unwrap_or(0),
        })
    }
    fn status_json(&self) -> Value {
        serde_json::to_value(&self.status).unwrap_or(Value::Null)
    }
}

/// Runs the ReplicationController controller until shutdown.
pub async fn run(ctx: Context) {
    replicaset::run_for::<ReplicationController>(ctx).await;
}

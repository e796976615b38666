//! Deleting a controller's pod the way every workload controller does (Kubernetes'
//! `PodControl.DeletePod`): only the pod it decided on (a uid precondition, so a pod re-created
//! under the same name is left alone), the write remembered in the controller's expectations,
//! and a SuccessfulDelete event on the owner. A pod already gone or changed counts as done: the
//! watch brings the new state and another pass.

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::api::{Api, DeleteParams, Preconditions};
use kube::ResourceExt;

use super::events::{EventType, Recorder};
use super::expectations::Expectations;

/// The controller deleting a pod: where it records the write and the event.
pub struct Deleter<'a> {
    /// The controller's expectations.
    pub expectations: &'a Expectations,
    /// Its key in them (the owner's `namespace/name`).
    pub key: &'a str,
    /// The controller's event recorder.
    pub recorder: &'a Recorder,
    /// The owner the event is about.
    pub owner: &'a ObjectReference,
}

impl Deleter<'_> {
    /// Deletes `pod` and, when it went, records `message` as a SuccessfulDelete event. Errors
    /// other than 404/409 are returned for the caller to report.
    pub async fn delete(
        &self,
        api: &Api<Pod>,
        pod: &Pod,
        message: &str,
    ) -> Result<(), kube::Error> {
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: pod.uid(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(&pod.name_any(), &params).await {
            Ok(result) => {
                let rv = result.left().and_then(|p| p.metadata.resource_version);
                self.expectations.wrote(self.key, rv.as_deref());
                self.recorder
                    .record(self.owner, EventType::Normal, "SuccessfulDelete", message)
                    .await;
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
            Err(e) => Err(e),
        }
    }
}

//! Creating and deleting a controller's pods the way every workload controller does
//! (Kubernetes' `PodControl`): each write remembered in the controller's expectations and told
//! as an event on the owner. Deletes name the pod they decided on (a uid precondition, so a pod
//! re-created under the same name is left alone); a pod already gone or changed counts as done:
//! the watch brings the new state and another pass.

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use kube::ResourceExt;

use crate::client::events::{EventType, Recorder};
use crate::client::expectations::Expectations;

/// The message of an API error as Kubernetes puts it in events (the Status message).
pub fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        other => other.to_string(),
    }
}

/// The controller writing pods: where it records the writes and the events.
pub struct PodControl<'a> {
    /// The controller's expectations.
    pub expectations: &'a Expectations,
    /// Its key in them (the owner's `namespace/name`).
    pub key: &'a str,
    /// The controller's event recorder.
    pub recorder: &'a Recorder,
    /// The owner the events are about.
    pub owner: &'a ObjectReference,
}

impl PodControl<'_> {
    /// Records a pod the controller created: the write, and SuccessfulCreate `message`.
    pub async fn created(&self, pod: &Pod, message: &str) {
        self.expectations
            .wrote(self.key, pod.metadata.resource_version.as_deref());
        self.recorder
            .record(self.owner, EventType::Normal, "SuccessfulCreate", message)
            .await;
    }

    /// Records FailedCreate `message`.
    pub async fn create_failed(&self, message: &str) {
        self.recorder
            .record(self.owner, EventType::Warning, "FailedCreate", message)
            .await;
    }

    /// Creates `pods` in slow-start batches (1, 2, 4, ...), as Kubernetes does, so a template
    /// the API refuses costs one error, not hundreds: "Created pod: NAME" for each, and after a
    /// batch with a failure "Error creating: MESSAGE" and that error.
    pub async fn create_all(&self, api: &Api<Pod>, pods: &[Pod]) -> Result<(), kube::Error> {
        let params = PostParams::default();
        let mut created = 0usize;
        let mut batch = 1usize;
        while created < pods.len() {
            let n = batch.min(pods.len() - created);
            let results = futures::future::join_all(
                pods[created..created + n]
                    .iter()
                    .map(|p| api.create(&params, p)),
            )
            .await;
            let mut failed = None;
            for result in results {
                match result {
                    Ok(p) => {
                        self.created(&p, &format!("Created pod: {}", p.name_any()))
                            .await
                    }
                    Err(e) => failed = Some(e),
                }
            }
            if let Some(e) = failed {
                self.create_failed(&format!("Error creating: {}", api_message(&e)))
                    .await;
                return Err(e);
            }
            created += n;
            batch *= 2;
        }
        Ok(())
    }

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

//! What the controllers of things that expire share (the token cleaner, the CSR cleaner, the
//! bootstrap signer): coming back when an object's time is up, and deleting exactly the
//! object that was judged, not one recreated under its name since.

use std::fmt::Debug;
use std::time::Duration;

use kube::api::{Api, DeleteParams, Preconditions};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;

/// Requeue just after `at` (a second of slack, so the object has expired by then).
pub(crate) fn requeue_at(at: jiff::Timestamp, now: jiff::Timestamp) -> Action {
    let left = at.as_millisecond().saturating_sub(now.as_millisecond());
    Action::requeue(Duration::from_millis(
        u64::try_from(left).unwrap_or(0) + 1000,
    ))
}

/// Deletes `object` if it is still the same one (its uid): `Ok(true)` when deleted,
/// `Ok(false)` when it was gone or replaced meanwhile.
pub(crate) async fn delete_seen<K>(api: &Api<K>, object: &K) -> Result<bool, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: object.uid(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&object.name_any(), &params).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

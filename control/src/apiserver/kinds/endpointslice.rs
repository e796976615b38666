//! discovery.k8s.io/v1 EndpointSlice: a plain object.

use k8s_openapi::api::discovery::v1::EndpointSlice as K;

use super::Plain;
use crate::apiserver::registry::ResourceDef;

/// The served resource.
pub fn resources() -> Vec<ResourceDef> {
    vec![ResourceDef::of::<K>(Plain)]
}

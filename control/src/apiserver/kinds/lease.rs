//! coordination.k8s.io/v1 Lease: a plain object (node heartbeats, leader election).

use k8s_openapi::api::coordination::v1::Lease as K;

use super::Plain;
use crate::apiserver::registry::ResourceDef;

/// The served resource.
pub fn resources() -> Vec<ResourceDef> {
    vec![ResourceDef::of::<K>(Plain)]
}

//! core/v1 Endpoints: kubectl's ENDPOINTS column.

use k8s_openapi::api::core::v1::Endpoints as K;
use serde_json::{json, Value};

use super::Strategy;
use crate::apiserver::registry::ResourceDef;
use crate::apiserver::table::{arr, i, or_none, s, Column, AGE, NAME};

/// The served resource.
pub fn resources() -> Vec<ResourceDef> {
    vec![ResourceDef::of::<K>(Endpoints).short_names(&["ep"])]
}

struct Endpoints;

/// The first three `ip:port` pairs and how many more there are.
fn endpoints_string(ep: &Value) -> String {
    let mut list = Vec::new();
    for subset in arr(ep, "/subsets") {
        for addr in arr(subset, "/addresses") {
            let ports = arr(subset, "/ports");
            if ports.is_empty() {
                list.push(s(addr, "/ip").to_owned());
            }
            for p in ports {
                list.push(format!("{}:{}", s(addr, "/ip"), i(p, "/port")));
            }
        }
    }
    let total = list.len();
    if total > 3 {
        format!("{} + {} more...", list[..3].join(","), total - 3)
    } else {
        or_none(list.join(","))
    }
}

impl Strategy for Endpoints {
    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            Column::new("Endpoints", "string", |o, _| json!(endpoints_string(o))),
            AGE,
        ]
    }
}

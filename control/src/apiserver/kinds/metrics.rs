//! metrics.k8s.io/v1beta1: NodeMetrics and PodMetrics, the resource metrics API `kubectl top`
//! and autoscalers read. Kubernetes serves it from metrics-server behind the aggregation layer;
//! skiff's API server serves it itself from what it scrapes off the kubelets
//! ([`crate::apiserver::resource_metrics`]). Both are read-only (get and list) and never
//! stored: an object exists while its node or pod has a recent usage sample.

use futures::future::BoxFuture;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{Computed, Strategy};
use crate::apiserver::error::ApiError;
use crate::apiserver::objects::ListOptions;
use crate::apiserver::registry::ResourceDef;
use crate::apiserver::resource_metrics;
use crate::apiserver::table::{Column, AGE, NAME};
use crate::apiserver::ApiState;

/// The verbs of a read-only computed kind.
pub const GET_LIST: &[&str] = &["get", "list"];

/// The served resources.
pub fn resources() -> Vec<ResourceDef> {
    vec![
        ResourceDef::of::<NodeMetrics>(Kind(Which::Node)),
        ResourceDef::of::<PodMetrics>(Kind(Which::Pod)),
    ]
}

/// Usage of a resource: `cpu` in cores (a Quantity, `123456789n`), `memory` in bytes (`Ki`).
pub type Usage = std::collections::BTreeMap<String, String>;

/// A node's usage over the last scrape window (metrics-server's `NodeMetrics`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeMetrics {
    /// Always `NodeMetrics` when served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Always `metrics.k8s.io/v1beta1` when served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// The node's name and labels.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// When the window ended (RFC 3339).
    #[serde(default)]
    pub timestamp: String,
    /// The window's length (a Go duration, `15.02s`).
    #[serde(default)]
    pub window: String,
    /// The usage.
    #[serde(default)]
    pub usage: Usage,
}

/// One container's usage in a [`PodMetrics`].
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct ContainerMetrics {
    /// The container's name.
    pub name: String,
    /// The usage.
    #[serde(default)]
    pub usage: Usage,
}

/// A pod's usage over the last scrape window, per container (metrics-server's `PodMetrics`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodMetrics {
    /// Always `PodMetrics` when served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Always `metrics.k8s.io/v1beta1` when served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// The pod's name, namespace and labels.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// When the window ended (RFC 3339).
    #[serde(default)]
    pub timestamp: String,
    /// The window's length (a Go duration, `15.02s`).
    #[serde(default)]
    pub window: String,
    /// The running containers' usage.
    #[serde(default)]
    pub containers: Vec<ContainerMetrics>,
}

impl k8s_openapi::Resource for NodeMetrics {
    const API_VERSION: &'static str = "metrics.k8s.io/v1beta1";
    const GROUP: &'static str = "metrics.k8s.io";
    const KIND: &'static str = "NodeMetrics";
    const VERSION: &'static str = "v1beta1";
    const URL_PATH_SEGMENT: &'static str = "nodes";
    type Scope = k8s_openapi::ClusterResourceScope;
}

impl k8s_openapi::Resource for PodMetrics {
    const API_VERSION: &'static str = "metrics.k8s.io/v1beta1";
    const GROUP: &'static str = "metrics.k8s.io";
    const KIND: &'static str = "PodMetrics";
    const VERSION: &'static str = "v1beta1";
    const URL_PATH_SEGMENT: &'static str = "pods";
    type Scope = k8s_openapi::NamespaceResourceScope;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Node,
    Pod,
}

struct Kind(Which);

impl Strategy for Kind {
    fn verbs(&self) -> &'static [&'static str] {
        GET_LIST
    }

    fn computed(&self) -> Option<&dyn Computed> {
        Some(self)
    }

    fn columns(&self) -> Vec<Column> {
        match self.0 {
            Which::Node => vec![
                NAME,
                Column::new("CPU", "string", |o, _| json!(s(o, "/usage/cpu"))),
                Column::new("Memory", "string", |o, _| json!(s(o, "/usage/memory"))),
                Column::new("Window", "string", |o, _| json!(s(o, "/window"))),
            ],
            Which::Pod => vec![
                NAME,
                Column::new("Window", "string", |o, _| json!(s(o, "/window"))),
                AGE,
            ],
        }
    }
}

/// The string at `pointer`, or "".
fn s<'a>(o: &'a Value, pointer: &str) -> &'a str {
    o.pointer(pointer).and_then(Value::as_str).unwrap_or_default()
}

impl Computed for Kind {
    fn list<'a>(
        &'a self,
        state: &'a ApiState,
        namespace: Option<&'a str>,
        opts: &'a ListOptions,
    ) -> BoxFuture<'a, Result<Vec<Value>, ApiError>> {
        Box::pin(async move {
            let all = match self.0 {
                Which::Node => resource_metrics::node_metrics(state, None).await?,
                Which::Pod => resource_metrics::pod_metrics(state, namespace, None).await?,
            };
            Ok(all
                .into_iter()
                .filter(|o| opts.labels.matches(o) && opts.fields.matches(o))
                .collect())
        })
    }

    fn get<'a>(
        &'a self,
        state: &'a ApiState,
        namespace: Option<&'a str>,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Value, ApiError>> {
        Box::pin(async move {
            let found = match self.0 {
                Which::Node => resource_metrics::node_metrics(state, Some(name)).await?,
                Which::Pod => resource_metrics::pod_metrics(state, namespace, Some(name)).await?,
            };
            found.into_iter().next().ok_or_else(|| ApiError::NotFound {
                kind: match self.0 {
                    Which::Node => "nodes.metrics.k8s.io",
                    Which::Pod => "pods.metrics.k8s.io",
                }
                .into(),
                name: name.into(),
            })
        })
    }
}

//! Cluster DNS endpoints. The API server creates the `kube-dns` Service in `kube-system` (when
//! cluster DNS is on) without a selector: its server is not a pod but skiff-agent itself, which
//! answers on port 53 of the first address of its node's podCIDR (the pod bridge's gateway).
//! This controller keeps the Service's EndpointSlice, `kube-dns`, listing every Node that has
//! a podCIDR: ready while the Node is Ready, tied to it by `nodeName` and a `forNodes` hint.
//! The Service asks for `trafficDistribution: PreferSameNode`, so each node's datapath sends
//! the DNS address to its own responder, and to the others' when its own is not ready.
//!
//! Nothing is written while the Service does not exist (cluster DNS off, or not yet created).

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, PostParams};
use serde_json::json;
use skiff_k8s::cidr::Ipv4Cidr;

use crate::client::Context;

/// The Service and its slice.
pub const NAME: &str = "kube-dns";
/// Their namespace.
pub const NAMESPACE: &str = "kube-system";
/// The slice's `endpointslice.kubernetes.io/managed-by`.
pub const MANAGED_BY: &str = "cluster-dns.skiff.io";
/// The responders' port.
pub const PORT: i32 = 53;

/// The slice for `nodes`, in name order.
pub fn desired<'a>(nodes: impl IntoIterator<Item = &'a Node>) -> EndpointSlice {
    let mut endpoints = BTreeMap::new();
    for node in nodes {
        let Some(name) = node.metadata.name.as_deref() else {
            continue;
        };
        let cidr = node.spec.as_ref().and_then(|s| s.pod_cidr.as_deref());
        let Some(cidr) = cidr.and_then(|c| c.parse::<Ipv4Cidr>().ok()) else {
            continue;
        };
        let ready = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .is_some_and(|c| c.status == "True");
        endpoints.insert(
            name.to_owned(),
            json!({"addresses": [cidr.nth(1).to_string()], "nodeName": name,
                "conditions": {"ready": ready, "serving": ready, "terminating": false},
                "hints": {"forNodes": [{"name": name}]}}),
        );
    }
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": NAME, "namespace": NAMESPACE, "labels": {
            "kubernetes.io/service-name": NAME,
            "endpointslice.kubernetes.io/managed-by": MANAGED_BY}},
        "addressType": "IPv4",
        "endpoints": endpoints.into_values().collect::<Vec<_>>(),
        "ports": [{"name": "dns", "port": PORT, "protocol": "UDP"},
                  {"name": "dns-tcp", "port": PORT, "protocol": "TCP"}],
    }))
    .expect("a valid EndpointSlice")
}

/// Whether `current` already says what `want` does.
fn same(current: &EndpointSlice, want: &EndpointSlice) -> bool {
    current.endpoints == want.endpoints
        && current.ports == want.ports
        && current.address_type == want.address_type
        && want
            .metadata
            .labels
            .iter()
            .flatten()
            .all(|(k, v)| current.metadata.labels.as_ref().and_then(|l| l.get(k)) == Some(v))
}

/// Writes `want` unless the slice already says it; nothing while the Service is missing.
/// Returns whether the slice now says `want` (false: no Service, nothing written).
async fn reconcile(client: &kube::Client, want: EndpointSlice) -> Result<bool, kube::Error> {
    let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    if services.get_opt(NAME).await?.is_none() {
        return Ok(false);
    }
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NAMESPACE);
    match slices.get_opt(NAME).await? {
        Some(current) if same(&current, &want) => Ok(true),
        Some(current) => {
            let mut fixed = want;
            fixed.metadata.resource_version = current.metadata.resource_version.clone();
            // Keep what others added to the labels and annotations.
            let mut labels = current.metadata.labels.clone().unwrap_or_default();
            labels.extend(fixed.metadata.labels.take().unwrap_or_default());
            fixed.metadata.labels = Some(labels);
            fixed.metadata.annotations = current.metadata.annotations.clone();
            slices
                .replace(NAME, &PostParams::default(), &fixed)
                .await
                .map(|_| true)
        }
        None => slices
            .create(&PostParams::default(), &want)
            .await
            .map(|_| true),
    }
}

/// Runs until `ctx.shutdown`: on every Node change, and every 30 s to repair edits by hand.
/// A Node change that leaves the slice as last written (most are heartbeats) asks the API
/// nothing; the 30 s pass always reads the slice.
pub async fn run(ctx: Context) {
    let informer = ctx.informers.get::<Node>();
    let mut changes = informer.changes().boxed();
    informer.listed().await;
    let mut resync = tokio::time::interval(Duration::from_secs(30));
    let mut written: Option<EndpointSlice> = None;
    loop {
        let resyncing = tokio::select! {
            () = ctx.shutdown.cancelled() => return,
            _ = resync.tick() => true,
            change = changes.next() => if change.is_none() { return } else { false },
        };
        let nodes = informer.store().state();
        let want = desired(nodes.iter().map(AsRef::as_ref));
        if !resyncing && written.as_ref().is_some_and(|w| same(w, &want)) {
            continue;
        }
        match reconcile(&ctx.client, want.clone()).await {
            Ok(true) => written = Some(want),
            Ok(false) => written = None,
            // 409: written meanwhile; the next change or tick writes again.
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => tracing::warn!(error = %e, "writing the kube-dns EndpointSlice failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, cidr: Option<&str>, ready: &str) -> Node {
        serde_json::from_value(json!({"metadata": {"name": name},
            "spec": {"podCIDR": cidr},
            "status": {"conditions": [{"type": "Ready", "status": ready}]}}))
        .unwrap()
    }

    #[test]
    fn every_node_with_a_pod_range_has_its_responder_listed() {
        let nodes = [
            node("node-2", Some("10.244.2.0/24"), "False"),
            node("node-1", Some("10.244.1.0/24"), "True"),
            node("waiting", None, "True"),
        ];
        let slice = desired(&nodes);
        let eps = serde_json::to_value(&slice.endpoints).unwrap();
        assert_eq!(
            eps,
            json!([
                {"addresses": ["10.244.1.1"], "nodeName": "node-1",
                 "conditions": {"ready": true, "serving": true, "terminating": false},
                 "hints": {"forNodes": [{"name": "node-1"}]}},
                {"addresses": ["10.244.2.1"], "nodeName": "node-2",
                 "conditions": {"ready": false, "serving": false, "terminating": false},
                 "hints": {"forNodes": [{"name": "node-2"}]}},
            ])
        );
        let labels = slice.metadata.labels.as_ref().unwrap();
        assert_eq!(labels["kubernetes.io/service-name"], "kube-dns");
        assert_eq!(slice.ports.as_ref().unwrap().len(), 2);
        assert!(same(&slice, &desired(&nodes)));
        assert!(!same(&slice, &desired(&nodes[..1])));
    }
}

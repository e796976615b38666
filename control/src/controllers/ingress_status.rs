//! The Ingress status writer: every Ingress that skiff's proxy serves gets
//! `status.loadBalancer.ingress` = the InternalIPs of the Ready Nodes whose agent runs the
//! Ingress proxy (the agent says so with `skiff_k8s::ingress::LISTENING_ANNOTATION` on its
//! Node); which Ingresses are skiff's is `skiff_k8s::ingress::is_skiffs`. The
//! Ingresses of other classes are left to their controllers.
//!
//! One writer for all Ingresses: this controller runs under the controller manager's leader
//! election, where every agent writing the status of every Ingress would race (ingress-nginx
//! elects a leader among its pods for the same reason).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::client::Context;
use skiff_k8s::ingress::{is_skiffs, LISTENING_ANNOTATION};

/// The InternalIPs of the Ready Nodes whose agent runs the Ingress proxy, in order.
pub fn proxy_addresses(nodes: &[Arc<Node>]) -> Vec<String> {
    let mut out = BTreeSet::new();
    for node in nodes {
        let listening = node
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(LISTENING_ANNOTATION));
        let status = node.status.as_ref();
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .is_some_and(|c| c.status == "True");
        if !listening || !ready {
            continue;
        }
        out.extend(
            status
                .and_then(|s| s.addresses.as_ref())
                .into_iter()
                .flatten()
                .filter(|a| a.type_ == "InternalIP" && a.address.parse::<Ipv4Addr>().is_ok())
                .map(|a| a.address.clone()),
        );
    }
    out.into_iter().collect()
}

fn status_ips(ingress: &Ingress) -> Vec<String> {
    ingress
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|i| i.iter().filter_map(|i| i.ip.clone()).collect())
        .unwrap_or_default()
}

/// Runs until `ctx.shutdown`: on every Ingress, IngressClass or Node change, and every 30 s.
pub async fn run(ctx: Context) {
    let ingresses = ctx.informers.get::<Ingress>();
    let classes = ctx.informers.get::<IngressClass>();
    let nodes = ctx.informers.get::<Node>();
    let mut changes = futures::stream::select_all([
        ingresses.changes().map(|_| ()).boxed(),
        classes.changes().map(|_| ()).boxed(),
        nodes.changes().map(|_| ()).boxed(),
    ]);
    ingresses.listed().await;
    classes.listed().await;
    nodes.listed().await;
    let mut resync = tokio::time::interval(Duration::from_secs(30));
    loop {
        tokio::select! {
            () = ctx.shutdown.cancelled() => return,
            _ = resync.tick() => {}
            c = changes.next() => if c.is_none() { return },
        }
        let addresses = proxy_addresses(&nodes.store().state());
        let classes = classes.store().state();
        for ingress in ingresses.store().state() {
            if !is_skiffs(&ingress, &classes) {
                continue;
            }
            let want = addresses.clone();
            if status_ips(&ingress) == want {
                continue;
            }
            let ns = ingress.metadata.namespace.as_deref().unwrap_or_default();
            let name = ingress.metadata.name.as_deref().unwrap_or_default();
            let list: Vec<_> = want.iter().map(|ip| json!({"ip": ip})).collect();
            let value = if list.is_empty() {
                serde_json::Value::Null
            } else {
                json!(list)
            };
            let patch = json!({"status": {"loadBalancer": {"ingress": value}}});
            let api: Api<Ingress> = Api::namespaced(ctx.client.clone(), ns);
            match api
                .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(e) => tracing::warn!(ingress = %format!("{ns}/{name}"), error = %e,
                    "setting the Ingress status failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_the_ready_listening_nodes() {
        let node = |name: &str, ip: &str, ready: &str, listening: bool| {
            let ann = if listening {
                json!({LISTENING_ANNOTATION: "http=80"})
            } else {
                json!({})
            };
            Arc::new(
                serde_json::from_value::<Node>(
                    json!({"metadata": {"name": name, "annotations": ann},
                    "status": {"conditions": [{"type": "Ready", "status": ready}],
                        "addresses": [{"type": "InternalIP", "address": ip},
                            {"type": "Hostname", "address": name}]}}),
                )
                .unwrap(),
            )
        };
        let nodes = [
            node("b", "10.0.0.2", "True", true),
            node("a", "10.0.0.1", "True", true),
            node("c", "10.0.0.3", "False", true),
            node("d", "10.0.0.4", "True", false),
        ];
        assert_eq!(proxy_addresses(&nodes), ["10.0.0.1", "10.0.0.2"]);
    }
}

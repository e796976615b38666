//! LoadBalancer addresses (the part of Kubernetes' service controller a bare-metal cluster
//! needs): every Service of type LoadBalancer without a `loadBalancerClass` gets
//! `status.loadBalancer.ingress`, and loses it when it stops being one.
//!
//! - With address pools (`--loadbalancer-ip-pool`), one address of them: the one it already
//!   has, else `spec.loadBalancerIP` when that is in a pool and free, else the first free one.
//!   A Service whose asked-for address is taken, or that finds every address taken, gets a
//!   `SyncLoadBalancerFailed` warning Event and no address until one frees.
//! - Without pools, the InternalIPs of the Ready Nodes, as k3s's ServiceLB does: every node's
//!   datapath (the tc programs, as for NodePorts) answers the Service's port on its own address.
//!
//! The agents' service proxy turns ingress addresses into frontends (`proxy/api.rs`); making a
//! pool address reachable on the node network (ARP announcements) is not done here.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::client::events::{reference, EventType};
use crate::client::Context;

/// Addresses to hand out (`--loadbalancer-ip-pool`, repeatable); none: the Nodes' addresses.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Inclusive address ranges.
    pub pools: Vec<RangeInclusive<Ipv4Addr>>,
}

/// Parses `A-B` or a CIDR (`192.0.2.0/28`: all its addresses) into a range.
pub fn parse_pool(s: &str) -> Result<RangeInclusive<Ipv4Addr>, String> {
    let bad = || format!("{s:?} is not an address range (A-B) or a CIDR of IPv4 addresses");
    let range = match s.split_once('-') {
        Some((a, b)) => {
            let (a, b): (Ipv4Addr, Ipv4Addr) = (
                a.trim().parse().map_err(|_| bad())?,
                b.trim().parse().map_err(|_| bad())?,
            );
            a..=b
        }
        None => {
            let cidr: skiff_k8s::cidr::Ipv4Cidr = s.parse().map_err(|_| bad())?;
            cidr.nth(0)..=cidr.nth(cidr.size() - 1)
        }
    };
    if range.start() > range.end() {
        return Err(format!("{s:?}: the range ends before it starts"));
    }
    if u32::from(*range.end()) - u32::from(*range.start()) >= 1 << 16 {
        return Err(format!("{s:?}: at most 65536 addresses per pool"));
    }
    Ok(range)
}

/// Whether the controller manages `svc`'s addresses.
fn managed(svc: &Service) -> bool {
    svc.spec.as_ref().is_some_and(|s| {
        s.type_.as_deref() == Some("LoadBalancer") && s.load_balancer_class.is_none()
    })
}

fn key(svc: &Service) -> String {
    format!(
        "{}/{}",
        svc.metadata.namespace.as_deref().unwrap_or_default(),
        svc.metadata.name.as_deref().unwrap_or_default()
    )
}

fn ingress_ips(svc: &Service) -> Vec<String> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|i| i.iter().filter_map(|i| i.ip.clone()).collect())
        .unwrap_or_default()
}

/// The InternalIPs of the Ready Nodes, in order.
fn node_addresses(nodes: &[Arc<Node>]) -> Vec<String> {
    let mut out = BTreeSet::new();
    for node in nodes {
        let status = node.status.as_ref();
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .is_some_and(|c| c.status == "True");
        if !ready {
            continue;
        }
        let addresses = status
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten();
        out.extend(
            addresses
                .filter(|a| a.type_ == "InternalIP")
                .filter(|a| a.address.parse::<Ipv4Addr>().is_ok())
                .map(|a| a.address.clone()),
        );
    }
    out.into_iter().collect()
}

/// Each Service's ingress addresses by `namespace/name`, and (Service, message) warnings.
pub type Assignment = (BTreeMap<String, Vec<String>>, Vec<(String, String)>);

/// What each Service's ingress should be (by `namespace/name`), and the warnings of those
/// that cannot get one. Services that are not (or no longer) managed map to no address.
pub fn assign(config: &Config, services: &[Arc<Service>], nodes: &[Arc<Node>]) -> Assignment {
    let mut want = BTreeMap::new();
    let mut warnings = Vec::new();
    if config.pools.is_empty() {
        let addresses = node_addresses(nodes);
        for svc in services {
            let ips = if managed(svc) {
                addresses.clone()
            } else {
                vec![]
            };
            want.insert(key(svc), ips);
        }
        return (want, warnings);
    }
    let in_pool = |ip: Ipv4Addr| config.pools.iter().any(|p| p.contains(&ip));
    // Keep what managed Services already hold (first come, in name order, on a conflict).
    let mut taken = BTreeSet::new();
    let mut waiting = Vec::new();
    let mut sorted: Vec<&Arc<Service>> = services.iter().collect();
    sorted.sort_by_key(|s| (s.metadata.creation_timestamp.as_ref().map(|t| t.0), key(s)));
    for svc in &sorted {
        if !managed(svc) {
            want.insert(key(svc), vec![]);
            continue;
        }
        let held = ingress_ips(svc)
            .into_iter()
            .filter_map(|ip| ip.parse::<Ipv4Addr>().ok())
            .find(|&ip| in_pool(ip) && !taken.contains(&ip));
        match held {
            Some(ip) => {
                taken.insert(ip);
                want.insert(key(svc), vec![ip.to_string()]);
            }
            None => waiting.push(svc),
        }
    }
    // Those asking for an address choose before those taking any.
    waiting.sort_by_key(|s| {
        s.spec
            .as_ref()
            .and_then(|s| s.load_balancer_ip.as_deref())
            .is_none_or(str::is_empty)
    });
    for svc in waiting {
        let asked = svc
            .spec
            .as_ref()
            .and_then(|s| s.load_balancer_ip.as_deref())
            .filter(|ip| !ip.is_empty());
        let pick = match asked {
            Some(asked) => match asked.parse::<Ipv4Addr>() {
                Ok(ip) if in_pool(ip) && !taken.contains(&ip) => Some(ip),
                Ok(ip) if in_pool(ip) => {
                    warnings.push((key(svc), format!("requested IP {ip} is already in use")));
                    None
                }
                _ => {
                    warnings.push((
                        key(svc),
                        format!("requested IP {asked} is not in any --loadbalancer-ip-pool"),
                    ));
                    None
                }
            },
            None => {
                let free = config
                    .pools
                    .iter()
                    .flat_map(|p| (u32::from(*p.start())..=u32::from(*p.end())).map(Ipv4Addr::from))
                    .find(|ip| !taken.contains(ip));
                if free.is_none() {
                    warnings.push((key(svc), "no free address left in the pools".to_owned()));
                }
                free
            }
        };
        if let Some(ip) = pick {
            taken.insert(ip);
        }
        want.insert(key(svc), pick.iter().map(ToString::to_string).collect());
    }
    (want, warnings)
}

/// Runs until `ctx.shutdown`: on every Service or Node change, and every 30 s.
pub async fn run(ctx: Context, config: Config) {
    let services = ctx.informers.get::<Service>();
    let nodes = ctx.informers.get::<Node>();
    let mut service_changes = services.changes().boxed();
    let mut node_changes = nodes.changes().boxed();
    services.listed().await;
    nodes.listed().await;
    let recorder = ctx.recorder("service-controller");
    let mut resync = tokio::time::interval(Duration::from_secs(30));
    // Warnings already recorded, so a Service waiting for an address is told once per reason.
    let mut told: BTreeMap<String, String> = BTreeMap::new();
    loop {
        tokio::select! {
            () = ctx.shutdown.cancelled() => return,
            _ = resync.tick() => {}
            c = service_changes.next() => if c.is_none() { return },
            c = node_changes.next() => if c.is_none() { return },
        }
        let all = services.store().state();
        let (want, warnings) = assign(&config, &all, &nodes.store().state());
        for svc in &all {
            let k = key(svc);
            let ips = want.get(&k).cloned().unwrap_or_default();
            if ingress_ips(svc) == ips {
                continue;
            }
            let ingress: Vec<_> = ips
                .iter()
                .map(|ip| json!({"ip": ip, "ipMode": "VIP"}))
                .collect();
            let api: Api<Service> = Api::namespaced(
                ctx.client.clone(),
                svc.metadata.namespace.as_deref().unwrap_or_default(),
            );
            // None left: `loadBalancer: {}`, as Kubernetes leaves a Service that is no longer
            // one (a merge patch's null removes the field).
            let ingress = if ingress.is_empty() {
                serde_json::Value::Null
            } else {
                json!(ingress)
            };
            let patch = json!({"status": {"loadBalancer": {"ingress": ingress}}});
            let name = svc.metadata.name.as_deref().unwrap_or_default();
            match api
                .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) if !ips.is_empty() => {
                    told.remove(&k);
                    recorder
                        .record(
                            &reference(svc.as_ref()),
                            EventType::Normal,
                            "EnsuredLoadBalancer",
                            &format!("Ensured load balancer: {}", ips.join(", ")),
                        )
                        .await;
                }
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(e) => {
                    tracing::warn!(service = %k, error = %e, "setting the load balancer status failed")
                }
            }
        }
        for (k, message) in warnings {
            if told.get(&k) == Some(&message) {
                continue;
            }
            if let Some(svc) = all.iter().find(|s| key(s) == k) {
                recorder
                    .record(
                        &reference(svc.as_ref()),
                        EventType::Warning,
                        "SyncLoadBalancerFailed",
                        &format!("Error syncing load balancer: {message}"),
                    )
                    .await;
            }
            told.insert(k, message);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, ty: &str, extra: serde_json::Value, ingress: &[&str]) -> Arc<Service> {
        let mut spec = json!({"type": ty, "ports": [{"port": 80}]});
        spec.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let ingress: Vec<_> = ingress.iter().map(|ip| json!({"ip": ip})).collect();
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default"},
                "spec": spec, "status": {"loadBalancer": {"ingress": ingress}}}))
            .unwrap(),
        )
    }

    fn node(name: &str, ip: &str, ready: &str) -> Arc<Node> {
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name}, "status": {
                "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
                "conditions": [{"type": "Ready", "status": ready}]}}))
            .unwrap(),
        )
    }

    #[test]
    fn pools_parse_as_ranges_or_cidrs_and_bad_ones_are_refused() {
        assert_eq!(
            parse_pool("192.0.2.100-192.0.2.150").unwrap(),
            Ipv4Addr::new(192, 0, 2, 100)..=Ipv4Addr::new(192, 0, 2, 150)
        );
        assert_eq!(
            parse_pool("192.0.2.0/30").unwrap(),
            Ipv4Addr::new(192, 0, 2, 0)..=Ipv4Addr::new(192, 0, 2, 3)
        );
        for bad in ["192.0.2.9-192.0.2.1", "nope", "10.0.0.0/8", "1.2.3.4-"] {
            assert!(parse_pool(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn without_pools_load_balancers_get_the_ready_nodes_addresses() {
        let services = [
            svc("web", "LoadBalancer", json!({}), &[]),
            svc(
                "other-class",
                "LoadBalancer",
                json!({"loadBalancerClass": "example.com/lb"}),
                &[],
            ),
            svc("was-lb", "ClusterIP", json!({}), &["172.31.1.2"]),
        ];
        let nodes = [
            node("b", "172.31.1.3", "True"),
            node("a", "172.31.1.2", "True"),
            node("c", "172.31.1.4", "False"),
        ];
        let (want, warnings) = assign(&Config::default(), &services, &nodes);
        assert_eq!(want["default/web"], ["172.31.1.2", "172.31.1.3"]);
        assert!(
            want["default/other-class"].is_empty(),
            "another class is left alone"
        );
        assert!(
            want["default/was-lb"].is_empty(),
            "no longer a LoadBalancer: released"
        );
        assert!(warnings.is_empty());
    }

    #[test]
    fn pools_keep_held_addresses_honour_requests_and_run_out_with_a_warning() {
        let config = Config {
            pools: vec![parse_pool("192.0.2.10-192.0.2.12").unwrap()],
        };
        let services = [
            svc("holder", "LoadBalancer", json!({}), &["192.0.2.11"]),
            svc(
                "asks",
                "LoadBalancer",
                json!({"loadBalancerIP": "192.0.2.12"}),
                &[],
            ),
            svc(
                "asks-taken",
                "LoadBalancer",
                json!({"loadBalancerIP": "192.0.2.11"}),
                &[],
            ),
            svc(
                "asks-outside",
                "LoadBalancer",
                json!({"loadBalancerIP": "198.51.100.1"}),
                &[],
            ),
            svc("any", "LoadBalancer", json!({}), &[]),
            svc("late", "LoadBalancer", json!({}), &[]),
        ];
        let (want, warnings) = assign(&config, &services, &[]);
        assert_eq!(want["default/holder"], ["192.0.2.11"]);
        assert_eq!(want["default/asks"], ["192.0.2.12"]);
        assert_eq!(want["default/any"], ["192.0.2.10"]);
        for waiting in ["asks-taken", "asks-outside", "late"] {
            assert!(want[&format!("default/{waiting}")].is_empty(), "{waiting}");
        }
        let reasons: BTreeMap<_, _> = warnings.into_iter().collect();
        assert!(reasons["default/asks-taken"].contains("already in use"));
        assert!(reasons["default/asks-outside"].contains("not in any"));
        assert!(reasons["default/late"].contains("no free address"));
    }
}

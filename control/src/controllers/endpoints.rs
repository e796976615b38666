//! Endpoints controller: the core/v1 `Endpoints` object of every Service with a selector, as
//! Kubernetes' endpoints controller writes it: named after the Service, ready pods under
//! `addresses`, not-ready ones under `notReadyAddresses`, terminating pods left out (unless the
//! Service publishes not-ready addresses), one subset per distinct resolved port set.
//!
//! Unlike Kubernetes the object carries an ownerReference to its Service, so the garbage
//! collector removes it with the Service. Selector-less Services' Endpoints are left alone.

use crate::client::guard::guard;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::core::SelectorExt;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::ResourceExt;

use super::endpointslice::{pod_endpoints, service_selector, PodEndpoint};
use super::machinery::ownership;
use crate::client::Context;

const RESYNC: Duration = Duration::from_secs(30);

/// Errors of a reconcile pass.
#[derive(Debug, thiserror::Error)]
pub enum EndpointsError {
    /// The API server refused or failed a request.
    #[error("API request failed: {0}")]
    Kube(#[from] kube::Error),
}

/// The subsets for a Service's endpoints.
pub fn subsets(endpoints: &[PodEndpoint], publish_not_ready: bool) -> Vec<EndpointSubset> {
    let mut groups: BTreeMap<String, EndpointSubset> = BTreeMap::new();
    for ep in endpoints {
        if ep.terminating && !publish_not_ready {
            continue;
        }
        let ports: Vec<EndpointPort> = ep
            .ports
            .iter()
            .map(|p| EndpointPort {
                name: p.name.clone().filter(|n| !n.is_empty()),
                port: p.port.unwrap_or_default(),
                protocol: p.protocol.clone(),
                app_protocol: p.app_protocol.clone(),
            })
            .collect();
        let key = serde_json::to_string(&ports).unwrap_or_default();
        let subset = groups.entry(key).or_insert_with(|| EndpointSubset {
            ports: (!ports.is_empty()).then_some(ports),
            ..EndpointSubset::default()
        });
        let address = EndpointAddress {
            ip: ep.ip.clone(),
            hostname: ep.hostname.clone(),
            node_name: ep
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .filter(|n| !n.is_empty()),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                namespace: ep.pod.namespace(),
                name: Some(ep.pod.name_any()),
                uid: ep.pod.uid(),
                ..ObjectReference::default()
            }),
        };
        let list = if ep.ready {
            subset.addresses.get_or_insert_with(Vec::new)
        } else {
            subset.not_ready_addresses.get_or_insert_with(Vec::new)
        };
        list.push(address);
    }
    groups
        .into_values()
        .map(|mut s| {
            // Kubernetes sorts addresses by IP within a subset.
            for list in [&mut s.addresses, &mut s.not_ready_addresses]
                .into_iter()
                .flatten()
            {
                list.sort_by(|a, b| a.ip.cmp(&b.ip));
            }
            s
        })
        .collect()
}

struct State {
    client: kube::Client,
    pods: Store<Pod>,
}

/// Runs the Endpoints controller until shutdown.
pub async fn run(ctx: Context) {
    let pods = ctx.informers.get::<Pod>();
    let endpoints = ctx.informers.get::<Endpoints>();
    let Some(services) = ctx.informers.listed::<Service>().await else {
        return;
    };
    let state = Arc::new(State {
        client: ctx.client.clone(),
        pods: pods.store(),
    });
    let ep_events = endpoints.objects();
    let (endpoints, selecting) = (endpoints.store(), services.store());
    Controller::for_shared_stream(services.objects(), services.store())
        .watches_shared_stream(pods.objects(), move |pod| {
            let ns = pod.namespace().unwrap_or_default();
            let uid = pod.uid();
            let mut out: Vec<ObjectRef<Service>> = selecting
                .state()
                .iter()
                .filter(|s| s.namespace().as_deref() == Some(ns.as_str()))
                .filter(|s| service_selector(s).is_some_and(|sel| sel.matches(pod.labels())))
                .map(|s| ObjectRef::from_obj(s.as_ref()))
                .collect();
            // A pod that stopped matching is still listed by the Endpoints it was in.
            for ep in endpoints.state() {
                if ep.namespace().as_deref() != Some(ns.as_str()) {
                    continue;
                }
                let listed = ep.subsets.iter().flatten().any(|s| {
                    s.addresses
                        .iter()
                        .chain(s.not_ready_addresses.iter())
                        .flatten()
                        .any(|a| a.target_ref.as_ref().is_some_and(|r| r.uid == uid))
                });
                if listed {
                    out.push(ObjectRef::new(&ep.name_any()).within(&ns));
                }
            }
            out
        })
        .watches_shared_stream(ep_events, |ep| {
            Some(ObjectRef::new(&ep.name_any()).within(&ep.namespace().unwrap_or_default()))
        })
        .graceful_shutdown_on(ctx.shutdown.clone().cancelled_owned())
        .run(guard("endpoints", reconcile), error_policy, state)
        .for_each(|_| async {})
        .await;
}

fn error_policy(svc: Arc<Service>, err: &EndpointsError, _: Arc<State>) -> Action {
    tracing::warn!(service = %svc.name_any(), error = %err, "endpoints reconcile failed");
    Action::requeue(Duration::from_secs(2))
}

async fn reconcile(svc: Arc<Service>, state: Arc<State>) -> Result<Action, EndpointsError> {
    if service_selector(&svc).is_none() || svc.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    let api: Api<Endpoints> = Api::namespaced(state.client.clone(), &ns);
    let publish = svc
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false);
    let subsets = subsets(&pod_endpoints(&svc, &state.pods.state()), publish);
    let mut labels = svc.labels().clone();
    // Kubernetes marks headless Services' Endpoints so.
    if svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None") {
        labels.insert("service.kubernetes.io/headless".into(), String::new());
    }
    let mut wanted = Endpoints {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.clone()),
            labels: Some(labels),
            owner_references: Some(vec![ownership::controller_ref(svc.as_ref())]),
            ..ObjectMeta::default()
        },
        subsets: (!subsets.is_empty()).then_some(subsets),
    };
    // Read fresh: the reflector may lag, and the write below is pinned to what was read.
    match api.get_opt(&name).await? {
        None => match api.create(&PostParams::default(), &wanted).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {
                return Ok(Action::requeue(Duration::from_millis(200)))
            }
            Err(e) => return Err(e.into()),
        },
        Some(current) => {
            let same = current.subsets.clone().unwrap_or_default()
                == wanted.subsets.clone().unwrap_or_default()
                && current.metadata.labels == wanted.metadata.labels
                && current.metadata.owner_references == wanted.metadata.owner_references;
            if !same {
                wanted.metadata.resource_version = current.metadata.resource_version.clone();
                match api.replace(&name, &PostParams::default(), &wanted).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {
                        return Ok(Action::requeue(Duration::from_millis(200)))
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Ok(Action::requeue(RESYNC))
}

//! EndpointSlice controller: for every Service with a selector, the ready, not-ready and
//! terminating pods it selects as `discovery.k8s.io/v1` EndpointSlices, as Kubernetes'
//! endpointslice controller writes them: named `<service>-<random>`, labelled
//! `kubernetes.io/service-name` and `endpointslice.kubernetes.io/managed-by`, owned by the
//! Service, at most 100 endpoints each, one group of slices per distinct resolved port set.
//!
//! Services without a selector are left alone, as are slices another manager wrote, so
//! hand-written EndpointSlices keep working.

use crate::client::guard::guard;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ObjectReference, Pod, Service};
use k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointHints, EndpointPort, EndpointSlice, ForNode,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, PostParams};
use kube::core::{Selector, SelectorExt};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::ResourceExt;
use skiff_k8s::pod as pod_state;

use super::machinery::ownership;
use crate::client::expectations::{Expectations, Observed};
use crate::client::Context;

/// The label naming a slice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The label naming who manages a slice.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// This controller's value of [`MANAGED_BY_LABEL`] (Kubernetes' own, so tools recognise it).
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
/// Most endpoints in one slice (Kubernetes' default `--max-endpoints-per-slice`).
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;
const RESYNC: Duration = Duration::from_secs(30);

/// Errors of a reconcile pass.
#[derive(Debug, thiserror::Error)]
pub enum EndpointSliceError {
    /// The API server refused or failed a request.
    #[error("API request failed: {0}")]
    Kube(#[from] kube::Error),
}

/// A pod as an endpoint of a Service: its address, state and resolved ports.
#[derive(Debug, Clone)]
pub struct PodEndpoint {
    /// The pod.
    pub pod: Arc<Pod>,
    /// Its IP.
    pub ip: String,
    /// Ready and not terminating (or the Service publishes not-ready addresses).
    pub ready: bool,
    /// Ready, terminating or not.
    pub serving: bool,
    /// Has a deletionTimestamp.
    pub terminating: bool,
    /// The Service's ports resolved against the pod's container ports.
    pub ports: Vec<EndpointPort>,
    /// The pod's `hostname` when its `subdomain` is this Service (a StatefulSet's pods under
    /// their governing Service): cluster DNS names the endpoint `<hostname>.<svc>.<ns>.svc`.
    pub hostname: Option<String>,
    /// The Service asks for `trafficDistribution: PreferSameNode`: the endpoint's hint names
    /// its node (`hints.forNodes`), as Kubernetes' controller writes it for proxies that read
    /// hints (skiff's reads `nodeName`).
    pub hint_node: bool,
}

/// The Service's selector, if it selects pods at all (absent or empty: it does not).
pub fn service_selector(svc: &Service) -> Option<Selector> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    let sel = spec.selector.as_ref().filter(|s| !s.is_empty())?;
    Some(Selector::from_iter(sel.clone()))
}

/// The pods of `pods` that are endpoints of `svc` (same namespace, selected, not finished,
/// with an IP), terminating ones included.
pub fn pod_endpoints(svc: &Service, pods: &[Arc<Pod>]) -> Vec<PodEndpoint> {
    let Some(selector) = service_selector(svc) else {
        return vec![];
    };
    let ns = svc.namespace().unwrap_or_default();
    let publish_not_ready = svc
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false);
    let hint_node = svc
        .spec
        .as_ref()
        .and_then(|s| s.traffic_distribution.as_deref())
        == Some("PreferSameNode");
    let mut out: Vec<PodEndpoint> = pods
        .iter()
        .filter(|p| p.namespace().as_deref() == Some(ns.as_str()))
        .filter(|p| selector.matches(p.labels()))
        .filter(|p| !pod_state::is_finished(p))
        .filter_map(|p| {
            let ip = p
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.clone())
                .filter(|ip| !ip.is_empty())?;
            let terminating = p.metadata.deletion_timestamp.is_some();
            let ready = pod_state::is_ready(p);
            let spec = p.spec.as_ref();
            let hostname = spec
                .and_then(|s| s.hostname.clone())
                .filter(|h| !h.is_empty())
                .filter(|_| {
                    spec.and_then(|s| s.subdomain.as_deref()) == svc.metadata.name.as_deref()
                });
            Some(PodEndpoint {
                pod: p.clone(),
                ip,
                ready: publish_not_ready || (ready && !terminating),
                serving: publish_not_ready || ready,
                terminating,
                ports: resolve_ports(svc, p),
                hostname,
                hint_node,
            })
        })
        .collect();
    out.sort_by_key(|e| e.pod.name_any());
    out
}

/// The Service's ports as this pod serves them: a numeric targetPort as is, a named one
/// through the pod's containerPorts (left out when the pod has no port of that name), an
/// absent one as the Service port.
pub fn resolve_ports(svc: &Service, pod: &Pod) -> Vec<EndpointPort> {
    let mut out = Vec::new();
    for sp in svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
    {
        let protocol = sp.protocol.clone().unwrap_or_else(|| "TCP".into());
        let port = match &sp.target_port {
            None => Some(sp.port),
            Some(IntOrString::Int(0)) => Some(sp.port),
            Some(IntOrString::Int(n)) => Some(*n),
            Some(IntOrString::String(name)) => match name.parse::<i32>() {
                Ok(n) => Some(n),
                Err(_) => pod
                    .spec
                    .iter()
                    .flat_map(|s| s.containers.iter())
                    .flat_map(|c| c.ports.iter().flatten())
                    .find(|cp| {
                        cp.name.as_deref() == Some(name.as_str())
                            && cp.protocol.as_deref().unwrap_or("TCP") == protocol
                    })
                    .map(|cp| cp.container_port),
            },
        };
        if let Some(port) = port {
            out.push(EndpointPort {
                name: Some(sp.name.clone().unwrap_or_default()),
                port: Some(port),
                protocol: Some(protocol),
                app_protocol: sp.app_protocol.clone(),
            });
        }
    }
    out
}

/// The slice contents for a set of endpoints: one group per distinct port set (in a stable
/// order), each cut into slices of at most [`MAX_ENDPOINTS_PER_SLICE`].
pub fn pack(endpoints: &[PodEndpoint]) -> Vec<(Vec<EndpointPort>, Vec<Endpoint>)> {
    let mut groups: BTreeMap<String, (Vec<EndpointPort>, Vec<Endpoint>)> = BTreeMap::new();
    for ep in endpoints.iter().filter(|e| !e.ip.contains(':')) {
        let key = serde_json::to_string(&ep.ports).unwrap_or_default();
        let group = groups
            .entry(key)
            .or_insert_with(|| (ep.ports.clone(), vec![]));
        let node_name = ep
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty());
        let hints = node_name
            .clone()
            .filter(|_| ep.hint_node)
            .map(|name| EndpointHints {
                for_nodes: Some(vec![ForNode { name }]),
                ..EndpointHints::default()
            });
        group.1.push(Endpoint {
            addresses: vec![ep.ip.clone()],
            hostname: ep.hostname.clone(),
            hints,
            conditions: Some(EndpointConditions {
                ready: Some(ep.ready),
                serving: Some(ep.serving),
                terminating: Some(ep.terminating),
            }),
            node_name,
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                namespace: ep.pod.namespace(),
                name: Some(ep.pod.name_any()),
                uid: ep.pod.uid(),
                ..ObjectReference::default()
            }),
            ..Endpoint::default()
        });
    }
    let mut out = Vec::new();
    for (_, (ports, eps)) in groups {
        for chunk in eps.chunks(MAX_ENDPOINTS_PER_SLICE) {
            out.push((ports.clone(), chunk.to_vec()));
        }
    }
    out
}

struct State {
    client: kube::Client,
    pods: Store<Pod>,
    slices: Store<EndpointSlice>,
    observed: Observed,
    expectations: Expectations,
}

/// The Services a pod event concerns: those whose selector matches it now, and those whose
/// managed slices list it (it may have stopped matching).
fn services_of_pod(
    services: &Store<Service>,
    slices: &Store<EndpointSlice>,
    pod: &Pod,
) -> Vec<ObjectRef<Service>> {
    let ns = pod.namespace().unwrap_or_default();
    let uid = pod.uid();
    let mut out: Vec<ObjectRef<Service>> = services
        .state()
        .iter()
        .filter(|s| s.namespace().as_deref() == Some(ns.as_str()))
        .filter(|s| service_selector(s).is_some_and(|sel| sel.matches(pod.labels())))
        .map(|s| ObjectRef::from_obj(s.as_ref()))
        .collect();
    for slice in slices.state() {
        if slice.namespace().as_deref() != Some(ns.as_str()) || !is_managed(&slice) {
            continue;
        }
        let lists_pod = slice
            .endpoints
            .iter()
            .flatten()
            .any(|e| e.target_ref.as_ref().is_some_and(|r| r.uid == uid));
        if lists_pod {
            if let Some(svc) = slice.labels().get(SERVICE_NAME_LABEL) {
                out.push(ObjectRef::new(svc).within(&ns));
            }
        }
    }
    out
}

fn is_managed(slice: &EndpointSlice) -> bool {
    slice.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY)
}

/// Runs the EndpointSlice controller until shutdown.
pub async fn run(ctx: Context) {
    let pods = ctx.informers.get::<Pod>();
    let slices = ctx.informers.get_with::<EndpointSlice>(
        watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}")),
    );
    let Some(services) = ctx.informers.listed::<Service>().await else {
        return;
    };
    let state = Arc::new(State {
        client: ctx.client.clone(),
        pods: pods.store(),
        slices: slices.store(),
        observed: slices.observed(),
        expectations: Expectations::default(),
    });
    let (selecting, listing) = (services.store(), slices.store());
    Controller::for_shared_stream(services.objects(), services.store())
        .watches_shared_stream(pods.objects(), move |pod| {
            services_of_pod(&selecting, &listing, &pod)
        })
        .watches_shared_stream(slices.objects(), |slice| {
            let ns = slice.namespace().unwrap_or_default();
            slice
                .labels()
                .get(SERVICE_NAME_LABEL)
                .map(|svc| ObjectRef::new(svc).within(&ns))
        })
        .graceful_shutdown_on(ctx.shutdown.clone().cancelled_owned())
        .run(guard("endpointslice", reconcile), error_policy, state)
        .for_each(|_| async {})
        .await;
}

fn error_policy(svc: Arc<Service>, err: &EndpointSliceError, _: Arc<State>) -> Action {
    tracing::warn!(service = %svc.name_any(), error = %err, "endpointslice reconcile failed");
    Action::requeue(Duration::from_secs(2))
}

async fn reconcile(svc: Arc<Service>, state: Arc<State>) -> Result<Action, EndpointSliceError> {
    if service_selector(&svc).is_none() || svc.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    let key = format!("{ns}/{name}");
    if let Err(wait) = state.expectations.satisfied(&key, &state.observed) {
        return Ok(Action::requeue(wait));
    }
    let api: Api<EndpointSlice> = Api::namespaced(state.client.clone(), &ns);
    let mut desired = pack(&pod_endpoints(&svc, &state.pods.state()));
    if desired.is_empty() {
        // Like Kubernetes, a Service without endpoints keeps one empty placeholder slice.
        desired.push((vec![], vec![]));
    }
    let mut existing: Vec<Arc<EndpointSlice>> = state
        .slices
        .state()
        .into_iter()
        .filter(|s| s.namespace().as_deref() == Some(ns.as_str()) && is_managed(s))
        .filter(|s| s.labels().get(SERVICE_NAME_LABEL) == Some(&name))
        .collect();
    existing.sort_by_key(|s| s.name_any());

    // Pair desired slices with existing ones, same port set first, so an update changes as
    // few endpoints as possible; the rest are created, the unused existing ones deleted.
    let mut assigned: Vec<Option<Arc<EndpointSlice>>> = vec![None; desired.len()];
    for (i, (ports, _)) in desired.iter().enumerate() {
        if let Some(pos) = existing
            .iter()
            .position(|s| s.ports.as_deref().unwrap_or_default() == ports.as_slice())
        {
            assigned[i] = Some(existing.remove(pos));
        }
    }
    for slot in assigned.iter_mut().filter(|s| s.is_none()) {
        if existing.is_empty() {
            break;
        }
        *slot = Some(existing.remove(0));
    }
    let labels = slice_labels(&svc);
    for ((ports, endpoints), current) in desired.into_iter().zip(assigned) {
        let mut slice = EndpointSlice {
            metadata: ObjectMeta {
                generate_name: Some(format!("{name}-")),
                namespace: Some(ns.clone()),
                labels: Some(labels.clone()),
                owner_references: Some(vec![ownership::controller_ref(svc.as_ref())]),
                ..ObjectMeta::default()
            },
            address_type: "IPv4".into(),
            endpoints: Some(endpoints),
            ports: (!ports.is_empty()).then_some(ports),
        };
        match current {
            Some(cur) => {
                // Absent and empty lists are the same (the server may store either).
                let same = cur.endpoints.clone().unwrap_or_default()
                    == slice.endpoints.clone().unwrap_or_default()
                    && cur.ports.clone().unwrap_or_default()
                        == slice.ports.clone().unwrap_or_default()
                    && cur.metadata.labels == slice.metadata.labels;
                if same {
                    continue;
                }
                slice.metadata.name = cur.metadata.name.clone();
                slice.metadata.generate_name = None;
                slice.metadata.resource_version = cur.metadata.resource_version.clone();
                match api
                    .replace(&cur.name_any(), &PostParams::default(), &slice)
                    .await
                {
                    Ok(s) => state
                        .expectations
                        .wrote(&key, s.metadata.resource_version.as_deref()),
                    // Changed meanwhile: the watch brings the new version and another pass.
                    Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
            }
            None => {
                let s = api.create(&PostParams::default(), &slice).await?;
                state
                    .expectations
                    .wrote(&key, s.metadata.resource_version.as_deref());
            }
        }
    }
    for stale in existing {
        match api
            .delete(&stale.name_any(), &DeleteParams::default())
            .await
        {
            Ok(r) => {
                let rv = r.left().and_then(|s| s.metadata.resource_version);
                state.expectations.wrote(&key, rv.as_deref());
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Action::requeue(RESYNC))
}

/// A managed slice's labels: the Service's own plus the two that tie it to the Service.
fn slice_labels(svc: &Service) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = svc.labels().clone();
    labels.insert(SERVICE_NAME_LABEL.into(), svc.name_any());
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    labels
}

/// Index of pods by uid, for tests and callers that need to look endpoints up.
pub fn by_uid(endpoints: &[PodEndpoint]) -> HashMap<String, &PodEndpoint> {
    endpoints
        .iter()
        .map(|e| (e.pod.uid().unwrap_or_default(), e))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, ContainerPort, PodSpec, ServicePort, ServiceSpec};

    fn svc(target: IntOrString) -> Service {
        let mut s = Service::default();
        s.metadata.name = Some("web".into());
        s.metadata.namespace = Some("default".into());
        s.spec = Some(ServiceSpec {
            selector: Some([("app".to_owned(), "web".to_owned())].into()),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                target_port: Some(target),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        });
        s
    }

    fn web_pod(name: &str, ip: &str, port_name: &str, port: i32, ready: bool) -> Arc<Pod> {
        let mut p = skiff_k8s::testing::pod(name, Some("n1"), "Running", ready, 1);
        p.metadata.namespace = Some("default".into());
        p.metadata.uid = Some(format!("uid-{name}"));
        p.metadata.labels = Some([("app".to_owned(), "web".to_owned())].into());
        p.spec = Some(PodSpec {
            node_name: Some("n1".into()),
            containers: vec![Container {
                name: "c".into(),
                ports: Some(vec![ContainerPort {
                    name: Some(port_name.into()),
                    container_port: port,
                    ..ContainerPort::default()
                }]),
                ..Container::default()
            }],
            ..PodSpec::default()
        });
        p.status.as_mut().unwrap().pod_ip = Some(ip.into());
        Arc::new(p)
    }

    #[test]
    fn a_pod_whose_subdomain_is_the_service_lends_the_endpoint_its_hostname() {
        let s = svc(IntOrString::Int(8080));
        let named = |name: &str, ip: &str, subdomain: &str| {
            let mut p = Pod::clone(&web_pod(name, ip, "web", 8080, true));
            let spec = p.spec.as_mut().unwrap();
            spec.hostname = Some(name.into());
            spec.subdomain = Some(subdomain.into());
            Arc::new(p)
        };
        let eps = pod_endpoints(
            &s,
            &[
                named("web-0", "10.0.0.1", "web"),
                named("x-0", "10.0.0.2", "other"),
            ],
        );
        let names: Vec<Option<&str>> = eps.iter().map(|e| e.hostname.as_deref()).collect();
        assert_eq!(
            names,
            [Some("web-0"), None],
            "only under the Service its subdomain names"
        );
        let slices = pack(&eps);
        assert_eq!(slices[0].1[0].hostname.as_deref(), Some("web-0"));
        assert!(
            slices[0].1[0].hints.is_none(),
            "no hints without a traffic distribution"
        );
        let subsets = crate::controllers::endpoints::subsets(&eps, false);
        let addresses = subsets[0].addresses.as_ref().unwrap();
        assert_eq!(addresses[0].hostname.as_deref(), Some("web-0"));
    }

    #[test]
    fn prefer_same_node_services_hint_each_endpoint_to_its_node() {
        let mut s = svc(IntOrString::Int(8080));
        s.spec.as_mut().unwrap().traffic_distribution = Some("PreferSameNode".into());
        let slices = pack(&pod_endpoints(
            &s,
            &[web_pod("a", "10.0.0.1", "web", 8080, true)],
        ));
        let hints = slices[0].1[0].hints.as_ref().expect("hints");
        assert_eq!(hints.for_nodes, Some(vec![ForNode { name: "n1".into() }]));
    }

    #[test]
    fn named_target_ports_resolve_per_pod_and_split_slices() {
        let s = svc(IntOrString::String("web".into()));
        let pods = vec![
            web_pod("a", "10.0.0.1", "web", 8080, true),
            web_pod("b", "10.0.0.2", "web", 9090, false),
            web_pod("c", "10.0.0.3", "other", 7070, true),
        ];
        let eps = pod_endpoints(&s, &pods);
        assert_eq!(eps.len(), 3);
        let slices = pack(&eps);
        // 8080, 9090 and "no port" (c has no port named web): three port sets.
        assert_eq!(slices.len(), 3);
        let ports: Vec<Option<i32>> = slices
            .iter()
            .map(|(p, _)| p.first().and_then(|p| p.port))
            .collect();
        assert!(
            ports.contains(&Some(8080)) && ports.contains(&Some(9090)) && ports.contains(&None)
        );
        let b = slices
            .iter()
            .find(|(p, _)| p.first().and_then(|p| p.port) == Some(9090))
            .unwrap();
        let cond = b.1[0].conditions.clone().unwrap();
        assert_eq!(
            (cond.ready, cond.serving, cond.terminating),
            (Some(false), Some(false), Some(false))
        );
    }

    #[test]
    fn terminating_pods_stay_not_ready_but_serving_and_slices_hold_100() {
        let s = svc(IntOrString::Int(8080));
        let mut pods: Vec<Arc<Pod>> = (0..250)
            .map(|i| {
                web_pod(
                    &format!("p{i:03}"),
                    &format!("10.0.{}.{}", i / 200, i % 200 + 1),
                    "web",
                    8080,
                    true,
                )
            })
            .collect();
        let mut dying = (*pods[0]).clone();
        dying.metadata.deletion_timestamp = dying.metadata.creation_timestamp.clone();
        pods[0] = Arc::new(dying);
        let slices = pack(&pod_endpoints(&s, &pods));
        assert_eq!(
            slices.iter().map(|(_, e)| e.len()).collect::<Vec<_>>(),
            [100, 100, 50]
        );
        let first = slices[0].1[0].conditions.clone().unwrap();
        assert_eq!(
            (first.ready, first.serving, first.terminating),
            (Some(false), Some(true), Some(true))
        );
        assert_eq!(slices[0].0[0].port, Some(8080));
    }

    #[test]
    fn services_without_selector_have_no_endpoints() {
        let mut s = svc(IntOrString::Int(80));
        s.spec.as_mut().unwrap().selector = None;
        assert!(service_selector(&s).is_none());
        assert!(pod_endpoints(&s, &[web_pod("a", "10.0.0.1", "web", 80, true)]).is_empty());
    }
}

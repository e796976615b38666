//! The pod manager: watches the pods bound to this node (fieldSelector `spec.nodeName`) and
//! runs one [`PodWorker`] per pod. At start it adopts what the runtime still runs and, once the
//! first list is in, removes the sandboxes and addresses of pods deleted while it was away.
//! It also keeps the routes to the other nodes' podCIDRs in step with the Node objects.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::Api;
use kube::runtime::watcher::{self, Event};
use tokio::sync::mpsc;

use super::pod_worker::{PodWorker, Shared, Update};
use crate::network::LazyNetwork;
use crate::runtime::PodState;

/// Runs the pod manager until shutdown.
pub async fn run(shared: Arc<Shared>) {
    let api: Api<Pod> = Api::all(shared.client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", shared.node_name));
    let mut found: HashMap<String, PodState> =
        {
            let runtime = shared.runtime.clone();
            match tokio::task::spawn_blocking(move || {
            let leftovers = runtime.leftover_pods().unwrap_or_default();
            for uid in leftovers {
                if let Err(e) = runtime.remove_pod_by_uid(&uid) {
                    tracing::warn!(pod_uid = uid, error = %e, "removing a half-created sandbox");
                }
            }
            runtime.list()
        })
        .await
        {
            Ok(Ok(pods)) => pods.into_iter().map(|p| (p.sandbox.uid.clone(), p)).collect(),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "listing the runtime's pods");
                HashMap::new()
            }
            Err(_) => HashMap::new(),
        }
        };
    if !found.is_empty() {
        tracing::info!(count = found.len(), "found running sandboxes to adopt");
    }
    let mut workers: HashMap<String, mpsc::UnboundedSender<Update>> = HashMap::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<String>();
    let mut listing: Option<HashSet<String>> = None;
    let mut cleaned_up = false;
    let mut stream = watcher::watcher(api, config).boxed();
    loop {
        let event = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            Some(uid) = done_rx.recv() => {
                workers.remove(&uid);
                continue;
            }
            e = stream.next() => e,
        };
        let Some(event) = event else { return };
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "watching this node's pods; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        match event {
            Event::Init => listing = Some(HashSet::new()),
            Event::InitApply(pod) => {
                if let Some(l) = listing.as_mut() {
                    l.insert(pod.metadata.uid.clone().unwrap_or_default());
                }
                dispatch(&shared, &mut workers, &mut found, &done_tx, pod).await;
            }
            Event::InitDone => {
                let seen = listing.take().unwrap_or_default();
                // Pods deleted while the watch was down.
                for (uid, tx) in &workers {
                    if !seen.contains(uid) {
                        let _ = tx.send(Update::Gone);
                    }
                }
                if !cleaned_up {
                    cleaned_up = true;
                    remove_orphans(&shared, std::mem::take(&mut found), &seen).await;
                }
            }
            Event::Apply(pod) => dispatch(&shared, &mut workers, &mut found, &done_tx, pod).await,
            Event::Delete(pod) => {
                if let Some(tx) = pod.metadata.uid.as_ref().and_then(|u| workers.get(u)) {
                    let _ = tx.send(Update::Gone);
                }
            }
        }
    }
}

async fn dispatch(
    shared: &Arc<Shared>,
    workers: &mut HashMap<String, mpsc::UnboundedSender<Update>>,
    found: &mut HashMap<String, PodState>,
    done: &mpsc::UnboundedSender<String>,
    pod: Pod,
) {
    let Some(uid) = pod.metadata.uid.clone() else {
        return;
    };
    if let Some(tx) = workers.get(&uid) {
        if tx.send(Update::Pod(Box::new(pod.clone()))).is_ok() {
            return;
        }
    }
    // A pod that finished before the agent (re)started and was since deleted needs no worker.
    let (tx, rx) = mpsc::unbounded_channel();
    workers.insert(uid.clone(), tx);
    let worker = PodWorker::new(shared.clone(), pod, found.remove(&uid)).await;
    let done = done.clone();
    tokio::spawn(async move {
        worker.run(rx).await;
        let _ = done.send(uid);
    });
}

/// Removes sandboxes and addresses of pods that no longer exist in the API.
async fn remove_orphans(
    shared: &Arc<Shared>,
    found: HashMap<String, PodState>,
    seen: &HashSet<String>,
) {
    for (uid, _) in found.into_iter().filter(|(uid, _)| !seen.contains(uid)) {
        tracing::info!(
            pod_uid = uid,
            "removing the sandbox of a pod deleted while the agent was away"
        );
        let runtime = shared.runtime.clone();
        let u = uid.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || runtime.remove_pod_by_uid(&u)).await
        {
            tracing::warn!(pod_uid = uid, error = %e, "removing an orphaned sandbox");
        }
    }
    // Addresses held by pods that are gone (their sandbox may have been removed already).
    for uid in shared.network.allocated_pods().await {
        if !seen.contains(&uid) {
            if let Err(e) = shared.network.detach(&uid).await {
                tracing::warn!(pod_uid = uid, error = %e, "releasing an orphaned address");
            }
        }
    }
}

/// Keeps routes to the other nodes' podCIDRs (via their InternalIP) once the pod network is up.
pub async fn keep_routes(
    client: kube::Client,
    node_name: String,
    network: Arc<LazyNetwork>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let api: Api<Node> = Api::all(client);
    let mut stream = watcher::watcher(api, watcher::Config::default()).boxed();
    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    let mut init: Option<BTreeMap<String, Node>> = None;
    loop {
        let changed = tokio::select! {
            _ = shutdown.cancelled() => return,
            () = network.ready.notified() => true,
            e = stream.next() => match e {
                None => return,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "watching nodes for routes");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    false
                }
                Some(Ok(Event::Init)) => { init = Some(BTreeMap::new()); false }
                Some(Ok(Event::InitApply(n))) => {
                    if let Some(i) = init.as_mut() { i.insert(n.metadata.name.clone().unwrap_or_default(), n); }
                    false
                }
                Some(Ok(Event::InitDone)) => { nodes = init.take().unwrap_or_default(); true }
                Some(Ok(Event::Apply(n))) => { nodes.insert(n.metadata.name.clone().unwrap_or_default(), n); true }
                Some(Ok(Event::Delete(n))) => { nodes.remove(n.metadata.name.as_deref().unwrap_or_default()); true }
            },
        };
        if !changed {
            continue;
        }
        let want: BTreeMap<String, Ipv4Addr> = nodes
            .values()
            .filter(|n| n.metadata.name.as_deref() != Some(node_name.as_str()))
            .filter_map(|n| {
                let cidr = n.spec.as_ref()?.pod_cidr.clone()?;
                let ip = n
                    .status
                    .as_ref()?
                    .addresses
                    .iter()
                    .flatten()
                    .find(|a| a.type_ == "InternalIP")?
                    .address
                    .parse::<Ipv4Addr>()
                    .ok()?;
                Some((cidr, ip))
            })
            .collect();
        // Routes to the other nodes' pods are needed before this node runs a pod of its own:
        // a NodePort or load-balancer address answered here forwards to pods elsewhere. So the
        // network (bridge, forwarding, masquerade) comes up as soon as there is another node
        // to route to, not only with the first local pod.
        let net = match network.current() {
            Some(net) => net,
            None if want.is_empty() => continue,
            None => match network.get().await {
                Ok(net) => net,
                Err(e) => {
                    tracing::warn!(error = %e, "setting up the pod network to route to other nodes");
                    continue;
                }
            },
        };
        if let Err(e) = net.sync_routes(want).await {
            tracing::warn!(error = %e, "routing to other nodes' pods");
        }
    }
}

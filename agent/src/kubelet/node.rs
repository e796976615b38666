//! The agent's Node: registration, status and the heartbeat Lease.
//!
//! As the kubelet does: at start the agent creates its Node (or adopts the existing one), then
//! every renew interval (a quarter of the lease duration) it renews its Lease in
//! `kube-node-lease`, which is what the node lifecycle controller watches, and every status
//! interval it posts the Node's status (conditions with a fresh heartbeat, capacity, addresses).
//! The Node is looked up at every tick: if it disappeared (deleted, or a control plane that
//! lost its store) the agent registers again. API errors (a control plane restarting) are
//! logged and retried at the next tick; they never stop the agent.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::{json, Value};
use skiff_k8s::cidr::Ipv4Cidr;
use skiff_k8s::time::{now, now_micro};
use tokio_util::sync::CancellationToken;

use super::host::{self, HostFacts, MEMORY_RESERVE_BYTES};

/// The namespace of node heartbeat Leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";

/// How the agent presents its Node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub name: String,
    /// The node's InternalIP; default: the address of the default-route interface.
    pub node_ip: Option<Ipv4Addr>,
    /// The pod range to set in `spec.podCIDR` when the Node has none yet.
    pub pod_cidr: Option<Ipv4Cidr>,
    pub max_pods: u32,
    /// Extra labels (besides the well-known hostname, os and arch labels).
    pub labels: BTreeMap<String, String>,
    pub lease_duration: Duration,
    pub status_interval: Duration,
    /// Where the agent keeps its state (its file system is the node's ephemeral storage).
    pub root_dir: PathBuf,
    /// The port of the agent's HTTPS endpoint (logs, exec), advertised in the Node's
    /// status.daemonEndpoints.kubeletEndpoint for the API server to connect to.
    pub kubelet_port: u16,
}

/// The default port of the agent's HTTPS endpoint (the kubelet's).
pub const KUBELET_PORT: u16 = 10250;

/// Whether a kube error is a 404 from the API.
fn not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// The Node object the agent creates.
pub fn node_object(config: &NodeConfig) -> Value {
    let mut labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_owned(), config.name.clone()),
        ("kubernetes.io/os".to_owned(), "linux".to_owned()),
        (
            "kubernetes.io/arch".to_owned(),
            host::architecture().to_owned(),
        ),
    ]);
    labels.extend(config.labels.clone());
    let mut node = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": config.name, "labels": labels},
        "spec": {},
    });
    if let Some(cidr) = config.pod_cidr {
        node["spec"] = json!({"podCIDR": cidr.to_string(), "podCIDRs": [cidr.to_string()]});
    }
    node
}

/// The status the agent posts. `previous` is the Node as the API has it, to keep each
/// condition's lastTransitionTime while its status does not change.
pub fn node_status(
    config: &NodeConfig,
    facts: &HostFacts,
    node_ip: Option<Ipv4Addr>,
    pressure: (bool, bool),
    previous: Option<&Node>,
) -> Value {
    let heartbeat = now();
    let old = |type_: &str| {
        previous
            .and_then(|n| n.status.as_ref())
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == type_))
            .map(|c| (c.status.clone(), c.last_transition_time.clone()))
    };
    let condition = |type_: &str, on: bool, reason: &str, message: &str| {
        let status = if on { "True" } else { "False" };
        let transition = match old(type_) {
            Some((s, Some(t))) if s == status => {
                serde_json::to_value(t).unwrap_or(json!(heartbeat))
            }
            _ => json!(heartbeat),
        };
        json!({"type": type_, "status": status, "reason": reason, "message": message,
               "lastHeartbeatTime": heartbeat, "lastTransitionTime": transition})
    };
    let (memory_pressure, disk_pressure) = pressure;
    let mut addresses = Vec::new();
    if let Some(ip) = node_ip {
        addresses.push(json!({"type": "InternalIP", "address": ip.to_string()}));
    }
    addresses.push(json!({"type": "Hostname", "address": config.name}));
    let memory_ki = facts.memory_bytes / 1024;
    let allocatable_memory_ki = facts.memory_bytes.saturating_sub(MEMORY_RESERVE_BYTES) / 1024;
    json!({
        "capacity": {
            "cpu": facts.cpus.to_string(),
            "memory": format!("{memory_ki}Ki"),
            "pods": config.max_pods.to_string(),
            "ephemeral-storage": facts.ephemeral_storage_bytes.to_string(),
        },
        "allocatable": {
            "cpu": facts.cpus.to_string(),
            "memory": format!("{allocatable_memory_ki}Ki"),
            "pods": config.max_pods.to_string(),
            "ephemeral-storage": facts.ephemeral_storage_bytes.to_string(),
        },
        "conditions": [
            condition("MemoryPressure", memory_pressure,
                if memory_pressure { "KubeletHasInsufficientMemory" } else { "KubeletHasSufficientMemory" },
                if memory_pressure { "less than 100Mi of memory available" } else { "skiff-agent has sufficient memory available" }),
            condition("DiskPressure", disk_pressure,
                if disk_pressure { "KubeletHasDiskPressure" } else { "KubeletHasNoDiskPressure" },
                if disk_pressure { "less than 10% of the node's file system free" } else { "skiff-agent has no disk pressure" }),
            condition("PIDPressure", false, "KubeletHasSufficientPID", "skiff-agent has sufficient PID available"),
            condition("Ready", true, "KubeletReady", "skiff-agent is posting ready status"),
        ],
        "addresses": addresses,
        "daemonEndpoints": {"kubeletEndpoint": {"Port": config.kubelet_port}},
        "nodeInfo": {
            "machineID": facts.machine_id,
            "systemUUID": facts.machine_id,
            "bootID": facts.boot_id,
            "kernelVersion": facts.kernel_version,
            "osImage": facts.os_image,
            "containerRuntimeVersion": format!("skiff://{}", env!("CARGO_PKG_VERSION")),
            "kubeletVersion": format!("v1.37.0-skiff.{}", env!("CARGO_PKG_VERSION")),
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": facts.architecture,
        },
    })
}

/// Registers the Node and keeps it and its Lease fresh until `shutdown`.
pub struct NodeAgent {
    config: NodeConfig,
    facts: HostFacts,
    nodes: Api<Node>,
    leases: Api<Lease>,
    /// Whether the Node is known to exist in the API.
    registered: bool,
    last_status: Option<Instant>,
}

impl NodeAgent {
    pub fn new(client: kube::Client, config: NodeConfig) -> std::io::Result<Self> {
        std::fs::create_dir_all(&config.root_dir)?;
        Ok(Self {
            facts: host::read(&config.root_dir)?,
            nodes: Api::all(client.clone()),
            leases: Api::namespaced(client, LEASE_NAMESPACE),
            config,
            registered: false,
            last_status: None,
        })
    }

    fn node_ip(&self) -> Option<Ipv4Addr> {
        self.config
            .node_ip
            .or_else(|| crate::network::interfaces::primary_address().ok().flatten())
    }

    /// Creates the Node if missing (or adopts it), setting spec.podCIDR if it has none.
    async fn register(&mut self) -> Result<Node, kube::Error> {
        let name = &self.config.name;
        let node = match self.nodes.get_opt(name).await? {
            Some(n) => {
                tracing::info!(node = %name, "adopting the existing Node");
                n
            }
            None => {
                let obj: Node = serde_json::from_value(node_object(&self.config))
                    .map_err(kube::Error::SerdeError)?;
                let n = self.nodes.create(&PostParams::default(), &obj).await?;
                tracing::info!(node = %name, "registered the Node");
                n
            }
        };
        if let Some(cidr) = self.config.pod_cidr {
            match node.spec.as_ref().and_then(|s| s.pod_cidr.as_deref()) {
                None => {
                    let patch = json!({"spec": {"podCIDR": cidr.to_string(), "podCIDRs": [cidr.to_string()]}});
                    self.nodes
                        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await?;
                }
                Some(existing) if existing != cidr.to_string() => tracing::warn!(
                    node = %name, %existing, flag = %cidr,
                    "the Node already has another podCIDR; keeping the API's"
                ),
                Some(_) => {}
            }
        }
        self.registered = true;
        Ok(node)
    }

    /// Posts the Node's status.
    async fn post_status(&mut self, previous: Option<&Node>) -> Result<(), kube::Error> {
        let status = node_status(
            &self.config,
            &self.facts,
            self.node_ip(),
            host::pressure(&self.config.root_dir),
            previous,
        );
        self.nodes
            .patch_status(
                &self.config.name,
                &PatchParams::default(),
                &Patch::Merge(&json!({ "status": status })),
            )
            .await?;
        self.last_status = Some(Instant::now());
        Ok(())
    }

    /// Renews (or creates) the Lease, owned by the Node so it goes with it.
    async fn renew_lease(&self, node: &Node) -> Result<(), kube::Error> {
        let name = &self.config.name;
        let spec = json!({
            "holderIdentity": name,
            "leaseDurationSeconds": self.config.lease_duration.as_secs(),
            "renewTime": now_micro(),
        });
        let patch = json!({ "spec": spec });
        match self
            .leases
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Err(e) if not_found(&e) => {
                let lease: Lease = serde_json::from_value(json!({
                    "metadata": {
                        "name": name,
                        "namespace": LEASE_NAMESPACE,
                        "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": name,
                            "uid": node.metadata.uid.clone().unwrap_or_default()}],
                    },
                    "spec": spec,
                }))
                .map_err(kube::Error::SerdeError)?;
                self.leases.create(&PostParams::default(), &lease).await?;
                Ok(())
            }
            other => other.map(drop),
        }
    }

    /// One heartbeat: make sure the Node exists, renew the Lease, post status when due.
    async fn tick(&mut self) -> Result<(), kube::Error> {
        let node = match self.nodes.get_opt(&self.config.name).await? {
            Some(n) if self.registered => n,
            Some(_) | None => {
                if self.registered {
                    tracing::warn!(node = %self.config.name, "the Node is gone from the API; registering again");
                }
                self.registered = false;
                self.last_status = None;
                self.register().await?
            }
        };
        self.renew_lease(&node).await?;
        if self
            .last_status
            .is_none_or(|t| t.elapsed() >= self.config.status_interval)
        {
            self.post_status(Some(&node)).await?;
        }
        Ok(())
    }

    /// Heartbeats every quarter of the lease duration until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let every = (self.config.lease_duration / 4).max(Duration::from_millis(200));
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            if let Err(e) = self.tick().await {
                tracing::warn!(node = %self.config.name, error = %e, "node heartbeat failed; retrying");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> NodeConfig {
        NodeConfig {
            name: "node-1".into(),
            node_ip: Some(Ipv4Addr::new(10, 0, 0, 1)),
            pod_cidr: Some("10.244.1.0/24".parse().unwrap()),
            max_pods: 110,
            labels: BTreeMap::from([("zone".to_owned(), "a".to_owned())]),
            lease_duration: Duration::from_secs(40),
            status_interval: Duration::from_secs(10),
            root_dir: "/".into(),
            kubelet_port: KUBELET_PORT,
        }
    }

    fn facts() -> HostFacts {
        HostFacts {
            cpus: 2,
            memory_bytes: 4 << 30,
            ephemeral_storage_bytes: 10 << 30,
            kernel_version: "6.18".into(),
            os_image: "Debian".into(),
            machine_id: "m".into(),
            boot_id: "b".into(),
            architecture: "amd64",
        }
    }

    #[test]
    fn node_object_is_a_valid_node() {
        let node: Node = serde_json::from_value(node_object(&config())).unwrap();
        let labels = node.metadata.labels.unwrap();
        assert_eq!(labels["kubernetes.io/hostname"], "node-1");
        assert_eq!(labels["zone"], "a");
        assert_eq!(node.spec.unwrap().pod_cidrs.unwrap(), ["10.244.1.0/24"]);
    }

    #[test]
    fn status_reports_capacity_and_keeps_transition_times() {
        let c = config();
        let first: k8s_openapi::api::core::v1::NodeStatus =
            serde_json::from_value(node_status(&c, &facts(), c.node_ip, (false, false), None))
                .unwrap();
        assert_eq!(first.capacity.as_ref().unwrap()["memory"].0, "4194304Ki");
        assert_eq!(
            first.allocatable.as_ref().unwrap()["memory"].0,
            format!("{}Ki", (4u64 << 20) - 100 * 1024)
        );
        assert_eq!(first.addresses.as_ref().unwrap()[0].address, "10.0.0.1");
        let ready = |s: &k8s_openapi::api::core::v1::NodeStatus| {
            s.conditions
                .as_ref()
                .unwrap()
                .iter()
                .find(|c| c.type_ == "Ready")
                .cloned()
                .unwrap()
        };
        assert_eq!(ready(&first).status, "True");

        // An old transition time survives while the condition's status stays the same...
        let mut previous = Node {
            status: Some(first.clone()),
            ..Node::default()
        };
        let old_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time =
            serde_json::from_value(json!("2020-01-01T00:00:00Z")).unwrap();
        for cond in previous
            .status
            .as_mut()
            .unwrap()
            .conditions
            .as_mut()
            .unwrap()
        {
            cond.last_transition_time = Some(old_time.clone());
        }
        let second: k8s_openapi::api::core::v1::NodeStatus = serde_json::from_value(node_status(
            &c,
            &facts(),
            c.node_ip,
            (true, false),
            Some(&previous),
        ))
        .unwrap();
        assert_eq!(ready(&second).last_transition_time, Some(old_time.clone()));
        // ...and changes with it.
        let memory = second
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == "MemoryPressure")
            .unwrap();
        assert_eq!(memory.status, "True");
        assert_ne!(memory.last_transition_time, Some(old_time));
    }
}

//! Controllers that run inside skiff-control. Each is level-triggered and goes through the
//! API server like any client: the namespace finalizer uses the in-process object operations,
//! the others a `kube::Client` against the server's own HTTPS endpoint
//! ([`crate::client::Context`], with the shared informers), so they could equally run in a
//! separate process. [`crate::manager`] starts them; what they share that is not a controller
//! is in [`machinery`].

pub mod bootstrap_signer;
pub mod cluster_dns;
pub mod cronjob;
pub mod csr_approving;
pub mod csr_cleaner;
pub mod csr_signing;
pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod endpointslice;
pub mod event_ttl;
pub mod garbage_collector;
pub mod history;
pub mod ingress_status;
pub mod job;
pub(crate) mod machinery;
pub mod namespace;
pub mod node_lifecycle;
pub mod pod_cidr;
pub mod replicaset;
pub mod replicationcontroller;
pub mod root_ca;
pub mod service_lb;
pub mod serviceaccount;
pub mod statefulset;
pub mod token_cleaner;

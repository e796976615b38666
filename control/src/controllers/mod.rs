//! Controllers that run inside skiff-control. Each is level-triggered and goes through the
//! API server like any client: the namespace finalizer uses the in-process object operations,
//! the others a `kube::Client` against the server's own HTTPS endpoint (`Context`), so they
//! could equally run in a separate process.

pub mod claim;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod endpointslice;
pub mod events;
pub mod expectations;
pub mod garbage_collector;
pub mod history;
pub mod job;
pub mod leader;
pub mod manager;
pub mod namespace;
pub mod node_lifecycle;
pub mod ownership;
pub mod pod_cidr;
pub mod pod_control;
pub mod replicaset;
pub mod replicationcontroller;
pub mod statefulset;
pub mod status;

use kube::Client;
use tokio_util::sync::CancellationToken;

/// What every client-side controller gets.
#[derive(Clone)]
pub struct Context {
    /// A client of this control plane's API server (admin credentials).
    pub client: Client,
    /// Cancelled at shutdown (or when this instance loses leadership).
    pub shutdown: CancellationToken,
}

impl Context {
    /// An event recorder writing as `component`.
    pub fn recorder(&self, component: &str) -> events::Recorder {
        events::Recorder::new(self.client.clone(), component)
    }
}

/// Runs every client-side controller until `ctx.shutdown` is cancelled.
pub async fn run_all(ctx: Context) {
    let tasks: Vec<tokio::task::JoinHandle<()>> = vec![
        tokio::spawn(crate::scheduler::run(ctx.clone())),
        tokio::spawn(replicaset::run(ctx.clone())),
        tokio::spawn(replicationcontroller::run(ctx.clone())),
        tokio::spawn(endpointslice::run(ctx.clone())),
        tokio::spawn(endpoints::run(ctx.clone())),
        tokio::spawn(deployment::run(ctx.clone())),
        tokio::spawn(job::run(ctx.clone())),
        tokio::spawn(cronjob::run(ctx.clone())),
        tokio::spawn(garbage_collector::run(ctx.clone())),
        tokio::spawn(daemonset::run(ctx.clone())),
        tokio::spawn(statefulset::run(ctx.clone())),
    ];
    for task in tasks {
        let _ = task.await;
    }
}

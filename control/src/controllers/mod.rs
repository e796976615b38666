//! Controllers that run inside skiff-control. Each is level-triggered and goes through the
//! API server like any client: the namespace finalizer uses the in-process object operations,
//! the others a `kube::Client` against the server's own HTTPS endpoint (`Context`), so they
//! could equally run in a separate process.

pub mod events;
pub mod leader;
pub mod manager;
pub mod namespace;
pub mod node_lifecycle;
pub mod pod_cidr;

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
    let tasks: Vec<tokio::task::JoinHandle<()>> =
        vec![tokio::spawn(crate::scheduler::run(ctx.clone()))];
    for task in tasks {
        let _ = task.await;
    }
}

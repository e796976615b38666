//! Everything that runs as a client of the API server (the controllers and the scheduler),
//! under leader election, with their settings. skiff-control runs it in process against its
//! own endpoint; `skiff-control controllers --kubeconfig` runs it against a remote server.
//!
//! The top layer: it starts the controllers and the scheduler, which know nothing of each
//! other or of it (rules <- client <- controllers and scheduler <- manager).

pub mod leader;

use crate::client::Context;
use crate::controllers::{
    bootstrap_signer, cronjob, csr_approving, csr_cleaner, csr_signing, daemonset, deployment,
    endpoints, endpointslice, garbage_collector, job, node_lifecycle, pod_cidr, replicaset,
    replicationcontroller, root_ca, serviceaccount, statefulset, token_cleaner,
};

/// Settings of the client-side controllers.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// podCIDR allocation.
    pub pod_cidrs: pod_cidr::Config,
    /// Node lifecycle timing.
    pub node_lifecycle: node_lifecycle::Config,
    /// Leader election.
    pub election: leader::Config,
    /// PEM of the cluster CA, published in every namespace as `kube-root-ca.crt`
    /// (kube-controller-manager's `--root-ca-file`).
    pub root_ca: Option<String>,
    /// The CA that signs approved CertificateSigningRequests, and for how long.
    pub csr_signing: csr_signing::Config,
    /// What CertificateSigningRequests are approved without an admin.
    pub csr_approving: csr_approving::Config,
}

/// Runs the controllers and the scheduler while this instance is the leader, until
/// `ctx.shutdown` is cancelled.
pub async fn run(ctx: Context, settings: Settings) {
    let client = ctx.client.clone();
    leader::run(
        client.clone(),
        settings.election.clone(),
        ctx.shutdown.clone(),
        move |leading| {
            // A fresh context per term: its informers start with it and stop when it ends.
            let ctx = Context::new(client.clone(), leading);
            let settings = settings.clone();
            async move {
                tokio::join!(
                    pod_cidr::run(ctx.clone(), settings.pod_cidrs),
                    node_lifecycle::run(ctx.clone(), settings.node_lifecycle),
                    root_ca::run(ctx.clone(), settings.root_ca),
                    csr_signing::run(ctx.clone(), settings.csr_signing),
                    csr_approving::run(ctx.clone(), settings.csr_approving),
                    csr_cleaner::run(ctx.clone()),
                    token_cleaner::run(ctx.clone()),
                    bootstrap_signer::run(ctx.clone()),
                    run_all(ctx),
                );
            }
        },
    )
    .await;
}

/// Runs every client-side controller and the scheduler until `ctx.shutdown` is cancelled.
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
        tokio::spawn(serviceaccount::run(ctx.clone())),
    ];
    for task in tasks {
        let _ = task.await;
    }
}

//! Everything that runs as a client of the API server (the controllers and the scheduler),
//! under leader election, with their settings. skiff-control runs it in process against its
//! own endpoint; `skiff-control controllers --kubeconfig` runs it against a remote server.
//!
//! The top layer: it starts the controllers and the scheduler, which know nothing of each
//! other or of it (rules <- client <- controllers and scheduler <- manager).

pub mod leader;
pub mod supervise;

use crate::client::Context;
use crate::controllers::{
    bootstrap_signer, cluster_dns, cronjob, csr_approving, csr_cleaner, csr_signing, daemonset,
    deployment, endpoints, endpointslice, garbage_collector, ingress_status, job, node_lifecycle,
    pod_cidr, replicaset, replicationcontroller, root_ca, service_lb, serviceaccount, statefulset,
    token_cleaner,
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
    /// Where the controllers' health is reported (read by `/readyz`).
    pub health: supervise::Health,
    /// LoadBalancer address pools.
    pub load_balancers: service_lb::Config,
}

/// Runs the controllers and the scheduler while this instance is the leader, until
/// `ctx.shutdown` is cancelled. Each runs on its own task under [`supervise::supervise`]: one
/// that panics or ends early is restarted with back-off while the others go on.
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
            async move { run_term(ctx, settings).await }
        },
    )
    .await;
}

/// Starts `$run(ctx.clone(), $arg...)` under supervision as `$name`.
macro_rules! supervised {
    ($ctx:expr, $health:expr, $name:literal, $run:path $(, $arg:ident)*) => {{
        let ctx: Context = $ctx.clone();
        $(let $arg = $arg.clone();)*
        supervise::supervise($name, $health.clone(), ctx.shutdown.clone(), move || {
            $run(ctx.clone() $(, $arg.clone())*)
        })
    }};
}

/// Runs every controller and the scheduler of one term of leadership.
async fn run_term(ctx: Context, settings: Settings) {
    let Settings {
        pod_cidrs,
        node_lifecycle: lifecycle,
        root_ca: ca,
        csr_signing: signing,
        csr_approving: approving,
        health,
        election: _,
        load_balancers,
    } = settings;
    tokio::join!(
        supervised!(ctx, health, "pod-cidr", pod_cidr::run, pod_cidrs),
        supervised!(
            ctx,
            health,
            "node-lifecycle",
            node_lifecycle::run,
            lifecycle
        ),
        supervised!(ctx, health, "root-ca-cert-publisher", root_ca::run, ca),
        supervised!(ctx, health, "csr-signing", csr_signing::run, signing),
        supervised!(ctx, health, "csr-approving", csr_approving::run, approving),
        supervised!(ctx, health, "csr-cleaner", csr_cleaner::run),
        supervised!(ctx, health, "token-cleaner", token_cleaner::run),
        supervised!(ctx, health, "bootstrap-signer", bootstrap_signer::run),
        supervised!(ctx, health, "service-lb", service_lb::run, load_balancers),
        supervised!(ctx, health, "ingress-status", ingress_status::run),
        run_workloads(&ctx, &health),
    );
}

/// Runs the workload controllers and the scheduler until `ctx.shutdown` is cancelled.
pub async fn run_all(ctx: Context) {
    run_workloads(&ctx, &supervise::Health::default()).await;
}

async fn run_workloads(ctx: &Context, health: &supervise::Health) {
    tokio::join!(
        supervised!(ctx, health, "scheduler", crate::scheduler::run),
        supervised!(ctx, health, "replicaset", replicaset::run),
        supervised!(
            ctx,
            health,
            "replicationcontroller",
            replicationcontroller::run
        ),
        supervised!(ctx, health, "endpointslice", endpointslice::run),
        supervised!(ctx, health, "endpoints", endpoints::run),
        supervised!(ctx, health, "cluster-dns", cluster_dns::run),
        supervised!(ctx, health, "deployment", deployment::run),
        supervised!(ctx, health, "job", job::run),
        supervised!(ctx, health, "cronjob", cronjob::run),
        supervised!(ctx, health, "garbage-collector", garbage_collector::run),
        supervised!(ctx, health, "daemonset", daemonset::run),
        supervised!(ctx, health, "statefulset", statefulset::run),
        supervised!(ctx, health, "serviceaccount", serviceaccount::run),
    );
}

//! Everything that runs as a client of the API server (the controllers and the scheduler),
//! under leader election, with their settings. skiff-control runs it in process against its
//! own endpoint; `skiff-control controllers --kubeconfig` runs it against a remote server.

use super::{leader, node_lifecycle, pod_cidr, run_all, Context};

/// Settings of the client-side controllers.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// podCIDR allocation.
    pub pod_cidrs: pod_cidr::Config,
    /// Node lifecycle timing.
    pub node_lifecycle: node_lifecycle::Config,
    /// Leader election.
    pub election: leader::Config,
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
            let ctx = Context {
                client: client.clone(),
                shutdown: leading,
            };
            let settings = settings.clone();
            async move {
                tokio::join!(
                    pod_cidr::run(ctx.clone(), settings.pod_cidrs),
                    node_lifecycle::run(ctx.clone(), settings.node_lifecycle),
                    run_all(ctx),
                );
            }
        },
    )
    .await;
}

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use skiff_control::server::{self, Config};
use tokio_util::sync::CancellationToken;

/// skiff-control: the skiff control plane (Kubernetes API server and controllers).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Directory for the database, CA, serving certificate and admin token.
    #[arg(long, env = "SKIFF_DATA_DIR")]
    data_dir: PathBuf,
    /// HTTPS listen address.
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Write an admin kubeconfig (server URL, CA data, token) to this path.
    #[arg(long)]
    write_kubeconfig: Option<PathBuf>,
    /// Extra DNS names or IPs for the serving certificate (repeatable).
    #[arg(long = "tls-san")]
    tls_san: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("installing a SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            tracing::info!("shutting down");
            shutdown.cancel();
        }
    });
    server::run(
        Config {
            data_dir: args.data_dir,
            listen: args.listen,
            kubeconfig: args.write_kubeconfig,
            tls_sans: args.tls_san,
        },
        shutdown,
    )
    .await
}

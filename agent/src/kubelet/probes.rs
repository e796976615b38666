//! Container probes (startup, liveness, readiness) with httpGet, tcpSocket and exec handlers and
//! Kubernetes' timing fields. One task per container instance runs them and reports changes of
//! outcome to the pod's worker, which restarts the container (liveness, startup) or flips its
//! readiness.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::runtime::ContainerRuntime;

/// Which probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    /// Gates the other two; failing it restarts the container.
    Startup,
    /// Failing it restarts the container.
    Liveness,
    /// Decides whether the container is ready.
    Readiness,
}

impl ProbeKind {
    /// As Kubernetes names it in events ("Liveness probe failed: ...").
    pub fn label(self) -> &'static str {
        match self {
            Self::Startup => "Startup",
            Self::Liveness => "Liveness",
            Self::Readiness => "Readiness",
        }
    }
}

/// A change of a probe's outcome.
#[derive(Debug, Clone)]
pub struct ProbeEvent {
    /// The container's name.
    pub container: String,
    /// The instance (restart count) the probe ran against, so late results are ignored.
    pub instance: i32,
    /// Which probe.
    pub kind: ProbeKind,
    /// Passed (after successThreshold) or failed (after failureThreshold).
    pub ok: bool,
    /// The last failure's description.
    pub message: String,
}

/// What a probe runs against.
#[derive(Clone)]
pub struct Target {
    /// The pod's IP (httpGet and tcpSocket default host).
    pub pod_ip: IpAddr,
    /// The container spec (named ports).
    pub spec: Container,
    /// The running instance, for exec probes.
    pub container: crate::runtime::Container,
    /// Its restart count.
    pub instance: i32,
    /// The runtime, for exec probes.
    pub runtime: Arc<dyn ContainerRuntime>,
}

/// Starts the container's probes; they stop when the returned token is cancelled. Returns
/// `None` when the container has no probes.
pub fn spawn(target: Target, tx: mpsc::UnboundedSender<ProbeEvent>) -> Option<CancellationToken> {
    let spec = &target.spec;
    if spec.startup_probe.is_none()
        && spec.liveness_probe.is_none()
        && spec.readiness_probe.is_none()
    {
        return None;
    }
    let cancel = CancellationToken::new();
    let token = cancel.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = token.cancelled() => {}
            _ = run(target, tx) => {}
        }
    });
    Some(cancel)
}

async fn run(target: Target, tx: mpsc::UnboundedSender<ProbeEvent>) {
    if let Some(probe) = target.spec.startup_probe.clone() {
        if !probe_loop(ProbeKind::Startup, &probe, &target, &tx).await {
            return;
        }
    }
    let liveness = async {
        if let Some(p) = target.spec.liveness_probe.clone() {
            probe_loop(ProbeKind::Liveness, &p, &target, &tx).await;
        }
    };
    let readiness = async {
        if let Some(p) = target.spec.readiness_probe.clone() {
            probe_loop(ProbeKind::Readiness, &p, &target, &tx).await;
        }
    };
    tokio::join!(liveness, readiness);
}

fn seconds(v: Option<i32>, default: i32) -> Duration {
    Duration::from_secs(u64::try_from(v.unwrap_or(default).max(0)).unwrap_or(0))
}

/// Runs one probe until it decides the container's fate: for startup, returns `true` once it
/// passed; for liveness and startup, returns `false` after reporting the failure (the worker
/// restarts the container); readiness runs until cancelled.
async fn probe_loop(
    kind: ProbeKind,
    probe: &Probe,
    target: &Target,
    tx: &mpsc::UnboundedSender<ProbeEvent>,
) -> bool {
    let period = seconds(probe.period_seconds, 10).max(Duration::from_secs(1));
    let timeout = seconds(probe.timeout_seconds, 1).max(Duration::from_secs(1));
    let success_threshold = probe.success_threshold.unwrap_or(1).max(1);
    let failure_threshold = probe.failure_threshold.unwrap_or(3).max(1);
    tokio::time::sleep(seconds(probe.initial_delay_seconds, 0)).await;
    let (mut successes, mut failures) = (0, 0);
    // Readiness starts out failed (so its first success is news); the others start passing.
    let mut reported = kind != ProbeKind::Readiness;
    let send = |ok: bool, message: String| {
        let _ = tx.send(ProbeEvent {
            container: target.spec.name.clone(),
            instance: target.instance,
            kind,
            ok,
            message,
        });
    };
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let result = match tokio::time::timeout(timeout, check(probe, target, timeout)).await {
            Ok(r) => r,
            Err(_) => Err(format!("timeout after {}s", timeout.as_secs())),
        };
        match result {
            Ok(()) => {
                failures = 0;
                successes += 1;
                if successes >= success_threshold {
                    if kind == ProbeKind::Startup {
                        send(true, String::new());
                        return true;
                    }
                    if !reported {
                        reported = true;
                        send(true, String::new());
                    }
                }
            }
            Err(message) => {
                successes = 0;
                failures += 1;
                tracing::debug!(container = %target.spec.name, kind = kind.label(), %message, "probe failed");
                if failures >= failure_threshold && (reported || kind != ProbeKind::Readiness) {
                    reported = false;
                    send(false, message);
                    if kind != ProbeKind::Readiness {
                        return false;
                    }
                }
            }
        }
    }
}

/// Resolves a probe's port: a number, or the name of one of the container's ports.
fn port(port: &IntOrString, spec: &Container) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("invalid port {n}")),
        IntOrString::String(name) => {
            if let Ok(n) = name.parse::<u16>() {
                return Ok(n);
            }
            spec.ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok())
                .ok_or_else(|| format!("no container port named {name:?}"))
        }
    }
}

async fn check(probe: &Probe, target: &Target, timeout: Duration) -> Result<(), String> {
    if let Some(http) = &probe.http_get {
        let port = port(&http.port, &target.spec)?;
        let host: IpAddr = match http.host.as_deref().filter(|h| !h.is_empty()) {
            Some(h) => h
                .parse()
                .map_err(|_| format!("unsupported probe host {h:?} (an IP is needed)"))?,
            None => target.pod_ip,
        };
        let scheme = http
            .scheme
            .as_deref()
            .unwrap_or("HTTP")
            .to_ascii_lowercase();
        let path = http.path.as_deref().unwrap_or("/");
        let path = if path.starts_with('/') {
            path.to_owned()
        } else {
            format!("/{path}")
        };
        let url = format!("{scheme}://{}{path}", SocketAddr::new(host, port));
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(timeout)
            // The kubelet does not verify certificates of HTTPS probes either.
            .danger_accept_invalid_certs(true)
            .build()
            .map_err(|e| e.to_string())?;
        let mut request = client.get(&url).header("User-Agent", "kube-probe/1.37");
        for h in http.http_headers.iter().flatten() {
            request = request.header(h.name.as_str(), h.value.as_str());
        }
        let response = request
            .send()
            .await
            .map_err(|e| format!("Get \"{url}\": {e}"))?;
        let code = response.status().as_u16();
        return if (200..400).contains(&code) {
            Ok(())
        } else {
            Err(format!("HTTP probe failed with statuscode: {code}"))
        };
    }
    if let Some(tcp) = &probe.tcp_socket {
        let port = port(&tcp.port, &target.spec)?;
        let host: IpAddr = match tcp.host.as_deref().filter(|h| !h.is_empty()) {
            Some(h) => h
                .parse()
                .map_err(|_| format!("unsupported probe host {h:?}"))?,
            None => target.pod_ip,
        };
        let addr = SocketAddr::new(host, port);
        return tokio::net::TcpStream::connect(addr)
            .await
            .map(drop)
            .map_err(|e| format!("dial tcp {addr}: {e}"));
    }
    if let Some(exec) = &probe.exec {
        let command = exec.command.clone().unwrap_or_default();
        if command.is_empty() {
            return Err("exec probe with an empty command".into());
        }
        return exec_probe(target, command, timeout).await;
    }
    Err("probe has no handler (httpGet, tcpSocket or exec); grpc probes are not supported".into())
}

/// Runs an exec probe's command in the container: exit code 0 passes.
async fn exec_probe(
    target: &Target,
    command: Vec<String>,
    timeout: Duration,
) -> Result<(), String> {
    let (runtime, container) = (target.runtime.clone(), target.container.clone());
    let out =
        tokio::task::spawn_blocking(move || runtime.exec_output(&container, &command, timeout))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
    if out.code == 0 {
        Ok(())
    } else {
        Err(format!(
            "command exited with {}: {}",
            out.code,
            String::from_utf8_lossy(&out.output).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ContainerPort;

    #[test]
    fn named_ports_resolve_from_the_container() {
        let spec = Container {
            name: "web".into(),
            ports: Some(vec![ContainerPort {
                name: Some("http".into()),
                container_port: 8080,
                ..ContainerPort::default()
            }]),
            ..Container::default()
        };
        assert_eq!(port(&IntOrString::Int(80), &spec), Ok(80));
        assert_eq!(port(&IntOrString::String("http".into()), &spec), Ok(8080));
        assert!(port(&IntOrString::String("grpc".into()), &spec).is_err());
        assert!(port(&IntOrString::Int(70000), &spec).is_err());
    }
}

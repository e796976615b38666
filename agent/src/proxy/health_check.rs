//! The health check ports of LoadBalancer Services with `externalTrafficPolicy: Local`, as
//! kube-proxy serves them: on each Service's `healthCheckNodePort`, every node answers whether
//! it has a ready endpoint of that Service (200) or not (503), with the count in a JSON body and
//! an `X-Load-Balancing-Endpoint-Weight` header. A load balancer in front of the nodes sends
//! outside traffic only to nodes that answer 200, since with the Local policy the other nodes
//! refuse it.
//!
//! The sync ([`super::sync`]) keeps the table of checks up to date for the Services it
//! recomputes; [`serve`] opens and closes one listener per port as the table changes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::core::v1::Service as KubeService;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::changes::ObjectKey;

/// One Service's health check on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// The Service's `healthCheckNodePort`.
    pub port: u16,
    /// Its ready, not terminating endpoints on this node (distinct addresses).
    pub local_endpoints: usize,
}

/// The checks this node serves, by Service; shared between the sync and the listeners.
#[derive(Debug, Clone)]
pub struct HealthChecks {
    checks: watch::Sender<BTreeMap<ObjectKey, Check>>,
}

impl Default for HealthChecks {
    fn default() -> Self {
        Self {
            checks: watch::Sender::new(BTreeMap::new()),
        }
    }
}

impl HealthChecks {
    /// Recomputes the check of Service `key` (`None`: deleted) from it and its slices.
    pub fn update(
        &self,
        key: &ObjectKey,
        svc: Option<&KubeService>,
        slices: &[&EndpointSlice],
        node: &str,
    ) {
        let check = svc.and_then(|s| check_of(s, slices, node));
        self.checks.send_if_modified(|checks| match check {
            Some(c) if checks.get(key) != Some(&c) => {
                checks.insert(key.clone(), c);
                true
            }
            Some(_) => false,
            None => checks.remove(key).is_some(),
        });
    }

    /// Replaces every check (after a relist).
    pub fn replace(&self, checks: BTreeMap<ObjectKey, Check>) {
        self.checks.send_if_modified(|current| {
            let changed = *current != checks;
            *current = checks;
            changed
        });
    }

    /// The check of Service `key` as it is now.
    pub fn get(&self, key: &ObjectKey) -> Option<Check> {
        self.checks.borrow().get(key).cloned()
    }
}

/// The health check a Service needs on node `node`: only LoadBalancers with the Local policy
/// have a `healthCheckNodePort` (the API server allocates it).
pub fn check_of(svc: &KubeService, slices: &[&EndpointSlice], node: &str) -> Option<Check> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() != Some("LoadBalancer")
        || spec.external_traffic_policy.as_deref() != Some("Local")
    {
        return None;
    }
    let port = u16::try_from(spec.health_check_node_port?)
        .ok()
        .filter(|&p| p != 0)?;
    let local: BTreeSet<&str> = slices
        .iter()
        .flat_map(|s| s.endpoints.iter().flatten())
        .filter(|e| e.node_name.as_deref() == Some(node))
        .filter(|e| {
            let c = e.conditions.as_ref();
            c.and_then(|c| c.ready).unwrap_or(true)
                && !c.and_then(|c| c.terminating).unwrap_or(false)
        })
        .flat_map(|e| e.addresses.iter().map(String::as_str))
        .collect();
    Some(Check {
        port,
        local_endpoints: local.len(),
    })
}

/// kube-proxy's answer for Service `key` with `local_endpoints` ready here.
pub fn answer(key: &ObjectKey, local_endpoints: usize) -> Response {
    let status = if local_endpoints > 0 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "service": {"namespace": key.0, "name": key.1},
        "localEndpoints": local_endpoints,
        "serviceProxyHealthy": true,
    });
    let mut response = (status, body.to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        "X-Load-Balancing-Endpoint-Weight",
        HeaderValue::from(local_endpoints),
    );
    response
}

/// Serves every check's port on all of the node's addresses until `shutdown`: a listener is
/// opened when a port appears in the table and closed when it goes. A port that cannot be
/// bound (something else holds it) is logged and tried again at the next change.
pub async fn serve(checks: HealthChecks, shutdown: CancellationToken) {
    let mut changes = checks.checks.subscribe();
    let mut listening: BTreeMap<u16, CancellationToken> = BTreeMap::new();
    loop {
        let wanted: BTreeMap<u16, ObjectKey> = changes
            .borrow_and_update()
            .iter()
            .map(|(k, c)| (c.port, k.clone()))
            .collect();
        listening.retain(|port, stop| {
            let keep = wanted.contains_key(port);
            if !keep {
                stop.cancel();
            }
            keep
        });
        for (port, key) in wanted {
            if listening.contains_key(&port) {
                continue;
            }
            let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
            match tokio::net::TcpListener::bind(addr).await {
                Ok(listener) => {
                    let stop = shutdown.child_token();
                    listening.insert(port, stop.clone());
                    tokio::spawn(listen(listener, key, checks.clone(), stop));
                }
                Err(e) => tracing::warn!(
                    port,
                    service = format!("{}/{}", key.0, key.1),
                    error = %e,
                    "cannot serve the Service's health check port"
                ),
            }
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            () = shutdown.cancelled() => return,
        }
    }
}

async fn listen(
    listener: tokio::net::TcpListener,
    key: ObjectKey,
    checks: HealthChecks,
    stop: CancellationToken,
) {
    let app = axum::Router::new().fallback(move || {
        let (key, checks) = (key.clone(), checks.clone());
        async move {
            // The count as it is now; a port reassigned to another Service is closed and
            // reopened (the table is keyed by Service), so `key` is this port's Service.
            let local = checks.get(&key).map_or(0, |c| c.local_endpoints);
            answer(&key, local)
        }
    });
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    {
        tracing::warn!(error = %e, "health check listener failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(ty: &str, policy: &str, port: Option<i32>) -> KubeService {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"type": ty, "externalTrafficPolicy": policy, "healthCheckNodePort": port,
                "ports": [{"port": 80}]}
        }))
        .unwrap()
    }

    fn slice() -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": "web-1", "namespace": "shop"},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.244.1.5"], "nodeName": "node-1"},
                {"addresses": ["10.244.1.6"], "nodeName": "node-1", "conditions": {"ready": false}},
                {"addresses": ["10.244.1.7"], "nodeName": "node-1", "conditions": {"ready": true, "terminating": true}},
                {"addresses": ["10.244.2.5"], "nodeName": "node-2"},
                {"addresses": ["10.244.2.6"], "nodeName": "node-2", "conditions": {"ready": true}},
            ]
        }))
        .unwrap()
    }

    #[test]
    fn only_local_load_balancers_have_a_check_counting_this_nodes_ready_endpoints() {
        let s = slice();
        let local = service("LoadBalancer", "Local", Some(31000));
        assert_eq!(
            check_of(&local, &[&s], "node-1"),
            Some(Check {
                port: 31000,
                local_endpoints: 1
            })
        );
        assert_eq!(
            check_of(&local, &[&s], "node-2").unwrap().local_endpoints,
            2
        );
        assert_eq!(
            check_of(&local, &[&s], "node-3").unwrap().local_endpoints,
            0
        );
        assert_eq!(
            check_of(
                &service("LoadBalancer", "Cluster", Some(31000)),
                &[&s],
                "node-1"
            ),
            None
        );
        assert_eq!(
            check_of(&service("NodePort", "Local", None), &[&s], "node-1"),
            None
        );
    }

    #[tokio::test]
    async fn answers_as_kube_proxy_does() {
        let key = ("shop".to_owned(), "web".to_owned());
        let ok = answer(&key, 2);
        assert_eq!(ok.status(), StatusCode::OK);
        assert_eq!(ok.headers()["X-Load-Balancing-Endpoint-Weight"], "2");
        assert_eq!(ok.headers()[header::CONTENT_TYPE], "application/json");
        let body = axum::body::to_bytes(ok.into_body(), 1 << 16).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            body,
            json!({"service": {"namespace": "shop", "name": "web"}, "localEndpoints": 2,
                "serviceProxyHealthy": true})
        );
        assert_eq!(answer(&key, 0).status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn ports_open_and_close_with_the_table() {
        let checks = HealthChecks::default();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(checks.clone(), shutdown.clone()));
        // A free port, from the kernel.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let key = ("shop".to_owned(), "web".to_owned());
        let mut svc = service("LoadBalancer", "Local", Some(i32::from(port)));
        let s = slice();
        checks.update(&key, Some(&svc), &[&s], "node-1");
        let get = || async move {
            let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            stream
                .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await?;
            let mut out = String::new();
            stream.read_to_string(&mut out).await?;
            Ok::<_, std::io::Error>(out)
        };
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        let first = loop {
            match get().await {
                Ok(r) => break r,
                Err(e) if tokio::time::Instant::now() > deadline => panic!("never served: {e}"),
                Err(_) => tokio::task::yield_now().await,
            }
        };
        assert!(first.starts_with("HTTP/1.1 200"), "{first}");
        assert!(first.contains(r#""localEndpoints":1"#), "{first}");
        // The endpoint count follows the table.
        checks.update(&key, Some(&svc), &[], "node-1");
        let none = get().await.unwrap();
        assert!(none.starts_with("HTTP/1.1 503"), "{none}");
        // Cluster policy: no check, the port closes.
        svc.spec.as_mut().unwrap().external_traffic_policy = Some("Cluster".into());
        checks.update(&key, Some(&svc), &[&s], "node-1");
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while get().await.is_ok() {
            assert!(tokio::time::Instant::now() < deadline, "port still open");
            tokio::task::yield_now().await;
        }
        shutdown.cancel();
        server.await.unwrap();
    }
}

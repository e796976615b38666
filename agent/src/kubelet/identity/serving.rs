//! The kubelet endpoint's serving certificate from the cluster's `kubernetes.io/kubelet-serving`
//! signer, as the kubelet's `serverTLSBootstrap` gets it: CN `system:node:<name>`, O
//! `system:nodes`, the DNS names and IP addresses the Node reports in `status.addresses` (what
//! an approver compares them with), requested with the node's own credentials. Until one is
//! issued the endpoint serves its self-signed certificate; once issued it is stored in
//! `<root>/pki/kubelet-server-current.pem`, swapped in, and renewed like the client certificate.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Node;
use tokio_util::sync::CancellationToken;

use super::csr::{CertRequest, CsrError};
use super::rotation::{CertSlot, Clock as _, Issue, Rotator, SystemClock};
use super::store::{self, CertStore, KeyedCert};

/// The names (DNS) and addresses (IP) a Node reports, as the kubelet puts them in its serving
/// certificate: Hostname, InternalDNS and ExternalDNS entries are names; InternalIP and
/// ExternalIP entries are addresses.
pub fn node_sans(node: &Node) -> (Vec<String>, Vec<IpAddr>) {
    let (mut dns, mut ips) = (BTreeSet::new(), BTreeSet::new());
    for a in node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
    {
        match a.type_.as_str() {
            "Hostname" | "InternalDNS" | "ExternalDNS" if !a.address.is_empty() => {
                dns.insert(a.address.clone());
            }
            "InternalIP" | "ExternalIP" => {
                if let Ok(ip) = a.address.parse::<IpAddr>() {
                    ips.insert(ip);
                }
            }
            _ => {}
        }
    }
    (dns.into_iter().collect(), ips.into_iter().collect())
}

/// The stored serving certificate, if it is the node's, usable, and names exactly `dns` and
/// `ips` (the names the node expects to have; a changed address needs a new certificate).
pub fn stored(root_dir: &Path, node: &str, dns: &[String], ips: &[IpAddr]) -> Option<KeyedCert> {
    let cert = CertStore::new(super::pki_dir(root_dir), store::SERVER_STEM).load()?;
    let mut want: Vec<String> = dns.to_vec();
    want.extend(ips.iter().map(ToString::to_string));
    want.sort();
    let mut have = cert.sans.clone();
    have.sort();
    (cert.common_name == super::csr::node_user(node)
        && cert.usable_at(SystemClock.now())
        && have == want)
        .then_some(cert)
}

/// Asks for a serving certificate for the Node's current addresses.
struct ServingIssuer {
    client: kube::Client,
    node: String,
    seconds: Option<i32>,
}

impl Issue for ServingIssuer {
    fn issue(&self) -> BoxFuture<'_, Result<KeyedCert, CsrError>> {
        Box::pin(async move {
            let nodes: kube::Api<Node> = kube::Api::all(self.client.clone());
            let node = nodes.get_opt(&self.node).await?.ok_or_else(|| {
                CsrError::NotReady(format!("the Node {} is not registered yet", self.node))
            })?;
            let (dns, ips) = node_sans(&node);
            if ips.is_empty() && dns.is_empty() {
                return Err(CsrError::NotReady(format!(
                    "the Node {} reports no addresses yet",
                    self.node
                )));
            }
            CertRequest::serving(&self.node, dns, ips, self.seconds)
                .issue(&self.client, super::JOIN_CSR_TIMEOUT)
                .await
        })
    }
}

/// Gets (when `slot` is empty) and renews the serving certificate until `shutdown`.
pub fn run(
    client: kube::Client,
    node: &str,
    root_dir: &Path,
    seconds: Option<i32>,
    slot: Arc<CertSlot>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let rotator = Rotator {
        what: "serving",
        slot,
        store: CertStore::new(super::pki_dir(root_dir), store::SERVER_STEM),
        issuer: Arc::new(ServingIssuer {
            client,
            node: node.to_owned(),
            seconds,
        }),
        clock: Arc::new(SystemClock),
    };
    tokio::spawn(rotator.run(shutdown))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sans_are_the_nodes_reported_names_and_addresses() {
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1"},
            "status": {"addresses": [
                {"type": "InternalIP", "address": "10.0.0.5"},
                {"type": "Hostname", "address": "n1"},
                {"type": "ExternalIP", "address": "203.0.113.9"},
                {"type": "InternalDNS", "address": "n1.internal"},
                {"type": "InternalIP", "address": "not-an-ip"},
            ]},
        }))
        .unwrap();
        let (dns, ips) = node_sans(&node);
        assert_eq!(dns, ["n1", "n1.internal"]);
        assert_eq!(
            ips,
            [
                "10.0.0.5".parse::<IpAddr>().unwrap(),
                "203.0.113.9".parse().unwrap()
            ]
        );
        assert_eq!(node_sans(&Node::default()), (vec![], vec![]));
    }
}

//! The `/etc/hosts` every container gets, as the kubelet writes it (`managedHostsFileContent`):
//! localhost entries and the pod's own address and hostname, or, for a hostNetwork pod, the
//! node's own hosts file; then the pod's `hostAliases`.

use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Pod;

/// The file for a pod at `ip` named `hostname`; `node_hosts` is the node's `/etc/hosts`, used
/// for a hostNetwork pod (which shares the node's names as it shares its network).
pub fn content(
    pod: &Pod,
    ip: Option<Ipv4Addr>,
    hostname: &str,
    cluster_domain: &str,
    node_hosts: Option<&str>,
) -> String {
    let spec = pod.spec.as_ref();
    let mut out = String::new();
    match node_hosts.filter(|_| spec.and_then(|s| s.host_network) == Some(true)) {
        Some(node) => {
            out.push_str("# Kubernetes-managed hosts file (host network).\n");
            out.push_str(node);
            if !node.is_empty() && !node.ends_with('\n') {
                out.push('\n');
            }
        }
        None => {
            out.push_str(
                "# Kubernetes-managed hosts file.\n\
                 127.0.0.1\tlocalhost\n\
                 ::1\tlocalhost ip6-localhost ip6-loopback\n\
                 fe00::0\tip6-localnet\n\
                 fe00::0\tip6-mcastprefix\n\
                 fe00::1\tip6-allnodes\n\
                 fe00::2\tip6-allrouters\n",
            );
            if let Some(ip) = ip {
                let subdomain = spec
                    .and_then(|s| s.subdomain.as_deref())
                    .filter(|s| !s.is_empty());
                match subdomain {
                    // The pod's fully qualified name first, as the kubelet writes it.
                    Some(sub) => {
                        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
                        out.push_str(&format!(
                            "{ip}\t{hostname}.{sub}.{ns}.svc.{cluster_domain}\t{hostname}\n"
                        ));
                    }
                    None => out.push_str(&format!("{ip}\t{hostname}\n")),
                }
            }
        }
    }
    let aliases = spec
        .and_then(|s| s.host_aliases.as_deref())
        .unwrap_or_default();
    if !aliases.is_empty() {
        out.push_str("\n# Entries added by HostAliases.\n");
        for alias in aliases {
            let names = alias.hostnames.as_deref().unwrap_or_default();
            if names.is_empty() {
                continue;
            }
            out.push_str(&format!("{}\t{}\n", alias.ip, names.join("\t")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(
            json!({"metadata": {"name": "web-0", "namespace": "prod"}, "spec": spec}),
        )
        .unwrap()
    }

    #[test]
    fn a_pod_network_pod_gets_its_address_subdomain_and_aliases() {
        let p = pod(json!({"containers": [], "subdomain": "web",
            "hostAliases": [{"ip": "10.1.2.3", "hostnames": ["foo.local", "bar.local"]}]}));
        let hosts = content(
            &p,
            Some(Ipv4Addr::new(10, 244, 1, 5)),
            "web-0",
            "cluster.local",
            Some("1.1.1.1 node\n"),
        );
        assert!(hosts.starts_with("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n"));
        assert!(hosts.contains("10.244.1.5\tweb-0.web.prod.svc.cluster.local\tweb-0\n"));
        assert!(
            hosts.ends_with("\n# Entries added by HostAliases.\n10.1.2.3\tfoo.local\tbar.local\n")
        );
        assert!(
            !hosts.contains("1.1.1.1 node"),
            "the node's file is for hostNetwork pods"
        );
    }

    #[test]
    fn a_host_network_pod_gets_the_nodes_hosts_file() {
        let p = pod(json!({"containers": [], "hostNetwork": true}));
        let hosts = content(
            &p,
            Some(Ipv4Addr::new(192, 168, 0, 10)),
            "node-1",
            "cluster.local",
            Some("127.0.0.1 localhost\n192.168.0.10 node-1"),
        );
        assert_eq!(
            hosts,
            "# Kubernetes-managed hosts file (host network).\n127.0.0.1 localhost\n192.168.0.10 node-1\n"
        );
    }
}

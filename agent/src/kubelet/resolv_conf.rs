//! A pod's `/etc/resolv.conf`, as the kubelet forms it (`pkg/kubelet/network/dns`):
//!
//! - `ClusterFirst` (the default; for hostNetwork pods only as `ClusterFirstWithHostNet`):
//!   the cluster DNS address, the search list `<ns>.svc.<domain> svc.<domain> <domain>`
//!   followed by the node's, and `options ndots:5`. A node without a cluster DNS address
//!   falls back to `Default`, with a `MissingClusterDNS` warning;
//! - `Default`: the node's resolv.conf (its nameservers, search list and options);
//! - `None`: nothing but the pod's `dnsConfig`.
//!
//! The pod's `dnsConfig` is then merged in (nameservers and searches appended without
//! duplicates, options by name with the pod's value winning), and the result is cut to the
//! kubelet's limits (3 nameservers, 32 search domains of at most 2048 characters in all), each
//! cut reported as the kubelet's `DNSConfigForming` warning.

use k8s_openapi::api::core::v1::Pod;

/// Nameservers a resolver uses, at most (glibc's MAXNS).
pub const MAX_NAMESERVERS: usize = 3;
/// Search domains, at most.
pub const MAX_SEARCHES: usize = 32;
/// Characters of the whole search line, at most.
pub const MAX_SEARCH_CHARS: usize = 2048;

/// A resolver configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvConf {
    /// `nameserver` lines.
    pub nameservers: Vec<String>,
    /// The `search` line.
    pub searches: Vec<String>,
    /// The `options` line (`ndots:5`, `edns0`, ...).
    pub options: Vec<String>,
}

impl ResolvConf {
    /// Reads a resolv.conf as the kubelet does: every `nameserver`; the last `search` line
    /// (`domain` is ignored); `options` accumulate.
    pub fn parse(text: &str) -> Self {
        let mut conf = Self::default();
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or_default();
            let mut fields = line.split_whitespace();
            match fields.next() {
                Some("nameserver") => conf.nameservers.extend(fields.next().map(str::to_owned)),
                Some("search") => {
                    conf.searches = fields
                        .filter(|s| *s != ".")
                        .map(|s| s.trim_end_matches('.').to_owned())
                        .collect();
                }
                Some("options") => conf.options = merge_options(&conf.options, fields),
                _ => {}
            }
        }
        conf
    }

    /// The file's text (search, nameservers, options: the order containerd writes).
    pub fn render(&self) -> String {
        let mut out = String::new();
        if !self.searches.is_empty() {
            out.push_str(&format!("search {}\n", self.searches.join(" ")));
        }
        for ns in &self.nameservers {
            out.push_str(&format!("nameserver {ns}\n"));
        }
        if !self.options.is_empty() {
            out.push_str(&format!("options {}\n", self.options.join(" ")));
        }
        out
    }
}

/// What the node knows about DNS.
#[derive(Debug, Clone)]
pub struct NodeDns {
    /// The cluster DNS addresses (`--cluster-dns`); empty when there is none.
    pub cluster_dns: Vec<String>,
    /// The cluster domain (`--cluster-domain`).
    pub cluster_domain: String,
    /// The node's own resolver configuration (`--resolv-conf`).
    pub host: ResolvConf,
}

/// The pod's resolv.conf and the warnings (reason, message) the kubelet would record.
pub fn for_pod(pod: &Pod, node: &NodeDns) -> (ResolvConf, Vec<(String, String)>) {
    let spec = pod.spec.as_ref();
    let host_network = spec.and_then(|s| s.host_network) == Some(true);
    let policy = spec
        .and_then(|s| s.dns_policy.as_deref())
        .unwrap_or("ClusterFirst");
    let mut warnings = Vec::new();
    let cluster = match policy {
        "ClusterFirstWithHostNet" => true,
        "ClusterFirst" => !host_network,
        _ => false,
    };
    let mut conf = if policy == "None" {
        ResolvConf::default()
    } else if cluster && !node.cluster_dns.is_empty() {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let domain = &node.cluster_domain;
        let mut searches = vec![
            format!("{ns}.svc.{domain}"),
            format!("svc.{domain}"),
            domain.clone(),
        ];
        append_unique(&mut searches, node.host.searches.iter().cloned());
        ResolvConf {
            nameservers: node.cluster_dns.clone(),
            searches,
            options: vec!["ndots:5".to_owned()],
        }
    } else {
        if cluster {
            warnings.push((
                "MissingClusterDNS".to_owned(),
                "kubelet does not have ClusterDNS IP configured and cannot create Pod using \
                 \"ClusterFirst\" policy. Falling back to \"Default\" policy."
                    .to_owned(),
            ));
        }
        node.host.clone()
    };
    if let Some(config) = spec.and_then(|s| s.dns_config.as_ref()) {
        append_unique(
            &mut conf.nameservers,
            config.nameservers.iter().flatten().cloned(),
        );
        append_unique(
            &mut conf.searches,
            config
                .searches
                .iter()
                .flatten()
                .map(|s| s.trim_end_matches('.').to_owned()),
        );
        let pod_options = config.options.iter().flatten().filter_map(|o| {
            let name = o.name.as_deref().filter(|n| !n.is_empty())?;
            Some(match &o.value {
                Some(v) => format!("{name}:{v}"),
                None => name.to_owned(),
            })
        });
        let pod_options: Vec<String> = pod_options.collect();
        conf.options = merge_options(&conf.options, pod_options.iter().map(String::as_str));
    }
    fit_limits(&mut conf, &mut warnings);
    (conf, warnings)
}

fn append_unique(list: &mut Vec<String>, more: impl IntoIterator<Item = String>) {
    for item in more {
        if !list.contains(&item) {
            list.push(item);
        }
    }
}

/// Options by name (`ndots:5` and `ndots:2` are one option): a later value replaces an
/// earlier one in place.
fn merge_options<'a>(base: &[String], more: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut out = base.to_vec();
    for option in more {
        let name = option.split(':').next().unwrap_or(option);
        match out.iter_mut().find(|o| o.split(':').next() == Some(name)) {
            Some(existing) => *existing = option.to_owned(),
            None => out.push(option.to_owned()),
        }
    }
    out
}

/// Cuts to the resolver's limits, with the kubelet's warnings.
fn fit_limits(conf: &mut ResolvConf, warnings: &mut Vec<(String, String)>) {
    if conf.nameservers.len() > MAX_NAMESERVERS {
        conf.nameservers.truncate(MAX_NAMESERVERS);
        warnings.push((
            "DNSConfigForming".to_owned(),
            format!(
                "Nameserver limits were exceeded, some nameservers have been omitted, the applied \
                 nameserver line is: {}",
                conf.nameservers.join(" ")
            ),
        ));
    }
    let mut cut = false;
    if conf.searches.len() > MAX_SEARCHES {
        conf.searches.truncate(MAX_SEARCHES);
        cut = true;
    }
    while conf.searches.join(" ").len() > MAX_SEARCH_CHARS {
        conf.searches.pop();
        cut = true;
    }
    if cut {
        warnings.push((
            "DNSConfigForming".to_owned(),
            format!(
                "Search Line limits were exceeded, some search paths have been omitted, the \
                 applied search line is: {}",
                conf.searches.join(" ")
            ),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(cluster_dns: &[&str]) -> NodeDns {
        NodeDns {
            cluster_dns: cluster_dns.iter().map(|s| (*s).to_owned()).collect(),
            cluster_domain: "cluster.local".into(),
            host: ResolvConf::parse(
                "# host\nnameserver 192.168.0.1\nsearch lab.example. .\noptions edns0 ndots:1\n",
            ),
        }
    }

    fn pod(spec: serde_json::Value) -> Pod {
        let mut spec = spec;
        spec["containers"] = json!([]);
        serde_json::from_value(
            json!({"metadata": {"name": "p", "namespace": "prod"}, "spec": spec}),
        )
        .unwrap()
    }

    #[test]
    fn cluster_first_uses_the_cluster_dns_and_search_path() {
        let (conf, warnings) = for_pod(&pod(json!({})), &node(&["10.96.0.10"]));
        assert!(warnings.is_empty());
        assert_eq!(
            conf.render(),
            "search prod.svc.cluster.local svc.cluster.local cluster.local lab.example\n\
             nameserver 10.96.0.10\noptions ndots:5\n"
        );
        // A hostNetwork pod resolves like its node unless it asks for the cluster's.
        let host = for_pod(&pod(json!({"hostNetwork": true})), &node(&["10.96.0.10"])).0;
        assert_eq!(host.nameservers, ["192.168.0.1"]);
        let with = for_pod(
            &pod(json!({"hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet"})),
            &node(&["10.96.0.10"]),
        )
        .0;
        assert_eq!(with.nameservers, ["10.96.0.10"]);
    }

    #[test]
    fn without_a_cluster_dns_cluster_first_falls_back_to_default_with_a_warning() {
        let (conf, warnings) = for_pod(&pod(json!({})), &node(&[]));
        assert_eq!(conf, node(&[]).host);
        assert_eq!(warnings[0].0, "MissingClusterDNS");
    }

    #[test]
    fn none_takes_only_the_pods_dns_config_and_options_merge_by_name() {
        let p = pod(json!({"dnsPolicy": "None", "dnsConfig": {
            "nameservers": ["1.2.3.4"], "searches": ["a.example"],
            "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}}));
        let (conf, _) = for_pod(&p, &node(&["10.96.0.10"]));
        assert_eq!(
            conf.render(),
            "search a.example\nnameserver 1.2.3.4\noptions ndots:2 edns0\n"
        );
        let merged = for_pod(
            &pod(
                json!({"dnsConfig": {"nameservers": ["10.96.0.10", "8.8.8.8"],
                "options": [{"name": "ndots", "value": "1"}]}}),
            ),
            &node(&["10.96.0.10"]),
        )
        .0;
        assert_eq!(
            merged.nameservers,
            ["10.96.0.10", "8.8.8.8"],
            "no duplicate"
        );
        assert_eq!(
            merged.options,
            ["ndots:1"],
            "the pod's value replaces the default"
        );
    }

    #[test]
    fn limits_cut_with_the_kubelets_warnings() {
        let searches: Vec<String> = (0..40).map(|i| format!("d{i}.example")).collect();
        let p = pod(json!({"dnsPolicy": "None", "dnsConfig": {
            "nameservers": ["1.1.1.1", "2.2.2.2", "3.3.3.3", "4.4.4.4"], "searches": searches}}));
        let (conf, warnings) = for_pod(&p, &node(&[]));
        assert_eq!(conf.nameservers.len(), 3);
        assert_eq!(conf.searches.len(), 32);
        assert_eq!(warnings.len(), 2);
        assert!(warnings[0].1.starts_with("Nameserver limits were exceeded"));
        assert!(warnings[1]
            .1
            .starts_with("Search Line limits were exceeded"));
    }

    #[test]
    fn parsing_keeps_the_last_search_line_and_accumulates_options() {
        let conf = ResolvConf::parse(
            "search a b\nsearch c\nnameserver 1.1.1.1 ; comment\noptions ndots:2\noptions ndots:3 rotate\n",
        );
        assert_eq!(conf.searches, ["c"]);
        assert_eq!(conf.nameservers, ["1.1.1.1"]);
        assert_eq!(conf.options, ["ndots:3", "rotate"]);
    }
}

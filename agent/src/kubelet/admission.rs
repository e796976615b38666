//! The agent's pod admission, as the kubelet's admit handlers: a pod this node must not run
//! fails at once (phase Failed, with the reason and message the kubelet gives) instead of
//! half-starting.
//!
//! - Sysctls (`sysctl.patternAllowlist`): only sysctls known to be namespaced may be set, the
//!   safe set by default and more with `--allowed-unsafe-sysctls`; a net sysctl is refused for
//!   a hostNetwork pod and an IPC one for a hostIPC pod, which would change the node's own.
//! - User namespaces (`hostUsers: false`): skiff's runtime does not create them yet; running
//!   such a pod with the host's users would silently drop the isolation it asked for.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;

use crate::runtime::spec::sysctl_name;

/// The kubelet's reason for a refused sysctl.
pub const SYSCTL_FORBIDDEN: &str = "SysctlForbidden";
/// skiff's reason for a pod that asks for a user namespace.
pub const USER_NAMESPACES_UNSUPPORTED: &str = "UserNamespacesUnsupported";

/// The kernel namespace a sysctl belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Namespace {
    Ipc,
    Net,
}

impl Namespace {
    fn name(self) -> &'static str {
        match self {
            Namespace::Ipc => "ipc",
            Namespace::Net => "net",
        }
    }

    /// The namespace of a sysctl (or of every sysctl starting with a prefix), as the kubelet's
    /// `GetNamespace`; `None` for a sysctl that is not namespaced (it would change the node).
    fn of(name: &str) -> Option<Self> {
        if name == "kernel.sem"
            || ["kernel.shm", "kernel.msg", "fs.mqueue."]
                .iter()
                .any(|p| name.starts_with(p))
        {
            Some(Namespace::Ipc)
        } else if name.starts_with("net.") {
            Some(Namespace::Net)
        } else {
            None
        }
    }
}

/// The kubelet's safe sysctls (`SafeSysctlAllowlist`), allowed without any flag.
const SAFE: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
];

/// What this node admits.
#[derive(Debug, Clone)]
pub struct Admission {
    sysctls: BTreeMap<String, Namespace>,
    prefixes: BTreeMap<String, Namespace>,
}

impl Default for Admission {
    fn default() -> Self {
        Self::new(&[]).unwrap_or_else(|_| Self {
            sysctls: BTreeMap::new(),
            prefixes: BTreeMap::new(),
        })
    }
}

impl Admission {
    /// The safe sysctls and `unsafe_sysctls` (`--allowed-unsafe-sysctls`: names, or prefixes
    /// ending in `*`), each of which must be namespaced.
    pub fn new(unsafe_sysctls: &[String]) -> Result<Self, String> {
        let mut this = Self {
            sysctls: BTreeMap::new(),
            prefixes: BTreeMap::new(),
        };
        for name in SAFE
            .iter()
            .map(|s| (*s).to_owned())
            .chain(unsafe_sysctls.iter().cloned())
        {
            let name = sysctl_name(name.trim());
            let (key, prefix) = match name.strip_suffix('*') {
                Some(p) => (p.to_owned(), true),
                None => (name.clone(), false),
            };
            let Some(ns) = Namespace::of(&key) else {
                return Err(format!(
                    "--allowed-unsafe-sysctls: the sysctl {name:?} is not known to be namespaced"
                ));
            };
            if prefix {
                this.prefixes.insert(key, ns);
            } else {
                this.sysctls.insert(key, ns);
            }
        }
        Ok(this)
    }

    /// Whether the pod may run here; `Err((reason, message))` for its status otherwise.
    pub fn admit(&self, pod: &Pod) -> Result<(), (String, String)> {
        let Some(spec) = pod.spec.as_ref() else {
            return Ok(());
        };
        if spec.host_users == Some(false) {
            return Err((
                USER_NAMESPACES_UNSUPPORTED.to_owned(),
                "hostUsers: false (a user namespace for the pod) is not supported by this node"
                    .to_owned(),
            ));
        }
        let (host_net, host_ipc) = (spec.host_network == Some(true), spec.host_ipc == Some(true));
        let sysctls = spec
            .security_context
            .as_ref()
            .and_then(|sc| sc.sysctls.as_ref());
        for s in sysctls.into_iter().flatten() {
            if let Err(e) = self.check(&sysctl_name(&s.name), host_net, host_ipc) {
                return Err((
                    SYSCTL_FORBIDDEN.to_owned(),
                    format!("forbidden sysctl: {e}"),
                ));
            }
        }
        Ok(())
    }

    fn check(&self, name: &str, host_net: bool, host_ipc: bool) -> Result<(), String> {
        let ns = self.sysctls.get(name).copied().or_else(|| {
            self.prefixes
                .iter()
                .find(|(p, _)| name.starts_with(p.as_str()))
                .map(|(_, ns)| *ns)
        });
        match ns {
            None => Err(format!("{name:?} not allowlisted")),
            Some(ns)
                if (ns == Namespace::Net && host_net) || (ns == Namespace::Ipc && host_ipc) =>
            {
                Err(format!(
                    "{name:?} not allowed with host {} enabled",
                    ns.name()
                ))
            }
            Some(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": spec})).unwrap()
    }

    fn sysctl_pod(name: &str, extra: serde_json::Value) -> Pod {
        let mut spec = json!({"containers": [{"name": "c"}],
            "securityContext": {"sysctls": [{"name": name, "value": "1"}]}});
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        pod(spec)
    }

    #[test]
    fn safe_sysctls_pass_and_others_are_forbidden_with_the_kubelets_words() {
        let a = Admission::default();
        assert!(a
            .admit(&sysctl_pod(
                "net.ipv4.ip_unprivileged_port_start",
                json!({})
            ))
            .is_ok());
        assert!(a
            .admit(&sysctl_pod("net/ipv4/tcp_syncookies", json!({})))
            .is_ok());
        assert_eq!(
            a.admit(&sysctl_pod("net.core.somaxconn", json!({}))),
            Err((
                "SysctlForbidden".to_owned(),
                "forbidden sysctl: \"net.core.somaxconn\" not allowlisted".to_owned()
            ))
        );
        assert_eq!(
            a.admit(&sysctl_pod(
                "kernel.shm_rmid_forced",
                json!({"hostIPC": true})
            ))
            .unwrap_err()
            .1,
            "forbidden sysctl: \"kernel.shm_rmid_forced\" not allowed with host ipc enabled"
        );
        assert_eq!(
            a.admit(&sysctl_pod(
                "net.ipv4.tcp_syncookies",
                json!({"hostNetwork": true})
            ))
            .unwrap_err()
            .1,
            "forbidden sysctl: \"net.ipv4.tcp_syncookies\" not allowed with host net enabled"
        );
    }

    #[test]
    fn unsafe_sysctls_are_allowed_by_name_or_prefix_only_when_namespaced() {
        let a = Admission::new(&["net.core.somaxconn".into(), "kernel.msg*".into()]).unwrap();
        assert!(a
            .admit(&sysctl_pod("net.core.somaxconn", json!({})))
            .is_ok());
        assert!(a.admit(&sysctl_pod("kernel.msgmax", json!({}))).is_ok());
        assert!(a.admit(&sysctl_pod("kernel.sem", json!({}))).is_err());
        assert_eq!(
            Admission::new(&["vm.swappiness".into()]).unwrap_err(),
            "--allowed-unsafe-sysctls: the sysctl \"vm.swappiness\" is not known to be namespaced"
        );
    }

    #[test]
    fn a_pod_asking_for_a_user_namespace_is_refused() {
        let a = Admission::default();
        let refused = a
            .admit(&pod(
                json!({"hostUsers": false, "containers": [{"name": "c"}]}),
            ))
            .unwrap_err();
        assert_eq!(refused.0, USER_NAMESPACES_UNSUPPORTED);
        assert!(a
            .admit(&pod(
                json!({"hostUsers": true, "containers": [{"name": "c"}]})
            ))
            .is_ok());
    }
}

//! The one key scheme of the store: `<group>/<plural>/<namespace>/<name>`.
//!
//! The core group is spelled `core` so every key has four segments; cluster-scoped objects have
//! an empty namespace segment (`core/nodes//n1`). A collection is then a key prefix
//! (`core/pods/`, `core/pods/default/`), which is what lists and watches read. Everything that
//! builds a key goes through here, so a backend (or a migration) can rely on the shape.

/// The group segment of the core (legacy, empty-named) API group.
const CORE_GROUP: &str = "core";

/// The keys of one resource's objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Collection<'a> {
    /// API group, empty for core.
    pub group: &'a str,
    /// The resource's plural, e.g. `pods`.
    pub plural: &'a str,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
}

/// Namespaces (core, cluster-scoped).
pub const NAMESPACES: Collection<'static> = Collection {
    group: "",
    plural: "namespaces",
    namespaced: false,
};

/// Nodes (core, cluster-scoped).
pub const NODES: Collection<'static> = Collection {
    group: "",
    plural: "nodes",
    namespaced: false,
};

/// Services (core, namespaced).
pub const SERVICES: Collection<'static> = Collection {
    group: "",
    plural: "services",
    namespaced: true,
};

/// Pods (core, namespaced).
pub const PODS: Collection<'static> = Collection {
    group: "",
    plural: "pods",
    namespaced: true,
};

/// Secrets (core, namespaced).
pub const SECRETS: Collection<'static> = Collection {
    group: "",
    plural: "secrets",
    namespaced: true,
};

/// ServiceAccounts (core, namespaced).
pub const SERVICE_ACCOUNTS: Collection<'static> = Collection {
    group: "",
    plural: "serviceaccounts",
    namespaced: true,
};

impl Collection<'_> {
    /// The prefix of every object of the resource.
    pub fn prefix(&self) -> String {
        let group = if self.group.is_empty() {
            CORE_GROUP
        } else {
            self.group
        };
        format!("{group}/{}/", self.plural)
    }

    /// The prefix of one namespace's objects (or of all, with `None` or for cluster-scoped
    /// resources).
    pub fn namespace_prefix(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("{}{ns}/", self.prefix()),
            _ => self.prefix(),
        }
    }

    /// The key of one object; the namespace is ignored for cluster-scoped resources.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        let ns = if self.namespaced {
            namespace.unwrap_or("")
        } else {
            ""
        };
        format!("{}{ns}/{name}", self.prefix())
    }
}

/// Whether `key` is an object in `namespace` (of any namespaced resource).
pub fn in_namespace(key: &str, namespace: &str) -> bool {
    let mut segments = key.splitn(4, '/');
    segments.nth(2) == Some(namespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_four_segments() {
        let deployments = Collection {
            group: "apps",
            plural: "deployments",
            namespaced: true,
        };
        assert_eq!(
            deployments.key(Some("default"), "web"),
            "apps/deployments/default/web"
        );
        assert_eq!(deployments.namespace_prefix(None), "apps/deployments/");
        assert_eq!(
            deployments.namespace_prefix(Some("default")),
            "apps/deployments/default/"
        );
        assert_eq!(
            NAMESPACES.key(Some("x"), "default"),
            "core/namespaces//default"
        );
        assert_eq!(NODES.namespace_prefix(Some("x")), "core/nodes/");
        assert_eq!(
            SERVICES.key(Some("default"), "kubernetes"),
            "core/services/default/kubernetes"
        );
    }

    #[test]
    fn namespace_membership_reads_the_third_segment() {
        assert!(in_namespace("core/pods/demo/p", "demo"));
        assert!(!in_namespace("core/pods/demo2/p", "demo"));
        assert!(!in_namespace("core/namespaces//demo", "demo"));
    }
}

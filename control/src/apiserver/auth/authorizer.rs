//! The authorizer chain of `--authorization-mode`, behind kube-apiserver's privileged group.
//!
//! As in kube-apiserver, members of `system:masters` are allowed first, without consulting any
//! mode, so the admin credential works whatever RBAC holds (even before the bootstrap policy
//! exists). Then each configured mode is asked in order; the first that allows decides, and a
//! request no mode allows is denied with the reasons the modes gave.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use k8s_openapi::api::authorization::v1::{
    NonResourceRule, ResourceRule, SubjectRulesReviewStatus,
};

use super::go_format::{aggregate, quote, quote_list};
use super::node::{node_name, NodeAuthorizer};
use super::rbac::index::RbacIndex;
use super::rbac::rules::ALL;
use super::request_info::RequestInfo;
use super::user::{UserInfo, SYSTEM_MASTERS};

/// The outcome of authorizing one request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// Why, in Kubernetes' words (`RBAC: allowed by ...`); may be empty. On a denial it is
    /// appended to the 403 message and returned in a SubjectAccessReview's status.
    pub reason: String,
}

impl Decision {
    /// An allowing decision.
    pub fn allow(reason: impl Into<String>) -> Self {
        Self {
            allowed: true,
            reason: reason.into(),
        }
    }

    /// A denying decision.
    pub fn deny(reason: impl Into<String>) -> Self {
        Self {
            allowed: false,
            reason: reason.into(),
        }
    }
}

/// One authorizer of kube-apiserver's `--authorization-mode` that skiff implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// What a node's credential may do: its own objects and those its pods use.
    Node,
    /// Role-based access control from the RBAC objects.
    Rbac,
    /// Everything is allowed (no authorization).
    AlwaysAllow,
    /// Nothing is allowed by this mode.
    AlwaysDeny,
}

/// The modes skiff accepts, as the flag spells them.
const VALID: &str = "AlwaysAllow, AlwaysDeny, Node, RBAC";

impl Mode {
    /// The flag's spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::Node => "Node",
            Mode::Rbac => "RBAC",
            Mode::AlwaysAllow => "AlwaysAllow",
            Mode::AlwaysDeny => "AlwaysDeny",
        }
    }

    /// Parses an `--authorization-mode` value: a comma-separated, ordered list of modes, each
    /// at most once, spelled as kube-apiserver spells them (case matters).
    pub fn parse_list(value: &str) -> Result<Vec<Mode>, ModeError> {
        if value.is_empty() {
            return Err(ModeError::Empty);
        }
        let names: Vec<&str> = value.split(',').collect();
        let mut modes = Vec::with_capacity(names.len());
        for name in &names {
            let mode = name.parse()?;
            if modes.contains(&mode) {
                return Err(ModeError::Repeated(
                    names.iter().map(|n| n.to_string()).collect(),
                ));
            }
            modes.push(mode);
        }
        Ok(modes)
    }
}

impl FromStr for Mode {
    type Err = ModeError;

    fn from_str(name: &str) -> Result<Self, ModeError> {
        match name {
            "Node" => Ok(Mode::Node),
            "RBAC" => Ok(Mode::Rbac),
            "AlwaysAllow" => Ok(Mode::AlwaysAllow),
            "AlwaysDeny" => Ok(Mode::AlwaysDeny),
            "ABAC" | "Webhook" => Err(ModeError::Unsupported(name.into())),
            _ => Err(ModeError::Unknown(name.into())),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A bad `--authorization-mode` value, worded as kube-apiserver words it, with the modes skiff
/// accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModeError {
    /// No mode given.
    #[error("at least one authorization-mode must be passed")]
    Empty,
    /// A name that is no mode at all.
    #[error("authorization-mode {} is not a valid mode; valid modes: {VALID}", quote(.0))]
    Unknown(String),
    /// A kube-apiserver mode skiff does not implement.
    #[error("authorization-mode {} is not supported by skiff; valid modes: {VALID}", quote(.0))]
    Unsupported(String),
    /// A mode given twice (the whole list).
    #[error("authorization-mode {} has mode specified more than once", quote_list(.0))]
    Repeated(Vec<String>),
}

/// What a user may do in a namespace, for a SelfSubjectRulesReview.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RulesReview {
    /// Rules on resources.
    pub resource_rules: Vec<ResourceRule>,
    /// Rules on non-resource paths.
    pub non_resource_rules: Vec<NonResourceRule>,
    /// Whether a mode could not list everything it would allow.
    pub incomplete: bool,
    /// The errors met while listing (roleRefs that did not resolve), aggregated; empty if none.
    pub evaluation_error: String,
}

impl RulesReview {
    /// Everything: the rules of a `system:masters` member or of AlwaysAllow.
    fn everything() -> Self {
        Self {
            resource_rules: vec![ResourceRule {
                verbs: vec![ALL.into()],
                api_groups: Some(vec![ALL.into()]),
                resources: Some(vec![ALL.into()]),
                resource_names: None,
            }],
            non_resource_rules: vec![NonResourceRule {
                verbs: vec![ALL.into()],
                non_resource_urls: Some(vec![ALL.into()]),
            }],
            ..Self::default()
        }
    }

    /// The `status` of a SelfSubjectRulesReview.
    pub fn into_status(self) -> SubjectRulesReviewStatus {
        SubjectRulesReviewStatus {
            resource_rules: self.resource_rules,
            non_resource_rules: self.non_resource_rules,
            incomplete: self.incomplete,
            evaluation_error: (!self.evaluation_error.is_empty()).then_some(self.evaluation_error),
        }
    }
}

/// The authorizer chain: `system:masters`, then the configured modes in order.
#[derive(Debug)]
pub struct Authorizer {
    modes: Vec<Mode>,
    index: Arc<RbacIndex>,
    nodes: NodeAuthorizer,
}

impl Authorizer {
    /// A chain of `modes`; RBAC decisions come from `index`, which is started (if it is not
    /// yet) on the first decision that needs it; Node decisions read pods from the index's
    /// store.
    pub fn new(modes: Vec<Mode>, index: Arc<RbacIndex>) -> Self {
        let nodes = NodeAuthorizer::new(index.store().clone());
        Self {
            modes,
            index,
            nodes,
        }
    }

    /// The configured modes, in order.
    pub fn modes(&self) -> &[Mode] {
        &self.modes
    }

    /// The RBAC index (for writers that wait until their RBAC write is visible).
    pub fn index(&self) -> &Arc<RbacIndex> {
        &self.index
    }

    /// Decides `request` for `user`. Waits only the first time RBAC is consulted, until the
    /// index has listed the RBAC objects.
    pub async fn authorize(&self, user: &UserInfo, request: &RequestInfo) -> Decision {
        // RBAC is consulted unless an AlwaysAllow before it decides (AlwaysDeny and Node pass
        // on what they do not allow).
        let consults_rbac = self
            .modes
            .iter()
            .find(|m| !matches!(m, Mode::AlwaysDeny | Mode::Node))
            == Some(&Mode::Rbac);
        if user.in_group(SYSTEM_MASTERS) {
            return Decision::allow("");
        }
        if consults_rbac {
            self.index.ready().await;
        }
        // The Node mode reads the store, so it is asked here, in its place in the chain; the
        // synchronous modes after it are asked by `decide`.
        let mut reasons = Vec::new();
        if node_name(user).is_some() && self.modes.contains(&Mode::Node) {
            let node = self.nodes.authorize(user, request).await;
            if node.allowed {
                return node;
            }
            if !node.reason.is_empty() {
                reasons.push(node.reason);
            }
        }
        let rest = self.decide(user, request);
        if rest.allowed || reasons.is_empty() {
            return rest;
        }
        if !rest.reason.is_empty() {
            reasons.push(rest.reason);
        }
        Decision::deny(reasons.join("\n"))
    }

    /// [`Authorizer::authorize`] on the index as it is now, for callers inside a request that
    /// was authorized already (so the index has listed), such as the escalation check.
    pub fn decide(&self, user: &UserInfo, request: &RequestInfo) -> Decision {
        if user.in_group(SYSTEM_MASTERS) {
            return Decision::allow("");
        }
        let mut reasons = Vec::new();
        for mode in &self.modes {
            let decision = match mode {
                Mode::AlwaysAllow => Decision::allow(""),
                Mode::AlwaysDeny => Decision::deny("Everything is forbidden."),
                Mode::Rbac => self.index.snapshot().authorize(user, request),
                // Asked by `authorize` (it reads the store); for the escalation check, which
                // is about RBAC rules, a node's graph grants nothing to pass on.
                Mode::Node => continue,
            };
            if decision.allowed {
                return decision;
            }
            if !decision.reason.is_empty() {
                reasons.push(decision.reason);
            }
        }
        Decision::deny(reasons.join("\n"))
    }

    /// What `user` may do in `namespace` (cluster-wide rules included), as the modes list it:
    /// everything for `system:masters` and AlwaysAllow, nothing from AlwaysDeny, the bound
    /// rules from RBAC. Kubernetes lists a `system:masters` member's rules through RBAC (the
    /// cluster-admin binding); skiff answers `*` directly, as its decisions do.
    pub async fn rules_for(&self, user: &UserInfo, namespace: &str) -> RulesReview {
        if user.in_group(SYSTEM_MASTERS) {
            return RulesReview::everything();
        }
        let mut review = RulesReview::default();
        let mut errors = Vec::new();
        for mode in &self.modes {
            match mode {
                Mode::AlwaysAllow => {
                    let everything = RulesReview::everything();
                    review.resource_rules.extend(everything.resource_rules);
                    review
                        .non_resource_rules
                        .extend(everything.non_resource_rules);
                }
                Mode::AlwaysDeny => {}
                Mode::Node => {
                    // The fixed node rules; the objects reached through pods are not listed,
                    // as Kubernetes' Node authorizer lists none.
                    if node_name(user).is_some() {
                        review.incomplete = true;
                        for rule in super::node::NODE_RULES.iter() {
                            review.resource_rules.push(ResourceRule {
                                verbs: rule.verbs.clone(),
                                api_groups: rule.api_groups.clone(),
                                resources: rule.resources.clone(),
                                resource_names: rule.resource_names.clone(),
                            });
                        }
                    }
                }
                Mode::Rbac => {
                    self.index.ready().await;
                    let (rules, rbac_errors) = self.index.snapshot().rules_for(user, namespace);
                    for rule in rules {
                        if rule.resources.as_ref().is_some_and(|r| !r.is_empty()) {
                            review.resource_rules.push(ResourceRule {
                                verbs: rule.verbs.clone(),
                                api_groups: rule.api_groups.clone(),
                                resources: rule.resources.clone(),
                                resource_names: rule.resource_names.clone(),
                            });
                        }
                        if rule
                            .non_resource_urls
                            .as_ref()
                            .is_some_and(|u| !u.is_empty())
                        {
                            review.non_resource_rules.push(NonResourceRule {
                                verbs: rule.verbs,
                                non_resource_urls: rule.non_resource_urls,
                            });
                        }
                    }
                    if !rbac_errors.is_empty() {
                        errors.push(aggregate(&rbac_errors));
                    }
                }
            }
        }
        review.evaluation_error = aggregate(&errors);
        review
    }
}

#[cfg(test)]
mod tests {
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::apiserver::auth::rbac::test_objects::*;
    use crate::apiserver::auth::request_info::resolve;
    use crate::apiserver::auth::user::AUTHENTICATED;

    #[test]
    fn modes_parse_as_kube_apiserver_spells_them() {
        assert_eq!(Mode::parse_list("RBAC"), Ok(vec![Mode::Rbac]));
        assert_eq!(
            Mode::parse_list("AlwaysDeny,RBAC,AlwaysAllow"),
            Ok(vec![Mode::AlwaysDeny, Mode::Rbac, Mode::AlwaysAllow])
        );
        let error = |value: &str| Mode::parse_list(value).err().map(|e| e.to_string());
        assert_eq!(
            error(""),
            Some("at least one authorization-mode must be passed".into())
        );
        assert_eq!(
            error("rbac"),
            Some(r#"authorization-mode "rbac" is not a valid mode; valid modes: AlwaysAllow, AlwaysDeny, Node, RBAC"#.into())
        );
        assert_eq!(
            error("RBAC,"),
            Some(r#"authorization-mode "" is not a valid mode; valid modes: AlwaysAllow, AlwaysDeny, Node, RBAC"#.into())
        );
        assert_eq!(
            error("Webhook,RBAC"),
            Some(r#"authorization-mode "Webhook" is not supported by skiff; valid modes: AlwaysAllow, AlwaysDeny, Node, RBAC"#.into())
        );
        assert_eq!(
            Mode::parse_list("Node,RBAC"),
            Ok(vec![Mode::Node, Mode::Rbac])
        );
        assert_eq!(
            error("RBAC,AlwaysAllow,RBAC"),
            Some(r#"authorization-mode ["RBAC" "AlwaysAllow" "RBAC"] has mode specified more than once"#.into())
        );
        for mode in [Mode::Node, Mode::Rbac, Mode::AlwaysAllow, Mode::AlwaysDeny] {
            assert_eq!(mode.to_string().parse(), Ok(mode));
        }
    }

    fn alice() -> UserInfo {
        UserInfo {
            name: "alice".into(),
            groups: vec![AUTHENTICATED.into()],
            ..UserInfo::default()
        }
    }

    fn delete_node() -> RequestInfo {
        resolve(&http::Method::DELETE, "/api/v1/nodes/n1", None)
    }

    fn authorizer(modes: &[Mode], store: crate::store::SharedStore) -> Authorizer {
        Authorizer::new(
            modes.to_vec(),
            RbacIndex::new(store, CancellationToken::new()),
        )
    }

    #[tokio::test]
    async fn masters_are_allowed_before_any_mode() {
        let deny_all = authorizer(&[Mode::AlwaysDeny], store());
        assert_eq!(
            deny_all.authorize(&UserInfo::admin(), &delete_node()).await,
            Decision::allow("")
        );
        assert_eq!(
            deny_all.index().revision(),
            None,
            "RBAC was never consulted"
        );
        let review = deny_all.rules_for(&UserInfo::admin(), "prod").await;
        assert_eq!(review, RulesReview::everything());
    }

    #[tokio::test]
    async fn modes_are_asked_in_order() {
        let store = store();
        put_cluster_role(&store, "node-admin", vec![rule(&["*"], &[""], &["nodes"])]).await;
        put_cluster_role_binding(
            &store,
            "alice-nodes",
            ("ClusterRole", "node-admin"),
            vec![subject("User", "alice", None)],
        )
        .await;
        put_cluster_role_binding(
            &store,
            "broken",
            ("ClusterRole", "missing"),
            vec![subject("Group", AUTHENTICATED, None)],
        )
        .await;
        let bob = UserInfo {
            name: "bob".into(),
            groups: vec![AUTHENTICATED.into()],
            ..UserInfo::default()
        };

        let rbac = authorizer(&[Mode::Rbac], store.clone());
        assert_eq!(
            rbac.authorize(&alice(), &delete_node()).await.reason,
            r#"RBAC: allowed by ClusterRoleBinding "alice-nodes" of ClusterRole "node-admin" to User "alice""#
        );
        assert_eq!(
            rbac.authorize(&bob, &delete_node()).await,
            Decision::deny(r#"RBAC: clusterrole.rbac.authorization.k8s.io "missing" not found"#)
        );

        // A denying mode's reason is kept, and a later mode can still allow.
        let deny_then_rbac = authorizer(&[Mode::AlwaysDeny, Mode::Rbac], store.clone());
        assert!(
            deny_then_rbac
                .authorize(&alice(), &delete_node())
                .await
                .allowed
        );
        assert_eq!(
            deny_then_rbac.authorize(&bob, &delete_node()).await,
            Decision::deny(
                "Everything is forbidden.\nRBAC: clusterrole.rbac.authorization.k8s.io \"missing\" not found"
            )
        );
        let allow = authorizer(&[Mode::AlwaysAllow, Mode::Rbac], store.clone());
        assert_eq!(
            allow.authorize(&bob, &delete_node()).await,
            Decision::allow("")
        );
        assert_eq!(allow.index().revision(), None, "AlwaysAllow decided first");
        let none = authorizer(&[], store);
        assert_eq!(
            none.authorize(&bob, &delete_node()).await,
            Decision::deny("")
        );
    }

    #[tokio::test]
    async fn rules_reviews_list_what_the_modes_grant() {
        let store = store();
        put_cluster_role(
            &store,
            "mixed",
            vec![
                rule(&["get", "list"], &["apps"], &["deployments"]),
                serde_json::json!({"verbs": ["get"], "nonResourceURLs": ["/healthz", "/version"]}),
            ],
        )
        .await;
        put_role_binding(
            &store,
            "prod",
            "alice",
            ("ClusterRole", "mixed"),
            vec![subject("User", "alice", None)],
        )
        .await;
        put_role_binding(
            &store,
            "prod",
            "broken",
            ("Role", "missing"),
            vec![subject("User", "alice", None)],
        )
        .await;
        let rbac = authorizer(&[Mode::Rbac], store.clone());
        let review = rbac.rules_for(&alice(), "prod").await;
        assert_eq!(
            review.resource_rules,
            vec![ResourceRule {
                verbs: vec!["get".into(), "list".into()],
                api_groups: Some(vec!["apps".into()]),
                resources: Some(vec!["deployments".into()]),
                resource_names: None,
            }]
        );
        assert_eq!(
            review.non_resource_rules,
            vec![NonResourceRule {
                verbs: vec!["get".into()],
                non_resource_urls: Some(vec!["/healthz".into(), "/version".into()]),
            }]
        );
        assert!(!review.incomplete);
        assert_eq!(
            review.evaluation_error,
            r#"role.rbac.authorization.k8s.io "missing" not found"#
        );
        let status = review.into_status();
        assert_eq!(
            status.evaluation_error.as_deref(),
            Some(r#"role.rbac.authorization.k8s.io "missing" not found"#)
        );
        assert_eq!(
            rbac.rules_for(&alice(), "dev").await,
            RulesReview::default()
        );

        let allow_deny = authorizer(&[Mode::AlwaysDeny, Mode::AlwaysAllow], store);
        assert_eq!(
            allow_deny.rules_for(&alice(), "dev").await,
            RulesReview::everything()
        );
    }
}

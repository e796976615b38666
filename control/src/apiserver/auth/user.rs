//! Who is making a request: the identity authentication establishes and authorization reads.

use std::collections::BTreeMap;

use serde::Serialize;

/// The group whose members every authorizer lets through (kube-apiserver's privileged group).
pub const SYSTEM_MASTERS: &str = "system:masters";
/// The group of every authenticated user.
pub const AUTHENTICATED: &str = "system:authenticated";
/// The group of requests without credentials.
pub const UNAUTHENTICATED: &str = "system:unauthenticated";
/// The user name of requests without credentials.
pub const ANONYMOUS_USER: &str = "system:anonymous";
/// The admin's user name, as kubeadm's admin kubeconfig has it.
pub const ADMIN_USER: &str = "kubernetes-admin";
/// The prefix of ServiceAccount user names: `system:serviceaccount:<namespace>:<name>`.
pub const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// An authenticated (or anonymous) user: Kubernetes' `user.Info`.
///
/// Serializes as `authentication.k8s.io/v1` `UserInfo` (`username`, `uid`, `groups`, `extra`,
/// empty ones left out), so TokenReview and SelfSubjectReview can answer with it directly.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct UserInfo {
    /// The user name, unique among users (`alice`, `system:serviceaccount:ns:sa`).
    #[serde(rename = "username", skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// A stable identifier, when the authenticator has one.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub uid: String,
    /// The groups the user belongs to; RBAC Group subjects match these.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Authenticator-specific attributes (e.g. a ServiceAccount token's pod name).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    /// The holder of the admin credential: in `system:masters`, so allowed everything.
    pub fn admin() -> Self {
        Self {
            name: ADMIN_USER.into(),
            groups: vec![SYSTEM_MASTERS.into(), AUTHENTICATED.into()],
            ..Self::default()
        }
    }

    /// A request without credentials, as kube-apiserver's anonymous authenticator names it.
    pub fn anonymous() -> Self {
        Self {
            name: ANONYMOUS_USER.into(),
            groups: vec![UNAUTHENTICATED.into()],
            ..Self::default()
        }
    }

    /// Whether the user is in `group`.
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }

    /// Whether this is the ServiceAccount `namespace/name`, i.e. the user name is
    /// `system:serviceaccount:<namespace>:<name>` (compared without building that string).
    pub fn is_service_account(&self, namespace: &str, name: &str) -> bool {
        self.name
            .strip_prefix(SERVICE_ACCOUNT_PREFIX)
            .and_then(|rest| rest.strip_prefix(namespace))
            .and_then(|rest| rest.strip_prefix(':'))
            == Some(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_and_anonymous_have_kubernetes_groups() {
        let admin = UserInfo::admin();
        assert_eq!(admin.name, "kubernetes-admin");
        assert!(admin.in_group(SYSTEM_MASTERS) && admin.in_group(AUTHENTICATED));
        let anonymous = UserInfo::anonymous();
        assert_eq!(anonymous.name, "system:anonymous");
        assert_eq!(anonymous.groups, vec!["system:unauthenticated"]);
        assert!(!anonymous.in_group(AUTHENTICATED));
    }

    #[test]
    fn service_account_names_match_exactly() {
        let sa = UserInfo {
            name: "system:serviceaccount:prod:builder".into(),
            ..UserInfo::default()
        };
        assert!(sa.is_service_account("prod", "builder"));
        assert!(!sa.is_service_account("prod", "build"));
        assert!(!sa.is_service_account("pro", "d:builder"));
        assert!(!sa.is_service_account("", "builder"));
        assert!(!UserInfo::admin().is_service_account("prod", "builder"));
    }

    #[test]
    fn serializes_as_authentication_user_info() {
        let json = serde_json::to_value(UserInfo::admin()).unwrap_or_default();
        assert_eq!(
            json,
            serde_json::json!({
                "username": "kubernetes-admin",
                "groups": ["system:masters", "system:authenticated"],
            })
        );
    }
}

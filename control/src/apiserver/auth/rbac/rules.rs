//! RBAC policy rules: whether a rule allows a request, whether one set of rules covers another
//! (the escalation check), and the compact text Kubernetes prints for a rule.
//!
//! Rules are matched as stored (`PolicyRule`), with comparisons that allocate nothing: a
//! request is checked against a few dozen short strings, and keeping the API type avoids a
//! second representation that would have to stay in step with it.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::rbac::v1::PolicyRule;

use crate::apiserver::auth::go_format::{aggregate, quote, quote_list};
use crate::apiserver::auth::request_info::RequestInfo;
use crate::apiserver::auth::user::UserInfo;

/// `*` in verbs, apiGroups, resources and nonResourceURLs: everything.
pub const ALL: &str = "*";

fn list(field: &Option<Vec<String>>) -> &[String] {
    field.as_deref().unwrap_or_default()
}

/// Whether `rule` allows the request (Kubernetes' `RuleAllows`): for a resource request the
/// verb, API group, resource (`res`, `res/sub`, `*/sub` or `*`) and name (when the rule lists
/// names) must all match; for a non-resource request the verb and the path (exact, `*`, or a
/// prefix ending in `*`).
pub fn allows(rule: &PolicyRule, request: &RequestInfo) -> bool {
    if !verb_matches(rule, &request.verb) {
        return false;
    }
    if request.is_resource_request {
        api_group_matches(rule, &request.api_group)
            && resource_matches(rule, &request.resource, &request.subresource)
            && resource_name_matches(rule, &request.name)
    } else {
        non_resource_url_matches(rule, &request.path)
    }
}

/// Whether any of `rules` allows the request.
pub fn any_allows(rules: &[PolicyRule], request: &RequestInfo) -> bool {
    rules.iter().any(|rule| allows(rule, request))
}

fn verb_matches(rule: &PolicyRule, verb: &str) -> bool {
    rule.verbs.iter().any(|v| v == ALL || v == verb)
}

fn api_group_matches(rule: &PolicyRule, group: &str) -> bool {
    list(&rule.api_groups)
        .iter()
        .any(|g| g == ALL || g == group)
}

/// `resource` alone, or `resource/subresource`, compared without joining them.
fn resource_matches(rule: &PolicyRule, resource: &str, subresource: &str) -> bool {
    list(&rule.resources).iter().any(|r| {
        if r == ALL {
            return true;
        }
        if subresource.is_empty() {
            return r == resource;
        }
        let combined = r
            .strip_prefix(resource)
            .and_then(|rest| rest.strip_prefix('/'))
            == Some(subresource);
        combined || r.strip_prefix("*/") == Some(subresource)
    })
}

/// A rule without names allows every name; one with names only those (so never a list).
fn resource_name_matches(rule: &PolicyRule, name: &str) -> bool {
    let names = list(&rule.resource_names);
    names.is_empty() || names.iter().any(|n| n == name)
}

fn non_resource_url_matches(rule: &PolicyRule, path: &str) -> bool {
    list(&rule.non_resource_urls)
        .iter()
        .any(|url| url == ALL || url_covers(url, path))
}

/// `owner` is the path itself, or ends in `*` and the path starts with what precedes the
/// star(s).
fn url_covers(owner: &str, path: &str) -> bool {
    owner == path || (owner.ends_with('*') && path.starts_with(owner.trim_end_matches('*')))
}

/// Whether `owner` rules grant everything `servant` rules do (Kubernetes' `Covers`, used to
/// stop a user from granting permissions they do not hold). Every servant rule is broken down
/// into single verb × group × resource × name (or verb × URL) rules, and each piece must be
/// covered by one owner rule. Returns the pieces no owner rule covers.
///
/// A `*` in the servant is compared as written: only an owner `*` covers it.
pub fn covers(owner: &[PolicyRule], servant: &[PolicyRule]) -> (bool, Vec<PolicyRule>) {
    let uncovered: Vec<PolicyRule> = servant
        .iter()
        .flat_map(breakdown)
        .filter(|piece| !owner.iter().any(|o| rule_covers(o, piece)))
        .collect();
    (uncovered.is_empty(), uncovered)
}

/// The rule as single verb × group × resource × name rules, then verb × URL rules
/// (Kubernetes' `BreakdownRule`).
pub fn breakdown(rule: &PolicyRule) -> Vec<PolicyRule> {
    let one = |s: &String| Some(vec![s.clone()]);
    let mut pieces = Vec::new();
    for group in list(&rule.api_groups) {
        for resource in list(&rule.resources) {
            for verb in &rule.verbs {
                let piece = |name: Option<&String>| PolicyRule {
                    api_groups: one(group),
                    resources: one(resource),
                    verbs: vec![verb.clone()],
                    resource_names: name.and_then(one),
                    non_resource_urls: None,
                };
                let names = list(&rule.resource_names);
                if names.is_empty() {
                    pieces.push(piece(None));
                } else {
                    pieces.extend(names.iter().map(|n| piece(Some(n))));
                }
            }
        }
    }
    for url in list(&rule.non_resource_urls) {
        for verb in &rule.verbs {
            pieces.push(PolicyRule {
                non_resource_urls: one(url),
                verbs: vec![verb.clone()],
                ..PolicyRule::default()
            });
        }
    }
    pieces
}

fn has(set: &[String], item: &str) -> bool {
    set.iter().any(|s| s == item)
}

fn has_all(set: &[String], items: &[String]) -> bool {
    items.iter().all(|i| has(set, i))
}

/// Whether `owner` covers `piece` (one verb, and at most one group, resource, name or URL).
fn rule_covers(owner: &PolicyRule, piece: &PolicyRule) -> bool {
    let verbs = has(&owner.verbs, ALL) || has_all(&owner.verbs, &piece.verbs);
    let owner_groups = list(&owner.api_groups);
    let groups = has(owner_groups, ALL) || has_all(owner_groups, list(&piece.api_groups));
    let resources = resources_cover(list(&owner.resources), list(&piece.resources));
    let urls = list(&piece.non_resource_urls).iter().all(|path| {
        list(&owner.non_resource_urls)
            .iter()
            .any(|o| url_covers(o, path))
    });
    let owner_names = list(&owner.resource_names);
    let piece_names = list(&piece.resource_names);
    let names =
        owner_names.is_empty() || (!piece_names.is_empty() && has_all(owner_names, piece_names));
    verbs && groups && resources && urls && names
}

/// Owner resources cover `resources` when they hold `*`, each resource itself, or `*/sub`
/// for a `res/sub`.
fn resources_cover(owner: &[String], resources: &[String]) -> bool {
    if has(owner, ALL) {
        return true;
    }
    resources.iter().all(|r| {
        has(owner, r)
            || r.split_once('/')
                .is_some_and(|(_, sub)| owner.iter().any(|o| o.strip_prefix("*/") == Some(sub)))
    })
}

/// Kubernetes' `CompactString`: the rule's non-empty fields as Go prints them, e.g.
/// `{APIGroups:[""], Resources:["secrets"], Verbs:["get"]}`.
pub fn compact_string(rule: &PolicyRule) -> String {
    let fields: [(&str, &[String]); 5] = [
        ("APIGroups", list(&rule.api_groups)),
        ("Resources", list(&rule.resources)),
        ("NonResourceURLs", list(&rule.non_resource_urls)),
        ("ResourceNames", list(&rule.resource_names)),
        ("Verbs", &rule.verbs),
    ];
    let parts: Vec<String> = fields
        .iter()
        .filter(|(_, values)| !values.is_empty())
        .map(|(label, values)| format!("{label}:{}", quote_list(values)))
        .collect();
    format!("{{{}}}", parts.join(", "))
}

/// Kubernetes' `CompactRules`: rules with exactly one group and one resource and nothing but
/// verbs besides are merged per group and resource, their verbs appended; the others are kept
/// as they are. Made for the broken-down pieces [`covers`] returns.
pub fn compact_rules(rules: &[PolicyRule]) -> Vec<PolicyRule> {
    let mut compacted = Vec::with_capacity(rules.len());
    let mut simple: BTreeMap<(&str, &str), PolicyRule> = BTreeMap::new();
    for rule in rules {
        let names_or_urls =
            !list(&rule.resource_names).is_empty() || !list(&rule.non_resource_urls).is_empty();
        match (list(&rule.api_groups), list(&rule.resources)) {
            ([group], [resource]) if !names_or_urls => {
                simple
                    .entry((group, resource))
                    .and_modify(|merged| merged.verbs.extend(rule.verbs.iter().cloned()))
                    .or_insert_with(|| rule.clone());
            }
            _ => compacted.push(rule.clone()),
        }
    }
    compacted.extend(simple.into_values());
    compacted
}

/// The message of Kubernetes' `ConfirmNoEscalation` when `user` tries to grant the `missing`
/// rules: the compacted missing rules, one per line, sorted and without repeats, then the
/// errors met resolving the user's own rules, if any.
pub fn escalation_message(
    user: &UserInfo,
    missing: &[PolicyRule],
    resolution_errors: &[String],
) -> String {
    let descriptions: BTreeSet<String> =
        compact_rules(missing).iter().map(compact_string).collect();
    let mut message = format!(
        "user {} (groups={}) is attempting to grant RBAC permissions not currently held:\n{}",
        quote(&user.name),
        quote_list(&user.groups),
        descriptions.into_iter().collect::<Vec<_>>().join("\n"),
    );
    if !resolution_errors.is_empty() {
        // Go prints a one-element []error holding the aggregate of the errors.
        message.push_str(&format!(
            "; resolution errors: [{}]",
            aggregate(resolution_errors)
        ));
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::auth::request_info::resolve;

    fn strings(items: &[&str]) -> Option<Vec<String>> {
        (!items.is_empty()).then(|| items.iter().map(|s| s.to_string()).collect())
    }

    /// A resource rule: verbs, groups, resources, names.
    fn rule(verbs: &[&str], groups: &[&str], resources: &[&str], names: &[&str]) -> PolicyRule {
        PolicyRule {
            verbs: strings(verbs).unwrap_or_default(),
            api_groups: strings(groups),
            resources: strings(resources),
            resource_names: strings(names),
            non_resource_urls: None,
        }
    }

    fn url_rule(verbs: &[&str], urls: &[&str]) -> PolicyRule {
        PolicyRule {
            verbs: strings(verbs).unwrap_or_default(),
            non_resource_urls: strings(urls),
            ..PolicyRule::default()
        }
    }

    fn request(method: http::Method, url: &str) -> RequestInfo {
        let (path, query) = match url.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (url, None),
        };
        resolve(&method, path, query)
    }

    #[test]
    fn resource_rules_match_verb_group_resource_and_name() {
        use http::Method as M;
        let get_pods = rule(&["get"], &[""], &["pods"], &[]);
        assert!(allows(
            &get_pods,
            &request(M::GET, "/api/v1/namespaces/a/pods/p")
        ));
        assert!(!allows(
            &get_pods,
            &request(M::GET, "/api/v1/namespaces/a/pods")
        ));
        assert!(!allows(
            &get_pods,
            &request(M::DELETE, "/api/v1/namespaces/a/pods/p")
        ));
        assert!(!allows(
            &get_pods,
            &request(M::GET, "/api/v1/namespaces/a/pods/p/log")
        ));
        assert!(!allows(
            &get_pods,
            &request(M::GET, "/apis/apps/v1/namespaces/a/pods/p")
        ));
        assert!(!allows(
            &get_pods,
            &request(M::GET, "/api/v1/namespaces/a/secrets/p")
        ));

        let star = rule(&["*"], &["*"], &["*"], &[]);
        for url in [
            "/api/v1/pods",
            "/apis/apps/v1/namespaces/a/deployments/d/scale",
        ] {
            assert!(allows(&star, &request(M::DELETE, url)), "{url}");
        }
        // Resource rules never allow non-resource paths.
        assert!(!allows(&star, &request(M::GET, "/healthz")));

        let logs = rule(&["get"], &[""], &["pods/log"], &[]);
        assert!(allows(
            &logs,
            &request(M::GET, "/api/v1/namespaces/a/pods/p/log")
        ));
        assert!(!allows(
            &logs,
            &request(M::GET, "/api/v1/namespaces/a/pods/p")
        ));
        assert!(!allows(
            &logs,
            &request(M::GET, "/api/v1/namespaces/a/pods/p/exec")
        ));
        // `pods/log` must not match resource `pod` with subresource `s/log`, nor `podsX/log`.
        assert!(!allows(
            &rule(&["get"], &[""], &["pods/log"], &[]),
            &RequestInfo {
                is_resource_request: true,
                verb: "get".into(),
                resource: "pod".into(),
                subresource: "s/log".into(),
                ..RequestInfo::default()
            }
        ));

        let any_status = rule(&["update"], &["*"], &["*/status"], &[]);
        assert!(allows(
            &any_status,
            &request(M::PUT, "/api/v1/namespaces/a/pods/p/status")
        ));
        assert!(allows(
            &any_status,
            &request(M::PUT, "/apis/apps/v1/namespaces/a/deployments/d/status")
        ));
        assert!(!allows(
            &any_status,
            &request(M::PUT, "/api/v1/namespaces/a/pods/p")
        ));
        assert!(!allows(
            &any_status,
            &request(M::PUT, "/api/v1/namespaces/a/pods/p/scale")
        ));

        let named = rule(&["get", "list", "watch"], &[""], &["configmaps"], &["cm1"]);
        assert!(allows(
            &named,
            &request(M::GET, "/api/v1/namespaces/a/configmaps/cm1")
        ));
        assert!(!allows(
            &named,
            &request(M::GET, "/api/v1/namespaces/a/configmaps/cm2")
        ));
        // A list is not limited to the names, so a named rule does not allow it...
        assert!(!allows(
            &named,
            &request(M::GET, "/api/v1/namespaces/a/configmaps")
        ));
        // ...unless the field selector pins the name.
        assert!(allows(
            &named,
            &request(
                M::GET,
                "/api/v1/namespaces/a/configmaps?watch=1&fieldSelector=metadata.name%3Dcm1"
            )
        ));

        // No verbs, groups or resources: nothing.
        assert!(!allows(
            &rule(&[], &["*"], &["*"], &[]),
            &request(M::GET, "/api/v1/pods")
        ));
        assert!(!allows(
            &rule(&["*"], &[], &["*"], &[]),
            &request(M::GET, "/api/v1/pods")
        ));
        assert!(!allows(
            &rule(&["*"], &["*"], &[], &[]),
            &request(M::GET, "/api/v1/pods")
        ));
    }

    #[test]
    fn non_resource_rules_match_paths_and_prefixes() {
        use http::Method as M;
        let health = url_rule(&["get"], &["/healthz", "/api", "/api/*"]);
        assert!(allows(&health, &request(M::GET, "/healthz")));
        assert!(!allows(&health, &request(M::GET, "/healthz/x")));
        assert!(!allows(&health, &request(M::POST, "/healthz")));
        assert!(allows(&health, &request(M::GET, "/api")));
        assert!(allows(&health, &request(M::GET, "/api/v1")));
        assert!(!allows(&health, &request(M::GET, "/apis")));
        let everything = url_rule(&["*"], &["*"]);
        assert!(allows(&everything, &request(M::DELETE, "/metrics")));
        // URL rules never allow resources.
        assert!(!allows(&everything, &request(M::GET, "/api/v1/pods")));
        // Kubernetes trims every trailing star.
        assert!(allows(
            &url_rule(&["get"], &["/logs**"]),
            &request(M::GET, "/logs/a")
        ));
    }

    #[test]
    fn covers_follows_the_policy_comparator() {
        // Cases in the spirit of Kubernetes' policy_comparator_test.go.
        // Name, owner rules, servant rules, the uncovered pieces.
        type Case = (
            &'static str,
            Vec<PolicyRule>,
            Vec<PolicyRule>,
            Vec<PolicyRule>,
        );
        let cases: Vec<Case> = vec![
            (
                "exact match",
                vec![rule(&["get", "list"], &["v1"], &["builds"], &[])],
                vec![rule(&["get"], &["v1"], &["builds"], &[])],
                vec![],
            ),
            (
                "star verb, group, resource",
                vec![rule(&["*"], &["*"], &["*"], &[])],
                vec![rule(
                    &["get", "delete"],
                    &["apps", ""],
                    &["deployments", "pods/log"],
                    &["x"],
                )],
                vec![],
            ),
            (
                "missing verb",
                vec![rule(&["get"], &["v1"], &["builds"], &[])],
                vec![rule(&["get", "delete"], &["v1"], &["builds"], &[])],
                vec![rule(&["delete"], &["v1"], &["builds"], &[])],
            ),
            (
                "resource names: owner without names covers named",
                vec![rule(&["get"], &[""], &["pods"], &[])],
                vec![rule(&["get"], &[""], &["pods"], &["a", "b"])],
                vec![],
            ),
            (
                "resource names: named owner does not cover unnamed",
                vec![rule(&["get"], &[""], &["pods"], &["a"])],
                vec![rule(&["get"], &[""], &["pods"], &[])],
                vec![rule(&["get"], &[""], &["pods"], &[])],
            ),
            (
                "resource names: partially covered",
                vec![rule(&["get"], &[""], &["pods"], &["a"])],
                vec![rule(&["get"], &[""], &["pods"], &["a", "b"])],
                vec![rule(&["get"], &[""], &["pods"], &["b"])],
            ),
            (
                "star subresource",
                vec![rule(&["get"], &[""], &["*/status"], &[])],
                vec![rule(
                    &["get"],
                    &[""],
                    &["pods/status", "nodes/status", "pods"],
                    &[],
                )],
                vec![rule(&["get"], &[""], &["pods"], &[])],
            ),
            (
                "a servant star is only covered by a star",
                vec![rule(&["get", "list"], &[""], &["pods", "secrets"], &[])],
                vec![
                    rule(&["*"], &[""], &["pods"], &[]),
                    rule(&["get"], &[""], &["*"], &[]),
                ],
                vec![
                    rule(&["*"], &[""], &["pods"], &[]),
                    rule(&["get"], &[""], &["*"], &[]),
                ],
            ),
            (
                "group mismatch",
                vec![rule(&["get"], &["apps"], &["deployments"], &[])],
                vec![rule(&["get"], &["extensions"], &["deployments"], &[])],
                vec![rule(&["get"], &["extensions"], &["deployments"], &[])],
            ),
            (
                "urls: exact, prefix star, star",
                vec![url_rule(&["get"], &["/healthz", "/api/*"])],
                vec![url_rule(
                    &["get"],
                    &["/healthz", "/api/v1", "/api/*", "/apis"],
                )],
                vec![url_rule(&["get"], &["/apis"])],
            ),
            (
                "urls are not covered by resource rules",
                vec![rule(&["*"], &["*"], &["*"], &[])],
                vec![url_rule(&["get"], &["/healthz"])],
                vec![url_rule(&["get"], &["/healthz"])],
            ),
            (
                "star url covers every url",
                vec![url_rule(&["*"], &["*"])],
                vec![url_rule(&["get", "post"], &["/a", "/b/*", "*"])],
                vec![],
            ),
            (
                "several owners cover different pieces",
                vec![
                    rule(&["get"], &[""], &["pods"], &[]),
                    rule(&["list"], &[""], &["pods"], &[]),
                ],
                vec![rule(&["get", "list"], &[""], &["pods"], &[])],
                vec![],
            ),
            (
                "nothing owned",
                vec![],
                vec![rule(&["get"], &[""], &["pods"], &[])],
                vec![rule(&["get"], &[""], &["pods"], &[])],
            ),
        ];
        for (name, owner, servant, uncovered) in cases {
            let (covered, missing) = covers(&owner, &servant);
            assert_eq!(missing, uncovered, "{name}");
            assert_eq!(covered, uncovered.is_empty(), "{name}");
        }
    }

    #[test]
    fn breakdown_splits_every_dimension() {
        let pieces = breakdown(&PolicyRule {
            verbs: vec!["get".into(), "list".into()],
            api_groups: strings(&["", "apps"]),
            resources: strings(&["pods"]),
            resource_names: strings(&["a", "b"]),
            non_resource_urls: strings(&["/x"]),
        });
        assert_eq!(pieces.len(), 2 * 2 * 2 + 2);
        assert_eq!(pieces[0], rule(&["get"], &[""], &["pods"], &["a"]));
        assert_eq!(pieces[8], url_rule(&["get"], &["/x"]));
    }

    #[test]
    fn compact_strings_print_as_go_does() {
        assert_eq!(
            compact_string(&rule(&["get"], &[""], &["secrets"], &[])),
            r#"{APIGroups:[""], Resources:["secrets"], Verbs:["get"]}"#
        );
        assert_eq!(
            compact_string(&rule(
                &["get", "list"],
                &["apps", ""],
                &["deployments"],
                &["web"]
            )),
            r#"{APIGroups:["apps" ""], Resources:["deployments"], ResourceNames:["web"], Verbs:["get" "list"]}"#
        );
        assert_eq!(
            compact_string(&url_rule(&["get"], &["/healthz", "/api/*"])),
            r#"{NonResourceURLs:["/healthz" "/api/*"], Verbs:["get"]}"#
        );
        assert_eq!(compact_string(&PolicyRule::default()), "{}");
    }

    #[test]
    fn escalation_messages_compact_and_sort_the_missing_rules() {
        let (_, missing) = covers(
            &[],
            &[
                rule(&["get", "list"], &[""], &["secrets"], &[]),
                rule(&["get"], &[""], &["configmaps"], &["a"]),
                url_rule(&["get"], &["/metrics"]),
            ],
        );
        let user = UserInfo {
            name: "alice".into(),
            groups: vec!["dev".into(), "system:authenticated".into()],
            ..UserInfo::default()
        };
        assert_eq!(
            escalation_message(&user, &missing, &[]),
            "user \"alice\" (groups=[\"dev\" \"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:\n\
             {APIGroups:[\"\"], Resources:[\"configmaps\"], ResourceNames:[\"a\"], Verbs:[\"get\"]}\n\
             {APIGroups:[\"\"], Resources:[\"secrets\"], Verbs:[\"get\" \"list\"]}\n\
             {NonResourceURLs:[\"/metrics\"], Verbs:[\"get\"]}"
        );
        assert!(escalation_message(&user, &missing, &["x not found".into()])
            .ends_with("; resolution errors: [x not found]"));
    }
}

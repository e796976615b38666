//! Users and permissions end to end, with the real kubectl: a user with a client certificate
//! from `skiff-control user`, given `view` in one namespace by a RoleBinding, as the README's
//! "Users and permissions" section tells an admin to do.

use std::time::Duration;

use skiff_e2e::{wait_for, ControlPlane};

fn forbidden(out: &std::process::Output, expected: &str) {
    assert!(
        !out.status.success(),
        "expected a refusal: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.to_lowercase().contains("forbidden") && err.contains(expected),
        "expected Forbidden with {expected:?}: {err}"
    );
}

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_user_bound_to_view_in_one_namespace_reads_there_and_nothing_more() {
    let cp = ControlPlane::start();
    for ns in ["dev", "prod"] {
        cp.kubectl(&["create", "namespace", ns]);
        cp.kubectl(&["-n", ns, "run", "web", "--image=kubia:v1"]);
    }
    cp.kubectl(&[
        "-n",
        "dev",
        "create",
        "secret",
        "generic",
        "db",
        "--from-literal=pw=hunter2",
    ]);
    let alice = cp.user_kubeconfig("alice", &["developers"]);

    // Before any binding: nothing.
    forbidden(
        &cp.kubectl_as(&alice, &["-n", "dev", "get", "pods"]),
        r#"User "alice" cannot list resource "pods" in API group "" in the namespace "dev""#,
    );

    cp.kubectl(&[
        "-n",
        "dev",
        "create",
        "rolebinding",
        "alice-view",
        "--clusterrole=view",
        "--user=alice",
    ]);
    // The authorizer follows RBAC objects by watch: the binding applies within moments.
    wait_for("alice's binding to apply", Duration::from_secs(10), || {
        cp.kubectl_as(&alice, &["-n", "dev", "get", "pods"])
            .status
            .success()
    });
    let pods = ok(&cp.kubectl_as(&alice, &["-n", "dev", "get", "pods", "-o", "name"]));
    assert_eq!(pods.trim(), "pod/web");
    // Watch is a read too (one event, then the server ends the watch).
    let watched = ok(&cp.kubectl_as(
        &alice,
        &[
            "get",
            "--raw",
            "/api/v1/namespaces/dev/pods?watch=true&timeoutSeconds=1",
        ],
    ));
    assert!(watched.contains(r#""type":"ADDED""#), "{watched}");

    // Writes, secrets, exec and other namespaces stay closed, each in Kubernetes' words.
    forbidden(
        &cp.kubectl_as(&alice, &["-n", "dev", "run", "mine", "--image=kubia:v1"]),
        r#"User "alice" cannot create resource "pods" in API group "" in the namespace "dev""#,
    );
    forbidden(
        &cp.kubectl_as(&alice, &["-n", "dev", "delete", "pod", "web"]),
        r#"User "alice" cannot delete resource "pods" in API group "" in the namespace "dev""#,
    );
    forbidden(
        &cp.kubectl_as(&alice, &["-n", "dev", "get", "secret", "db"]),
        r#"User "alice" cannot get resource "secrets" in API group "" in the namespace "dev""#,
    );
    forbidden(
        &cp.kubectl_as(&alice, &["-n", "dev", "exec", "web", "--", "true"]),
        r#"cannot create resource "pods/exec""#,
    );
    forbidden(
        &cp.kubectl_as(&alice, &["-n", "prod", "get", "pods"]),
        r#"User "alice" cannot list resource "pods" in API group "" in the namespace "prod""#,
    );
    forbidden(
        &cp.kubectl_as(&alice, &["get", "nodes"]),
        r#"User "alice" cannot list resource "nodes" in API group "" at the cluster scope"#,
    );
    // Granting herself more is a write she has no right to.
    forbidden(
        &cp.kubectl_as(
            &alice,
            &[
                "-n",
                "dev",
                "create",
                "rolebinding",
                "alice-admin",
                "--clusterrole=cluster-admin",
                "--user=alice",
            ],
        ),
        r#"cannot create resource "rolebindings" in API group "rbac.authorization.k8s.io""#,
    );
    // The secret was not read, and nothing was written on her behalf.
    assert_eq!(
        cp.kubectl(&["-n", "dev", "get", "pods", "-o", "name"])
            .trim(),
        "pod/web"
    );

    // Removing the binding takes the access away again.
    cp.kubectl(&["-n", "dev", "delete", "rolebinding", "alice-view"]);
    wait_for("alice's access to end", Duration::from_secs(10), || {
        !cp.kubectl_as(&alice, &["-n", "dev", "get", "pods"])
            .status
            .success()
    });
}

/// A user who may write roles and bindings in a namespace can grant only what she holds
/// herself, unless she is allowed to `bind` the role (or `escalate`), as in Kubernetes.
#[test]
fn granting_more_than_you_hold_is_refused() {
    let cp = ControlPlane::start();
    cp.kubectl(&["create", "namespace", "dev"]);
    cp.kubectl(&[
        "-n",
        "dev",
        "create",
        "role",
        "rbac-writer",
        "--verb=create,get,list",
        "--resource=roles.rbac.authorization.k8s.io,rolebindings.rbac.authorization.k8s.io",
    ]);
    for (binding, role) in [
        ("alice-writer", "role=rbac-writer"),
        ("alice-view", "clusterrole=view"),
    ] {
        let (flag, name) = role.split_once('=').unwrap();
        cp.kubectl(&[
            "-n",
            "dev",
            "create",
            "rolebinding",
            binding,
            &format!("--{flag}={name}"),
            "--user=alice",
        ]);
    }
    let alice = cp.user_kubeconfig("alice", &[]);
    wait_for("alice's bindings to apply", Duration::from_secs(10), || {
        cp.kubectl_as(&alice, &["-n", "dev", "get", "rolebindings"])
            .status
            .success()
    });

    // What she holds she may pass on...
    ok(&cp.kubectl_as(
        &alice,
        &[
            "-n",
            "dev",
            "create",
            "rolebinding",
            "bob-view",
            "--clusterrole=view",
            "--user=bob",
        ],
    ));
    ok(&cp.kubectl_as(
        &alice,
        &[
            "-n",
            "dev",
            "create",
            "role",
            "pod-reader",
            "--verb=get",
            "--resource=pods",
        ],
    ));
    // ...but not edit's writes, nor secrets.
    forbidden(
        &cp.kubectl_as(
            &alice,
            &[
                "-n",
                "dev",
                "create",
                "rolebinding",
                "bob-edit",
                "--clusterrole=edit",
                "--user=bob",
            ],
        ),
        r#"user "alice" (groups=["system:authenticated"]) is attempting to grant RBAC permissions not currently held"#,
    );
    forbidden(
        &cp.kubectl_as(
            &alice,
            &[
                "-n",
                "dev",
                "create",
                "role",
                "secret-reader",
                "--verb=get",
                "--resource=secrets",
            ],
        ),
        r#"{APIGroups:[""], Resources:["secrets"], Verbs:["get"]}"#,
    );
    assert!(!cp
        .kubectl_output(&["-n", "dev", "get", "role", "secret-reader"], None)
        .status
        .success());

    // Allowed to bind edit by name, she may bind it without holding it.
    cp.kubectl(&[
        "create",
        "clusterrole",
        "edit-binder",
        "--verb=bind",
        "--resource=clusterroles.rbac.authorization.k8s.io",
        "--resource-name=edit",
    ]);
    cp.kubectl(&[
        "-n",
        "dev",
        "create",
        "rolebinding",
        "alice-edit-binder",
        "--clusterrole=edit-binder",
        "--user=alice",
    ]);
    wait_for(
        "alice's bind right to apply",
        Duration::from_secs(10),
        || {
            cp.kubectl_as(
                &alice,
                &[
                    "-n",
                    "dev",
                    "create",
                    "rolebinding",
                    "bob-edit",
                    "--clusterrole=edit",
                    "--user=bob",
                ],
            )
            .status
            .success()
        },
    );
}

/// `kubectl --as`: the admin may act as anyone; a user may only if allowed to `impersonate`.
#[test]
fn impersonation_needs_the_impersonate_verb() {
    let cp = ControlPlane::start();
    cp.kubectl(&["create", "namespace", "dev"]);
    cp.kubectl(&[
        "-n",
        "dev",
        "create",
        "rolebinding",
        "alice-view",
        "--clusterrole=view",
        "--user=alice",
    ]);
    // The admin acting as alice gets alice's rights.
    wait_for("alice's binding to apply", Duration::from_secs(10), || {
        cp.kubectl_output(&["--as", "alice", "-n", "dev", "get", "pods"], None)
            .status
            .success()
    });
    forbidden(
        &cp.kubectl_output(&["--as", "alice", "-n", "dev", "get", "secrets"], None),
        r#"User "alice" cannot list resource "secrets""#,
    );
    // `kubectl auth can-i --as` agrees with what happens.
    let can = |args: &[&str]| {
        let mut all = vec!["auth", "can-i", "--as", "alice", "-n", "dev"];
        all.extend_from_slice(args);
        String::from_utf8_lossy(&cp.kubectl_output(&all, None).stdout)
            .trim()
            .to_owned()
    };
    assert_eq!(can(&["list", "pods"]), "yes");
    assert_eq!(can(&["watch", "pods"]), "yes");
    assert_eq!(can(&["delete", "pods"]), "no");
    assert_eq!(can(&["get", "secrets"]), "no");
    assert_eq!(can(&["create", "pods/exec"]), "no");
    // alice may not act as the admin.
    let alice = cp.user_kubeconfig("alice", &[]);
    forbidden(
        &cp.kubectl_as(&alice, &["--as", "kubernetes-admin", "get", "nodes"]),
        r#"users "kubernetes-admin" is forbidden: User "alice" cannot impersonate resource "users" in API group "" at the cluster scope"#,
    );
}

//! A node's own credentials on a real cluster: each agent joined with a bootstrap token and
//! holds a certificate for `system:node:<name>` (0600, in its root's 0700 `pki/`). With
//! node-1's certificate, the real kubectl reads the Secret of a pod bound to node-1 but not
//! one used only by a pod on node-2, and cannot change node-2's Node or delete its pods. A
//! join with a wrong token fails with a clear message. Needs root.

use std::os::unix::fs::PermissionsExt as _;
use std::process::{Command, Output};

use serde_json::json;
use skiff_e2e::cluster::{Guard, Options};
use skiff_e2e::kubectl::Kubectl;
use skiff_e2e::{agent_bin, kubectl_bin};
use skiff_test_support::require_root;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_node_credential_reaches_only_its_own_pods_objects() {
    require_root!("network namespaces, containers");
    let c = Guard::test(&Options::test("tnode", 215, 2));
    let k = Kubectl(c.state.kubeconfig.clone());
    for (node, secret) in [("node-1", "db-1"), ("node-2", "db-2")] {
        k.run(&["create", "secret", "generic", secret, "--from-literal=pw=x"]);
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("uses-{secret}")},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "kubia:v1"}],
                "volumes": [{"name": "s", "secret": {"secretName": secret}}]}});
        k.apply(&pod.to_string());
    }

    // The control plane's data (the store holds every Secret) and keys are its alone.
    assert_eq!(mode(&c.dir.join("control")), 0o700);
    assert_eq!(mode(&c.dir.join("control/pki/sa.key")), 0o600);
    let node1 = &c.state.nodes[0];
    assert_eq!(node1.name, "node-1");
    let pki = node1.root_dir.join("pki");
    let cert = pki.join("kubelet-client-current.pem");
    assert_eq!(mode(&pki), 0o700);
    assert_eq!(mode(&cert), 0o600);
    let server = k.run(&[
        "config",
        "view",
        "-o",
        "jsonpath={.clusters[0].cluster.server}",
    ]);
    let ca = c.dir.join("control/pki/ca.crt");
    let as_node1 = |args: &[&str]| -> Output {
        Command::new(kubectl_bin())
            .env_remove("KUBECONFIG")
            .env("HOME", c.dir.as_os_str())
            .arg("--kubeconfig=/dev/null")
            .arg(format!("--server={}", server.trim()))
            .arg(format!("--certificate-authority={}", ca.display()))
            .arg(format!("--client-certificate={}", cert.display()))
            .arg(format!("--client-key={}", cert.display()))
            .args(args)
            .output()
            .expect("kubectl runs")
    };
    let me = as_node1(&[
        "auth",
        "whoami",
        "-o",
        "jsonpath={.status.userInfo.username}",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&me.stdout),
        "system:node:node-1",
        "{}",
        stderr(&me)
    );

    let own = as_node1(&["get", "secret", "db-1", "-o", "name"]);
    assert!(own.status.success(), "{}", stderr(&own));
    for (args, expected) in [
        (
            &["get", "secret", "db-2"][..],
            "no relationship found between node 'node-1' and this object",
        ),
        (&["get", "secrets"][..], "cannot list resource \"secrets\""),
        (
            &["label", "node", "node-2", "owner=node-1"][..],
            "node \"node-1\" is not allowed to modify node \"node-2\"",
        ),
        (
            &["delete", "pod", "uses-db-2", "--wait=false"][..],
            "node \"node-1\" can only delete pods with spec.nodeName set to itself",
        ),
    ] {
        let out = as_node1(args);
        assert!(!out.status.success(), "{args:?} was allowed");
        let err = stderr(&out);
        assert!(
            err.contains("Forbidden") || err.contains("forbidden"),
            "{args:?}: {err}"
        );
        assert!(err.contains(expected), "{args:?}: {err}");
    }
}

#[test]
fn a_join_with_a_wrong_token_fails_clearly() {
    require_root!("network namespaces, containers");
    let c = Guard::test(&Options::test("tjoin", 216, 1));
    let k = Kubectl(c.state.kubeconfig.clone());
    let server = k.run(&[
        "config",
        "view",
        "-o",
        "jsonpath={.clusters[0].cluster.server}",
    ]);
    let root = tempfile::tempdir().unwrap();
    // The CA given, so the API server itself judges the token (a CSR with it as bearer).
    let out = Command::new(agent_bin())
        .args([
            "--server",
            server.trim(),
            "--token",
            "abcdef.0123456789abcdef",
        ])
        .arg("--ca-file")
        .arg(c.dir.join("control/pki/ca.crt"))
        .args(["--node-name", "intruder", "--root-dir"])
        .arg(root.path())
        .output()
        .expect("skiff-agent runs");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("refused the join token (401 Unauthorized)"),
        "{err}"
    );
    let nodes = k.run(&["get", "nodes", "-o", "name"]);
    assert!(!nodes.contains("intruder"), "{nodes}");
}

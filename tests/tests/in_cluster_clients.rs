//! Workloads that talk to the API, end to end: a pod's ServiceAccount token, CA and namespace
//! appear at /var/run/secrets/kubernetes.io/serviceaccount, and the real kubectl inside the pod,
//! with no kubeconfig (the standard in-cluster configuration: KUBERNETES_SERVICE_HOST and the
//! mounted token), reaches the API through the `kubernetes` Service and is allowed exactly what
//! the account is bound to. The token dies with its pod. Needs root.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use skiff_e2e::cluster::{Guard, Options};
use skiff_e2e::kubectl::Kubectl;
use skiff_e2e::{kubectl_bin, wait_for};
use skiff_test_support::require_root;

const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// `kubectl` run inside the pod (the host's static binary, mounted read-only), with no
/// kubeconfig: stdout on success, the error text on failure.
fn in_pod(k: &Kubectl, args: &str) -> Result<String, String> {
    let out = k.output(
        &[
            "-n",
            "apps",
            "exec",
            "lister",
            "--",
            "sh",
            "-c",
            &format!("/opt/kubectl --cache-dir=/tmp/kube-cache {args} 2>&1; echo rc=$?"),
        ],
        None,
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    match text.trim_end().rsplit_once("rc=") {
        Some((body, "0")) => Ok(body.to_owned()),
        _ => Err(text),
    }
}

#[test]
fn a_pod_uses_its_service_account_through_the_kubernetes_service() {
    require_root!("network namespaces, containers, BPF");
    // The kubernetes Service's address is translated by the node's service proxy.
    let c = Guard::test(&Options {
        proxy_mode: "ebpf".into(),
        ..Options::test("tincl", 214, 1)
    });
    let k = Kubectl(c.state.kubeconfig.clone());
    k.run(&["create", "namespace", "apps"]);
    k.run(&["-n", "apps", "create", "serviceaccount", "lister"]);
    let kubectl = kubectl_bin();
    let kubectl = kubectl.canonicalize().unwrap_or(kubectl);
    assert!(Path::new(&kubectl).is_file());
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "lister", "namespace": "apps"},
        "spec": {
            "serviceAccountName": "lister",
            "containers": [{
                "name": "c", "image": "busybox", "command": ["sleep", "3600"],
                "volumeMounts": [{"name": "kubectl", "mountPath": "/opt/kubectl", "readOnly": true}],
            }],
            "volumes": [{"name": "kubectl", "hostPath": {"path": kubectl, "type": "File"}}],
        },
    });
    k.apply(&pod.to_string());
    wait_for("the lister pod to run", Duration::from_secs(90), || {
        let out = k.output(
            &[
                "-n",
                "apps",
                "get",
                "pod",
                "lister",
                "-o",
                "jsonpath={.status.phase}",
            ],
            None,
        );
        out.stdout == b"Running"
    });

    // The projected volume, as Kubernetes lays it out.
    let files = k.run(&[
        "-n", "apps", "exec", "lister", "--", "sh", "-c",
        &format!("cat {SA_DIR}/namespace; echo; ls -a {SA_DIR}; head -c 3 {SA_DIR}/token; echo; head -1 {SA_DIR}/ca.crt"),
    ]);
    let lines: Vec<&str> = files.lines().collect();
    assert_eq!(lines[0], "apps", "{files}");
    for name in ["..data", "ca.crt", "namespace", "token"] {
        assert!(lines.contains(&name), "{name} in {files}");
    }
    assert!(files.contains("eyJ"), "a JWT: {files}");
    assert!(files.contains("-----BEGIN CERTIFICATE-----"), "{files}");

    // Who the pod is, and what it may do before any binding: nothing.
    let me = in_pod(&k, "auth whoami -o jsonpath={.status.userInfo.username}").unwrap();
    assert_eq!(me.trim(), "system:serviceaccount:apps:lister");
    let refused = in_pod(&k, "get pods").unwrap_err();
    assert!(
        refused.contains(
            r#"User "system:serviceaccount:apps:lister" cannot list resource "pods" in API group "" in the namespace "apps""#
        ),
        "{refused}"
    );

    k.run(&[
        "-n",
        "apps",
        "create",
        "role",
        "pod-reader",
        "--verb=get,list,watch",
        "--resource=pods",
    ]);
    k.run(&[
        "-n",
        "apps",
        "create",
        "rolebinding",
        "lister-reads-pods",
        "--role=pod-reader",
        "--serviceaccount=apps:lister",
    ]);
    let listed = in_pod(&k, "get pods -o name").unwrap();
    assert_eq!(listed.trim(), "pod/lister");
    // Exactly what the Role says: not Secrets, not other namespaces, not deletes.
    assert!(in_pod(&k, "get secrets").unwrap_err().contains("forbidden"));
    assert!(in_pod(&k, "-n default get pods")
        .unwrap_err()
        .contains("forbidden"));
    assert!(in_pod(&k, "delete pod lister --wait=false")
        .unwrap_err()
        .contains("forbidden"));
    let can = in_pod(&k, "auth can-i list pods").unwrap();
    assert_eq!(can.trim(), "yes");

    // The pod's token outside the pod works while the pod lives, and not after.
    let token = k.run(&[
        "-n",
        "apps",
        "exec",
        "lister",
        "--",
        "cat",
        &format!("{SA_DIR}/token"),
    ]);
    // A client with nothing but the token: no kubeconfig, so no client certificate.
    let server = k.run(&[
        "config",
        "view",
        "-o",
        "jsonpath={.clusters[0].cluster.server}",
    ]);
    let ca = c.dir.join("control/pki/ca.crt");
    let as_pod = |args: &[&str]| {
        let mut cmd = Command::new(kubectl_bin());
        cmd.env_remove("KUBECONFIG")
            .env("HOME", c.dir.as_os_str())
            .arg("--kubeconfig=/dev/null")
            .arg(format!("--server={}", server.trim()))
            .arg(format!("--certificate-authority={}", ca.display()))
            .arg(format!("--token={}", token.trim()))
            .args(args);
        cmd.output().expect("kubectl runs")
    };
    let before = as_pod(&["-n", "apps", "get", "pods", "-o", "name"]);
    assert!(
        before.status.success(),
        "{}",
        String::from_utf8_lossy(&before.stderr)
    );
    k.run(&[
        "-n",
        "apps",
        "delete",
        "pod",
        "lister",
        "--wait=true",
        "--timeout=60s",
    ]);
    wait_for(
        "the pod's token to be refused",
        Duration::from_secs(90),
        || {
            let after = as_pod(&["-n", "apps", "get", "pods"]);
            !after.status.success()
                && String::from_utf8_lossy(&after.stderr).contains("Unauthorized")
        },
    );
}

//! Node identity end to end with the real kubectl and skiff-control: a bootstrap token from
//! `skiff-control token create` asks for a node client certificate, which the in-process
//! approver and signer grant; the certificate authenticates as the node. A user's client
//! certificate request goes through `kubectl certificate approve`, which only those allowed
//! to approve for its signer may run; `kubectl certificate deny` and `kubectl get csr` read as
//! in Kubernetes; `cluster-info` is public and signed; a deleted token is refused.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use skiff_e2e::{control_bin, wait_for, ControlPlane};

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A PEM CSR for `cn` in `org` and its key (PEM).
fn request(cn: &str, org: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, org);
    let pem = params.serialize_request(&key).unwrap().pem().unwrap();
    (pem, key.serialize_pem())
}

fn csr_yaml(name: &str, pem: &str, signer: &str, usages: &[&str]) -> String {
    format!(
        "apiVersion: certificates.k8s.io/v1
kind: CertificateSigningRequest
metadata:
  name: {name}
spec:
  request: {}
  signerName: {signer}
  expirationSeconds: 3600
  usages: [{}]
",
        b64(pem),
        usages.join(", ")
    )
}

/// The cluster's CA (PEM) from the admin kubeconfig.
fn ca_data(cp: &ControlPlane) -> String {
    let text = std::fs::read_to_string(&cp.kubeconfig).unwrap();
    text.lines()
        .find_map(|l| l.trim().strip_prefix("certificate-authority-data: "))
        .unwrap()
        .to_owned()
}

/// A kubeconfig for the server with `user` lines (indented under `user:`), or anonymous.
fn kubeconfig(cp: &ControlPlane, name: &str, user: &str) -> PathBuf {
    let path = cp.dir.path().join(format!("{name}.kubeconfig"));
    let text = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: skiff
  cluster:
    server: https://127.0.0.1:{}
    certificate-authority-data: {}
users:
- name: u
  user:
{user}contexts:
- name: c
  context: {{cluster: skiff, user: u}}
current-context: c
",
        cp.port,
        ca_data(cp)
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn token_command(cp: &ControlPlane, args: &[&str]) -> String {
    let out = std::process::Command::new(control_bin())
        .arg("token")
        .args(args)
        .arg("--data-dir")
        .arg(cp.dir.path().join("data"))
        .arg("--server")
        .arg(format!("https://127.0.0.1:{}", cp.port))
        .output()
        .expect("run skiff-control token");
    assert!(
        out.status.success(),
        "skiff-control token {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn output(out: &std::process::Output) -> (bool, String, String) {
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The issued certificate of CSR `name` (PEM), once there.
fn issued(cp: &ControlPlane, name: &str) -> String {
    let mut cert = String::new();
    wait_for(
        &format!("{name} to be issued"),
        Duration::from_secs(20),
        || {
            cert = cp.kubectl(&["get", "csr", name, "-o", "jsonpath={.status.certificate}"]);
            !cert.is_empty()
        },
    );
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(cert.trim())
            .unwrap(),
    )
    .unwrap()
}

/// `kube-public/cluster-info`, read with the client of `config` (kubectl would prompt for a
/// password without credentials; kube-rs asks anonymously).
fn cluster_info(config: &Path) -> k8s_openapi::api::core::v1::ConfigMap {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let kubeconfig = kube::config::Kubeconfig::read_from(config).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .unwrap();
        let client = kube::Client::try_from(config).unwrap();
        kube::Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client, "kube-public")
            .get("cluster-info")
            .await
            .expect("anyone may read cluster-info")
    })
}

fn whoami(cp: &ControlPlane, config: &Path) -> (bool, String, String) {
    output(&cp.kubectl_as(config, &["auth", "whoami", "-o", "json"]))
}

#[test]
fn a_node_joins_with_a_token_and_users_get_certificates_by_approval() {
    let cp = ControlPlane::start();

    // A token, as an admin makes one for a node to join with.
    let join = token_command(&cp, &["create", "--print-join-command", "--ttl", "1h"]);
    let token = join
        .split_whitespace()
        .skip_while(|w| *w != "--token")
        .nth(1)
        .expect("the join command names the token")
        .to_owned();
    assert!(
        join.starts_with(&format!(
            "skiff-agent --server https://127.0.0.1:{} --token ",
            cp.port
        )),
        "{join}"
    );
    let listed = token_command(&cp, &["list"]);
    assert!(
        listed.contains(&token) && listed.contains("authentication,signing"),
        "{listed}"
    );

    // cluster-info is public and signed for the token.
    let anonymous = kubeconfig(&cp, "anonymous", "    {}\n");
    let id = token.split('.').next().unwrap().to_owned();
    wait_for(
        "cluster-info signed for the token",
        Duration::from_secs(10),
        || {
            let data = cluster_info(&anonymous).data.unwrap_or_default();
            data.contains_key(&format!("jws-kubeconfig-{id}"))
        },
    );

    // The token asks for a node client certificate; the controllers approve and sign it.
    let bootstrap = kubeconfig(&cp, "bootstrap", &format!("    token: {token}\n"));
    let (pem, key) = request("system:node:n1", "system:nodes");
    let yaml = csr_yaml(
        "node-csr-n1",
        &pem,
        "kubernetes.io/kube-apiserver-client-kubelet",
        &["digital signature", "client auth"],
    );
    let mut create = cp.kubectl_cmd(&["create", "-f", "-"]);
    create.env("KUBECONFIG", &bootstrap);
    let out = {
        use std::io::Write;
        let mut child = create
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(yaml.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let (ok, _, err) = output(&out);
    assert!(ok, "the token creates its CSR: {err}");
    // Nothing else.
    let (ok, _, err) = output(&cp.kubectl_as(&bootstrap, &["get", "pods", "-A"]));
    assert!(
        !ok && err.contains(&format!("User \"system:bootstrap:{id}\" cannot list")),
        "{err}"
    );

    let cert = issued(&cp, "node-csr-n1");
    let node = kubeconfig(
        &cp,
        "node",
        &format!(
            "    client-certificate-data: {}\n    client-key-data: {}\n",
            b64(&cert),
            b64(&key)
        ),
    );
    let (ok, me, err) = whoami(&cp, &node);
    assert!(ok, "{err}");
    assert!(
        me.contains("\"system:node:n1\"") && me.contains("\"system:nodes\""),
        "{me}"
    );

    let table = cp.kubectl(&["get", "csr"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "AGE",
            "SIGNERNAME",
            "REQUESTOR",
            "REQUESTEDDURATION",
            "CONDITION"
        ]
    );
    let row = table
        .lines()
        .find(|l| l.starts_with("node-csr-n1"))
        .unwrap();
    assert!(
        row.contains("kubernetes.io/kube-apiserver-client-kubelet")
            && row.contains(&format!("system:bootstrap:{id}"))
            && row.contains("60m")
            && row.ends_with("Approved,Issued"),
        "{row}"
    );

    // A user's own client certificate: created by alice, approved only by someone allowed to.
    let alice = cp.user_kubeconfig("alice", &[]);
    cp.kubectl(&[
        "create",
        "clusterrolebinding",
        "alice-csr",
        "--clusterrole=system:node-bootstrapper",
        "--user=alice",
    ]);
    let (pem, _) = request("alice", "developers");
    let yaml = csr_yaml(
        "alice",
        &pem,
        "kubernetes.io/kube-apiserver-client",
        &["client auth"],
    );
    let path = cp.dir.path().join("alice-csr.yaml");
    std::fs::write(&path, yaml).unwrap();
    wait_for("alice may create CSRs", Duration::from_secs(10), || {
        cp.kubectl_as(&alice, &["create", "-f", path.to_str().unwrap()])
            .status
            .success()
    });
    let (ok, _, err) = output(&cp.kubectl_as(&alice, &["certificate", "approve", "alice"]));
    assert!(!ok && err.contains("forbidden"), "{err}");
    let pending = cp.kubectl(&["get", "csr", "alice", "--no-headers"]);
    assert!(pending.trim_end().ends_with("Pending"), "{pending}");
    cp.kubectl(&["certificate", "approve", "alice"]);
    let cert = issued(&cp, "alice");
    assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));
    let approved = cp.kubectl(&["get", "csr", "alice", "--no-headers"]);
    assert!(
        approved.trim_end().ends_with("Approved,Issued"),
        "{approved}"
    );

    // Denied: never signed.
    let (pem, _) = request("mallory", "developers");
    let yaml = csr_yaml(
        "mallory",
        &pem,
        "kubernetes.io/kube-apiserver-client",
        &["client auth"],
    );
    cp.kubectl_stdin(&["create", "-f", "-"], Some(&yaml));
    cp.kubectl(&["certificate", "deny", "mallory"]);
    let denied = cp.kubectl(&["get", "csr", "mallory", "--no-headers"]);
    assert!(denied.trim_end().ends_with("Denied"), "{denied}");

    // A system:masters client certificate cannot even be asked for.
    let (pem, _) = request("root", "system:masters");
    let yaml = csr_yaml(
        "root",
        &pem,
        "kubernetes.io/kube-apiserver-client",
        &["client auth"],
    );
    let err = cp.kubectl_fails(&["create", "-f", "-"], Some(&yaml));
    assert!(err.contains("system:masters group is not allowed"), "{err}");

    // The token deleted: refused.
    token_command(&cp, &["delete", &id]);
    let (ok, _, err) = whoami(&cp, &bootstrap);
    assert!(!ok && err.contains("Unauthorized"), "{err}");
}

//! `kubectl logs` and `kubectl exec` through skiff-control's pods/log and pods/exec, proxied to
//! the node's HTTPS endpoint (agent/src/kubelet/server.rs).
//!
//! The pod manager that maps API pods to running containers is not part of this test: the
//! node's endpoint runs in this process with a small directory that maps the test pod to a
//! real busybox container run by the agent's runtime (so exec is real: libcontainer joins the
//! container). Everything between kubectl and the container is the real code: kubectl, the API
//! server's proxy, the websocket protocol, TLS and the token check. Needs root (containers);
//! skipped with a message otherwise.

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use skiff_agent::kubelet::auth::{ApiReviewer, KubeletAuth};
use skiff_agent::kubelet::directory::{LocateError, Located, PodDirectory};
use skiff_agent::kubelet::identity::rotation::CertSlot;
use skiff_agent::kubelet::identity::store::KeyedCert;
use skiff_agent::kubelet::server::{self, ServerArgs, ServerConfig};
use skiff_agent::runtime::{Container, Runtime};
use skiff_e2e::{agent_bin, wait_for, ControlPlane};
use skiff_test_support::require_root;

struct OnePod {
    container: Container,
}

impl PodDirectory for OnePod {
    fn pods(&self) -> Vec<Pod> {
        Vec::new()
    }

    fn locate(&self, ns: &str, pod: &str, c: Option<&str>) -> Result<Located, LocateError> {
        if (ns, pod) != ("default", "streams") {
            return Err(LocateError::PodNotFound {
                namespace: ns.into(),
                name: pod.into(),
            });
        }
        if c.is_some_and(|c| c != "app") {
            return Err(LocateError::ContainerNotFound {
                pod: pod.into(),
                container: c.unwrap_or_default().into(),
            });
        }
        Ok(Located {
            pod_uid: self.container.pod_uid.clone(),
            container: "app".into(),
            running: Some(self.container.clone()).filter(Container::is_running),
            log: Some(self.container.log_path.clone()),
            previous_log: None,
        })
    }
}

/// The container's pod, removed on drop.
struct Cleanup(Arc<Runtime>, String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Err(e) = self.0.remove_pod_by_uid(&self.1) {
            eprintln!("cleanup of pod {}: {e}", self.1);
        }
    }
}

fn busybox_layer(dir: &std::path::Path) -> PathBuf {
    let base = dir.join("layers/busybox");
    std::fs::create_dir_all(base.join("bin")).unwrap();
    for d in ["tmp", "proc", "sys", "dev", "etc", "root"] {
        std::fs::create_dir_all(base.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", base.join("bin/busybox"))
        .expect("/bin/busybox (busybox-static, cargo xtask setup)");
    for applet in ["sh", "sleep", "hostname", "cat", "echo", "touch", "tty"] {
        std::os::unix::fs::symlink("busybox", base.join("bin").join(applet)).unwrap();
    }
    base
}

#[test]
fn kubectl_logs_and_exec_through_the_api_server() {
    require_root!("the exec'd container");
    let cp = ControlPlane::start();
    let dir = tempfile::tempdir().unwrap();
    let runtime = Arc::new(Runtime::with_binary(dir.path().join("agent"), agent_bin()).unwrap());
    let uid = format!("streams-{}", std::process::id());
    let _cleanup = Cleanup(runtime.clone(), uid.clone());
    let sandbox = runtime.create_sandbox(&uid, "streams-host").unwrap();
    let k8s = k8s_openapi::api::core::v1::Container {
        name: "app".into(),
        command: Some(vec![
            "/bin/sh".into(),
            "-c".into(),
            "echo line 1; echo line 2; while [ ! -e /tmp/stop ]; do sleep 0.1; done; echo bye"
                .into(),
        ]),
        ..Default::default()
    };
    let spec = skiff_agent::runtime::ContainerSpec::from_kubernetes(
        &k8s,
        &skiff_agent::runtime::ImageConfig::default(),
        vec![busybox_layer(dir.path())],
    )
    .unwrap();
    let container = runtime.create_container(&sandbox, &spec).unwrap();
    runtime.start(&container).unwrap();

    // The node endpoint as a joined node serves it: a serving certificate from the cluster CA
    // (what its kubelet-serving CSR would get), callers authenticated by client certificates of
    // that CA and authorized by SubjectAccessReviews through the API.
    let pki = cp.dir.path().join("data/pki");
    let ca_pem = std::fs::read_to_string(pki.join("ca.crt")).unwrap();
    let (serving_cert, serving_key) = serving_certificate(&pki);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let reviews = rt.block_on(async {
        let kc = kube::config::Kubeconfig::read_from(&cp.kubeconfig).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap();
        kube::Client::try_from(config).unwrap()
    });
    let security = server::ServerSecurity {
        auth: Arc::new(KubeletAuth::new(
            "stream-node",
            Some(Arc::new(ApiReviewer(reviews))),
            None,
        )),
        client_ca_pem: Some(ca_pem),
        serving: Some(
            CertSlot::new(Some(KeyedCert::new(&serving_cert, &serving_key).unwrap())).unwrap(),
        ),
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = ServerConfig {
        args: ServerArgs {
            kubelet_port: port,
            kubelet_address: "127.0.0.1".parse().unwrap(),
            read_only_port: 0,
            container_log_max_size: 10 << 20,
            container_log_max_files: 5,
        },
        root_dir: dir.path().join("agent"),
        token: String::new(),
        tls_sans: vec![],
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    rt.spawn(server::serve_with(
        config,
        security,
        Arc::new(OnePod {
            container: container.clone(),
        }),
        runtime.clone(),
        shutdown.clone(),
    ));

    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(r#"{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "stream-node"}}"#),
    );
    let status = format!(
        r#"{{"status": {{"addresses": [{{"type": "InternalIP", "address": "127.0.0.1"}}],
            "daemonEndpoints": {{"kubeletEndpoint": {{"Port": {port}}}}}}}}}"#
    );
    cp.kubectl(&[
        "patch",
        "node",
        "stream-node",
        "--subresource=status",
        "--type=merge",
        "-p",
        &status,
    ]);
    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(
            r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "streams"},
                "spec": {"nodeName": "stream-node", "containers": [{"name": "app", "image": "busybox"}]}}
               "#,
        ),
    );
    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(
            r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "unscheduled"},
                "spec": {"containers": [{"name": "app", "image": "busybox"}]}}"#,
        ),
    );

    wait_for(
        "the node endpoint and the first log lines",
        Duration::from_secs(20),
        || cp.kubectl_output(&["logs", "streams"], None).stdout == b"line 1\nline 2\n",
    );
    assert_eq!(cp.kubectl(&["logs", "streams", "--tail=1"]), "line 2\n");
    assert_eq!(
        cp.kubectl(&["logs", "streams", "-c", "app", "--limit-bytes=4"]),
        "line"
    );

    // exec: output, exit code, stdin.
    let out = cp.kubectl_output(
        &["exec", "streams", "--", "sh", "-c", "hostname; exit 3"],
        None,
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "streams-host\n");
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        cp.kubectl_stdin(
            &["exec", "-i", "streams", "--", "cat"],
            Some("through stdin\n")
        ),
        "through stdin\n"
    );

    // logs -f follows until the container ends; exec makes it end.
    let mut follow = cp.kubectl_cmd(&["logs", "-f", "streams"]);
    let mut follow = follow
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follow.stdout.take().unwrap());
    let mut first = String::new();
    lines.read_line(&mut first).unwrap();
    assert_eq!(first, "line 1\n");
    cp.kubectl(&["exec", "streams", "--", "touch", "/tmp/stop"]);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut lines, &mut rest).unwrap();
    assert_eq!(rest, "line 2\nbye\n");
    assert!(follow.wait().unwrap().success());

    // Errors as kubectl users know them.
    let err = cp.kubectl_fails(&["logs", "nosuch"], None);
    assert!(err.contains("pods \"nosuch\" not found"), "{err}");
    let err = cp.kubectl_fails(&["logs", "streams", "-c", "wrong"], None);
    assert!(
        err.contains("container wrong is not valid for pod streams"),
        "{err}"
    );
    let err = cp.kubectl_fails(&["logs", "unscheduled"], None);
    assert!(err.contains("does not have a host assigned"), "{err}");
    let err = cp.kubectl_fails(&["exec", "unscheduled", "--", "true"], None);
    assert!(err.contains("does not have a host assigned"), "{err}");
    // The container has ended: exec is refused by the node.
    let err = cp.kubectl_fails(&["exec", "streams", "--", "true"], None);
    assert!(err.contains("is not running"), "{err}");

    shutdown.cancel();
    drop(rt);
}

/// A serving certificate for stream-node at 127.0.0.1 from the control plane's CA, as its
/// `kubernetes.io/kubelet-serving` CSR would get.
fn serving_certificate(pki: &std::path::Path) -> (String, String) {
    let ca_cert = std::fs::read_to_string(pki.join("ca.crt")).unwrap();
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(pki.join("ca.key")).unwrap()).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_cert, ca_key).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![rcgen::SanType::IpAddress(std::net::IpAddr::from([
        127, 0, 0, 1,
    ]))];
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "system:node:stream-node");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

//! The real kubectl against a real skiff-control: the seeds' kubia-manual pod and the commands
//! of a first session with Kubernetes.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;
use skiff_e2e::ControlPlane;

/// The kubia-manual Pod from the seeds, as a user would write it.
const KUBIA_MANUAL: &str = "apiVersion: v1
kind: Pod
metadata:
  name: kubia-manual
spec:
  containers:
  - image: luksa/kubia
    name: kubia
    ports:
    - containerPort: 8080
      protocol: TCP
";

fn deployment(image: &str, replicas: u32, extra_env: bool) -> String {
    let env = if extra_env {
        "\n        env:\n        - name: GREETING\n          value: hello"
    } else {
        ""
    };
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: kubia
spec:
  replicas: {replicas}
  selector:
    matchLabels:
      app: kubia
  template:
    metadata:
      labels:
        app: kubia
    spec:
      containers:
      - name: kubia
        image: {image}
        ports:
        - containerPort: 8080{env}
"
    )
}

fn json(cp: &ControlPlane, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&cp.kubectl(&all)).unwrap()
}

#[test]
fn kubectl_drives_the_api_like_kubernetes() {
    let cp = ControlPlane::start();
    let dir = cp.dir.path().to_owned();
    let manifest = dir.join("kubia-manual.yaml");
    std::fs::write(&manifest, KUBIA_MANUAL).unwrap();
    let manifest = manifest.to_str().unwrap();

    // create -f, get -o yaml / -o json, the table.
    assert_eq!(
        cp.kubectl(&["create", "-f", manifest]).trim(),
        "pod/kubia-manual created"
    );
    let yaml: serde_yaml::Value =
        serde_yaml::from_str(&cp.kubectl(&["get", "po", "kubia-manual", "-o", "yaml"])).unwrap();
    assert_eq!(yaml["metadata"]["name"].as_str(), Some("kubia-manual"));
    assert_eq!(yaml["metadata"]["namespace"].as_str(), Some("default"));
    assert_eq!(
        yaml["spec"]["containers"][0]["ports"][0]["containerPort"].as_u64(),
        Some(8080)
    );
    let pod = json(&cp, &["get", "po", "kubia-manual"]);
    assert_eq!(pod["spec"]["containers"][0]["image"], "luksa/kubia");
    assert_eq!(pod["status"]["phase"], "Pending");
    let table = cp.kubectl(&["get", "po"]);
    let mut lines = table.lines();
    assert_eq!(
        lines.next().unwrap().split_whitespace().collect::<Vec<_>>(),
        ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    );
    assert_eq!(
        lines
            .next()
            .unwrap()
            .split_whitespace()
            .take(4)
            .collect::<Vec<_>>(),
        ["kubia-manual", "0/1", "Pending", "0"]
    );
    let err = cp.kubectl_fails(&["create", "-f", manifest], None);
    assert!(
        err.contains("AlreadyExists") && err.contains("\"kubia-manual\" already exists"),
        "{err}"
    );

    // Labels and selectors.
    assert_eq!(
        cp.kubectl(&[
            "label",
            "po",
            "kubia-manual",
            "creation_method=manual",
            "env=debug"
        ])
        .trim(),
        "pod/kubia-manual labeled"
    );
    assert_eq!(
        cp.kubectl(&["get", "po", "-l", "creation_method=manual", "-o", "name"])
            .trim(),
        "pod/kubia-manual"
    );
    assert_eq!(
        cp.kubectl(&["get", "po", "-l", "env in (prod,debug)", "-o", "name"])
            .trim(),
        "pod/kubia-manual"
    );
    assert_eq!(
        cp.kubectl(&["get", "po", "-l", "env!=debug", "-o", "name"])
            .trim(),
        ""
    );
    let none = cp.kubectl_output(&["get", "po", "-l", "!env"], None);
    assert!(
        String::from_utf8_lossy(&none.stderr).contains("No resources found in default namespace.")
    );
    let shown = cp.kubectl(&["get", "po", "-L", "creation_method,env"]);
    assert!(
        shown.lines().next().unwrap().contains("CREATION_METHOD"),
        "{shown}"
    );
    assert!(
        shown.contains("manual") && shown.contains("debug"),
        "{shown}"
    );
    cp.kubectl(&["label", "po", "kubia-manual", "env=prod", "--overwrite"]);
    assert_eq!(
        json(&cp, &["get", "po", "kubia-manual"])["metadata"]["labels"]["env"],
        "prod"
    );

    // Annotations.
    cp.kubectl(&[
        "annotate",
        "pod",
        "kubia-manual",
        "mycompany.com/someannotation=foo bar",
    ]);
    let annotated = cp.kubectl(&[
        "get",
        "po",
        "kubia-manual",
        "-o",
        "jsonpath={.metadata.annotations.mycompany\\.com/someannotation}",
    ]);
    assert_eq!(annotated, "foo bar");

    // apply twice with a change.
    let dep = dir.join("deploy.yaml");
    std::fs::write(&dep, deployment("kubia:v1", 3, false)).unwrap();
    assert_eq!(
        cp.kubectl(&["apply", "-f", dep.to_str().unwrap()]).trim(),
        "deployment.apps/kubia created"
    );
    std::fs::write(&dep, deployment("kubia:v2", 2, true)).unwrap();
    assert_eq!(
        cp.kubectl(&["apply", "-f", dep.to_str().unwrap()]).trim(),
        "deployment.apps/kubia configured"
    );
    let d = json(&cp, &["get", "deploy", "kubia"]);
    assert_eq!(d["spec"]["replicas"], 2);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "kubia:v2"
    );
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"],
        "hello"
    );
    assert_eq!(d["metadata"]["generation"], 2);
    assert!(
        d["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .as_str()
            .unwrap()
            .contains("kubia:v2")
    );
    assert_eq!(
        cp.kubectl(&["apply", "-f", dep.to_str().unwrap()]).trim(),
        "deployment.apps/kubia unchanged"
    );
    let deploy_table = cp.kubectl(&["get", "deploy"]);
    assert!(
        deploy_table
            .lines()
            .next()
            .unwrap()
            .starts_with("NAME    READY   UP-TO-DATE   AVAILABLE   AGE"),
        "{deploy_table}"
    );

    // patch: strategic (the default), merge and JSON.
    cp.kubectl(&[
        "patch",
        "deploy",
        "kubia",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"kubia","image":"kubia:v3"}]}}}}"#,
    ]);
    let d = json(&cp, &["get", "deploy", "kubia"]);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "kubia:v3"
    );
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["env"][0]["name"], "GREETING",
        "strategic merge keeps the other fields"
    );
    cp.kubectl(&[
        "patch",
        "deploy",
        "kubia",
        "--type=merge",
        "-p",
        r#"{"metadata":{"labels":{"tier":"web"}}}"#,
    ]);
    cp.kubectl(&[
        "patch",
        "deploy",
        "kubia",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/revisionHistoryLimit","value":3}]"#,
    ]);
    let d = json(&cp, &["get", "deploy", "kubia"]);
    assert_eq!(
        (
            d["metadata"]["labels"]["tier"].as_str(),
            d["spec"]["revisionHistoryLimit"].as_i64()
        ),
        (Some("web"), Some(3))
    );

    // scale through the scale subresource.
    assert_eq!(
        cp.kubectl(&["scale", "deployment", "kubia", "--replicas=5"])
            .trim(),
        "deployment.apps/kubia scaled"
    );
    assert_eq!(
        json(&cp, &["get", "deploy", "kubia"])["spec"]["replicas"],
        5
    );

    // get --watch sees a change.
    let mut watcher = cp
        .kubectl_cmd(&[
            "get",
            "po",
            "kubia-manual",
            "--watch",
            "-o",
            "jsonpath={.metadata.labels.stage}{\"|\"}{.metadata.resourceVersion}{\"\\n\"}",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = watcher.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let first = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the watch prints the current state");
    assert!(first.starts_with('|'), "no stage label yet: {first}");
    cp.kubectl(&["label", "po", "kubia-manual", "stage=watched"]);
    let changed = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the watch prints the change");
    assert!(changed.starts_with("watched|"), "{changed}");
    let _ = watcher.kill();
    let _ = watcher.wait();

    // Errors print as kubectl prints Kubernetes errors.
    let err = cp.kubectl_fails(
        &["create", "-f", "-"],
        Some("apiVersion: v1\nkind: Pod\nmetadata:\n  name: broken\nspec:\n  containers:\n  - name: c\n"),
    );
    assert!(
        err.contains(r#"The Pod "broken" is invalid: spec.containers[0].image: Required value"#),
        "{err}"
    );
    let err = cp.kubectl_fails(&["get", "po", "nothere"], None);
    assert!(
        err.contains(r#"Error from server (NotFound): pods "nothere" not found"#),
        "{err}"
    );
    let err = cp.kubectl_fails(&["get", "widgets"], None);
    assert!(
        err.contains(r#"the server doesn't have a resource type "widgets""#),
        "{err}"
    );

    // explain works from the served OpenAPI.
    let explain = cp.kubectl(&["explain", "pod.spec.containers.ports"]);
    assert!(
        explain.contains("KIND:       Pod") && explain.contains("containerPort"),
        "{explain}"
    );

    // delete: the pod is gone and kubectl's wait for it ends.
    assert_eq!(
        cp.kubectl(&["delete", "po", "kubia-manual"]).trim(),
        "pod \"kubia-manual\" deleted from default namespace"
    );
    let err = cp.kubectl_fails(&["get", "po", "kubia-manual"], None);
    assert!(err.contains("NotFound"), "{err}");
    cp.kubectl(&["delete", "-f", dep.to_str().unwrap()]);
    assert_eq!(cp.kubectl(&["get", "deploy", "-o", "name"]).trim(), "");
}

#[test]
fn objects_survive_a_control_plane_restart() {
    let cp = ControlPlane::start();
    let dir = cp.dir.path().to_owned();
    let manifest = dir.join("kubia-manual.yaml");
    std::fs::write(&manifest, KUBIA_MANUAL).unwrap();
    cp.kubectl(&["create", "-f", manifest.to_str().unwrap()]);
    let before: u64 = json(&cp, &["get", "po", "kubia-manual"])["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let cp = cp.restart();
    let pod = json(&cp, &["get", "po", "kubia-manual"]);
    assert_eq!(pod["spec"]["containers"][0]["image"], "luksa/kubia");
    cp.kubectl(&["label", "po", "kubia-manual", "after=restart"]);
    let after: u64 = json(&cp, &["get", "po", "kubia-manual"])["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        after > before,
        "resourceVersions keep increasing: {before} -> {after}"
    );
    let namespaces = cp.kubectl(&["get", "ns", "-o", "name"]);
    assert!(
        namespaces.contains("namespace/default") && namespaces.contains("namespace/kube-system")
    );
}

#[test]
fn a_wrong_token_is_refused() {
    let cp = ControlPlane::start();
    // The admin kubeconfig also holds a client certificate, which authenticates first (as with
    // kubeadm's admin.conf); a user with only a token is a kubeconfig without it.
    let admin = std::fs::read_to_string(&cp.kubeconfig).unwrap();
    let token_only: String = admin
        .lines()
        .filter(|l| !l.contains("client-certificate-data") && !l.contains("client-key-data"))
        .map(|l| format!("{l}\n"))
        .collect();
    let path = cp.kubeconfig.with_extension("token-only");
    std::fs::write(&path, token_only).unwrap();
    let path = path.to_string_lossy().into_owned();
    let out = cp.kubectl_output(
        &["--kubeconfig", &path, "get", "pods", "--token", "wrong"],
        None,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Unauthorized") || err.contains("provide credentials"),
        "{err}"
    );
}

/// The admin kubeconfig's client certificate alone is the admin; a certificate from another CA
/// is a 401, not a failed handshake.
#[test]
fn the_admin_client_certificate_authenticates_and_a_foreign_one_is_refused() {
    let cp = ControlPlane::start();
    let admin = std::fs::read_to_string(&cp.kubeconfig).unwrap();
    let cert_only: String = admin
        .lines()
        .filter(|l| !l.trim_start().starts_with("token:"))
        .map(|l| format!("{l}\n"))
        .collect();
    let path = cp.kubeconfig.with_extension("cert-only");
    std::fs::write(&path, &cert_only).unwrap();
    let path_s = path.to_string_lossy().into_owned();
    let out = cp.kubectl_output(
        &["--kubeconfig", &path_s, "get", "namespaces", "-o", "name"],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("namespace/default"));

    // A certificate for "system:masters" from a CA the cluster does not know.
    let ca = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kubernetes-admin");
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "system:masters");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let forged = params.self_signed(&ca).unwrap();
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let foreign: String = cert_only
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("client-certificate-data:") {
                format!("    client-certificate-data: {}\n", b64(&forged.pem()))
            } else if l.trim_start().starts_with("client-key-data:") {
                format!("    client-key-data: {}\n", b64(&ca.serialize_pem()))
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let path = cp.kubeconfig.with_extension("foreign");
    std::fs::write(&path, foreign).unwrap();
    let path_s = path.to_string_lossy().into_owned();
    let out = cp.kubectl_output(&["--kubeconfig", &path_s, "get", "namespaces"], None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Unauthorized") || err.contains("provide credentials"),
        "{err}"
    );
}

/// kubectl's typed commands send protobuf bodies; they must store what the JSON form would.
#[test]
fn typed_commands_that_send_protobuf_work() {
    let cp = ControlPlane::start();
    assert_eq!(
        cp.kubectl(&["create", "namespace", "demo"]).trim(),
        "namespace/demo created"
    );
    cp.kubectl(&[
        "-n",
        "demo",
        "create",
        "configmap",
        "settings",
        "--from-literal=greeting=hello",
    ]);
    assert_eq!(
        json(&cp, &["-n", "demo", "get", "cm", "settings"])["data"]["greeting"],
        "hello"
    );
    cp.kubectl(&[
        "-n",
        "demo",
        "create",
        "secret",
        "generic",
        "creds",
        "--from-literal=password=s3cret",
    ]);
    assert_eq!(
        json(&cp, &["-n", "demo", "get", "secret", "creds"])["data"]["password"],
        "czNjcmV0"
    );
    cp.kubectl(&[
        "-n",
        "demo",
        "create",
        "deployment",
        "kubia",
        "--image=kubia:v1",
        "--replicas=3",
    ]);
    let d = json(&cp, &["-n", "demo", "get", "deploy", "kubia"]);
    assert_eq!(d["spec"]["replicas"], 3);
    assert_eq!(d["spec"]["selector"]["matchLabels"]["app"], "kubia");
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "kubia:v1"
    );
    assert_eq!(d["spec"]["strategy"]["type"], "RollingUpdate");
    assert!(
        d["spec"]["template"]["spec"]["containers"][0]
            .get("stdin")
            .is_none(),
        "no protobuf zero values: {d}"
    );
    cp.kubectl(&[
        "-n",
        "demo",
        "expose",
        "deployment",
        "kubia",
        "--port=80",
        "--target-port=8080",
    ]);
    let s = json(&cp, &["-n", "demo", "get", "svc", "kubia"]);
    assert_eq!(
        (
            s["spec"]["ports"][0]["port"].as_i64(),
            s["spec"]["ports"][0]["targetPort"].as_i64()
        ),
        (Some(80), Some(8080))
    );
    assert_eq!(s["spec"]["selector"]["app"], "kubia");
    cp.kubectl(&[
        "-n",
        "demo",
        "run",
        "shell",
        "--image=busybox",
        "--",
        "sleep",
        "3600",
    ]);
    assert_eq!(
        json(&cp, &["-n", "demo", "get", "po", "shell"])["spec"]["containers"][0]["args"][1],
        "3600"
    );
    // Deleting the namespace deletes all of it; kubectl waits until it is gone.
    cp.kubectl(&["delete", "namespace", "demo"]);
    let err = cp.kubectl_fails(&["get", "namespace", "demo"], None);
    assert!(err.contains("NotFound"), "{err}");
}

/// `kubectl auth whoami` (SelfSubjectReview) and `kubectl auth can-i` (SelfSubjectAccessReview
/// and, with `--list`, SelfSubjectRulesReview) as the admin.
#[test]
fn kubectl_auth_whoami_and_can_i() {
    let cp = ControlPlane::start();
    let review = json(&cp, &["auth", "whoami"]);
    assert_eq!(review["kind"], "SelfSubjectReview");
    assert!(
        review["status"]["userInfo"]["groups"]
            .as_array()
            .is_some_and(|g| g.iter().any(|g| g == "system:authenticated")),
        "{review}"
    );
    assert_eq!(cp.kubectl(&["auth", "can-i", "list", "pods"]).trim(), "yes");
    assert_eq!(
        cp.kubectl(&[
            "auth",
            "can-i",
            "create",
            "deployments",
            "-n",
            "kube-system"
        ])
        .trim(),
        "yes"
    );
    let list = cp.kubectl(&["auth", "can-i", "--list"]);
    assert!(list.contains("*.*"), "{list}");
}

/// PodSecurity admission as kubectl shows it: a restricted namespace refuses a privileged pod
/// with kube-apiserver's message, a warn namespace admits it with a `Warning:` line, and
/// raising the enforce level warns about the pods already there.
#[test]
fn kubectl_shows_pod_security_refusals_and_warnings() {
    let cp = ControlPlane::start();
    let run_privileged = |ns: &str| {
        cp.kubectl_output(
            &["run", "priv", "-n", ns, "--image=nginx", "--privileged"],
            None,
        )
    };
    cp.kubectl(&["create", "namespace", "locked"]);
    let labelled = cp.kubectl(&[
        "label",
        "ns",
        "locked",
        "pod-security.kubernetes.io/enforce=restricted",
    ]);
    assert_eq!(labelled.trim(), "namespace/locked labeled");
    let refused = run_privileged("locked");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert_eq!(
        stderr.trim(),
        "Error from server (Forbidden): pods \"priv\" is forbidden: violates PodSecurity \
         \"restricted:latest\": privileged (container \"priv\" must not set \
         securityContext.privileged=true), allowPrivilegeEscalation != false (container \"priv\" \
         must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities \
         (container \"priv\" must set securityContext.capabilities.drop=[\"ALL\"]), runAsNonRoot \
         != true (pod or container \"priv\" must set securityContext.runAsNonRoot=true), \
         seccompProfile (pod or container \"priv\" must set securityContext.seccompProfile.type \
         to \"RuntimeDefault\" or \"Localhost\")"
    );

    cp.kubectl(&["create", "namespace", "loud"]);
    cp.kubectl(&[
        "label",
        "ns",
        "loud",
        "pod-security.kubernetes.io/warn=baseline",
    ]);
    let warned = run_privileged("loud");
    let stderr = String::from_utf8_lossy(&warned.stderr);
    assert!(warned.status.success(), "{stderr}");
    assert_eq!(
        stderr.trim(),
        "Warning: would violate PodSecurity \"baseline:latest\": privileged (container \"priv\" \
         must not set securityContext.privileged=true)"
    );
    assert_eq!(
        String::from_utf8_lossy(&warned.stdout).trim(),
        "pod/priv created"
    );

    let raised = cp.kubectl_output(
        &[
            "label",
            "ns",
            "loud",
            "pod-security.kubernetes.io/enforce=baseline",
        ],
        None,
    );
    assert!(raised.status.success());
    assert_eq!(
        String::from_utf8_lossy(&raised.stderr).trim(),
        "Warning: existing pods in namespace \"loud\" violate the new PodSecurity enforce level \
         \"baseline:latest\"\nWarning: priv: privileged"
    );
}

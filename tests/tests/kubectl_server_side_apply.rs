//! Server-side apply with the real kubectl: `apply --server-side` of a Deployment twice with a
//! change, a conflict with another field manager (exit status and message), taking the field
//! over with `--force-conflicts`, `diff --server-side`, and the managers in
//! `get --show-managed-fields`.

use skiff_e2e::ControlPlane;

fn deployment(replicas: u32, image: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels:
    app: web
spec:
  replicas: {replicas}
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: web
        image: {image}
        ports:
        - containerPort: 80
"
    )
}

#[test]
fn kubectl_applies_server_side_with_conflicts_force_and_diff() {
    let cp = ControlPlane::start();
    let applied = cp.kubectl_stdin(
        &["apply", "--server-side", "-f", "-"],
        Some(&deployment(2, "nginx:1.27")),
    );
    assert_eq!(applied.trim(), "deployment.apps/web serverside-applied");
    // Again with a change: applied in place (the ports, keyed by containerPort and the
    // defaulted protocol, are not duplicated).
    let applied = cp.kubectl_stdin(
        &["apply", "--server-side", "-f", "-"],
        Some(&deployment(2, "nginx:1.28")),
    );
    assert_eq!(applied.trim(), "deployment.apps/web serverside-applied");
    let image = cp.kubectl(&[
        "get",
        "deployment",
        "web",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].image} {.spec.template.spec.containers[0].ports[*].containerPort}",
    ]);
    assert_eq!(image, "nginx:1.28 80");

    // Another manager changing replicas conflicts with kubectl's apply.
    let out = cp.kubectl_output(
        &["apply", "--server-side", "--field-manager=ops", "-f", "-"],
        Some(&deployment(5, "nginx:1.28")),
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Apply failed with 1 conflict: conflict with \"kubectl\": .spec.replicas"),
        "{err}"
    );
    let replicas = cp.kubectl(&[
        "get",
        "deployment",
        "web",
        "-o",
        "jsonpath={.spec.replicas}",
    ]);
    assert_eq!(replicas, "2");

    // Forced, ops takes replicas over.
    let forced = cp.kubectl_stdin(
        &[
            "apply",
            "--server-side",
            "--field-manager=ops",
            "--force-conflicts",
            "-f",
            "-",
        ],
        Some(&deployment(5, "nginx:1.28")),
    );
    assert_eq!(forced.trim(), "deployment.apps/web serverside-applied");
    let replicas = cp.kubectl(&[
        "get",
        "deployment",
        "web",
        "-o",
        "jsonpath={.spec.replicas}",
    ]);
    assert_eq!(replicas, "5");

    // diff --server-side shows what an apply would change (exit status 1: differences), and
    // changes nothing. (kubectl's own manager owns the image: the diff forces, as an apply
    // taking it over would.)
    let out = cp.kubectl_output(
        &[
            "diff",
            "--server-side",
            "--field-manager=ops",
            "--force-conflicts",
            "-f",
            "-",
        ],
        Some(&deployment(5, "nginx:1.29")),
    );
    let diff = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{diff}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(diff.contains("-      - image: nginx:1.28"), "{diff}");
    assert!(diff.contains("+      - image: nginx:1.29"), "{diff}");
    let image = cp.kubectl(&[
        "get",
        "deployment",
        "web",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].image}",
    ]);
    assert_eq!(image, "nginx:1.28");

    // Both managers are recorded.
    let yaml = cp.kubectl(&[
        "get",
        "deployment",
        "web",
        "-o",
        "yaml",
        "--show-managed-fields",
    ]);
    assert!(yaml.contains("managedFields:"), "{yaml}");
    assert!(yaml.contains("manager: kubectl"), "{yaml}");
    assert!(yaml.contains("manager: ops"), "{yaml}");
    assert!(yaml.contains("operation: Apply"), "{yaml}");
    assert!(yaml.contains("f:replicas: {}"), "{yaml}");
    // Without the flag kubectl hides them.
    let plain = cp.kubectl(&["get", "deployment", "web", "-o", "yaml"]);
    assert!(!plain.contains("managedFields"), "{plain}");
}

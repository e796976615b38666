//! Helm charts on skiff, with the real Helm 3 and Helm 4 (`cargo xtask setup` fetches both;
//! Helm 4 applies server-side): the chart `helm create` generates and a chart that ships a
//! CustomResourceDefinition with custom resources of it are installed, listed, upgraded, rolled
//! back and uninstalled (a value its schema refuses fails the upgrade and changes nothing); on a local cluster the generated chart's `helm test` passes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use skiff_e2e::cluster::{Guard, Options};
use skiff_e2e::{helm_bin, kubectl_bin, wait_for, ControlPlane};
use skiff_test_support::require_root;

/// The Helm major versions under test (Helm 4 applies server-side).
const HELMS: &[u8] = &[3, 4];

/// One helm binary against one cluster, with its own config, cache and data directories so
/// that nothing is read from or written to the user's home.
struct Helm {
    bin: PathBuf,
    major: u8,
    kubeconfig: PathBuf,
    home: tempfile::TempDir,
}

impl Helm {
    fn new(major: u8, kubeconfig: &Path) -> Self {
        Self {
            bin: helm_bin(major),
            major,
            kubeconfig: kubeconfig.to_owned(),
            home: tempfile::tempdir().unwrap(),
        }
    }

    fn output(&self, args: &[&str]) -> Output {
        let home = self.home.path();
        Command::new(&self.bin)
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_DATA_HOME", home.join("data"))
            .current_dir(home)
            .output()
            .expect("run helm")
    }

    /// Runs helm, which must succeed; its stdout.
    fn run(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(
            out.status.success(),
            "helm {} {args:?} failed: {}{}",
            self.major,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `helm create NAME` in this helm's directory: the chart's path.
    fn create_chart(&self, name: &str) -> PathBuf {
        self.run(&["create", name]);
        self.home.path().join(name)
    }

    /// The releases `helm list` shows, as (name, revision, status).
    fn releases(&self) -> Vec<(String, String, String)> {
        let list: Value = serde_json::from_str(&self.run(&["list", "-o", "json"])).unwrap();
        list.as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let field = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
                (field("name"), field("revision"), field("status"))
            })
            .collect()
    }
}

/// kubectl against `kubeconfig`: stdout, or None when it fails.
fn kubectl(kubeconfig: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new(kubectl_bin())
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn replicas(kubeconfig: &Path, deployment: &str) -> String {
    kubectl(
        kubeconfig,
        &[
            "get",
            "deployment",
            deployment,
            "-o",
            "jsonpath={.spec.replicas}",
        ],
    )
    .unwrap_or_else(|| panic!("deployment {deployment} is missing"))
}

/// The crontabs chart shipped with the tests.
fn crontabs_chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/crontabs")
}

#[test]
fn the_generated_chart_installs_upgrades_rolls_back_and_uninstalls() {
    let cp = ControlPlane::start();
    for &major in HELMS {
        let helm = Helm::new(major, &cp.kubeconfig);
        let chart = helm.create_chart("web");
        let chart = chart.to_str().unwrap();
        let release = format!("site{major}");
        let deployment = format!("{release}-web");
        helm.run(&["install", &release, chart]);
        assert_eq!(
            helm.releases(),
            vec![(release.clone(), "1".into(), "deployed".into())],
            "helm {major} list"
        );
        assert_eq!(replicas(&cp.kubeconfig, &deployment), "1");
        for kind in ["service", "serviceaccount"] {
            assert!(
                kubectl(&cp.kubeconfig, &["get", kind, &deployment]).is_some(),
                "helm {major}: the chart's {kind} {deployment} is missing"
            );
        }

        helm.run(&["upgrade", &release, chart, "--set", "replicaCount=3"]);
        assert_eq!(replicas(&cp.kubeconfig, &deployment), "3", "helm {major}");
        helm.run(&["rollback", &release, "1"]);
        assert_eq!(replicas(&cp.kubeconfig, &deployment), "1", "helm {major}");
        let history: Value =
            serde_json::from_str(&helm.run(&["history", &release, "-o", "json"])).unwrap();
        let descriptions: Vec<&str> = history
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["description"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(
            descriptions,
            ["Install complete", "Upgrade complete", "Rollback to 1"],
            "helm {major} history"
        );

        helm.run(&["uninstall", &release]);
        assert!(helm.releases().is_empty(), "helm {major}: nothing listed");
        for kind in ["deployment", "service", "serviceaccount"] {
            assert!(
                kubectl(&cp.kubeconfig, &["get", kind, &deployment]).is_none(),
                "helm {major}: {kind} {deployment} is still there after uninstall"
            );
        }
        // Helm keeps a release's state in Secrets labelled owner=helm; uninstall removes them.
        let left = kubectl(
            &cp.kubeconfig,
            &[
                "get",
                "secrets",
                "-l",
                &format!("owner=helm,name={release}"),
                "-o",
                "name",
            ],
        )
        .unwrap();
        assert!(left.trim().is_empty(), "helm {major} left {left}");
    }
}

#[test]
fn a_chart_with_a_custom_resource_definition_installs_its_objects() {
    let cp = ControlPlane::start();
    let chart = crontabs_chart();
    let chart = chart.to_str().unwrap();
    for &major in HELMS {
        let helm = Helm::new(major, &cp.kubeconfig);
        let release = format!("jobs{major}");
        helm.run(&["install", &release, chart]);
        // The CRD is created from crds/ before the templates, and stays established.
        let established = kubectl(
            &cp.kubeconfig,
            &[
                "get",
                "crd",
                "crontabs.stable.example.com",
                "-o",
                "jsonpath={.status.conditions[?(@.type=='Established')].status}",
            ],
        );
        assert_eq!(established.as_deref(), Some("True"), "helm {major}");
        let table = kubectl(&cp.kubeconfig, &["get", "crontabs"]).unwrap();
        for (name, spec) in [("nightly", "0 3 * * *"), ("hourly", "0 * * * *")] {
            assert!(
                table
                    .lines()
                    .any(|l| l.starts_with(&format!("{release}-{name} ")) && l.contains(spec)),
                "helm {major}: no {release}-{name} with {spec:?} in\n{table}"
            );
        }

        helm.run(&["upgrade", &release, chart, "--set", "image=nginx"]);
        let image = kubectl(
            &cp.kubeconfig,
            &[
                "get",
                "ct",
                &format!("{release}-hourly"),
                "-o",
                "jsonpath={.spec.image}",
            ],
        );
        assert_eq!(image.as_deref(), Some("nginx"), "helm {major}");

        // A value the CRD's schema refuses: the upgrade fails with the API's message and the
        // objects keep what they had.
        let out = helm.output(&[
            "upgrade",
            &release,
            chart,
            "--set",
            "image=nginx",
            "--set",
            "crontabs.nightly.cronSpec=often",
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("spec.cronSpec"),
            "helm {major}: a bad cronSpec was not refused: {stderr}"
        );
        let spec = kubectl(
            &cp.kubeconfig,
            &[
                "get",
                "ct",
                &format!("{release}-nightly"),
                "-o",
                "jsonpath={.spec.cronSpec}",
            ],
        );
        assert_eq!(spec.as_deref(), Some("0 3 * * *"), "helm {major}");
        // Rolling back to the first revision puts its image back.
        helm.run(&["rollback", &release, "1"]);
        let image = kubectl(
            &cp.kubeconfig,
            &[
                "get",
                "ct",
                &format!("{release}-hourly"),
                "-o",
                "jsonpath={.spec.image}",
            ],
        );
        assert_eq!(image.as_deref(), Some("busybox"), "helm {major}");

        helm.run(&["uninstall", &release]);
        wait_for(
            &format!("helm {major}: the release's CronTabs to go"),
            Duration::from_secs(10),
            || {
                kubectl(&cp.kubeconfig, &["get", "crontabs", "-o", "name"])
                    .is_some_and(|s| s.trim().is_empty())
            },
        );
        // Helm never deletes the CRDs of crds/ (their objects could belong to others).
        assert!(kubectl(
            &cp.kubeconfig,
            &["get", "crd", "crontabs.stable.example.com"]
        )
        .is_some());
    }
}

#[test]
fn helm_test_passes_on_a_local_cluster() {
    require_root!("network namespaces, containers, BPF");
    // The test Pod finds the Service by name: cluster DNS answers on the kube-dns ClusterIP,
    // which the eBPF service proxy serves. Names outside the cluster are never forwarded.
    let c = Guard::test(&Options {
        proxy_mode: "ebpf".into(),
        agent_args: vec!["--dns-upstream=none".into()],
        ..Options::test("thelm", 245, 1)
    });
    let kubeconfig = c.state.kubeconfig.clone();
    for &major in HELMS {
        let helm = Helm::new(major, &kubeconfig);
        let chart = helm.create_chart("web");
        let release = format!("site{major}");
        // The chart's default image is nginx:<appVersion>; the local registry carries
        // nginx:stable (Debian's nginx set up as the official image).
        helm.run(&[
            "install",
            &release,
            chart.to_str().unwrap(),
            "--set",
            "image.tag=stable",
            "--wait",
            "--timeout",
            "180s",
        ]);
        // `helm test` runs the chart's test-connection Pod (busybox wget to the Service by its
        // DNS name) and fails unless it succeeds.
        let test_pod = format!("{release}-web-test-connection");
        let out = helm.output(&["test", &release, "--timeout", "120s"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success()
                && stdout.contains(&format!("TEST SUITE:     {test_pod}"))
                && stdout.contains("Phase:          Succeeded"),
            "helm {major} test:\n{stdout}{}\nthe test pod's log:\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            kubectl(&kubeconfig, &["logs", &test_pod]).unwrap_or_default(),
            kubectl(&kubeconfig, &["get", "pod", &test_pod, "-o", "yaml"]).unwrap_or_default(),
        );
        helm.run(&["uninstall", &release, "--wait", "--timeout", "120s"]);
    }
}

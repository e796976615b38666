//! The real kubectl against a cluster's kubeconfig, for tests that drive skiff as users do.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::{kubectl_bin, wait_for};

/// kubectl with `KUBECONFIG` set to one cluster's kubeconfig.
pub struct Kubectl(pub PathBuf);

impl Kubectl {
    /// Runs kubectl, feeding `stdin` if given; never fails itself.
    pub fn output(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = Command::new(kubectl_bin())
            .args(args)
            .env("KUBECONFIG", &self.0)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl starts");
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .expect("piped stdin")
                .write_all(input.as_bytes())
                .expect("kubectl reads its stdin");
        }
        child.wait_with_output().expect("kubectl runs")
    }

    /// Runs kubectl and returns its stdout; panics with its stderr when it fails.
    pub fn run(&self, args: &[&str]) -> String {
        self.run_stdin(args, None)
    }

    /// As `run`, with `stdin` fed to kubectl.
    pub fn run_stdin(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.output(args, stdin);
        assert!(
            out.status.success(),
            "kubectl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("kubectl prints UTF-8")
    }

    /// `kubectl apply -f -` of a manifest.
    pub fn apply(&self, yaml: &str) {
        self.run_stdin(&["apply", "-f", "-"], Some(yaml));
    }

    /// `args -o json`, parsed.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.run(&all)).expect("kubectl -o json prints JSON")
    }

    /// The `items` of a list query (`get pods -l ...`).
    pub fn items(&self, args: &[&str]) -> Vec<Value> {
        self.json(args)["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// A pod as JSON, or None when it does not exist.
    pub fn pod(&self, name: &str) -> Option<Value> {
        let out = self.output(&["get", "pod", name, "-o", "json"], None);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).expect("kubectl prints JSON"))
    }

    /// One field of a pod, by JSON pointer.
    pub fn pod_field(&self, name: &str, pointer: &str) -> Option<Value> {
        self.pod(name).and_then(|p| p.pointer(pointer).cloned())
    }

    /// The ready endpoints of `service`, over its EndpointSlices.
    pub fn ready_endpoints(&self, service: &str) -> usize {
        let list = self.json(&[
            "get",
            "endpointslices",
            "-l",
            &format!("kubernetes.io/service-name={service}"),
        ]);
        list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
            .filter(|e| e["conditions"]["ready"] == true)
            .count()
    }

    /// Waits until the pod is in `phase` and returns it.
    pub fn wait_phase(&self, name: &str, phase: &str, timeout: Duration) -> Value {
        let mut last = None;
        wait_for(&format!("pod {name} to be {phase}"), timeout, || {
            last = self.pod(name);
            last.as_ref()
                .and_then(|p| p.pointer("/status/phase"))
                .and_then(Value::as_str)
                == Some(phase)
        });
        last.expect("seen in the wait")
    }
}

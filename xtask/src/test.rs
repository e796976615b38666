//! `cargo xtask test` and `cargo xtask lint`: the gates (rustfmt, clippy) and the test suite,
//! whole or one tier at a time, least powerful tier first:
//!
//! | tier         | what                                                        | needs           |
//! |--------------|-------------------------------------------------------------|-----------------|
//! | `unit`       | `--lib --bins` of every crate (the store suite starts etcd) | etcd (setup)    |
//! | `component`  | integration tests (`tests/*.rs`) of every crate except the  | etcd (setup)    |
//! |              | agent and skiff-e2e: the API in process on redb, ...        |                 |
//! | `privileged` | the agent's integration tests: netns, BPF, containers       | root            |
//! | `e2e`        | skiff-e2e's tests: the real binaries and kubectl            | root (most)     |
//! | `conformance`| kr8s's published tests on a fresh local cluster; fails when | root            |
//! |              | fewer pass than docs/conformance.md records (the ratchet)   |                 |
//!
//! The suite is built once, by `cargo test --workspace --no-run`, and each tier runs the test
//! executables of that build that belong to it (as cargo-nextest does). Letting cargo build each
//! tier's selection instead (`cargo test --test a --test b`) rebuilt skiff-control and its
//! protobuf dependencies for the component tier: without the agent in the build, a crate used
//! both by a proc-macro and by the agent's dependencies (itertools) became a host-only unit with
//! another hash, and every test binary that links skiff-control was built and stored twice
//! (measured on a clean clone: 2 more minutes and about 7 GB; the second copy once filled CI's
//! disk). With extra arguments a tier still runs `cargo test` with them, selecting integration
//! tests by target name, so a name must be unique across the tiers (checked here).

use std::collections::BTreeMap;
use std::process::Command;

use clap::ValueEnum;

use crate::{conformance, ebpf, images, setup, util};

/// A test tier, least powerful first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Tier {
    /// Unit tests: every crate's lib and bins; no root, no network.
    Unit,
    /// Integration tests without root: control's in-process API tests, kubia's, ...
    Component,
    /// The agent's integration tests: network namespaces, BPF, containers (root).
    Privileged,
    /// End-to-end tests: skiff-control, skiff-agent and kubectl as processes (root).
    E2e,
    /// An external suite (kr8s's tests) against a local cluster, and the pass-count ratchet
    /// (root).
    Conformance,
}

impl Tier {
    const ALL: [Tier; 5] = [
        Tier::Unit,
        Tier::Component,
        Tier::Privileged,
        Tier::E2e,
        Tier::Conformance,
    ];

    /// The tier of integration tests of package `package`.
    fn of_package(package: &str) -> Tier {
        match package {
            "skiff-agent" => Tier::Privileged,
            "skiff-e2e" => Tier::E2e,
            _ => Tier::Component,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Tier::Unit => "unit",
            Tier::Component => "component",
            Tier::Privileged => "privileged",
            Tier::E2e => "e2e",
            Tier::Conformance => "conformance",
        }
    }

    /// Whether the tier needs the eBPF object embedded in the agent and the sample images.
    fn needs_artifacts(self) -> bool {
        matches!(self, Tier::Privileged | Tier::E2e | Tier::Conformance)
    }
}

/// `cargo xtask lint`: rustfmt and clippy, warnings denied. Cheap next to the tests (clippy
/// type-checks without code generation), so `test` runs it first to fail fast.
pub fn lint() -> anyhow::Result<()> {
    eprintln!("lint: cargo fmt --all -- --check");
    util::cargo(&["fmt", "--all", "--", "--check"])
        .map_err(|e| anyhow::anyhow!("{e}\nformatting differs: run `cargo fmt --all`"))?;
    eprintln!("lint: cargo clippy --workspace --all-targets -- -D warnings");
    util::cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])
}

/// `cargo xtask test [--tier T] [-- ARGS]`.
///
/// Without a tier: setup, the lint gates, then every tier in order (all of them run, failures
/// are reported at the end). Without a tier but with `ARGS`, they select what runs, as before
/// tiers existed: one `cargo test --workspace --no-fail-fast ARGS` after the gates. With a
/// tier: that tier only, without the gates; `ARGS` are added to its `cargo test`.
pub fn run(tier: Option<Tier>, extra: &[String]) -> anyhow::Result<()> {
    setup::run()?;
    if tier.is_none() {
        lint()?;
    }
    let tiers: Vec<Tier> = tier.map_or_else(|| Tier::ALL.to_vec(), |t| vec![t]);
    // The agent embeds the eBPF object at build time: build it before the first test build, so
    // the agent is not compiled twice (without, then with it).
    if tiers.iter().any(|t| t.needs_artifacts()) {
        ebpf::build()?;
        images::build()?;
    }
    if tier.is_none() && !extra.is_empty() {
        return cargo_test(&[], extra);
    }
    // One build for every tier. It also makes target/debug/skiff-{control,agent}, which the
    // end-to-end tests and the conformance cluster start (cargo builds a package's binaries for
    // its integration tests): they share the test build's dependency features, where `cargo
    // build` would use others (no dev-dependencies: tokio without test-util, ...) and compile
    // the dependency tree a second time.
    let binaries = build_tests()?;
    let integration = integration_tests()?;
    let mut failed = Vec::new();
    for t in tiers {
        eprintln!("test: tier {}", t.name());
        let ok = match t {
            // Not cargo tests: the suite runs under pytest against a cluster of the binaries
            // the test build made.
            Tier::Conformance => conformance::ratchet(),
            _ if extra.is_empty() => run_binaries(&binaries, t),
            // No `--doc`: it cannot be combined with other targets, and alone it resolves
            // features without dev-dependencies, so it rebuilt the dependency tree (measured:
            // it recompiled kube-client and its dependencies after a full test build). The
            // workspace has no doc tests; its code blocks are `text` or `ignore`.
            Tier::Unit => cargo_test(&["--lib", "--bins"], extra),
            _ => {
                let selected: Vec<String> = integration
                    .iter()
                    .filter(|(_, tier)| **tier == t)
                    .flat_map(|(name, _)| ["--test".to_owned(), name.clone()])
                    .collect();
                if selected.is_empty() {
                    eprintln!("test: tier {} has no tests", t.name());
                    Ok(())
                } else {
                    let selected: Vec<&str> = selected.iter().map(String::as_str).collect();
                    cargo_test(&selected, extra)
                }
            }
        };
        if let Err(e) = ok {
            eprintln!("test: tier {} failed: {e}", t.name());
            failed.push(t.name());
        }
    }
    anyhow::ensure!(failed.is_empty(), "failed tiers: {}", failed.join(", "));
    Ok(())
}

/// `cargo test --workspace --no-fail-fast SELECT EXTRA` with the environment the end-to-end
/// tests read.
fn cargo_test(select: &[&str], extra: &[String]) -> anyhow::Result<()> {
    util::run(
        test_env(&mut util::cargo_command())
            .args(["test", "--workspace", "--no-fail-fast"])
            .args(select)
            .args(extra),
    )
}

/// One test executable of the workspace's test build.
#[derive(Debug, PartialEq)]
struct TestBinary {
    package: String,
    /// The target: the crate's name for a lib's or bin's unit tests, the file name of an
    /// integration test.
    target: String,
    tier: Tier,
    path: std::path::PathBuf,
    /// The package's directory: cargo runs a package's tests there.
    dir: std::path::PathBuf,
}

/// `cargo test --workspace --no-run`: builds every test executable and lists them from cargo's
/// JSON messages (diagnostics are still rendered to stderr).
fn build_tests() -> anyhow::Result<Vec<TestBinary>> {
    let out = util::cargo_command()
        .args([
            "test",
            "--workspace",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run cargo: {e}"))?;
    anyhow::ensure!(
        out.status.success(),
        "cargo test --workspace --no-run failed with {}",
        out.status
    );
    test_binaries(&String::from_utf8_lossy(&out.stdout))
}

/// The test executables in cargo's JSON messages, ordered by package, then unit tests before
/// integration tests, then name.
fn test_binaries(messages: &str) -> anyhow::Result<Vec<TestBinary>> {
    let mut binaries = Vec::new();
    for line in messages.lines().filter(|l| l.starts_with('{')) {
        let m: serde_json::Value = serde_json::from_str(line)?;
        let (Some(path), Some(manifest)) = (m["executable"].as_str(), m["manifest_path"].as_str())
        else {
            continue;
        };
        if m["reason"] != "compiler-artifact" || m["profile"]["test"] != true {
            continue;
        }
        let kinds = m["target"]["kind"].as_array().cloned().unwrap_or_default();
        let package = package_name(m["package_id"].as_str().unwrap_or_default());
        let tier = if kinds.iter().any(|k| k == "test") {
            Tier::of_package(&package)
        } else if kinds
            .iter()
            .any(|k| k == "lib" || k == "bin" || k == "proc-macro")
        {
            Tier::Unit
        } else {
            continue; // benches and examples built in test mode run with `cargo bench` or not
        };
        let dir = std::path::Path::new(manifest)
            .parent()
            .ok_or_else(|| anyhow::anyhow!("manifest path {manifest} has no directory"))?;
        binaries.push(TestBinary {
            package,
            target: m["target"]["name"].as_str().unwrap_or_default().to_owned(),
            tier,
            path: path.into(),
            dir: dir.to_owned(),
        });
    }
    binaries.sort_by(|a, b| (&a.package, a.tier, &a.target).cmp(&(&b.package, b.tier, &b.target)));
    Ok(binaries)
}

/// The package name in a cargo package id: `path+file:///w/control#skiff-control@0.1.0`,
/// `path+file:///w/xtask#0.1.0` (the directory is the name), or the older
/// `skiff-control 0.1.0 (path+file:///w/control)`.
fn package_name(id: &str) -> String {
    if let Some((url, fragment)) = id.rsplit_once('#') {
        return match fragment.split_once('@') {
            Some((name, _)) => name.to_owned(),
            None => url.rsplit('/').next().unwrap_or_default().to_owned(),
        };
    }
    id.split(' ').next().unwrap_or_default().to_owned()
}

/// Runs the tier's executables one after the other, each in its package's directory with the
/// environment the end-to-end tests read; all run, failures are reported at the end.
fn run_binaries(binaries: &[TestBinary], tier: Tier) -> anyhow::Result<()> {
    let root = util::root();
    let mut failed = Vec::new();
    for b in binaries.iter().filter(|b| b.tier == tier) {
        let shown = b.path.strip_prefix(&root).unwrap_or(&b.path);
        eprintln!(
            "     Running {} {} ({})",
            b.package,
            b.target,
            shown.display()
        );
        let status = test_env(&mut Command::new(&b.path))
            .current_dir(&b.dir)
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => failed.push(format!("{} {} ({s})", b.package, b.target)),
            Err(e) => failed.push(format!("{} {} (cannot run: {e})", b.package, b.target)),
        }
    }
    anyhow::ensure!(failed.is_empty(), "failed: {}", failed.join(", "));
    Ok(())
}

/// Adds the environment the end-to-end tests read: the binaries to start, kubectl and helm.
fn test_env(cmd: &mut Command) -> &mut Command {
    let target = util::target_dir();
    cmd.env("SKIFF_CONTROL_BIN", target.join("debug/skiff-control"))
        .env("SKIFF_AGENT_BIN", target.join("debug/skiff-agent"))
        .env("SKIFF_KUBECTL", setup::kubectl_path())
        .env("SKIFF_HELM3", setup::helm_path(3))
        .env("SKIFF_HELM4", setup::helm_path(4))
}

/// Every integration test target of the workspace and its tier, from `cargo metadata`.
fn integration_tests() -> anyhow::Result<BTreeMap<String, Tier>> {
    let out = Command::new(util::cargo_bin())
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .current_dir(util::root())
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    tiers_of(&serde_json::from_slice(&out.stdout)?)
}

/// [`integration_tests`] over `cargo metadata` output. Fails when two packages of different
/// tiers have a test of the same name: `--test NAME` would select both.
fn tiers_of(metadata: &serde_json::Value) -> anyhow::Result<BTreeMap<String, Tier>> {
    let mut tests: BTreeMap<String, (Tier, String)> = BTreeMap::new();
    let packages = metadata["packages"].as_array().into_iter().flatten();
    for package in packages {
        let name = package["name"].as_str().unwrap_or_default();
        let tier = Tier::of_package(name);
        for target in package["targets"].as_array().into_iter().flatten() {
            let is_test = target["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "test"));
            let Some(test) = target["name"].as_str().filter(|_| is_test) else {
                continue;
            };
            if let Some((other_tier, other)) = tests.get(test) {
                anyhow::ensure!(
                    *other_tier == tier,
                    "integration test `{test}` exists in {other} ({}) and {name} ({}): tiers \
                     select tests by name, rename one",
                    other_tier.name(),
                    tier.name()
                );
            }
            tests.insert(test.to_owned(), (tier, name.to_owned()));
        }
    }
    Ok(tests.into_iter().map(|(t, (tier, _))| (t, tier)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn package(name: &str, tests: &[&str]) -> serde_json::Value {
        let mut targets = vec![json!({"name": name.replace('-', "_"), "kind": ["lib"]})];
        targets.extend(tests.iter().map(|t| json!({"name": t, "kind": ["test"]})));
        json!({"name": name, "targets": targets})
    }

    #[test]
    fn integration_tests_are_tiered_by_package() {
        let metadata = json!({"packages": [
            package("skiff-control", &["api", "apps"]),
            package("skiff-agent", &["datapath"]),
            package("skiff-e2e", &["kubectl"]),
            package("kubia", &["drain"]),
        ]});
        let tiers = tiers_of(&metadata).unwrap();
        assert_eq!(
            tiers.into_iter().collect::<Vec<_>>(),
            [
                ("api".to_owned(), Tier::Component),
                ("apps".to_owned(), Tier::Component),
                ("datapath".to_owned(), Tier::Privileged),
                ("drain".to_owned(), Tier::Component),
                ("kubectl".to_owned(), Tier::E2e),
            ]
        );
    }

    #[test]
    fn a_test_name_in_two_tiers_is_an_error() {
        let metadata = json!({"packages": [
            package("skiff-control", &["leader_election"]),
            package("skiff-e2e", &["leader_election"]),
        ]});
        let err = tiers_of(&metadata).unwrap_err().to_string();
        assert!(err.contains("leader_election"), "{err}");
        assert!(err.contains("rename one"), "{err}");
    }

    #[test]
    fn test_binaries_are_read_from_cargo_messages() {
        let artifact = |id: &str, manifest: &str, name: &str, kind: &str, test: bool, exe| {
            json!({"reason": "compiler-artifact", "package_id": id, "manifest_path": manifest,
                   "target": {"name": name, "kind": [kind]}, "profile": {"test": test},
                   "executable": exe})
            .to_string()
        };
        let messages = [
            artifact(
                "path+file:///w/control#skiff-control@0.1.0",
                "/w/control/Cargo.toml",
                "rbac",
                "test",
                true,
                Some("/w/target/debug/deps/rbac-1"),
            ),
            artifact(
                "path+file:///w/control#skiff-control@0.1.0",
                "/w/control/Cargo.toml",
                "skiff_control",
                "lib",
                true,
                Some("/w/target/debug/deps/skiff_control-2"),
            ),
            // The binary itself, not its unit tests: not a test executable.
            artifact(
                "path+file:///w/control#skiff-control@0.1.0",
                "/w/control/Cargo.toml",
                "skiff-control",
                "bin",
                false,
                Some("/w/target/debug/skiff-control"),
            ),
            // A library without tests to run is not an executable.
            artifact(
                "registry+https://github.com/rust-lang/crates.io-index#serde@1.0.0",
                "/r/serde/Cargo.toml",
                "serde",
                "lib",
                false,
                None,
            ),
            artifact(
                "path+file:///w/agent#skiff-agent@0.1.0",
                "/w/agent/Cargo.toml",
                "datapath",
                "test",
                true,
                Some("/w/target/debug/deps/datapath-3"),
            ),
            artifact(
                "path+file:///w/xtask#0.1.0",
                "/w/xtask/Cargo.toml",
                "xtask",
                "bin",
                true,
                Some("/w/target/debug/deps/xtask-4"),
            ),
            artifact(
                "skiff-e2e 0.1.0 (path+file:///w/tests)",
                "/w/tests/Cargo.toml",
                "kubectl",
                "test",
                true,
                Some("/w/target/debug/deps/kubectl-5"),
            ),
            r#"{"reason":"build-finished","success":true}"#.to_owned(),
        ]
        .join("\n");
        let found: Vec<_> = test_binaries(&messages)
            .unwrap()
            .into_iter()
            .map(|b| (b.package, b.target, b.tier, b.dir.display().to_string()))
            .collect();
        let expect =
            |p: &str, t: &str, tier, d: &str| (p.to_owned(), t.to_owned(), tier, d.to_owned());
        assert_eq!(
            found,
            [
                expect("skiff-agent", "datapath", Tier::Privileged, "/w/agent"),
                expect("skiff-control", "skiff_control", Tier::Unit, "/w/control"),
                expect("skiff-control", "rbac", Tier::Component, "/w/control"),
                expect("skiff-e2e", "kubectl", Tier::E2e, "/w/tests"),
                expect("xtask", "xtask", Tier::Unit, "/w/xtask"),
            ]
        );
    }

    #[test]
    fn the_workspace_test_names_are_unique_across_tiers() {
        let tiers = integration_tests().unwrap();
        assert_eq!(tiers.get("api"), Some(&Tier::Component));
        assert_eq!(tiers.get("datapath"), Some(&Tier::Privileged));
        assert_eq!(tiers.get("kubectl"), Some(&Tier::E2e));
    }
}

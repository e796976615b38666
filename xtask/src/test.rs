//! `cargo xtask test` and `cargo xtask lint`: the gates (rustfmt, clippy) and the test suite,
//! whole or one tier at a time, least powerful tier first:
//!
//! | tier         | what                                                        | needs           |
//! |--------------|-------------------------------------------------------------|-----------------|
//! | `unit`       | `--lib --bins` of every crate                               | nothing         |
//! | `component`  | integration tests (`tests/*.rs`) of every crate except the  | nothing         |
//! |              | agent and skiff-e2e: the API in process on redb, ...        |                 |
//! | `privileged` | the agent's integration tests: netns, BPF, containers       | root            |
//! | `e2e`        | skiff-e2e's tests: the real binaries and kubectl            | root (most)     |
//! | `conformance`| kr8s's published tests on a fresh local cluster; fails when | root            |
//! |              | fewer pass than docs/conformance.md records (the ratchet)   |                 |
//!
//! Every tier runs `cargo test --workspace` and selects targets, never packages: selecting
//! packages (`-p`, `--exclude`) changes which dependency features cargo unifies, so each tier
//! would rebuild half the dependency tree. Integration tests are selected by target name, so a
//! name must be unique across the tiers (checked here).

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
    // The end-to-end tests start target/debug/skiff-{control,agent}. Built by the test build
    // (cargo builds a package's binaries for its integration tests), they share its dependency
    // features; `cargo build` would use others (no dev-dependencies: tokio without test-util,
    // ...) and compile the dependency tree a second time.
    if tiers.contains(&Tier::E2e) || tiers.contains(&Tier::Conformance) {
        util::cargo(&["test", "--workspace", "--no-run"])?;
    }
    if tier.is_none() && !extra.is_empty() {
        return cargo_test(&[], extra);
    }
    let integration = integration_tests()?;
    let mut failed = Vec::new();
    for t in tiers {
        eprintln!("test: tier {}", t.name());
        let ok = match t {
            // No `--doc`: it cannot be combined with other targets, and alone it resolves
            // features without dev-dependencies, so it rebuilt the dependency tree (measured:
            // it recompiled kube-client and its dependencies after a full test build). The
            // workspace has no doc tests; its code blocks are `text` or `ignore`.
            Tier::Unit => cargo_test(&["--lib", "--bins"], extra),
            // Not cargo tests: the suite runs under pytest against a cluster of the binaries
            // the test build made.
            Tier::Conformance => conformance::ratchet(),
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
    let target = util::target_dir();
    util::run(
        util::cargo_command()
            .args(["test", "--workspace", "--no-fail-fast"])
            .args(select)
            .args(extra)
            .env("SKIFF_CONTROL_BIN", target.join("debug/skiff-control"))
            .env("SKIFF_AGENT_BIN", target.join("debug/skiff-agent"))
            .env("SKIFF_KUBECTL", setup::kubectl_path()),
    )
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
    fn the_workspace_test_names_are_unique_across_tiers() {
        let tiers = integration_tests().unwrap();
        assert_eq!(tiers.get("api"), Some(&Tier::Component));
        assert_eq!(tiers.get("datapath"), Some(&Tier::Privileged));
        assert_eq!(tiers.get("kubectl"), Some(&Tier::E2e));
    }
}

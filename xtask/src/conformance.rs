//! `cargo xtask conformance`: a test suite nobody here wrote, run as published against a real
//! cluster, with a pass count that only goes up.
//!
//! The suite is kr8s's (a Python Kubernetes client whose wheel ships its own tests, about 240:
//! CRUD, watch, selectors, tables, discovery, scale, logs, exec, port-forward, RBAC, a CRD).
//! `setup` installs it, pinned, into the tools virtualenv (`conformance/kr8s/requirements.txt`).
//! Its tests expect a `k8s_cluster` fixture that upstream comes from pytest-kind; the plugin
//! `conformance/kr8s/skiff_kr8s.py` gives it for an existing cluster and records each test's
//! outcome. The run:
//!
//! 1. brings up a fresh local cluster (`target/conformance/cluster`, its own bridge and
//!    namespaces, so it does not disturb a `cluster up` cluster) whose nodes pull the suites'
//!    images (`nginx`, `pause`, `ubuntu`, ...) from a registry on the cluster's bridge through
//!    registry mirrors, never from the internet; or, with `--kubeconfig`, uses any cluster;
//! 2. runs the suite with a per-test timeout (`conformance/kr8s/pytest.ini`), no reruns, no
//!    deselection;
//! 3. classifies every failure with `conformance/kr8s/failures.yaml` (a later issue's feature,
//!    a limit of this environment, or a skiff bug) and writes the report: `docs/conformance.md`
//!    for the local cluster (the recorded count), elsewhere under target/conformance otherwise;
//! 4. prints `kr8s: N passed, M failed` last.
//!
//! `cargo xtask test` runs it as its last tier and fails when the count falls below the one
//! recorded in docs/conformance.md ([`ratchet`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;
use clap::{Args as ClapArgs, ValueEnum};
use serde::Deserialize;

use crate::{cluster, setup, util};

/// The suites the harness knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Suite {
    /// kr8s's own tests (the version pinned in conformance/kr8s/requirements.txt).
    Kr8s,
}

impl Suite {
    fn name(self) -> &'static str {
        match self {
            Suite::Kr8s => "kr8s",
        }
    }

    /// The suite's files in the repository: requirements, pytest settings, plugin, failures.
    fn dir(self) -> PathBuf {
        util::root().join("conformance").join(self.name())
    }
}

/// Options of `cargo xtask conformance`.
#[derive(Debug, ClapArgs)]
pub struct Args {
    /// The suite to run.
    #[arg(long, value_enum, default_value = "kr8s")]
    pub suite: Suite,
    /// Nodes of the local cluster.
    #[arg(long, default_value_t = 2)]
    pub nodes: usize,
    /// Leave the local cluster running afterwards (stop it with
    /// `cargo xtask cluster down --dir target/conformance/cluster`).
    #[arg(long)]
    pub keep_cluster: bool,
    /// Run against this cluster instead of a fresh local one (for comparison with another
    /// Kubernetes); the report then goes to target/conformance/, not docs/.
    #[arg(long, conflicts_with_all = ["nodes", "keep_cluster"])]
    pub kubeconfig: Option<PathBuf>,
}

/// A test's outcome as the plugin records it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Outcome {
    /// passed, failed, error, skipped or xfailed.
    pub outcome: String,
    /// The first line of the failure (or skip reason).
    #[serde(default)]
    pub message: String,
}

/// Why a test fails, from failures.yaml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Known {
    /// The test id (`test_file.py::test_name[param]`), or a prefix ending in `*`.
    test: String,
    /// `feature`, `environment` or `bug`.
    group: Group,
    /// The feature (with its issue) or the limit of the environment.
    what: String,
    /// The cause in one line.
    cause: String,
    /// The test passes or fails by timing, not by what skiff does: its passes are not
    /// counted in the ratchet (a flaky pass must not become the floor).
    #[serde(default)]
    flaky: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Group {
    /// A skiff bug: fix it (the group should stay empty).
    Bug,
    /// A feature a later issue builds.
    Feature,
    /// A limit of the environment the suite runs in.
    Environment,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KnownFile {
    failure: Vec<Known>,
}

/// A report section: the group (none: not yet classified) and what it names.
type GroupKey = (Option<Group>, String);

/// The counts of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counts {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
    /// Passes of tests not marked flaky: what the ratchet counts.
    pub steady: usize,
    /// Failures failures.yaml does not name, with their first line: the tests a change broke
    /// (or a flaky test not yet marked), which the ratchet's error names so that a CI log alone
    /// says what to look at.
    pub unexpected: Vec<String>,
}

/// Each test's timeout (pytest-timeout), shorter than upstream's 300 s so that a hanging test
/// costs a minute, not five.
const TEST_TIMEOUT_SECS: u64 = 60;

/// Where the local conformance cluster lives.
fn cluster_dir() -> PathBuf {
    util::target_dir().join("conformance/cluster")
}

/// `cargo xtask conformance`.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let report = match args.kubeconfig {
        Some(_) => util::target_dir().join("conformance/report.md"),
        None => util::root().join("docs/conformance.md"),
    };
    let counts = run_to(args, &report, false)?;
    println!(
        "{}: {} passed, {} failed",
        args.suite.name(),
        counts.passed,
        counts.failed
    );
    Ok(())
}

/// The conformance tier of `cargo xtask test`: runs the suite on a fresh local cluster, writes
/// the report under target/, and fails when fewer tests pass than docs/conformance.md records.
pub fn ratchet() -> anyhow::Result<()> {
    let args = Args {
        suite: Suite::Kr8s,
        nodes: 2,
        keep_cluster: false,
        kubeconfig: None,
    };
    let recorded = recorded_count(&util::root().join("docs/conformance.md"))?;
    let counts = run_to(
        &args,
        &util::target_dir().join("conformance/report.md"),
        true,
    )?;
    println!("kr8s: {} passed, {} failed", counts.passed, counts.failed);
    anyhow::ensure!(
        counts.steady >= recorded,
        "kr8s: {} passed ({} not marked flaky), fewer than the {recorded} recorded in \
         docs/conformance.md: a change broke tests that passed (see \
         target/conformance/report.md); failures not in failures.yaml:\n  {}",
        counts.passed,
        counts.steady,
        match counts.unexpected.is_empty() {
            true => "none, so a test failures.yaml lists as failing (not marked flaky) passed in the recorded run: mark it flaky".to_owned(),
            false => counts.unexpected.join("\n  "),
        }
    );
    if counts.steady > recorded {
        eprintln!(
            "conformance: {} pass now, {recorded} recorded: run `cargo xtask conformance` and \
             commit docs/conformance.md to raise the count",
            counts.steady
        );
    }
    Ok(())
}

/// The pass count recorded in a report: its `<!-- passed: N -->` line.
fn recorded_count(report: &Path) -> anyhow::Result<usize> {
    let text = std::fs::read_to_string(report)
        .with_context(|| format!("reading the recorded count from {}", report.display()))?;
    text.lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("<!-- passed:")?
                .strip_suffix("-->")?
                .trim()
                .parse()
                .ok()
        })
        .with_context(|| format!("{} has no `<!-- passed: N -->` line", report.display()))
}

/// Runs the suite (on a fresh local cluster unless `args.kubeconfig`; `prebuilt`: the binaries
/// are built already) and writes the report to `report`.
fn run_to(args: &Args, report: &Path, prebuilt: bool) -> anyhow::Result<Counts> {
    setup::run()?;
    let out = util::target_dir().join("conformance");
    std::fs::create_dir_all(&out)?;
    let (kubeconfig, _cluster) = match &args.kubeconfig {
        Some(k) => (k.clone(), None),
        None => {
            let c =
                cluster::Conformance::up(&cluster_dir(), args.nodes, args.keep_cluster, prebuilt)?;
            (c.kubeconfig(), Some(c))
        }
    };
    let results_path = out.join(format!("{}-results.json", args.suite.name()));
    let _ = std::fs::remove_file(&results_path);
    let log = out.join(format!("{}.log", args.suite.name()));
    let started = std::time::Instant::now();
    let status = pytest(args.suite, &kubeconfig, &results_path, &log)?;
    let elapsed = started.elapsed();
    let results: BTreeMap<String, Outcome> =
        serde_json::from_slice(&std::fs::read(&results_path).with_context(|| {
            format!(
                "pytest ({status}) wrote no results to {}; its output is in {}",
                results_path.display(),
                log.display()
            )
        })?)?;
    anyhow::ensure!(
        !results.is_empty(),
        "pytest ran no tests; see {}",
        log.display()
    );
    let known = known_failures(args.suite)?;
    let versions = versions(args.suite, &kubeconfig);
    let text = render(
        args.suite,
        &results,
        &known,
        &versions,
        args.kubeconfig.is_none(),
        elapsed,
    );
    if let Some(dir) = report.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(report, text)?;
    eprintln!(
        "conformance: report in {}, pytest output in {}",
        report.display(),
        log.display()
    );
    Ok(count(&results, &known))
}

/// Runs pytest on the suite's installed tests with the plugin, output to `log`.
fn pytest(
    suite: Suite,
    kubeconfig: &Path,
    results: &Path,
    log: &Path,
) -> anyhow::Result<std::process::ExitStatus> {
    let python = setup::venv_python();
    let tests = installed_tests(suite)?;
    let log_file = std::fs::File::create(log)?;
    eprintln!(
        "conformance: running {} ({}), output in {}",
        suite.name(),
        tests.display(),
        log.display()
    );
    Command::new(&python)
        .args(["-m", "pytest", "-c"])
        .arg(suite.dir().join("pytest.ini"))
        .arg("--rootdir")
        .arg(util::target_dir().join("conformance"))
        .args(["-p", "skiff_kr8s", "-p", "no:cacheprovider", "-rfE", "-q"])
        // The slowest tests in the log: the first suspects when a test that passes here fails
        // on a slower machine by its 60 s timeout.
        .arg("--durations=25")
        .arg("-o")
        .arg(format!("timeout={TEST_TIMEOUT_SECS}"))
        .arg(&tests)
        .current_dir(util::target_dir().join("conformance"))
        .env("PYTHONPATH", suite.dir())
        .env("SKIFF_CONFORMANCE_KUBECONFIG", kubeconfig)
        .env("SKIFF_CONFORMANCE_KUBECTL", setup::kubectl_path())
        .env("SKIFF_CONFORMANCE_RESULTS", results)
        .env_remove("KUBECONFIG")
        .stdin(std::process::Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .status()
        .context("running pytest")
}

/// The suite's test directory inside the installed package.
fn installed_tests(suite: Suite) -> anyhow::Result<PathBuf> {
    let out = Command::new(setup::venv_python())
        .args([
            "-c",
            &format!(
                "import os, {0}; print(os.path.dirname({0}.__file__))",
                suite.name()
            ),
        ])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "{} is not installed in the tools virtualenv: {}",
        suite.name(),
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("tests");
    anyhow::ensure!(dir.is_dir(), "{} has no tests directory", suite.name());
    Ok(dir)
}

fn known_failures(suite: Suite) -> anyhow::Result<Vec<Known>> {
    let path = suite.dir().join("failures.yaml");
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    let known: KnownFile =
        serde_yaml::from_str(&text).with_context(|| format!("{}", path.display()))?;
    Ok(known.failure)
}

fn classify<'a>(test: &str, known: &'a [Known]) -> Option<&'a Known> {
    known.iter().find(|k| match k.test.strip_suffix('*') {
        Some(prefix) => test.starts_with(prefix),
        None => k.test == test,
    })
}

fn count(results: &BTreeMap<String, Outcome>, known: &[Known]) -> Counts {
    let n = |o: &[&str]| {
        results
            .values()
            .filter(|r| o.contains(&r.outcome.as_str()))
            .count()
    };
    let steady = results
        .iter()
        .filter(|(t, r)| r.outcome == "passed" && !classify(t, known).is_some_and(|k| k.flaky))
        .count();
    let unexpected = results
        .iter()
        .filter(|(t, r)| {
            matches!(r.outcome.as_str(), "failed" | "error") && classify(t, known).is_none()
        })
        .map(|(t, r)| format!("{t}: {}", r.message))
        .collect();
    Counts {
        passed: n(&["passed"]),
        failed: n(&["failed", "error"]),
        skipped: n(&["skipped", "xfailed"]),
        steady,
        unexpected,
    }
}

/// The versions the report names: the suite's, kubectl's, the server's.
fn versions(suite: Suite, kubeconfig: &Path) -> Vec<(String, String)> {
    let python = setup::venv_python();
    let pip = |pkg: &str| {
        Command::new(&python)
            .args(["-m", "pip", "show", pkg])
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .find_map(|l| l.strip_prefix("Version: ").map(str::to_owned))
            })
            .unwrap_or_else(|| "?".into())
    };
    let kubectl = |args: &[&str], pointer: &str| {
        Command::new(setup::kubectl_path())
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .output()
            .ok()
            .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
            .and_then(|v| v.pointer(pointer)?.as_str().map(str::to_owned))
            .unwrap_or_else(|| "?".into())
    };
    vec![
        (suite.name().to_owned(), pip(suite.name())),
        ("pytest".into(), pip("pytest")),
        (
            "kubectl".into(),
            kubectl(
                &["version", "--client", "-o", "json"],
                "/clientVersion/gitVersion",
            ),
        ),
        (
            "server".into(),
            kubectl(&["version", "-o", "json"], "/serverVersion/gitVersion"),
        ),
    ]
}

fn render(
    suite: Suite,
    results: &BTreeMap<String, Outcome>,
    known: &[Known],
    versions: &[(String, String)],
    recorded: bool,
    elapsed: std::time::Duration,
) -> String {
    use std::fmt::Write as _;
    let c = count(results, known);
    let mut s = String::new();
    let _ = writeln!(s, "# Conformance: external test suites against skiff\n");
    let _ = writeln!(
        s,
        "Generated by `cargo xtask conformance --suite {}` on {} ({} s). Every test of the suite \
         runs as published: no edits, no deselection, no reruns; each has a {} s timeout. The \
         local cluster runs as the suite's kind cluster does, without a metrics API \
         (`skiff-control --resource-metrics-api=false`): kind has no metrics-server, and \
         `test_api_resources` expects exactly one resource named `pods`, which metrics.k8s.io \
         would make two (as metrics-server does on any cluster).\n",
        suite.name(),
        crate::bench_api::chrono_like_now(),
        elapsed.as_secs(),
        TEST_TIMEOUT_SECS
    );
    for (what, version) in versions {
        let _ = writeln!(s, "- {what}: {version}");
    }
    let _ = writeln!(
        s,
        "\n**{}: {} passed, {} failed, {} skipped** (of {}).\n",
        suite.name(),
        c.passed,
        c.failed,
        c.skipped,
        results.len()
    );
    if recorded {
        let _ = writeln!(
            s,
            "The ratchet is the {} passes of tests not marked flaky in failures.yaml: `cargo \
             xtask test` fails when fewer pass. Raise it (rerun this command and commit this \
             file) with every change that makes a test pass.\n\n<!-- passed: {} -->\n",
            c.steady, c.steady
        );
    }
    let mut groups: BTreeMap<GroupKey, Vec<(&str, &str)>> = BTreeMap::new();
    for (test, r) in results {
        if !matches!(r.outcome.as_str(), "failed" | "error") {
            continue;
        }
        let (key, cause) = match classify(test, known) {
            Some(k) => ((Some(k.group), k.what.clone()), k.cause.as_str()),
            None => ((None, String::new()), r.message.as_str()),
        };
        groups.entry(key).or_default().push((test, cause));
    }
    let _ = writeln!(s, "## Failures by cause\n");
    if groups.is_empty() {
        let _ = writeln!(s, "None.\n");
    }
    for ((group, what), tests) in &groups {
        let heading = match group {
            None => "Not yet classified (add to failures.yaml)".to_owned(),
            Some(Group::Bug) => format!("skiff bug: {what}"),
            Some(Group::Feature) => format!("Feature of a later issue: {what}"),
            Some(Group::Environment) => format!("Limit of the environment: {what}"),
        };
        let _ = writeln!(s, "### {heading} ({})\n", tests.len());
        for (test, cause) in tests {
            let _ = writeln!(s, "- `{test}`: {cause}");
        }
        let _ = writeln!(s);
    }
    let stale: Vec<&str> = known
        .iter()
        .filter(|k| !k.flaky)
        .filter(|k| {
            !results.iter().any(|(t, r)| {
                matches!(r.outcome.as_str(), "failed" | "error")
                    && classify(t, known).is_some_and(|m| std::ptr::eq(m, *k))
            })
        })
        .map(|k| k.test.as_str())
        .collect();
    if !stale.is_empty() {
        let _ = writeln!(
            s,
            "## Classified failures that did not fail this run\n\nRemove them from \
             conformance/{}/failures.yaml if they pass for good:\n",
            suite.name()
        );
        for t in stale {
            let _ = writeln!(s, "- `{t}`");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(o: &str) -> Outcome {
        Outcome {
            outcome: o.into(),
            message: format!("{o} message"),
        }
    }

    #[test]
    fn counts_and_report_group_failures_by_cause() {
        let results: BTreeMap<String, Outcome> = [
            ("t.py::a", outcome("passed")),
            ("t.py::b", outcome("failed")),
            ("t.py::c[x]", outcome("error")),
            ("t.py::c[y]", outcome("failed")),
            ("t.py::d", outcome("skipped")),
            ("t.py::e", outcome("failed")),
            ("t.py::timing", outcome("passed")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let known: KnownFile = serde_yaml::from_str(
            r#"
failure:
  - test: "t.py::b"
    group: feature
    what: RBAC and tokens (issue 13)
    cause: no TokenRequest
  - test: "t.py::c*"
    group: environment
    what: no internet
    cause: pulls from docker.io
  - test: "t.py::gone"
    group: bug
    what: x
    cause: y
  - test: "t.py::timing"
    group: environment
    what: timing
    cause: races the clock
    flaky: true
"#,
        )
        .unwrap();
        assert_eq!(
            count(&results, &known.failure),
            Counts {
                passed: 2,
                failed: 4,
                skipped: 1,
                steady: 1,
                unexpected: vec!["t.py::e: failed message".to_owned()],
            }
        );
        let text = render(
            Suite::Kr8s,
            &results,
            &known.failure,
            &[("kr8s".into(), "1".into())],
            true,
            std::time::Duration::from_secs(3),
        );
        assert!(
            text.contains("<!-- passed: 1 -->"),
            "flaky passes are not the floor: {text}"
        );
        assert!(text.contains("### Feature of a later issue: RBAC and tokens (issue 13) (1)"));
        assert!(text.contains("### Limit of the environment: no internet (2)"));
        assert!(text.contains("- `t.py::e`: failed message"), "{text}");
        assert!(text.contains("Not yet classified"));
        assert!(
            text.contains("- `t.py::gone`"),
            "stale entries are listed: {text}"
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.md");
        std::fs::write(&p, &text).unwrap();
        assert_eq!(recorded_count(&p).unwrap(), 1);
    }

    #[test]
    fn a_report_without_a_count_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.md");
        std::fs::write(&p, "# nothing\n").unwrap();
        assert!(recorded_count(&p)
            .unwrap_err()
            .to_string()
            .contains("passed: N"));
    }

    #[test]
    fn the_failures_file_parses_and_names_no_skiff_bug() {
        let known = known_failures(Suite::Kr8s).unwrap();
        let bugs: Vec<&str> = known
            .iter()
            .filter(|k| k.group == Group::Bug)
            .map(|k| k.test.as_str())
            .collect();
        assert!(
            bugs.is_empty(),
            "skiff bugs are fixed, not recorded: {bugs:?}"
        );
    }
}

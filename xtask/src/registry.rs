//! `cargo xtask registry up|push|down`: a local image registry serving the sample images, for
//! nodes whose registry mirror configuration points docker.io, gcr.io and registry.k8s.io here.
//!
//! It is Debian's `docker-registry` (distribution 2.8) on the given address, plain HTTP, no
//! authentication, storage in `<dir>/data`. Every image of `target/images` is pushed under its
//! origin's name: `docker.io/library/nginx:latest` is at `ADDR/docker.io/library/nginx:latest`,
//! `gcr.io/google_containers/pause:latest` at `ADDR/gcr.io/google_containers/pause:latest`.
//! A push first asks the registry for the tag's manifest digest (one HEAD request) and runs
//! `skopeo copy` only for tags that differ, with `--preserve-digests` so that the digests in
//! the registry are the layout's.
//!
//! From other xtask code: [`serve`] starts a registry and returns a [`Registry`] guard that
//! stops it when dropped (or [`Registry::detach`] leaves it running, as `registry up` does);
//! [`push`] pushes; [`down`] stops a detached one by its pid file.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::{images, util};

/// The address `registry up` listens on unless told otherwise.
pub const DEFAULT_ADDR: &str = "127.0.0.1:5000";
/// How long the registry may take to answer after it starts.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long it may take to exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Where `registry up` keeps the registry's state unless told otherwise.
pub fn default_dir() -> PathBuf {
    util::root().join("target/registry")
}

/// `registry` subcommands.
#[derive(Debug, Subcommand)]
pub enum RegistryCommand {
    /// Build the images (unless --no-build), start the registry in the background and push
    /// every image to it. With one already running for --dir at --addr, only push.
    Up(UpArgs),
    /// Push the images again (only tags whose digest differs).
    Push(PushArgs),
    /// Stop the registry `up` started; --purge also removes its storage.
    Down(DownArgs),
}

/// Options of `registry up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Address to listen on (plain HTTP).
    #[arg(long, default_value = DEFAULT_ADDR)]
    pub addr: SocketAddr,
    /// The registry's configuration, log, pid file and storage (`data/`).
    #[arg(long, default_value_os_t = default_dir())]
    pub dir: PathBuf,
    /// The OCI layouts to push (one directory per layout).
    #[arg(long, default_value_os_t = images::images_dir())]
    pub images: PathBuf,
    /// Do not run `cargo xtask images` first.
    #[arg(long)]
    pub no_build: bool,
}

/// Options of `registry push`.
#[derive(Debug, Args)]
pub struct PushArgs {
    /// The registry's address.
    #[arg(long, default_value = DEFAULT_ADDR)]
    pub addr: SocketAddr,
    /// The OCI layouts to push.
    #[arg(long, default_value_os_t = images::images_dir())]
    pub images: PathBuf,
}

/// Options of `registry down`.
#[derive(Debug, Args)]
pub struct DownArgs {
    /// The directory given to `up`.
    #[arg(long, default_value_os_t = default_dir())]
    pub dir: PathBuf,
    /// Remove the directory with the pushed images too.
    #[arg(long)]
    pub purge: bool,
}

/// Runs a `registry` subcommand.
pub fn run(command: RegistryCommand) -> anyhow::Result<()> {
    match command {
        RegistryCommand::Up(args) => {
            if !args.no_build {
                images::build()?;
            }
            match running(&args.dir)? {
                Some((pid, addr)) if addr == args.addr => {
                    eprintln!("registry: already running at {addr} (pid {pid})");
                }
                Some((pid, addr)) => anyhow::bail!(
                    "a registry for {} already runs at {addr} (pid {pid}); \
                     `cargo xtask registry down --dir {}` first",
                    args.dir.display(),
                    args.dir.display()
                ),
                None => {
                    let registry = serve(args.addr, &args.dir)?;
                    let pid = registry.detach();
                    eprintln!(
                        "registry: serving at http://{} (pid {pid}, storage {}); stop it with \
                         `cargo xtask registry down --dir {}`",
                        args.addr,
                        args.dir.join("data").display(),
                        args.dir.display()
                    );
                }
            }
            push(args.addr, &args.images).map(drop)
        }
        RegistryCommand::Push(args) => push(args.addr, &args.images).map(drop),
        RegistryCommand::Down(args) => down(&args.dir, args.purge),
    }
}

/// A running registry; stopped (SIGTERM, then SIGKILL) when dropped unless detached.
#[derive(Debug)]
pub struct Registry {
    child: Option<Child>,
    addr: SocketAddr,
    dir: PathBuf,
}

#[allow(
    dead_code,
    reason = "the API other xtask modules (a cluster with a registry mirror) call"
)]
impl Registry {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Pushes the layouts under `images` to it; see [`push`].
    pub fn push(&self, images: &Path) -> anyhow::Result<Vec<Pushed>> {
        push(self.addr, images)
    }

    /// Leaves it running after this guard is gone; [`down`] with the same directory stops it.
    /// Returns its pid.
    pub fn detach(mut self) -> u32 {
        let pid = self.pid();
        // Dropping a Child neither kills nor waits for it; when we exit it is re-parented.
        self.child.take();
        pid
    }

    /// Stops it now and removes its pid file and configuration (the storage stays).
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        terminate(child.id(), || child.try_wait().ok().flatten().is_some())?;
        child.wait()?;
        remove_state(&self.dir)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Err(e) = self.stop_inner() {
            eprintln!("registry: stopping {}: {e:#}", self.addr);
        }
    }
}

fn pid_file(dir: &Path) -> PathBuf {
    dir.join("registry.pid")
}

fn config_file(dir: &Path) -> PathBuf {
    dir.join("config.yml")
}

/// The registry's configuration: filesystem storage, deletes allowed (so a test or a user can
/// remove tags), plain HTTP on `addr`, no authentication.
fn config(addr: SocketAddr, data: &Path) -> String {
    format!(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  \
         delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
        data.display()
    )
}

/// Starts Debian's docker-registry on `addr` with its state in `dir` (configuration, log,
/// pid file, `data/` storage) and waits until it answers. Fails when one already runs for
/// `dir`.
pub fn serve(addr: SocketAddr, dir: &Path) -> anyhow::Result<Registry> {
    if let Some((pid, at)) = running(dir)? {
        anyhow::bail!(
            "a registry for {} already runs at {at} (pid {pid})",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir.join("data"))
        .with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))?;
    std::fs::write(config_file(&dir), config(addr, &dir.join("data")))?;
    let log = std::fs::File::create(dir.join("registry.log"))?;
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(config_file(&dir))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: a Ctrl-C meant for `cargo xtask registry up` (or a test run)
        // must not reach a registry left running on purpose.
        .process_group(0)
        .spawn()
        .context(
            "starting docker-registry (Debian's docker-registry package: `cargo xtask setup`)",
        )?;
    let pid = child.id();
    let mut registry = Registry {
        child: Some(child),
        addr,
        dir: dir.clone(),
    };
    std::fs::write(pid_file(&dir), format!("{pid} {addr}\n"))?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if matches!(http(addr, "GET", "/v2/", &[]), Ok((200, _))) {
            return Ok(registry);
        }
        let exited = registry
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten());
        if exited.is_some() || Instant::now() > deadline {
            let why = match exited {
                Some(status) => format!("exited with {status}"),
                None => format!("did not answer within {START_TIMEOUT:?}"),
            };
            let log = std::fs::read_to_string(dir.join("registry.log")).unwrap_or_default();
            drop(registry);
            anyhow::bail!("docker-registry on {addr} {why}; its log:\n{}", log.trim());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The registry recorded in `dir`'s pid file, if that process is still a docker-registry
/// serving `dir`'s configuration (a stale file, or a pid reused by another program, is not).
pub fn running(dir: &Path) -> anyhow::Result<Option<(u32, SocketAddr)>> {
    let Ok(text) = std::fs::read_to_string(pid_file(dir)) else {
        return Ok(None);
    };
    let mut fields = text.split_whitespace();
    let (Some(pid), Some(addr)) = (fields.next(), fields.next()) else {
        return Ok(None);
    };
    let (Ok(pid), Ok(addr)) = (pid.parse::<u32>(), addr.parse::<SocketAddr>()) else {
        return Ok(None);
    };
    let Ok(dir) = dir.canonicalize() else {
        return Ok(None);
    };
    let ours = std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
        let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
        args.first()
            .is_some_and(|a| a.ends_with(b"docker-registry"))
            && args
                .iter()
                .any(|a| *a == config_file(&dir).as_os_str().as_encoded_bytes())
    });
    Ok((ours && alive(pid)).then_some((pid, addr)))
}

/// Whether `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // pid (comm) state ...: comm may contain spaces and parentheses.
    let running = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
        .is_some_and(|state| state != "Z" && state != "X");
    // The state is the main thread's: a Go program's main thread is a zombie while its other
    // threads are still exiting, and they hold the file table (the listening socket) until the
    // last one is gone. The leader's own `fd/` is empty by then (it dropped its reference), so
    // look for the other threads instead: a thread leaves `task/` only after its descriptors
    // are closed.
    running
        || std::fs::read_dir(format!("/proc/{pid}/task")).is_ok_and(|tasks| {
            tasks
                .flatten()
                .any(|t| t.file_name().to_str() != Some(pid.to_string().as_str()))
        })
}

fn kill(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .context("running kill")?;
    // kill fails when the process is already gone, which is what we want anyway.
    let _ = status;
    Ok(())
}

/// SIGTERM, then SIGKILL after [`STOP_TIMEOUT`], until `gone()` says it has exited.
fn terminate(pid: u32, mut gone: impl FnMut() -> bool) -> anyhow::Result<()> {
    kill(pid, "TERM")?;
    let deadline = Instant::now() + STOP_TIMEOUT;
    while !gone() {
        if Instant::now() > deadline {
            kill(pid, "KILL")?;
            let deadline = Instant::now() + STOP_TIMEOUT;
            while !gone() {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "docker-registry (pid {pid}) survives SIGKILL"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn remove_state(dir: &Path) -> anyhow::Result<()> {
    for f in [pid_file(dir), config_file(dir), dir.join("registry.log")] {
        match std::fs::remove_file(&f) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", f.display()))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Stops the registry whose state is in `dir` (started by `registry up` or a detached
/// [`Registry`]) and removes its pid file, configuration and log; with `purge` the whole
/// directory, storage included. Nothing running is not an error.
pub fn down(dir: &Path, purge: bool) -> anyhow::Result<()> {
    match running(dir)? {
        Some((pid, addr)) => {
            terminate(pid, || !alive(pid))?;
            eprintln!("registry: stopped the registry at {addr} (pid {pid})");
        }
        None => eprintln!("registry: none running for {}", dir.display()),
    }
    if purge {
        if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        Ok(())
    } else {
        remove_state(dir)
    }
}

/// One HTTP/1.0 request to `addr`; returns the status code and the response headers
/// (lowercase names).
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, Vec<(String, String)>)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let text = String::from_utf8_lossy(&resp);
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    let mut lines = head.lines();
    let code = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response from {addr}")))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok((code, headers))
}

/// `docker.io/library/nginx:latest` -> (`docker.io/library/nginx`, `latest`).
fn split_reference(reference: &str) -> anyhow::Result<(&str, &str)> {
    let (repo, tag) = reference
        .rsplit_once(':')
        .filter(|(_, tag)| !tag.contains('/'))
        .with_context(|| format!("{reference} has no tag"))?;
    Ok((repo, tag))
}

/// The digest of the manifest the registry has for `reference`, if any.
fn remote_digest(addr: SocketAddr, reference: &str) -> anyhow::Result<Option<String>> {
    let (repo, tag) = split_reference(reference)?;
    let (code, headers) = http(
        addr,
        "HEAD",
        &format!("/v2/{repo}/manifests/{tag}"),
        &[(
            "Accept",
            "application/vnd.oci.image.manifest.v1+json, \
             application/vnd.docker.distribution.manifest.v2+json",
        )],
    )
    .with_context(|| format!("asking {addr} for {reference}"))?;
    Ok(match code {
        200 => headers
            .into_iter()
            .find(|(k, _)| k == "docker-content-digest")
            .map(|(_, v)| v),
        _ => None,
    })
}

/// What [`push`] did with one tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pushed {
    /// Where it is: `ADDR/docker.io/library/nginx:latest`.
    pub destination: String,
    /// Its manifest digest.
    pub digest: String,
    /// False when the registry had it already.
    pub copied: bool,
}

/// Pushes every image of the OCI layouts under `images` (as `cargo xtask images` writes them)
/// to the registry at `addr`, each under `ADDR/<its full reference>`; tags the registry
/// already has with the same digest are skipped.
pub fn push(addr: SocketAddr, images: &Path) -> anyhow::Result<Vec<Pushed>> {
    let started = Instant::now();
    let mut out = Vec::new();
    for (layout, refs) in images::list_layouts(images)? {
        for (reference, digest) in refs {
            let destination = format!("{addr}/{reference}");
            let copied = remote_digest(addr, &reference)?.as_deref() != Some(digest.as_str());
            if copied {
                util::run(
                    Command::new("skopeo")
                        .args([
                            "--insecure-policy",
                            "copy",
                            "--quiet",
                            "--dest-tls-verify=false",
                            "--preserve-digests",
                        ])
                        .arg(format!("oci:{}:{reference}", layout.display()))
                        .arg(format!("docker://{destination}")),
                )
                .context("pushing with skopeo (Debian's skopeo package: `cargo xtask setup`)")?;
                let now = remote_digest(addr, &reference)?;
                anyhow::ensure!(
                    now.as_deref() == Some(digest.as_str()),
                    "after pushing {destination} the registry reports {now:?}, not {digest}"
                );
            }
            out.push(Pushed {
                destination,
                digest,
                copied,
            });
        }
    }
    let copied = out.iter().filter(|p| p.copied).count();
    eprintln!(
        "registry: {} tags at {addr}: {copied} pushed, {} up to date ({:.1} s)",
        out.len(),
        out.len() - copied,
        started.elapsed().as_secs_f64()
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_at_the_tag() {
        assert_eq!(
            split_reference("docker.io/library/nginx:latest").unwrap(),
            ("docker.io/library/nginx", "latest")
        );
        assert_eq!(
            split_reference("localhost:5000/x/y:1.2").unwrap(),
            ("localhost:5000/x/y", "1.2")
        );
        assert!(split_reference("localhost:5000/x/y").is_err());
    }

    #[test]
    fn stale_pid_files_are_not_running_registries() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(running(tmp.path()).unwrap(), None);
        // Our own pid: alive, but not a docker-registry with this configuration.
        std::fs::write(
            pid_file(tmp.path()),
            format!("{} 127.0.0.1:5000\n", std::process::id()),
        )
        .unwrap();
        assert_eq!(running(tmp.path()).unwrap(), None);
        std::fs::write(pid_file(tmp.path()), "garbage").unwrap();
        assert_eq!(running(tmp.path()).unwrap(), None);
    }

    #[test]
    fn configuration_listens_where_asked() {
        let c = config("127.0.0.1:5999".parse().unwrap(), Path::new("/r/data"));
        assert!(c.contains("addr: 127.0.0.1:5999\n"), "{c}");
        assert!(c.contains("rootdirectory: /r/data\n"), "{c}");
    }
}

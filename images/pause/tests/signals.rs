//! The real pause binary: it keeps running until SIGTERM or SIGINT and then exits 0.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

struct Pause(Child);

impl Drop for Pause {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn exits_zero_on(signal: &str) {
    let mut pause = Pause(
        Command::new(env!("CARGO_BIN_EXE_pause"))
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // A signal sent before main installs its handlers would kill it with the default action
    // (and a non-zero status): wait until /proc shows SIGINT, SIGTERM and SIGCHLD caught.
    let pid = pause.0.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let caught = status
            .lines()
            .find_map(|l| l.strip_prefix("SigCgt:"))
            .map(|m| u64::from_str_radix(m.trim(), 16).unwrap())
            .unwrap();
        // SIGINT (2), SIGTERM (15) and SIGCHLD (17) are all caught once main has set them up.
        let want = (1 << (2 - 1)) | (1 << (15 - 1)) | (1 << (17 - 1));
        if caught & want == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pause never installed its handlers"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(pause.0.try_wait().unwrap().is_none(), "pause exited early");
    let kill = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = pause.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "pause ignored SIG{signal}");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(0), "pause exited with {status}");
    let mut err = String::new();
    std::io::Read::read_to_string(pause.0.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(err.contains("Shutting down"), "stderr: {err}");
}

#[test]
fn exits_zero_on_sigterm() {
    exits_zero_on("TERM");
}

#[test]
fn exits_zero_on_sigint() {
    exits_zero_on("INT");
}

#[test]
fn prints_its_version() {
    let out = Command::new(env!("CARGO_BIN_EXE_pause"))
        .arg("-v")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("pause.rs "));
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

/// PIDs of the zombie children of `parent`.
fn zombies_of(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap();
        let ppid: u32 = fields.next().unwrap().parse().unwrap();
        if ppid == parent && state == "Z" {
            out.push(pid);
        }
    }
    out
}

/// As PID 1 of a new PID namespace, pause reaps the orphans re-parented to it.
#[test]
fn reaps_orphans_as_pid_1() {
    if !is_root() {
        eprintln!("skipping reaps_orphans_as_pid_1: needs root (a new PID namespace)");
        return;
    }
    // unshare forks pause as PID 1 of the new namespace and kills it when unshare dies.
    let unshare = Pause(
        Command::new("unshare")
            .args(["--pid", "--fork", "--kill-child", "--"])
            .arg(env!("CARGO_BIN_EXE_pause"))
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let pause = loop {
        let children =
            std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", unshare.0.id()))
                .unwrap_or_default();
        if let Some(pid) = children.split_whitespace().next() {
            break pid.parse::<u32>().unwrap();
        }
        assert!(Instant::now() < deadline, "unshare never started pause");
        std::thread::sleep(Duration::from_millis(10));
    };
    // A shell in pause's namespace starts three short sleeps and exits at once: they are
    // re-parented to pause, which must reap them when they end.
    let status = Command::new("nsenter")
        .args(["-t", &pause.to_string(), "-p", "--", "sh", "-c"])
        .arg("for i in 1 2 3; do sleep 0.2 & done")
        .status()
        .unwrap();
    assert!(status.success());
    let children = || {
        std::fs::read_to_string(format!("/proc/{pause}/task/{pause}/children")).unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !children().trim().is_empty() {
        assert!(
            Instant::now() < deadline,
            "pause kept children {:?} (zombies: {:?})",
            children(),
            zombies_of(pause)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

//! Shared pieces of the rule-based proxy modes (iptables, nftables): stable chain names and
//! running the rule tools.

use std::io::Write;
use std::process::{Command, Stdio};

use std::collections::{BTreeMap, BTreeSet};

use super::{Frontend, ProxyError, Service};

/// What a rule-based mode (iptables, nftables) should have, and which frontends changed since
/// its last commit: both modes buffer changes and write them in one batch.
#[derive(Debug, Default)]
pub struct Pending {
    /// Desired services by frontend.
    pub services: BTreeMap<Frontend, Service>,
    /// Frontends to rewrite (or remove) at the next commit.
    pub dirty: BTreeSet<Frontend>,
}

impl Pending {
    /// Records a service; unchanged services are not marked dirty.
    pub fn upsert(&mut self, service: &Service) {
        let mut service = service.clone();
        service.backends.sort();
        service.backends.dedup();
        if self.services.get(&service.frontend) != Some(&service) {
            self.dirty.insert(service.frontend);
            self.services.insert(service.frontend, service);
        }
    }

    /// Removes a service.
    pub fn delete(&mut self, frontend: &Frontend) {
        if self.services.remove(frontend).is_some() {
            self.dirty.insert(*frontend);
        }
    }
}

/// A stable 16-character name for a frontend or backend, as kube-proxy derives
/// `KUBE-SVC-<hash>` chain names (FNV-1a here; only stability and spread matter).
pub fn short_hash(parts: &[&str]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016X}")
}

/// The hash of a frontend.
pub fn frontend_hash(f: &Frontend) -> String {
    short_hash(&[&f.ip.to_string(), &f.port.to_string(), proto(f.protocol)])
}

/// `tcp` / `udp`.
pub fn proto(p: super::Protocol) -> &'static str {
    match p {
        super::Protocol::Tcp => "tcp",
        super::Protocol::Udp => "udp",
    }
}

/// The command for `program`, inside network namespace `netns` when given (`ip netns exec`).
pub fn command(netns: Option<&str>, program: &str) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, program]);
            c
        }
        None => Command::new(program),
    }
}

/// Runs `program args` feeding `input` on stdin; fails with its stderr.
pub fn run_with_input(
    netns: Option<&str>,
    program: &str,
    args: &[&str],
    input: &str,
) -> Result<(), ProxyError> {
    let mut child = command(netns, program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| ProxyError::Command {
            command: program.to_owned(),
            detail: e.to_string(),
        })?;
    child
        .stdin
        .take()
        .expect("stdin was piped")
        .write_all(input.as_bytes())
        .map_err(|e| ProxyError::Command {
            command: program.to_owned(),
            detail: e.to_string(),
        })?;
    let out = child.wait_with_output().map_err(|e| ProxyError::Command {
        command: program.to_owned(),
        detail: e.to_string(),
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ProxyError::Command {
            command: format!("{program} {}", args.join(" ")),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Runs a command; returns whether it succeeded (for `-C` checks) or fails to start.
pub fn run_status(netns: Option<&str>, program: &str, args: &[&str]) -> Result<bool, ProxyError> {
    command(netns, program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .map_err(|e| ProxyError::Command {
            command: program.to_owned(),
            detail: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_stable_and_distinct() {
        assert_eq!(short_hash(&["a", "b"]), short_hash(&["a", "b"]));
        assert_ne!(short_hash(&["ab", ""]), short_hash(&["a", "b"]));
        assert_eq!(short_hash(&["x"]).len(), 16);
    }
}

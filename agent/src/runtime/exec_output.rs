//! Running a short command in a container and collecting its exit code and output, for exec
//! probes.

use std::time::{Duration, Instant};

use super::{io_err, Container, Result, Runtime, RuntimeError};

/// How an exec'd command ended.
#[derive(Debug, Clone)]
pub struct ExecOutput {
    /// Its exit code (128 + signal when a signal ended it, -1 when it was killed at timeout).
    pub code: i32,
    /// Its stdout and stderr, interleaved, at most 10 KiB (as the kubelet keeps for probes).
    pub output: Vec<u8>,
}

/// Probe output beyond this is dropped.
const MAX_OUTPUT: usize = 10 * 1024;

/// Reads `pipe` to its end on a thread of its own, keeping at most `MAX_OUTPUT` bytes.
fn drain<R: std::io::Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = p.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                if buf.len() < MAX_OUTPUT {
                    buf.extend_from_slice(&chunk[..n]);
                }
            }
        }
        buf
    })
}

impl Runtime {
    /// Runs `argv` in the container's namespaces and root, waiting at most `timeout`.
    pub fn exec_output(
        &self,
        container: &Container,
        argv: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput> {
        if argv.is_empty() {
            return Err(RuntimeError::Invalid {
                what: "exec command",
                value: String::new(),
            });
        }
        // The shim's tenant exec: the container's namespaces, cgroup, capabilities and seccomp.
        let exec = self.exec(container, argv, false)?;
        let mut child = exec.child;
        drop(child.stdin.take());
        // Drain the pipes while waiting, so a chatty command cannot block on a full pipe.
        let out = drain(child.stdout.take());
        let err = drain(child.stderr.take());
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().map_err(io_err("waiting for an exec"))? {
                let mut output = out.join().unwrap_or_default();
                output.extend(err.join().unwrap_or_default());
                output.truncate(MAX_OUTPUT);
                let code = status.code().unwrap_or_else(|| {
                    128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)
                });
                return Ok(ExecOutput { code, output });
            }
            if Instant::now() >= deadline {
                super::kill_exec(child.id());
                let _ = child.wait();
                return Ok(ExecOutput {
                    code: -1,
                    output: b"timed out".to_vec(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

//! Running a short command in a container and collecting its exit code and output, for exec
//! probes.

use std::io::Read as _;
use std::process::{Command, Stdio};
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
        let mut child = Command::new("nsenter")
            .arg(format!("--target={}", container.pid))
            .args([
                "--mount", "--uts", "--ipc", "--net", "--pid", "--root", "--wd", "--",
            ])
            .args(argv)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io_err("running nsenter"))?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().map_err(io_err("waiting for nsenter"))? {
                let mut output = Vec::new();
                if let Some(mut o) = child.stdout.take() {
                    let _ = o.read_to_end(&mut output);
                }
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_end(&mut output);
                }
                output.truncate(MAX_OUTPUT);
                let code = status.code().unwrap_or_else(|| {
                    128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)
                });
                return Ok(ExecOutput { code, output });
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
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

//! The stdio the agent keeps for a container started with `stdin: true` or `tty: true`, so
//! that `kubectl attach` can write to it and resize its terminal, as CRI runtimes keep it in
//! their shims.
//!
//! - `stdin` without `tty`: the container's stdin is the read end of a pipe whose write end
//!   lives here. The container never sees EOF while the agent holds it; with `stdinOnce` the
//!   first attached client that detaches closes it.
//! - `tty`: the container's stdio is a pseudo-terminal allocated inside it (libcontainer sends
//!   the master over a console socket, as for `exec --tty`). A thread copies everything the
//!   terminal prints to the container's log file, so logs and attach (which follows the log)
//!   see it; input goes to the master when the container has `stdin`.
//!
//! The descriptors live in the agent's memory: an agent that restarts loses them (a terminal's
//! container gets SIGHUP, a pipe's reads EOF), and attach then streams output only.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::path::PathBuf;
use std::sync::Mutex;

/// What the agent holds of one container's stdio.
#[derive(Debug)]
pub struct ContainerStdio {
    /// Where input goes (the pipe's write end, or the terminal's master); `None` without
    /// `stdin` or once closed.
    stdin: Mutex<Option<File>>,
    /// The terminal's master, for resizing.
    master: Option<OwnedFd>,
    stdin_once: bool,
}

impl ContainerStdio {
    /// A container's stdin pipe (write end) without a terminal.
    pub fn pipe(writer: OwnedFd, stdin_once: bool) -> Self {
        Self {
            stdin: Mutex::new(Some(File::from(writer))),
            master: None,
            stdin_once,
        }
    }

    /// A container's terminal: starts the thread copying its output to `log` (appended); with
    /// `stdin` its input is the master too.
    pub fn terminal(
        master: OwnedFd,
        stdin: bool,
        stdin_once: bool,
        log: PathBuf,
    ) -> std::io::Result<Self> {
        let reader = File::from(master.try_clone()?);
        let writer = if stdin {
            Some(File::from(master.try_clone()?))
        } else {
            None
        };
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        std::thread::Builder::new()
            .name("tty-log".into())
            .spawn(move || copy_until_hangup(reader, &mut out))?;
        Ok(Self {
            stdin: Mutex::new(writer),
            master: Some(master),
            stdin_once,
        })
    }

    /// Whether the container has a terminal.
    pub fn tty(&self) -> bool {
        self.master.is_some()
    }

    /// Whether a client's `stdinOnce` detach closes stdin.
    pub fn stdin_once(&self) -> bool {
        self.stdin_once
    }

    /// A handle to write the container's input, if it takes input (still).
    pub fn stdin(&self) -> Option<File> {
        let guard = self.stdin.lock().unwrap_or_else(|e| e.into_inner());
        guard.as_ref().and_then(|f| f.try_clone().ok())
    }

    /// Closes the agent's end of stdin (`stdinOnce`): a pipe's reader sees EOF once the
    /// handles given out by [`ContainerStdio::stdin`] are gone too. A terminal stays open
    /// (its master also carries the output), it only takes no more input.
    pub fn close_stdin(&self) {
        self.stdin.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// Sets the terminal's size (columns, rows); nothing without a terminal.
    pub fn resize(&self, width: u16, height: u16) {
        if let Some(m) = &self.master {
            set_window_size(m, width, height);
        }
    }
}

/// Copies a terminal's output to the log until the terminal hangs up (EIO once every slave
/// descriptor, i.e. the container's processes, closed it).
fn copy_until_hangup(mut master: File, log: &mut File) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match master.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if let Err(e) = log.write_all(&buf[..n]) {
                    tracing::warn!("writing a terminal's output to its log: {e}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Sets a terminal's window size (TIOCSWINSZ on its master); the foreground process gets
/// SIGWINCH from the kernel.
#[allow(unsafe_code, reason = "the TIOCSWINSZ ioctl has no safe wrapper")]
pub fn set_window_size(master: &OwnedFd, width: u16, height: u16) {
    nix::ioctl_write_ptr_bad!(tiocswinsz, nix::libc::TIOCSWINSZ, nix::libc::winsize);
    let size = nix::libc::winsize {
        ws_row: height,
        ws_col: width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: `master` is an open terminal master and `size` a valid winsize for the call.
    let result = unsafe { tiocswinsz(master.as_raw_fd(), &size) };
    if let Err(e) = result {
        tracing::debug!("TIOCSWINSZ: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pipe_takes_input_until_closed() {
        let (reader, writer) = nix::unistd::pipe().unwrap();
        let stdio = ContainerStdio::pipe(writer, true);
        assert!(!stdio.tty());
        assert!(stdio.stdin_once());
        stdio.stdin().unwrap().write_all(b"hello\n").unwrap();
        stdio.close_stdin();
        assert!(stdio.stdin().is_none());
        let mut got = String::new();
        File::from(reader).read_to_string(&mut got).unwrap();
        // EOF came: every write end is closed.
        assert_eq!(got, "hello\n");
    }

    #[test]
    fn a_terminal_copies_its_output_to_the_log_and_resizes() {
        let pty = nix::pty::openpty(None, None).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("c.log");
        let stdio = ContainerStdio::terminal(pty.master, true, false, log.clone()).unwrap();
        assert!(stdio.tty());
        stdio.resize(100, 30);
        let size = rustix::termios::tcgetwinsize(&pty.slave).unwrap();
        assert_eq!((size.ws_col, size.ws_row), (100, 30));
        // The "container" writes to its terminal, then goes.
        File::from(pty.slave.try_clone().unwrap())
            .write_all(b"out\n")
            .unwrap();
        // Input written to the master is readable on the slave.
        stdio.stdin().unwrap().write_all(b"in\n").unwrap();
        let mut line = [0u8; 3];
        File::from(pty.slave.try_clone().unwrap())
            .read_exact(&mut line)
            .unwrap();
        assert_eq!(&line, b"in\n");
        drop(pty.slave);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let content = std::fs::read_to_string(&log).unwrap_or_default();
            // The terminal translates newlines (onlcr) and echoes the input.
            if content == "out\r\nin\r\n" {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "log holds {content:?}"
            );
            std::thread::yield_now();
        }
    }
}

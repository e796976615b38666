//! `skiff-agent shim`: the only place libcontainer runs. libcontainer forks and clones with raw
//! syscalls, which can deadlock a multi-threaded process (the agent's tokio runtime), so the
//! runtime re-executes the agent binary as this short-lived, single-threaded helper for each
//! operation, as containerd does with its shims. One operation per invocation; errors go to
//! stderr with a non-zero exit; `create` prints the container's pid on stdout.
//!
//! The container's init process outlives the shim: after `create` its parent (libcontainer's
//! intermediate process) exits and it re-parents to the nearest child subreaper, the agent
//! (see [`super::become_subreaper`]), which collects its exit status.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::signal::Signal;
use libcontainer::syscall::syscall::SyscallType;

#[derive(Debug, Parser)]
#[command(name = "skiff-agent shim")]
struct ShimArgs {
    /// libcontainer's state directory.
    #[arg(long)]
    root: PathBuf,
    /// The container id.
    #[arg(long)]
    id: String,
    #[command(subcommand)]
    op: Op,
}

#[derive(Debug, Subcommand)]
enum Op {
    /// Create the container from an OCI bundle; print its pid.
    Create {
        /// The bundle directory (config.json).
        #[arg(long)]
        bundle: PathBuf,
        /// stdout and stderr go to this file (appended).
        #[arg(long)]
        log: PathBuf,
    },
    /// Start the created container's process.
    Start,
    /// Send a signal to the container's init process.
    Kill {
        /// The signal number.
        #[arg(long)]
        signal: i32,
    },
    /// Delete the container (with --force, kill it first if it runs).
    Delete {
        #[arg(long)]
        force: bool,
    },
}

/// Runs one shim operation; `args` are the arguments after `shim`.
pub fn main(args: Vec<OsString>) -> ExitCode {
    let args = match ShimArgs::try_parse_from(
        std::iter::once(OsString::from("skiff-agent shim")).chain(args),
    ) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut msg = e.to_string();
            let mut source = std::error::Error::source(&*e);
            while let Some(s) = source {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                source = s.source();
            }
            eprintln!("{msg}");
            ExitCode::FAILURE
        }
    }
}

type ShimResult = Result<(), Box<dyn std::error::Error>>;

fn run(args: ShimArgs) -> ShimResult {
    let container_dir = args.root.join(&args.id);
    match args.op {
        Op::Create { bundle, log } => {
            let log_file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .map_err(|e| format!("opening log {}: {e}", log.display()))?;
            // Separate descriptors: libcontainer dup2()s then closes each one.
            let stdout: OwnedFd = log_file.try_clone()?.into();
            let stderr: OwnedFd = log_file.into();
            let stdin: OwnedFd = File::open("/dev/null")?.into();
            std::fs::create_dir_all(&args.root)?;
            let container = ContainerBuilder::new(args.id.clone(), SyscallType::default())
                .with_root_path(&args.root)?
                .with_stdin(stdin)
                .with_stdout(stdout)
                .with_stderr(stderr)
                .validate_id()?
                .as_init(&bundle)
                .with_systemd(false)
                .with_detach(true)
                .build()?;
            let pid = container
                .pid()
                .ok_or("libcontainer created the container without a pid")?;
            println!("{}", pid.as_raw());
            Ok(())
        }
        Op::Start => Ok(Container::load(container_dir)?.start()?),
        Op::Kill { signal } => {
            let signal = Signal::try_from(signal).map_err(|e| format!("signal {signal}: {e:?}"))?;
            Ok(Container::load(container_dir)?.kill(signal, false)?)
        }
        Op::Delete { force } => {
            if !container_dir.exists() {
                return Ok(());
            }
            Ok(Container::load(container_dir)?.delete(force)?)
        }
    }
}

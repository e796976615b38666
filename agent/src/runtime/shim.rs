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
use std::os::fd::{AsFd as _, OwnedFd};
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
        /// The container's stdin is the shim's own (a pipe the agent keeps writing to)
        /// instead of /dev/null.
        #[arg(long)]
        stdin_from_shim: bool,
        /// The container gets a pseudo-terminal (its spec has `process.terminal`) whose master
        /// is sent to this unix socket.
        #[arg(long)]
        console_socket: Option<PathBuf>,
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
    /// Run a further process in the running container (its namespaces, cgroup, user,
    /// capabilities and seccomp profile, as its init process has them), wait for it and exit
    /// with its exit code (128 + signal number when a signal ended it). Without --tty the
    /// process inherits the shim's stdin, stdout and stderr.
    Exec {
        /// Give the process a new pseudo-terminal in the container as its stdio and
        /// controlling terminal; the terminal's master is sent to this unix socket (as
        /// `runc exec --console-socket` does).
        #[arg(long)]
        console_socket: Option<PathBuf>,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        argv: Vec<String>,
    },
}

/// The exit code of a shim whose `exec` could not start the process (as shells report a
/// command that cannot run).
pub const EXEC_FAILED: u8 = 126;

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
    let exec = matches!(args.op, Op::Exec { .. });
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if exec => {
            eprintln!("exec failed: {}", error_chain(&*e));
            ExitCode::from(EXEC_FAILED)
        }
        Err(e) => {
            eprintln!("{}", error_chain(&*e));
            ExitCode::FAILURE
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

type ShimResult = Result<(), Box<dyn std::error::Error>>;

fn run(args: ShimArgs) -> ShimResult {
    let container_dir = args.root.join(&args.id);
    match args.op {
        Op::Create {
            bundle,
            log,
            stdin_from_shim,
            console_socket,
        } => {
            let log_file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .map_err(|e| format!("opening log {}: {e}", log.display()))?;
            // Separate descriptors: libcontainer dup2()s then closes each one.
            let stdout: OwnedFd = log_file.try_clone()?.into();
            let stderr: OwnedFd = log_file.into();
            let stdin: OwnedFd = if stdin_from_shim {
                std::io::stdin().as_fd().try_clone_to_owned()?
            } else {
                File::open("/dev/null")?.into()
            };
            std::fs::create_dir_all(&args.root)?;
            let container = ContainerBuilder::new(args.id.clone(), SyscallType::default())
                .with_root_path(&args.root)?
                .with_stdin(stdin)
                .with_stdout(stdout)
                .with_stderr(stderr)
                .with_console_socket(console_socket)
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
        Op::Exec {
            console_socket,
            argv,
        } => {
            let code = exec(&args.root, &args.id, console_socket, argv)?;
            // Flushes nothing of ours: the process wrote to the descriptors directly.
            std::process::exit(code)
        }
    }
}

/// Runs `argv` in the container and returns its exit code.
fn exec(
    root: &std::path::Path,
    id: &str,
    console_socket: Option<PathBuf>,
    argv: Vec<String>,
) -> Result<i32, Box<dyn std::error::Error>> {
    use libcontainer::oci_spec::runtime::Spec;
    use nix::sys::wait::{waitpid, WaitStatus};

    // The process libcontainer starts is a grandchild (its intermediate process exits): as a
    // subreaper the shim inherits it and can collect its exit status.
    nix::sys::prctl::set_child_subreaper(true)?;
    let container = Container::load(root.join(id))?;
    // The container's own process (user, env, cwd, capabilities, no_new_privileges, rlimits)
    // with the new command: a tenant built from its defaults would run as root with other
    // capabilities. Seccomp, cgroup and namespaces come from the container's spec and state.
    let config = container.bundle().join("config.json");
    let spec = Spec::load(&config).map_err(|e| format!("loading {}: {e}", config.display()))?;
    let mut process = spec
        .process()
        .clone()
        .ok_or("the container's spec has no process")?;
    process.set_args(Some(argv));
    process.set_terminal(Some(console_socket.is_some()));
    let process_file = root
        .join(id)
        .join(format!("exec-{}.json", std::process::id()));
    std::fs::write(&process_file, serde_json::to_vec(&process)?)?;
    let tty = console_socket.is_some();
    let built = ContainerBuilder::new(id.to_owned(), SyscallType::default())
        .with_root_path(root)?
        .with_console_socket(console_socket)
        .as_tenant()
        .with_process(Some(&process_file))
        // libcontainer only takes a console socket for a detached process; the shim waits for
        // it either way.
        .with_detach(tty)
        .build();
    let _ = std::fs::remove_file(&process_file);
    let pid = match built {
        Ok(pid) => pid,
        Err(e) => {
            // The process that failed to exec is our child now: reap it here rather than leave
            // a zombie to the agent.
            while !matches!(
                waitpid(None::<nix::unistd::Pid>, None),
                Err(nix::errno::Errno::ECHILD) | Ok(WaitStatus::StillAlive)
            ) {}
            return Err(e.into());
        }
    };
    // libcontainer's Pid is of its own nix version.
    let pid = nix::unistd::Pid::from_raw(pid.as_raw());
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, signal, _)) => return Ok(128 + signal as i32),
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(format!("waitpid {pid}: {e}").into()),
        }
    }
}

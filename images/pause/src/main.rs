//! pause, as Kubernetes' `build/pause/linux/pause.c`: the process that holds a pod's
//! namespaces. It sleeps until SIGINT or SIGTERM, then exits 0; as PID 1 of a pod's PID
//! namespace it reaps the zombies re-parented to it (SIGCHLD). `-v` prints the version.
//!
//! The work happens in signal handlers that only call async-signal-safe functions (`_exit`,
//! `waitpid`, `write`), so the main thread can sleep in `pause()` forever.

#![allow(
    unsafe_code,
    reason = "std has no signal API: sigaction, pause, waitpid and _exit come from libc"
)]

const VERSION: &str = env!("CARGO_PKG_VERSION");

extern "C" fn sigdown(signum: libc::c_int) {
    let msg: &[u8] = if signum == libc::SIGTERM {
        b"Shutting down, got signal: Terminated\n"
    } else {
        b"Shutting down, got signal: Interrupt\n"
    };
    // SAFETY: write(2) and _exit(2) are async-signal-safe; msg is a valid static buffer.
    unsafe {
        libc::write(libc::STDERR_FILENO, msg.as_ptr().cast(), msg.len());
        libc::_exit(0);
    }
}

extern "C" fn sigreap(_signum: libc::c_int) {
    // SAFETY: waitpid(2) is async-signal-safe; a null status pointer is allowed.
    unsafe { while libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) > 0 {} }
}

/// Installs `handler` for `signum`; panics (exit 101) if the kernel refuses.
fn on(signum: libc::c_int, handler: extern "C" fn(libc::c_int), flags: libc::c_int) {
    // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; the handler is a plain
    // function that lives as long as the process; sigemptyset gets a valid pointer.
    let rc = unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = handler as libc::sighandler_t;
        act.sa_flags = flags;
        libc::sigemptyset(&mut act.sa_mask);
        libc::sigaction(signum, &act, std::ptr::null_mut())
    };
    assert_eq!(rc, 0, "sigaction({signum}) failed");
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-v") {
        println!("pause.rs {VERSION}");
        return;
    }
    if std::process::id() != 1 {
        eprintln!("Warning: pause should be the first process");
    }
    on(libc::SIGINT, sigdown, 0);
    on(libc::SIGTERM, sigdown, 0);
    on(
        libc::SIGCHLD,
        sigreap,
        libc::SA_NOCLDSTOP | libc::SA_RESTART,
    );
    loop {
        // SAFETY: pause(2) has no preconditions; it returns after each handled signal.
        unsafe {
            libc::pause();
        }
    }
}

//! How skiff's programs are kept running on a host: systemd units where systemd is PID 1, a
//! small generated supervisor script otherwise (PID 1 of containers and of these build machines
//! is not systemd).
//!
//! Everything here renders text: unit files, the supervisor script, and the shell snippets that
//! start, stop and report the programs. The same text runs on this host (`sh -c`) and on remote
//! hosts (`ssh host sh -s`), so a local deploy exercises exactly what a multi-host deploy runs.
//!
//! Layout of a host's state directory `DIR`:
//!
//! ```text
//! DIR/bin/skiff-control, DIR/bin/skiff-agent        the binaries
//! DIR/bin/skiff-control-supervise, ...-agent-...    supervisor scripts (without systemd)
//! DIR/units/skiff-control.service, ...              unit files (with systemd; installed into
//!                                                   /etc/systemd/system)
//! DIR/control.log, DIR/agent.log                    output of the programs (both modes)
//! DIR/control.pid, DIR/agent.pid                    the running program (supervised mode)
//! DIR/control.supervisor.pid, ...                   its supervisor
//! ```

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Where systemd reads administrator unit files.
pub const SYSTEMD_UNIT_DIR: &str = "/etc/systemd/system";

/// The programs in start order (stop goes the other way).
pub const PROGRAMS: [&str; 2] = ["skiff-control", "skiff-agent"];

/// How programs are kept running on a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launch {
    /// systemd units (`Restart=on-failure`).
    Systemd,
    /// A supervisor script per program that restarts it with back-off.
    Supervised,
}

impl Launch {
    /// The mode for a host whose `/proc/1/comm` reads `pid1_comm`.
    pub fn for_pid1(pid1_comm: &str) -> Self {
        if pid1_comm.trim() == "systemd" {
            Launch::Systemd
        } else {
            Launch::Supervised
        }
    }

    /// The mode for this host.
    pub fn detect() -> Self {
        Self::for_pid1(&std::fs::read_to_string("/proc/1/comm").unwrap_or_default())
    }
}

/// One program to run: `DIR/bin/<name> <args>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    /// `skiff-control` or `skiff-agent`.
    pub name: &'static str,
    /// Its flags.
    pub args: Vec<String>,
    /// Whether skiff-control runs on the same host (the agent's unit then orders after it).
    pub after_control: bool,
}

/// `skiff-agent` -> `agent`: the stem of its log and pid files.
pub fn short(name: &str) -> &str {
    name.trim_start_matches("skiff-")
}

/// The program's binary in `dir`.
pub fn binary(dir: &Path, name: &str) -> PathBuf {
    dir.join("bin").join(name)
}

/// The program's log file.
pub fn log_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{}.log", short(name)))
}

/// The pidfile of the running program (supervised mode).
pub fn pid_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{}.pid", short(name)))
}

/// The pidfile of the program's supervisor.
pub fn supervisor_pid_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{}.supervisor.pid", short(name)))
}

/// The supervisor script of a program.
pub fn supervisor_path(dir: &Path, name: &str) -> PathBuf {
    dir.join("bin").join(format!("{name}-supervise"))
}

/// A file to put into the state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedFile {
    /// Path relative to the state directory.
    pub path: String,
    /// Its contents.
    pub contents: String,
    /// Its permission bits.
    pub mode: u32,
}

/// The files that start `program` in `launch` mode.
pub fn generated_file(launch: Launch, dir: &Path, program: &Program) -> GeneratedFile {
    match launch {
        Launch::Systemd => GeneratedFile {
            path: format!("units/{}.service", program.name),
            contents: render_unit(dir, program),
            mode: 0o644,
        },
        Launch::Supervised => GeneratedFile {
            path: format!("bin/{}-supervise", program.name),
            contents: render_supervisor(dir, program),
            mode: 0o755,
        },
    }
}

/// Quotes a word for POSIX sh.
pub fn sh_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-=:,@+%".contains(&b))
    {
        return s.to_owned();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Quotes a word for a systemd `ExecStart=` line: systemd expands `%` specifiers and `$`
/// variables even inside quotes, so both are doubled.
pub fn systemd_quote(s: &str) -> String {
    let escaped = s.replace('%', "%%").replace('$', "$$");
    if !escaped.is_empty()
        && escaped
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-=:,@+%$".contains(&b))
    {
        return escaped;
    }
    format!("\"{}\"", escaped.replace('\\', r"\\").replace('"', "\\\""))
}

fn description(name: &str) -> &'static str {
    match name {
        "skiff-control" => "skiff control plane (Kubernetes API server, controllers, scheduler)",
        _ => "skiff node agent (pods, pod network, service proxy)",
    }
}

/// The systemd unit of `program`.
pub fn render_unit(dir: &Path, program: &Program) -> String {
    let mut exec = systemd_quote(&binary(dir, program.name).display().to_string());
    for arg in &program.args {
        exec.push(' ');
        exec.push_str(&systemd_quote(arg));
    }
    let mut order = String::from("network-online.target");
    if program.after_control {
        order.push_str(" skiff-control.service");
    }
    let mut unit = format!(
        "# Generated by `cargo xtask deploy`; `cargo xtask stop` stops and disables it.\n\
         [Unit]\n\
         Description={desc}\n\
         After={order}\n\
         Wants={order}\n\
         \n\
         [Service]\n\
         Type=simple\n\
         ExecStart={exec}\n\
         Restart=on-failure\n\
         RestartSec=2s\n\
         StandardOutput=append:{log}\n\
         StandardError=inherit\n",
        desc = description(program.name),
        log = log_path(dir, program.name).display(),
    );
    if program.name == "skiff-agent" {
        // The agent is the subreaper of the pods' containers, which live in its unit's cgroup:
        // stopping (or restarting) the agent must not kill them, a restarted agent adopts them
        // and `cargo xtask stop --cleanup` removes them.
        unit.push_str("KillMode=process\n");
    }
    unit.push_str("\n[Install]\nWantedBy=multi-user.target\n");
    unit
}

/// The supervisor script of `program`: runs it, and when it exits with a failure restarts it
/// after a delay that doubles (1 s up to 30 s) while it keeps failing within a minute of its
/// start, like systemd's `Restart=on-failure`. SIGTERM stops the program, then the supervisor.
pub fn render_supervisor(dir: &Path, program: &Program) -> String {
    let mut cmd = sh_quote(&binary(dir, program.name).display().to_string());
    for arg in &program.args {
        cmd.push(' ');
        cmd.push_str(&sh_quote(arg));
    }
    format!(
        r#"#!/bin/sh
# Generated by `cargo xtask deploy`: keeps {name} running on a host without systemd.
# `cargo xtask stop` sends SIGTERM to this script, which stops {name} and exits.
name={name}
log={log}
pidfile={pidfile}
echo $$ > {suppid}
child=
stopping=
on_term() {{
  stopping=1
  if [ -n "$child" ]; then kill -TERM "$child" 2>/dev/null; fi
}}
trap on_term TERM INT HUP
delay=1
while [ -z "$stopping" ]; do
  started=$(date +%s)
  {cmd} </dev/null >>"$log" 2>&1 &
  child=$!
  echo "$child" > "$pidfile"
  # A trapped signal interrupts `wait`; wait again until the program is gone.
  while :; do
    wait "$child"
    status=$?
    kill -0 "$child" 2>/dev/null || break
  done
  child=
  rm -f "$pidfile"
  if [ -n "$stopping" ]; then break; fi
  if [ "$status" -eq 0 ]; then
    echo "skiff-supervise: $name exited cleanly; not restarting" >>"$log"
    break
  fi
  if [ $(( $(date +%s) - started )) -ge 60 ]; then delay=1; fi
  echo "skiff-supervise: $name exited with status $status; restarting in ${{delay}}s" >>"$log"
  # The back-off delay, interruptible by `stop`.
  sleep "$delay" &
  child=$!
  wait "$child"
  child=
  delay=$(( delay * 2 ))
  if [ "$delay" -gt 30 ]; then delay=30; fi
done
rm -f {suppid}
"#,
        name = program.name,
        log = sh_quote(&log_path(dir, program.name).display().to_string()),
        pidfile = sh_quote(&pid_path(dir, program.name).display().to_string()),
        suppid = sh_quote(&supervisor_pid_path(dir, program.name).display().to_string()),
    )
}

/// Shell functions the snippets share: `alive PIDFILE WORD` succeeds when the pidfile names a
/// live process whose command line contains WORD (so a stale pidfile whose pid was reused by
/// something else is never signalled).
const SH_HELPERS: &str = r#"alive() {
  p=$(cat "$1" 2>/dev/null) || return 1
  [ -n "$p" ] && tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null | grep -q -- "$2"
}
systemd_unit() {
  [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ] && [ -e "/etc/systemd/system/$1.service" ]
}
"#;

/// The shell snippet that starts `programs` (their files already in place) in `launch` mode,
/// and returns once each is launched (systemd accepted it, or its supervisor wrote its pidfile).
pub fn start_script(dir: &Path, launch: Launch, programs: &[&str]) -> String {
    let mut s = String::from("set -e\n");
    match launch {
        Launch::Systemd => {
            for name in programs {
                let _ = writeln!(
                    s,
                    "install -m 0644 {src} {SYSTEMD_UNIT_DIR}/{name}.service",
                    src = sh_quote(
                        &dir.join(format!("units/{name}.service"))
                            .display()
                            .to_string()
                    ),
                );
            }
            s.push_str("systemctl daemon-reload\n");
            for name in programs {
                let _ = writeln!(s, "systemctl enable --quiet {name}.service");
                let _ = writeln!(s, "systemctl restart {name}.service");
            }
        }
        Launch::Supervised => {
            for name in programs {
                let sup = sh_quote(&supervisor_path(dir, name).display().to_string());
                let suppid = sh_quote(&supervisor_pid_path(dir, name).display().to_string());
                // setsid: its own session, so neither Ctrl-C in this terminal nor the end of an
                // ssh session reaches it; all three descriptors redirected so ssh does not wait.
                let _ = write!(
                    s,
                    "rm -f {suppid}\n\
                     cd / && setsid sh {sup} </dev/null >/dev/null 2>&1 &\n\
                     i=0\n\
                     until [ -s {suppid} ]; do\n\
                     \x20 i=$((i+1)); if [ $i -gt 100 ]; then echo \"{name}: its supervisor did not start\" >&2; exit 1; fi\n\
                     \x20 sleep 0.05\n\
                     done\n",
                );
            }
        }
    }
    s
}

/// The shell snippet that stops whatever runs skiff in `dir`: systemd units (disabled too),
/// supervisors and their programs, and programs started without a supervisor by older deploys.
/// With `cleanup` it also removes the pods and the node's datapath state, and the unit files.
pub fn stop_script(dir: &Path, cleanup: bool) -> String {
    let mut s = String::from(SH_HELPERS);
    // Waits up to 30 s for a pid to exit, then kills it (the agent may be waiting out the
    // grace period of pods it was stopping; systemd would wait 90 s).
    s.push_str(
        r#"failed=0
stop_pid() {
  kill -TERM "$1" 2>/dev/null || return 0
  i=0
  while kill -0 "$1" 2>/dev/null; do
    i=$((i+1))
    if [ $i -gt 600 ]; then kill -KILL "$1" 2>/dev/null; echo "killed $2 (pid $1) after 30 s" >&2; return 0; fi
    sleep 0.05
  done
}
"#,
    );
    for name in PROGRAMS.iter().rev() {
        let pid = sh_quote(&pid_path(dir, name).display().to_string());
        let suppid = sh_quote(&supervisor_pid_path(dir, name).display().to_string());
        let _ = write!(
            s,
            "if systemd_unit {name}; then echo \"stopping {name}.service\"; systemctl disable --now --quiet {name}.service || true; fi\n\
             if alive {suppid} {name}-supervise; then sp=$(cat {suppid}); echo \"stopping the supervisor of {name} (pid $sp)\"; stop_pid \"$sp\" {name}-supervise; fi\n\
             if alive {pid} {name}; then p=$(cat {pid}); echo \"stopping {name} (pid $p)\"; stop_pid \"$p\" {name}; fi\n\
             rm -f {pid} {suppid}\n",
        );
    }
    if cleanup {
        let agent = sh_quote(&binary(dir, "skiff-agent").display().to_string());
        let root = sh_quote(&dir.join("agent").display().to_string());
        let _ = writeln!(
            s,
            "if [ -x {agent} ]; then {agent} cleanup --root-dir {root} || failed=1; fi"
        );
        for name in PROGRAMS {
            let _ = writeln!(
                s,
                "if systemd_unit {name}; then rm -f {SYSTEMD_UNIT_DIR}/{name}.service; systemctl daemon-reload; fi"
            );
        }
    }
    // Everything was tried; a failed cleanup still fails the stop.
    s.push_str("exit $failed\n");
    s
}

/// The shell snippet that prints one line per program: `<name> running <how>` or
/// `<name> stopped`.
pub fn status_script(dir: &Path) -> String {
    let mut s = String::from(SH_HELPERS);
    for name in PROGRAMS {
        let pid = sh_quote(&pid_path(dir, name).display().to_string());
        let suppid = sh_quote(&supervisor_pid_path(dir, name).display().to_string());
        let _ = write!(
            s,
            "if systemd_unit {name} && systemctl is-active --quiet {name}.service; then echo \"{name} running (systemd unit {name}.service)\"\n\
             elif alive {suppid} {name}-supervise; then echo \"{name} running (supervisor pid $(cat {suppid}), program pid $(cat {pid} 2>/dev/null || echo restarting))\"\n\
             elif alive {pid} {name}; then echo \"{name} running (pid $(cat {pid}))\"\n\
             else echo \"{name} stopped\"; fi\n",
        );
    }
    s
}

/// Parses `status_script`'s output into the programs that run.
pub fn running_from_status(output: &str) -> Vec<String> {
    output
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some("running"))
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::time::{Duration, Instant};

    fn agent() -> Program {
        Program {
            name: "skiff-agent",
            args: vec![
                "--node-name".into(),
                "node-1".into(),
                "--node-label".into(),
                "team=a b".into(),
            ],
            after_control: true,
        }
    }

    #[test]
    fn launch_follows_pid1() {
        assert_eq!(Launch::for_pid1("systemd\n"), Launch::Systemd);
        assert_eq!(Launch::for_pid1("init\n"), Launch::Supervised);
        assert_eq!(Launch::for_pid1("process_api"), Launch::Supervised);
        assert_eq!(Launch::for_pid1(""), Launch::Supervised);
    }

    #[test]
    fn quoting() {
        assert_eq!(sh_quote("/var/lib/skiff"), "/var/lib/skiff");
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        assert_eq!(sh_quote(""), "''");
        assert_eq!(systemd_quote("--listen"), "--listen");
        assert_eq!(systemd_quote("50%"), "50%%");
        assert_eq!(systemd_quote("a b"), "\"a b\"");
        assert_eq!(systemd_quote("say \"$x\""), "\"say \\\"$$x\\\"\"");
    }

    #[test]
    fn agent_unit() {
        let unit = render_unit(Path::new("/var/lib/skiff"), &agent());
        assert_eq!(
            unit,
            "# Generated by `cargo xtask deploy`; `cargo xtask stop` stops and disables it.
[Unit]
Description=skiff node agent (pods, pod network, service proxy)
After=network-online.target skiff-control.service
Wants=network-online.target skiff-control.service

[Service]
Type=simple
ExecStart=/var/lib/skiff/bin/skiff-agent --node-name node-1 --node-label \"team=a b\"
Restart=on-failure
RestartSec=2s
StandardOutput=append:/var/lib/skiff/agent.log
StandardError=inherit
KillMode=process

[Install]
WantedBy=multi-user.target
"
        );
    }

    #[test]
    fn control_unit_and_remote_agent_unit() {
        let control = Program {
            name: "skiff-control",
            args: vec!["--listen".into(), "0.0.0.0:6443".into()],
            after_control: false,
        };
        let unit = render_unit(Path::new("/srv/skiff"), &control);
        assert!(unit.contains("\nAfter=network-online.target\n"), "{unit}");
        assert!(unit.contains(
            "\nExecStart=/srv/skiff/bin/skiff-control --listen 0.0.0.0:6443\nRestart=on-failure\n"
        ));
        assert!(unit.contains("StandardOutput=append:/srv/skiff/control.log\n"));
        assert!(
            !unit.contains("KillMode"),
            "the control plane has no children to keep"
        );
        let remote_agent = Program {
            after_control: false,
            ..agent()
        };
        let unit = render_unit(Path::new("/srv/skiff"), &remote_agent);
        assert!(!unit.contains("skiff-control.service"), "{unit}");
    }

    #[test]
    fn files_per_mode() {
        let dir = Path::new("/d");
        let unit = generated_file(Launch::Systemd, dir, &agent());
        assert_eq!(
            (unit.path.as_str(), unit.mode),
            ("units/skiff-agent.service", 0o644)
        );
        let sup = generated_file(Launch::Supervised, dir, &agent());
        assert_eq!(
            (sup.path.as_str(), sup.mode),
            ("bin/skiff-agent-supervise", 0o755)
        );
        assert!(sup
            .contents
            .contains("/d/bin/skiff-agent --node-name node-1 --node-label 'team=a b' </dev/null"));
    }

    #[test]
    fn systemd_start_installs_enables_and_restarts() {
        let s = start_script(
            Path::new("/d"),
            Launch::Systemd,
            &["skiff-control", "skiff-agent"],
        );
        assert_eq!(
            s,
            "set -e
install -m 0644 /d/units/skiff-control.service /etc/systemd/system/skiff-control.service
install -m 0644 /d/units/skiff-agent.service /etc/systemd/system/skiff-agent.service
systemctl daemon-reload
systemctl enable --quiet skiff-control.service
systemctl restart skiff-control.service
systemctl enable --quiet skiff-agent.service
systemctl restart skiff-agent.service
"
        );
    }

    #[test]
    fn stop_covers_both_modes_agent_first() {
        let s = stop_script(Path::new("/d"), true);
        let agent = s.find("systemd_unit skiff-agent").unwrap();
        let control = s.find("systemd_unit skiff-control").unwrap();
        assert!(agent < control, "the agent stops before the control plane");
        assert!(s.contains("systemctl disable --now --quiet skiff-agent.service"));
        assert!(s.contains("alive /d/agent.supervisor.pid skiff-agent-supervise"));
        assert!(s.contains("/d/bin/skiff-agent cleanup --root-dir /d/agent"));
        assert!(!stop_script(Path::new("/d"), false).contains("cleanup"));
    }

    #[test]
    fn a_failed_cleanup_fails_the_stop() {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        let agent = binary(dir, "skiff-agent");
        for (code, ok) in [(0, true), (3, false)] {
            std::fs::write(&agent, format!("#!/bin/sh\necho \"$*\"\nexit {code}\n")).unwrap();
            std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).unwrap();
            let out = Command::new("sh")
                .arg("-c")
                .arg(stop_script(dir, true))
                .output()
                .unwrap();
            assert_eq!(out.status.success(), ok, "cleanup exiting {code}");
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                format!("cleanup --root-dir {}/agent\n", dir.display())
            );
        }
    }

    #[test]
    fn status_parsing() {
        let out =
            "skiff-control running (systemd unit skiff-control.service)\nskiff-agent stopped\n";
        assert_eq!(
            running_from_status(out),
            vec!["skiff-control running (systemd unit skiff-control.service)"]
        );
    }

    fn sh(script: &str) -> String {
        let out = Command::new("sh").arg("-c").arg(script).output().unwrap();
        assert!(
            out.status.success(),
            "sh failed: {}\n{script}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn read_pid(path: &Path) -> Option<u32> {
        std::fs::read_to_string(path).ok()?.trim().parse().ok()
    }

    fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The real supervisor: a "skiff-agent" (a shell script sleeping) killed with SIGKILL
    /// comes back under a new pid; `stop` ends program and supervisor; `status` follows.
    #[test]
    fn supervisor_restarts_a_killed_program_and_stop_ends_both() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        // A stand-in program: prints its arguments and sleeps. `exec` so that its pid is the
        // one the supervisor records and its command line names skiff-agent.
        let fake = binary(dir, "skiff-agent");
        std::fs::write(&fake, "#!/bin/sh\necho \"started $*\"\nexec sleep 1000\n").unwrap();
        let program = agent();
        let file = generated_file(Launch::Supervised, dir, &program);
        std::fs::write(dir.join(&file.path), &file.contents).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        for p in [&fake, &dir.join(&file.path)] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }

        sh(&start_script(dir, Launch::Supervised, &["skiff-agent"]));
        let sup = read_pid(&supervisor_pid_path(dir, "skiff-agent")).unwrap();
        let first = wait_for("the program's pidfile", || {
            read_pid(&pid_path(dir, "skiff-agent"))
        });
        let status = sh(&status_script(dir));
        assert!(
            status.contains(&format!("skiff-agent running (supervisor pid {sup}")),
            "{status}"
        );
        assert!(status.contains("skiff-control stopped"), "{status}");

        assert!(Command::new("kill")
            .args(["-KILL", &first.to_string()])
            .status()
            .unwrap()
            .success());
        let second = wait_for("a restarted program", || {
            read_pid(&pid_path(dir, "skiff-agent")).filter(|p| *p != first)
        });
        // The restarted program writes its line a moment after its pid is recorded.
        wait_for("the restarted program's output", || {
            let log = std::fs::read_to_string(log_path(dir, "skiff-agent")).ok()?;
            (log.matches("started --node-name node-1 --node-label team=a b")
                .count()
                == 2)
                .then_some(())
        });
        let log = std::fs::read_to_string(log_path(dir, "skiff-agent")).unwrap();
        assert!(
            log.contains("skiff-agent exited with status 137; restarting in 1s"),
            "{log}"
        );

        let out = sh(&stop_script(dir, false));
        assert!(
            out.contains(&format!(
                "stopping the supervisor of skiff-agent (pid {sup})"
            )),
            "{out}"
        );
        for pid in [sup, second] {
            assert!(
                !Path::new(&format!("/proc/{pid}")).exists()
                    || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                        .is_ok_and(|s| s.contains(") Z ")),
                "pid {pid} still runs after stop"
            );
        }
        assert!(!pid_path(dir, "skiff-agent").exists());
        assert!(!supervisor_pid_path(dir, "skiff-agent").exists());
        assert!(sh(&status_script(dir)).contains("skiff-agent stopped"));
    }
}

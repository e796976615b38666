//! `kubectl attach`, `kubectl run -i --rm` and `kubectl cp` with the real kubectl on a local
//! cluster: the API server's pods/attach and pods/exec proxied to the node, the agent's
//! `/attach` following the container's log and writing to the stdin (a pipe, or a terminal)
//! the runtime holds for containers started with `stdin: true`. Needs root.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use skiff_e2e::cluster::{Guard, Options};
use skiff_e2e::kubectl::Kubectl;
use skiff_e2e::{kubectl_bin, wait_for};
use skiff_test_support::require_root;

const TIMEOUT: Duration = Duration::from_secs(120);

/// Runs kubectl with `stdin` as its input (closed after it), killing it after `timeout`.
fn kubectl_timed(k: &Kubectl, args: &[&str], stdin: &str, timeout: Duration) -> Output {
    let mut child = Command::new(kubectl_bin())
        .args(args)
        .env("KUBECONFIG", &k.0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl starts");
    let mut input = child.stdin.take().expect("piped stdin");
    let data = stdin.to_owned();
    let feeder = std::thread::spawn(move || {
        let _ = input.write_all(data.as_bytes());
    });
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for kubectl") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "kubectl {} did not finish within {timeout:?}; stderr: {}",
                args.join(" "),
                String::from_utf8_lossy(&err_reader.join().unwrap_or_default())
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = feeder.join();
    Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    }
}

fn text(out: &Output) -> String {
    format!(
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn pod(name: &str, container: serde_json::Value) -> String {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
        "spec": {"restartPolicy": "Never", "containers": [container]}})
    .to_string()
}

fn wait_gone(k: &Kubectl, name: &str) {
    wait_for(&format!("pod {name} to be gone"), TIMEOUT, || {
        let out = k.output(&["get", "pod", name, "-o", "name"], None);
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("NotFound")
    });
}

#[test]
fn attach_run_and_cp_with_kubectl() {
    require_root!("network namespaces, containers");
    let c = Guard::test(&Options {
        proxy_mode: "iptables".into(),
        ..Options::test("tatt", 244, 1)
    });
    let k = Kubectl(c.state.kubeconfig.clone());

    // attach -i: input reaches the container's stdin, its answers come back.
    k.apply(&pod(
        "echoer",
        json!({"name": "app", "image": "busybox", "stdin": true,
            "command": ["sh", "-c", "while read l; do echo \"got $l\"; [ \"$l\" = quit ] && exit 0; done"]}),
    ));
    k.wait_phase("echoer", "Running", TIMEOUT);
    let out = kubectl_timed(&k, &["attach", "-i", "echoer"], "hello\nquit\n", TIMEOUT);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("got hello\n") && stdout.contains("got quit\n"),
        "{}",
        text(&out)
    );
    // The container's output is in its log too.
    wait_for("the echoer's log", TIMEOUT, || {
        k.output(&["logs", "echoer"], None).stdout == b"got hello\ngot quit\n"
    });

    // The API server's refusals: a completed pod, a container the pod does not have.
    k.wait_phase("echoer", "Succeeded", TIMEOUT);
    let refused = k.output(
        &[
            "get",
            "--raw",
            "/api/v1/namespaces/default/pods/echoer/attach?stdout=1",
        ],
        None,
    );
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("completed pod"),
        "{}",
        text(&refused)
    );

    // attach without stdin: the output of a container that takes none still streams.
    k.apply(&pod(
        "ticker",
        json!({"name": "app", "image": "busybox",
            "command": ["sh", "-c", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done"]}),
    ));
    k.wait_phase("ticker", "Running", TIMEOUT);
    let missing = k.output(
        &[
            "get",
            "--raw",
            "/api/v1/namespaces/default/pods/ticker/attach?container=nope&stdout=1",
        ],
        None,
    );
    assert!(!missing.status.success(), "{}", text(&missing));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("container nope is not valid"),
        "{}",
        text(&missing)
    );
    {
        let mut child = Command::new(kubectl_bin())
            .args(["attach", "ticker"])
            .env("KUBECONFIG", &k.0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("kubectl starts");
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let line = rx.recv_timeout(TIMEOUT);
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            line.as_deref().is_ok_and(|l| l.starts_with("tick ")),
            "{line:?}"
        );
    }

    // run -i --rm: stdin (stdinOnce: kubectl's EOF is the container's), output, the pod
    // deleted afterwards.
    let out = kubectl_timed(
        &k,
        &[
            "run",
            "-i",
            "--rm",
            "catter",
            "--image=busybox",
            "--restart=Never",
            "--",
            "sh",
            "-c",
            "while read l; do echo \"got $l\"; done; echo eof",
        ],
        "one\ntwo\n",
        TIMEOUT,
    );
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("got one\ngot two\neof\n"), "{}", text(&out));
    wait_gone(&k, "catter");

    // run -it --rm: the container gets a terminal (kubectl's own stdin is no terminal, so it
    // attaches without one; the pod still has tty: true), which echoes the input.
    let out = kubectl_timed(
        &k,
        &[
            "run",
            "-it",
            "--rm",
            "ttyer",
            "--image=busybox",
            "--restart=Never",
            "--",
            "sh",
            "-c",
            "[ -t 0 ] && echo terminal; read l; echo \"got $l\"",
        ],
        "hi\n",
        TIMEOUT,
    );
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("got hi\r\n"), "{}", text(&out));
    wait_gone(&k, "ttyer");

    // The DNS check people run: the answer is printed (attached, or from the logs when the
    // container was done first, as kubectl falls back to). busybox's nslookup applies the
    // search list to dotless names only.
    let out = kubectl_timed(
        &k,
        &[
            "run",
            "-it",
            "--rm",
            "dnstest",
            "--image=busybox",
            "--restart=Never",
            "--",
            "nslookup",
            "kubernetes",
        ],
        "",
        TIMEOUT,
    );
    // Its exit code is not asserted: busybox's nslookup also reports the search list's other
    // (NXDOMAIN) names and exits 1. The terminal ends lines with CRLF.
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("Name:\tkubernetes.default.svc.cluster.local\r\nAddress: 10.96.0.1\r\n"),
        "{}",
        text(&out)
    );
    wait_gone(&k, "dnstest");

    cp_both_ways(&k);
    debug_sees_the_target(&k);
}

/// `kubectl debug -i --target`: an ephemeral busybox in the ticker's pod, sharing the ticker
/// container's PID namespace, lists its processes; its status is reported; the API server
/// refuses to remove it.
fn debug_sees_the_target(k: &Kubectl) {
    let out = kubectl_timed(
        k,
        &[
            "debug",
            "-i",
            "ticker",
            "--image=busybox",
            "--target=app",
            "--container=dbg",
            "--",
            "ps",
            "-o",
            "pid,args",
        ],
        "",
        TIMEOUT,
    );
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The target's shell is PID 1 of the namespace the debugger joined.
    assert!(
        stdout
            .lines()
            .any(|l| l.trim_start().starts_with("1 ") && l.contains("while true")),
        "{}",
        text(&out)
    );
    let pod = k.json(&["get", "pod", "ticker", "-o", "json"]);
    let statuses = &pod["status"]["ephemeralContainerStatuses"];
    assert_eq!(statuses[0]["name"], "dbg", "{pod}");
    assert!(
        statuses[0]["state"]["terminated"].is_object()
            || statuses[0]["state"]["running"].is_object(),
        "{pod}"
    );

    // Ephemeral containers are never removed (nor changed) through the subresource, and
    // never touched by a pod update.
    let mut without = pod.clone();
    without["spec"]["ephemeralContainers"] = json!([]);
    let file = tempfile::NamedTempFile::new().expect("tempfile");
    std::fs::write(file.path(), without.to_string()).unwrap();
    let refused = k.output(
        &[
            "replace",
            "--raw",
            "/api/v1/namespaces/default/pods/ticker/ephemeralcontainers",
            "-f",
            file.path().to_str().unwrap(),
        ],
        None,
    );
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("may not be removed"),
        "{}",
        text(&refused)
    );
    k.run(&["label", "pod", "ticker", "touched=yes"]);
    let after = k.json(&["get", "pod", "ticker", "-o", "json"]);
    assert_eq!(
        after["spec"]["ephemeralContainers"], pod["spec"]["ephemeralContainers"],
        "{after}"
    );
}

/// `kubectl cp` a directory into the ticker pod and back; a symlink out of the copied tree is
/// not followed out of the target.
fn cp_both_ways(k: &Kubectl) {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("a.txt"), "alpha\n").unwrap();
    std::fs::write(src.join("sub/b.bin"), (0u8..=255).collect::<Vec<_>>()).unwrap();
    let src_arg = src.to_str().unwrap();
    k.run(&["cp", src_arg, "ticker:/tmp/in"]);
    assert_eq!(
        k.run(&["exec", "ticker", "--", "cat", "/tmp/in/a.txt"]),
        "alpha\n"
    );
    let back = dir.path().join("back");
    k.run(&["cp", "ticker:/tmp/in", back.to_str().unwrap()]);
    assert_eq!(std::fs::read(back.join("a.txt")).unwrap(), b"alpha\n");
    assert_eq!(
        std::fs::read(back.join("sub/b.bin")).unwrap(),
        std::fs::read(src.join("sub/b.bin")).unwrap()
    );

    // A tree in the pod with a symlink pointing out of it and one climbing with "..":
    // kubectl copies the files and never writes through the links.
    k.run(&[
        "exec",
        "ticker",
        "--",
        "sh",
        "-c",
        "mkdir -p /tmp/evil && echo ok > /tmp/evil/f && ln -s /etc /tmp/evil/out && ln -s ../../.. /tmp/evil/up",
    ]);
    let target = dir.path().join("target");
    let out = k.output(&["cp", "ticker:/tmp/evil", target.to_str().unwrap()], None);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read(target.join("f")).unwrap(), b"ok\n");
    for link in ["out", "up"] {
        assert!(
            std::fs::symlink_metadata(target.join(link)).is_err(),
            "{link} was written: {}",
            text(&out)
        );
    }
    let entries: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    // src, back, target: nothing was written beside the target.
    assert_eq!(entries.len(), 3, "{entries:?}");
}

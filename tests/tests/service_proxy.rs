//! The agent's service proxy end to end: skiff-control, skiff-agent (`--proxy-mode`),
//! backends and a client all in one network namespace the test creates; Services and
//! EndpointSlices written with the real kubectl reach the datapath.

use std::collections::BTreeMap;
use std::process::{Child, Command};
use std::time::Duration;

use skiff_agent::proxy::ebpf::sys;
use skiff_e2e::{agent_bin, in_netns, wait_for, ControlPlane};
use skiff_test_support::netns::{remove_dir_within, spawn_ready, Netns};
use skiff_test_support::require_root;

const SERVER: &str = r#"
import socket, sys
ip, port = sys.argv[1], int(sys.argv[2])
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); t.bind((ip, port)); t.listen(128)
print("ready", flush=True)
while True:
    c, _ = t.accept(); c.sendall(ip.encode()); c.close()
"#;

const CLIENT: &str = r#"
import socket, sys
for _ in range(int(sys.argv[3])):
    try:
        s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2); print(s.recv(100).decode()); s.close()
    except ConnectionRefusedError:
        print("REFUSED")
    except OSError as e:
        # A timeout (an untranslated VIP) would repeat for every request: stop at the first.
        print("ERROR", e); break
"#;

const BACKENDS: [&str; 3] = ["127.0.0.11", "127.0.0.12", "127.0.0.13"];

/// The test's network namespace and the processes in it; all removed on drop.
struct Node {
    children: Vec<Child>,
    /// A cgroup2 directory the client runs in (the eBPF mode's socket LB attaches there).
    cgroup: std::path::PathBuf,
    /// Deleted after Drop stopped the processes in it.
    netns: Netns,
}

impl Node {
    fn new(tag: &str) -> Self {
        let netns = Netns::new(format!("skiff-e2e-{tag}-{}", std::process::id()));
        let cgroup = sys::cgroup2_root()
            .expect("a cgroup2 mount")
            .join(netns.name());
        std::fs::create_dir_all(&cgroup).unwrap();
        // Like a node: an uplink with an address and a default route (a veth whose peer stays in
        // the namespace, so nothing leaves it). The agent routes the service range away from it.
        netns.loopback_up();
        netns
            .add_veth("uplink0", "uplink0-peer", netns.name())
            .unwrap();
        for args in [
            ["link", "set", "uplink0", "up"].as_slice(),
            &["link", "set", "uplink0-peer", "up"],
            &["addr", "add", "192.0.2.1/24", "dev", "uplink0"],
            &["route", "add", "default", "via", "192.0.2.254"],
        ] {
            netns.ip(args);
        }
        Self {
            children: Vec::new(),
            cgroup,
            netns,
        }
    }

    fn name(&self) -> &str {
        self.netns.name()
    }

    fn pin_dir(&self) -> String {
        format!("/sys/fs/bpf/{}", self.name())
    }

    fn backend(&mut self, ip: &str) {
        let child = spawn_ready(self.netns.exec("python3").args(["-c", SERVER, ip, "8080"]));
        self.children.push(child);
    }

    fn requests(&self, n: usize) -> BTreeMap<String, usize> {
        // The client joins the test cgroup (where the eBPF mode attaches), then the namespace.
        let script = format!(
            "echo $$ > {}/cgroup.procs && exec ip netns exec {} python3 -c \"$0\" 10.96.0.20 80 {n}",
            self.cgroup.display(),
            self.name()
        );
        let out = Command::new("sh")
            .args(["-c", &script, CLIENT])
            .output()
            .unwrap();
        let mut counts = BTreeMap::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            *counts.entry(line.to_owned()).or_insert(0) += 1;
        }
        counts
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
        let _ = in_netns(Some(self.name()), &agent_bin())
            .arg("cleanup")
            .arg("--pin-dir")
            .arg(self.pin_dir())
            .output();
        let _ = std::fs::remove_dir(self.pin_dir());
        // A cgroup stays busy for a moment after its last process exited.
        remove_dir_within(&self.cgroup, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("the test cgroup to be removable: {e}"));
    }
}

fn slice(endpoints: &[&str]) -> String {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|ip| format!("{{\"addresses\": [\"{ip}\"], \"conditions\": {{\"ready\": true}}}}"))
        .collect();
    format!(
        r#"{{"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {{"name": "kubia-1", "labels": {{"kubernetes.io/service-name": "kubia"}}}},
            "addressType": "IPv4", "ports": [{{"name": "http", "port": 8080, "protocol": "TCP"}}],
            "endpoints": [{}]}}"#,
        eps.join(",")
    )
}

const SERVICE: &str = r#"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "kubia"},
    "spec": {"clusterIP": "10.96.0.20", "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}"#;

fn proxy_follows_the_api(mode: &str) {
    require_root!("network namespaces");
    let mut node = Node::new(mode);
    for b in BACKENDS {
        node.backend(b);
    }
    let cp = ControlPlane::start_in_netns(node.name());
    cp.kubectl_stdin(&["apply", "-f", "-"], Some(SERVICE));
    cp.kubectl_stdin(&["apply", "-f", "-"], Some(&slice(&BACKENDS)));
    let log = std::fs::File::create(cp.dir.path().join("agent.log")).unwrap();
    let agent = in_netns(Some(node.name()), &agent_bin())
        .args(["--kubeconfig"])
        .arg(&cp.kubeconfig)
        .args(["--node-name", "node-1", "--root-dir"])
        .arg(cp.dir.path().join("agent"))
        .args([
            "--proxy-mode",
            mode,
            "--pin-dir",
            &node.pin_dir(),
            "--cgroup-root",
        ])
        .arg(&node.cgroup)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    node.children.push(agent);
    let agent_log = || std::fs::read_to_string(cp.dir.path().join("agent.log")).unwrap_or_default();

    let mut last = BTreeMap::new();
    wait_for(
        &format!("the {mode} datapath to reach all three backends"),
        Duration::from_secs(30),
        || {
            last = node.requests(30);
            BACKENDS.iter().all(|b| last.contains_key(*b))
        },
    );
    assert_eq!(
        last.values().sum::<usize>(),
        30,
        "every request answered: {last:?}\n{}",
        agent_log()
    );

    // An endpoint leaves the slice: it gets no new connections.
    cp.kubectl_stdin(&["apply", "-f", "-"], Some(&slice(&BACKENDS[..2])));
    wait_for(
        "the removed backend to be drained",
        Duration::from_secs(30),
        || {
            last = node.requests(30);
            !last.contains_key(BACKENDS[2]) && last.len() == 2
        },
    );

    // The service range ends at the agent's dead-end device, not at the default route.
    let route = Command::new("ip")
        .args(["-n", node.name(), "-o", "route", "get", "10.96.0.20"])
        .output()
        .unwrap();
    let route = String::from_utf8_lossy(&route.stdout);
    assert!(route.contains("dev skiff-svc0"), "{route}");

    // The Service goes: the VIP is no longer translated and its packets die on the node.
    cp.kubectl(&["delete", "service", "kubia"]);
    wait_for(
        "the service to be removed from the datapath",
        Duration::from_secs(30),
        || node.requests(1) == BTreeMap::from([("ERROR timed out".to_owned(), 1)]),
    );
}

#[test]
fn iptables_proxy_follows_the_api() {
    proxy_follows_the_api("iptables");
}

#[test]
fn nftables_proxy_follows_the_api() {
    proxy_follows_the_api("nftables");
}

#[test]
fn ebpf_proxy_follows_the_api() {
    proxy_follows_the_api("ebpf");
}

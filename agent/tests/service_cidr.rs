//! Privileged test of the service CIDR dead end, in a private network namespace (the test
//! thread unshares its own; it vanishes with the thread, so nothing is left behind even on
//! failure). The namespace looks like a node: an uplink with an address and a default route.

use skiff_agent::network::{self, service_cidr};
// `ip` runs in the calling thread's network namespace: the test's own, on its thread.
use skiff_test_support::netns::{in_new_netns, ip};
use skiff_test_support::require_root;

/// The device `ip route get` picks for `dst`.
fn route_dev(dst: &str) -> String {
    let out = ip(&["-o", "route", "get", dst]);
    let mut words = out.split_whitespace();
    words
        .find(|w| *w == "dev")
        .and_then(|_| words.next())
        .unwrap_or_else(|| panic!("no dev in {out:?}"))
        .to_owned()
}

#[test]
fn service_range_is_routed_to_the_dummy_device_and_removed() {
    require_root!("network namespaces");
    in_new_netns(|| {
        for args in [
            &["link", "set", "lo", "up"][..],
            // A veth pair (some kernels have no dummy driver); its peer stays in this namespace.
            &[
                "link",
                "add",
                "uplink0",
                "type",
                "veth",
                "peer",
                "name",
                "uplink0-peer",
            ],
            &["link", "set", "uplink0", "up"],
            &["addr", "add", "192.0.2.1/24", "dev", "uplink0"],
            &["route", "add", "default", "via", "192.0.2.254"],
            // A more specific route inside the range must keep winning.
            &["route", "add", "local", "10.96.7.0/24", "dev", "lo"],
        ] {
            ip(args);
        }
        assert_eq!(route_dev("10.96.0.10"), "uplink0", "the leak this prevents");

        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let handle = network::connect().unwrap();
            let cidr = service_cidr::DEFAULT.parse().unwrap();
            service_cidr::install(&handle, cidr).await.unwrap();
            // Idempotent: the agent installs at every start.
            service_cidr::install(&handle, cidr).await.unwrap();
            for vip in ["10.96.0.10", "10.111.255.254"] {
                assert_eq!(route_dev(vip), service_cidr::DEVICE, "{vip}");
            }
            assert_eq!(route_dev("10.112.0.1"), "uplink0", "outside the range");
            assert_eq!(route_dev("10.96.7.1"), "lo", "a more specific route");
            assert!(ip(&["-o", "link", "show", service_cidr::DEVICE]).contains("UP"));
            let routes = ip(&["-4", "route", "show", "dev", service_cidr::DEVICE]);
            assert_eq!(routes.lines().count(), 1, "one route: {routes}");

            // A different range replaces nothing else and routes as well.
            let other = "172.30.0.0/16".parse().unwrap();
            service_cidr::install(&handle, other).await.unwrap();
            assert_eq!(route_dev("172.30.1.1"), service_cidr::DEVICE);

            assert!(service_cidr::remove(&handle).await.unwrap());
            assert!(
                !service_cidr::remove(&handle).await.unwrap(),
                "already gone"
            );
            assert_eq!(route_dev("10.96.0.10"), "uplink0");
            assert!(!ip(&["-o", "link"]).contains(service_cidr::DEVICE));
        });
    });
}

//! Leader election: two candidates, one active; when the active one dies without releasing
//! the Lease, the other takes over within the lease duration (plus one retry).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::api;
use skiff_control::manager::leader;
use skiff_test_support::eventually;
use tokio_util::sync::CancellationToken;

fn config(identity: &str) -> leader::Config {
    leader::Config {
        identity: identity.into(),
        lease_duration: Duration::from_millis(1500),
        renew_deadline: Duration::from_millis(1000),
        retry_period: Duration::from_millis(100),
        ..leader::Config::default()
    }
}

/// Starts a candidate whose work marks `active` while it leads.
fn candidate(
    client: kube::Client,
    identity: &'static str,
    active: Arc<[AtomicUsize; 2]>,
    slot: usize,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(leader::run(
        client,
        config(identity),
        shutdown,
        move |leading| {
            let active = active.clone();
            async move {
                active[slot].fetch_add(1, Ordering::SeqCst);
                leading.cancelled().await;
                active[slot].fetch_sub(1, Ordering::SeqCst);
            }
        },
    ))
}

#[tokio::test]
async fn the_standby_takes_over_when_the_leader_dies() {
    let a = api().await;
    let active = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let shutdown = CancellationToken::new();
    let first = candidate(a.client(), "first", active.clone(), 0, shutdown.clone());
    eventually("first leads", || async {
        (active[0].load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    let second = candidate(a.client(), "second", active.clone(), 1, shutdown.clone());
    // The second stays in standby while the first renews (several lease durations).
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        assert_eq!(active[1].load(Ordering::SeqCst), 0, "two leaders at once");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lease = a
        .get("/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/skiff-control")
        .await;
    assert_eq!(lease["spec"]["holderIdentity"], "first");

    // The leader dies without releasing the Lease.
    first.abort();
    let died = Instant::now();
    eventually("second leads", || async {
        (active[1].load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    let took = died.elapsed();
    assert!(
        took <= Duration::from_millis(1500 + 2 * 100 + 500),
        "took {took:?}"
    );
    assert_eq!(active[0].load(Ordering::SeqCst), 0);
    let lease = a
        .get("/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/skiff-control")
        .await;
    assert_eq!(lease["spec"]["holderIdentity"], "second");
    assert_eq!(lease["spec"]["leaseTransitions"], 1);

    shutdown.cancel();
    second.await.unwrap();
    // A clean shutdown released the Lease.
    let lease = a
        .get("/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/skiff-control")
        .await;
    assert!(lease["spec"]["holderIdentity"].is_null(), "{lease}");
}

//! The store conformance suite: what every [`Store`] implementation must do, whatever holds
//! the bytes (Kubernetes runs one suite against etcd and its watch cache the same way).
//!
//! A backend's test module instantiates it with `conformance::suite!(open)`, where
//! `async fn open(window: usize) -> (SharedStore, Guard)` makes an empty store whose watches
//! replay `window` events (the guard keeps e.g. a tempdir or an etcd process alive).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};

use super::{
    object_revision, EventKind, EventStream, ListRequest, SharedStore, StoreError, StoreEvent,
};

/// A window no test here fills.
const WINDOW: usize = 1000;

fn object(name: &str, data: &str) -> Value {
    json!({"metadata": {"name": name}, "data": data})
}

fn names(items: &[bytes::Bytes]) -> Vec<String> {
    items
        .iter()
        .map(|b| {
            let v: Value = serde_json::from_slice(b).unwrap();
            format!(
                "{}={}",
                v["metadata"]["name"].as_str().unwrap(),
                v["data"].as_str().unwrap()
            )
        })
        .collect()
}

async fn next(watch: &mut EventStream) -> Arc<StoreEvent> {
    tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("an event within 10s")
        .expect("the watch goes on")
        .expect("no watch error")
}

fn at(revision: u64) -> ListRequest {
    ListRequest {
        revision: Some(revision),
        ..ListRequest::default()
    }
}

/// Creates of existing keys, stale revisions and missing keys are refused, without taking a
/// revision.
pub(crate) async fn preconditions<G, F: Future<Output = (SharedStore, G)>>(
    open: impl Fn(usize) -> F,
) {
    let (store, _guard) = open(WINDOW).await;
    let base = store.revision();
    let created = store.create("t/a", object("a", "1")).await.unwrap();
    let first = object_revision(&created);
    assert!(first > base, "a write takes a revision after the store's");
    let before = store.revision();
    assert!(before >= first);
    assert!(matches!(
        store.create("t/a", object("a", "2")).await,
        Err(StoreError::AlreadyExists(_))
    ));
    let stale = first + 100;
    assert!(matches!(
        store.update("t/a", Some(stale), object("a", "2")).await,
        Err(StoreError::Conflict { expected, actual, .. }) if expected == stale && actual == first
    ));
    assert!(matches!(
        store.delete("t/a", Some(stale)).await,
        Err(StoreError::Conflict { .. })
    ));
    assert!(matches!(
        store.update("t/none", None, object("none", "1")).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.delete("t/none", None).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(store.get("t/none").await.unwrap().is_none());
    assert_eq!(store.revision(), before, "refused writes take no revision");
    let updated = store
        .update("t/a", Some(first), object("a", "2"))
        .await
        .unwrap();
    let second = object_revision(&updated);
    assert!(second > before);
    let unconditional = store.update("t/a", None, object("a", "3")).await.unwrap();
    assert!(object_revision(&unconditional) > second);
    assert_eq!(store.get("t/a").await.unwrap(), Some(unconditional));
}

/// Every write takes its own revision, later than every earlier one, also when many write at
/// once (revisions only increase: etcd's also count other clients' writes, so the suite asks
/// for no gap-free sequence).
pub(crate) async fn revisions_are_distinct_and_increase<G, F: Future<Output = (SharedStore, G)>>(
    open: impl Fn(usize) -> F,
) {
    let (store, _guard) = open(WINDOW).await;
    let base = store.revision();
    let writers: Vec<_> = (0..8)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut revisions = Vec::new();
                for i in 0..25 {
                    let key = format!("k/{t}/{i}");
                    let written = store.create(&key, object(&key, "")).await.unwrap();
                    revisions.push(object_revision(&written));
                }
                revisions
            })
        })
        .collect();
    let mut all = Vec::new();
    for writer in writers {
        let revisions = writer.await.unwrap();
        assert!(
            revisions.windows(2).all(|w| w[0] < w[1]),
            "one writer's revisions increase"
        );
        all.extend(revisions);
    }
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 200, "every write has its own revision");
    assert!(all[0] > base);
    let newest = all[199];
    assert!(store.revision() >= newest);
    let list = store.list("k/", ListRequest::default()).await.unwrap();
    assert_eq!(list.items.len(), 200);
    assert!(
        list.revision >= newest,
        "a list reads after every answered write"
    );
}

/// A delete answers the object as it was, at the deletion's revision; its event carries both.
pub(crate) async fn deletes_return_the_final_object<G, F: Future<Output = (SharedStore, G)>>(
    open: impl Fn(usize) -> F,
) {
    let (store, _guard) = open(WINDOW).await;
    let created = store.create("t/a", object("a", "1")).await.unwrap();
    let updated = store
        .update("t/a", Some(object_revision(&created)), object("a", "2"))
        .await
        .unwrap();
    let at = object_revision(&updated);
    let mut watch = store.watch("t/", at).await.unwrap();
    let deleted = store.delete("t/a", Some(at)).await.unwrap();
    assert_eq!(deleted["data"], "2");
    let gone = object_revision(&deleted);
    assert!(gone > at);
    assert!(store.get("t/a").await.unwrap().is_none());
    assert_eq!(store.revision(), gone);
    let event = next(&mut watch).await;
    assert_eq!((event.revision, event.kind), (gone, EventKind::Deleted));
    assert_eq!(event.object_value(), Some(&deleted));
    assert_eq!(
        event.previous_value().map(object_revision),
        Some(at),
        "the event keeps the object before the delete"
    );
    // The key is free again.
    let again = store.create("t/a", object("a", "4")).await.unwrap();
    assert!(object_revision(&again) > gone);
}

/// Lists return the keys under the prefix (and only those) in key order, at the newest
/// revision.
pub(crate) async fn lists_are_ordered_and_bounded_by_prefix<
    G,
    F: Future<Output = (SharedStore, G)>,
>(
    open: impl Fn(usize) -> F,
) {
    let (store, _guard) = open(WINDOW).await;
    let mut last = 0;
    for key in ["p/b", "q/a", "p/a", "pp/x", "p/c"] {
        last = object_revision(&store.create(key, object(key, "")).await.unwrap());
    }
    let list = store.list("p/", ListRequest::default()).await.unwrap();
    assert_eq!(names(&list.items), ["p/a=", "p/b=", "p/c="]);
    assert_eq!(list.revision, last);
    assert!(list.continue_after.is_none());
    let all = store.list("", ListRequest::default()).await.unwrap();
    assert_eq!(all.items.len(), 5);
}

/// The pages after the first read at the first page's revision: writes in between do not show.
pub(crate) async fn pages_read_at_the_first_page_revision<
    G,
    F: Future<Output = (SharedStore, G)>,
>(
    open: impl Fn(usize) -> F,
) {
    let (store, _guard) = open(WINDOW).await;
    for key in ["p/a", "p/b", "p/c", "p/e"] {
        store.create(key, object(key, "old")).await.unwrap();
    }
    let first = store
        .list(
            "p/",
            ListRequest {
                limit: Some(2),
                ..ListRequest::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(names(&first.items), ["p/a=old", "p/b=old"]);
    assert_eq!(first.continue_after.as_deref(), Some("p/b"));
    store
        .update("p/c", None, object("p/c", "new"))
        .await
        .unwrap();
    store.create("p/d", object("p/d", "new")).await.unwrap();
    store.delete("p/e", None).await.unwrap();
    store.create("p/f", object("p/f", "new")).await.unwrap();
    let rest = store
        .list(
            "p/",
            ListRequest {
                start_after: first.continue_after.clone(),
                limit: Some(10),
                revision: Some(first.revision),
            },
        )
        .await
        .unwrap();
    assert_eq!(names(&rest.items), ["p/c=old", "p/e=old"]);
    assert_eq!(rest.revision, first.revision);
    let newest = store
        .list(
            "p/",
            ListRequest {
                start_after: first.continue_after,
                ..ListRequest::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(names(&newest.items), ["p/c=new", "p/d=new", "p/f=new"]);
}

/// A list at a revision the store has compacted away is gone; at the newest it is not.
pub(crate) async fn lists_at_compacted_revisions_are_gone<
    G,
    F: Future<Output = (SharedStore, G)>,
>(
    open: impl Fn(usize) -> F,
) {
    let (store, _guard) = open(WINDOW).await;
    for key in ["p/a", "p/b"] {
        store.create(key, object(key, "")).await.unwrap();
    }
    let first = store
        .list(
            "p/",
            ListRequest {
                limit: Some(1),
                ..ListRequest::default()
            },
        )
        .await
        .unwrap();
    store.create("p/c", object("p/c", "")).await.unwrap();
    store.compact(store.revision()).await.unwrap();
    assert!(matches!(
        store.list("p/", at(first.revision)).await,
        Err(StoreError::Gone { requested, .. }) if requested == first.revision
    ));
    let newest = store.list("p/", at(store.revision())).await.unwrap();
    assert_eq!(newest.items.len(), 3);
}

/// A watch replays the events after its revision, then follows live ones, in revision order,
/// only under its prefix.
pub(crate) async fn watches_are_ordered_and_filtered_by_prefix<
    G,
    F: Future<Output = (SharedStore, G)>,
>(
    open: impl Fn(usize) -> F,
) {
    let (store, _guard) = open(WINDOW).await;
    let base = store.revision();
    let revision = |v: Value| object_revision(&v);
    let wa = revision(store.create("w/a", object("a", "1")).await.unwrap());
    store.create("x/a", object("a", "1")).await.unwrap();
    let mut watch = store.watch("w/", base).await.unwrap();
    let mut from_now = store.watch("", store.revision()).await.unwrap();
    let wb = revision(store.create("w/b", object("b", "1")).await.unwrap());
    let wa2 = revision(
        store
            .update("w/a", Some(wa), object("a", "2"))
            .await
            .unwrap(),
    );
    let xb = revision(store.create("x/b", object("b", "1")).await.unwrap());
    let wb_deleted = revision(store.delete("w/b", None).await.unwrap());
    let mut seen = Vec::new();
    for _ in 0..4 {
        let e = next(&mut watch).await;
        seen.push((e.revision, e.kind, e.key.clone()));
    }
    assert_eq!(
        seen,
        [
            (wa, EventKind::Added, "w/a".to_owned()),
            (wb, EventKind::Added, "w/b".to_owned()),
            (wa2, EventKind::Modified, "w/a".to_owned()),
            (wb_deleted, EventKind::Deleted, "w/b".to_owned()),
        ]
    );
    let mut live = Vec::new();
    for _ in 0..4 {
        live.push(next(&mut from_now).await.revision);
    }
    assert_eq!(
        live,
        [wb, wa2, xb, wb_deleted],
        "a watch from now sees every later write"
    );
}

/// A watch from a revision older than the store replays is gone (410); later ones work.
pub(crate) async fn watches_from_too_old_revisions_are_gone<
    G,
    F: Future<Output = (SharedStore, G)>,
>(
    open: impl Fn(usize) -> F,
) {
    let (store, _guard) = open(2).await;
    let mut revisions = Vec::new();
    for i in 0..5 {
        let key = format!("k/{i}");
        revisions.push(object_revision(
            &store.create(&key, object(&key, "")).await.unwrap(),
        ));
    }
    assert!(matches!(
        store.watch("", revisions[0]).await,
        Err(StoreError::Gone { requested, .. }) if requested == revisions[0]
    ));
    let mut watch = store.watch("", revisions[2]).await.unwrap();
    assert_eq!(next(&mut watch).await.revision, revisions[3]);
    assert_eq!(next(&mut watch).await.revision, revisions[4]);
    assert!(store.watch("", store.revision()).await.is_ok());
}

/// Instantiates the suite for a backend: `suite!(open)` in its test module.
macro_rules! suite {
    ($open:ident) => {
        mod conformance {
            use crate::store::conformance as suite;

            #[tokio::test]
            async fn preconditions() {
                suite::preconditions(super::$open).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn revisions_are_distinct_and_increase() {
                suite::revisions_are_distinct_and_increase(super::$open).await;
            }

            #[tokio::test]
            async fn deletes_return_the_final_object() {
                suite::deletes_return_the_final_object(super::$open).await;
            }

            #[tokio::test]
            async fn lists_are_ordered_and_bounded_by_prefix() {
                suite::lists_are_ordered_and_bounded_by_prefix(super::$open).await;
            }

            #[tokio::test]
            async fn pages_read_at_the_first_page_revision() {
                suite::pages_read_at_the_first_page_revision(super::$open).await;
            }

            #[tokio::test]
            async fn lists_at_compacted_revisions_are_gone() {
                suite::lists_at_compacted_revisions_are_gone(super::$open).await;
            }

            #[tokio::test]
            async fn watches_are_ordered_and_filtered_by_prefix() {
                suite::watches_are_ordered_and_filtered_by_prefix(super::$open).await;
            }

            #[tokio::test]
            async fn watches_from_too_old_revisions_are_gone() {
                suite::watches_from_too_old_revisions_are_gone(super::$open).await;
            }
        }
    };
}
pub(crate) use suite;

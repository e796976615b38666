//! Compaction on a schedule: etcd keeps every revision until told to forget, so the API servers
//! compact it, as kube-apiserver does every `--etcd-compaction-interval` (5 minutes).
//!
//! Several API servers share the job through one key, [`COMPACT_KEY`], whose etcd `version`
//! (the number of writes since it was created) serves as a clock: each server remembers the
//! version it last saw and, every interval, writes the key only if that version is still
//! current. The one that wins compacts at the revision it saw one interval earlier (so at least
//! an interval of history stays for paged lists and watches catching up); the others learn the
//! new version and try again next interval, which takes over within two intervals when the
//! winner dies. kube-apiserver keeps the same key in the same way, so skiff and Kubernetes
//! servers sharing one etcd do not compact twice as often.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse};

use super::{Failure, Shared};

/// The key whose version orders the compactions (outside the object prefix: compaction is
/// for the whole etcd, whatever prefixes share it).
pub(super) const COMPACT_KEY: &str = "compact_rev_key";

/// Compacts every `interval` while the store lives.
pub(super) async fn run(shared: Arc<Shared>, interval: Duration) {
    let mut version = 0;
    let mut previous = 0;
    loop {
        tokio::time::sleep(interval).await;
        match round(&shared, version, previous).await {
            Ok((v, revision)) => (version, previous) = (v, revision),
            Err(f) => {
                tracing::warn!(error = %f.message(), "etcd compaction failed; trying next interval")
            }
        }
    }
}

/// One interval: claims it if `version` is still the key's, and then compacts at `previous`
/// (the revision the last round saw). Returns the version and revision for the next round.
async fn round(shared: &Shared, version: i64, previous: i64) -> Result<(i64, i64), Failure> {
    let txn = Txn::new()
        .when([Compare::version(COMPACT_KEY, CompareOp::Equal, version)])
        .and_then([TxnOp::put(COMPACT_KEY, previous.to_string(), None)])
        .or_else([TxnOp::get(COMPACT_KEY, None)]);
    let answer = shared.call(shared.kv.clone().txn(txn)).await?;
    let now = answer.header().map_or(0, |h| h.revision());
    if !answer.succeeded() {
        // Another server compacted this interval: take its clock.
        let theirs = match answer.op_responses().into_iter().next() {
            Some(TxnOpResponse::Get(found)) => found.kvs().first().map_or(0, |kv| kv.version()),
            _ => 0,
        };
        return Ok((theirs, now));
    }
    if previous > 0 {
        compact(shared, previous).await?;
        tracing::info!(revision = previous, "compacted etcd");
    }
    Ok((version + 1, now))
}

/// Compacts etcd at `revision` (a revision already compacted is no error).
pub(super) async fn compact(shared: &Shared, revision: i64) -> Result<(), Failure> {
    if revision <= 0 {
        return Ok(());
    }
    match shared.call(shared.kv.clone().compact(revision, None)).await {
        Ok(_) | Err(Failure::Compacted) => {
            shared
                .compacted
                .fetch_max(u64::try_from(revision).unwrap_or(0), Ordering::SeqCst);
            Ok(())
        }
        Err(f) => Err(f),
    }
}

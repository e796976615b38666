//! Leader election through a coordination.k8s.io Lease (client-go's leaderelection, reduced):
//! only the holder of `kube-system/skiff-control` runs the controllers and the scheduler; the
//! others stand by and take over when the holder stops renewing.
//!
//! Expiry is judged by the standby's own clock from when it last saw the Lease change (as
//! client-go does), so skew between hosts does not matter. The holder renews every
//! `retry_period` and steps down (cancels its work) when it has not managed to for
//! `renew_deadline`, which is shorter than the lease, so it has stopped before anyone else may
//! start. With the defaults (lease 12 s, retry 1 s) a standby takes over at most ~14 s after the
//! holder died (last renewal seen up to 1 s late, 12 s expiry, 1 s until the next attempt);
//! a holder shutting down cleanly releases the Lease so a standby takes over at its next try.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Election settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// Who this instance is (unique per process).
    pub identity: String,
    /// How long a Lease holds without renewal.
    pub lease_duration: Duration,
    /// The holder steps down after failing to renew for this long (< lease_duration).
    pub renew_deadline: Duration,
    /// How often to renew, and how often a standby tries.
    pub retry_period: Duration,
}

impl Default for Config {
    fn default() -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "skiff-control".into());
        Self {
            namespace: "kube-system".into(),
            name: "skiff-control".into(),
            identity: format!("{host}_{}", uuid::Uuid::new_v4()),
            lease_duration: Duration::from_secs(12),
            renew_deadline: Duration::from_secs(8),
            retry_period: Duration::from_secs(1),
        }
    }
}

/// One candidate's view of the Lease.
struct Elector {
    api: Api<Lease>,
    config: Config,
    /// The Lease's spec as last seen, and when it was seen to change.
    observed: Option<(Option<LeaseSpec>, Instant)>,
}

impl Elector {
    fn spec(&self, now: Timestamp, transitions: i32, acquire: Option<MicroTime>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(self.config.lease_duration.as_secs().max(1) as i32),
            acquire_time: acquire.or(Some(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// Acquires or renews the Lease; `Ok(true)` when this instance holds it afterwards.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(now, 0, None)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let mine = holder == self.config.identity;
        if !mine {
            let changed = self
                .observed
                .as_ref()
                .is_none_or(|(seen, _)| seen.as_ref() != Some(&spec));
            if changed {
                self.observed = Some((Some(spec.clone()), Instant::now()));
            }
            let seen_at = self
                .observed
                .as_ref()
                .map_or_else(Instant::now, |(_, t)| *t);
            let duration = spec
                .lease_duration_seconds
                .map_or(self.config.lease_duration, |s| {
                    Duration::from_secs(s.max(0) as u64)
                });
            if !holder.is_empty() && seen_at.elapsed() < duration {
                return Ok(false);
            }
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!mine);
        let acquire = if mine {
            spec.acquire_time.clone()
        } else {
            None
        };
        lease.spec = Some(self.spec(now, transitions, acquire));
        // Replace pins the resourceVersion read above: of two standbys only one wins.
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up so a standby need not wait for it to expire.
    async fn release(&mut self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.config.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        if let Err(e) = self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            tracing::debug!(error = %e, "could not release the leader Lease");
        }
    }
}

/// Runs `work` whenever this instance holds the Lease, until `shutdown` is cancelled. `work`
/// gets a token that is cancelled when leadership is lost (or at shutdown) and must return
/// soon after.
pub async fn run<F, Fut>(client: kube::Client, config: Config, shutdown: CancellationToken, work: F)
where
    F: Fn(CancellationToken) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut elector = Elector {
        api: Api::namespaced(client, &config.namespace),
        config: config.clone(),
        observed: None,
    };
    let mut tick = tokio::time::interval(config.retry_period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Standby.
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            match elector.try_acquire_or_renew().await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "leader election: cannot read the Lease"),
            }
        }
        tracing::info!(identity = %config.identity, lease = %config.name, "became leader");
        let leading = shutdown.child_token();
        // If this future is dropped (its task aborted), the work must stop too.
        let _stop_work = leading.clone().drop_guard();
        let mut task = tokio::spawn(work(leading.clone()));
        let mut renewed = Instant::now();
        let mut finished = false;
        let lost = loop {
            tokio::select! {
                _ = &mut task => {
                    finished = true;
                    break false;
                }
                _ = tick.tick() => {}
            }
            if shutdown.is_cancelled() {
                break false;
            }
            match elector.try_acquire_or_renew().await {
                Ok(true) => renewed = Instant::now(),
                Ok(false) => break true,
                Err(e) => tracing::warn!(error = %e, "leader election: renewal failed"),
            }
            if renewed.elapsed() > config.renew_deadline {
                break true;
            }
        };
        leading.cancel();
        if !finished {
            let _ = task.await;
        }
        if lost {
            tracing::warn!(identity = %config.identity, "lost leadership; standing by");
            continue;
        }
        if shutdown.is_cancelled() {
            elector.release().await;
            return;
        }
        // The work ended by itself: hold on to nothing.
        elector.release().await;
        return;
    }
}

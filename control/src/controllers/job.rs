//! Job controller (batch/v1): runs pods from `spec.template` until `completions` of them
//! succeeded, at most `parallelism` at a time, and gives up after `backoffLimit` failures or
//! `activeDeadlineSeconds`.
//!
//! Level-triggered like the ReplicaSet controller: a kube-rs `Controller` on Jobs whose pod
//! stream goes through a reflector first, expectations so a burst of events cannot create
//! twice, a resync every 30 s. The status is written with the Job's resourceVersion, so a pass
//! that worked from a stale Job fails with a conflict instead of overwriting (and its events,
//! recorded only after the write, are not doubled).
//!
//! What it follows from Kubernetes' job controller: the pod labels (the API server's
//! defaulting adds them to the template), names `<job>-<random>` (`<job>-<index>-<random>` for
//! Indexed Jobs, with the completion-index annotation and label, hostname `<job>-<index>` and
//! `JOB_COMPLETION_INDEX`), pod creation delayed 10 s x 2^(failures-1) (at most 6 min) after a
//! failure, restarts of OnFailure pods counted against `backoffLimit`, `suspend` (active pods
//! deleted, `startTime` reset), the conditions `SuccessCriteriaMet`+`Complete` and
//! `FailureTarget`+`Failed`, and `ttlSecondsAfterFinished` (the TTL controller's job, done
//! here). What it does not: pod failure and success policies, per-index backoff limits (the
//! API refuses them), adoption of orphan pods, and the job-tracking finalizer: succeeded and
//! failed counts come from the pods still there and never go down, so a finished pod deleted
//! while the Job runs is not counted.

use crate::client::guard::guard;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobSpec, JobStatus};
use k8s_openapi::api::core::v1::{EnvVar, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, PostParams, Preconditions, PropagationPolicy};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use skiff_k8s::pod as pod_state;

use super::machinery::ownership;
use super::machinery::pod_control::PodControl;
use super::replicaset;
use crate::client::events::{reference, EventType, Recorder};
use crate::client::expectations::{Expectations, Observed};
use crate::client::Context;

/// How often every Job is looked at even without events.
const RESYNC: Duration = Duration::from_secs(30);
/// Most pods created in one pass.
const BURST: usize = 500;
/// Pod creation backoff after failures: 10 s doubled per failure, capped at 6 minutes.
const BACKOFF_BASE: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(360);

/// Label (and annotation) with a pod's completion index in an Indexed Job.
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";

/// Errors of a reconcile pass.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The API server refused or failed a request.
    #[error("API request failed: {0}")]
    Kube(#[from] kube::Error),
}

struct State {
    client: kube::Client,
    pods: Store<Pod>,
    observed: Observed,
    expectations: Expectations,
    recorder: Recorder,
}

/// Runs the Job controller until shutdown.
pub async fn run(ctx: Context) {
    let pods = ctx.informers.get::<Pod>();
    let Some(jobs) = ctx.informers.listed::<Job>().await else {
        return;
    };
    let state = Arc::new(State {
        client: ctx.client.clone(),
        pods: pods.store(),
        observed: pods.observed(),
        expectations: Expectations::default(),
        recorder: ctx.recorder("job-controller"),
    });
    Controller::for_shared_stream(jobs.objects(), jobs.store())
        .owns_shared_stream(pods.objects())
        .graceful_shutdown_on(ctx.shutdown.clone().cancelled_owned())
        .run(guard("job", reconcile), error_policy, state)
        .for_each(|_| async {})
        .await;
}

fn error_policy(job: Arc<Job>, err: &JobError, _: Arc<State>) -> Action {
    tracing::warn!(job = %job.name_any(), error = %err, "reconcile failed");
    Action::requeue(Duration::from_secs(2))
}

/// The Job's terminal condition (`Complete` or `Failed` with status True), if any.
pub fn finished_condition(status: Option<&JobStatus>) -> Option<&JobCondition> {
    status?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
}

/// How long pod creation waits after `failures` failed pods.
pub fn failure_backoff(failures: i32) -> Duration {
    if failures <= 0 {
        return Duration::ZERO;
    }
    let doublings = (failures - 1).min(16) as u32;
    BACKOFF_BASE.saturating_mul(1 << doublings).min(BACKOFF_MAX)
}

/// When a finished pod finished: its latest container termination, else its latest condition
/// change, else its creation.
fn finish_time(pod: &Pod) -> Option<Timestamp> {
    let status = pod.status.as_ref();
    let terminated = status
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| t.0)
        .max();
    terminated
        .or_else(|| {
            status
                .and_then(|s| s.conditions.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|c| c.last_transition_time.as_ref().map(|t| t.0))
                .max()
        })
        .or_else(|| pod.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// Container restarts of the active pods, which count as failures with restartPolicy OnFailure.
fn restarts(active: &[&Arc<Pod>]) -> i32 {
    active
        .iter()
        .filter_map(|p| p.status.as_ref())
        .flat_map(|s| {
            s.container_statuses
                .iter()
                .flatten()
                .chain(s.init_container_statuses.iter().flatten())
        })
        .map(|c| c.restart_count)
        .sum()
}

/// A pod's completion index, if it has a valid one.
pub fn index_of(pod: &Pod) -> Option<i32> {
    pod.annotations()
        .get(COMPLETION_INDEX)
        .or_else(|| pod.labels().get(COMPLETION_INDEX))?
        .parse()
        .ok()
        .filter(|i| *i >= 0)
}

/// Parses `completedIndexes` ("1,3-5").
pub fn parse_indexes(s: &str) -> BTreeSet<i32> {
    let mut set = BTreeSet::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let range = match part.split_once('-') {
            Some((a, b)) => a.parse::<i32>().ok().zip(b.parse::<i32>().ok()),
            None => part.parse::<i32>().ok().map(|i| (i, i)),
        };
        if let Some((a, b)) = range {
            set.extend(a..=b);
        }
    }
    set
}

/// Formats indexes as Kubernetes does ("1,3-5").
pub fn format_indexes(set: &BTreeSet<i32>) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut iter = set.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    parts.join(",")
}

/// Sets condition `type_` to `status` (keeping its transition time if unchanged). Returns
/// whether it changed.
fn set_condition(
    conditions: &mut Vec<JobCondition>,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> bool {
    if let Some(c) = conditions.iter_mut().find(|c| c.type_ == type_) {
        if c.status == status && c.reason.as_deref() == Some(reason) {
            return false;
        }
        if c.status != status {
            c.last_transition_time = Some(Time(now));
        }
        c.status = status.to_owned();
        c.reason = Some(reason.to_owned());
        c.message = Some(message.to_owned());
        c.last_probe_time = Some(Time(now));
        return true;
    }
    conditions.push(JobCondition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
        last_probe_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    });
    true
}

fn count(n: usize) -> Option<i32> {
    (n > 0).then(|| i32::try_from(n).unwrap_or(i32::MAX))
}

/// What a pass decided to end the Job with.
struct Outcome {
    failed: bool,
    reason: &'static str,
    message: &'static str,
}

async fn reconcile(job: Arc<Job>, state: Arc<State>) -> Result<Action, JobError> {
    if job.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let now = Timestamp::now();
    if let Some(done) = finished_condition(job.status.as_ref()) {
        return expire(&job, done, now, &state).await;
    }
    let key = format!("{}/{}", job.namespace().unwrap_or_default(), job.name_any());
    let ns = job.namespace().unwrap_or_default();
    let uid = job.uid().unwrap_or_default();
    let spec = job.spec.clone().unwrap_or_default();
    let old = job.status.clone().unwrap_or_default();
    let pods_api: Api<Pod> = Api::namespaced(state.client.clone(), &ns);
    let mut requeue = RESYNC;

    let owned: Vec<Arc<Pod>> = state
        .pods
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(ns.as_str()))
        .filter(|p| ownership::is_controlled_by(&p.metadata, &uid))
        .collect();
    let active: Vec<&Arc<Pod>> = owned.iter().filter(|p| pod_state::is_active(p)).collect();
    let failed_pods: Vec<&Arc<Pod>> = owned
        .iter()
        .filter(|p| pod_state::phase(p) == "Failed")
        .collect();
    let succeeded_pods: Vec<&Arc<Pod>> = owned
        .iter()
        .filter(|p| pod_state::phase(p) == "Succeeded")
        .collect();
    let succeeded = old
        .succeeded
        .unwrap_or(0)
        .max(count(succeeded_pods.len()).unwrap_or(0));
    let failed = old
        .failed
        .unwrap_or(0)
        .max(count(failed_pods.len()).unwrap_or(0));
    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    let completions = spec.completions;
    let backoff_limit = spec.backoff_limit.unwrap_or(6);
    let suspended = spec.suspend == Some(true);

    let mut status = old.clone();
    let mut conditions = old.conditions.clone().unwrap_or_default();
    let mut events: Vec<(EventType, &str, String)> = Vec::new();
    // Pods on their way out (podReplacementPolicy TerminatingOrFailed replaces them at once).
    let terminating = owned
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_some() && !pod_state::is_finished(p))
        .count();
    status.terminating = Some(i32::try_from(terminating).unwrap_or(i32::MAX));
    status.succeeded = (succeeded > 0).then_some(succeeded);
    status.failed = (failed > 0).then_some(failed);

    let mut completed_indexes = old
        .completed_indexes
        .as_deref()
        .map(parse_indexes)
        .unwrap_or_default();
    if indexed {
        let limit = completions.unwrap_or(0);
        completed_indexes.extend(
            succeeded_pods
                .iter()
                .filter_map(|p| index_of(p))
                .filter(|i| *i < limit),
        );
        completed_indexes.retain(|i| *i < limit);
        status.completed_indexes = Some(format_indexes(&completed_indexes));
    }

    // Failure first (Kubernetes checks the backoff limit and the deadline before success).
    let on_failure = spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        == Some("OnFailure");
    let restarts_exceeded = on_failure && {
        let r = restarts(&active);
        if backoff_limit == 0 {
            r > 0
        } else {
            r >= backoff_limit
        }
    };
    let deadline = spec.active_deadline_seconds.and_then(|secs| {
        let start = old.start_time.as_ref()?.0;
        // A deadline past the last representable time never comes.
        skiff_k8s::time::add_seconds(start, secs)
    });
    let mut outcome = if failed > backoff_limit || restarts_exceeded {
        Some(Outcome {
            failed: true,
            reason: "BackoffLimitExceeded",
            message: "Job has reached the specified backoff limit",
        })
    } else if !suspended && deadline.is_some_and(|d| d <= now) {
        Some(Outcome {
            failed: true,
            reason: "DeadlineExceeded",
            message: "Job was active longer than specified deadline",
        })
    } else {
        None
    };
    let complete = match (indexed, completions) {
        (true, Some(c)) => completed_indexes.len() >= usize::try_from(c).unwrap_or(0),
        (_, Some(c)) => succeeded >= c,
        // A work queue: done once one pod succeeded and the others finished.
        (_, None) => succeeded > 0 && active.is_empty(),
    };
    if outcome.is_none() && complete {
        outcome = Some(Outcome {
            failed: false,
            reason: "CompletionsReached",
            message: "Reached expected number of succeeded pods",
        });
    }

    if let Some(outcome) = outcome {
        // Whatever still runs is not needed any more.
        delete_pods(&job, &active, &pods_api, &state, &key).await?;
        let (target, terminal) = if outcome.failed {
            ("FailureTarget", "Failed")
        } else {
            ("SuccessCriteriaMet", "Complete")
        };
        set_condition(
            &mut conditions,
            target,
            "True",
            outcome.reason,
            outcome.message,
            now,
        );
        set_condition(
            &mut conditions,
            terminal,
            "True",
            outcome.reason,
            outcome.message,
            now,
        );
        if outcome.failed {
            events.push((EventType::Warning, outcome.reason, outcome.message.into()));
        } else {
            status.completion_time = Some(Time(now));
            events.push((EventType::Normal, "Completed", "Job completed".into()));
        }
        status.active = None;
        status.ready = Some(0);
        status.conditions = Some(conditions);
        status.start_time = status.start_time.or(Some(Time(now)));
        if write_status(&job, status, &state).await? {
            record(&job, &state, events).await;
        }
        // The TTL (if any) starts now; the status event brings the Job back.
        return Ok(Action::requeue(RESYNC));
    }

    if suspended {
        delete_pods(&job, &active, &pods_api, &state, &key).await?;
        if set_condition(
            &mut conditions,
            "Suspended",
            "True",
            "JobSuspended",
            "Job suspended",
            now,
        ) {
            events.push((EventType::Normal, "Suspended", "Job suspended".into()));
        }
        // activeDeadlineSeconds counts from the resume.
        status.start_time = None;
        status.active = None;
        status.ready = Some(0);
    } else {
        if conditions
            .iter()
            .any(|c| c.type_ == "Suspended" && c.status == "True")
        {
            set_condition(
                &mut conditions,
                "Suspended",
                "False",
                "JobResumed",
                "Job resumed",
                now,
            );
            events.push((EventType::Normal, "Resumed", "Job resumed".into()));
        }
        if status.start_time.is_none() {
            status.start_time = Some(Time(now));
        }
        if let Some(d) = deadline {
            requeue =
                requeue.min(d.duration_since(now).unsigned_abs() + Duration::from_millis(100));
        }
        match state.expectations.satisfied(&key, &state.observed) {
            Err(wait) => requeue = requeue.min(wait),
            Ok(()) => {
                let plan = Plan {
                    spec: &spec,
                    active: &active,
                    succeeded,
                    completed_indexes: &completed_indexes,
                };
                // New pods wait out the backoff after the latest failure.
                let latest_failure = failed_pods.iter().filter_map(|p| finish_time(p)).max();
                let backoff_until = latest_failure.map(|t| {
                    t + SignedDuration::try_from(failure_backoff(failed)).unwrap_or_default()
                });
                let may_create = backoff_until.is_none_or(|t| t <= now);
                if let Some(t) = backoff_until.filter(|_| !may_create) {
                    requeue = requeue
                        .min(t.duration_since(now).unsigned_abs() + Duration::from_millis(100));
                }
                manage(&job, &plan, may_create, &pods_api, &state, &key).await?;
            }
        }
        status.active = count(active.len());
        status.ready = Some(active.iter().filter(|p| pod_state::is_ready(p)).count() as i32);
    }
    status.conditions = (!conditions.is_empty()).then_some(conditions);
    if write_status(&job, status, &state).await? {
        record(&job, &state, events).await;
    }
    Ok(Action::requeue(requeue))
}

/// What the pods should be.
struct Plan<'a> {
    spec: &'a JobSpec,
    active: &'a [&'a Arc<Pod>],
    succeeded: i32,
    completed_indexes: &'a BTreeSet<i32>,
}

/// Creates missing pods and deletes surplus ones.
async fn manage(
    job: &Job,
    plan: &Plan<'_>,
    may_create: bool,
    pods_api: &Api<Pod>,
    state: &State,
    key: &str,
) -> Result<(), JobError> {
    let parallelism = usize::try_from(plan.spec.parallelism.unwrap_or(1)).unwrap_or(0);
    let (surplus, to_create): (Vec<&Arc<Pod>>, Vec<Option<i32>>) =
        if plan.spec.completion_mode.as_deref() == Some("Indexed") {
            indexed_plan(plan, parallelism)
        } else {
            let active = plan.active.len();
            let wanted = match plan.spec.completions {
                Some(c) => usize::try_from(c - plan.succeeded)
                    .unwrap_or(0)
                    .min(parallelism),
                // A work queue stops starting pods once one succeeded.
                None if plan.succeeded > 0 => active.min(parallelism),
                None => parallelism,
            };
            let mut victims = plan.active.to_vec();
            victims.sort_by(|a, b| pod_state::deletion_order(a, b));
            victims.truncate(active.saturating_sub(wanted));
            (victims, vec![None; wanted.saturating_sub(active)])
        };
    delete_pods(job, &surplus, pods_api, state, key).await?;
    if !may_create || to_create.is_empty() {
        return Ok(());
    }
    let object_ref = reference(job);
    let control = PodControl {
        expectations: &state.expectations,
        key,
        recorder: &state.recorder,
        owner: &object_ref,
    };
    let pods: Vec<Pod> = to_create
        .iter()
        .take(BURST)
        .map(|index| pod_for(job, *index))
        .collect();
    control.create_all(pods_api, &pods).await?;
    Ok(())
}

/// Indexed mode: one active pod per pending index, lowest first, at most `parallelism`; pods
/// of finished, duplicate or out-of-range indexes are surplus.
fn indexed_plan<'a>(plan: &Plan<'a>, parallelism: usize) -> (Vec<&'a Arc<Pod>>, Vec<Option<i32>>) {
    let completions = plan.spec.completions.unwrap_or(0);
    let mut by_index: HashMap<i32, Vec<&'a Arc<Pod>>> = HashMap::new();
    let mut surplus = Vec::new();
    for pod in plan.active.iter().copied() {
        match index_of(pod) {
            Some(i) if i < completions && !plan.completed_indexes.contains(&i) => {
                by_index.entry(i).or_default().push(pod);
            }
            _ => surplus.push(pod),
        }
    }
    for pods in by_index.values_mut() {
        pods.sort_by(|a, b| pod_state::deletion_order(a, b));
        // Keep the one deleted last.
        let keep = pods.pop();
        surplus.append(pods);
        pods.extend(keep);
    }
    let running = by_index.len();
    if running > parallelism {
        let mut extra: Vec<&'a Arc<Pod>> = by_index.values().flatten().copied().collect();
        extra.sort_by(|a, b| pod_state::deletion_order(a, b));
        surplus.extend(extra.into_iter().take(running - parallelism));
        return (surplus, Vec::new());
    }
    let missing: Vec<Option<i32>> = (0..completions)
        .filter(|i| !plan.completed_indexes.contains(i) && !by_index.contains_key(i))
        .take(parallelism - running)
        .map(Some)
        .collect();
    (surplus, missing)
}

/// A pod for the Job (and index), from its template.
fn pod_for(job: &Job, index: Option<i32>) -> Pod {
    let template = job.spec.clone().unwrap_or_default().template;
    let mut pod = replicaset::pod_from_template(job, &template);
    let name = job.name_any();
    if let Some(i) = index {
        let value = i.to_string();
        pod.metadata.generate_name = Some(format!("{name}-{i}-"));
        pod.metadata
            .annotations
            .get_or_insert_default()
            .insert(COMPLETION_INDEX.into(), value.clone());
        pod.metadata
            .labels
            .get_or_insert_default()
            .insert(COMPLETION_INDEX.into(), value.clone());
        if let Some(spec) = pod.spec.as_mut() {
            if spec.hostname.is_none() {
                spec.hostname = Some(format!("{name}-{i}"));
            }
            for c in spec
                .containers
                .iter_mut()
                .chain(spec.init_containers.iter_mut().flatten())
            {
                let env = c.env.get_or_insert_default();
                if !env.iter().any(|e| e.name == "JOB_COMPLETION_INDEX") {
                    env.push(EnvVar {
                        name: "JOB_COMPLETION_INDEX".into(),
                        value: Some(value.clone()),
                        value_from: None,
                    });
                }
            }
        }
    }
    pod
}

/// Deletes `pods` (pinned to their uid), with events.
async fn delete_pods(
    job: &Job,
    pods: &[&Arc<Pod>],
    pods_api: &Api<Pod>,
    state: &State,
    key: &str,
) -> Result<(), JobError> {
    let object_ref = reference(job);
    let control = PodControl {
        expectations: &state.expectations,
        key,
        recorder: &state.recorder,
        owner: &object_ref,
    };
    for pod in pods {
        let message = format!("Deleted pod: {}", pod.name_any());
        control.delete(pods_api, pod, &message).await?;
    }
    Ok(())
}

/// Replaces the Job's status when it differs, pinned to the resourceVersion the pass read.
/// Returns false when nothing was written (unchanged, stale or gone).
async fn write_status(job: &Job, status: JobStatus, state: &State) -> Result<bool, JobError> {
    if job.status.as_ref() == Some(&status)
        || (job.status.is_none() && status == JobStatus::default())
    {
        return Ok(false);
    }
    let mut updated = job.clone();
    updated.status = Some(status);
    updated.metadata.managed_fields = None;
    let api: Api<Job> = Api::namespaced(state.client.clone(), &job.namespace().unwrap_or_default());
    match api
        .replace_status(&job.name_any(), &PostParams::default(), &updated)
        .await
    {
        Ok(_) => Ok(true),
        // A newer Job is on its way through the watch; its pass decides again.
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

async fn record(job: &Job, state: &State, events: Vec<(EventType, &str, String)>) {
    let object_ref = reference(job);
    for (kind, reason, message) in events {
        state
            .recorder
            .record(&object_ref, kind, reason, &message)
            .await;
    }
}

/// `ttlSecondsAfterFinished`: deletes a finished Job (and, in the background, its pods) once
/// the time is up, or comes back then.
async fn expire(
    job: &Job,
    done: &JobCondition,
    now: Timestamp,
    state: &State,
) -> Result<Action, JobError> {
    let Some(ttl) = job.spec.as_ref().and_then(|s| s.ttl_seconds_after_finished) else {
        return Ok(Action::await_change());
    };
    let finished_at = job
        .status
        .as_ref()
        .and_then(|s| s.completion_time.as_ref())
        .or(done.last_transition_time.as_ref())
        .map_or(now, |t| t.0);
    let due = finished_at + SignedDuration::from_secs(i64::from(ttl));
    if due > now {
        return Ok(Action::requeue(
            due.duration_since(now).unsigned_abs() + Duration::from_millis(100),
        ));
    }
    let api: Api<Job> = Api::namespaced(state.client.clone(), &job.namespace().unwrap_or_default());
    let params = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        preconditions: Some(Preconditions {
            uid: job.uid(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&job.name_any(), &params).await {
        Ok(_) => Ok(Action::await_change()),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(Action::await_change()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_ten_seconds_up_to_six_minutes() {
        assert_eq!(failure_backoff(0), Duration::ZERO);
        assert_eq!(failure_backoff(1), Duration::from_secs(10));
        assert_eq!(failure_backoff(2), Duration::from_secs(20));
        assert_eq!(failure_backoff(4), Duration::from_secs(80));
        assert_eq!(failure_backoff(6), Duration::from_secs(320));
        assert_eq!(failure_backoff(7), Duration::from_secs(360));
        assert_eq!(failure_backoff(1000), Duration::from_secs(360));
    }

    #[test]
    fn completed_indexes_round_trip_as_ranges() {
        let set: BTreeSet<i32> = [0, 1, 2, 4, 6, 7].into_iter().collect();
        assert_eq!(format_indexes(&set), "0-2,4,6-7");
        assert_eq!(parse_indexes("0-2,4,6-7"), set);
        assert_eq!(format_indexes(&BTreeSet::new()), "");
        assert!(parse_indexes("").is_empty());
        assert_eq!(parse_indexes("x,3"), [3].into_iter().collect());
    }

    fn indexed_pod(name: &str, index: i32, created: i64) -> Arc<Pod> {
        let mut p = skiff_k8s::testing::pod(name, Some("n"), "Running", true, created);
        p.metadata.annotations = Some([(COMPLETION_INDEX.to_owned(), index.to_string())].into());
        Arc::new(p)
    }

    #[test]
    fn indexed_plan_fills_the_lowest_pending_indexes() {
        let spec = JobSpec {
            completions: Some(5),
            parallelism: Some(3),
            completion_mode: Some("Indexed".into()),
            ..JobSpec::default()
        };
        let a = indexed_pod("a", 1, 10);
        let dup = indexed_pod("dup", 1, 20);
        let done = indexed_pod("done", 0, 5);
        let active = [&a, &dup, &done];
        let completed: BTreeSet<i32> = [0].into_iter().collect();
        let plan = Plan {
            spec: &spec,
            active: &active,
            succeeded: 1,
            completed_indexes: &completed,
        };
        let (surplus, create) = indexed_plan(&plan, 3);
        let names: BTreeSet<String> = surplus.iter().map(|p| p.name_any()).collect();
        // The duplicate of index 1 (the newer one) and the pod of the finished index 0 go.
        assert_eq!(names, ["done".to_owned(), "dup".to_owned()].into());
        assert_eq!(create, vec![Some(2), Some(3)]);
    }

    #[test]
    fn indexed_pods_carry_their_index() {
        let job: Job = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "work", "namespace": "default", "uid": "u"},
            "spec": {"completionMode": "Indexed", "completions": 3, "template": {"spec": {
                "restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}}
        }))
        .unwrap();
        let pod = pod_for(&job, Some(2));
        assert_eq!(pod.metadata.generate_name.as_deref(), Some("work-2-"));
        assert_eq!(index_of(&pod), Some(2));
        let spec = pod.spec.unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("work-2"));
        assert_eq!(
            spec.containers[0].env.as_ref().unwrap()[0].value.as_deref(),
            Some("2")
        );
        let plain = pod_for(&job, None);
        assert_eq!(plain.metadata.generate_name.as_deref(), Some("work-"));
        assert_eq!(index_of(&plain), None);
    }
}

//! CronJob controller (batch/v1): creates a Job from `spec.jobTemplate` at each scheduled time,
//! as Kubernetes' cronjob controller v2 does.
//!
//! A pass brings `status.active` in line with the Jobs the CronJob controls (finished or
//! vanished ones leave it, `lastSuccessfulTime` follows the completed ones), prunes finished
//! Jobs beyond `successfulJobsHistoryLimit` / `failedJobsHistoryLimit`, and then, unless
//! suspended, runs the most recent missed time in `(lastScheduleTime or creation, now]`
//! (no earlier than `now - startingDeadlineSeconds`) under `concurrencyPolicy`. Jobs are named
//! `<cronjob>-<scheduled time in minutes since the epoch>`, so a repeated pass finds the Job it
//! already made instead of making another. The pass then sleeps until the next scheduled time
//! (at most a minute, so a wall clock that jumps is caught up with), not polling.
//!
//! The clock is injectable ([`run_with_clock`]) so tests can move time instead of waiting.

use crate::client::guard::guard;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::{CronJob, CronJobStatus, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, PostParams, Preconditions, PropagationPolicy};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use skiff_k8s::cron;

use super::job::finished_condition;
use super::machinery::ownership;
use crate::client::events::{reference, EventType, Recorder};
use crate::client::Context;

/// The longest a CronJob sleeps between passes.
const MAX_SLEEP: Duration = Duration::from_secs(60);
/// Annotation with the time a Job was scheduled for (Kubernetes >= 1.28).
pub const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

/// Errors of a reconcile pass.
#[derive(Debug, thiserror::Error)]
pub enum CronJobError {
    /// The API server refused or failed a request.
    #[error("API request failed: {0}")]
    Kube(#[from] kube::Error),
}

/// Where the controller reads the time.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> Timestamp + Send + Sync>);

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self::new(Timestamp::now)
    }

    /// A clock reading `now`.
    pub fn new(now: impl Fn() -> Timestamp + Send + Sync + 'static) -> Self {
        Self(Arc::new(now))
    }

    /// The current time.
    pub fn now(&self) -> Timestamp {
        (self.0)()
    }
}

struct State {
    client: kube::Client,
    jobs: Store<Job>,
    recorder: Recorder,
    clock: Clock,
}

/// Runs the CronJob controller until shutdown.
pub async fn run(ctx: Context) {
    run_with_clock(ctx, Clock::system()).await;
}

/// Runs the CronJob controller with `clock` as its time.
pub async fn run_with_clock(ctx: Context, clock: Clock) {
    let jobs = ctx.informers.get::<Job>();
    let Some(cronjobs) = ctx.informers.listed::<CronJob>().await else {
        return;
    };
    let state = Arc::new(State {
        client: ctx.client.clone(),
        jobs: jobs.store(),
        recorder: ctx.recorder("cronjob-controller"),
        clock,
    });
    Controller::for_shared_stream(cronjobs.objects(), cronjobs.store())
        .owns_shared_stream(jobs.objects())
        .graceful_shutdown_on(ctx.shutdown.clone().cancelled_owned())
        .run(guard("cronjob", reconcile), error_policy, state)
        .for_each(|_| async {})
        .await;
}

fn error_policy(cj: Arc<CronJob>, err: &CronJobError, _: Arc<State>) -> Action {
    tracing::warn!(cronjob = %cj.name_any(), error = %err, "reconcile failed");
    Action::requeue(Duration::from_secs(2))
}

/// The name of the Job for the time `scheduled`.
pub fn job_name(cronjob: &str, scheduled: Timestamp) -> String {
    format!("{cronjob}-{}", scheduled.as_second().div_euclid(60))
}

fn is_complete(job: &Job) -> bool {
    finished_condition(job.status.as_ref()).is_some_and(|c| c.type_ == "Complete")
}

fn started(job: &Job) -> Option<Timestamp> {
    job.status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .or(job.metadata.creation_timestamp.as_ref())
        .map(|t| t.0)
}

fn scheduled_for(job: &Job) -> Option<Timestamp> {
    job.annotations().get(SCHEDULED_TIMESTAMP)?.parse().ok()
}

fn job_ref(job: &Job) -> ObjectReference {
    job.object_ref(&())
}

async fn reconcile(cj: Arc<CronJob>, state: Arc<State>) -> Result<Action, CronJobError> {
    if cj.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let now = state.clock.now();
    let ns = cj.namespace().unwrap_or_default();
    let uid = cj.uid().unwrap_or_default();
    let spec = cj.spec.clone();
    let old = cj.status.clone().unwrap_or_default();
    let jobs_api: Api<Job> = Api::namespaced(state.client.clone(), &ns);
    let object_ref = reference(cj.as_ref());
    let mut status = old.clone();

    let owned: Vec<Arc<Job>> = state
        .jobs
        .state()
        .into_iter()
        .filter(|j| j.namespace().as_deref() == Some(ns.as_str()))
        .filter(|j| ownership::is_controlled_by(&j.metadata, &uid))
        .collect();

    // status.active: the running Jobs it controls.
    let mut active: Vec<ObjectReference> = Vec::new();
    for r in old.active.iter().flatten() {
        let name = r.name.clone().unwrap_or_default();
        let cached = owned.iter().find(|j| j.uid() == r.uid);
        let job = match cached {
            Some(j) => Some(j.as_ref().clone()),
            // Not in the cache: maybe just created, ask the server before dropping it.
            None => jobs_api.get_opt(&name).await?.filter(|j| j.uid() == r.uid),
        };
        match job {
            Some(j) => match finished_condition(j.status.as_ref()) {
                None => active.push(r.clone()),
                Some(c) => {
                    state
                        .recorder
                        .record(
                            &object_ref,
                            EventType::Normal,
                            "SawCompletedJob",
                            &format!("Saw completed job: {name}, condition: {}", c.type_),
                        )
                        .await;
                }
            },
            None => {
                state
                    .recorder
                    .record(
                        &object_ref,
                        EventType::Normal,
                        "MissingJob",
                        &format!("Active job went missing: {name}"),
                    )
                    .await;
            }
        }
    }
    for job in &owned {
        let running = finished_condition(job.status.as_ref()).is_none()
            && job.meta().deletion_timestamp.is_none();
        if running && !active.iter().any(|r| r.uid == job.uid()) {
            active.push(job_ref(job));
        }
    }
    let last_success = owned
        .iter()
        .filter(|j| is_complete(j))
        .filter_map(|j| j.status.as_ref()?.completion_time.as_ref().map(|t| t.0))
        .max();
    if let Some(t) = last_success {
        if status
            .last_successful_time
            .as_ref()
            .is_none_or(|old| old.0 < t)
        {
            status.last_successful_time = Some(Time(t));
        }
    }

    // History limits.
    let mut succeeded: Vec<&Arc<Job>> = owned.iter().filter(|j| is_complete(j)).collect();
    let mut failed: Vec<&Arc<Job>> = owned
        .iter()
        .filter(|j| finished_condition(j.status.as_ref()).is_some() && !is_complete(j))
        .collect();
    for (list, limit) in [
        (
            &mut succeeded,
            spec.successful_jobs_history_limit.unwrap_or(3),
        ),
        (&mut failed, spec.failed_jobs_history_limit.unwrap_or(1)),
    ] {
        // Oldest first; start times have second precision, so ties go by scheduled time.
        list.sort_by_key(|j| (started(j), scheduled_for(j), j.name_any()));
        let excess = list
            .len()
            .saturating_sub(usize::try_from(limit).unwrap_or(0));
        for job in list.iter().take(excess) {
            delete_job(&jobs_api, job, &object_ref, &state).await?;
        }
    }

    let mut requeue = None;
    if spec.suspend != Some(true) {
        requeue = run_schedule(
            &cj,
            now,
            &owned,
            &mut status,
            &mut active,
            &jobs_api,
            &state,
        )
        .await?;
    }
    // Keep the references as they were written (no churn on every Job update).
    status.active = (!active.is_empty()).then_some(active);
    if status.active.is_none() && old.active.as_ref().is_some_and(Vec::is_empty) {
        status.active = old.active.clone();
    }
    write_status(&cj, status, &state).await?;
    Ok(requeue.map_or_else(Action::await_change, Action::requeue))
}

/// Starts the Job of the most recent due time, if any, and returns how long to sleep until the
/// next one.
async fn run_schedule(
    cj: &CronJob,
    now: Timestamp,
    owned: &[Arc<Job>],
    status: &mut CronJobStatus,
    active: &mut Vec<ObjectReference>,
    jobs_api: &Api<Job>,
    state: &State,
) -> Result<Option<Duration>, CronJobError> {
    let spec = cj.spec.clone();
    let object_ref = reference(cj);
    // The API validates both; these fire only for objects stored before it did.
    let sched = match cron::parse(&spec.schedule) {
        Ok(s) => s,
        Err(e) => {
            let message = format!("unparseable schedule: {:?} : {e}", spec.schedule);
            state
                .recorder
                .record(
                    &object_ref,
                    EventType::Warning,
                    "UnparseableSchedule",
                    &message,
                )
                .await;
            return Ok(None);
        }
    };
    let tz = match cron::time_zone(spec.time_zone.as_deref()) {
        Ok(tz) => tz,
        Err(e) => {
            state
                .recorder
                .record(
                    &object_ref,
                    EventType::Warning,
                    "UnknownTimeZone",
                    &e.to_string(),
                )
                .await;
            return Ok(None);
        }
    };
    let mut earliest = status
        .last_schedule_time
        .as_ref()
        .or(cj.metadata.creation_timestamp.as_ref())
        .map_or(now, |t| t.0);
    if let Some(secs) = spec.starting_deadline_seconds {
        // A deadline reaching back before the first representable time excludes nothing.
        if let Some(deadline) = skiff_k8s::time::add_seconds(now, secs.saturating_neg()) {
            earliest = earliest.max(deadline);
        }
    }
    let next = sched.next_after(now, &tz);
    let sleep = next.map(|t| {
        (t.duration_since(now).unsigned_abs() + Duration::from_millis(100)).min(MAX_SLEEP)
    });
    let Some((scheduled, missed)) = sched.most_recent(earliest, now, &tz) else {
        return Ok(sleep.or(Some(MAX_SLEEP)));
    };
    if missed > 100 {
        state
            .recorder
            .record(
                &object_ref,
                EventType::Warning,
                "TooManyMissedTimes",
                "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew",
            )
            .await;
    }
    let name = job_name(&cj.name_any(), scheduled);
    // A pass that worked from a CronJob older than its own last status write (or whose write
    // lost a race) finds the Job of this time already there: the time is done.
    if owned.iter().any(|j| j.name_any() == name) {
        status.last_schedule_time = Some(Time(scheduled));
        return Ok(sleep.or(Some(MAX_SLEEP)));
    }
    match spec.concurrency_policy.as_deref() {
        Some("Forbid") if !active.is_empty() => {
            // lastScheduleTime stays: the time runs when the active Job ends, if still in time.
            state
                .recorder
                .record(
                    &object_ref,
                    EventType::Normal,
                    "JobAlreadyActive",
                    "Not starting job because prior execution is running and concurrency policy is Forbid",
                )
                .await;
            return Ok(sleep.or(Some(MAX_SLEEP)));
        }
        Some("Replace") => {
            for r in std::mem::take(active) {
                let name = r.name.clone().unwrap_or_default();
                if let Some(job) = jobs_api.get_opt(&name).await?.filter(|j| j.uid() == r.uid) {
                    delete_job(jobs_api, &job, &object_ref, state).await?;
                }
            }
        }
        _ => {}
    }
    let template = spec.job_template.clone();
    let tmeta = template.metadata.unwrap_or_default();
    let mut annotations = tmeta.annotations.unwrap_or_default();
    annotations.insert(
        SCHEDULED_TIMESTAMP.into(),
        scheduled
            .to_zoned(tz.clone())
            .strftime("%Y-%m-%dT%H:%M:%S%:z")
            .to_string()
            .replace("+00:00", "Z"),
    );
    let job = Job {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: cj.namespace(),
            labels: tmeta.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![ownership::controller_ref(cj)]),
            ..ObjectMeta::default()
        },
        spec: template.spec,
        status: None,
    };
    match jobs_api.create(&PostParams::default(), &job).await {
        Ok(created) => {
            state
                .recorder
                .record(
                    &object_ref,
                    EventType::Normal,
                    "SuccessfulCreate",
                    &format!("Created job {name}"),
                )
                .await;
            active.push(job_ref(&created));
        }
        Err(kube::Error::Api(s)) if s.code == 409 => {
            // Made by an earlier pass whose status write did not land: that time is done.
            match jobs_api.get_opt(&name).await? {
                Some(existing)
                    if ownership::is_controlled_by(
                        &existing.metadata,
                        cj.uid().as_deref().unwrap_or_default(),
                    ) =>
                {
                    if finished_condition(existing.status.as_ref()).is_none()
                        && !active.iter().any(|r| r.uid == existing.uid())
                    {
                        active.push(job_ref(&existing));
                    }
                }
                _ => {
                    state
                        .recorder
                        .record(
                            &object_ref,
                            EventType::Warning,
                            "FailedCreate",
                            &format!("Error creating job: job {name} already exists and is not owned by this CronJob"),
                        )
                        .await;
                    return Ok(sleep.or(Some(MAX_SLEEP)));
                }
            }
        }
        Err(e) => {
            let message = match &e {
                kube::Error::Api(s) => s.message.clone(),
                other => other.to_string(),
            };
            state
                .recorder
                .record(
                    &object_ref,
                    EventType::Warning,
                    "FailedCreate",
                    &format!("Error creating job: {message}"),
                )
                .await;
            return Err(e.into());
        }
    }
    status.last_schedule_time = Some(Time(scheduled));
    Ok(sleep.or(Some(MAX_SLEEP)))
}

/// Deletes a Job with background propagation (its pods follow through the garbage collector),
/// as Kubernetes' cronjob controller does.
async fn delete_job(
    api: &Api<Job>,
    job: &Job,
    object_ref: &ObjectReference,
    state: &State,
) -> Result<(), CronJobError> {
    let name = job.name_any();
    let params = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        preconditions: Some(Preconditions {
            uid: job.uid(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&name, &params).await {
        Ok(_) => {
            state
                .recorder
                .record(
                    object_ref,
                    EventType::Normal,
                    "SuccessfulDelete",
                    &format!("Deleted job {name}"),
                )
                .await;
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Replaces the status when it changed, pinned to the resourceVersion the pass read.
async fn write_status(
    cj: &CronJob,
    status: CronJobStatus,
    state: &State,
) -> Result<(), CronJobError> {
    let current = cj.status.clone().unwrap_or_default();
    if current == status {
        return Ok(());
    }
    let mut updated = cj.clone();
    updated.status = Some(status);
    updated.metadata.managed_fields = None;
    let api: Api<CronJob> =
        Api::namespaced(state.client.clone(), &cj.namespace().unwrap_or_default());
    match api
        .replace_status(&cj.name_any(), &PostParams::default(), &updated)
        .await
    {
        Ok(_) => Ok(()),
        // A newer CronJob is on its way through the watch; its pass decides again (the Job
        // name makes the repeat find the Job this pass created).
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_names_count_minutes_since_the_epoch() {
        let t: Timestamp = "2024-05-01T10:15:00Z".parse().unwrap();
        assert_eq!(job_name("hello", t), "hello-28575975");
        // Seconds within the minute do not change the name.
        let t2: Timestamp = "2024-05-01T10:15:59Z".parse().unwrap();
        assert_eq!(job_name("hello", t2), "hello-28575975");
    }
}

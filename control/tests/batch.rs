//! Component tests of the Job and CronJob controllers: the API server in process (redb in a
//! tempdir), a `kube::Client` on its router, the job, cronjob and garbage collector controllers.
//! Tests play the kubelet by writing pod phases through pods/status, and move the CronJob
//! controller's clock instead of waiting for schedules.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Event, Pod};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::runtime::watcher;
use kube::ResourceExt;
use serde_json::{json, Value};
use skiff_control::client::Context;
use skiff_control::controllers;
use skiff_control::controllers::cronjob::{self, Clock};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(15);

struct Cluster {
    client: kube::Client,
    shutdown: CancellationToken,
    /// The CronJob controller's time.
    now: Arc<Mutex<Timestamp>>,
    /// The API server (and its store's tempdir), alive as long as the cluster.
    _api: common::Api,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Cluster {
    fn advance(&self, by: SignedDuration) {
        let mut now = self.now.lock().unwrap();
        *now += by;
    }
}

async fn cluster() -> Cluster {
    let shutdown = CancellationToken::new();
    let api = common::api_with_namespaces(shutdown.clone()).await;
    let client = api.client();
    let ctx = Context::new(client.clone(), shutdown.clone());
    let now = Arc::new(Mutex::new(Timestamp::now()));
    let clock_now = now.clone();
    tokio::spawn(controllers::job::run(ctx.clone()));
    tokio::spawn(cronjob::run_with_clock(
        ctx.clone(),
        Clock::new(move || *clock_now.lock().unwrap()),
    ));
    tokio::spawn(controllers::garbage_collector::run(ctx));
    Cluster {
        client,
        shutdown,
        now,
        _api: api,
    }
}

/// Polls `check` until it returns Some, or panics after `WAIT` with `what`.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn job_spec(extra: Value) -> Value {
    let mut spec = json!({"template": {"spec": {"restartPolicy": "Never",
        "containers": [{"name": "c", "image": "busybox:1.36", "command": ["true"]}]}}});
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    spec
}

async fn create_job(client: &kube::Client, name: &str, extra: Value) -> Job {
    let api: Api<Job> = Api::default_namespaced(client.clone());
    let job: Job =
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": job_spec(extra)}))
            .unwrap();
    api.create(&PostParams::default(), &job).await.unwrap()
}

async fn pods_of(client: &kube::Client, job: &str) -> Vec<Pod> {
    let api: Api<Pod> = Api::default_namespaced(client.clone());
    api.list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}")))
        .await
        .unwrap()
        .items
}

fn is_active(p: &Pod) -> bool {
    let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
    p.metadata.deletion_timestamp.is_none() && !matches!(phase, Some("Succeeded" | "Failed"))
}

async fn active_pods(client: &kube::Client, job: &str) -> Vec<Pod> {
    pods_of(client, job)
        .await
        .into_iter()
        .filter(is_active)
        .collect()
}

/// Plays the kubelet: the pod ends in `phase`.
async fn set_phase(client: &kube::Client, name: &str, phase: &str) {
    let api: Api<Pod> = Api::default_namespaced(client.clone());
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": phase}})),
    )
    .await
    .unwrap();
}

fn condition(job: &Job, type_: &str) -> Option<(String, String)> {
    let c = job
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone().unwrap_or_default()))
}

async fn wait_condition(client: &kube::Client, job: &str, type_: &str, reason: &str) -> Job {
    let api: Api<Job> = Api::default_namespaced(client.clone());
    eventually(&format!("{job} {type_}={reason}"), || async {
        let j = api.get(job).await.unwrap();
        (condition(&j, type_) == Some(("True".into(), reason.into()))).then_some(j)
    })
    .await
}

/// The store's revision (a list's resourceVersion is the latest one).
async fn revision(client: &kube::Client) -> String {
    let ns: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    ns.list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap()
}

/// Once converged the controllers must stop writing (no status loops). An observation window,
/// not a synchronisation: any write during it fails the test.
async fn assert_quiet(client: &kube::Client) {
    let before = revision(client).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        before,
        revision(client).await,
        "controllers kept writing after converging"
    );
}

/// Waits until the events about `name` include every one of `reasons` (events are written
/// after the status change they report).
async fn wait_reasons(client: &kube::Client, name: &str, reasons: &[&str]) {
    eventually(&format!("events {reasons:?} for {name}"), || async {
        let seen = reasons_for(client, name).await;
        reasons.iter().all(|r| seen.contains(*r)).then_some(())
    })
    .await;
}

async fn reasons_for(client: &kube::Client, name: &str) -> BTreeSet<String> {
    let events: Api<Event> = Api::default_namespaced(client.clone());
    events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(name))
        .filter_map(|e| e.reason)
        .collect()
}

/// Tracks the most pods of `job` active at once, from a watch (every state the API went through).
fn track_max_active(client: &kube::Client, job: &str) -> Arc<Mutex<usize>> {
    let max = Arc::new(Mutex::new(0usize));
    let seen = max.clone();
    let api: Api<Pod> = Api::default_namespaced(client.clone());
    let config = watcher::Config::default().labels(&format!("batch.kubernetes.io/job-name={job}"));
    tokio::spawn(async move {
        let mut active: BTreeMap<String, bool> = BTreeMap::new();
        let mut stream = watcher(api, config).boxed();
        while let Some(Ok(event)) = stream.next().await {
            match event {
                watcher::Event::Apply(p) | watcher::Event::InitApply(p) => {
                    active.insert(p.name_any(), is_active(&p));
                }
                watcher::Event::Delete(p) => {
                    active.remove(&p.name_any());
                }
                _ => {}
            }
            let now = active.values().filter(|a| **a).count();
            let mut max = seen.lock().unwrap();
            *max = (*max).max(now);
        }
    });
    max
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_runs_completions_with_bounded_parallelism_and_completes() {
    let c = cluster().await;
    let max_active = track_max_active(&c.client, "work");
    let job = create_job(
        &c.client,
        "work",
        json!({"completions": 3, "parallelism": 2}),
    )
    .await;
    let uid = job.uid().unwrap();
    // The API server generated the selector and the pod labels.
    let spec = job.spec.as_ref().unwrap();
    assert_eq!(
        spec.selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap()["batch.kubernetes.io/controller-uid"],
        uid
    );
    assert_eq!(spec.backoff_limit, Some(6));

    let mut finished = 0;
    while finished < 3 {
        let active = eventually("active pods", || async {
            let a = active_pods(&c.client, "work").await;
            (a.len() == (3 - finished).min(2)).then_some(a)
        })
        .await;
        let pod = &active[0];
        let labels = pod.labels();
        assert_eq!(labels["batch.kubernetes.io/controller-uid"], uid);
        assert_eq!(labels["controller-uid"], uid);
        assert_eq!(labels["batch.kubernetes.io/job-name"], "work");
        assert_eq!(labels["job-name"], "work");
        let owner = &pod.owner_references()[0];
        assert_eq!((owner.kind.as_str(), owner.controller), ("Job", Some(true)));
        assert!(pod.name_any().starts_with("work-"));
        set_phase(&c.client, &pod.name_any(), "Succeeded").await;
        finished += 1;
    }
    let job = wait_condition(&c.client, "work", "Complete", "CompletionsReached").await;
    let status = job.status.unwrap();
    assert_eq!(status.succeeded, Some(3));
    assert_eq!(status.active, None);
    assert!(status.start_time.is_some() && status.completion_time.is_some());
    assert_eq!(
        condition_of(&c.client, "work", "SuccessCriteriaMet").await,
        Some(("True".into(), "CompletionsReached".into()))
    );
    assert_eq!(
        pods_of(&c.client, "work").await.len(),
        3,
        "exactly three pods ran"
    );
    assert!(
        *max_active.lock().unwrap() <= 2,
        "never more than parallelism"
    );
    wait_reasons(&c.client, "work", &["SuccessfulCreate", "Completed"]).await;
    assert_quiet(&c.client).await;

    // kubectl delete job: background propagation takes the pods along.
    let jobs: Api<Job> = Api::default_namespaced(c.client.clone());
    jobs.delete(
        "work",
        &DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            ..DeleteParams::default()
        },
    )
    .await
    .unwrap();
    eventually("pods garbage collected", || async {
        pods_of(&c.client, "work").await.is_empty().then_some(())
    })
    .await;
}

async fn condition_of(client: &kube::Client, job: &str, type_: &str) -> Option<(String, String)> {
    let api: Api<Job> = Api::default_namespaced(client.clone());
    condition(&api.get(job).await.unwrap(), type_)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_fails_past_its_backoff_limit_and_stops_its_pods() {
    let c = cluster().await;
    create_job(
        &c.client,
        "flaky",
        json!({"completions": 3, "parallelism": 3, "backoffLimit": 1}),
    )
    .await;
    let pods = eventually("3 pods", || async {
        let a = active_pods(&c.client, "flaky").await;
        (a.len() == 3).then_some(a)
    })
    .await;
    set_phase(&c.client, &pods[0].name_any(), "Failed").await;
    set_phase(&c.client, &pods[1].name_any(), "Failed").await;
    let job = wait_condition(&c.client, "flaky", "Failed", "BackoffLimitExceeded").await;
    assert_eq!(job.status.as_ref().unwrap().failed, Some(2));
    assert_eq!(
        condition(&job, "FailureTarget"),
        Some(("True".into(), "BackoffLimitExceeded".into()))
    );
    assert_eq!(condition(&job, "Complete"), None);
    // The pod still running is deleted, and no replacement comes.
    let pod_api: Api<Pod> = Api::default_namespaced(c.client.clone());
    eventually("running pod deleted", || async {
        pod_api
            .get_opt(&pods[2].name_any())
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    assert!(active_pods(&c.client, "flaky").await.is_empty());
    wait_reasons(
        &c.client,
        "flaky",
        &["BackoffLimitExceeded", "SuccessfulDelete"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_pod_is_replaced_and_restarts_count_under_on_failure() {
    let c = cluster().await;
    create_job(&c.client, "retry", json!({})).await;
    let first = eventually("a pod", || async {
        active_pods(&c.client, "retry").await.into_iter().next()
    })
    .await;
    // It failed a minute ago: the 10 s creation backoff is over, a replacement comes.
    let pods: Api<Pod> = Api::default_namespaced(c.client.clone());
    let finished = (Timestamp::now() - SignedDuration::from_mins(1)).to_string();
    pods.patch_status(
        &first.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Failed", "containerStatuses": [{
            "name": "c", "image": "busybox:1.36", "imageID": "", "ready": false,
            "restartCount": 0, "state": {"terminated": {"exitCode": 1, "finishedAt": finished}}}]}})),
    )
    .await
    .unwrap();
    let second = eventually("a replacement", || async {
        active_pods(&c.client, "retry").await.into_iter().next()
    })
    .await;
    assert_ne!(second.name_any(), first.name_any());
    let jobs: Api<Job> = Api::default_namespaced(c.client.clone());
    eventually("failed: 1", || async {
        (jobs.get("retry").await.unwrap().status?.failed == Some(1)).then_some(())
    })
    .await;

    // restartPolicy OnFailure: the kubelet restarts containers in place; the restarts count
    // against backoffLimit.
    let mut spec = job_spec(json!({"backoffLimit": 2}));
    spec["template"]["spec"]["restartPolicy"] = json!("OnFailure");
    let job: Job =
        serde_json::from_value(json!({"metadata": {"name": "crashy"}, "spec": spec})).unwrap();
    jobs.create(&PostParams::default(), &job).await.unwrap();
    let pod = eventually("a pod", || async {
        active_pods(&c.client, "crashy").await.into_iter().next()
    })
    .await;
    pods.patch_status(
        &pod.name_any(),
        &PatchParams::default(),
        &Patch::Merge(
            json!({"status": {"phase": "Running", "containerStatuses": [{
            "name": "c", "image": "busybox:1.36", "imageID": "", "ready": false,
            "restartCount": 2, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}}),
        ),
    )
    .await
    .unwrap();
    wait_condition(&c.client, "crashy", "Failed", "BackoffLimitExceeded").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_active_deadline_fails_it() {
    let c = cluster().await;
    create_job(&c.client, "slow", json!({"activeDeadlineSeconds": 1})).await;
    eventually("a pod", || async {
        (active_pods(&c.client, "slow").await.len() == 1).then_some(())
    })
    .await;
    wait_condition(&c.client, "slow", "Failed", "DeadlineExceeded").await;
    eventually("pod deleted", || async {
        active_pods(&c.client, "slow")
            .await
            .is_empty()
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspended_job_runs_no_pods_until_resumed() {
    let c = cluster().await;
    create_job(
        &c.client,
        "later",
        json!({"suspend": true, "parallelism": 2, "completions": 2}),
    )
    .await;
    let job = wait_condition(&c.client, "later", "Suspended", "JobSuspended").await;
    assert!(job.status.unwrap().start_time.is_none());
    assert!(pods_of(&c.client, "later").await.is_empty());

    let jobs: Api<Job> = Api::default_namespaced(c.client.clone());
    let resume = |suspend: bool| json!({"spec": {"suspend": suspend}});
    jobs.patch(
        "later",
        &PatchParams::default(),
        &Patch::Merge(resume(false)),
    )
    .await
    .unwrap();
    eventually("2 pods after resume", || async {
        (active_pods(&c.client, "later").await.len() == 2).then_some(())
    })
    .await;
    eventually("resumed condition", || async {
        let j = jobs.get("later").await.unwrap();
        (condition(&j, "Suspended") == Some(("False".into(), "JobResumed".into()))
            && j.status.as_ref()?.start_time.is_some())
        .then_some(())
    })
    .await;

    // Suspending again stops the pods.
    jobs.patch(
        "later",
        &PatchParams::default(),
        &Patch::Merge(resume(true)),
    )
    .await
    .unwrap();
    wait_condition(&c.client, "later", "Suspended", "JobSuspended").await;
    eventually("pods deleted on suspend", || async {
        active_pods(&c.client, "later")
            .await
            .is_empty()
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexed_job_runs_one_pod_per_index_and_ttl_removes_it() {
    let c = cluster().await;
    create_job(
        &c.client,
        "idx",
        json!({"completionMode": "Indexed", "completions": 3, "parallelism": 3,
            "ttlSecondsAfterFinished": 0}),
    )
    .await;
    let pods = eventually("3 indexed pods", || async {
        let a = active_pods(&c.client, "idx").await;
        (a.len() == 3).then_some(a)
    })
    .await;
    let mut indexes: Vec<String> = pods
        .iter()
        .map(|p| p.annotations()["batch.kubernetes.io/job-completion-index"].clone())
        .collect();
    indexes.sort();
    assert_eq!(indexes, ["0", "1", "2"]);
    for p in &pods {
        let index = &p.labels()["batch.kubernetes.io/job-completion-index"];
        assert_eq!(
            p.spec.as_ref().unwrap().hostname.as_deref(),
            Some(format!("idx-{index}").as_str())
        );
        set_phase(&c.client, &p.name_any(), "Succeeded").await;
    }
    // Complete, then deleted at once (ttlSecondsAfterFinished: 0), pods with it.
    let jobs: Api<Job> = Api::default_namespaced(c.client.clone());
    eventually("job removed by its TTL", || async {
        jobs.get_opt("idx").await.unwrap().is_none().then_some(())
    })
    .await;
    eventually("pods removed with it", || async {
        pods_of(&c.client, "idx").await.is_empty().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexed_job_reports_completed_indexes() {
    let c = cluster().await;
    create_job(
        &c.client,
        "parts",
        json!({"completionMode": "Indexed", "completions": 2, "parallelism": 1}),
    )
    .await;
    for _ in 0..2 {
        let pod = eventually("one pod", || async {
            let a = active_pods(&c.client, "parts").await;
            (a.len() == 1).then(|| a[0].clone())
        })
        .await;
        set_phase(&c.client, &pod.name_any(), "Succeeded").await;
        eventually("pod seen finished", || async {
            active_pods(&c.client, "parts")
                .await
                .iter()
                .all(|p| p.name_any() != pod.name_any())
                .then_some(())
        })
        .await;
    }
    let job = wait_condition(&c.client, "parts", "Complete", "CompletionsReached").await;
    assert_eq!(
        job.status.unwrap().completed_indexes.as_deref(),
        Some("0-1")
    );
}

fn cronjob(name: &str, schedule: &str, extra: Value) -> CronJob {
    let mut spec = json!({"schedule": schedule, "jobTemplate": {
        "metadata": {"labels": {"app": name}},
        "spec": job_spec(json!({}))}});
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
}

/// Makes the CronJob controller look at `name` again (after the clock moved).
async fn poke(client: &kube::Client, name: &str, n: u32) {
    let api: Api<CronJob> = Api::default_namespaced(client.clone());
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"test/poke": n.to_string()}}})),
    )
    .await
    .unwrap();
}

async fn jobs_of(client: &kube::Client, app: &str) -> Vec<Job> {
    let api: Api<Job> = Api::default_namespaced(client.clone());
    let mut jobs = api
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .unwrap()
        .items;
    jobs.sort_by_key(ResourceExt::name_any);
    jobs
}

/// The scheduled time a cron `*/5` gives at `now`: the last multiple of five minutes.
fn last_five_minutes(now: Timestamp) -> i64 {
    now.as_second().div_euclid(300) * 5
}

/// Lets the Job `name` finish: its pod succeeds.
async fn finish_job(client: &kube::Client, name: &str) {
    let pod = eventually("the job's pod", || async {
        pods_of(client, name).await.into_iter().find(is_active)
    })
    .await;
    set_phase(client, &pod.name_any(), "Succeeded").await;
    wait_condition(client, name, "Complete", "CompletionsReached").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cronjob_runs_when_due_forbids_overlap_and_prunes_history() {
    let c = cluster().await;
    let api: Api<CronJob> = Api::default_namespaced(c.client.clone());
    let cj = api
        .create(
            &PostParams::default(),
            &cronjob(
                "tick",
                "*/5 * * * *",
                json!({"concurrencyPolicy": "Forbid", "successfulJobsHistoryLimit": 1}),
            ),
        )
        .await
        .unwrap();
    // Not due yet (the clock stands at creation): no Job. The first due time is at most
    // five minutes on; move there.
    c.advance(SignedDuration::from_mins(5));
    poke(&c.client, "tick", 1).await;
    let first = eventually("the first job", || async {
        let jobs = jobs_of(&c.client, "tick").await;
        (jobs.len() == 1).then(|| jobs[0].clone())
    })
    .await;
    let now = *c.now.lock().unwrap();
    assert_eq!(first.name_any(), format!("tick-{}", last_five_minutes(now)));
    let owner = &first.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
        ("CronJob", cj.uid().unwrap().as_str(), Some(true))
    );
    assert!(first
        .annotations()
        .contains_key("batch.kubernetes.io/cronjob-scheduled-timestamp"));
    let status = eventually("status.active", || async {
        let s = api.get("tick").await.unwrap().status?;
        (s.active.as_ref()?.len() == 1).then_some(s)
    })
    .await;
    assert_eq!(
        status.last_schedule_time.unwrap().0.as_second(),
        last_five_minutes(now) * 60
    );

    // Due again while the first still runs: Forbid skips it.
    c.advance(SignedDuration::from_mins(5));
    poke(&c.client, "tick", 2).await;
    eventually("JobAlreadyActive", || async {
        reasons_for(&c.client, "tick")
            .await
            .contains("JobAlreadyActive")
            .then_some(())
    })
    .await;
    assert_eq!(jobs_of(&c.client, "tick").await.len(), 1);

    // The first finishes: the skipped time runs now.
    finish_job(&c.client, &first.name_any()).await;
    let now = *c.now.lock().unwrap();
    let second = format!("tick-{}", last_five_minutes(now));
    eventually("the second job", || async {
        jobs_of(&c.client, "tick")
            .await
            .iter()
            .any(|j| j.name_any() == second)
            .then_some(())
    })
    .await;
    eventually("lastSuccessfulTime", || async {
        api.get("tick").await.unwrap().status?.last_successful_time
    })
    .await;

    // The second finishes too: history keeps one successful Job, the newest.
    finish_job(&c.client, &second).await;
    eventually("the first job pruned", || async {
        let names: Vec<String> = jobs_of(&c.client, "tick")
            .await
            .iter()
            .map(ResourceExt::name_any)
            .collect();
        (names == [second.clone()]).then_some(())
    })
    .await;
    eventually("status.active emptied", || async {
        let s = api.get("tick").await.unwrap().status?;
        s.active.is_none_or(|a| a.is_empty()).then_some(())
    })
    .await;
    eventually("the pruned job's pod collected", || async {
        pods_of(&c.client, &first.name_any())
            .await
            .is_empty()
            .then_some(())
    })
    .await;
    assert_quiet(&c.client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cronjob_replace_and_suspend() {
    let c = cluster().await;
    let api: Api<CronJob> = Api::default_namespaced(c.client.clone());
    api.create(
        &PostParams::default(),
        &cronjob("swap", "* * * * *", json!({"concurrencyPolicy": "Replace"})),
    )
    .await
    .unwrap();
    c.advance(SignedDuration::from_mins(1));
    poke(&c.client, "swap", 1).await;
    let first = eventually("the first job", || async {
        let jobs = jobs_of(&c.client, "swap").await;
        (jobs.len() == 1).then(|| jobs[0].name_any())
    })
    .await;
    c.advance(SignedDuration::from_mins(1));
    poke(&c.client, "swap", 2).await;
    eventually("the first replaced by the second", || async {
        let jobs = jobs_of(&c.client, "swap").await;
        (jobs.len() == 1 && jobs[0].name_any() != first).then_some(())
    })
    .await;

    // Suspended: a due time passes without a Job. The pass that sees the running Job finish
    // (and writes status.active) is the one that would have started the due time.
    api.patch(
        "swap",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"suspend": true}})),
    )
    .await
    .unwrap();
    let running = jobs_of(&c.client, "swap").await[0].name_any();
    c.advance(SignedDuration::from_mins(3));
    finish_job(&c.client, &running).await;
    eventually("status.active emptied while suspended", || async {
        let s = api.get("swap").await.unwrap().status?;
        s.active.is_none_or(|a| a.is_empty()).then_some(())
    })
    .await;
    let names: Vec<String> = jobs_of(&c.client, "swap")
        .await
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    assert_eq!(
        names,
        std::slice::from_ref(&running),
        "no Job while suspended"
    );

    // Resumed: only the most recent missed time runs.
    api.patch(
        "swap",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"suspend": false}})),
    )
    .await
    .unwrap();
    let now = *c.now.lock().unwrap();
    let latest = format!("swap-{}", now.as_second().div_euclid(60));
    eventually("the latest time runs after resume", || async {
        let names: Vec<String> = jobs_of(&c.client, "swap")
            .await
            .iter()
            .map(ResourceExt::name_any)
            .collect();
        (names.len() == 2 && names.contains(&latest)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_from_cronjob_as_kubectl_creates_it_runs() {
    let c = cluster().await;
    let api: Api<CronJob> = Api::default_namespaced(c.client.clone());
    let cj = api
        .create(
            &PostParams::default(),
            &cronjob("nightly", "@daily", json!({})),
        )
        .await
        .unwrap();
    // What `kubectl create job manual --from=cronjob/nightly` sends (built client side).
    let template = cj.spec.job_template;
    let job: Job = serde_json::from_value(json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "manual",
            "annotations": {"cronjob.kubernetes.io/instantiate": "manual"},
            "labels": template.metadata.and_then(|m| m.labels),
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "CronJob", "name": "nightly",
                "uid": cj.metadata.uid, "controller": true}]},
        "spec": template.spec,
    }))
    .unwrap();
    let jobs: Api<Job> = Api::default_namespaced(c.client.clone());
    jobs.create(&PostParams::default(), &job).await.unwrap();
    finish_job(&c.client, "manual").await;
    // The CronJob counts it as its own.
    eventually("lastSuccessfulTime from the manual job", || async {
        api.get("nightly")
            .await
            .unwrap()
            .status?
            .last_successful_time
    })
    .await;

    // kubectl delete cronjob (background): its Jobs and their pods go too.
    api.delete(
        "nightly",
        &DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            ..DeleteParams::default()
        },
    )
    .await
    .unwrap();
    eventually("job collected with its cronjob", || async {
        jobs.get_opt("manual")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    eventually("pods collected", || async {
        pods_of(&c.client, "manual").await.is_empty().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_batch_objects_are_422() {
    let c = cluster().await;
    let api: Api<CronJob> = Api::default_namespaced(c.client.clone());
    let err = api
        .create(
            &PostParams::default(),
            &cronjob("bad", "every five minutes", json!({})),
        )
        .await
        .unwrap_err();
    let kube::Error::Api(s) = err else {
        panic!("not an API error: {err}")
    };
    assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"));
    assert!(
        s.message.contains("spec.schedule") && s.message.contains("expected exactly 5 fields"),
        "{}",
        s.message
    );

    let err = api
        .create(
            &PostParams::default(),
            &cronjob("zoned", "0 * * * *", json!({"timeZone": "Moon/Base"})),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 422 && s.message.contains("unknown time zone Moon/Base")),
        "{err}"
    );

    let jobs: Api<Job> = Api::default_namespaced(c.client.clone());
    let always: Job = serde_json::from_value(json!({"metadata": {"name": "always"}, "spec": {
        "template": {"spec": {"containers": [{"name": "c", "image": "busybox"}]}}}}))
    .unwrap();
    let err = jobs
        .create(&PostParams::default(), &always)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 422
            && s.message.contains("spec.template.spec.restartPolicy")
            && s.message.contains(r#"supported values: "OnFailure", "Never""#)),
        "{err}"
    );
}

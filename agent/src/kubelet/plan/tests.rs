//! The plan's decisions with an explicit `now`: no runtime, no clock, no I/O.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Container as K8sContainer, Pod, PodSpec, Probe};
use k8s_openapi::jiff::Timestamp;
use tokio::time::Instant;

use super::*;
use crate::kubelet::probes::{ProbeEvent, ProbeKind};
use crate::kubelet::status::{BackOff, ContainerRecord, RestartPolicy, State};
use crate::runtime::{ContainerState, ExitStatus};

const SECOND: Duration = Duration::from_secs(1);

fn waiting(reason: &str) -> State {
    State::Waiting {
        reason: reason.into(),
        message: None,
    }
}

fn running() -> State {
    State::Running {
        started_at: Timestamp::UNIX_EPOCH,
    }
}

fn exited(code: i32) -> State {
    State::exited(code, None, None, Timestamp::UNIX_EPOCH)
}

/// A container that was never started.
fn new_container() -> ContainerView {
    ContainerView {
        state: waiting("ContainerCreating"),
        has_instance: false,
        exit_seen: false,
        ran_for: Duration::ZERO,
        back_off: BackOff::default(),
        not_before: None,
    }
}

/// A running instance.
fn up() -> ContainerView {
    ContainerView {
        state: running(),
        has_instance: true,
        ..new_container()
    }
}

/// An instance that just exited with `code` after running `ran_for`.
fn ended(code: i32, ran_for: Duration) -> ContainerView {
    ContainerView {
        state: exited(code),
        has_instance: true,
        ran_for,
        ..new_container()
    }
}

fn pod(policy: RestartPolicy, init: Vec<ContainerView>, containers: Vec<ContainerView>) -> PodView {
    PodView {
        policy,
        init,
        containers,
    }
}

/// Plays what the worker does with a ScheduleRestart (+ CrashLoopBackOff): the view after it.
fn apply(view: &mut ContainerView, plan: &Plan) {
    for a in &plan.actions {
        match a {
            Action::ScheduleRestart {
                back_off,
                not_before,
                ..
            } => {
                view.exit_seen = true;
                view.back_off = back_off.clone();
                view.not_before = Some(*not_before);
            }
            Action::CrashLoopBackOff { .. } => view.state = waiting("CrashLoopBackOff"),
            Action::ExitHandled { .. } => view.exit_seen = true,
            Action::StartContainer { .. } => {
                view.state = running();
                view.has_instance = true;
                view.exit_seen = false;
                view.not_before = None;
            }
        }
    }
}

#[test]
fn sandbox_is_created_then_reused_and_recreated_when_it_dies() {
    let now = Instant::now();
    assert_eq!(
        plan_sandbox(SandboxState::Missing, None, now),
        SandboxStep::Create { remove_dead: false }
    );
    assert_eq!(
        plan_sandbox(SandboxState::Running, None, now),
        SandboxStep::Ready
    );
    assert_eq!(
        plan_sandbox(SandboxState::Dead, None, now),
        SandboxStep::Create { remove_dead: true }
    );
}

#[test]
fn a_failed_sandbox_backs_off_at_least_a_second_then_doubles() {
    let now = Instant::now();
    let (b1, at1) = sandbox_retry(&BackOff::default(), now);
    assert_eq!(at1, now + SECOND, "first retry: the 1 s floor");
    assert_eq!(
        plan_sandbox(SandboxState::Missing, Some(at1), now),
        SandboxStep::WaitUntil {
            at: at1,
            remove_dead: false
        }
    );
    assert_eq!(
        plan_sandbox(SandboxState::Dead, Some(at1), now),
        SandboxStep::WaitUntil {
            at: at1,
            remove_dead: true
        }
    );
    assert_eq!(
        plan_sandbox(SandboxState::Missing, Some(at1), at1),
        SandboxStep::Create { remove_dead: false },
        "due once the back-off expired"
    );
    let (b2, at2) = sandbox_retry(&b1, now);
    assert_eq!(at2, now + 10 * SECOND);
    let (_, at3) = sandbox_retry(&b2, now);
    assert_eq!(at3, now + 20 * SECOND);
}

#[test]
fn new_containers_start_all_at_once() {
    let now = Instant::now();
    let plan = plan_containers(
        &pod(
            RestartPolicy::Always,
            vec![],
            vec![new_container(), new_container()],
        ),
        now,
    );
    assert_eq!(
        plan.actions,
        vec![
            Action::StartContainer {
                which: Which::Main(0)
            },
            Action::StartContainer {
                which: Which::Main(1)
            },
        ]
    );
    assert_eq!(plan.wake_at, None);
    let plan = plan_containers(&pod(RestartPolicy::Always, vec![], vec![up()]), now);
    assert_eq!(plan, Plan::default(), "a running container is left alone");
}

#[test]
fn crash_loop_back_off_doubles_from_10s_to_5min() {
    let mut now = Instant::now();
    let mut c = ended(1, SECOND);
    // The first quick exit restarts at once.
    let plan = plan_containers(&pod(RestartPolicy::Always, vec![], vec![c.clone()]), now);
    assert_eq!(
        plan.actions,
        vec![
            Action::ScheduleRestart {
                which: Which::Main(0),
                back_off: {
                    let mut b = BackOff::default();
                    b.next_delay(Duration::ZERO);
                    b
                },
                not_before: now,
            },
            Action::StartContainer {
                which: Which::Main(0)
            },
        ]
    );
    apply(&mut c, &plan);
    let mut delays = Vec::new();
    for _ in 0..7 {
        c.state = exited(1);
        c.exit_seen = false;
        c.ran_for = SECOND;
        let plan = plan_containers(&pod(RestartPolicy::Always, vec![], vec![c.clone()]), now);
        let Some(Action::CrashLoopBackOff { delay, .. }) = plan.actions.get(1) else {
            panic!("expected CrashLoopBackOff: {plan:?}");
        };
        delays.push(delay.as_secs());
        assert_eq!(plan.wake_at, Some(now + *delay));
        apply(&mut c, &plan);
        // Nothing starts before the back-off expires ...
        let waiting = plan_containers(&pod(RestartPolicy::Always, vec![], vec![c.clone()]), now);
        assert!(waiting.actions.is_empty());
        assert_eq!(waiting.wake_at, Some(now + *delay));
        // ... and then it does.
        now += *delay;
        let due = plan_containers(&pod(RestartPolicy::Always, vec![], vec![c.clone()]), now);
        assert_eq!(
            due.actions,
            vec![Action::StartContainer {
                which: Which::Main(0)
            }]
        );
        apply(&mut c, &due);
    }
    assert_eq!(delays, [10, 20, 40, 80, 160, 300, 300]);
}

#[test]
fn ten_minutes_of_running_reset_the_back_off() {
    let now = Instant::now();
    let mut b = BackOff::default();
    for _ in 0..5 {
        b.next_delay(SECOND);
    }
    let crashed = ContainerView {
        back_off: b.clone(),
        ..ended(1, 9 * 60 * SECOND)
    };
    let plan = plan_containers(&pod(RestartPolicy::Always, vec![], vec![crashed]), now);
    assert!(
        matches!(plan.actions[1], Action::CrashLoopBackOff { delay, .. } if delay == 160 * SECOND)
    );
    let long_run = ContainerView {
        back_off: b,
        ..ended(1, 10 * 60 * SECOND)
    };
    let plan = plan_containers(&pod(RestartPolicy::Always, vec![], vec![long_run]), now);
    assert!(
        matches!(plan.actions[1], Action::StartContainer { .. }),
        "restarted at once: {plan:?}"
    );
}

#[test]
fn restart_policies_decide_which_exits_restart() {
    let now = Instant::now();
    let restarts = |policy, code| {
        let plan = plan_containers(&pod(policy, vec![], vec![ended(code, SECOND)]), now);
        match plan.actions.first() {
            Some(Action::ScheduleRestart { .. }) => true,
            Some(Action::ExitHandled { .. }) => false,
            other => panic!("{other:?}"),
        }
    };
    assert!(restarts(RestartPolicy::Always, 0));
    assert!(restarts(RestartPolicy::Always, 1));
    assert!(!restarts(RestartPolicy::OnFailure, 0));
    assert!(restarts(RestartPolicy::OnFailure, 1));
    assert!(!restarts(RestartPolicy::Never, 0));
    assert!(!restarts(RestartPolicy::Never, 1));
}

#[test]
fn a_handled_exit_stays_down() {
    let now = Instant::now();
    let done = ContainerView {
        exit_seen: true,
        ..ended(0, SECOND)
    };
    assert_eq!(
        plan_containers(
            &pod(RestartPolicy::OnFailure, vec![], vec![done.clone()]),
            now
        ),
        Plan::default()
    );
    // Known only from the API's status (after an agent restart): no instance, nothing to do.
    let from_api = ContainerView {
        has_instance: false,
        ..done
    };
    assert_eq!(
        plan_containers(&pod(RestartPolicy::Always, vec![], vec![from_api]), now),
        Plan::default()
    );
}

#[test]
fn init_containers_run_one_after_the_other_before_the_app() {
    let now = Instant::now();
    let start = |w| Action::StartContainer { which: w };
    let p = |init| pod(RestartPolicy::Always, init, vec![new_container()]);
    assert_eq!(
        plan_containers(&p(vec![new_container(), new_container()]), now).actions,
        vec![start(Which::Init(0))]
    );
    assert_eq!(
        plan_containers(&p(vec![up(), new_container()]), now).actions,
        vec![],
        "the second waits while the first runs"
    );
    let succeeded = ContainerView {
        exit_seen: true,
        ..ended(0, SECOND)
    };
    assert_eq!(
        plan_containers(&p(vec![succeeded.clone(), new_container()]), now).actions,
        vec![start(Which::Init(1))]
    );
    assert_eq!(
        plan_containers(&p(vec![succeeded.clone(), succeeded]), now).actions,
        vec![start(Which::Main(0))],
        "the app starts once every init container exited 0"
    );
}

#[test]
fn a_failed_init_container_restarts_unless_the_pod_never_restarts() {
    let now = Instant::now();
    for (policy, restarts) in [
        (RestartPolicy::Always, true),
        (RestartPolicy::OnFailure, true),
        (RestartPolicy::Never, false),
    ] {
        let plan = plan_containers(
            &pod(policy, vec![ended(1, SECOND)], vec![new_container()]),
            now,
        );
        assert_eq!(
            matches!(plan.actions.first(), Some(Action::ScheduleRestart { .. })),
            restarts,
            "{policy:?}: {plan:?}"
        );
        assert!(
            !plan.actions.iter().any(|a| matches!(
                a,
                Action::StartContainer {
                    which: Which::Main(_)
                }
            )),
            "{policy:?}: the app does not start"
        );
    }
    // Under Always an init container that exits 0 is not restarted (OnFailure for init).
    assert_eq!(init_policy(RestartPolicy::Always), RestartPolicy::OnFailure);
}

#[test]
fn a_finished_pod_has_a_phase() {
    let rec = |state: State| ContainerRecord {
        state,
        ..ContainerRecord::new("c", "img", "")
    };
    assert_eq!(
        finished(&[], &[rec(exited(0))], RestartPolicy::Never),
        Some("Succeeded")
    );
    assert_eq!(
        finished(&[], &[rec(exited(1))], RestartPolicy::Never),
        Some("Failed")
    );
    assert_eq!(
        finished(
            &[rec(exited(1))],
            &[rec(waiting("PodInitializing"))],
            RestartPolicy::Never
        ),
        Some("Failed"),
        "a failed init container fails a Never pod"
    );
    assert_eq!(finished(&[], &[rec(running())], RestartPolicy::Never), None);
    assert_eq!(
        finished(
            &[],
            &[rec(waiting("CrashLoopBackOff"))],
            RestartPolicy::Always
        ),
        None
    );
}

#[test]
fn image_pull_policies() {
    use crate::images::PullPolicy;
    assert_eq!(image_step(PullPolicy::Always, true), ImageStep::Pull);
    assert_eq!(image_step(PullPolicy::Always, false), ImageStep::Pull);
    assert_eq!(
        image_step(PullPolicy::IfNotPresent, true),
        ImageStep::UsePresent
    );
    assert_eq!(image_step(PullPolicy::IfNotPresent, false), ImageStep::Pull);
    assert_eq!(image_step(PullPolicy::Never, true), ImageStep::UsePresent);
    assert_eq!(image_step(PullPolicy::Never, false), ImageStep::NeverPull);
    assert!(ImageStep::NeverPull.announces_pull());
    assert!(!ImageStep::UsePresent.announces_pull());
    // `:latest` and no tag default to Always, other tags and digests to IfNotPresent.
    assert_eq!(
        PullPolicy::for_container(None, "busybox"),
        PullPolicy::Always
    );
    assert_eq!(
        PullPolicy::for_container(None, "busybox:latest"),
        PullPolicy::Always
    );
    assert_eq!(
        PullPolicy::for_container(None, "busybox:1.36"),
        PullPolicy::IfNotPresent
    );
    assert_eq!(
        PullPolicy::for_container(Some("Never"), "busybox:latest"),
        PullPolicy::Never
    );
}

#[test]
fn failed_starts_back_off_and_pull_errors_become_image_pull_back_off() {
    let now = Instant::now();
    let first = start_failed(
        &BackOff::default(),
        &waiting("ContainerCreating"),
        "ErrImagePull",
        now,
    );
    assert_eq!(first.waiting_reason, "ErrImagePull");
    assert_eq!(first.event_reason, "Failed");
    assert_eq!(first.not_before, now + SECOND);
    let second = start_failed(
        &first.back_off,
        &waiting("ErrImagePull"),
        "ErrImagePull",
        now,
    );
    assert_eq!(second.waiting_reason, "ImagePullBackOff");
    assert_eq!(second.not_before, now + 10 * SECOND);
    let third = start_failed(
        &second.back_off,
        &waiting("ImagePullBackOff"),
        "ErrImagePull",
        now,
    );
    assert_eq!(third.waiting_reason, "ImagePullBackOff");
    assert_eq!(third.not_before, now + 20 * SECOND);
    let never = start_failed(
        &BackOff::default(),
        &waiting("ErrImageNeverPull"),
        "ErrImageNeverPull",
        now,
    );
    assert_eq!(never.waiting_reason, "ErrImageNeverPull");
    assert_eq!(never.event_reason, "ErrImageNeverPull");
    let config = start_failed(
        &BackOff::default(),
        &exited(1),
        "CreateContainerConfigError",
        now,
    );
    assert_eq!(config.waiting_reason, "CreateContainerConfigError");
    assert_eq!(config.event_reason, "CreateContainerConfigError");
}

fn probe(kind: ProbeKind, ok: bool, instance: i32) -> ProbeEvent {
    ProbeEvent {
        container: "app".into(),
        instance,
        kind,
        ok,
        message: "HTTP probe failed with statuscode: 500".into(),
    }
}

#[test]
fn a_failed_liveness_probe_kills_with_a_reason() {
    let spec = K8sContainer {
        name: "app".into(),
        ..K8sContainer::default()
    };
    let d = probe_step(&probe(ProbeKind::Liveness, false, 2), &spec, 2, true);
    assert_eq!(
        d.unhealthy.as_deref(),
        Some("Liveness probe failed: HTTP probe failed with statuscode: 500")
    );
    assert_eq!(
        d.step,
        ProbeStep::Kill {
            message: "Container app failed liveness probe, will be restarted".into()
        }
    );
    let d = probe_step(&probe(ProbeKind::Startup, false, 0), &spec, 0, true);
    assert_eq!(
        d.step,
        ProbeStep::Kill {
            message: "Container app failed startup probe, will be restarted".into()
        }
    );
    assert_eq!(
        probe_step(&probe(ProbeKind::Liveness, true, 0), &spec, 0, true).step,
        ProbeStep::Nothing
    );
    // About an earlier instance, or none runs: ignored, no event.
    let stale = probe_step(&probe(ProbeKind::Liveness, false, 1), &spec, 2, true);
    assert_eq!((stale.unhealthy, stale.step), (None, ProbeStep::Stale));
    assert_eq!(
        probe_step(&probe(ProbeKind::Liveness, false, 2), &spec, 2, false).step,
        ProbeStep::Stale
    );
}

#[test]
fn readiness_and_startup_probes_set_ready_and_started() {
    let plain = K8sContainer {
        name: "app".into(),
        ..K8sContainer::default()
    };
    let with_readiness = K8sContainer {
        readiness_probe: Some(Probe::default()),
        ..plain.clone()
    };
    assert_eq!(
        probe_step(&probe(ProbeKind::Readiness, false, 0), &plain, 0, true).step,
        ProbeStep::SetReady(false)
    );
    assert_eq!(
        probe_step(&probe(ProbeKind::Readiness, true, 0), &plain, 0, true).step,
        ProbeStep::SetReady(true)
    );
    assert_eq!(
        probe_step(&probe(ProbeKind::Startup, true, 0), &plain, 0, true).step,
        ProbeStep::Started { ready: true }
    );
    assert_eq!(
        probe_step(
            &probe(ProbeKind::Startup, true, 0),
            &with_readiness,
            0,
            true
        )
        .step,
        ProbeStep::Started { ready: false }
    );
}

#[test]
fn a_killed_container_restarts_per_its_policy() {
    // The liveness kill ends the instance with SIGTERM's 143; the restart policy decides.
    let now = Instant::now();
    let killed = ended(143, 30 * SECOND);
    let plan = plan_containers(
        &pod(RestartPolicy::Always, vec![], vec![killed.clone()]),
        now,
    );
    assert!(matches!(
        plan.actions.last(),
        Some(Action::StartContainer { .. })
    ));
    let plan = plan_containers(&pod(RestartPolicy::Never, vec![], vec![killed]), now);
    assert_eq!(
        plan.actions,
        vec![Action::ExitHandled {
            which: Which::Main(0)
        }]
    );
}

fn pod_with_grace(spec: Option<i64>, deletion: Option<i64>) -> Pod {
    let mut pod = Pod {
        spec: Some(PodSpec {
            termination_grace_period_seconds: spec,
            ..PodSpec::default()
        }),
        ..Pod::default()
    };
    pod.metadata.deletion_grace_period_seconds = deletion;
    pod
}

#[test]
fn graceful_termination_uses_the_deletions_grace_period() {
    assert_eq!(grace_period(&pod_with_grace(None, None)), 30 * SECOND);
    assert_eq!(grace_period(&pod_with_grace(Some(5), None)), 5 * SECOND);
    assert_eq!(
        grace_period(&pod_with_grace(Some(5), Some(0))),
        Duration::ZERO,
        "deletionGracePeriodSeconds wins (force deletion)"
    );
    assert_eq!(
        grace_period(&pod_with_grace(None, Some(-1))),
        Duration::ZERO
    );
    let t = termination(
        &pod_with_grace(Some(7), None),
        &[up()],
        &[up(), ended(0, SECOND), new_container()],
    );
    assert_eq!(t.grace, 7 * SECOND);
    assert_eq!(
        t.stop,
        vec![Which::Init(0), Which::Main(0)],
        "only running instances"
    );
}

#[test]
fn adopted_containers_keep_running_or_are_seen_exiting() {
    let spec = K8sContainer {
        name: "app".into(),
        readiness_probe: Some(Probe::default()),
        ..K8sContainer::default()
    };
    let at = Timestamp::UNIX_EPOCH;
    let a = adopted(ContainerState::Running, &spec, at);
    assert_eq!(a.state, State::Running { started_at: at });
    assert_eq!(
        a.running,
        Some((true, false)),
        "started, not ready until probed"
    );
    let gone = adopted(
        ContainerState::Exited(Some(ExitStatus {
            code: 1,
            signal: None,
        })),
        &spec,
        at,
    );
    assert_eq!(gone.state, State::Running { started_at: at });
    assert_eq!(gone.running, None);
}

#[test]
fn ephemeral_containers_start_once_while_the_pod_runs() {
    let now = Instant::now();
    let later = now + Duration::from_secs(10);
    // Never started, started, never started but waiting after a failed start.
    let view = [(false, None), (true, None), (false, Some(later))];
    assert_eq!(
        ephemeral_to_start(true, &view, now),
        vec![Which::Ephemeral(0)]
    );
    assert_eq!(
        ephemeral_to_start(true, &view, later),
        vec![Which::Ephemeral(0), Which::Ephemeral(2)]
    );
    // A pod without a sandbox, or finished, starts none.
    assert_eq!(ephemeral_to_start(false, &view, later), vec![]);
}

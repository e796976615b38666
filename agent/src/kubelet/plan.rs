//! The pod worker's decisions, as pure functions: what the worker observed (sandbox, container
//! states, back-off, the clock) in, actions out. The worker ([`super::pod_worker`]) observes,
//! asks the plan, and executes the actions through the runtime, network and image traits;
//! nothing here does I/O, so every decision is unit-tested with an explicit `now`.
//!
//! After the kubelet's `computePodActions` (kuberuntime_manager.go), which returns the
//! sandbox to create and the containers to start or kill, and `SyncPod`, which carries them
//! out. One difference: skiff plans in two rounds, the sandbox first ([`plan_sandbox`]) and the
//! containers after the sandbox step ran and the containers were looked at again
//! ([`plan_containers`]): removing a dead sandbox changes what the containers' records say, and
//! the second round plans from those records, not from a guess of them.
//!
//! Decisions that depend on an outcome of an action (a failed start, a failed sandbox) are
//! pure functions too ([`start_failed`], [`sandbox_retry`]); so are probe outcomes
//! ([`probe_step`]), termination ([`termination`]) and adoption ([`adopted`]).

use std::time::Duration;

use k8s_openapi::api::core::v1::{Container as K8sContainer, Pod};
use tokio::time::Instant;

use super::probes::{ProbeEvent, ProbeKind};
use super::status::{self, BackOff, ContainerRecord, RestartPolicy, State};
use crate::images::PullPolicy;
use crate::runtime::ContainerState;

/// Which container of the pod: an init container, an app container or an ephemeral one, by
/// index in the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// `spec.initContainers[i]`.
    Init(usize),
    /// `spec.containers[i]`.
    Main(usize),
    /// `spec.ephemeralContainers[i]`: started once while the pod runs, never restarted
    /// (the worker starts them, outside the plan: [`ephemeral_to_start`]).
    Ephemeral(usize),
}

/// The ephemeral containers to start now, given for each whether it was ever started and when
/// a failed start may be retried: those never started whose retry time has come. None in a
/// pod that is not running (no sandbox, or finished).
pub fn ephemeral_to_start(
    pod_runs: bool,
    ephemeral: &[(bool, Option<Instant>)],
    now: Instant,
) -> Vec<Which> {
    if !pod_runs {
        return Vec::new();
    }
    ephemeral
        .iter()
        .enumerate()
        .filter(|(_, (started, not_before))| !started && not_before.is_none_or(|at| at <= now))
        .map(|(i, _)| Which::Ephemeral(i))
        .collect()
}

/// The pod's sandbox as observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxState {
    /// There is none (new pod, or removed).
    Missing,
    /// Its pause process runs.
    Running,
    /// It existed but its pause process is gone.
    Dead,
}

/// What the sandbox step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxStep {
    /// The sandbox runs: go on with the containers.
    Ready,
    /// Create the sandbox (and the pod's network), after removing the dead one if
    /// `remove_dead`. A failure ends the pass ([`sandbox_retry`]).
    Create {
        /// The old sandbox died: remove it and everything in it first.
        remove_dead: bool,
    },
    /// A sandbox creation failed recently: wait (after removing the dead one if `remove_dead`).
    WaitUntil {
        /// When to try again.
        at: Instant,
        /// The old sandbox died: remove it first.
        remove_dead: bool,
    },
}

/// Decides the sandbox step. `not_before` is the back-off of a failed creation.
pub fn plan_sandbox(
    sandbox: SandboxState,
    not_before: Option<Instant>,
    now: Instant,
) -> SandboxStep {
    let remove_dead = sandbox == SandboxState::Dead;
    match sandbox {
        SandboxState::Running => SandboxStep::Ready,
        SandboxState::Missing | SandboxState::Dead => match not_before.filter(|t| *t > now) {
            Some(at) => SandboxStep::WaitUntil { at, remove_dead },
            None => SandboxStep::Create { remove_dead },
        },
    }
}

/// The back-off after a failed sandbox creation: the advanced back-off and when to retry (at
/// least a second later, so that the first retries do not spin).
pub fn sandbox_retry(back_off: &BackOff, now: Instant) -> (BackOff, Instant) {
    retry_after_failure(back_off, now)
}

fn retry_after_failure(back_off: &BackOff, now: Instant) -> (BackOff, Instant) {
    let mut back_off = back_off.clone();
    let delay = back_off
        .next_delay(Duration::ZERO)
        .max(Duration::from_secs(1));
    (back_off, now + delay)
}

/// One container as the worker knows it when it plans.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerView {
    /// Its state (after the runtime was asked about the current instance).
    pub state: State,
    /// Whether an instance exists in the runtime (running or exited, not yet replaced).
    pub has_instance: bool,
    /// Whether the current state's exit was handled already (restart scheduled or refused).
    pub exit_seen: bool,
    /// How long the current instance ran (zero without one): a long run resets the back-off.
    pub ran_for: Duration,
    /// The restart back-off.
    pub back_off: BackOff,
    /// Not (re)started before this.
    pub not_before: Option<Instant>,
}

/// The pod as the container round sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct PodView {
    /// `spec.restartPolicy`.
    pub policy: RestartPolicy,
    /// The init containers, in spec order.
    pub init: Vec<ContainerView>,
    /// The app containers, in spec order.
    pub containers: Vec<ContainerView>,
}

/// What the worker does to a container.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// The container exited and stays down (its restart policy says so): note the exit.
    ExitHandled {
        /// The container.
        which: Which,
    },
    /// The container exited and will restart: note the exit, keep its state as the last
    /// state, store the advanced back-off and do not start it before `not_before`.
    ScheduleRestart {
        /// The container.
        which: Which,
        /// The advanced back-off.
        back_off: BackOff,
        /// The earliest restart.
        not_before: Instant,
    },
    /// The restart waits: the container shows `CrashLoopBackOff` (and a `BackOff` event).
    CrashLoopBackOff {
        /// The container.
        which: Which,
        /// How long it waits.
        delay: Duration,
    },
    /// Create and start a new instance (pull its image first as [`image_step`] says).
    StartContainer {
        /// The container.
        which: Which,
    },
}

/// The container round's actions, and when the next pass is due at the latest (a back-off
/// expiring); `None` means only an outside change (API, SIGCHLD, probe) wakes the worker.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// In order.
    pub actions: Vec<Action>,
    /// The next pass, at the latest.
    pub wake_at: Option<Instant>,
}

impl Plan {
    fn wake_at(&mut self, at: Instant) {
        self.wake_at = Some(self.wake_at.map_or(at, |n| n.min(at)));
    }
}

/// The restart policy of an init container: run to success, so restarted on failure unless
/// the pod never restarts anything.
pub fn init_policy(pod: RestartPolicy) -> RestartPolicy {
    match pod {
        RestartPolicy::Never => RestartPolicy::Never,
        RestartPolicy::Always | RestartPolicy::OnFailure => RestartPolicy::OnFailure,
    }
}

/// Plans the containers: init containers one after the other (the next only once the
/// previous exited 0), then all app containers.
pub fn plan_containers(pod: &PodView, now: Instant) -> Plan {
    let mut plan = Plan::default();
    let mut initialized = true;
    for (i, c) in pod.init.iter().enumerate() {
        match &c.state {
            State::Terminated { exit_code: 0, .. } => continue,
            State::Running { .. } => {}
            _ => container_step(&mut plan, Which::Init(i), c, init_policy(pod.policy), now),
        }
        initialized = false;
        break;
    }
    if initialized {
        for (i, c) in pod.containers.iter().enumerate() {
            container_step(&mut plan, Which::Main(i), c, pod.policy, now);
        }
    }
    plan
}

/// Moves one container towards running: handles its exit (restart with back-off, per the
/// restart policy) or starts it.
fn container_step(
    plan: &mut Plan,
    which: Which,
    c: &ContainerView,
    policy: RestartPolicy,
    now: Instant,
) {
    let mut not_before = c.not_before;
    if let State::Terminated { exit_code, .. } = c.state {
        if !c.has_instance && c.exit_seen {
            return;
        }
        if !c.exit_seen {
            if !policy.restarts(exit_code) {
                plan.actions.push(Action::ExitHandled { which });
                return;
            }
            let mut back_off = c.back_off.clone();
            let delay = back_off.next_delay(c.ran_for);
            plan.actions.push(Action::ScheduleRestart {
                which,
                back_off,
                not_before: now + delay,
            });
            if delay > Duration::ZERO {
                plan.actions.push(Action::CrashLoopBackOff { which, delay });
                plan.wake_at(now + delay);
                return;
            }
            not_before = Some(now + delay);
        } else if !policy.restarts(exit_code) {
            return;
        }
    }
    if let Some(at) = not_before.filter(|t| *t > now) {
        plan.wake_at(at);
        return;
    }
    if matches!(c.state, State::Running { .. }) {
        return;
    }
    plan.actions.push(Action::StartContainer { which });
}

/// How a failed start shows and when it is retried.
#[derive(Debug, Clone, PartialEq)]
pub struct StartRetry {
    /// The advanced back-off.
    pub back_off: BackOff,
    /// The retry.
    pub not_before: Instant,
    /// The container's waiting reason: the failure's, or its back-off form
    /// (`ErrImagePull` -> `ImagePullBackOff`) when it failed the same way before.
    pub waiting_reason: String,
    /// The event's reason (`Failed` for pull errors, as the kubelet's puller reports them).
    pub event_reason: String,
}

/// Decides the retry of a container whose start failed with the Kubernetes `reason`
/// (`ErrImagePull`, `CreateContainerConfigError`, ...), given its state before.
pub fn start_failed(
    back_off: &BackOff,
    previous: &State,
    reason: &str,
    now: Instant,
) -> StartRetry {
    let (back_off, not_before) = retry_after_failure(back_off, now);
    let failed_before = match previous {
        State::Waiting { reason: r, .. } => {
            r == reason || (reason == "ErrImagePull" && r == "ImagePullBackOff")
        }
        _ => false,
    };
    let waiting_reason = match (failed_before, reason) {
        (true, "ErrImagePull") => "ImagePullBackOff",
        _ => reason,
    };
    StartRetry {
        back_off,
        not_before,
        waiting_reason: waiting_reason.to_owned(),
        event_reason: if reason == "ErrImagePull" {
            "Failed"
        } else {
            reason
        }
        .to_owned(),
    }
}

/// How a container's image is made present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageStep {
    /// Ask the registry (`Always`, or `IfNotPresent` and not stored).
    Pull,
    /// Use the stored image.
    UsePresent,
    /// `Never` and not stored: `ErrImageNeverPull`.
    NeverPull,
}

impl ImageStep {
    /// Whether a `Pulling` event goes out first. Today's behaviour: also before
    /// `ErrImageNeverPull`, since the image is not present.
    pub fn announces_pull(self) -> bool {
        !matches!(self, Self::UsePresent)
    }
}

/// Decides the image step from the pull policy and whether the image is stored.
pub fn image_step(policy: PullPolicy, present: bool) -> ImageStep {
    match (policy, present) {
        (PullPolicy::Always, _) | (PullPolicy::IfNotPresent, false) => ImageStep::Pull,
        (PullPolicy::Never, false) => ImageStep::NeverPull,
        (PullPolicy::IfNotPresent | PullPolicy::Never, true) => ImageStep::UsePresent,
    }
}

/// What a probe's outcome does to its container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeStep {
    /// The result is about an older instance (or none runs): ignore it.
    Stale,
    /// A liveness probe passed: nothing changes.
    Nothing,
    /// Readiness changed.
    SetReady(bool),
    /// The startup probe passed: the container counts as started; ready unless a readiness
    /// probe decides that.
    Started {
        /// The new readiness.
        ready: bool,
    },
    /// Liveness or startup failed: kill the instance (SIGTERM, grace period, SIGKILL) and
    /// let the restart policy decide what follows; `message` goes on the `Killing` event.
    Kill {
        /// Why.
        message: String,
    },
}

/// A probe outcome's consequences.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeDecision {
    /// The `Unhealthy` warning event's message (for every failure that is not stale).
    pub unhealthy: Option<String>,
    /// What happens to the container.
    pub step: ProbeStep,
}

/// Decides what a probe outcome does to `spec`'s container, whose current instance is
/// `restart_count` (if `has_instance`).
pub fn probe_step(
    event: &ProbeEvent,
    spec: &K8sContainer,
    restart_count: i32,
    has_instance: bool,
) -> ProbeDecision {
    if restart_count != event.instance || !has_instance {
        return ProbeDecision {
            unhealthy: None,
            step: ProbeStep::Stale,
        };
    }
    let unhealthy =
        (!event.ok).then(|| format!("{} probe failed: {}", event.kind.label(), event.message));
    let step = match (event.kind, event.ok) {
        (ProbeKind::Readiness, ok) => ProbeStep::SetReady(ok),
        (ProbeKind::Startup, true) => ProbeStep::Started {
            ready: spec.readiness_probe.is_none(),
        },
        (ProbeKind::Liveness, true) => ProbeStep::Nothing,
        (kind, false) => ProbeStep::Kill {
            message: format!(
                "Container {} failed {} probe, will be restarted",
                event.container,
                kind.label().to_ascii_lowercase()
            ),
        },
    };
    ProbeDecision { unhealthy, step }
}

/// The pod's grace period: the deletion's (`deletionGracePeriodSeconds`), else the spec's
/// `terminationGracePeriodSeconds`, else 30 s.
pub fn grace_period(pod: &Pod) -> Duration {
    let secs = pod
        .metadata
        .deletion_grace_period_seconds
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        })
        .unwrap_or(30);
    Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

/// How the pod stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Termination {
    /// Between SIGTERM and SIGKILL, for every container at once.
    pub grace: Duration,
    /// The containers to stop (those running), init containers first.
    pub stop: Vec<Which>,
}

/// Plans the pod's termination: every running container is stopped with the pod's grace
/// period; then the sandbox and network go.
pub fn termination(pod: &Pod, init: &[ContainerView], containers: &[ContainerView]) -> Termination {
    let running = |c: &ContainerView| c.has_instance && matches!(c.state, State::Running { .. });
    let stop = init
        .iter()
        .enumerate()
        .filter(|(_, c)| running(c))
        .map(|(i, _)| Which::Init(i))
        .chain(
            containers
                .iter()
                .enumerate()
                .filter(|(_, c)| running(c))
                .map(|(i, _)| Which::Main(i)),
        )
        .collect();
    Termination {
        grace: grace_period(pod),
        stop,
    }
}

/// The pod's phase if it finished (`Succeeded` or `Failed`): the worker then stops planning,
/// gives the pod's address back and keeps the sandbox (and logs) until the pod is deleted.
pub fn finished(
    init: &[ContainerRecord],
    containers: &[ContainerRecord],
    policy: RestartPolicy,
) -> Option<&'static str> {
    match status::phase(init, containers, policy) {
        "Succeeded" => Some("Succeeded"),
        "Failed" => Some("Failed"),
        _ => None,
    }
}

/// What the worker takes over of a container found by the runtime after an agent restart.
#[derive(Debug, Clone, PartialEq)]
pub struct Adopted {
    /// The state to record: `Running` in every case; an instance that ended meanwhile is seen
    /// exiting by the next pass's look at the runtime, like any exit.
    pub state: State,
    /// For an instance that still runs: its `started` and `ready`; its exit handling starts
    /// afresh and its probes run again. `None` leaves those as the API's status had them.
    pub running: Option<(bool, bool)>,
}

/// Decides how a found container is adopted; `started_at` is its start as the API last saw it.
pub fn adopted(
    state: ContainerState,
    spec: &K8sContainer,
    started_at: k8s_openapi::jiff::Timestamp,
) -> Adopted {
    Adopted {
        state: State::Running { started_at },
        running: (state == ContainerState::Running)
            .then(|| (spec.startup_probe.is_none(), spec.readiness_probe.is_none())),
    }
}

#[cfg(test)]
mod tests;

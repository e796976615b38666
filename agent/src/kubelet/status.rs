//! A pod's status from what the agent knows about its containers: phase, conditions and
//! container statuses, computed the way the kubelet does (pure functions, unit-tested).

use k8s_openapi::api::core::v1::{
    ContainerState as K8sState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, PodCondition, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

/// A container instance's state as the agent tracks it.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    /// Not running: being created, pulled, or backing off.
    Waiting {
        /// `ContainerCreating`, `PodInitializing`, `ErrImagePull`, `CrashLoopBackOff`, ...
        reason: String,
        /// Details for the user.
        message: Option<String>,
    },
    /// Its process runs.
    Running {
        /// When it started.
        started_at: Timestamp,
    },
    /// It ended.
    Terminated {
        /// Exit code (128 + signal when killed by one).
        exit_code: i32,
        /// The signal that ended it.
        signal: Option<i32>,
        /// `Completed`, `Error`, `OOMKilled`, `ContainerStatusUnknown`.
        reason: String,
        /// Details for the user.
        message: Option<String>,
        /// When it started, if known.
        started_at: Option<Timestamp>,
        /// When it ended.
        finished_at: Timestamp,
    },
}

impl State {
    /// A terminated state for an exit code, with Kubernetes' reason.
    pub fn exited(
        exit_code: i32,
        signal: Option<i32>,
        started_at: Option<Timestamp>,
        finished_at: Timestamp,
    ) -> Self {
        State::Terminated {
            exit_code,
            signal,
            reason: if exit_code == 0 { "Completed" } else { "Error" }.to_owned(),
            message: None,
            started_at,
            finished_at,
        }
    }

    fn to_k8s(&self) -> K8sState {
        match self {
            State::Waiting { reason, message } => K8sState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(reason.clone()),
                    message: message.clone(),
                }),
                ..K8sState::default()
            },
            State::Running { started_at } => K8sState {
                running: Some(ContainerStateRunning {
                    started_at: Some(Time(*started_at)),
                }),
                ..K8sState::default()
            },
            State::Terminated {
                exit_code,
                signal,
                reason,
                message,
                started_at,
                finished_at,
            } => K8sState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: *exit_code,
                    signal: *signal,
                    reason: Some(reason.clone()),
                    message: message.clone(),
                    started_at: started_at.map(Time),
                    finished_at: Some(Time(*finished_at)),
                    container_id: None,
                }),
                ..K8sState::default()
            },
        }
    }
}

/// What the agent knows about one container of a pod.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerRecord {
    /// The container's name.
    pub name: String,
    /// The image as the spec names it.
    pub image: String,
    /// The image's id (`sha256:...`) once resolved.
    pub image_id: Option<String>,
    /// The current instance's id (`skiff://<id>`).
    pub container_id: Option<String>,
    /// The current state.
    pub state: State,
    /// The previous instance's end, if it restarted.
    pub last_state: Option<State>,
    /// How often it was restarted.
    pub restart_count: i32,
    /// Whether it passes its readiness probe (true when it runs and has none).
    pub ready: bool,
    /// Whether it passed its startup probe (true when it runs and has none).
    pub started: bool,
}

impl ContainerRecord {
    /// A container that has not been created yet.
    pub fn new(name: &str, image: &str, reason: &str) -> Self {
        Self {
            name: name.to_owned(),
            image: image.to_owned(),
            image_id: None,
            container_id: None,
            state: State::Waiting {
                reason: reason.to_owned(),
                message: None,
            },
            last_state: None,
            restart_count: 0,
            ready: false,
            started: false,
        }
    }

    /// The container's status as the API shows it.
    pub fn to_k8s(&self) -> ContainerStatus {
        ContainerStatus {
            name: self.name.clone(),
            image: self.image.clone(),
            image_id: self.image_id.clone().unwrap_or_default(),
            container_id: self.container_id.clone(),
            state: Some(self.state.to_k8s()),
            last_state: Some(
                self.last_state
                    .as_ref()
                    .map(State::to_k8s)
                    .unwrap_or_default(),
            ),
            restart_count: self.restart_count,
            ready: self.ready,
            started: Some(self.started),
            ..ContainerStatus::default()
        }
    }

    fn succeeded(&self) -> bool {
        matches!(self.state, State::Terminated { exit_code: 0, .. })
    }
}

/// `Always`, `OnFailure` or `Never`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Restart whenever it exits.
    Always,
    /// Restart when it fails.
    OnFailure,
    /// Never restart.
    Never,
}

impl RestartPolicy {
    /// From the pod spec's field (default `Always`).
    pub fn parse(s: Option<&str>) -> Self {
        match s {
            Some("OnFailure") => Self::OnFailure,
            Some("Never") => Self::Never,
            _ => Self::Always,
        }
    }

    /// Whether a container that ended with `exit_code` is started again.
    pub fn restarts(self, exit_code: i32) -> bool {
        match self {
            Self::Always => true,
            Self::OnFailure => exit_code != 0,
            Self::Never => false,
        }
    }
}

/// The pod's phase, by the kubelet's rules (`getPhase`).
pub fn phase(
    init: &[ContainerRecord],
    containers: &[ContainerRecord],
    policy: RestartPolicy,
) -> &'static str {
    // An init container that failed for good fails the pod.
    if policy == RestartPolicy::Never
        && init
            .iter()
            .any(|c| matches!(c.state, State::Terminated { exit_code, .. } if exit_code != 0))
    {
        return "Failed";
    }
    if !init.iter().all(ContainerRecord::succeeded) {
        return "Pending";
    }
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for c in containers {
        match &c.state {
            State::Running { .. } => running += 1,
            State::Terminated { exit_code, .. } => {
                stopped += 1;
                if *exit_code == 0 {
                    succeeded += 1;
                }
            }
            // Waiting to restart after having run counts as stopped, not as never started.
            State::Waiting { .. } if c.last_state.is_some() => stopped += 1,
            State::Waiting { .. } => waiting += 1,
        }
    }
    if waiting > 0 {
        "Pending"
    } else if running > 0 {
        "Running"
    } else if stopped > 0 {
        match policy {
            RestartPolicy::Always => "Running",
            _ if stopped == succeeded => "Succeeded",
            RestartPolicy::Never => "Failed",
            RestartPolicy::OnFailure => "Running",
        }
    } else {
        "Pending"
    }
}

/// Inputs of [`pod_status`] besides the container records.
#[derive(Debug, Clone)]
pub struct PodFacts<'a> {
    /// The pod's restart policy.
    pub policy: RestartPolicy,
    /// The pod's IP, once its network is up.
    pub pod_ip: Option<String>,
    /// The node's IP.
    pub host_ip: Option<String>,
    /// When the agent accepted the pod.
    pub start_time: Timestamp,
    /// The status last posted (conditions keep their transition times).
    pub previous: Option<&'a PodStatus>,
    /// Why the pod cannot run at all (a terminal failure), if it cannot.
    pub failure: Option<(String, String)>,
    /// Phase decided earlier that must not change again (Succeeded/Failed are terminal).
    pub terminal_phase: Option<&'static str>,
}

fn condition(
    kind: &str,
    ok: bool,
    reason: Option<&str>,
    previous: Option<&PodStatus>,
    now: Timestamp,
) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    let since = previous
        .and_then(|p| p.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == kind))
        .filter(|c| c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    PodCondition {
        type_: kind.to_owned(),
        status: status.to_owned(),
        reason: if ok { None } else { reason.map(str::to_owned) },
        last_transition_time: Some(since),
        ..PodCondition::default()
    }
}

/// The status to post for a pod.
pub fn pod_status(
    init: &[ContainerRecord],
    containers: &[ContainerRecord],
    facts: &PodFacts<'_>,
) -> PodStatus {
    let now = Timestamp::now();
    let phase = facts
        .terminal_phase
        .unwrap_or_else(|| phase(init, containers, facts.policy));
    let initialized = init.iter().all(ContainerRecord::succeeded);
    let containers_ready = containers.iter().all(|c| c.ready) && phase == "Running";
    let not_ready_reason = if phase == "Succeeded" || phase == "Failed" {
        "PodCompleted"
    } else {
        "ContainersNotReady"
    };
    let conditions = vec![
        condition(
            "PodReadyToStartContainers",
            facts.pod_ip.is_some() && facts.terminal_phase.is_none(),
            None,
            facts.previous,
            now,
        ),
        condition(
            "Initialized",
            initialized,
            Some("ContainersNotInitialized"),
            facts.previous,
            now,
        ),
        condition(
            "Ready",
            containers_ready,
            Some(not_ready_reason),
            facts.previous,
            now,
        ),
        condition(
            "ContainersReady",
            containers_ready,
            Some(not_ready_reason),
            facts.previous,
            now,
        ),
        condition("PodScheduled", true, None, facts.previous, now),
    ];
    let ips = |ip: &Option<String>| {
        ip.as_ref()
            .map(|ip| vec![k8s_openapi::api::core::v1::PodIP { ip: ip.clone() }])
    };
    PodStatus {
        phase: Some(phase.to_owned()),
        conditions: Some(conditions),
        container_statuses: Some(containers.iter().map(ContainerRecord::to_k8s).collect()),
        init_container_statuses: (!init.is_empty())
            .then(|| init.iter().map(ContainerRecord::to_k8s).collect()),
        pod_ip: facts.pod_ip.clone(),
        pod_ips: ips(&facts.pod_ip),
        host_ip: facts.host_ip.clone(),
        host_ips: facts
            .host_ip
            .as_ref()
            .map(|ip| vec![k8s_openapi::api::core::v1::HostIP { ip: ip.clone() }]),
        start_time: Some(Time(facts.start_time)),
        reason: facts.failure.as_ref().map(|f| f.0.clone()),
        message: facts.failure.as_ref().map(|f| f.1.clone()),
        qos_class: facts.previous.and_then(|p| p.qos_class.clone()),
        ..PodStatus::default()
    }
}

/// What the agent owns in a status, without timestamps: phase, IP, condition statuses and each
/// container's readiness, restarts and state kind. Two statuses with equal summaries need no
/// update.
pub fn summary(s: &PodStatus) -> String {
    let conditions: Vec<String> = s
        .conditions
        .iter()
        .flatten()
        .map(|c| format!("{}={}", c.type_, c.status))
        .collect();
    let containers: Vec<String> = s
        .container_statuses
        .iter()
        .flatten()
        .chain(s.init_container_statuses.iter().flatten())
        .map(|c| {
            let state = c.state.as_ref().map_or("none", |st| {
                if st.running.is_some() {
                    "running"
                } else if st.terminated.is_some() {
                    "terminated"
                } else {
                    "waiting"
                }
            });
            format!("{}:{}:{}:{state}", c.name, c.ready, c.restart_count)
        })
        .collect();
    format!(
        "{:?}|{:?}|{}|{}",
        s.phase,
        s.pod_ip,
        conditions.join(","),
        containers.join(",")
    )
}

/// The kubelet's restart back-off: immediate the first time, then 10 s doubling up to 5 min;
/// reset once a container ran for 10 minutes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackOff {
    next: Option<std::time::Duration>,
}

impl BackOff {
    /// The initial delay after the first quick restart.
    pub const INITIAL: std::time::Duration = std::time::Duration::from_secs(10);
    /// The longest delay.
    pub const MAX: std::time::Duration = std::time::Duration::from_secs(300);
    /// A run this long resets the back-off.
    pub const RESET_AFTER: std::time::Duration = std::time::Duration::from_secs(600);

    /// The delay before the next restart, advancing the back-off.
    pub fn next_delay(&mut self, ran_for: std::time::Duration) -> std::time::Duration {
        if ran_for >= Self::RESET_AFTER {
            self.next = None;
        }
        let delay = self.next.unwrap_or_default();
        self.next = Some(match self.next {
            None => Self::INITIAL,
            Some(d) => (d * 2).min(Self::MAX),
        });
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(name: &str, ready: bool) -> ContainerRecord {
        ContainerRecord {
            state: State::Running {
                started_at: Timestamp::now(),
            },
            ready,
            started: true,
            ..ContainerRecord::new(name, "img", "")
        }
    }

    fn exited(name: &str, code: i32) -> ContainerRecord {
        ContainerRecord {
            state: State::exited(code, None, None, Timestamp::now()),
            ..ContainerRecord::new(name, "img", "")
        }
    }

    fn crashlooping(name: &str) -> ContainerRecord {
        ContainerRecord {
            state: State::Waiting {
                reason: "CrashLoopBackOff".into(),
                message: None,
            },
            last_state: Some(State::exited(1, None, None, Timestamp::now())),
            restart_count: 3,
            ..ContainerRecord::new(name, "img", "")
        }
    }

    #[test]
    fn phases_follow_the_kubelet() {
        use RestartPolicy::*;
        let creating = ContainerRecord::new("a", "img", "ContainerCreating");
        assert_eq!(
            phase(&[], std::slice::from_ref(&creating), Always),
            "Pending"
        );
        assert_eq!(
            phase(&[], &[running("a", true), creating], Always),
            "Pending"
        );
        assert_eq!(phase(&[], &[running("a", false)], Always), "Running");
        assert_eq!(phase(&[], &[crashlooping("a")], Always), "Running");
        assert_eq!(phase(&[], &[exited("a", 0)], Never), "Succeeded");
        assert_eq!(
            phase(&[], &[exited("a", 0), exited("b", 2)], Never),
            "Failed"
        );
        assert_eq!(phase(&[], &[exited("a", 0)], OnFailure), "Succeeded");
        assert_eq!(phase(&[], &[exited("a", 1)], OnFailure), "Running");
        // Init containers gate the phase.
        let init_running = running("init", false);
        assert_eq!(
            phase(
                &[init_running],
                &[ContainerRecord::new("a", "i", "PodInitializing")],
                Always
            ),
            "Pending"
        );
        assert_eq!(phase(&[exited("init", 1)], &[], Never), "Failed");
        assert_eq!(
            phase(&[exited("init", 0)], &[running("a", true)], Never),
            "Running"
        );
    }

    #[test]
    fn readiness_drives_the_ready_conditions_and_keeps_transition_times() {
        let facts = PodFacts {
            policy: RestartPolicy::Always,
            pod_ip: Some("10.244.1.5".into()),
            host_ip: Some("10.0.0.1".into()),
            start_time: Timestamp::now(),
            previous: None,
            failure: None,
            terminal_phase: None,
        };
        let cond = |s: &PodStatus, t: &str| {
            s.conditions
                .as_ref()
                .unwrap()
                .iter()
                .find(|c| c.type_ == t)
                .unwrap()
                .clone()
        };
        let first = pod_status(&[], &[running("a", false)], &facts);
        assert_eq!(first.phase.as_deref(), Some("Running"));
        assert_eq!(cond(&first, "Ready").status, "False");
        assert_eq!(
            cond(&first, "Ready").reason.as_deref(),
            Some("ContainersNotReady")
        );
        assert_eq!(cond(&first, "Initialized").status, "True");
        let ready = pod_status(
            &[],
            &[running("a", true)],
            &PodFacts {
                previous: Some(&first),
                ..facts.clone()
            },
        );
        assert_eq!(cond(&ready, "Ready").status, "True");
        assert_eq!(cond(&ready, "ContainersReady").status, "True");
        assert_eq!(
            cond(&ready, "Initialized").last_transition_time,
            cond(&first, "Initialized").last_transition_time
        );
        assert_eq!(ready.pod_ip.as_deref(), Some("10.244.1.5"));
        assert!(ready.container_statuses.as_ref().unwrap()[0].ready);
    }

    #[test]
    fn back_off_is_immediate_then_doubles_to_five_minutes() {
        let mut b = BackOff::default();
        let quick = std::time::Duration::from_secs(1);
        let delays: Vec<u64> = (0..8).map(|_| b.next_delay(quick).as_secs()).collect();
        assert_eq!(delays, [0, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(b.next_delay(BackOff::RESET_AFTER).as_secs(), 0);
    }

    #[test]
    fn restart_policies() {
        assert!(RestartPolicy::parse(None).restarts(0));
        assert!(!RestartPolicy::parse(Some("OnFailure")).restarts(0));
        assert!(RestartPolicy::parse(Some("OnFailure")).restarts(2));
        assert!(!RestartPolicy::parse(Some("Never")).restarts(2));
    }
}

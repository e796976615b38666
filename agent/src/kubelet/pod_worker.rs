//! One task per pod on this node, level-triggered: each pass observes the pod (its sandbox, the
//! state of every container instance), asks the pure plan ([`super::plan`]) what to do, and
//! carries that out through the runtime, network and image traits; then it posts the status if
//! it changed. A pass runs when the pod changes in the API, when a child process exits
//! (SIGCHLD), when a probe's outcome changes, or when a back-off expires. Deletion stops the
//! containers within the grace period, removes the sandbox and network and then deletes the
//! pod object (graceful deletion completes).
//!
//! While the pod runs, its configMap, secret, downwardAPI and projected volumes are written
//! again every [`Shared::sync_frequency`] (the kubelet's periodic sync): a ServiceAccount token
//! the token manager renewed, or a changed ConfigMap or Secret, reaches the containers.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container as K8sContainer, EnvVar, Pod, PodStatus};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Preconditions};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::container_config::{self, EnvError};
use super::directory::{self, Directory};
use super::events::Events;
use super::plan::{self, Action, ContainerView, PodView, SandboxState, SandboxStep, Which};
use super::probes::{self, ProbeEvent};
use super::status::{self, BackOff, ContainerRecord, PodFacts, RestartPolicy, State};
use super::status_writer::StatusWriter;
use super::token_manager::TokenManager;
use super::volume_payload::ApiSources;
use crate::images::{Image, ImageError, ImageService, PullPolicy};
use crate::network::node_network::NodeNetworkError;
use crate::network::PodNetworking;
use crate::runtime::{
    self, ContainerRuntime, ContainerState, PodState, RuntimeError, Sandbox, SpecError,
};

/// Why a pod's sandbox or one of its containers could not be started. The Kubernetes reason
/// shown in the container's waiting state comes from [`PodWorkerError::reason`].
#[derive(Debug, thiserror::Error)]
pub enum PodWorkerError {
    /// A container was to start before the pod had a sandbox.
    #[error("no sandbox")]
    NoSandbox,
    /// The image could not be made present (`ErrImagePull`, `ErrImageNeverPull`,
    /// `InvalidImageName`).
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The environment, a volume or `/etc/hosts` could not be prepared (a missing ConfigMap
    /// key, a bad volume mount, ...).
    #[error("{0}")]
    Config(String),
    /// The runtime spec could not be built from the container and its image.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The runtime failed to create or start the container.
    #[error(transparent)]
    Run(RuntimeError),
    /// The runtime failed to create the sandbox.
    #[error(transparent)]
    Sandbox(RuntimeError),
    /// The pod's network could not be set up in the new sandbox.
    #[error("setting up the pod network: {0}")]
    Network(NodeNetworkError),
}

impl PodWorkerError {
    /// The reason Kubernetes shows for it: a container's waiting reason (`ErrImagePull`,
    /// `CreateContainerConfigError`, `RunContainerError`, ...) or the sandbox event's.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoSandbox => "ContainerCreating",
            Self::Image(e) => e.kubelet_reason(),
            Self::Config(_) | Self::Spec(_) => "CreateContainerConfigError",
            Self::Run(_) => "RunContainerError",
            Self::Sandbox(_) | Self::Network(_) => "FailedCreatePodSandBox",
        }
    }
}

/// What every pod worker shares.
pub struct Shared {
    /// The API client.
    pub client: kube::Client,
    /// This node's name.
    pub node_name: String,
    /// This node's IP (status.hostIP).
    pub host_ip: Option<Ipv4Addr>,
    /// The container runtime.
    pub runtime: Arc<dyn ContainerRuntime>,
    /// The node's images.
    pub images: Arc<dyn ImageService>,
    /// The node's pod network.
    pub network: Arc<dyn PodNetworking>,
    /// The agent's state directory.
    pub root: PathBuf,
    /// Event writer.
    pub events: Events,
    /// Pod status writer.
    pub statuses: StatusWriter,
    /// Bumped on every SIGCHLD: a child (container or shim) exited.
    pub sigchld: watch::Receiver<u64>,
    /// What the node's HTTP endpoints read.
    pub directory: Arc<Directory>,
    /// Agent shutdown: workers stop, pods keep running.
    pub shutdown: CancellationToken,
    /// The node's ServiceAccount tokens (projected volumes).
    pub tokens: Arc<TokenManager>,
    /// How often a running pod's configMap, secret, downwardAPI and projected volumes are
    /// written again (the kubelet's `--sync-frequency`).
    pub sync_frequency: Duration,
    /// Which pods this node runs at all (sysctls, user namespaces).
    pub admission: super::admission::Admission,
    /// The node's DNS settings, for the pods' resolv.conf.
    pub dns: Arc<super::resolv_conf::NodeDns>,
}

/// A change of the pod in the API.
#[derive(Debug)]
pub enum Update {
    /// The pod as it is now.
    Pod(Box<Pod>),
    /// The pod object is gone.
    Gone,
}

/// A running container instance.
struct Instance {
    container: runtime::Container,
    started: Instant,
    started_at: Timestamp,
    probes: Option<CancellationToken>,
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(p) = &self.probes {
            p.cancel();
        }
    }
}

/// One container of the spec and what the agent knows about it.
struct Slot {
    spec: K8sContainer,
    record: ContainerRecord,
    instance: Option<Instance>,
    back_off: BackOff,
    /// Not (re)started before this.
    not_before: Option<Instant>,
    /// The exit of the current instance was handled (back-off scheduled).
    exit_seen: bool,
    /// The environment the last instance started with: a restart while the API server is
    /// unreachable starts with it again.
    last_env: Option<Vec<EnvVar>>,
}

impl Slot {
    fn new(spec: &K8sContainer, reason: &str) -> Self {
        Self {
            record: ContainerRecord::new(
                &spec.name,
                spec.image.as_deref().unwrap_or_default(),
                reason,
            ),
            spec: spec.clone(),
            instance: None,
            back_off: BackOff::default(),
            not_before: None,
            exit_seen: false,
            last_env: None,
        }
    }

    /// What the plan sees of it.
    fn view(&self, now: Instant) -> ContainerView {
        ContainerView {
            state: self.record.state.clone(),
            has_instance: self.instance.is_some(),
            exit_seen: self.exit_seen,
            ran_for: self
                .instance
                .as_ref()
                .map_or(Duration::ZERO, |i| now.saturating_duration_since(i.started)),
            back_off: self.back_off.clone(),
            not_before: self.not_before,
        }
    }
}

/// A pod being run.
pub struct PodWorker {
    shared: Arc<Shared>,
    pod: Pod,
    uid: String,
    sandbox: Option<Sandbox>,
    ip: Option<Ipv4Addr>,
    init: Vec<Slot>,
    containers: Vec<Slot>,
    /// `spec.ephemeralContainers` (`kubectl debug`), added as the pod's spec gains them.
    ephemeral: Vec<Slot>,
    policy: RestartPolicy,
    start_time: Timestamp,
    posted: Option<PodStatus>,
    /// The pod's resourceVersion when `posted` was handed over.
    posted_at: Option<String>,
    /// Why this node refused to run the pod (reason, message): it is Failed at once.
    rejected: Option<(String, String)>,
    terminal: Option<&'static str>,
    sandbox_back_off: BackOff,
    sandbox_not_before: Option<Instant>,
    probe_tx: mpsc::UnboundedSender<ProbeEvent>,
    probe_rx: mpsc::UnboundedReceiver<ProbeEvent>,
}

fn meta_str(pod: &Pod, f: impl Fn(&kube::api::ObjectMeta) -> Option<&String>) -> String {
    f(&pod.metadata).cloned().unwrap_or_default()
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

impl PodWorker {
    /// A worker for `pod`, adopting what the runtime has of it (`found`, after an agent
    /// restart).
    pub async fn new(shared: Arc<Shared>, pod: Pod, found: Option<PodState>) -> Self {
        let uid = meta_str(&pod, |m| m.uid.as_ref());
        let spec = pod.spec.clone().unwrap_or_default();
        let previous = pod.status.clone();
        let (probe_tx, probe_rx) = mpsc::unbounded_channel();
        let mut worker = Self {
            policy: RestartPolicy::parse(spec.restart_policy.as_deref()),
            init: spec
                .init_containers
                .iter()
                .flatten()
                .map(|c| Slot::new(c, "PodInitializing"))
                .collect(),
            containers: spec
                .containers
                .iter()
                .map(|c| Slot::new(c, "ContainerCreating"))
                .collect(),
            ephemeral: Vec::new(),
            start_time: previous
                .as_ref()
                .and_then(|s| s.start_time.as_ref())
                .map_or_else(Timestamp::now, |t| t.0),
            shared,
            uid,
            sandbox: None,
            ip: None,
            posted: None,
            posted_at: None,
            rejected: None,
            terminal: None,
            sandbox_back_off: BackOff::default(),
            sandbox_not_before: None,
            probe_tx,
            probe_rx,
            pod,
        };
        // Restart counts and previous terminations survive in the API's status.
        if let Some(status) = &previous {
            for (slots, statuses) in [
                (&mut worker.init, status.init_container_statuses.as_ref()),
                (&mut worker.containers, status.container_statuses.as_ref()),
            ] {
                for s in statuses.into_iter().flatten() {
                    if let Some(slot) = slots.iter_mut().find(|x| x.spec.name == s.name) {
                        slot.record.restart_count = s.restart_count;
                        slot.record.last_state = s
                            .last_state
                            .as_ref()
                            .and_then(|l| l.terminated.as_ref())
                            .map(|t| {
                                State::exited(
                                    t.exit_code,
                                    t.signal,
                                    t.started_at.as_ref().map(|x| x.0),
                                    t.finished_at.as_ref().map_or_else(Timestamp::now, |x| x.0),
                                )
                            });
                        if let Some(t) = s.state.as_ref().and_then(|st| st.terminated.as_ref()) {
                            slot.record.state = State::exited(
                                t.exit_code,
                                t.signal,
                                t.started_at.as_ref().map(|x| x.0),
                                t.finished_at.as_ref().map_or_else(Timestamp::now, |x| x.0),
                            );
                            slot.exit_seen = true;
                        }
                    }
                }
            }
            if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
                worker.terminal = if status.phase.as_deref() == Some("Succeeded") {
                    Some("Succeeded")
                } else {
                    Some("Failed")
                };
            }
        }
        worker.add_ephemeral();
        match found {
            Some(found) => worker.adopt(found).await,
            // A new pod passes the node's admission first, as the kubelet's admit handlers:
            // refused, it fails at once with their reason and never gets a sandbox.
            None if worker.terminal.is_none() => {
                if let Err((reason, message)) = worker.shared.admission.admit(&worker.pod) {
                    tracing::info!(pod = %worker.name(), %reason, %message, "pod refused");
                    worker
                        .shared
                        .events
                        .pod(&worker.pod, None, true, &reason, &message);
                    worker.rejected = Some((reason, message));
                    worker.terminal = Some("Failed");
                }
            }
            None => {}
        }
        worker
    }

    /// Takes over a sandbox and containers that ran before the agent restarted.
    async fn adopt(&mut self, found: PodState) {
        if !found.running {
            tracing::info!(pod = %self.name(), "the sandbox died while the agent was away; recreating it");
            self.remove_sandbox().await;
            return;
        }
        self.ip = if self.host_namespaces().network {
            self.shared.host_ip
        } else {
            self.shared.network.address_of(&self.uid).await
        };
        self.sandbox = Some(found.sandbox);
        for (container, state) in found.containers {
            let Some(slot) = self
                .init
                .iter_mut()
                .chain(self.containers.iter_mut())
                .find(|s| s.spec.name == container.name)
            else {
                continue;
            };
            let started_at = self
                .pod
                .status
                .as_ref()
                .and_then(|s| {
                    s.container_statuses
                        .iter()
                        .chain(s.init_container_statuses.iter())
                        .flatten()
                        .find(|c| c.name == slot.spec.name)
                        .cloned()
                })
                .and_then(|c| c.state.and_then(|s| s.running).and_then(|r| r.started_at))
                .map_or_else(Timestamp::now, |t| t.0);
            let adopted = plan::adopted(state, &slot.spec, started_at);
            slot.record.container_id = Some(format!("skiff://{}", container.id));
            slot.record.state = adopted.state;
            let mut probes = None;
            if let Some((started, ready)) = adopted.running {
                slot.record.started = started;
                slot.record.ready = ready;
                slot.exit_seen = false;
                probes = self.ip.and_then(|ip| {
                    probes::spawn(
                        probes::Target {
                            pod_ip: ip.into(),
                            spec: slot.spec.clone(),
                            container: container.clone(),
                            instance: slot.record.restart_count,
                            runtime: self.shared.runtime.clone(),
                        },
                        self.probe_tx.clone(),
                    )
                });
            }
            slot.instance = Some(Instance {
                container,
                started: Instant::now(),
                started_at,
                probes,
            });
        }
        tracing::info!(pod = %self.name(), "adopted the running pod");
    }

    fn name(&self) -> String {
        format!(
            "{}/{}",
            meta_str(&self.pod, |m| m.namespace.as_ref()),
            meta_str(&self.pod, |m| m.name.as_ref())
        )
    }

    /// Runs the pod until it is deleted (or the agent shuts down).
    pub async fn run(mut self, mut updates: mpsc::UnboundedReceiver<Update>) {
        let mut sigchld = self.shared.sigchld.clone();
        let mut volumes_due = Instant::now() + self.shared.sync_frequency;
        loop {
            let deleting = self.pod.metadata.deletion_timestamp.is_some();
            if deleting {
                self.terminate(true).await;
                return;
            }
            if Instant::now() >= volumes_due {
                self.sync_volumes().await;
                volumes_due = Instant::now() + self.shared.sync_frequency;
            }
            let mut next = self.sync().await;
            self.post_status();
            self.publish();
            if self.runs() {
                next = Some(next.map_or(volumes_due, |n| n.min(volumes_due)));
            }
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.shared.shutdown.cancelled() => return,
                update = updates.recv() => match update {
                    Some(Update::Pod(pod)) => {
                        self.pod = *pod;
                        self.add_ephemeral();
                    }
                    Some(Update::Gone) | None => {
                        self.terminate(false).await;
                        return;
                    }
                },
                Ok(()) = sigchld.changed() => {}
                Some(event) = self.probe_rx.recv() => self.on_probe(event).await,
                () = sleep => {}
            }
            // Take every queued update at once: only the latest matters.
            while let Ok(update) = updates.try_recv() {
                match update {
                    Update::Pod(pod) => {
                        self.pod = *pod;
                        self.add_ephemeral();
                    }
                    Update::Gone => {
                        self.terminate(false).await;
                        return;
                    }
                }
            }
        }
    }

    /// Gives every ephemeral container of the spec that has none a slot (they are only ever
    /// added: the API server refuses changes and removals).
    fn add_ephemeral(&mut self) {
        let spec = self.pod.spec.as_ref();
        for ec in spec
            .into_iter()
            .flat_map(|s| s.ephemeral_containers.iter().flatten())
        {
            if self.ephemeral.iter().any(|s| s.spec.name == ec.name) {
                continue;
            }
            // The same fields as a container, plus targetContainerName (kept below).
            let container =
                serde_json::to_value(ec).and_then(serde_json::from_value::<K8sContainer>);
            match container {
                Ok(c) => self.ephemeral.push(Slot::new(&c, "ContainerCreating")),
                Err(e) => {
                    tracing::warn!(pod = %self.name(), container = %ec.name, error = %e, "an ephemeral container");
                }
            }
        }
    }

    /// The running container whose PID namespace ephemeral container `i` joins, if it names
    /// one.
    fn ephemeral_target(&self, i: usize) -> Result<Option<runtime::Container>, PodWorkerError> {
        let name = &self.ephemeral[i].spec.name;
        let target = self
            .pod
            .spec
            .iter()
            .flat_map(|s| s.ephemeral_containers.iter().flatten())
            .find(|e| &e.name == name)
            .and_then(|e| e.target_container_name.clone());
        let Some(target) = target else {
            return Ok(None);
        };
        self.init
            .iter()
            .chain(self.containers.iter())
            .find(|s| s.spec.name == target)
            .and_then(|s| s.instance.as_ref())
            .map(|i| i.container.clone())
            .filter(runtime::Container::is_running)
            .map(Some)
            .ok_or_else(|| {
                PodWorkerError::Config(format!("the target container {target:?} is not running"))
            })
    }

    /// Starts the ephemeral containers that are due; returns when to try a failed one again.
    async fn start_ephemeral(&mut self) -> Option<Instant> {
        let now = Instant::now();
        let view: Vec<(bool, Option<Instant>)> = self
            .ephemeral
            .iter()
            .map(|s| {
                (
                    s.instance.is_some() || s.record.container_id.is_some(),
                    s.not_before,
                )
            })
            .collect();
        let runs = self.runs();
        let mut next = None;
        for which in plan::ephemeral_to_start(runs, &view, now) {
            let Err(e) = self.start(which).await else {
                continue;
            };
            let slot = self.slot(which);
            let retry = plan::start_failed(&slot.back_off, &slot.record.state, e.reason(), now);
            let message = e.to_string();
            slot.back_off = retry.back_off;
            slot.not_before = Some(retry.not_before);
            slot.record.state = State::Waiting {
                reason: retry.waiting_reason,
                message: Some(message.clone()),
            };
            let name = slot.spec.name.clone();
            let pod = self.pod.clone();
            self.shared
                .events
                .pod(&pod, Some(&name), true, &retry.event_reason, &message);
            next = Some(next.map_or(retry.not_before, |n: Instant| n.min(retry.not_before)));
        }
        next
    }

    /// Whether the pod has a sandbox and has not finished: its volumes are kept fresh.
    fn runs(&self) -> bool {
        self.sandbox.is_some() && self.terminal.is_none()
    }

    /// Where the pod's volumes get their objects and tokens.
    fn volume_sources(&self) -> ApiSources {
        ApiSources {
            client: self.shared.client.clone(),
            tokens: self.shared.tokens.clone(),
        }
    }

    /// Writes the running pod's configMap, secret, downwardAPI and projected volumes again
    /// (unchanged ones are left alone); a failure is a `FailedMount` event, and the next sync
    /// tries again.
    async fn sync_volumes(&mut self) {
        if !self.runs() {
            return;
        }
        let pod = self.pod.clone();
        let (written, errors) =
            container_config::refresh_volumes(&self.volume_sources(), &self.shared.root, &pod)
                .await;
        for volume in written {
            tracing::debug!(pod = %self.name(), volume, "volume contents updated");
        }
        for e in errors {
            tracing::warn!(pod = %self.name(), error = %e, "refreshing a volume");
            self.shared.events.pod(
                &pod,
                None,
                true,
                "FailedMount",
                &format!("MountVolume.SetUp failed: {e}"),
            );
        }
    }

    async fn on_probe(&mut self, event: ProbeEvent) {
        let pod = self.pod.clone();
        let Some(slot) = self
            .containers
            .iter_mut()
            .chain(self.init.iter_mut())
            .find(|s| s.spec.name == event.container)
        else {
            return;
        };
        let decision = plan::probe_step(
            &event,
            &slot.spec,
            slot.record.restart_count,
            slot.instance.is_some(),
        );
        if let Some(message) = &decision.unhealthy {
            self.shared
                .events
                .pod(&pod, Some(&event.container), true, "Unhealthy", message);
        }
        match decision.step {
            plan::ProbeStep::Stale | plan::ProbeStep::Nothing => {}
            plan::ProbeStep::SetReady(ready) => slot.record.ready = ready,
            plan::ProbeStep::Started { ready } => {
                slot.record.started = true;
                slot.record.ready = ready;
            }
            plan::ProbeStep::Kill { message } => {
                self.shared
                    .events
                    .pod(&pod, Some(&event.container), false, "Killing", &message);
                slot.record.ready = false;
                if let Some(inst) = &slot.instance {
                    let (runtime, c) = (self.shared.runtime.clone(), inst.container.clone());
                    let grace = plan::grace_period(&pod);
                    // Stopping blocks for up to the grace period: off the worker's loop, the
                    // exit arrives as SIGCHLD.
                    tokio::task::spawn_blocking(move || {
                        if let Err(e) = runtime.stop(&c, grace) {
                            tracing::warn!(container = c.id, error = %e, "stopping after a failed probe");
                        }
                    });
                }
            }
        }
    }

    /// One pass: observe, plan, execute. Returns when the next one is due at the latest.
    async fn sync(&mut self) -> Option<Instant> {
        if self.terminal.is_some() {
            return None;
        }
        // Round one: the sandbox (and network).
        let sandbox = match &self.sandbox {
            None => SandboxState::Missing,
            Some(s) if self.shared.runtime.sandbox_running(s) => SandboxState::Running,
            Some(_) => SandboxState::Dead,
        };
        match plan::plan_sandbox(sandbox, self.sandbox_not_before, Instant::now()) {
            SandboxStep::Ready => {}
            SandboxStep::WaitUntil { at, remove_dead } => {
                if remove_dead {
                    self.remove_dead_sandbox().await;
                }
                return Some(at);
            }
            SandboxStep::Create { remove_dead } => {
                if remove_dead {
                    self.remove_dead_sandbox().await;
                }
                if let Err(e) = self.create_sandbox().await {
                    let pod = self.pod.clone();
                    self.shared.events.pod(
                        &pod,
                        None,
                        true,
                        "FailedCreatePodSandBox",
                        &format!("Failed to create pod sandbox: {e}"),
                    );
                    let (back_off, at) =
                        plan::sandbox_retry(&self.sandbox_back_off, Instant::now());
                    self.sandbox_back_off = back_off;
                    self.sandbox_not_before = Some(at);
                    return Some(at);
                }
            }
        }
        // Round two: the containers, from what the runtime says of them now.
        self.refresh().await;
        let now = Instant::now();
        let plan = plan::plan_containers(&self.view(now), now);
        let mut next = plan.wake_at;
        for action in plan.actions {
            if let Some(at) = self.execute(action).await {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        if let Some(at) = self.start_ephemeral().await {
            next = Some(next.map_or(at, |n| n.min(at)));
        }
        if let Some(phase) = plan::finished(&self.records(true), &self.records(false), self.policy)
        {
            self.terminal = Some(phase);
            // A finished pod keeps its sandbox (and logs) until it is deleted, but gives its
            // address back.
            if let Err(e) = self.shared.network.detach(&self.uid).await {
                tracing::warn!(pod = %self.name(), error = %e, "releasing a finished pod's network");
            }
            return None;
        }
        next
    }

    async fn remove_dead_sandbox(&mut self) {
        tracing::warn!(pod = %self.name(), "the sandbox died; recreating the pod's sandbox and containers");
        self.remove_sandbox().await;
    }

    fn view(&self, now: Instant) -> PodView {
        PodView {
            policy: self.policy,
            init: self.init.iter().map(|s| s.view(now)).collect(),
            containers: self.containers.iter().map(|s| s.view(now)).collect(),
        }
    }

    /// Carries out one container action; returns when to look again if it failed.
    async fn execute(&mut self, action: Action) -> Option<Instant> {
        match action {
            Action::ExitHandled { which } => {
                self.slot(which).exit_seen = true;
                None
            }
            Action::ScheduleRestart {
                which,
                back_off,
                not_before,
            } => {
                let slot = self.slot(which);
                slot.exit_seen = true;
                slot.back_off = back_off;
                slot.not_before = Some(not_before);
                slot.record.last_state = Some(slot.record.state.clone());
                None
            }
            Action::CrashLoopBackOff { which, delay } => {
                let (pod_name, pod_uid) = (self.name(), self.uid.clone());
                let slot = self.slot(which);
                slot.record.state = State::Waiting {
                    reason: "CrashLoopBackOff".into(),
                    message: Some(format!(
                        "back-off {}s restarting failed container={} pod={}_{}({pod_uid})",
                        delay.as_secs(),
                        slot.spec.name,
                        pod_name.split_once('/').map_or("", |p| p.1),
                        pod_name.split_once('/').map_or("", |p| p.0),
                    )),
                };
                let name = slot.spec.name.clone();
                let pod = self.pod.clone();
                self.shared.events.pod(
                    &pod,
                    Some(&name),
                    true,
                    "BackOff",
                    "Back-off restarting failed container",
                );
                None
            }
            Action::StartContainer { which } => {
                let e = self.start(which).await.err()?;
                let slot = self.slot(which);
                let retry = plan::start_failed(
                    &slot.back_off,
                    &slot.record.state,
                    e.reason(),
                    Instant::now(),
                );
                let message = e.to_string();
                slot.back_off = retry.back_off;
                slot.not_before = Some(retry.not_before);
                slot.record.state = State::Waiting {
                    reason: retry.waiting_reason,
                    message: Some(message.clone()),
                };
                let name = slot.spec.name.clone();
                let pod = self.pod.clone();
                self.shared
                    .events
                    .pod(&pod, Some(&name), true, &retry.event_reason, &message);
                Some(retry.not_before)
            }
        }
    }

    fn records(&self, init: bool) -> Vec<ContainerRecord> {
        let slots = if init { &self.init } else { &self.containers };
        slots.iter().map(|s| s.record.clone()).collect()
    }

    /// Looks at every instance whose exit was not handled yet: an ended one is recorded as
    /// terminated (its probes stop).
    async fn refresh(&mut self) {
        for slot in self
            .init
            .iter_mut()
            .chain(self.containers.iter_mut())
            .chain(self.ephemeral.iter_mut())
        {
            let Some(inst) = &slot.instance else { continue };
            if slot.exit_seen {
                continue;
            }
            let (runtime, c) = (self.shared.runtime.clone(), inst.container.clone());
            let state = blocking(move || runtime.status(&c)).await;
            let exit = match state {
                Ok(ContainerState::Exited(exit)) => exit,
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(container = inst.container.id, error = %e, "reading a container's state");
                    continue;
                }
            };
            let (code, signal) = exit.map_or((-1, None), |e| (e.code, e.signal));
            let mut state = State::exited(code, signal, Some(inst.started_at), Timestamp::now());
            if exit.is_none() {
                if let State::Terminated {
                    reason, message, ..
                } = &mut state
                {
                    *reason = "ContainerStatusUnknown".into();
                    *message = Some(
                        "The container could not be located when the pod was terminated".into(),
                    );
                }
            }
            if let Some(p) = &inst.probes {
                p.cancel();
            }
            slot.record.state = state;
            slot.record.ready = false;
            slot.record.started = false;
            slot.exit_seen = false;
        }
    }

    fn slot(&mut self, which: Which) -> &mut Slot {
        match which {
            Which::Init(i) => &mut self.init[i],
            Which::Main(i) => &mut self.containers[i],
            Which::Ephemeral(i) => &mut self.ephemeral[i],
        }
    }

    /// Creates and starts a new instance of a container: image, then the previous instance
    /// goes, then the runtime spec, then create and start.
    async fn start(&mut self, which: Which) -> Result<(), PodWorkerError> {
        let sandbox = self.sandbox.clone().ok_or(PodWorkerError::NoSandbox)?;
        let spec = self.slot(which).spec.clone();
        let image = self.pull(&spec).await?;
        // The previous instance goes first (same name in the runtime).
        let previous = self.slot(which).instance.take();
        if let Some(old) = previous {
            let (runtime, c) = (self.shared.runtime.clone(), old.container.clone());
            if let Err(e) = blocking(move || runtime.delete_container(&c)).await {
                tracing::warn!(container = old.container.id, error = %e, "removing the previous instance");
            }
        }
        let (cspec, restart_count) = self.container_spec(which, &spec, &image).await?;
        self.create_and_start(which, &spec, &image, sandbox, cspec, restart_count)
            .await
    }

    /// Makes the container's image present as its pull policy says, with the kubelet's
    /// `Pulling`/`Pulled` events.
    async fn pull(&self, spec: &K8sContainer) -> Result<Image, PodWorkerError> {
        let pod = self.pod.clone();
        let image_ref = spec.image.clone().unwrap_or_default();
        let policy = PullPolicy::for_container(spec.image_pull_policy.as_deref(), &image_ref);
        let step = plan::image_step(policy, self.shared.images.contains(&image_ref));
        if step.announces_pull() {
            self.shared.events.pod(
                &pod,
                Some(&spec.name),
                false,
                "Pulling",
                &format!("Pulling image \"{image_ref}\""),
            );
        }
        // The wall clock: the event reports how long the pull really took.
        let pull_started = std::time::Instant::now();
        // The store stays the authority, also for `Never` (an image imported meanwhile).
        let image = self.shared.images.ensure(&image_ref, policy).await?;
        if step.announces_pull() {
            self.shared.events.pod(
                &pod,
                Some(&spec.name),
                false,
                "Pulled",
                &format!(
                    "Successfully pulled image \"{image_ref}\" in {:?}",
                    pull_started.elapsed()
                ),
            );
        } else {
            self.shared.events.pod(
                &pod,
                Some(&spec.name),
                false,
                "Pulled",
                &format!("Container image \"{image_ref}\" already present on machine"),
            );
        }
        Ok(image)
    }

    /// The runtime spec of the container's next instance (environment, volumes, /etc/hosts,
    /// log file) and its restart count, counting this restart.
    async fn container_spec(
        &mut self,
        which: Which,
        spec: &K8sContainer,
        image: &Image,
    ) -> Result<(runtime::ContainerSpec, i32), PodWorkerError> {
        let pod = self.pod.clone();
        let restarted = {
            let slot = self.slot(which);
            slot.record.last_state.is_some() && slot.record.container_id.is_some()
        };
        let env = match container_config::environment(
            &self.shared.client,
            &pod,
            spec,
            self.ip,
            self.shared.host_ip,
        )
        .await
        {
            Ok(env) => {
                self.slot(which).last_env = Some(env.clone());
                env
            }
            Err(EnvError::Unreachable(e)) if self.slot(which).last_env.is_some() => {
                tracing::warn!(pod = %self.name(), container = %spec.name, error = %e,
                    "the API server is unreachable: restarting with the last environment");
                self.slot(which).last_env.clone().unwrap_or_default()
            }
            Err(e) => return Err(PodWorkerError::Config(e.to_string())),
        };
        let mounts = container_config::mounts(
            self.shared.runtime.as_ref(),
            &self.volume_sources(),
            &self.shared.root,
            &pod,
            spec,
        )
        .await
        .map_err(PodWorkerError::Config)?;
        let mut k8s = spec.clone();
        k8s.env = Some(env);
        k8s.env_from = None;
        let config = runtime::ImageConfig {
            entrypoint: image.config.entrypoint.clone(),
            cmd: image.config.cmd.clone(),
            env: image.config.env.clone(),
            working_dir: image.config.working_dir.clone(),
            user: image.config.user.clone(),
        };
        let mut cspec =
            runtime::ContainerSpec::from_pod(Some(&pod), &k8s, &config, image.layers.clone())?;
        cspec.mounts.extend(mounts);
        if !cspec
            .mounts
            .iter()
            .any(|m| m.destination == std::path::Path::new("/etc/hosts"))
        {
            cspec
                .mounts
                .push(self.hosts_file().map_err(PodWorkerError::Config)?);
        }
        if !cspec
            .mounts
            .iter()
            .any(|m| m.destination == std::path::Path::new("/etc/resolv.conf"))
        {
            cspec.mounts.push(self.resolv_conf_file()?);
        }
        let restart_count = {
            let slot = self.slot(which);
            if restarted {
                slot.record.restart_count += 1;
            }
            slot.record.restart_count
        };
        let log = directory::log_path(&self.shared.root, &self.uid, &spec.name, restart_count);
        cspec.log_path = Some(log);
        if let Which::Ephemeral(i) = which {
            if let Some(target) = self.ephemeral_target(i)? {
                cspec.pid_namespace = Some(PathBuf::from(format!("/proc/{}/ns/pid", target.pid)));
            }
        }
        Ok((cspec, restart_count))
    }

    /// Creates and starts the instance in the runtime, with events and probes, and records it.
    async fn create_and_start(
        &mut self,
        which: Which,
        spec: &K8sContainer,
        image: &Image,
        sandbox: Sandbox,
        cspec: runtime::ContainerSpec,
        restart_count: i32,
    ) -> Result<(), PodWorkerError> {
        let pod = self.pod.clone();
        let runtime = self.shared.runtime.clone();
        let created = blocking(move || {
            let c = runtime.create_container(&sandbox, &cspec)?;
            match runtime.start(&c) {
                Ok(()) => Ok(c),
                Err(e) => {
                    let _ = runtime.delete_container(&c);
                    Err(e)
                }
            }
        })
        .await;
        let container = match created {
            Ok(c) => c,
            Err(e) => {
                self.shared.events.pod(
                    &pod,
                    Some(&spec.name),
                    true,
                    "Failed",
                    &format!("Error: {e}"),
                );
                return Err(PodWorkerError::Run(e));
            }
        };
        self.shared.events.pod(
            &pod,
            Some(&spec.name),
            false,
            "Created",
            &format!("Created container {}", spec.name),
        );
        self.shared.events.pod(
            &pod,
            Some(&spec.name),
            false,
            "Started",
            &format!("Started container {}", spec.name),
        );
        let probes = self.ip.and_then(|ip| {
            probes::spawn(
                probes::Target {
                    pod_ip: ip.into(),
                    spec: spec.clone(),
                    container: container.clone(),
                    instance: restart_count,
                    runtime: self.shared.runtime.clone(),
                },
                self.probe_tx.clone(),
            )
        });
        let started_at = Timestamp::now();
        let slot = self.slot(which);
        slot.record.container_id = Some(format!("skiff://{}", container.id));
        slot.record.image_id = Some(format!(
            "{}@{}",
            repository(&image.reference),
            image.manifest_digest
        ));
        slot.record.state = State::Running { started_at };
        slot.record.started = spec.startup_probe.is_none();
        slot.record.ready = spec.readiness_probe.is_none() && spec.startup_probe.is_none();
        slot.exit_seen = false;
        slot.not_before = None;
        slot.instance = Some(Instance {
            container,
            started: Instant::now(),
            started_at,
            probes,
        });
        Ok(())
    }

    /// The pod's /etc/hosts (localhost and the pod's own name), as the kubelet writes it:
    /// images such as busybox have none, and `localhost` must resolve between containers.
    fn hosts_file(&self) -> Result<runtime::BindMount, String> {
        let path = self
            .shared
            .root
            .join("pods")
            .join(&self.uid)
            .join("etc-hosts");
        let node_hosts = if self.host_namespaces().network {
            Some(
                std::fs::read_to_string("/etc/hosts")
                    .map_err(|e| format!("reading the node's /etc/hosts: {e}"))?,
            )
        } else {
            None
        };
        let content = super::etc_hosts::content(
            &self.pod,
            self.ip,
            &pod_hostname(&self.pod),
            &self.shared.dns.cluster_domain,
            node_hosts.as_deref(),
        );
        std::fs::write(&path, content).map_err(|e| format!("writing {}: {e}", path.display()))?;
        Ok(runtime::BindMount {
            source: path,
            destination: PathBuf::from("/etc/hosts"),
            read_only: false,
        })
    }

    /// The pod's /etc/resolv.conf by its dnsPolicy and dnsConfig
    /// ([`super::resolv_conf::for_pod`]); what had to be cut or fell back is recorded as the
    /// kubelet's warning events, once per pod.
    fn resolv_conf_file(&mut self) -> Result<runtime::BindMount, PodWorkerError> {
        let path = self
            .shared
            .root
            .join("pods")
            .join(&self.uid)
            .join("resolv.conf");
        let (conf, warnings) = super::resolv_conf::for_pod(&self.pod, &self.shared.dns);
        if !path.exists() {
            for (reason, message) in warnings {
                self.shared
                    .events
                    .pod(&self.pod, None, true, &reason, &message);
            }
        }
        std::fs::write(&path, conf.render())
            .map_err(|e| PodWorkerError::Config(format!("writing {}: {e}", path.display())))?;
        Ok(runtime::BindMount {
            source: path,
            destination: PathBuf::from("/etc/resolv.conf"),
            read_only: false,
        })
    }

    /// The node's namespaces the pod asks to share (hostNetwork, hostIPC).
    fn host_namespaces(&self) -> runtime::HostNamespaces {
        let spec = self.pod.spec.as_ref();
        runtime::HostNamespaces {
            network: spec.and_then(|s| s.host_network).unwrap_or(false),
            ipc: spec.and_then(|s| s.host_ipc).unwrap_or(false),
        }
    }

    async fn create_sandbox(&mut self) -> Result<(), PodWorkerError> {
        let hostname = sandbox_hostname(&self.pod, &self.shared.dns.cluster_domain)
            .map_err(PodWorkerError::Config)?;
        let host = self.host_namespaces();
        let (runtime, uid) = (self.shared.runtime.clone(), self.uid.clone());
        let sandbox = blocking(move || runtime.create_sandbox_with(&uid, &hostname, host))
            .await
            .map_err(PodWorkerError::Sandbox)?;
        if host.network {
            // The node's network: no veth, no address of its own; the pod's IP is the node's.
            self.ip = self.shared.host_ip;
            self.sandbox = Some(sandbox);
            self.sandbox_back_off = BackOff::default();
            return Ok(());
        }
        match self
            .shared
            .network
            .attach(&self.uid, &sandbox.netns_path())
            .await
        {
            Ok(ip) => {
                self.ip = Some(ip);
                self.sandbox = Some(sandbox);
                self.sandbox_back_off = BackOff::default();
                Ok(())
            }
            Err(e) => {
                let runtime = self.shared.runtime.clone();
                let _ = blocking(move || runtime.remove_sandbox(&sandbox)).await;
                let _ = self.shared.network.detach(&self.uid).await;
                Err(PodWorkerError::Network(e))
            }
        }
    }

    /// Removes the sandbox and everything in it; the containers will start again.
    async fn remove_sandbox(&mut self) {
        for slot in self.init.iter_mut().chain(self.containers.iter_mut()) {
            if let Some(inst) = slot.instance.take() {
                if matches!(slot.record.state, State::Running { .. }) {
                    slot.record.state =
                        State::exited(137, Some(9), Some(inst.started_at), Timestamp::now());
                    slot.exit_seen = false;
                }
            }
        }
        let (runtime, uid) = (self.shared.runtime.clone(), self.uid.clone());
        if let Err(e) = blocking(move || runtime.remove_pod_by_uid(&uid)).await {
            tracing::warn!(pod = %self.name(), error = %e, "removing the sandbox");
        }
        if let Err(e) = self.shared.network.detach(&self.uid).await {
            tracing::warn!(pod = %self.name(), error = %e, "removing the pod's network");
        }
        self.sandbox = None;
        self.ip = None;
    }

    /// Stops the pod: containers get SIGTERM, then SIGKILL after the grace period; the sandbox
    /// and network go; then the pod object is deleted for good (if `delete_object`).
    async fn terminate(&mut self, delete_object: bool) {
        let now = Instant::now();
        let init: Vec<ContainerView> = self.init.iter().map(|s| s.view(now)).collect();
        let containers: Vec<ContainerView> = self.containers.iter().map(|s| s.view(now)).collect();
        let termination = plan::termination(&self.pod, &init, &containers);
        for slot in self.init.iter().chain(self.containers.iter()) {
            if let Some(p) = slot.instance.as_ref().and_then(|i| i.probes.as_ref()) {
                p.cancel();
            }
        }
        let pod = self.pod.clone();
        let mut stops = Vec::new();
        for which in termination.stop {
            let slot = self.slot(which);
            let name = slot.spec.name.clone();
            let Some(container) = slot.instance.as_ref().map(|i| i.container.clone()) else {
                continue;
            };
            self.shared.events.pod(
                &pod,
                Some(&name),
                false,
                "Killing",
                &format!("Stopping container {name}"),
            );
            let (runtime, grace) = (self.shared.runtime.clone(), termination.grace);
            stops.push(tokio::task::spawn_blocking(move || {
                runtime.stop(&container, grace)
            }));
        }
        for stop in stops {
            if let Ok(Err(e)) = stop.await {
                tracing::warn!(pod = %self.name(), error = %e, "stopping a container");
            }
        }
        self.refresh().await;
        if delete_object {
            // As the kubelet's status manager does before the final delete: the stopped
            // containers and Ready=False reach the API, so a client waiting for the pod to go
            // not-ready (`kubectl wait --for=condition=Ready=false`) sees it. Bounded: an
            // unreachable API server cannot take the delete anyway.
            self.post_status();
            let written = self.shared.statuses.written(&self.uid);
            if tokio::time::timeout(FINAL_STATUS_WAIT, written)
                .await
                .is_err()
            {
                tracing::warn!(pod = %self.name(), "the final status was not written in time");
            }
        }
        self.remove_sandbox().await;
        self.shared.directory.remove(&self.uid);
        self.shared.tokens.forget_pod(&self.uid);
        if !delete_object {
            return;
        }
        // Graceful deletion completes: the kubelet deletes the object with grace 0.
        let api: Api<Pod> = Api::namespaced(
            self.shared.client.clone(),
            &meta_str(&self.pod, |m| m.namespace.as_ref()),
        );
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api
            .delete(&meta_str(&self.pod, |m| m.name.as_ref()), &params)
            .await
        {
            Ok(_) => tracing::info!(pod = %self.name(), "pod stopped and deleted"),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => tracing::warn!(pod = %self.name(), error = %e, "deleting the stopped pod"),
        }
    }

    fn current_status(&self) -> PodStatus {
        let mut status = self.base_status();
        status.ephemeral_container_statuses = (!self.ephemeral.is_empty())
            .then(|| self.ephemeral.iter().map(|s| s.record.to_k8s()).collect());
        status
    }

    fn base_status(&self) -> PodStatus {
        status::pod_status(
            &self.records(true),
            &self.records(false),
            &PodFacts {
                policy: self.policy,
                pod_ip: self
                    .ip
                    .filter(|_| self.terminal.is_none())
                    .map(|ip| ip.to_string()),
                host_ip: self.shared.host_ip.map(|ip| ip.to_string()),
                start_time: self.start_time,
                previous: self.posted.as_ref().or(self.pod.status.as_ref()),
                failure: self.rejected.clone(),
                terminal_phase: self.terminal,
            },
        )
    }

    /// Hands the status to the status writer when it differs from what was last handed over,
    /// or when the API's copy has changed since and disagrees (the node lifecycle controller
    /// marks pods not ready when the node looks lost). Never waits for the API server.
    fn post_status(&mut self) {
        let status = self.current_status();
        let api_agrees = self
            .pod
            .status
            .as_ref()
            .is_some_and(|api| status::summary(api) == status::summary(&status));
        let api_changed = self.pod.metadata.resource_version != self.posted_at;
        if self.posted.as_ref() == Some(&status) && (api_agrees || !api_changed) {
            return;
        }
        self.shared.statuses.set(
            &self.uid,
            &meta_str(&self.pod, |m| m.namespace.as_ref()),
            &meta_str(&self.pod, |m| m.name.as_ref()),
            status.clone(),
        );
        self.posted = Some(status);
        self.posted_at = self.pod.metadata.resource_version.clone();
    }

    /// Tells the node's HTTP endpoints where this pod's containers and logs are.
    fn publish(&self) {
        let mut pod = self.pod.clone();
        pod.status = Some(self.posted.clone().unwrap_or_else(|| self.current_status()));
        let containers: BTreeMap<String, directory::Entry> = self
            .init
            .iter()
            .chain(self.containers.iter())
            .chain(self.ephemeral.iter())
            .map(|s| {
                (
                    s.spec.name.clone(),
                    directory::Entry {
                        running: s
                            .instance
                            .as_ref()
                            .filter(|_| matches!(s.record.state, State::Running { .. }))
                            .map(|i| i.container.clone()),
                        restart_count: s.record.restart_count,
                        started: s.instance.is_some() || s.record.container_id.is_some(),
                    },
                )
            })
            .collect();
        self.shared.directory.update(&self.uid, pod, containers);
    }
}

/// How long a stopped pod's final status may hold up its deletion.
const FINAL_STATUS_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A reference without its tag (`docker.io/library/busybox:latest` -> `docker.io/library/busybox`).
fn repository(reference: &str) -> &str {
    let name = reference.split('@').next().unwrap_or(reference);
    match name.rfind(':') {
        Some(i) if !name[i..].contains('/') => &name[..i],
        _ => name,
    }
}

/// The pod's hostname: spec.hostname or the pod's name, cut to a DNS label.
fn pod_hostname(pod: &Pod) -> String {
    let name = pod
        .spec
        .as_ref()
        .and_then(|s| s.hostname.clone())
        .or_else(|| pod.metadata.name.clone())
        .unwrap_or_else(|| "pod".into());
    let mut h: String = name.chars().take(63).collect();
    while h.ends_with(['-', '.']) {
        h.pop();
    }
    if h.is_empty() {
        "pod".into()
    } else {
        h
    }
}

/// Longest kernel hostname (HOST_NAME_MAX + 1, as the kubelet counts).
const MAX_FQDN_HOSTNAME: usize = 64;

/// The sandbox's kernel hostname: the pod's hostname, or with `setHostnameAsFQDN` and a
/// subdomain its FQDN (`web-0.nginx.prod.svc.cluster.local`), refused past 64 characters with
/// the kubelet's message.
fn sandbox_hostname(pod: &Pod, cluster_domain: &str) -> Result<String, String> {
    let hostname = pod_hostname(pod);
    let spec = pod.spec.as_ref();
    let subdomain = spec
        .and_then(|s| s.subdomain.as_deref())
        .filter(|s| !s.is_empty());
    let (Some(true), Some(subdomain)) = (spec.and_then(|s| s.set_hostname_as_fqdn), subdomain)
    else {
        return Ok(hostname);
    };
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let fqdn = format!("{hostname}.{subdomain}.{ns}.svc.{cluster_domain}");
    if fqdn.len() > MAX_FQDN_HOSTNAME {
        return Err(format!(
            "failed to construct FQDN from pod hostname and cluster domain, FQDN {fqdn} is too \
             long ({MAX_FQDN_HOSTNAME} characters is the max, {} characters requested)",
            fqdn.len()
        ));
    }
    Ok(fqdn)
}

#[cfg(test)]
mod tests;

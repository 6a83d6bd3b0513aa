//! A small kubelet for the single simulated node. It binds new pods, pulls images from the simulated
//! [`Registry`](crate::registry::Registry), resolves ConfigMap and Secret references, runs init containers
//! then containers, OOM-kills a container whose memory limit is below its need, lets scripted containers
//! exit with a code, restarts them with the kubelet's back-off, writes core/v1 events and container logs,
//! actuates in-place resizes and finishes graceful deletes.
//!
//! What a container does is driven by annotations on its pod (see [`annotations`]); a pod without them
//! simply runs.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use jiff::Timestamp;
use k8s_openapi::{
    api::core::v1::{
        Container, ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
        ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
    },
    apimachinery::pkg::apis::meta::v1::Time,
};
use kubesent_proto::MemoryQuantity;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{
    api_error::ApiError,
    pods::{self, LogOptions},
    registry::{PullError, Registry},
    resources::{CONFIGMAPS, EVENTS, PODS, SECRETS},
    store::{Mutation, Store},
};

/// Pod annotations that script the simulated containers. Each also exists per container as
/// `<annotation>.<container name>`, which wins over the pod-wide one.
pub mod annotations {
    /// Memory the container needs (`200Mi`); with a lower memory limit it is OOM-killed (exit 137).
    pub const MEMORY_NEED: &str = "sim.kubesent.io/memory-need";
    /// Exit code the container ends with after [`RUN_SECONDS`] (0 completes, anything else crashes).
    pub const EXIT_CODE: &str = "sim.kubesent.io/exit-code";
    /// Simulated seconds the container runs before it exits or is OOM-killed (default 2).
    pub const RUN_SECONDS: &str = "sim.kubesent.io/run-seconds";
    /// Log lines (newline-separated) each container instance writes after starting.
    pub const LOGS: &str = "sim.kubesent.io/logs";
}

/// Timings of the simulated kubelet, in simulated time (scaled by [`SimClock`]).
mod timing {
    use std::time::Duration;
    /// From creation to the scheduler's binding.
    pub const SCHEDULE: Duration = Duration::from_millis(100);
    /// Creating and starting a container.
    pub const CONTAINER_START: Duration = Duration::from_millis(500);
    /// Pulling an image not yet on the node.
    pub const IMAGE_PULL: Duration = Duration::from_millis(800);
    /// Default run time before a scripted exit or an OOM kill.
    pub const RUN: Duration = Duration::from_secs(2);
    /// How long an init container without a script takes to complete.
    pub const INIT_RUN: Duration = Duration::from_millis(300);
    /// How long containers take to stop after a graceful delete (capped by the grace period).
    pub const SHUTDOWN: Duration = Duration::from_secs(1);
    /// First back-off (crash loop and image pull); doubles per failure.
    pub const BACKOFF_BASE: Duration = Duration::from_secs(10);
    /// Back-off cap.
    pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
    /// Retry interval for container configuration errors (the pod sync period).
    pub const CONFIG_RETRY: Duration = Duration::from_secs(10);
    /// Time the kubelet takes to actuate an in-place resize.
    pub const RESIZE: Duration = Duration::from_millis(500);
}

/// Scales simulated durations to wall-clock ones, so tests can run the kubelet fast.
#[derive(Debug, Clone, Copy)]
pub struct SimClock {
    scale: f64,
}

impl SimClock {
    /// `scale` = wall-clock seconds per simulated second (1.0 = real time, 0.01 = 100× faster).
    pub fn new(scale: f64) -> Self {
        let scale = if scale.is_finite() && scale > 0.0 { scale } else { 1.0 };
        Self { scale }
    }

    /// The wall-clock duration of a simulated one.
    pub fn scaled(&self, simulated: Duration) -> Duration {
        simulated.mul_f64(self.scale)
    }
}

/// The back-off before retry number `failures` (1-based): the first retry is immediate, then 10 s
/// doubling to a 5 min cap.
pub fn backoff_after(failures: u32) -> Duration {
    if failures <= 1 {
        return Duration::ZERO;
    }
    let factor = 1u32.checked_shl(failures - 2).unwrap_or(u32::MAX);
    timing::BACKOFF_BASE.saturating_mul(factor).min(timing::BACKOFF_MAX)
}

/// Formats a back-off as kubelet does (`10s`, `1m20s`, `5m0s`).
fn go_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 60 { format!("{}m{}s", secs / 60, secs % 60) } else { format!("{secs}s") }
}

#[derive(Debug, Clone)]
struct LogLine {
    at: Timestamp,
    text: String,
}

struct PodRuntime {
    cancel: CancellationToken,
    /// Bumped on every spec change (image update, resize).
    spec_version: watch::Sender<u64>,
    /// Log lines by container id.
    logs: Mutex<HashMap<String, Vec<LogLine>>>,
}

impl Default for PodRuntime {
    fn default() -> Self {
        Self {
            cancel: CancellationToken::new(),
            spec_version: watch::Sender::new(0),
            logs: Mutex::new(HashMap::new()),
        }
    }
}

/// Why a wait ended.
#[derive(Debug, PartialEq, Eq)]
enum Wake {
    Elapsed,
    SpecChanged,
    Cancelled,
}

/// The simulated kubelet of the single simulated node.
pub struct Kubelet {
    store: Arc<Store>,
    registry: Arc<Registry>,
    clock: SimClock,
    node: String,
    node_memory: MemoryQuantity,
    runtimes: Mutex<HashMap<String, Arc<PodRuntime>>>,
    /// Event names for aggregation, by (pod uid, reason, container, message).
    events: Mutex<HashMap<(String, String, String, String), String>>,
    /// Images already on the node.
    pulled: Mutex<HashSet<String>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a container instance will do, read from its pod's annotations.
#[derive(Debug, Clone, PartialEq)]
struct Script {
    memory_need: Option<MemoryQuantity>,
    exit_code: Option<i32>,
    run_for: Duration,
    logs: Vec<String>,
}

fn annotation<'a>(pod: &'a Pod, key: &str, container: &str) -> Option<&'a String> {
    let annotations = pod.metadata.annotations.as_ref()?;
    annotations.get(&format!("{key}.{container}")).or_else(|| annotations.get(key))
}

fn script(pod: &Pod, container: &str) -> Script {
    Script {
        memory_need: annotation(pod, annotations::MEMORY_NEED, container)
            .and_then(|t| MemoryQuantity::parse(t).ok()),
        exit_code: annotation(pod, annotations::EXIT_CODE, container).and_then(|t| t.trim().parse().ok()),
        run_for: annotation(pod, annotations::RUN_SECONDS, container)
            .and_then(|t| t.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map_or(timing::RUN, Duration::from_secs_f64),
        logs: annotation(pod, annotations::LOGS, container)
            .map(|t| t.lines().map(str::to_owned).collect())
            .unwrap_or_default(),
    }
}

/// The simulated memory need of a container, from its pod's annotations.
pub fn memory_need(pod: &Pod, container: &str) -> Option<MemoryQuantity> {
    script(pod, container).memory_need
}

/// How a container instance ended.
struct Termination {
    reason: String,
    exit_code: i32,
    /// Kill it restarts with no crash counted (a spec change).
    replaced: bool,
}

impl Kubelet {
    /// A kubelet for node `node` with `node_memory` allocatable.
    pub fn new(
        store: Arc<Store>,
        registry: Arc<Registry>,
        clock: SimClock,
        node: impl Into<String>,
        node_memory: MemoryQuantity,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            registry,
            clock,
            node: node.into(),
            node_memory,
            runtimes: Mutex::new(HashMap::new()),
            events: Mutex::new(HashMap::new()),
            pulled: Mutex::new(HashSet::new()),
        })
    }

    fn runtime(&self, uid: &str) -> Arc<PodRuntime> {
        lock(&self.runtimes).entry(uid.to_owned()).or_default().clone()
    }

    /// Waits for a simulated duration, a spec change or cancellation.
    async fn wait(
        &self,
        runtime: &PodRuntime,
        spec: &mut watch::Receiver<u64>,
        simulated: Option<Duration>,
    ) -> Wake {
        let sleep = async {
            match simulated {
                Some(d) => tokio::time::sleep(self.clock.scaled(d)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = sleep => Wake::Elapsed,
            changed = spec.changed() => if changed.is_ok() { Wake::SpecChanged } else { Wake::Cancelled },
            () = runtime.cancel.cancelled() => Wake::Cancelled,
        }
    }

    /// Starts running a newly created pod.
    pub fn admit(self: &Arc<Self>, namespace: &str, name: &str, uid: &str) {
        let kubelet = self.clone();
        let (namespace, name, uid) = (namespace.to_owned(), name.to_owned(), uid.to_owned());
        tokio::spawn(async move { kubelet.run_pod(namespace, name, uid).await });
    }

    /// Tells the pod's containers that its spec changed (image update or resize).
    pub fn spec_changed(&self, uid: &str) {
        if let Some(runtime) = lock(&self.runtimes).get(uid) {
            runtime.spec_version.send_modify(|v| *v += 1);
        }
    }

    /// Stops a pod that was deleted immediately.
    pub fn forget(&self, uid: &str) {
        if let Some(runtime) = lock(&self.runtimes).remove(uid) {
            runtime.cancel.cancel();
        }
    }

    /// Stops a pod's containers and completes its graceful deletion after at most `grace` seconds.
    pub fn terminate(self: &Arc<Self>, namespace: &str, name: &str, uid: &str, grace: i64) {
        let kubelet = self.clone();
        let (namespace, name, uid) = (namespace.to_owned(), name.to_owned(), uid.to_owned());
        tokio::spawn(async move {
            let runtime = kubelet.runtime(&uid);
            runtime.cancel.cancel();
            if let Ok(pod) = kubelet.get_pod(&namespace, &name) {
                for container in pod.spec.iter().flat_map(|s| s.containers.iter()) {
                    kubelet.event(
                        &pod,
                        &container.name,
                        "Normal",
                        "Killing",
                        format!("Stopping container {}", container.name),
                    );
                }
            }
            let stop = timing::SHUTDOWN.min(Duration::from_secs(grace.max(0).unsigned_abs()));
            tokio::time::sleep(kubelet.clock.scaled(stop)).await;
            let now = Timestamp::now();
            kubelet.update_pod(&namespace, &name, &uid, |pod| {
                if let Some(status) = pod.status.as_mut() {
                    for cs in status.container_statuses.iter_mut().flatten() {
                        if cs.state.as_ref().is_some_and(|s| s.running.is_some()) {
                            cs.state = Some(terminated(
                                Termination { reason: "Completed".into(), exit_code: 0, replaced: false },
                                cs.container_id.clone(),
                                now,
                                now,
                            ));
                        }
                        cs.ready = false;
                        cs.started = Some(false);
                    }
                    set_condition(status, "Ready", "False", Some("PodCompleted"), None, now);
                    set_condition(status, "ContainersReady", "False", Some("PodCompleted"), None, now);
                }
            });
            // The kubelet deletes with a uid precondition, so a newer pod of the same name survives.
            let _ = kubelet.store.mutate(&PODS, &namespace, &name, |current| match current {
                Some(object) if object.uid == uid => Ok(Mutation::Delete),
                _ => Ok(Mutation::Unchanged),
            });
            kubelet.forget(&uid);
        });
    }

    fn get_pod(&self, namespace: &str, name: &str) -> Result<Pod, ApiError> {
        self.store.get(&PODS, namespace, name)?.typed()
    }

    /// The live pod if it still exists with `uid` and is not being deleted.
    fn live_pod(&self, namespace: &str, name: &str, uid: &str) -> Option<Pod> {
        self.get_pod(namespace, name)
            .ok()
            .filter(|p| p.metadata.uid.as_deref() == Some(uid) && p.metadata.deletion_timestamp.is_none())
    }

    /// Applies `change` to the pod if it still exists with `uid`; false if it does not.
    fn update_pod(&self, namespace: &str, name: &str, uid: &str, change: impl FnOnce(&mut Pod)) -> bool {
        let mut applied = false;
        let result = self.store.mutate(&PODS, namespace, name, |current| {
            let Some(current) = current.filter(|o| o.uid == uid) else { return Ok(Mutation::Unchanged) };
            let mut pod: Pod = current.typed()?;
            change(&mut pod);
            applied = true;
            Ok(Mutation::Put(serde_json::to_value(&pod).map_err(ApiError::internal)?))
        });
        result.is_ok() && applied
    }

    async fn run_pod(self: Arc<Self>, namespace: String, name: String, uid: String) {
        let runtime = self.runtime(&uid);
        let mut spec = runtime.spec_version.subscribe();
        if self.wait(&runtime, &mut spec, Some(timing::SCHEDULE)).await == Wake::Cancelled {
            return;
        }
        let node = self.node.clone();
        let now = Timestamp::now();
        let bound = self.update_pod(&namespace, &name, &uid, |pod| {
            if let Some(spec) = pod.spec.as_mut() {
                spec.node_name.get_or_insert_with(|| node.clone());
            }
            let status = pod.status.get_or_insert_with(Default::default);
            set_condition(status, "PodScheduled", "True", None, None, now);
        });
        let Some(pod) = bound.then(|| self.live_pod(&namespace, &name, &uid)).flatten() else { return };
        self.event(
            &pod,
            "",
            "Normal",
            "Scheduled",
            format!("Successfully assigned {namespace}/{name} to {node}"),
        );
        let ip_seed = fnv(&uid);
        let pod_ip = format!("10.244.{}.{}", (ip_seed >> 8) % 250, ip_seed % 250 + 2);
        let init_names: Vec<String> = pod
            .spec
            .iter()
            .flat_map(|s| s.init_containers.iter().flatten())
            .map(|c| c.name.clone())
            .collect();
        let names: Vec<String> =
            pod.spec.iter().flat_map(|s| s.containers.iter()).map(|c| c.name.clone()).collect();
        self.update_pod(&namespace, &name, &uid, |pod| {
            let images: HashMap<String, String> = pod
                .spec
                .iter()
                .flat_map(|s| s.init_containers.iter().flatten().chain(s.containers.iter()))
                .map(|c| (c.name.clone(), c.image.clone().unwrap_or_default()))
                .collect();
            let generation = pod.metadata.generation;
            let status = pod.status.get_or_insert_with(Default::default);
            status.host_ip = Some("10.0.0.11".into());
            status.host_ips = Some(vec![HostIP { ip: "10.0.0.11".into() }]);
            status.pod_ip = Some(pod_ip.clone());
            status.pod_ips = Some(vec![PodIP { ip: pod_ip.clone() }]);
            status.start_time = Some(Time(now));
            status.observed_generation = generation;
            set_condition(status, "PodReadyToStartContainers", "True", None, None, now);
            let initialized = if init_names.is_empty() { "True" } else { "False" };
            set_condition(
                status,
                "Initialized",
                initialized,
                (!init_names.is_empty()).then_some("ContainersNotInitialized"),
                None,
                now,
            );
            set_condition(status, "Ready", "False", Some("ContainersNotReady"), None, now);
            set_condition(status, "ContainersReady", "False", Some("ContainersNotReady"), None, now);
            let waiting = |n: &String, reason: &str| ContainerStatus {
                name: n.clone(),
                image: images.get(n).cloned().unwrap_or_default(),
                image_id: String::new(),
                ready: false,
                started: Some(false),
                restart_count: 0,
                state: Some(waiting_state(reason, None)),
                ..Default::default()
            };
            status.init_container_statuses = (!init_names.is_empty())
                .then(|| init_names.iter().map(|n| waiting(n, "PodInitializing")).collect());
            let first = if init_names.is_empty() { "ContainerCreating" } else { "PodInitializing" };
            status.container_statuses = Some(names.iter().map(|n| waiting(n, first)).collect());
        });
        for init in &init_names {
            if !self.clone().run_container(&namespace, &name, &uid, init, true).await {
                return;
            }
        }
        if !init_names.is_empty() {
            let now = Timestamp::now();
            self.update_pod(&namespace, &name, &uid, |pod| {
                if let Some(status) = pod.status.as_mut() {
                    set_condition(status, "Initialized", "True", None, None, now);
                    for cs in status.container_statuses.iter_mut().flatten() {
                        cs.state = Some(waiting_state("ContainerCreating", None));
                    }
                }
            });
        }
        for container in names {
            let kubelet = self.clone();
            let (namespace, name, uid) = (namespace.clone(), name.clone(), uid.clone());
            tokio::spawn(
                async move { kubelet.run_container(&namespace, &name, &uid, &container, false).await },
            );
        }
        let kubelet = self.clone();
        tokio::spawn(async move { kubelet.actuate_resizes(namespace, name, uid).await });
    }

    /// Runs one container through pulls, configuration, runs and restarts. For an init container it
    /// returns true once the container completed; for a regular container it returns when the pod stops.
    async fn run_container(
        self: Arc<Self>,
        namespace: &str,
        name: &str,
        uid: &str,
        container: &str,
        init: bool,
    ) -> bool {
        let runtime = self.runtime(uid);
        let mut spec = runtime.spec_version.subscribe();
        let mut restarts = 0i32;
        let mut crashes = 0u32;
        let mut pull_failures = 0u32;
        let mut instance = 0u32;
        loop {
            let Some(pod) = self.live_pod(namespace, name, uid) else { return false };
            let Some(spec_container) = pods::container(&pod, container).cloned() else { return false };
            let image = spec_container.image.clone().unwrap_or_default();
            // Image pull.
            if let Err(error) = self.pull(&pod, &spec_container) {
                let wait = match error {
                    PullError::InvalidName(message) => {
                        self.event(&pod, container, "Warning", "InspectFailed", message.clone());
                        self.event(&pod, container, "Warning", "Failed", "Error: InvalidImageName".into());
                        self.set_state(namespace, name, uid, container, init, |cs| {
                            cs.state = Some(waiting_state("InvalidImageName", Some(message)))
                        });
                        None
                    }
                    PullError::Failed(message) => {
                        pull_failures += 1;
                        self.event(
                            &pod,
                            container,
                            "Warning",
                            "Failed",
                            format!("Failed to pull image {image:?}: {message}"),
                        );
                        self.event(&pod, container, "Warning", "Failed", "Error: ErrImagePull".into());
                        self.set_state(namespace, name, uid, container, init, |cs| {
                            cs.state = Some(waiting_state("ErrImagePull", Some(message.clone())))
                        });
                        let delay = backoff_after(pull_failures + 1);
                        self.event(
                            &pod,
                            container,
                            "Normal",
                            "BackOff",
                            format!("Back-off pulling image {image:?}"),
                        );
                        self.event(&pod, container, "Warning", "Failed", "Error: ImagePullBackOff".into());
                        self.set_state(namespace, name, uid, container, init, |cs| {
                            cs.state = Some(waiting_state(
                                "ImagePullBackOff",
                                Some(format!("Back-off pulling image {image:?}: ErrImagePull: {message}")),
                            ));
                        });
                        Some(delay)
                    }
                };
                match self.wait(&runtime, &mut spec, wait).await {
                    Wake::Cancelled => return false,
                    Wake::SpecChanged => pull_failures = 0,
                    Wake::Elapsed => {}
                }
                continue;
            }
            pull_failures = 0;
            // Configuration (ConfigMap and Secret references).
            if let Some(message) = self.config_error(&pod, &spec_container) {
                self.event(&pod, container, "Warning", "Failed", format!("Error: {message}"));
                self.set_state(namespace, name, uid, container, init, |cs| {
                    cs.state = Some(waiting_state("CreateContainerConfigError", Some(message.clone())))
                });
                if self.wait(&runtime, &mut spec, Some(timing::CONFIG_RETRY)).await == Wake::Cancelled {
                    return false;
                }
                continue;
            }
            match self.wait(&runtime, &mut spec, Some(timing::CONTAINER_START)).await {
                Wake::Cancelled => return false,
                Wake::SpecChanged => continue,
                Wake::Elapsed => {}
            }
            let Some(pod) = self.live_pod(namespace, name, uid) else { return false };
            self.event(&pod, container, "Normal", "Created", format!("Created container: {container}"));
            self.event(&pod, container, "Normal", "Started", format!("Started container {container}"));
            let cid = container_id(uid, container, instance);
            instance += 1;
            let started_at = Timestamp::now();
            let script = script(&pod, container);
            let mut lines = vec![format!("starting {container} (image {image})")];
            lines.extend(script.logs.iter().cloned());
            self.append_logs(&runtime, &cid, lines);
            let image_ref = image_id(&image);
            let resources = spec_container.resources.clone();
            let running_cid = cid.clone();
            let probed = readiness_delay(&spec_container).is_some();
            self.set_state(namespace, name, uid, container, init, |cs| {
                cs.state = Some(ContainerState {
                    running: Some(ContainerStateRunning { started_at: Some(Time(started_at)) }),
                    ..Default::default()
                });
                cs.container_id = Some(running_cid);
                cs.image = image.clone();
                cs.image_id = image_ref;
                cs.restart_count = restarts;
                // With a readiness probe the container turns ready after its first successful probe.
                cs.ready = !init && !probed;
                cs.started = Some(true);
                cs.resources = resources.clone();
                cs.allocated_resources = resources.as_ref().and_then(|r| r.requests.clone());
            });
            let termination = self
                .run_instance(&runtime, &mut spec, namespace, name, uid, container, &cid, &image, init)
                .await;
            let Some(termination) = termination else { return false };
            let finished_at = Timestamp::now();
            let replaced = termination.replaced;
            let failed = termination.exit_code != 0;
            let state = terminated(termination, Some(cid.clone()), started_at, finished_at);
            self.set_state(namespace, name, uid, container, init, |cs| {
                cs.state = Some(state.clone());
                cs.ready = false;
                cs.started = Some(false);
            });
            let restart_policy =
                pod.spec.as_ref().and_then(|s| s.restart_policy.clone()).unwrap_or_else(|| "Always".into());
            let restarts_after_this = replaced
                || match (init, restart_policy.as_str()) {
                    (true, "Never") => false,
                    (true, _) => failed,
                    (false, "Always") => true,
                    (false, "OnFailure") => failed,
                    _ => false,
                };
            if init && !failed {
                return true;
            }
            if !restarts_after_this {
                self.finish_pod_if_done(namespace, name, uid);
                return false;
            }
            restarts += 1;
            if replaced {
                self.set_state(namespace, name, uid, container, init, |cs| {
                    cs.last_state = Some(state.clone())
                });
                continue;
            }
            crashes += 1;
            let delay = backoff_after(crashes);
            if delay.is_zero() {
                self.set_state(namespace, name, uid, container, init, |cs| {
                    cs.last_state = Some(state.clone())
                });
                continue;
            }
            let message = format!(
                "back-off {} restarting failed container={container} pod={name}_{namespace}({uid})",
                go_duration(delay)
            );
            self.set_state(namespace, name, uid, container, init, |cs| {
                cs.last_state = Some(state.clone());
                cs.state = Some(waiting_state("CrashLoopBackOff", Some(message.clone())));
            });
            if let Some(pod) = self.live_pod(namespace, name, uid) {
                self.event(
                    &pod,
                    container,
                    "Warning",
                    "BackOff",
                    format!(
                        "Back-off restarting failed container {container} in pod {name}_{namespace}({uid})"
                    ),
                );
            }
            if self.wait(&runtime, &mut spec, Some(delay)).await == Wake::Cancelled {
                return false;
            }
        }
    }

    /// Runs one container instance until it ends; `None` when the pod stops first.
    #[allow(clippy::too_many_arguments)]
    async fn run_instance(
        &self,
        runtime: &PodRuntime,
        spec: &mut watch::Receiver<u64>,
        namespace: &str,
        name: &str,
        uid: &str,
        container: &str,
        cid: &str,
        image: &str,
        init: bool,
    ) -> Option<Termination> {
        let first = self.live_pod(namespace, name, uid)?;
        // Simulated time until the readiness probe first succeeds, and the part of the run already spent
        // waiting for it.
        let mut until_ready =
            if init { None } else { pods::container(&first, container).and_then(readiness_delay) };
        let mut spent = Duration::ZERO;
        let mut listening_logged = false;
        loop {
            let pod = self.live_pod(namespace, name, uid)?;
            let script = script(&pod, container);
            let limit = pods::container(&pod, container).and_then(pods::memory_limit);
            let oom = matches!((script.memory_need, limit), (Some(need), Some(limit)) if need > limit);
            let ends = if oom || script.exit_code.is_some() {
                Some(script.run_for.saturating_sub(spent))
            } else if init {
                Some(timing::INIT_RUN)
            } else {
                if !listening_logged {
                    self.append_logs(runtime, cid, vec!["ready: listening on :8080".into()]);
                    listening_logged = true;
                }
                None
            };
            let probe_first = until_ready.filter(|ready| ends.is_none_or(|end| *ready < end));
            match self.wait(runtime, spec, probe_first.or(ends)).await {
                Wake::Cancelled => return None,
                Wake::Elapsed if probe_first.is_some() => {
                    spent += probe_first.unwrap_or_default();
                    until_ready = None;
                    self.set_state(namespace, name, uid, container, init, |cs| {
                        if cs.state.as_ref().is_some_and(|s| s.running.is_some()) {
                            cs.ready = true;
                        }
                    });
                }
                Wake::SpecChanged => {
                    let pod = self.live_pod(namespace, name, uid)?;
                    let current =
                        pods::container(&pod, container).and_then(|c| c.image.clone()).unwrap_or_default();
                    if current != image {
                        self.event(
                            &pod,
                            container,
                            "Normal",
                            "Killing",
                            format!("Container {container} definition changed, will be restarted"),
                        );
                        return Some(Termination {
                            reason: "Completed".into(),
                            exit_code: 0,
                            replaced: true,
                        });
                    }
                    // A resize: evaluate the new limit from the start of the run.
                }
                Wake::Elapsed => {
                    if oom {
                        let zero = MemoryQuantity::from_bytes(0);
                        let (need, limit) = (script.memory_need.unwrap_or(zero), limit.unwrap_or(zero));
                        self.append_logs(
                            runtime,
                            cid,
                            vec![
                                format!(
                                    "working set {} of limit {limit}",
                                    MemoryQuantity::from_bytes(
                                        limit.bytes().saturating_sub(MemoryQuantity::MIB)
                                    )
                                ),
                                format!(
                                    "allocating {} for request cache",
                                    MemoryQuantity::from_bytes(
                                        need.bytes().saturating_sub(limit.bytes()).max(MemoryQuantity::MIB)
                                    )
                                ),
                            ],
                        );
                        return Some(Termination {
                            reason: "OOMKilled".into(),
                            exit_code: 137,
                            replaced: false,
                        });
                    }
                    let exit_code = script.exit_code.unwrap_or(0);
                    let reason = if exit_code == 0 { "Completed" } else { "Error" };
                    if exit_code != 0 {
                        self.append_logs(
                            runtime,
                            cid,
                            vec![format!("fatal: exiting with status {exit_code}")],
                        );
                    }
                    return Some(Termination { reason: reason.into(), exit_code, replaced: false });
                }
            }
        }
    }

    fn pull(&self, pod: &Pod, container: &Container) -> Result<(), PullError> {
        let image = container.image.clone().unwrap_or_default();
        let policy = container.image_pull_policy.as_deref().unwrap_or("IfNotPresent");
        let cached = lock(&self.pulled).contains(&image);
        if cached && policy != "Always" {
            self.event(
                pod,
                &container.name,
                "Normal",
                "Pulled",
                format!("Container image {image:?} already present on machine"),
            );
            return Ok(());
        }
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let authorized = pod
            .spec
            .iter()
            .flat_map(|s| s.image_pull_secrets.iter().flatten())
            .any(|secret| self.store.get(&SECRETS, &namespace, &secret.name).is_ok());
        self.event(pod, &container.name, "Normal", "Pulling", format!("Pulling image {image:?}"));
        self.registry.pull(&image, authorized)?;
        lock(&self.pulled).insert(image.clone());
        let took = self.clock.scaled(timing::IMAGE_PULL).max(Duration::from_millis(1));
        self.event(
            pod,
            &container.name,
            "Normal",
            "Pulled",
            format!("Successfully pulled image {image:?} in {:.3}s", took.as_secs_f64()),
        );
        Ok(())
    }

    /// The kubelet's error for a missing ConfigMap/Secret or key the container needs, if any.
    fn config_error(&self, pod: &Pod, container: &Container) -> Option<String> {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let data = |def, name: &str| -> Option<Value> {
            self.store.get(def, &namespace, name).ok().map(|o| o.value())
        };
        let has_key = |object: &Value, key: &str| {
            ["data", "binaryData", "stringData"]
                .iter()
                .any(|field| object.get(*field).and_then(|d| d.get(key)).is_some())
        };
        for env in container.env.iter().flatten() {
            let Some(source) = &env.value_from else { continue };
            if let Some(r) = &source.config_map_key_ref
                && !r.optional.unwrap_or(false)
            {
                match data(&CONFIGMAPS, &r.name) {
                    None => return Some(format!("configmap {:?} not found", r.name)),
                    Some(cm) if !has_key(&cm, &r.key) => {
                        return Some(format!(
                            "couldn't find key {} in ConfigMap {namespace}/{}",
                            r.key, r.name
                        ));
                    }
                    Some(_) => {}
                }
            }
            if let Some(r) = &source.secret_key_ref
                && !r.optional.unwrap_or(false)
            {
                match data(&SECRETS, &r.name) {
                    None => return Some(format!("secret {:?} not found", r.name)),
                    Some(secret) if !has_key(&secret, &r.key) => {
                        return Some(format!("couldn't find key {} in Secret {namespace}/{}", r.key, r.name));
                    }
                    Some(_) => {}
                }
            }
        }
        for source in container.env_from.iter().flatten() {
            if let Some(r) = &source.config_map_ref
                && !r.optional.unwrap_or(false)
                && data(&CONFIGMAPS, &r.name).is_none()
            {
                return Some(format!("configmap {:?} not found", r.name));
            }
            if let Some(r) = &source.secret_ref
                && !r.optional.unwrap_or(false)
                && data(&SECRETS, &r.name).is_none()
            {
                return Some(format!("secret {:?} not found", r.name));
            }
        }
        None
    }

    /// Updates one container's status and recomputes the pod's phase and conditions.
    fn set_state(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        container: &str,
        init: bool,
        change: impl FnOnce(&mut ContainerStatus),
    ) {
        let now = Timestamp::now();
        self.update_pod(namespace, name, uid, |pod| {
            let Some(status) = pod.status.as_mut() else { return };
            let list = if init {
                status.init_container_statuses.as_mut()
            } else {
                status.container_statuses.as_mut()
            };
            if let Some(cs) = list.and_then(|l| l.iter_mut().find(|cs| cs.name == container)) {
                change(cs);
            }
            refresh_pod_phase(status, now);
        });
    }

    /// Sets `Succeeded`/`Failed` once every container of a pod that does not restart them has ended.
    fn finish_pod_if_done(&self, namespace: &str, name: &str, uid: &str) {
        self.update_pod(namespace, name, uid, |pod| {
            let Some(status) = pod.status.as_mut() else { return };
            let statuses = status.container_statuses.clone().unwrap_or_default();
            let init_failed = status.init_container_statuses.iter().flatten().any(|cs| {
                cs.state.as_ref().and_then(|s| s.terminated.as_ref()).is_some_and(|t| t.exit_code != 0)
            });
            let ended: Vec<i32> = statuses
                .iter()
                .filter_map(|cs| cs.state.as_ref()?.terminated.as_ref().map(|t| t.exit_code))
                .collect();
            if init_failed {
                status.phase = Some("Failed".into());
            } else if !statuses.is_empty() && ended.len() == statuses.len() {
                status.phase =
                    Some(if ended.iter().all(|c| *c == 0) { "Succeeded" } else { "Failed" }.into());
            }
        });
    }

    /// Actuates in-place resizes: when the desired resources differ from what the containers run with,
    /// reports `PodResizeInProgress` (or `PodResizePending`/`Infeasible`), then applies them.
    async fn actuate_resizes(self: Arc<Self>, namespace: String, name: String, uid: String) {
        let runtime = self.runtime(&uid);
        let mut spec = runtime.spec_version.subscribe();
        loop {
            if self.wait(&runtime, &mut spec, None).await == Wake::Cancelled {
                return;
            }
            let Some(pod) = self.live_pod(&namespace, &name, &uid) else { return };
            let desired: BTreeMap<String, _> = pod
                .spec
                .iter()
                .flat_map(|s| s.containers.iter())
                .map(|c| (c.name.clone(), c.resources.clone()))
                .collect();
            let actual: BTreeMap<String, _> = pod
                .status
                .iter()
                .flat_map(|s| s.container_statuses.iter().flatten())
                .map(|c| (c.name.clone(), c.resources.clone()))
                .collect();
            let pending: Vec<&String> = desired
                .keys()
                .filter(|n| actual.get(*n).is_some_and(|a| a.is_some() && desired.get(*n) != Some(a)))
                .collect();
            if pending.is_empty() {
                continue;
            }
            let requested: u64 = pod
                .spec
                .iter()
                .flat_map(|s| s.containers.iter())
                .filter_map(|c| c.resources.as_ref()?.requests.as_ref()?.get("memory"))
                .filter_map(|q| MemoryQuantity::parse(&q.0).ok())
                .map(MemoryQuantity::bytes)
                .sum();
            let now = Timestamp::now();
            if requested > self.node_memory.bytes() {
                let message = format!(
                    "Node didn't have enough capacity: memory, requested: {requested}, capacity: {}",
                    self.node_memory.bytes()
                );
                self.update_pod(&namespace, &name, &uid, |pod| {
                    if let Some(status) = pod.status.as_mut() {
                        set_condition(
                            status,
                            "PodResizePending",
                            "True",
                            Some("Infeasible"),
                            Some(message),
                            now,
                        );
                    }
                });
                continue;
            }
            self.update_pod(&namespace, &name, &uid, |pod| {
                if let Some(status) = pod.status.as_mut() {
                    remove_condition(status, "PodResizePending");
                    set_condition(status, "PodResizeInProgress", "True", None, None, now);
                }
            });
            if self.wait(&runtime, &mut spec, Some(timing::RESIZE)).await == Wake::Cancelled {
                return;
            }
            self.update_pod(&namespace, &name, &uid, |pod| {
                let generation = pod.metadata.generation;
                let desired: BTreeMap<String, _> = pod
                    .spec
                    .iter()
                    .flat_map(|s| s.containers.iter())
                    .map(|c| (c.name.clone(), c.resources.clone()))
                    .collect();
                if let Some(status) = pod.status.as_mut() {
                    for cs in status.container_statuses.iter_mut().flatten() {
                        if let Some(resources) = desired.get(&cs.name) {
                            cs.resources = resources.clone();
                            cs.allocated_resources = resources.as_ref().and_then(|r| r.requests.clone());
                        }
                    }
                    remove_condition(status, "PodResizeInProgress");
                    status.observed_generation = generation;
                }
            });
        }
    }

    fn append_logs(&self, runtime: &PodRuntime, cid: &str, lines: Vec<String>) {
        let mut logs = lock(&runtime.logs);
        let entry = logs.entry(cid.to_owned()).or_default();
        let now = Timestamp::now();
        entry.extend(lines.into_iter().map(|text| LogLine { at: now, text }));
    }

    /// Writes (or aggregates) a core/v1 event about the pod, as the kubelet does.
    fn event(&self, pod: &Pod, container: &str, type_: &str, reason: &str, message: String) {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let now = Timestamp::now();
        let key = (uid.clone(), reason.to_owned(), container.to_owned(), message.clone());
        let existing = lock(&self.events).get(&key).cloned();
        let name = existing.clone().unwrap_or_else(|| format!("{pod_name}.{:x}", now.as_nanosecond()));
        let field_path = (!container.is_empty()).then(|| format!("spec.containers{{{container}}}"));
        let component = if reason == "Scheduled" { "default-scheduler" } else { "kubelet" };
        let node = self.node.clone();
        let stamp = Time(now);
        let result = self.store.mutate(&EVENTS, &namespace, &name, |current| {
            let mut event = match current {
                Some(object) => object.value(),
                None => json!({
                    "metadata": {"name": name, "namespace": namespace, "uid": uuid::Uuid::new_v4().to_string(), "creationTimestamp": stamp},
                    "involvedObject": {"kind": "Pod", "namespace": namespace, "name": pod_name, "uid": uid, "apiVersion": "v1",
                        "resourceVersion": pod.metadata.resource_version, "fieldPath": field_path},
                    "reason": reason, "message": message, "source": {"component": component, "host": node},
                    "firstTimestamp": stamp, "count": 0, "type": type_, "eventTime": null,
                    "reportingComponent": component, "reportingInstance": if component == "kubelet" { node.as_str() } else { "" },
                }),
            };
            event["lastTimestamp"] = json!(stamp);
            event["count"] = json!(event["count"].as_i64().unwrap_or(0) + 1);
            Ok(Mutation::Put(event))
        });
        if result.is_ok() && existing.is_none() {
            lock(&self.events).insert(key, name);
        }
    }

    /// The body of a `pods/log` request, following kubelet's `validateContainerLogStatus`.
    pub fn logs(&self, pod: &Pod, options: &LogOptions) -> Result<String, ApiError> {
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let container = pods::log_container(pod, options.container.as_deref())?;
        if pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).is_none_or(str::is_empty) {
            return Ok(String::new());
        }
        let c = &container.name;
        let status = pod
            .status
            .iter()
            .flat_map(|s| {
                s.container_statuses.iter().flatten().chain(s.init_container_statuses.iter().flatten())
            })
            .find(|cs| cs.name == *c);
        let not_available =
            || ApiError::bad_request(format!("container {c:?} in pod {pod_name:?} is not available"));
        let Some(status) = status else { return Err(not_available()) };
        let state = status.state.clone().unwrap_or_default();
        let last = status.last_state.as_ref().and_then(|s| s.terminated.as_ref());
        let terminated_last = || {
            last.and_then(|t| t.container_id.clone()).ok_or_else(|| {
                ApiError::bad_request(format!("container {c:?} in pod {pod_name:?} is terminated"))
            })
        };
        let cid = if options.previous {
            last.and_then(|t| t.container_id.clone()).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "previous terminated container {c:?} in pod {pod_name:?} not found"
                ))
            })?
        } else if state.running.is_some() {
            status.container_id.clone().ok_or_else(not_available)?
        } else if let Some(terminated) = &state.terminated {
            match terminated.container_id.clone().filter(|id| !id.is_empty()) {
                Some(id) => id,
                None => terminated_last()?,
            }
        } else if last.is_some() {
            terminated_last()?
        } else if let Some(waiting) = &state.waiting {
            let why = match waiting.reason.as_deref() {
                Some("ErrImagePull") => "image can't be pulled".to_owned(),
                Some("ImagePullBackOff") => "trying and failing to pull image".to_owned(),
                other => other.unwrap_or_default().to_owned(),
            };
            return Err(ApiError::bad_request(format!(
                "container {c:?} in pod {pod_name:?} is waiting to start: {why}"
            )));
        } else {
            return Err(ApiError::bad_request(format!(
                "container {c:?} in pod {pod_name:?} is waiting to start - no logs yet"
            )));
        };
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let runtime = self.runtime(&uid);
        let lines = lock(&runtime.logs).get(&cid).cloned().unwrap_or_default();
        Ok(render_logs(&lines, options))
    }
}

fn render_logs(lines: &[LogLine], options: &LogOptions) -> String {
    let since = options.since_time.or_else(|| {
        options
            .since_seconds
            .and_then(|s| Timestamp::now().checked_sub(jiff::SignedDuration::from_secs(s)).ok())
    });
    let selected: Vec<&LogLine> = lines.iter().filter(|l| since.is_none_or(|s| l.at >= s)).collect();
    let start = options.tail_lines.map_or(0, |t| selected.len().saturating_sub(t));
    let mut out = String::new();
    for line in &selected[start..] {
        if options.timestamps {
            out.push_str(&format!("{} ", line.at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")));
        }
        out.push_str(&line.text);
        out.push('\n');
    }
    if let Some(limit) = options.limit_bytes
        && out.len() > limit
    {
        let mut cut = limit;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out
}

fn waiting_state(reason: &str, message: Option<String>) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting { reason: Some(reason.to_owned()), message }),
        ..Default::default()
    }
}

fn terminated(
    termination: Termination,
    container_id: Option<String>,
    started: Timestamp,
    finished: Timestamp,
) -> ContainerState {
    ContainerState {
        terminated: Some(ContainerStateTerminated {
            exit_code: termination.exit_code,
            reason: Some(termination.reason),
            started_at: Some(Time(started)),
            finished_at: Some(Time(finished)),
            container_id,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Simulated time from a container's start to its first successful readiness probe: `initialDelaySeconds`,
/// or one second without a delay (the kubelet probes shortly after start). `None` without a readiness
/// probe: the container is ready as soon as it runs.
fn readiness_delay(container: &Container) -> Option<Duration> {
    let probe = container.readiness_probe.as_ref()?;
    let delay = probe.initial_delay_seconds.unwrap_or(0).max(0);
    Some(Duration::from_secs(u64::try_from(delay).unwrap_or(0).max(1)))
}

/// Recomputes phase and readiness conditions from the container statuses.
fn refresh_pod_phase(status: &mut PodStatus, now: Timestamp) {
    let statuses = status.container_statuses.clone().unwrap_or_default();
    let all_ready = !statuses.is_empty() && statuses.iter().all(|cs| cs.ready);
    let any_started = statuses.iter().any(|cs| cs.container_id.is_some());
    if any_started && status.phase.as_deref() == Some("Pending") {
        status.phase = Some("Running".into());
    }
    let (value, reason) = if all_ready { ("True", None) } else { ("False", Some("ContainersNotReady")) };
    let message = (!all_ready).then(|| {
        let unready: Vec<&str> = statuses.iter().filter(|cs| !cs.ready).map(|cs| cs.name.as_str()).collect();
        format!("containers with unready status: [{}]", unready.join(" "))
    });
    set_condition(status, "Ready", value, reason, message.clone(), now);
    set_condition(status, "ContainersReady", value, reason, message, now);
}

fn set_condition(
    status: &mut PodStatus,
    type_: &str,
    value: &str,
    reason: Option<&str>,
    message: Option<String>,
    now: Timestamp,
) {
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != value {
                c.last_transition_time = Some(Time(now));
            }
            c.status = value.to_owned();
            c.reason = reason.map(str::to_owned);
            c.message = message;
        }
        None => conditions.push(PodCondition {
            type_: type_.to_owned(),
            status: value.to_owned(),
            reason: reason.map(str::to_owned),
            message,
            last_transition_time: Some(Time(now)),
            ..Default::default()
        }),
    }
}

fn remove_condition(status: &mut PodStatus, type_: &str) {
    if let Some(conditions) = status.conditions.as_mut() {
        conditions.retain(|c| c.type_ != type_);
    }
}

fn container_id(uid: &str, container: &str, instance: u32) -> String {
    format!("containerd://{:016x}{:08x}", fnv(&format!("{uid}/{container}")), instance)
}

fn image_id(image: &str) -> String {
    format!("{}@sha256:{:016x}", crate::registry::repository(image), fnv(image))
}

/// A small deterministic string hash for simulated ids.
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_follows_the_kubelet_schedule() {
        let secs: Vec<u64> = (1..=8).map(|n| backoff_after(n).as_secs()).collect();
        assert_eq!(secs, [0, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(go_duration(Duration::from_secs(80)), "1m20s");
        assert_eq!(go_duration(Duration::from_secs(300)), "5m0s");
        assert_eq!(backoff_after(u32::MAX).as_secs(), 300);
    }

    #[test]
    fn scripts_read_pod_wide_and_per_container_annotations() {
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "p", "annotations": {
            "sim.kubesent.io/memory-need": "200Mi", "sim.kubesent.io/exit-code.worker": "3",
            "sim.kubesent.io/run-seconds": "0.5", "sim.kubesent.io/logs.worker": "a\nb"}}}))
        .expect("pod");
        let app = script(&pod, "app");
        assert_eq!(app.memory_need, Some(MemoryQuantity::from_mib(200)));
        assert_eq!(app.exit_code, None);
        assert_eq!(app.run_for, Duration::from_millis(500));
        let worker = script(&pod, "worker");
        assert_eq!(worker.exit_code, Some(3));
        assert_eq!(worker.logs, ["a", "b"]);
    }
}

//! A small kubelet for every simulated node. It binds new pods, pulls images from the simulated
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
    nodes::Nodes,
    pods::{self, LogOptions},
    registry::{PullError, Registry},
    resources::{CONFIGMAPS, EVENTS, PODS, SECRETS},
    store::{Mutation, Store},
};

mod eviction;
mod images;
mod lifecycle;
mod logs;
mod resize;

use lifecycle::*;

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
    /// The container runtime cannot start the container: it ends at once with `StartError` (exit 128)
    /// and this message in its termination (`exec: "/app/server": stat /app/server: no such file or
    /// directory`), then crash-loops.
    pub const START_ERROR: &str = "sim.kubesent.io/start-error";
    /// Ephemeral storage the container writes after [`RUN_SECONDS`] (`2Gi`); beyond the pod's
    /// ephemeral-storage limits the kubelet evicts the pod.
    pub const DISK_USE: &str = "sim.kubesent.io/disk-use";
    /// The container's readiness probe never succeeds: the kubelet reports `Readiness probe failed:
    /// <this message>` (an `Unhealthy` event) and the container stays not ready. Needs a readiness probe.
    pub const READINESS_FAILURE: &str = "sim.kubesent.io/readiness-failure";
}

/// Timings of the simulated kubelet, in simulated time (scaled by [`SimClock`]).
mod timing {
    use std::time::Duration;
    /// From creation to the scheduler's binding.
    pub const SCHEDULE: Duration = Duration::from_millis(100);
    /// Creating and starting a container.
    pub const CONTAINER_START: Duration = Duration::from_millis(500);
    /// How often a pod no node has room for is tried again without a change in the cluster.
    pub const SCHEDULE_RETRY: Duration = Duration::from_secs(60);
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
    /// How often the eviction manager compares each node's memory use with its threshold.
    pub const EVICTION_CHECK: Duration = Duration::from_secs(10);
    /// Time the kubelet takes to actuate an in-place resize.
    pub const RESIZE: Duration = Duration::from_millis(500);
}

/// Scales simulated durations to wall-clock ones, so tests can run the kubelet fast.
#[derive(Debug, Clone, Copy)]
pub struct SimClock {
    scale: f64,
    /// The wall-clock time and instant the simulation started at: simulated time runs from there.
    origin: (jiff::Timestamp, std::time::Instant),
}

impl SimClock {
    /// `scale` = wall-clock seconds per simulated second (1.0 = real time, 0.01 = 100× faster).
    pub fn new(scale: f64) -> Self {
        let scale = if scale.is_finite() && scale > 0.0 { scale } else { 1.0 };
        Self { scale, origin: (jiff::Timestamp::now(), std::time::Instant::now()) }
    }

    /// The simulated time now (it started as the wall clock and runs `1 / scale` times as fast).
    pub fn now(&self) -> jiff::Timestamp {
        self.sim_time_of_elapsed(self.origin.1.elapsed())
    }

    /// The simulated time of wall-clock time `wall` (a creation timestamp).
    pub fn sim_time_of(&self, wall: jiff::Timestamp) -> jiff::Timestamp {
        let elapsed = wall.duration_since(self.origin.0).unsigned_abs();
        self.sim_time_of_elapsed(elapsed)
    }

    fn sim_time_of_elapsed(&self, elapsed: Duration) -> jiff::Timestamp {
        let simulated =
            jiff::SignedDuration::try_from(elapsed.div_f64(self.scale)).unwrap_or(jiff::SignedDuration::MAX);
        self.origin.0.checked_add(simulated).unwrap_or(self.origin.0)
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

/// The simulated kubelets of the cluster's nodes.
pub struct Kubelet {
    store: Arc<Store>,
    registry: Arc<Registry>,
    clock: SimClock,
    nodes: Arc<Nodes>,
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
    start_error: Option<String>,
    memory_need: Option<MemoryQuantity>,
    exit_code: Option<i32>,
    run_for: Duration,
    logs: Vec<String>,
    readiness_failure: Option<String>,
}

fn annotation<'a>(pod: &'a Pod, key: &str, container: &str) -> Option<&'a String> {
    let annotations = pod.metadata.annotations.as_ref()?;
    annotations.get(&format!("{key}.{container}")).or_else(|| annotations.get(key))
}

fn script(pod: &Pod, container: &str) -> Script {
    Script {
        start_error: annotation(pod, annotations::START_ERROR, container).cloned(),
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
        readiness_failure: annotation(pod, annotations::READINESS_FAILURE, container).cloned(),
    }
}

/// The simulated memory need of a container, from its pod's annotations.
pub fn memory_need(pod: &Pod, container: &str) -> Option<MemoryQuantity> {
    script(pod, container).memory_need
}

/// Where a pod runs.
struct Placed {
    /// Node name.
    name: String,
    /// The node's InternalIP (the pod's hostIP).
    address: String,
    /// Whether the pod named its node itself (no scheduler involved).
    preset: bool,
}

/// Memory a pod's containers use on their node (each one's simulated need where it is within its limit:
/// one over its limit is OOM-killed instead), and the container that uses most.
fn memory_use(pod: &Pod) -> (u64, String) {
    let uses: Vec<(u64, &str)> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .map(|c| {
            let need = script(pod, &c.name).memory_need;
            let within = need.filter(|need| pods::memory_limit(c).is_none_or(|l| *need <= l));
            (within.map_or(0, MemoryQuantity::bytes), c.name.as_str())
        })
        .collect();
    let main = uses.iter().max_by_key(|(bytes, _)| *bytes).map_or("", |(_, name)| name).to_owned();
    (uses.iter().map(|(bytes, _)| bytes).sum(), main)
}

/// How a container instance ended.
struct Termination {
    reason: String,
    exit_code: i32,
    /// Kill it restarts with no crash counted (a spec change).
    replaced: bool,
    /// The runtime's message (a start error's).
    message: Option<String>,
}

impl Kubelet {
    /// The simulated clock the kubelet and the controllers' timers run on.
    pub fn clock(&self) -> SimClock {
        self.clock
    }

    /// The kubelets of `nodes` (with the scheduler that places pods on them).
    pub fn new(store: Arc<Store>, registry: Arc<Registry>, clock: SimClock, nodes: Arc<Nodes>) -> Arc<Self> {
        Arc::new(Self {
            store,
            registry,
            clock,
            nodes,
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

    /// Stops a pod that was deleted immediately, and frees its room on its node.
    pub fn forget(&self, uid: &str) {
        if let Some(runtime) = lock(&self.runtimes).remove(uid) {
            runtime.cancel.cancel();
        }
        self.nodes.release(uid);
    }

    /// The nodes and the scheduler.
    pub fn nodes(&self) -> &Arc<Nodes> {
        &self.nodes
    }

    /// Stops a pod's containers and completes its graceful deletion after at most `grace` seconds.
    pub fn terminate(self: &Arc<Self>, namespace: &str, name: &str, uid: &str, grace: i64) {
        let kubelet = self.clone();
        let (namespace, name, uid) = (namespace.to_owned(), name.to_owned(), uid.to_owned());
        tokio::spawn(async move {
            let runtime = kubelet.runtime(&uid);
            runtime.cancel.cancel();
            let mut node = None;
            if let Ok(pod) = kubelet.get_pod(&namespace, &name) {
                node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
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
            // On an unreachable node nobody confirms the containers stopped: the pod stays Terminating
            // until the node is back (or someone force-deletes it, which does not wait for this).
            if let Some(node) = node {
                let mut changes = kubelet.nodes.subscribe();
                while kubelet.nodes.is_unreachable(&node) {
                    if changes.changed().await.is_err() {
                        return;
                    }
                }
            }
            let now = Timestamp::now();
            kubelet.update_pod(&namespace, &name, &uid, |pod| {
                if let Some(status) = pod.status.as_mut() {
                    for cs in status.container_statuses.iter_mut().flatten() {
                        if cs.state.as_ref().is_some_and(|s| s.running.is_some()) {
                            cs.state = Some(terminated(
                                Termination {
                                    reason: "Completed".into(),
                                    exit_code: 0,
                                    replaced: false,
                                    message: None,
                                },
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

//! A small kubelet: binds new pods to the simulated node, starts their containers, OOM-kills a
//! container whose memory limit is below its simulated need, restarts it with the kubelet's
//! crash-loop back-off, writes core/v1 events and container logs, and finishes graceful deletes.
//!
//! What a container does is driven by annotations on its pod (see [`annotations`]); a pod without
//! them simply runs.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use jiff::Timestamp;
use k8s_openapi::{
    api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
        ContainerStatus, HostIP, Pod, PodCondition, PodIP,
    },
    apimachinery::pkg::apis::meta::v1::Time,
};
use kubesent_proto::MemoryQuantity;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::{
    api_error::ApiError,
    pods::{self, LogOptions},
    resources::{EVENTS, PODS},
    store::{Mutation, Store},
};

/// Pod annotations that script the simulated containers.
pub mod annotations {
    /// Memory the containers need to run (`200Mi`); a container whose limit is lower is OOM-killed.
    /// `sim.kubesent.io/memory-need.<container>` sets it for one container.
    pub const MEMORY_NEED: &str = "sim.kubesent.io/memory-need";
    /// Extra log lines (newline-separated) each container instance writes after starting.
    /// `sim.kubesent.io/logs.<container>` sets them for one container.
    pub const LOGS: &str = "sim.kubesent.io/logs";
}

/// Timings of the simulated kubelet, in simulated time (scaled by [`SimClock`]).
mod timing {
    use std::time::Duration;
    /// From creation to the scheduler's binding.
    pub const SCHEDULE: Duration = Duration::from_millis(100);
    /// Image pull (already present) plus container creation.
    pub const CONTAINER_START: Duration = Duration::from_millis(500);
    /// How long an under-provisioned container runs before its working set passes the limit.
    pub const RUN_UNTIL_OOM: Duration = Duration::from_secs(2);
    /// How long containers take to stop after a graceful delete (capped by the grace period).
    pub const SHUTDOWN: Duration = Duration::from_secs(1);
    /// First crash-loop back-off; doubles per crash.
    pub const BACKOFF_BASE: Duration = Duration::from_secs(10);
    /// Crash-loop back-off cap.
    pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
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

    /// Sleeps for a simulated duration; false if cancelled first.
    pub async fn sleep(&self, simulated: Duration, cancel: &CancellationToken) -> bool {
        tokio::select! {
            () = tokio::time::sleep(self.scaled(simulated)) => true,
            () = cancel.cancelled() => false,
        }
    }
}

/// The crash-loop back-off before restart number `crashes` (1-based): the first restart is
/// immediate, then 10 s doubling to a 5 min cap.
pub fn backoff_after(crashes: u32) -> Duration {
    if crashes <= 1 {
        return Duration::ZERO;
    }
    let factor = 1u32.checked_shl(crashes - 2).unwrap_or(u32::MAX);
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

#[derive(Default)]
struct PodRuntime {
    cancel: CancellationToken,
    /// Log lines by container id.
    logs: Mutex<HashMap<String, Vec<LogLine>>>,
}

/// The simulated kubelet of the single simulated node.
pub struct Kubelet {
    store: Arc<Store>,
    clock: SimClock,
    node: String,
    runtimes: Mutex<HashMap<String, Arc<PodRuntime>>>,
    /// Event names for aggregation, by (pod uid, reason, container).
    events: Mutex<HashMap<(String, String, String), String>>,
}

impl Kubelet {
    /// A kubelet for node `node`.
    pub fn new(store: Arc<Store>, clock: SimClock, node: impl Into<String>) -> Arc<Self> {
        Arc::new(Self {
            store,
            clock,
            node: node.into(),
            runtimes: Mutex::new(HashMap::new()),
            events: Mutex::new(HashMap::new()),
        })
    }

    fn runtime(&self, uid: &str) -> Arc<PodRuntime> {
        let mut runtimes = self.runtimes.lock().unwrap_or_else(|p| p.into_inner());
        runtimes.entry(uid.to_owned()).or_default().clone()
    }

    /// Starts running a newly created pod.
    pub fn admit(self: &Arc<Self>, namespace: &str, name: &str, uid: &str) {
        let kubelet = self.clone();
        let (namespace, name, uid) = (namespace.to_owned(), name.to_owned(), uid.to_owned());
        tokio::spawn(async move { kubelet.run_pod(namespace, name, uid).await });
    }

    /// Stops a pod that was deleted immediately.
    pub fn forget(&self, uid: &str) {
        let runtime = self.runtimes.lock().unwrap_or_else(|p| p.into_inner()).remove(uid);
        if let Some(runtime) = runtime {
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
            if let Ok(pod) = kubelet.store.get(&PODS, &namespace, &name).and_then(|o| o.typed::<Pod>()) {
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
            let stop = timing::SHUTDOWN.min(Duration::from_secs(grace.max(0) as u64));
            tokio::time::sleep(kubelet.clock.scaled(stop)).await;
            let now = Timestamp::now();
            kubelet.update_pod(&namespace, &name, &uid, |pod| {
                if let Some(status) = pod.status.as_mut() {
                    for cs in status.container_statuses.iter_mut().flatten() {
                        if cs.state.as_ref().is_some_and(|s| s.running.is_some()) {
                            cs.state = Some(terminated_state("Completed", 0, cs.container_id.clone(), now));
                        }
                        cs.ready = false;
                        cs.started = Some(false);
                    }
                    set_condition(status, "Ready", "False", Some("PodCompleted"), now);
                    set_condition(status, "ContainersReady", "False", Some("PodCompleted"), now);
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
        if !self.clock.sleep(timing::SCHEDULE, &runtime.cancel).await {
            return;
        }
        let node = self.node.clone();
        let now = Timestamp::now();
        let bound = self.update_pod(&namespace, &name, &uid, |pod| {
            if let Some(spec) = pod.spec.as_mut() {
                spec.node_name.get_or_insert_with(|| node.clone());
            }
            let status = pod.status.get_or_insert_with(Default::default);
            set_condition(status, "PodScheduled", "True", None, now);
        });
        if !bound {
            return;
        }
        let Ok(pod) = self.store.get(&PODS, &namespace, &name).and_then(|o| o.typed::<Pod>()) else { return };
        self.event(
            &pod,
            "",
            "Normal",
            "Scheduled",
            format!("Successfully assigned {namespace}/{name} to {node}"),
        );
        let pod_ip = format!("10.244.{}.{}", (fxhash(&uid) >> 8) % 250, fxhash(&uid) % 250 + 2);
        self.update_pod(&namespace, &name, &uid, |pod| {
            let containers: Vec<(String, String)> = pod
                .spec
                .iter()
                .flat_map(|s| s.containers.iter())
                .map(|c| (c.name.clone(), c.image.clone().unwrap_or_default()))
                .collect();
            let init: Vec<(String, String)> = pod
                .spec
                .iter()
                .flat_map(|s| s.init_containers.iter().flatten())
                .map(|c| (c.name.clone(), c.image.clone().unwrap_or_default()))
                .collect();
            let status = pod.status.get_or_insert_with(Default::default);
            status.host_ip = Some("10.0.0.11".into());
            status.host_ips = Some(vec![HostIP { ip: "10.0.0.11".into() }]);
            status.pod_ip = Some(pod_ip.clone());
            status.pod_ips = Some(vec![PodIP { ip: pod_ip.clone() }]);
            status.start_time = Some(Time(now));
            set_condition(status, "PodReadyToStartContainers", "True", None, now);
            set_condition(status, "Initialized", "True", None, now);
            set_condition(status, "Ready", "False", Some("ContainersNotReady"), now);
            set_condition(status, "ContainersReady", "False", Some("ContainersNotReady"), now);
            status.init_container_statuses = (!init.is_empty()).then(|| {
                init.iter()
                    .map(|(n, image)| ContainerStatus {
                        name: n.clone(),
                        image: image.clone(),
                        image_id: image_id(image),
                        ready: true,
                        started: Some(false),
                        state: Some(terminated_state("Completed", 0, Some(container_id(&uid, n, 0)), now)),
                        ..Default::default()
                    })
                    .collect()
            });
            status.container_statuses = Some(
                containers
                    .iter()
                    .map(|(n, image)| ContainerStatus {
                        name: n.clone(),
                        image: image.clone(),
                        image_id: String::new(),
                        ready: false,
                        started: Some(false),
                        restart_count: 0,
                        state: Some(ContainerState {
                            waiting: Some(ContainerStateWaiting {
                                reason: Some("ContainerCreating".into()),
                                message: None,
                            }),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                    .collect(),
            );
        });
        let names: Vec<String> =
            pod.spec.iter().flat_map(|s| s.containers.iter()).map(|c| c.name.clone()).collect();
        for container in names {
            let kubelet = self.clone();
            let (namespace, name, uid) = (namespace.clone(), name.clone(), uid.clone());
            tokio::spawn(async move { kubelet.run_container(namespace, name, uid, container).await });
        }
    }

    async fn run_container(self: Arc<Self>, namespace: String, name: String, uid: String, container: String) {
        let runtime = self.runtime(&uid);
        let mut crashes = 0u32;
        let mut instance = 0u32;
        loop {
            if !self.clock.sleep(timing::CONTAINER_START, &runtime.cancel).await {
                return;
            }
            let Ok(pod) = self.store.get(&PODS, &namespace, &name).and_then(|o| o.typed::<Pod>()) else {
                return;
            };
            if pod.metadata.uid.as_deref() != Some(uid.as_str()) || pod.metadata.deletion_timestamp.is_some()
            {
                return;
            }
            let Some(spec) =
                pod.spec.as_ref().and_then(|s| s.containers.iter().find(|c| c.name == container))
            else {
                return;
            };
            let image = spec.image.clone().unwrap_or_default();
            let limit = pods::memory_limit(spec);
            let need = memory_need(&pod, &container);
            let restart_policy =
                pod.spec.as_ref().and_then(|s| s.restart_policy.clone()).unwrap_or_else(|| "Always".into());
            if instance == 0 {
                self.event(
                    &pod,
                    &container,
                    "Normal",
                    "Pulled",
                    format!("Container image \"{image}\" already present on machine"),
                );
            }
            self.event(&pod, &container, "Normal", "Created", format!("Created container: {container}"));
            self.event(&pod, &container, "Normal", "Started", format!("Started container {container}"));
            let cid = container_id(&uid, &container, instance);
            instance += 1;
            let started_at = Timestamp::now();
            let mut lines = vec![format!("starting {container} (image {image})")];
            lines.extend(scripted_lines(&pod, &container));
            let will_oom = matches!((need, limit), (Some(n), Some(l)) if n > l);
            if !will_oom {
                lines.push("ready: listening on :8080".into());
            }
            self.append_logs(&runtime, &cid, lines);
            let restarts = i32::try_from(crashes).unwrap_or(i32::MAX);
            let running_cid = cid.clone();
            self.update_pod(&namespace, &name, &uid, |pod| {
                let image_ref = image_id(&image);
                with_container_status(pod, &container, |cs| {
                    cs.state = Some(ContainerState {
                        running: Some(ContainerStateRunning { started_at: Some(Time(started_at)) }),
                        ..Default::default()
                    });
                    cs.container_id = Some(running_cid);
                    cs.image_id = image_ref;
                    cs.restart_count = restarts;
                    cs.ready = true;
                    cs.started = Some(true);
                    cs.resources = spec.resources.clone();
                    cs.allocated_resources = spec.resources.as_ref().and_then(|r| r.requests.clone());
                });
                refresh_pod_phase(pod, started_at);
            });
            let (Some(need), Some(limit)) = (need, limit) else {
                runtime.cancel.cancelled().await;
                return;
            };
            if need <= limit {
                runtime.cancel.cancelled().await;
                return;
            }
            if !self.clock.sleep(timing::RUN_UNTIL_OOM, &runtime.cancel).await {
                return;
            }
            self.append_logs(
                &runtime,
                &cid,
                vec![
                    format!(
                        "working set {} of limit {limit}",
                        MemoryQuantity::from_bytes(limit.bytes().saturating_sub(MemoryQuantity::MIB))
                    ),
                    format!(
                        "allocating {} for request cache",
                        MemoryQuantity::from_bytes(
                            need.bytes().saturating_sub(limit.bytes()).max(MemoryQuantity::MIB)
                        )
                    ),
                ],
            );
            crashes += 1;
            let finished_at = Timestamp::now();
            let oom = terminated_state_full("OOMKilled", 137, Some(cid.clone()), started_at, finished_at);
            let oom_for_status = oom.clone();
            self.update_pod(&namespace, &name, &uid, |pod| {
                with_container_status(pod, &container, |cs| {
                    cs.state = Some(oom_for_status);
                    cs.ready = false;
                    cs.started = Some(false);
                });
                refresh_pod_phase(pod, finished_at);
            });
            if restart_policy == "Never" {
                self.update_pod(&namespace, &name, &uid, |pod| {
                    if let Some(status) = pod.status.as_mut() {
                        status.phase = Some("Failed".into());
                    }
                });
                runtime.cancel.cancelled().await;
                return;
            }
            let delay = backoff_after(crashes);
            if delay.is_zero() {
                self.update_pod(&namespace, &name, &uid, |pod| {
                    with_container_status(pod, &container, |cs| cs.last_state = Some(oom.clone()));
                });
                continue;
            }
            let message = format!(
                "back-off {} restarting failed container={container} pod={name}_{namespace}({uid})",
                go_duration(delay)
            );
            let now = Timestamp::now();
            self.update_pod(&namespace, &name, &uid, |pod| {
                with_container_status(pod, &container, |cs| {
                    cs.last_state = Some(oom.clone());
                    cs.state = Some(ContainerState {
                        waiting: Some(ContainerStateWaiting {
                            reason: Some("CrashLoopBackOff".into()),
                            message: Some(message.clone()),
                        }),
                        ..Default::default()
                    });
                });
                refresh_pod_phase(pod, now);
            });
            if let Ok(pod) = self.store.get(&PODS, &namespace, &name).and_then(|o| o.typed::<Pod>()) {
                self.event(
                    &pod,
                    &container,
                    "Warning",
                    "BackOff",
                    format!(
                        "Back-off restarting failed container {container} in pod {name}_{namespace}({uid})"
                    ),
                );
            }
            if !self.clock.sleep(delay, &runtime.cancel).await {
                return;
            }
        }
    }

    fn append_logs(&self, runtime: &PodRuntime, cid: &str, lines: Vec<String>) {
        let mut logs = runtime.logs.lock().unwrap_or_else(|p| p.into_inner());
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
        let key = (uid.clone(), reason.to_owned(), container.to_owned());
        let existing = self.events.lock().unwrap_or_else(|p| p.into_inner()).get(&key).cloned();
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
                    "reason": reason, "source": {"component": component, "host": node},
                    "firstTimestamp": stamp, "count": 0, "type": type_, "eventTime": null,
                    "reportingComponent": component, "reportingInstance": if component == "kubelet" { node.as_str() } else { "" },
                }),
            };
            event["message"] = json!(message);
            event["lastTimestamp"] = json!(stamp);
            event["count"] = json!(event["count"].as_i64().unwrap_or(0) + 1);
            Ok(Mutation::Put(event))
        });
        if result.is_ok() && existing.is_none() {
            self.events.lock().unwrap_or_else(|p| p.into_inner()).insert(key, name);
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
        let logs = runtime.logs.lock().unwrap_or_else(|p| p.into_inner());
        let lines = logs.get(&cid).cloned().unwrap_or_default();
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

fn scripted_lines(pod: &Pod, container: &str) -> Vec<String> {
    let annotations = pod.metadata.annotations.as_ref();
    let specific = format!("{}.{container}", annotations::LOGS);
    annotations
        .and_then(|a| a.get(&specific).or_else(|| a.get(annotations::LOGS)))
        .map(|text| text.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// The simulated memory need of a container, from its pod's annotations.
pub fn memory_need(pod: &Pod, container: &str) -> Option<MemoryQuantity> {
    let annotations = pod.metadata.annotations.as_ref()?;
    let specific = format!("{}.{container}", annotations::MEMORY_NEED);
    let text = annotations.get(&specific).or_else(|| annotations.get(annotations::MEMORY_NEED))?;
    MemoryQuantity::parse(text).ok()
}

fn with_container_status(pod: &mut Pod, container: &str, change: impl FnOnce(&mut ContainerStatus)) {
    if let Some(cs) = pod
        .status
        .as_mut()
        .and_then(|s| s.container_statuses.as_mut())
        .and_then(|list| list.iter_mut().find(|cs| cs.name == container))
    {
        change(cs);
    }
}

/// Recomputes phase and readiness conditions from the container statuses.
fn refresh_pod_phase(pod: &mut Pod, now: Timestamp) {
    let Some(status) = pod.status.as_mut() else { return };
    let statuses = status.container_statuses.clone().unwrap_or_default();
    let all_ready = !statuses.is_empty() && statuses.iter().all(|cs| cs.ready);
    let any_started = statuses.iter().any(|cs| cs.container_id.is_some());
    if any_started && status.phase.as_deref() == Some("Pending") {
        status.phase = Some("Running".into());
    }
    let (value, reason) = if all_ready { ("True", None) } else { ("False", Some("ContainersNotReady")) };
    set_condition(status, "Ready", value, reason, now);
    set_condition(status, "ContainersReady", value, reason, now);
    if !all_ready {
        let unready: Vec<&str> = statuses.iter().filter(|cs| !cs.ready).map(|cs| cs.name.as_str()).collect();
        let message = format!("containers with unready status: [{}]", unready.join(" "));
        for condition in status.conditions.iter_mut().flatten() {
            if condition.type_ == "Ready" || condition.type_ == "ContainersReady" {
                condition.message = Some(message.clone());
            }
        }
    }
}

fn set_condition(
    status: &mut k8s_openapi::api::core::v1::PodStatus,
    type_: &str,
    value: &str,
    reason: Option<&str>,
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
            if value == "True" {
                c.message = None;
            }
        }
        None => conditions.push(PodCondition {
            type_: type_.to_owned(),
            status: value.to_owned(),
            reason: reason.map(str::to_owned),
            last_transition_time: Some(Time(now)),
            ..Default::default()
        }),
    }
}

fn terminated_state(
    reason: &str,
    exit_code: i32,
    container_id: Option<String>,
    now: Timestamp,
) -> ContainerState {
    terminated_state_full(reason, exit_code, container_id, now, now)
}

fn terminated_state_full(
    reason: &str,
    exit_code: i32,
    container_id: Option<String>,
    started: Timestamp,
    finished: Timestamp,
) -> ContainerState {
    ContainerState {
        terminated: Some(ContainerStateTerminated {
            exit_code,
            reason: Some(reason.to_owned()),
            started_at: Some(Time(started)),
            finished_at: Some(Time(finished)),
            container_id,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn container_id(uid: &str, container: &str, instance: u32) -> String {
    format!("containerd://{:016x}{:08x}", fxhash(&format!("{uid}/{container}")), instance)
}

fn image_id(image: &str) -> String {
    let repo = image.rsplit_once(':').map_or(image, |(r, _)| r);
    format!("{repo}@sha256:{:016x}", fxhash(image))
}

/// A small deterministic string hash for simulated ids.
fn fxhash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_loop_backoff_follows_the_kubelet_schedule() {
        let secs: Vec<u64> = (1..=8).map(|n| backoff_after(n).as_secs()).collect();
        assert_eq!(secs, [0, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(go_duration(Duration::from_secs(80)), "1m20s");
        assert_eq!(go_duration(Duration::from_secs(300)), "5m0s");
        assert_eq!(backoff_after(u32::MAX).as_secs(), 300);
    }
}

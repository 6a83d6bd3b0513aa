//! A pod's life on the node: binding, init containers then containers, each instance run, OOM-killed or exited by its script, restarted with the back-off, the pod phase and conditions.

use super::eviction;
use super::*;

impl Kubelet {
    pub(super) async fn run_pod(self: Arc<Self>, namespace: String, name: String, uid: String) {
        let runtime = self.runtime(&uid);
        let mut spec = runtime.spec_version.subscribe();
        if self.wait(&runtime, &mut spec, Some(timing::SCHEDULE)).await == Wake::Cancelled {
            return;
        }
        let Some(node) = self.place(&runtime, &mut spec, &namespace, &name, &uid).await else { return };
        let now = Timestamp::now();
        let bound = self.update_pod(&namespace, &name, &uid, |pod| {
            if let Some(spec) = pod.spec.as_mut() {
                spec.node_name = Some(node.name.clone());
            }
            let status = pod.status.get_or_insert_with(Default::default);
            set_condition(status, "PodScheduled", "True", None, None, now);
        });
        let Some(pod) = bound.then(|| self.live_pod(&namespace, &name, &uid)).flatten() else {
            self.nodes.release(&uid);
            return;
        };
        if !node.preset {
            self.event(
                &pod,
                "",
                "Normal",
                "Scheduled",
                format!("Successfully assigned {namespace}/{name} to {}", node.name),
            );
        }
        let host_ip = node.address.clone();
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
            status.host_ip = Some(host_ip.clone());
            status.host_ips = Some(vec![HostIP { ip: host_ip.clone() }]);
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

    /// The node the pod runs on: the one it names, or where the scheduler places it. A pod no node has
    /// room for stays Pending (`PodScheduled=False`, `Unschedulable`, the scheduler's message and a
    /// `FailedScheduling` event) and is tried again when the cluster changes or after
    /// [`timing::SCHEDULE_RETRY`]. `None` when the pod is deleted first.
    async fn place(
        &self,
        runtime: &PodRuntime,
        spec: &mut watch::Receiver<u64>,
        namespace: &str,
        name: &str,
        uid: &str,
    ) -> Option<Placed> {
        let mut changes = self.nodes.subscribe();
        loop {
            let pod = self.live_pod(namespace, name, uid)?;
            let memory_use = memory_use(&pod);
            let named = pod.spec.as_ref().and_then(|s| s.node_name.clone()).filter(|n| !n.is_empty());
            if let Some(node) = named {
                self.nodes.occupy(uid, &node, &pod, memory_use);
                let address = self.nodes.node_of(uid).map(|n| n.address).unwrap_or_default();
                return Some(Placed { name: node, address, preset: true });
            }
            changes.borrow_and_update();
            match self.nodes.schedule(uid, &pod, memory_use) {
                Ok(node) => {
                    let address = self.nodes.node_of(uid).map(|n| n.address).unwrap_or_default();
                    return Some(Placed { name: node, address, preset: false });
                }
                Err(message) => {
                    let now = Timestamp::now();
                    let already = pod.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|c| {
                        c.iter().any(|c| {
                            c.type_ == "PodScheduled"
                                && c.status == "False"
                                && c.message.as_ref() == Some(&message)
                        })
                    });
                    let changed = already
                        || self.update_pod(namespace, name, uid, |pod| {
                            let status = pod.status.get_or_insert_with(Default::default);
                            status.phase = Some("Pending".into());
                            set_condition(
                                status,
                                "PodScheduled",
                                "False",
                                Some("Unschedulable"),
                                Some(message.clone()),
                                now,
                            );
                        });
                    if !changed {
                        return None;
                    }
                    self.event(&pod, "", "Warning", "FailedScheduling", message);
                }
            }
            tokio::select! {
                _ = changes.changed() => {}
                wake = self.wait(runtime, spec, Some(timing::SCHEDULE_RETRY)) => if wake == Wake::Cancelled { return None },
            }
        }
    }

    /// Runs one container through pulls, configuration, runs and restarts. For an init container it
    /// returns true once the container completed; for a regular container it returns when the pod stops.
    pub(super) async fn run_container(
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
            let cid = container_id(uid, container, instance);
            instance += 1;
            let script = script(&pod, container);
            let (termination, started_at) = if let Some(message) = script.start_error.clone() {
                // The runtime created the container but could not start its process.
                self.event(&pod, container, "Warning", "Failed", format!("Error: {message}"));
                let never = Timestamp::UNIX_EPOCH;
                (
                    Some(Termination {
                        reason: "StartError".into(),
                        exit_code: 128,
                        replaced: false,
                        message: Some(message),
                    }),
                    never,
                )
            } else {
                self.event(&pod, container, "Normal", "Started", format!("Started container {container}"));
                let started_at = Timestamp::now();
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
                (termination, started_at)
            };
            let Some(termination) = termination else { return false };
            let finished_at = Timestamp::now();
            let replaced = termination.replaced;
            let failed = termination.exit_code != 0;
            let state = terminated(termination, Some(cid.clone()), started_at, finished_at);
            self.set_state(namespace, name, uid, container, init, |cs| {
                cs.state = Some(state.clone());
                cs.container_id = Some(cid.clone());
                cs.restart_count = restarts;
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
    pub(super) async fn run_instance(
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
            let fills_disk = !init && eviction::writes_past_storage_limit(&pod, container);
            let ends = if oom || fills_disk || script.exit_code.is_some() {
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
                    if let Some(failure) = script.readiness_failure.as_ref() {
                        // The probe fails from now on: the container runs, never ready.
                        self.event(
                            &pod,
                            container,
                            "Warning",
                            "Unhealthy",
                            format!("Readiness probe failed: {failure}"),
                        );
                        continue;
                    }
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
                            message: None,
                        });
                    }
                    // A resize: evaluate the new limit from the start of the run.
                }
                Wake::Elapsed => {
                    if fills_disk && let Some(message) = eviction::storage_eviction(&pod) {
                        self.evict(namespace, name, uid, message, false);
                        return None;
                    }
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
                            message: None,
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
                    return Some(Termination {
                        reason: reason.into(),
                        exit_code,
                        replaced: false,
                        message: None,
                    });
                }
            }
        }
    }

    /// Updates one container's status and recomputes the pod's phase and conditions.
    pub(super) fn set_state(
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
    pub(super) fn finish_pod_if_done(&self, namespace: &str, name: &str, uid: &str) {
        let mut finished = false;
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
                finished = true;
            } else if !statuses.is_empty() && ended.len() == statuses.len() {
                status.phase =
                    Some(if ended.iter().all(|c| *c == 0) { "Succeeded" } else { "Failed" }.into());
                finished = true;
            }
        });
        if finished {
            // A finished pod holds no room on its node.
            self.nodes.release(uid);
        }
    }
}

pub(super) fn waiting_state(reason: &str, message: Option<String>) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting { reason: Some(reason.to_owned()), message }),
        ..Default::default()
    }
}

pub(super) fn terminated(
    termination: Termination,
    container_id: Option<String>,
    started: Timestamp,
    finished: Timestamp,
) -> ContainerState {
    ContainerState {
        terminated: Some(ContainerStateTerminated {
            exit_code: termination.exit_code,
            reason: Some(termination.reason),
            message: termination.message,
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
pub(super) fn readiness_delay(container: &Container) -> Option<Duration> {
    let probe = container.readiness_probe.as_ref()?;
    let delay = probe.initial_delay_seconds.unwrap_or(0).max(0);
    Some(Duration::from_secs(u64::try_from(delay).unwrap_or(0).max(1)))
}

/// Recomputes phase and readiness conditions from the container statuses.
pub(super) fn refresh_pod_phase(status: &mut PodStatus, now: Timestamp) {
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

pub(super) fn set_condition(
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

pub(super) fn remove_condition(status: &mut PodStatus, type_: &str) {
    if let Some(conditions) = status.conditions.as_mut() {
        conditions.retain(|c| c.type_ != type_);
    }
}

/// A container instance's id as containerd gives it: 64 hex digits, here derived from the pod, the
/// container and the instance.
pub(super) fn container_id(uid: &str, container: &str, instance: u32) -> String {
    let of = |salt: u32| fnv(&format!("{uid}/{container}/{salt}"));
    format!("containerd://{:016x}{:016x}{:016x}{:08x}{instance:08x}", of(0), of(1), of(2), of(3) as u32)
}

pub(super) fn image_id(image: &str) -> String {
    format!("{}@sha256:{:016x}", crate::registry::repository(image), fnv(image))
}

/// A small deterministic string hash for simulated ids.
pub(super) fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

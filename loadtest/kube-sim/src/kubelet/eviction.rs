//! The kubelet's eviction manager: a pod over its ephemeral-storage limits is evicted, and a node whose
//! memory runs low (`memory.available` under 100Mi) reports `MemoryPressure`, is tainted, and evicts the
//! pod that uses most beyond its request. An evicted pod ends `Failed` with reason `Evicted`, the
//! kubelet's message and a `Warning Evicted` event, its containers killed (exit 137).

use kubesent_proto::MemoryQuantity;

use super::*;
use crate::nodes::{self, MEMORY_PRESSURE_TAINT, NodeView};

/// The kubelet's default hard eviction threshold for memory (`memory.available<100Mi`).
pub const MEMORY_THRESHOLD: MemoryQuantity = MemoryQuantity::from_mib(100);

/// A container's ephemeral-storage limit.
fn storage_limit(container: &k8s_openapi::api::core::v1::Container) -> Option<MemoryQuantity> {
    let limits = container.resources.as_ref()?.limits.as_ref()?;
    MemoryQuantity::parse(&limits.get("ephemeral-storage")?.0).ok()
}

/// The storage a container writes, from its pod's annotations.
fn disk_use(pod: &Pod, container: &str) -> Option<MemoryQuantity> {
    annotation(pod, annotations::DISK_USE, container).and_then(|t| MemoryQuantity::parse(t).ok())
}

/// The kubelet's message when `pod`'s containers together write more than their ephemeral-storage
/// limits allow, `None` when they fit (or set no limit).
pub(super) fn storage_eviction(pod: &Pod) -> Option<String> {
    let containers = &pod.spec.as_ref()?.containers;
    let limits: Vec<MemoryQuantity> = containers.iter().filter_map(storage_limit).collect();
    if limits.is_empty() {
        return None;
    }
    let limit = MemoryQuantity::from_bytes(limits.iter().map(|l| l.bytes()).sum());
    let used: u64 = containers.iter().filter_map(|c| disk_use(pod, &c.name)).map(MemoryQuantity::bytes).sum();
    (used > limit.bytes())
        .then(|| format!("Pod ephemeral local storage usage exceeds the total limit of containers {limit}. "))
}

/// Whether container `container` of `pod` is the one that writes past the limits (it runs for its run
/// time first).
pub(super) fn writes_past_storage_limit(pod: &Pod, container: &str) -> bool {
    disk_use(pod, container).is_some() && storage_eviction(pod).is_some()
}

/// `1572864Ki`, as the eviction manager prints quantities.
fn kibibytes(bytes: i64) -> String {
    format!("{}Ki", bytes / 1024)
}

/// The node's memory pressure, if any: the pod to evict (its uid) and the kubelet's message.
pub(super) fn memory_victim(node: &NodeView, bound: &[(String, nodes::Binding)]) -> Option<(String, String)> {
    let used: u64 = bound.iter().map(|(_, b)| b.memory_use).sum();
    let available =
        i64::try_from(node.allocatable.memory).unwrap_or(i64::MAX) - i64::try_from(used).unwrap_or(i64::MAX);
    if available >= i64::try_from(MEMORY_THRESHOLD.bytes()).unwrap_or(i64::MAX) {
        return None;
    }
    // Pods using more than they request go first, the largest excess first.
    let (uid, binding) = bound.iter().max_by_key(|(_, b)| {
        (b.memory_use > b.requests.memory, b.memory_use.saturating_sub(b.requests.memory), b.memory_use)
    })?;
    let request = if binding.requests.memory == 0 {
        "0".to_owned()
    } else {
        MemoryQuantity::from_bytes(binding.requests.memory).to_string()
    };
    let message = format!(
        "The node was low on resource: memory. Threshold quantity: {MEMORY_THRESHOLD}, available: {}. Container {} was using {}, request is {request}, has larger consumption of memory. ",
        kibibytes(available),
        binding.main_container,
        kibibytes(i64::try_from(binding.memory_use).unwrap_or(i64::MAX)),
    );
    Some((uid.clone(), message))
}

impl Kubelet {
    /// Starts the eviction manager: every [`timing::EVICTION_CHECK`] each node's memory is compared with
    /// the threshold; a node under pressure is marked and tainted and evicts one pod per round.
    pub fn spawn_eviction_manager(self: &Arc<Self>, shutdown: CancellationToken) {
        let kubelet = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(kubelet.clock.scaled(timing::EVICTION_CHECK)) => {}
                    () = shutdown.cancelled() => return,
                }
                for node in kubelet.nodes.views() {
                    kubelet.check_memory(&node);
                }
            }
        });
    }

    fn check_memory(self: &Arc<Self>, node: &NodeView) {
        let bound = self.nodes.bound_to(&node.name);
        let victim = memory_victim(node, &bound);
        let pressure = victim.is_some();
        let marked = node.taints.iter().any(|t| t.key == MEMORY_PRESSURE_TAINT);
        if pressure != marked {
            let _ = self.nodes.update(&node.name, |object| {
                if pressure {
                    nodes::set_node_condition(
                        object,
                        "MemoryPressure",
                        "True",
                        "KubeletHasInsufficientMemory",
                        "kubelet has insufficient memory available",
                    );
                } else {
                    nodes::set_node_condition(
                        object,
                        "MemoryPressure",
                        "False",
                        "KubeletHasSufficientMemory",
                        "kubelet has sufficient memory available",
                    );
                }
                nodes::set_node_taint(object, MEMORY_PRESSURE_TAINT, pressure);
            });
        }
        if let Some((uid, message)) = victim
            && let Some((_, binding)) = bound.iter().find(|(u, _)| *u == uid)
        {
            self.evict(&binding.namespace, &binding.name, &uid, message, true);
        }
    }

    /// Evicts a pod: its containers are killed, it ends `Failed` with reason `Evicted` and `message`, a
    /// `Warning Evicted` event is written, and its room on the node is freed. A node-pressure eviction
    /// also sets the `DisruptionTarget` condition (`TerminationByKubelet`).
    pub(super) fn evict(&self, namespace: &str, name: &str, uid: &str, message: String, node_pressure: bool) {
        if let Some(runtime) = lock(&self.runtimes).get(uid) {
            runtime.cancel.cancel();
        }
        let Some(pod) = self.live_pod(namespace, name, uid) else {
            self.nodes.release(uid);
            return;
        };
        self.event(&pod, "", "Warning", "Evicted", message.clone());
        for container in pod.spec.iter().flat_map(|s| s.containers.iter()) {
            self.event(
                &pod,
                &container.name,
                "Normal",
                "Killing",
                format!("Stopping container {}", container.name),
            );
        }
        let now = Timestamp::now();
        self.update_pod(namespace, name, uid, |pod| {
            let status = pod.status.get_or_insert_with(Default::default);
            for cs in status.container_statuses.iter_mut().flatten() {
                let started =
                    cs.state.as_ref().and_then(|s| s.running.as_ref()).and_then(|r| r.started_at.clone());
                if started.is_some() || cs.state.as_ref().is_some_and(|s| s.waiting.is_some()) {
                    let termination = Termination {
                        reason: "Error".into(),
                        exit_code: 137,
                        replaced: false,
                        message: None,
                    };
                    cs.state = Some(terminated(
                        termination,
                        cs.container_id.clone(),
                        started.map_or(now, |t| t.0),
                        now,
                    ));
                }
                cs.ready = false;
                cs.started = Some(false);
            }
            status.phase = Some("Failed".into());
            status.reason = Some("Evicted".into());
            status.message = Some(message.clone());
            if node_pressure {
                set_condition(
                    status,
                    "DisruptionTarget",
                    "True",
                    Some("TerminationByKubelet"),
                    Some(message.clone()),
                    now,
                );
            }
            set_condition(status, "Ready", "False", Some("PodFailed"), None, now);
            set_condition(status, "ContainersReady", "False", Some("PodFailed"), None, now);
        });
        self.nodes.release(uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nodes::{Binding, NodeConfig, Resources};

    fn binding(name: &str, request_mib: u64, use_mib: u64) -> (String, Binding) {
        (
            format!("uid-{name}"),
            Binding {
                node: "n".into(),
                namespace: "shop".into(),
                name: name.into(),
                main_container: "app".into(),
                requests: Resources { memory: request_mib << 20, ..Resources::default() },
                scored: Resources { memory: request_mib << 20, ..Resources::default() },
                memory_use: use_mib << 20,
            },
        )
    }

    #[test]
    fn a_node_short_of_memory_evicts_the_pod_furthest_over_its_request() {
        let config = NodeConfig { memory: MemoryQuantity::from_mib(4096), ..NodeConfig::worker("n") };
        let node = NodeView::from_object(&config.object(0, 32)).expect("node");
        let calm = [binding("a", 1024, 1000), binding("b", 1024, 1000)];
        assert_eq!(memory_victim(&node, &calm), None, "96Mi short of 4Gi is above the threshold");
        let pressed = [binding("a", 1024, 1000), binding("greedy", 256, 1536), binding("c", 2048, 1536)];
        let (uid, message) = memory_victim(&node, &pressed).expect("pressure");
        assert_eq!(uid, "uid-greedy");
        assert_eq!(
            message,
            "The node was low on resource: memory. Threshold quantity: 100Mi, available: 24576Ki. Container app was using 1572864Ki, request is 256Mi, has larger consumption of memory. "
        );
    }

    #[test]
    fn a_pod_writing_past_its_ephemeral_storage_limit_is_evicted_with_the_kubelets_message() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "annotations": {"sim.kubesent.io/disk-use": "2Gi"}},
            "spec": {"containers": [{"name": "app", "resources": {"limits": {"ephemeral-storage": "1Gi"}}}]}
        }))
        .expect("pod");
        assert_eq!(
            storage_eviction(&pod).as_deref(),
            Some("Pod ephemeral local storage usage exceeds the total limit of containers 1Gi. ")
        );
        assert!(writes_past_storage_limit(&pod, "app"));
        let within: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "annotations": {"sim.kubesent.io/disk-use": "512Mi"}},
            "spec": {"containers": [{"name": "app", "resources": {"limits": {"ephemeral-storage": "1Gi"}}}]}
        }))
        .expect("pod");
        assert_eq!(storage_eviction(&within), None);
    }
}

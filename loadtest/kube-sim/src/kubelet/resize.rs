//! Actuating in-place resizes (`pods/resize`): accepted, infeasible or deferred, as the kubelet reports them.

use super::*;

impl Kubelet {
    /// Actuates in-place resizes: when the desired resources differ from what the containers run with,
    /// reports `PodResizeInProgress` (or `PodResizePending`/`Infeasible`), then applies them.
    pub(super) async fn actuate_resizes(self: Arc<Self>, namespace: String, name: String, uid: String) {
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
            let capacity = self.nodes.node_of(&uid).map_or(u64::MAX, |node| node.allocatable.memory);
            if requested > capacity {
                let message = format!(
                    "Node didn't have enough capacity: memory, requested: {requested}, capacity: {capacity}"
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
}

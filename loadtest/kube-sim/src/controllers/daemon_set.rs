//! The DaemonSet controller: one pod per node its selector, affinity and tolerations admit (with the
//! tolerations the real controller adds), placed through node affinity on that node's name; rolling
//! updates one node at a time once the others are ready (`OnDelete` waits for a human); revisions as
//! ControllerRevisions (`<name>-<hash>`, the hash in the pods' `controller-revision-hash`); status.

use k8s_openapi::api::{apps::v1::DaemonSet, core::v1::Toleration};

use super::*;
use crate::nodes::{self, NodeView};

/// The tolerations the DaemonSet controller adds to its pods: they stay on nodes that are not ready,
/// unreachable, under pressure or cordoned.
fn daemon_tolerations() -> Vec<Toleration> {
    let toleration = |key: &str, effect: &str| Toleration {
        key: Some(key.to_owned()),
        operator: Some("Exists".to_owned()),
        effect: Some(effect.to_owned()),
        ..Toleration::default()
    };
    vec![
        toleration("node.kubernetes.io/not-ready", "NoExecute"),
        toleration("node.kubernetes.io/unreachable", "NoExecute"),
        toleration("node.kubernetes.io/disk-pressure", "NoSchedule"),
        toleration(nodes::MEMORY_PRESSURE_TAINT, "NoSchedule"),
        toleration("node.kubernetes.io/pid-pressure", "NoSchedule"),
        toleration(nodes::UNSCHEDULABLE_TAINT, "NoSchedule"),
    ]
}

/// The pod the DaemonSet runs on `node`: its template with the controller's tolerations and a required
/// node affinity on the node's name.
fn pod_for(template: &PodTemplateSpec, node: &str) -> Result<PodTemplateSpec, ApiError> {
    let mut template = template.clone();
    let spec = template.spec.get_or_insert_with(Default::default);
    let mut tolerations = spec.tolerations.clone().unwrap_or_default();
    for added in daemon_tolerations() {
        if !tolerations.contains(&added) {
            tolerations.push(added);
        }
    }
    spec.tolerations = Some(tolerations);
    spec.affinity = Some(
        serde_json::from_value(json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}]}}}))
        .map_err(ApiError::internal)?,
    );
    Ok(template)
}

/// The node a DaemonSet pod is for (from its affinity, or where it runs).
fn node_of(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let from_affinity = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref())
        .and_then(|r| r.node_selector_terms.first())
        .and_then(|t| t.match_fields.as_ref())
        .and_then(|f| f.iter().find(|f| f.key == "metadata.name"))
        .and_then(|f| f.values.as_ref()?.first().cloned());
    from_affinity.or_else(|| spec.node_name.clone())
}

impl Controllers<'_> {
    /// One step of a DaemonSet's rolling update, as the real controller takes it. With `maxSurge`, a
    /// node's new pod starts beside its old one and the old one goes once the new one is ready, at most
    /// `maxSurge` nodes at a time; without, old pods are deleted while fewer than `maxUnavailable` nodes
    /// are without a ready pod. An old pod that is not ready is replaced at once either way.
    fn roll_daemon_pods(
        &self,
        ns: &str,
        placed: &BTreeMap<&str, (Vec<&Pod>, Vec<&Pod>)>,
        max_surge: i32,
        max_unavailable: i32,
        create_on: &dyn Fn(&str) -> Result<(), ApiError>,
    ) -> Result<(), ApiError> {
        if max_surge > 0 {
            let mut surging =
                placed.values().filter(|(current, old)| !current.is_empty() && !old.is_empty()).count();
            for (node, (current, old)) in placed {
                match current.first() {
                    Some(new) if is_ready(new) => {
                        for pod in old {
                            self.delete_pod(ns, pod)?;
                        }
                    }
                    Some(_) => {}
                    None if old.iter().any(|p| !is_ready(p)) => {
                        for pod in old {
                            self.delete_pod(ns, pod)?;
                        }
                    }
                    None if !old.is_empty() && surging < usize::try_from(max_surge).unwrap_or(0) => {
                        create_on(node)?;
                        surging += 1;
                    }
                    None => {}
                }
            }
            return Ok(());
        }
        let mut unavailable = placed
            .values()
            .filter(|(current, old)| !current.iter().chain(old.iter()).any(|p| is_ready(p)))
            .count();
        for (current, old) in placed.values() {
            if !current.is_empty() {
                for pod in old {
                    self.delete_pod(ns, pod)?;
                }
                continue;
            }
            for pod in old {
                if !is_ready(pod) {
                    self.delete_pod(ns, pod)?;
                } else if unavailable < usize::try_from(max_unavailable).unwrap_or(0) {
                    self.delete_pod(ns, pod)?;
                    unavailable += 1;
                }
            }
        }
        Ok(())
    }

    /// Reconciles every DaemonSet (a node came, went or changed).
    pub(super) fn all_daemon_sets(&self) -> Result<(), ApiError> {
        for object in self.state.store.all(&DAEMONSETS) {
            self.daemon_set(&object.namespace, &object.name)?;
        }
        Ok(())
    }

    pub(super) fn daemon_set(&self, ns: &str, name: &str) -> Result<(), ApiError> {
        let Ok(object) = self.state.store.get(&DAEMONSETS, ns, name) else { return Ok(()) };
        let ds: DaemonSet = object.typed()?;
        if ds.metadata.deletion_timestamp.is_some() {
            return Ok(());
        }
        let value = object.value();
        let spec = ds.spec.clone().unwrap_or_default();
        let template_value = value.pointer("/spec/template").cloned().unwrap_or(Value::Null);
        let labels = spec.selector.match_labels.clone().unwrap_or_default();
        let hash = self.ensure_revision("DaemonSet", ns, name, &object.uid, labels, &template_value)?;
        let template: PodTemplateSpec =
            serde_json::from_value(template_value.clone()).map_err(ApiError::internal)?;
        let probe = Pod { metadata: Default::default(), spec: pod_for(&template, "")?.spec, status: None };
        let nodes: Vec<NodeView> = self
            .state
            .store
            .all(&NODES)
            .iter()
            .filter_map(|n| NodeView::from_object(&n.value()))
            // The node-name affinity aside: selector, other affinity terms and tolerations.
            .filter(|n| {
                let mut pod = probe.clone();
                if let Some(spec) = pod.spec.as_mut() {
                    spec.affinity = template.spec.as_ref().and_then(|s| s.affinity.clone());
                }
                nodes::admits(&pod, n)
            })
            .collect();
        let pods = self.owned_pods(ns, &object.uid)?;
        let revision_of =
            |p: &Pod| p.metadata.labels.as_ref().and_then(|l| l.get(CONTROLLER_REVISION_HASH)).cloned();
        let mut by_node: BTreeMap<String, Vec<&Pod>> = BTreeMap::new();
        for pod in pods.iter().filter(|p| p.metadata.deletion_timestamp.is_none()) {
            if let Some(node) = node_of(pod) {
                by_node.entry(node).or_default().push(pod);
            }
        }
        let labels = BTreeMap::from([(CONTROLLER_REVISION_HASH.to_owned(), hash.clone())]);
        let create_on = |node: &str| {
            self.create_pod(
                ns,
                &pod_for(&template, node)?,
                None,
                &format!("{name}-"),
                &labels,
                owner_ref("DaemonSet", name, &object.uid),
            )
        };
        let finished = |p: &Pod| {
            matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Failed" | "Succeeded"))
        };
        // Each node's pods of the current revision and of older ones, finished pods deleted, and a pod
        // made where there is none; more than one of the current revision on a node: the oldest stays.
        let mut placed: BTreeMap<&str, (Vec<&Pod>, Vec<&Pod>)> = BTreeMap::new();
        for node in &nodes {
            let mut current = Vec::new();
            let mut old = Vec::new();
            for pod in by_node.get(&node.name).into_iter().flatten() {
                if finished(pod) {
                    self.delete_pod(ns, pod)?;
                } else if revision_of(pod).as_deref() == Some(hash.as_str()) {
                    current.push(*pod);
                } else {
                    old.push(*pod);
                }
            }
            for extra in current.iter().skip(1) {
                self.delete_pod(ns, extra)?;
            }
            current.truncate(1);
            if current.is_empty() && old.is_empty() {
                create_on(&node.name)?;
            }
            placed.insert(node.name.as_str(), (current, old));
        }
        // Pods on nodes that no longer admit them go.
        for (node, pods) in &by_node {
            if !nodes.iter().any(|n| &n.name == node) {
                for pod in pods {
                    self.delete_pod(ns, pod)?;
                }
            }
        }
        let on_delete = spec.update_strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("OnDelete");
        if !on_delete {
            let rolling = value.pointer("/spec/updateStrategy/rollingUpdate");
            let desired = i32::try_from(nodes.len()).unwrap_or(i32::MAX);
            let max_surge = resolve(rolling.and_then(|r| r.get("maxSurge")), desired, true, 0);
            let max_unavailable = resolve(rolling.and_then(|r| r.get("maxUnavailable")), desired, true, 0);
            self.roll_daemon_pods(ns, &placed, max_surge, max_unavailable, &create_on)?;
        }
        let pods = self.owned_pods(ns, &object.uid)?;
        let scheduled: Vec<&Pod> = pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some())
            .collect();
        // Counted by node: a node surging has two pods and counts once.
        let count_nodes = |keep: &dyn Fn(&Pod) -> bool| {
            scheduled
                .iter()
                .filter(|p| keep(p))
                .filter_map(|p| node_of(p))
                .collect::<std::collections::BTreeSet<_>>()
                .len()
        };
        let ready = count_nodes(&|p| is_ready(p));
        let updated = count_nodes(&|p| revision_of(p).as_deref() == Some(hash.as_str()));
        let status = json!({
            "observedGeneration": ds.metadata.generation.unwrap_or(1),
            "desiredNumberScheduled": nodes.len(), "currentNumberScheduled": count_nodes(&|_| true),
            "numberReady": ready, "numberAvailable": ready, "numberUnavailable": nodes.len().saturating_sub(ready),
            "updatedNumberScheduled": updated, "numberMisscheduled": 0,
        });
        self.write_status(&DAEMONSETS, ns, name, &object.uid, status)
    }
}

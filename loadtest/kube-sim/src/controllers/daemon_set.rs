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
        for node in &nodes {
            match by_node.get(&node.name).map(Vec::as_slice) {
                None | Some([]) => {
                    let labels = BTreeMap::from([(CONTROLLER_REVISION_HASH.to_owned(), hash.clone())]);
                    self.create_pod(
                        ns,
                        &pod_for(&template, &node.name)?,
                        None,
                        &format!("{name}-"),
                        &labels,
                        owner_ref("DaemonSet", name, &object.uid),
                    )?;
                }
                Some([pod])
                    if matches!(
                        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
                        Some("Failed" | "Succeeded")
                    ) =>
                {
                    self.delete_pod(ns, pod)?;
                }
                Some([_]) => {}
                // More than one on a node: keep the oldest.
                Some([_, extra @ ..]) => {
                    for pod in extra {
                        self.delete_pod(ns, pod)?;
                    }
                }
            }
        }
        // Pods on nodes that no longer admit them go.
        for (node, pods) in &by_node {
            if !nodes.iter().any(|n| &n.name == node) {
                for pod in pods {
                    self.delete_pod(ns, pod)?;
                }
            }
        }
        // Rolling update: with every pod ready, replace one on an old revision.
        let live: Vec<&Pod> = by_node.values().flatten().copied().collect();
        let on_delete = spec.update_strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("OnDelete");
        if !on_delete
            && live.iter().all(|p| is_ready(p))
            && let Some(outdated) = live.iter().find(|p| revision_of(p).as_deref() != Some(hash.as_str()))
        {
            self.delete_pod(ns, outdated)?;
        }
        let pods = self.owned_pods(ns, &object.uid)?;
        let scheduled: Vec<&Pod> = pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some())
            .collect();
        let ready = scheduled.iter().filter(|p| is_ready(p)).count();
        let updated = scheduled.iter().filter(|p| revision_of(p).as_deref() == Some(hash.as_str())).count();
        let status = json!({
            "observedGeneration": ds.metadata.generation.unwrap_or(1),
            "desiredNumberScheduled": nodes.len(), "currentNumberScheduled": scheduled.len(),
            "numberReady": ready, "numberAvailable": ready, "numberUnavailable": nodes.len().saturating_sub(ready),
            "updatedNumberScheduled": updated, "numberMisscheduled": 0,
        });
        self.write_status(&DAEMONSETS, ns, name, &object.uid, status)
    }
}

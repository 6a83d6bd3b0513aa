//! The StatefulSet controller: ordinal pods created in order, rolling updates from the highest ordinal, ControllerRevisions, status.

use super::*;

impl Controllers<'_> {
    pub(super) fn stateful_set(&self, ns: &str, name: &str) -> Result<(), ApiError> {
        let Ok(object) = self.state.store.get(&STATEFULSETS, ns, name) else { return Ok(()) };
        let sts: StatefulSet = object.typed()?;
        if sts.metadata.deletion_timestamp.is_some() {
            return Ok(());
        }
        let value = object.value();
        let spec = sts.spec.clone().unwrap_or_default();
        let desired = spec.replicas.unwrap_or(1).max(0) as usize;
        let template_value = value.pointer("/spec/template").cloned().unwrap_or(Value::Null);
        let labels = spec.selector.match_labels.clone().unwrap_or_default();
        let hash = self.ensure_revision("StatefulSet", ns, name, &object.uid, labels, &template_value)?;
        // StatefulSet pods carry the revision's name, DaemonSet pods only its hash.
        let revision = format!("{name}-{hash}");
        let pods = self.owned_pods(ns, &object.uid)?;
        let by_name: BTreeMap<String, &Pod> =
            pods.iter().map(|p| (p.metadata.name.clone().unwrap_or_default(), p)).collect();
        let revision_of =
            |p: &Pod| p.metadata.labels.as_ref().and_then(|l| l.get(CONTROLLER_REVISION_HASH)).cloned();
        // OrderedReady: create the lowest missing ordinal once every lower one is running and ready.
        for ordinal in 0..desired {
            let pod_name = format!("{name}-{ordinal}");
            match by_name.get(&pod_name) {
                None => {
                    let template: PodTemplateSpec =
                        serde_json::from_value(template_value.clone()).map_err(ApiError::internal)?;
                    let labels = BTreeMap::from([
                        (CONTROLLER_REVISION_HASH.to_owned(), revision.clone()),
                        ("statefulset.kubernetes.io/pod-name".to_owned(), pod_name.clone()),
                        ("apps.kubernetes.io/pod-index".to_owned(), ordinal.to_string()),
                    ]);
                    let mut template = template;
                    if let Some(pod_spec) = template.spec.as_mut() {
                        pod_spec.hostname = Some(pod_name.clone());
                        pod_spec.subdomain = spec.service_name.clone().filter(|s| !s.is_empty());
                    }
                    self.create_pod(
                        ns,
                        &template,
                        Some(pod_name),
                        "",
                        &labels,
                        owner_ref("StatefulSet", name, &object.uid),
                    )?;
                    break;
                }
                Some(pod) if pod.metadata.deletion_timestamp.is_some() => break,
                Some(pod)
                    if matches!(
                        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
                        Some("Failed" | "Succeeded")
                    ) =>
                {
                    self.delete_pod(ns, pod)?;
                    break;
                }
                Some(pod) if !is_ready(pod) => break,
                Some(_) => {}
            }
        }
        // Scale down from the highest ordinal, one at a time.
        let ordinal_of = |n: &str| n.rsplit_once('-').and_then(|(_, o)| o.parse::<usize>().ok());
        if let Some(extra) = by_name
            .iter()
            .filter(|(n, p)| {
                ordinal_of(n).is_some_and(|o| o >= desired) && p.metadata.deletion_timestamp.is_none()
            })
            .max_by_key(|(n, _)| ordinal_of(n))
        {
            self.delete_pod(ns, extra.1)?;
        }
        // Rolling update: once all pods exist and are ready, replace the highest ordinal on an old revision.
        let all_ready = (0..desired).all(|o| {
            by_name
                .get(&format!("{name}-{o}"))
                .is_some_and(|p| is_ready(p) && p.metadata.deletion_timestamp.is_none())
        });
        if all_ready
            && spec.update_strategy.as_ref().and_then(|s| s.type_.as_deref()) != Some("OnDelete")
            && let Some(outdated) = (0..desired).rev().map(|o| format!("{name}-{o}")).find(|n| {
                by_name.get(n).is_some_and(|p| revision_of(p).as_deref() != Some(revision.as_str()))
            })
            && let Some(pod) = by_name.get(&outdated)
        {
            self.delete_pod(ns, pod)?;
        }
        let pods = self.owned_pods(ns, &object.uid)?;
        let active: Vec<&Pod> = pods.iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect();
        let ready = active.iter().filter(|p| is_ready(p)).count();
        let updated = active.iter().filter(|p| revision_of(p).as_deref() == Some(revision.as_str())).count();
        let current_revision = if updated == active.len() {
            revision.clone()
        } else {
            value
                .pointer("/status/currentRevision")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| revision.clone())
        };
        let status = json!({
            "observedGeneration": sts.metadata.generation.unwrap_or(1), "replicas": active.len(), "readyReplicas": ready,
            "availableReplicas": ready, "currentReplicas": if current_revision == revision { updated } else { active.len() - updated },
            "updatedReplicas": updated, "currentRevision": current_revision, "updateRevision": revision,
            "collisionCount": 0,
        });
        self.write_status(&STATEFULSETS, ns, name, &object.uid, status)
    }
}

//! The Deployment controller: a ReplicaSet per template (by its hash), rolling updates with maxSurge and maxUnavailable, revisions and history, status.

use super::*;

/// The Deployment's annotations its controller does not copy to a ReplicaSet.
const ANNOTATIONS_NOT_COPIED: [&str; 6] = [
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    "deployment.kubernetes.io/revision-history",
    "deployment.kubernetes.io/desired-replicas",
    "deployment.kubernetes.io/max-replicas",
    "deprecated.deployment.rollback.to",
];

impl Controllers<'_> {
    pub(super) fn deployment(&self, ns: &str, name: &str) -> Result<(), ApiError> {
        let Ok(object) = self.state.store.get(&DEPLOYMENTS, ns, name) else { return Ok(()) };
        let deployment: Deployment = object.typed()?;
        if deployment.metadata.deletion_timestamp.is_some() {
            return Ok(());
        }
        let value = object.value();
        let spec = deployment.spec.clone().unwrap_or_default();
        let desired = spec.replicas.unwrap_or(1).max(0);
        let template_value = value.pointer("/spec/template").cloned().unwrap_or(Value::Null);
        let hash = template_hash(&template_value);
        let mut owned: Vec<ReplicaSet> = self
            .state
            .store
            .owned_by(&REPLICASETS, ns, &object.uid)
            .iter()
            .map(|o| o.typed())
            .collect::<Result<_, _>>()?;
        let revision_of = |rs: &ReplicaSet| -> i64 {
            rs.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(REVISION))
                .and_then(|r| r.parse().ok())
                .unwrap_or(0)
        };
        owned.sort_by_key(revision_of);
        let max_revision = owned.iter().map(revision_of).max().unwrap_or(0);
        let rs_name = format!("{name}-{hash}");
        let labels_of = |rs: &ReplicaSet| rs.metadata.labels.clone().unwrap_or_default();
        let new_rs = owned.iter().find(|rs| labels_of(rs).get(POD_TEMPLATE_HASH) == Some(&hash)).cloned();
        let old: Vec<ReplicaSet> =
            owned.iter().filter(|rs| labels_of(rs).get(POD_TEMPLATE_HASH) != Some(&hash)).cloned().collect();
        let old_total: i32 =
            old.iter().map(|rs| rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)).sum();
        let recreate = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate");
        let rolling = value.pointer("/spec/strategy/rollingUpdate");
        let mut max_surge = resolve(rolling.and_then(|r| r.get("maxSurge")), desired, true, 25);
        let max_unavailable = resolve(rolling.and_then(|r| r.get("maxUnavailable")), desired, false, 25);
        if max_surge == 0 && max_unavailable == 0 {
            max_surge = 1;
        }
        if spec.paused == Some(true) {
            // Paused: no new ReplicaSet, no rollout step; only the status is kept current.
            let current = new_rs.as_ref().and_then(|rs| rs.metadata.name.clone()).unwrap_or(rs_name);
            return self.deployment_status(
                ns,
                name,
                &object.uid,
                &value,
                &deployment,
                &hash,
                &current,
                max_unavailable,
            );
        }
        // The Deployment's own annotations travel to its newest ReplicaSet (`kubectl rollout history`
        // reads `kubernetes.io/change-cause` there), as the controller's copyDeploymentAnnotationsToReplicaSet
        // does: all but its bookkeeping ones, on creation and on every sync; older ReplicaSets keep theirs.
        let copied: BTreeMap<String, String> = deployment
            .metadata
            .annotations
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| !ANNOTATIONS_NOT_COPIED.contains(&k.as_str()))
            .collect();
        let new_revision = match &new_rs {
            Some(rs) if revision_of(rs) == max_revision => max_revision,
            _ => max_revision + 1,
        };
        let new_rs = match new_rs {
            Some(rs) => rs,
            None => {
                let mut template: PodTemplateSpec =
                    serde_json::from_value(template_value.clone()).map_err(ApiError::internal)?;
                template
                    .metadata
                    .get_or_insert_with(Default::default)
                    .labels
                    .get_or_insert_with(BTreeMap::new)
                    .insert(POD_TEMPLATE_HASH.into(), hash.clone());
                let mut selector = spec.selector.clone();
                selector
                    .match_labels
                    .get_or_insert_with(BTreeMap::new)
                    .insert(POD_TEMPLATE_HASH.into(), hash.clone());
                let initial = if old.is_empty() || recreate && old_total == 0 { desired } else { 0 };
                let mut labels =
                    template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
                labels.insert(POD_TEMPLATE_HASH.into(), hash.clone());
                let mut annotations = copied.clone();
                annotations.insert(REVISION.into(), new_revision.to_string());
                annotations.insert("deployment.kubernetes.io/desired-replicas".into(), desired.to_string());
                annotations.insert(
                    "deployment.kubernetes.io/max-replicas".into(),
                    (desired + max_surge).to_string(),
                );
                let rs = json!({
                    "metadata": {"name": rs_name, "namespace": ns, "labels": labels,
                        "annotations": annotations,
                        "ownerReferences": [owner_ref("Deployment", name, &object.uid)]},
                    "spec": {"replicas": initial, "selector": selector, "template": template,
                        "minReadySeconds": spec.min_ready_seconds.unwrap_or(0)},
                });
                let created = self.state.create(
                    &REPLICASETS,
                    ns,
                    rs,
                    false,
                    &Actor::controller("deployment-controller"),
                )?;
                serde_json::from_value(created).map_err(ApiError::internal)?
            }
        };
        let new_uid = new_rs.metadata.uid.clone().unwrap_or_default();
        let new_name = new_rs.metadata.name.clone().unwrap_or_default();
        let has = new_rs.metadata.annotations.clone().unwrap_or_default();
        let missing: Vec<(&String, &String)> =
            copied.iter().filter(|(k, v)| has.get(*k) != Some(*v)).collect();
        if revision_of(&new_rs) != new_revision || !missing.is_empty() {
            self.update(&REPLICASETS, ns, &new_name, &new_uid, |v| {
                v["metadata"]["annotations"][REVISION] = json!(new_revision.to_string());
                for (key, value) in &missing {
                    v["metadata"]["annotations"][key.as_str()] = json!(value);
                }
            })?;
        }
        let new_replicas = new_rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
        let ready_of = |rs: &ReplicaSet| rs.status.as_ref().and_then(|s| s.available_replicas).unwrap_or(0);
        let old_pods_left: i32 = old.iter().map(|rs| rs.status.as_ref().map_or(0, |s| s.replicas)).sum();
        let target_new = if recreate {
            if old_pods_left == 0 { desired } else { 0 }
        } else {
            let total = new_replicas + old_total;
            let room = (desired + max_surge - total).max(0);
            (new_replicas + room).min(desired).max(new_replicas.min(desired))
        };
        if target_new != new_replicas {
            self.update(&REPLICASETS, ns, &new_name, &new_uid, |v| {
                v["spec"]["replicas"] = json!(target_new)
            })?;
        }
        // Scale old ReplicaSets down as far as availability allows.
        let available: i32 = ready_of(&new_rs) + old.iter().map(ready_of).sum::<i32>();
        let mut can_remove =
            if recreate { i32::MAX } else { (available - (desired - max_unavailable)).max(0) };
        // Old pods that are not available go first, but only as far as the real controller's
        // `maxScaledDown` allows: all pods, less the minimum available, less the new ReplicaSet's
        // unavailable ones (a failing new revision keeps the old pods it cannot replace).
        let unavailable_old: i32 =
            old.iter().map(|rs| rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0) - ready_of(rs)).sum();
        let all_pods = target_new + old_total;
        let new_unavailable = (target_new - ready_of(&new_rs)).max(0);
        let max_scaled_down = (all_pods - (desired - max_unavailable) - new_unavailable).max(0);
        can_remove = can_remove.saturating_add(unavailable_old.max(0).min(max_scaled_down));
        for rs in &old {
            if can_remove <= 0 {
                break;
            }
            let replicas = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
            if replicas == 0 {
                continue;
            }
            let scale_to = (replicas - can_remove).max(0);
            can_remove -= replicas - scale_to;
            let (rs_name, rs_uid) =
                (rs.metadata.name.clone().unwrap_or_default(), rs.metadata.uid.clone().unwrap_or_default());
            self.update(&REPLICASETS, ns, &rs_name, &rs_uid, |v| v["spec"]["replicas"] = json!(scale_to))?;
        }
        // Revision history: keep at most revisionHistoryLimit old ReplicaSets that are scaled to zero.
        let limit = spec.revision_history_limit.unwrap_or(10).max(0) as usize;
        let idle: Vec<&ReplicaSet> = old
            .iter()
            .filter(|rs| {
                rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0) == 0
                    && rs.status.as_ref().is_none_or(|s| s.replicas == 0)
            })
            .collect();
        if idle.len() > limit {
            for rs in &idle[..idle.len() - limit] {
                let options = DeleteOptions { uid: rs.metadata.uid.clone(), ..DeleteOptions::default() };
                let _ = self.state.delete(
                    &REPLICASETS,
                    ns,
                    rs.metadata.name.as_deref().unwrap_or_default(),
                    &options,
                    &Actor::controller("deployment-controller"),
                );
            }
        }
        if deployment.metadata.annotations.as_ref().and_then(|a| a.get(REVISION))
            != Some(&new_revision.to_string())
        {
            self.update(&DEPLOYMENTS, ns, name, &object.uid, |v| {
                v["metadata"]["annotations"][REVISION] = json!(new_revision.to_string())
            })?;
        }
        self.deployment_status(ns, name, &object.uid, &value, &deployment, &hash, &rs_name, max_unavailable)
    }

    /// Writes a Deployment's status from its ReplicaSets' statuses; a paused one reports
    /// `Progressing=Unknown`, reason `DeploymentPaused`.
    #[allow(clippy::too_many_arguments)]
    fn deployment_status(
        &self,
        ns: &str,
        name: &str,
        uid: &str,
        value: &Value,
        deployment: &Deployment,
        hash: &str,
        rs_name: &str,
        max_unavailable: i32,
    ) -> Result<(), ApiError> {
        let desired = deployment.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1).max(0);
        let paused = deployment.spec.as_ref().and_then(|s| s.paused) == Some(true);
        let labels_of = |rs: &ReplicaSet| rs.metadata.labels.clone().unwrap_or_default();
        // Status, from the ReplicaSets' statuses.
        let all: Vec<ReplicaSet> = self
            .state
            .store
            .owned_by(&REPLICASETS, ns, uid)
            .iter()
            .map(|o| o.typed())
            .collect::<Result<_, _>>()?;
        let sum = |f: &dyn Fn(&ReplicaSet) -> i32| all.iter().map(f).sum::<i32>();
        let replicas = sum(&|rs| rs.status.as_ref().map_or(0, |s| s.replicas));
        let ready = sum(&|rs| rs.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0));
        let available = sum(&|rs| rs.status.as_ref().and_then(|s| s.available_replicas).unwrap_or(0));
        let updated = all
            .iter()
            .find(|rs| labels_of(rs).get(POD_TEMPLATE_HASH).map(String::as_str) == Some(hash))
            .and_then(|rs| rs.status.as_ref())
            .map_or(0, |s| s.replicas);
        let complete = updated == desired && replicas == desired && available == desired;
        let is_available = available >= desired - max_unavailable;
        let now = crate::api::now_time();
        let keep_time = |type_: &str, status: &str| {
            value.pointer("/status/conditions").and_then(Value::as_array).and_then(|c| {
                c.iter()
                    .find(|c| c["type"] == type_ && c["status"] == status)
                    .and_then(|c| c.get("lastTransitionTime").cloned())
            })
        };
        let available_status = if is_available { "True" } else { "False" };
        let conditions = json!([
            {"type": "Available", "status": available_status,
             "reason": if is_available { "MinimumReplicasAvailable" } else { "MinimumReplicasUnavailable" },
             "message": if is_available { "Deployment has minimum availability." } else { "Deployment does not have minimum availability." },
             "lastTransitionTime": keep_time("Available", available_status).unwrap_or(now.clone()),
             "lastUpdateTime": keep_time("Available", available_status).unwrap_or(now.clone())},
        ]);
        let progressing = if paused {
            json!({"type": "Progressing", "status": "Unknown", "reason": "DeploymentPaused",
             "message": "Deployment is paused",
             "lastTransitionTime": keep_time("Progressing", "Unknown").unwrap_or(now.clone()),
             "lastUpdateTime": keep_time("Progressing", "Unknown").unwrap_or(now.clone())})
        } else {
            json!({"type": "Progressing", "status": "True",
             "reason": if complete { "NewReplicaSetAvailable" } else { "ReplicaSetUpdated" },
             "message": if complete { format!("ReplicaSet \"{rs_name}\" has successfully progressed.") } else { format!("ReplicaSet \"{rs_name}\" is progressing.") },
             "lastTransitionTime": keep_time("Progressing", "True").unwrap_or(now.clone()),
             "lastUpdateTime": keep_time("Progressing", "True").unwrap_or(now.clone())})
        };
        let mut conditions = conditions;
        if let Some(list) = conditions.as_array_mut() {
            list.push(progressing);
            // A ReplicaSet that cannot create its pods (admission refused them) is the Deployment's
            // `ReplicaFailure`, as the Deployment controller copies it.
            let failure = all.iter().find_map(|rs| {
                rs.status
                    .as_ref()?
                    .conditions
                    .as_ref()?
                    .iter()
                    .find(|c| c.type_ == "ReplicaFailure" && c.status == "True")
                    .cloned()
            });
            if let Some(failure) = failure {
                list.push(json!({"type": "ReplicaFailure", "status": "True",
                    "reason": failure.reason.unwrap_or_else(|| "FailedCreate".into()),
                    "message": failure.message.unwrap_or_default(),
                    "lastTransitionTime": keep_time("ReplicaFailure", "True").unwrap_or(now.clone()),
                    "lastUpdateTime": keep_time("ReplicaFailure", "True").unwrap_or(now.clone())}));
            }
        }
        let status = json!({
            "observedGeneration": deployment.metadata.generation.unwrap_or(1), "replicas": replicas,
            "updatedReplicas": updated, "readyReplicas": ready, "availableReplicas": available,
            "unavailableReplicas": (replicas - available).max(0), "conditions": conditions,
        });
        self.write_status(&DEPLOYMENTS, ns, name, uid, status)
    }
}

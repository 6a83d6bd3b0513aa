//! Carrying out each rung of the action ladder from whatever phase its intent is in: owner patch, in-place
//! resize (falling back to a force replace), pod image patch, force replace.

use super::*;
use crate::verify::Verification;

impl Remediator {
    /// Patches the owner's template (guarded by its resourceVersion), then verifies the rollout.
    pub(crate) async fn finish_owner_patch(
        &self,
        mut intent: Intent,
        mut revision: u64,
    ) -> Result<Finished, StepError> {
        let namespace = intent.target.namespace.clone();
        let Some(reference) = intent.workload.clone() else {
            return self
                .done(intent, revision, OutcomeResult::Failed, "the intent names no workload".into(), None)
                .await;
        };
        loop {
            match intent.phase {
                // Only drive() moves an intent past approval; never act on one here.
                Phase::AwaitingApproval | Phase::Approved => return Ok(awaiting_approval(&intent)),
                Phase::Pending => {
                    const ATTEMPTS: usize = 4;
                    let mut patched = false;
                    for _ in 0..ATTEMPTS {
                        let workload = self.workload(&namespace, &reference).await?;
                        if let Err(why) = ladder::template_matches(&workload, &intent.action) {
                            return self.done(intent, revision, OutcomeResult::Stale, why, None).await;
                        }
                        if ladder::already_applied(&workload, &intent.action, &intent.incident) {
                            // Patched before a crash, not yet recorded: nothing to write again.
                            patched = true;
                            break;
                        }
                        let patch = ladder::owner_patch(&workload, &intent.action, &intent.incident)
                            .map_err(StepError::NoPatch)?;
                        let params = PatchParams::default();
                        let result = match workload.kind {
                            WorkloadKind::Deployment => {
                                Api::<Deployment>::namespaced(self.deps.kube.clone(), &namespace)
                                    .patch(&workload.name, &params, &Patch::Strategic(&patch))
                                    .await
                                    .map(|_| ())
                            }
                            WorkloadKind::StatefulSet => {
                                Api::<StatefulSet>::namespaced(self.deps.kube.clone(), &namespace)
                                    .patch(&workload.name, &params, &Patch::Strategic(&patch))
                                    .await
                                    .map(|_| ())
                            }
                        };
                        match result {
                            Ok(()) => {
                                patched = true;
                                break;
                            }
                            // Changed since it was read: read it again and re-check.
                            Err(kube::Error::Api(status)) if status.is_conflict() => continue,
                            Err(error) => return Err(error.into()),
                        }
                    }
                    if !patched {
                        return Err(StepError::KeptChanging {
                            what: format!("{} {}", reference.kind, reference.name),
                            attempts: ATTEMPTS,
                        });
                    }
                    info!(workload = %reference.name, kind = %reference.kind, "owner's pod template patched");
                    intent.phase = Phase::Applied;
                }
                Phase::Applied | Phase::Created | Phase::Deleted => {
                    let workload = self.workload(&namespace, &reference).await?;
                    let container = intent.action.container().unwrap_or_default().to_owned();
                    let old = intent.old_revision.clone().unwrap_or_default();
                    let desired = workload.replicas();
                    let label = if workload.kind == WorkloadKind::Deployment {
                        "pod-template-hash"
                    } else {
                        "controller-revision-hash"
                    };
                    let is_old =
                        move |p: &Pod| p.metadata.labels.as_ref().and_then(|l| l.get(label)) == Some(&old);
                    let pods: Api<Pod> = Api::namespaced(self.deps.kube.clone(), &namespace);
                    if workload.kind == WorkloadKind::StatefulSet {
                        self.delete_stuck_pods(&pods, &workload, &is_old).await?;
                    }
                    let config = watcher::Config::default().labels(&workload.selector());
                    let verdict = self
                        .verify(pods, config, |pods| {
                            ladder::rollout_progress(pods, &container, &is_old, desired)
                        })
                        .await;
                    let (result, detail) = verdict.describe(
                        &format!("the rollout of {} {}", reference.kind, reference.name),
                        self.config.verify_window,
                    );
                    let (kind, reason) = if result == OutcomeResult::Healed {
                        (EventType::Normal, "Remediated")
                    } else {
                        (EventType::Warning, "RemediationIneffective")
                    };
                    self.event(
                        &workload_ref(&namespace, &workload),
                        kind,
                        reason,
                        intent.action.kind_str(),
                        detail.clone(),
                    )
                    .await;
                    return self.done(intent, revision, result, detail, None).await;
                }
                Phase::Done => return Ok(intent.finished()),
            }
            revision = self.advance(&mut intent, revision).await?;
        }
    }

    /// Deletes (uid-guarded) the StatefulSet's pods that the failing template left unready, so the
    /// controller creates them again from the fixed template (see [`ladder::stuck_pods`]).
    pub(crate) async fn delete_stuck_pods(
        &self,
        pods: &Api<Pod>,
        workload: &ladder::Workload,
        is_old: &impl Fn(&Pod) -> bool,
    ) -> Result<(), StepError> {
        let listed = pods.list(&ListParams::default().labels(&workload.selector())).await?;
        let owned: Vec<Pod> = listed
            .items
            .into_iter()
            .filter(|p| {
                p.metadata.owner_references.iter().flatten().any(|o| Some(o.uid.as_str()) == workload.uid())
            })
            .collect();
        for pod in ladder::stuck_pods(&owned, is_old) {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let params = DeleteParams {
                preconditions: Some(Preconditions { uid: pod.metadata.uid.clone(), resource_version: None }),
                ..DeleteParams::default()
            };
            match pods.delete(&name, &params).await {
                Ok(_) => {
                    info!(pod = %name, "deleted a pod stuck on the failing revision; the StatefulSet recreates it")
                }
                Err(kube::Error::Api(status)) if status.is_not_found() || status.is_conflict() => {}
                Err(error) => return Err(error.into()),
            }
        }
        Ok(())
    }

    /// Resizes a bare pod in place and verifies it; falls back to a force replace where the server does
    /// not serve `pods/resize` or the node cannot fit the new size.
    pub(crate) async fn finish_resize(
        &self,
        mut intent: Intent,
        mut revision: u64,
    ) -> Result<Finished, StepError> {
        let pods: Api<Pod> = Api::namespaced(self.deps.kube.clone(), &intent.target.namespace);
        let name = intent.target.name.clone();
        let Action::IncreaseMemory { container, from, to } = intent.action.clone() else {
            return self
                .done(
                    intent,
                    revision,
                    OutcomeResult::Failed,
                    "a resize needs a memory increase".into(),
                    None,
                )
                .await;
        };
        loop {
            match intent.phase {
                // Only drive() moves an intent past approval; never act on one here.
                Phase::AwaitingApproval | Phase::Approved => return Ok(awaiting_approval(&intent)),
                Phase::Pending => {
                    let Some(pod) = pods
                        .get_opt(&name)
                        .await?
                        .filter(|p| p.metadata.uid.as_deref() == Some(intent.target.uid.as_str()))
                    else {
                        return self
                            .done(
                                intent,
                                revision,
                                OutcomeResult::Stale,
                                "the pod was replaced before the resize".into(),
                                None,
                            )
                            .await;
                    };
                    let patch =
                        ladder::resize_patch(&pod, &container, from, to).map_err(StepError::NoPatch)?;
                    // The resize subresource changes resources only; the record of what it was (to
                    // reverse it) and of the incident goes on the pod first.
                    let recorded = ladder::pod_has_record(
                        &pod,
                        replace::ORIGINAL_MEMORY_ANNOTATION,
                        &container,
                        &from.to_string(),
                        &intent.incident,
                    );
                    if !recorded {
                        let record = serde_json::json!({"metadata": {"annotations": {
                            format!("{}.{container}", replace::ORIGINAL_MEMORY_ANNOTATION): from.to_string(),
                            replace::INCIDENT_ANNOTATION: intent.incident.to_string()}}});
                        pods.patch(&name, &PatchParams::default(), &Patch::Merge(&record)).await?;
                    }
                    match pods.patch_resize(&name, &PatchParams::default(), &Patch::Strategic(&patch)).await {
                        Ok(_) => {
                            info!(%container, %to, "resized in place");
                            intent.phase = Phase::Applied;
                        }
                        Err(kube::Error::Api(status)) if matches!(status.code, 404 | 405 | 422) => {
                            info!(code = status.code, message = %status.message, "in-place resize not possible; replacing the pod");
                            return self.fall_back_to_replace(intent, revision).await;
                        }
                        Err(error) => return Err(error.into()),
                    }
                }
                Phase::Applied | Phase::Created | Phase::Deleted => {
                    if intent.baseline_restarts.is_none() {
                        // First the kubelet has to actuate the new size (or say it cannot).
                        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
                        let uid = intent.target.uid.clone();
                        let actuated = self
                            .wait_for(pods.clone(), config, |pods| {
                                match pods.iter().find(|p| p.metadata.uid.as_deref() == Some(uid.as_str())) {
                                    None => ladder::Progress::Failing("the pod is gone".into()),
                                    Some(pod) => match ladder::resize_state(pod, &container, to) {
                                        Ok(true) => ladder::Progress::Healthy,
                                        Ok(false) => ladder::Progress::Waiting,
                                        Err(why) => ladder::Progress::Failing(why),
                                    },
                                }
                            })
                            .await;
                        if !matches!(actuated, Verification::Healed) {
                            info!(?actuated, "the resize was not actuated; replacing the pod");
                            return self.fall_back_to_replace(intent, revision).await;
                        }
                        let pod = pods.get(&name).await?;
                        intent.baseline_restarts = Some(
                            pod.status
                                .as_ref()
                                .and_then(|s| s.container_statuses.as_ref())
                                .and_then(|c| c.iter().find(|c| c.name == container))
                                .map_or(0, |c| c.restart_count),
                        );
                        revision = self.advance(&mut intent, revision).await?;
                    }
                    return self.verify_pod_in_place(intent, revision, &pods, &container).await;
                }
                Phase::Done => return Ok(intent.finished()),
            }
            revision = self.advance(&mut intent, revision).await?;
        }
    }

    /// Switches an intent to a force replace (the original pod and its replacement are in the intent).
    pub(crate) async fn fall_back_to_replace(
        &self,
        mut intent: Intent,
        revision: u64,
    ) -> Result<Finished, StepError> {
        intent.strategy = Strategy::ForceReplace;
        intent.phase = Phase::Pending;
        let revision = self.advance(&mut intent, revision).await?;
        Box::pin(self.finish_replace(intent, revision)).await
    }

    /// Patches a bare pod's image (an update the apiserver allows) and verifies it.
    pub(crate) async fn finish_pod_patch(
        &self,
        mut intent: Intent,
        mut revision: u64,
    ) -> Result<Finished, StepError> {
        let pods: Api<Pod> = Api::namespaced(self.deps.kube.clone(), &intent.target.namespace);
        let name = intent.target.name.clone();
        let Action::RollbackImage { container, from, to } = intent.action.clone() else {
            return self
                .done(
                    intent,
                    revision,
                    OutcomeResult::Failed,
                    "a pod patch needs an image rollback".into(),
                    None,
                )
                .await;
        };
        loop {
            match intent.phase {
                // Only drive() moves an intent past approval; never act on one here.
                Phase::AwaitingApproval | Phase::Approved => return Ok(awaiting_approval(&intent)),
                Phase::Pending => {
                    let Some(pod) = pods
                        .get_opt(&name)
                        .await?
                        .filter(|p| p.metadata.uid.as_deref() == Some(intent.target.uid.as_str()))
                    else {
                        return self
                            .done(
                                intent,
                                revision,
                                OutcomeResult::Stale,
                                "the pod was replaced before the patch".into(),
                                None,
                            )
                            .await;
                    };
                    intent.baseline_restarts = Some(
                        pod.status
                            .as_ref()
                            .and_then(|s| s.container_statuses.as_ref())
                            .and_then(|c| c.iter().find(|c| c.name == container))
                            .map_or(0, |c| c.restart_count),
                    );
                    let done_before = ladder::pod_has_record(
                        &pod,
                        ladder::ORIGINAL_IMAGE_ANNOTATION,
                        &container,
                        &from,
                        &intent.incident,
                    ) && kubesent_common::pod::container(&pod, &container)
                        .and_then(|c| c.image.as_deref())
                        == Some(to.as_str());
                    if !done_before {
                        let patch = serde_json::json!({
                            "metadata": {"annotations": {
                                format!("{}.{container}", ladder::ORIGINAL_IMAGE_ANNOTATION): from,
                                replace::INCIDENT_ANNOTATION: intent.incident.to_string()}},
                            "spec": {"containers": [{"name": container, "image": to}]}
                        });
                        pods.patch(&name, &PatchParams::default(), &Patch::Strategic(&patch)).await?;
                        info!(%container, %to, "pod image rolled back");
                    }
                    intent.phase = Phase::Applied;
                }
                Phase::Applied | Phase::Created | Phase::Deleted => {
                    return self.verify_pod_in_place(intent, revision, &pods, &container).await;
                }
                Phase::Done => return Ok(intent.finished()),
            }
            revision = self.advance(&mut intent, revision).await?;
        }
    }

    /// Verifies a pod changed in place: its container must run healthy for the window without restarting
    /// again (one restart to leave the back-off is expected).
    pub(crate) async fn verify_pod_in_place(
        &self,
        intent: Intent,
        revision: u64,
        pods: &Api<Pod>,
        container: &str,
    ) -> Result<Finished, StepError> {
        let name = intent.target.name.clone();
        let uid = intent.target.uid.clone();
        let baseline = intent.baseline_restarts.unwrap_or(0);
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let verdict = self
            .verify(pods.clone(), config, |pods| {
                match pods.iter().find(|p| p.metadata.uid.as_deref() == Some(uid.as_str())) {
                    None => ladder::Progress::Failing("the pod is gone".into()),
                    Some(pod) => ladder::container_progress(pod, container, Some(baseline)),
                }
            })
            .await;
        let (result, detail) = verdict.describe(&format!("pod {name}"), self.config.verify_window);
        if let Ok(pod) = pods.get(&name).await {
            let (kind, reason) = if result == OutcomeResult::Healed {
                (EventType::Normal, "Remediated")
            } else {
                (EventType::Warning, "RemediationIneffective")
            };
            self.event(&pod.object_ref(&()), kind, reason, intent.action.kind_str(), detail.clone()).await;
        }
        self.done(intent, revision, result, detail, None).await
    }

    /// Drives a force replace from whatever phase it is in to done.
    pub(crate) async fn finish_replace(
        &self,
        mut intent: Intent,
        mut revision: u64,
    ) -> Result<Finished, StepError> {
        let pods: Api<Pod> = Api::namespaced(self.deps.kube.clone(), &intent.target.namespace);
        let name = intent.target.name.clone();
        let Some(replacement) = intent.replacement.clone() else {
            return self
                .done(
                    intent,
                    revision,
                    OutcomeResult::Failed,
                    "the intent holds no replacement pod".into(),
                    None,
                )
                .await;
        };
        loop {
            match intent.phase {
                // Only drive() moves an intent past approval; never act on one here.
                Phase::AwaitingApproval | Phase::Approved => return Ok(awaiting_approval(&intent)),
                Phase::Pending => {
                    self.delete_original(&pods, &intent).await?;
                    intent.phase = Phase::Deleted;
                }
                Phase::Deleted => {
                    let wait =
                        await_condition(pods.clone(), &name, conditions::is_deleted(&intent.target.uid));
                    tokio::time::timeout(self.config.delete_timeout, wait)
                        .await
                        .map_err(|_| StepError::StillTerminating {
                            pod: name.clone(),
                            after: self.config.delete_timeout,
                        })?
                        .map_err(StepError::Wait)?;
                    let created = match pods.create(&PostParams::default(), &replacement).await {
                        Ok(pod) => pod,
                        Err(kube::Error::Api(status)) if status.is_already_exists() => {
                            let existing = pods.get(&name).await?;
                            let ours = existing
                                .metadata
                                .annotations
                                .as_ref()
                                .and_then(|a| a.get(replace::INCIDENT_ANNOTATION))
                                == Some(&intent.incident.to_string());
                            if !ours {
                                let detail = format!(
                                    "the name {name} was taken by another pod before the replacement was created"
                                );
                                return self
                                    .done(intent, revision, OutcomeResult::Failed, detail, None)
                                    .await;
                            }
                            existing
                        }
                        Err(error) => return Err(error.into()),
                    };
                    intent.replacement_uid = created.metadata.uid.clone();
                    intent.phase = Phase::Created;
                    info!(replacement = ?intent.replacement_uid, "replacement pod created");
                }
                Phase::Created | Phase::Applied => {
                    let uid = intent.replacement_uid.clone().unwrap_or_default();
                    let container = intent.action.container().unwrap_or_default().to_owned();
                    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
                    let verdict = self
                        .verify(pods.clone(), config, |pods| {
                            match pods.iter().find(|p| p.metadata.uid.as_deref() == Some(uid.as_str())) {
                                None => ladder::Progress::Waiting,
                                Some(pod) => ladder::container_progress(pod, &container, None),
                            }
                        })
                        .await;
                    let (result, detail) = verdict.describe("the replacement", self.config.verify_window);
                    if let Ok(pod) = pods.get(&name).await {
                        let (kind, reason) = if result == OutcomeResult::Healed {
                            (EventType::Normal, "Remediated")
                        } else {
                            (EventType::Warning, "RemediationIneffective")
                        };
                        self.event(
                            &pod.object_ref(&()),
                            kind,
                            reason,
                            intent.action.kind_str(),
                            detail.clone(),
                        )
                        .await;
                    }
                    let replacement_uid = intent.replacement_uid.clone();
                    return self.done(intent, revision, result, detail, replacement_uid).await;
                }
                Phase::Done => return Ok(intent.finished()),
            }
            revision = self.advance(&mut intent, revision).await?;
        }
    }

    /// Ends the incident's intent as failed if nothing was changed yet (true); an intent that already
    /// changed something is kept so a retry or a takeover finishes it (false).
    pub(crate) async fn give_up_if_unchanged(
        &self,
        incident: &proto::IncidentId,
        detail: &str,
    ) -> Result<bool, StepError> {
        match self.intents.get(incident).await? {
            None => Ok(true),
            Some((intent, revision)) if intent.phase == Phase::Pending => {
                self.done(intent, revision, OutcomeResult::Failed, detail.to_owned(), None).await?;
                Ok(true)
            }
            Some(_) => Ok(false),
        }
    }

    pub(crate) async fn done(
        &self,
        mut intent: Intent,
        revision: u64,
        result: OutcomeResult,
        detail: String,
        replacement_uid: Option<String>,
    ) -> Result<Finished, StepError> {
        intent.phase = Phase::Done;
        intent.result = Some(result);
        intent.detail = Some(detail);
        intent.replacement_uid = replacement_uid.or(intent.replacement_uid.clone());
        intent.updated_at = jiff::Timestamp::now();
        self.intents.advance(&intent, revision).await?;
        let lock =
            if intent.lock.is_empty() { intent::lock_key(&intent.target) } else { intent.lock.clone() };
        if let Err(error) = self.intents.unlock(&lock).await {
            warn!(%error, "releasing the lock failed");
        }
        Ok(intent.finished())
    }

    /// Deletes the original pod with a uid precondition and the latest resourceVersion. A status update
    /// between read and delete changes the resourceVersion, so a conflict is re-read and retried while
    /// the uid is the same.
    pub(crate) async fn delete_original(&self, pods: &Api<Pod>, intent: &Intent) -> Result<(), StepError> {
        const ATTEMPTS: usize = 5;
        for _ in 0..ATTEMPTS {
            let Some(current) = pods.get_opt(&intent.target.name).await? else { return Ok(()) };
            if current.metadata.uid.as_deref() != Some(intent.target.uid.as_str()) {
                // Already replaced (by us before a crash, or by someone else): nothing to delete.
                return Ok(());
            }
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: Some(intent.target.uid.clone()),
                    resource_version: current.metadata.resource_version.clone(),
                }),
                ..DeleteParams::default()
            };
            match pods.delete(&intent.target.name, &params).await {
                Ok(_) => {
                    info!("original pod deleted with uid and resourceVersion preconditions");
                    return Ok(());
                }
                Err(kube::Error::Api(status)) if status.is_not_found() => return Ok(()),
                Err(kube::Error::Api(status)) if status.is_conflict() => continue,
                Err(error) => return Err(error.into()),
            }
        }
        Err(StepError::KeptChanging { what: format!("pod {}", intent.target.name), attempts: ATTEMPTS })
    }
}

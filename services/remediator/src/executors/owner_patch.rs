//! Owner patch: the owning Deployment's or StatefulSet's pod template is patched (guarded by its
//! resourceVersion, re-checked on every conflict), then the rollout is verified.

use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api,
    api::{DeleteParams, ListParams, Preconditions},
};
use kube_runtime::watcher;
use kubesent_proto::{Action, OutcomeResult, WorkloadKind, WorkloadRef};
use tracing::info;

use super::{Executor, Step};
use crate::{
    Remediator, StepError, ladder,
    workload::{Workload, WorkloadApi, WorkloadError},
};
use kubesent_proto::intent::{Intent, Phase};

/// Patch attempts before a workload that keeps changing is given up on.
const ATTEMPTS: usize = 4;

/// The owner-patch executor.
pub(crate) struct OwnerPatch;

impl Executor for OwnerPatch {
    async fn step(&self, r: &Remediator, intent: &mut Intent) -> Result<Step, StepError> {
        let namespace = intent.target.namespace.clone();
        let Some(reference) = intent.workload.clone() else {
            return Ok(Step::finish(OutcomeResult::Failed, "the intent names no workload"));
        };
        if !matches!(reference.kind, WorkloadKind::Deployment | WorkloadKind::StatefulSet) {
            // Only written for these two: a forged or corrupted intent ends here, without a change.
            return Ok(Step::finish(
                OutcomeResult::Failed,
                WorkloadError::Unsupported(reference.kind).to_string(),
            ));
        }
        let api = WorkloadApi::new(r.deps.kube.clone(), &namespace);
        if intent.phase == Phase::Pending {
            for _ in 0..ATTEMPTS {
                let workload = api.get(&reference).await?;
                if let Err(why) = ladder::template_matches(&workload, &intent.action) {
                    return Ok(Step::finish(OutcomeResult::Stale, why.to_string()));
                }
                // (Patched before a crash and not yet recorded: nothing to write again.)
                let patch = match &intent.action {
                    Action::PauseRollout { revision, .. } => {
                        let history = api.revisions(&workload).await?;
                        let reason = format!(
                            "{revision} fails (KubeSent incident {}) and the revision before it has no ready pods to go back to; fix the template, then: kubectl rollout resume deployment/{}",
                            intent.incident,
                            workload.name()
                        );
                        match ladder::pause_patch(
                            &workload,
                            &history,
                            &intent.action,
                            &intent.incident,
                            &reason,
                        ) {
                            Ok(patch) => patch,
                            Err(why) => return Ok(Step::finish(OutcomeResult::Stale, why.to_string())),
                        }
                    }
                    // The template comes from the workload's own history, read now.
                    Action::RollbackRevision { .. } => {
                        let history = api.revisions(&workload).await?;
                        match ladder::revision_patch(&workload, &history, &intent.action, &intent.incident) {
                            Ok(patch) => patch,
                            Err(why) => return Ok(Step::finish(OutcomeResult::Stale, why.to_string())),
                        }
                    }
                    _ if ladder::already_applied(&workload, &intent.action, &intent.incident) => None,
                    _ => Some(
                        ladder::owner_patch(&workload, &intent.action, &intent.incident)
                            .map_err(StepError::NoPatch)?,
                    ),
                };
                if let Some(patch) = patch {
                    match api.patch(&workload, patch).await {
                        Ok(()) => {}
                        // Changed since it was read: read it again and re-check.
                        Err(WorkloadError::Kube(kube::Error::Api(status))) if status.is_conflict() => {
                            continue;
                        }
                        Err(error) => return Err(error.into()),
                    }
                }
                if let Action::PauseRollout { revision, .. } = &intent.action {
                    // Nothing heals by a pause: it stops the rollout where it is, and a human takes over.
                    let detail = format!(
                        "the rollout of {workload} is paused at {revision}, which fails; fix the template, then `kubectl rollout resume deployment/{}`",
                        workload.name()
                    );
                    info!(workload = %reference.name, "rollout paused");
                    r.announce(&workload.object_ref(), OutcomeResult::Applied, intent, &detail).await;
                    return Ok(Step::finish(OutcomeResult::Applied, detail));
                }
                info!(workload = %reference.name, kind = %reference.kind, "owner's pod template patched");
                intent.phase = Phase::Applied;
                return Ok(Step::Advanced);
            }
            return Err(StepError::KeptChanging { what: reference.to_string(), attempts: ATTEMPTS });
        }
        // Applied (or a phase another strategy left): verify the rollout.
        let workload = api.get(&reference).await?;
        let container = intent.action.container().unwrap_or_default().to_owned();
        let old = intent.old_revision.clone().unwrap_or_default();
        let desired = workload.replicas();
        let label = workload.revision_label();
        let is_old = move |p: &Pod| p.metadata.labels.as_ref().and_then(|l| l.get(label)) == Some(&old);
        let pods: Api<Pod> = Api::namespaced(r.deps.kube.clone(), &namespace);
        if workload.kind() == WorkloadKind::StatefulSet {
            delete_stuck_pods(&pods, &workload, &is_old).await?;
        }
        let config = watcher::Config::default().labels(&workload.selector());
        let verification =
            r.verify(pods, config, |pods| ladder::rollout_progress(pods, &container, &is_old, desired));
        // Another writer that changes KubeSent's change back ends the verification at once: KubeSent
        // never fights it.
        let overridden = watch_for_override(&r.deps.kube, &namespace, &reference, &intent.action);
        let (result, detail) = tokio::select! {
            verdict = verification => verdict.describe(&format!("the rollout of {workload}"), r.config.verify_window),
            (manager, what) = overridden => {
                info!(workload = %reference.name, %manager, "KubeSent's change was overridden");
                (
                    OutcomeResult::Overridden,
                    format!(
                        "{what}: {manager} changed {workload} while KubeSent verified its fix; KubeSent stopped, wrote nothing more, and only suggests for container {container} from now on"
                    ),
                )
            }
        };
        r.announce(&workload.object_ref(), result, intent, &detail).await;
        Ok(Step::finish(result, detail))
    }
}

/// Resolves once the workload's template no longer holds KubeSent's change (see
/// [`ladder::overridden`]), with the field manager that changed it and what it holds now; never for an
/// action whose change is not one field.
async fn watch_for_override(
    kube: &kube::Client,
    namespace: &str,
    reference: &WorkloadRef,
    action: &Action,
) -> (String, String) {
    use futures::StreamExt as _;
    use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
    use kube_runtime::WatchStreamExt as _;
    let config = watcher::Config::default().fields(&format!("metadata.name={}", reference.name));
    let mut workloads = match reference.kind {
        WorkloadKind::StatefulSet => watcher(Api::<StatefulSet>::namespaced(kube.clone(), namespace), config)
            .default_backoff()
            .applied_objects()
            .filter_map(|set| async move { set.ok().map(|s| Workload::StatefulSet(Box::new(s))) })
            .boxed(),
        _ => watcher(Api::<Deployment>::namespaced(kube.clone(), namespace), config)
            .default_backoff()
            .applied_objects()
            .filter_map(
                |deployment| async move { deployment.ok().map(|d| Workload::Deployment(Box::new(d))) },
            )
            .boxed(),
    };
    while let Some(workload) = workloads.next().await {
        if let Some(what) = ladder::overridden(&workload, action) {
            let manager = ladder::field_manager(&workload, action, crate::FIELD_MANAGER).map_or_else(
                || "a writer that left no field manager".to_owned(),
                |m| format!("field manager {m:?}"),
            );
            return (manager, what);
        }
    }
    std::future::pending().await
}

/// Deletes (uid-guarded) the StatefulSet's pods that the failing template left unready, so the
/// controller creates them again from the fixed template (see [`ladder::stuck_pods`]).
async fn delete_stuck_pods(
    pods: &Api<Pod>,
    workload: &Workload,
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

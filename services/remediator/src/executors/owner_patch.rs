//! Owner patch: the owning Deployment's or StatefulSet's pod template is patched (guarded by its
//! resourceVersion, re-checked on every conflict), then the rollout is verified.

use k8s_openapi::api::{core::v1::Pod, policy::v1::PodDisruptionBudget};
use kube::{
    Api,
    api::{DeleteParams, EvictParams, ListParams, Preconditions},
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
                    r.write_permit().await;
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
        if workload.kind() == WorkloadKind::StatefulSet
            && let Some(refused) = evict_stuck_pods(r, &namespace, &pods, &workload, &is_old).await?
        {
            // A disruption budget is not KubeSent's to override: a human decides.
            let detail = format!(
                "the template of {workload} is fixed, but {refused}; KubeSent does not force an eviction, so the fix cannot roll out until a human decides"
            );
            r.announce(&workload.object_ref(), OutcomeResult::Ineffective, intent, &detail).await;
            return Ok(Step::finish(OutcomeResult::Ineffective, detail));
        }
        let config = watcher::Config::default().labels(&workload.selector());
        let action = intent.action.clone();
        let answered = intent.verdict.as_ref().map(|v| v.failure.kind);
        let verification = r.verify(pods, config, |pods| match ladder::landed(pods, &action, &is_old) {
            Err(why) => ladder::Progress::NotLanded(why),
            Ok(()) => ladder::rollout_progress(pods, &container, &is_old, desired, answered),
        });
        // The workload itself is watched too: another writer that changes KubeSent's change back ends the
        // verification at once (KubeSent never fights it), and so does a rollout its controller reports
        // it cannot make.
        let signal = watch_workload(&r.deps.kube, &namespace, &reference, &intent.action, intent.applied_at);
        let (result, mut detail) = tokio::select! {
            verdict = verification => verdict.describe(&format!("the rollout of {workload}"), r.config.verify_window),
            signal = signal => match signal {
                Signal::Overridden { manager, what } => {
                    info!(workload = %reference.name, %manager, "KubeSent's change was overridden");
                    (
                        OutcomeResult::Overridden,
                        format!(
                            "{what}: {manager} changed {workload} while KubeSent verified its fix; KubeSent stopped, wrote nothing more, and only suggests for container {container} from now on"
                        ),
                    )
                }
                Signal::Blocked(why) => (OutcomeResult::Reverted, format!("the rollout of {workload} made things worse: {why}")),
            },
        };
        if result == OutcomeResult::NotLanded {
            detail = format!(
                "{detail}; {}",
                who_changed_it(r, &namespace, &workload, &intent.action, &is_old).await
            );
        }
        // What did not land or made things worse is taken back, unless someone changed it meanwhile.
        let mut result = result;
        if matches!(result, OutcomeResult::NotLanded | OutcomeResult::Reverted) {
            if !r.config.take_back {
                detail = format!(
                    "{detail}; KubeSent left its change in place (taking changes back is turned off)"
                );
                if result == OutcomeResult::Reverted {
                    result = OutcomeResult::Ineffective;
                }
            } else {
                detail = match take_back(r, &api, &reference, intent).await {
                    Ok(restored) => format!(
                        "{detail}; KubeSent took its change back ({restored}) and leaves container {container} to a human"
                    ),
                    Err(why) => {
                        if result == OutcomeResult::Reverted {
                            result = OutcomeResult::Ineffective;
                        }
                        format!("{detail}; taking the change back failed: {why}")
                    }
                };
            }
        }
        r.announce(&workload.object_ref(), result, intent, &detail).await;
        Ok(Step::finish(result, detail))
    }
}

/// Who may have changed a new pod of `workload` on its way in (see [`ladder::who_admitted`]), in words.
async fn who_changed_it(
    r: &Remediator,
    namespace: &str,
    workload: &Workload,
    action: &Action,
    is_old: &impl Fn(&Pod) -> bool,
) -> String {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    let pods: Api<Pod> = Api::namespaced(r.deps.kube.clone(), namespace);
    let listed = pods.list(&ListParams::default().labels(&workload.selector())).await;
    let changed = listed.ok().and_then(|list| {
        list.items.into_iter().find(|p| ladder::landed(std::slice::from_ref(p), action, is_old).is_err())
    });
    let Some(pod) = changed else { return "the changed pod is gone".into() };
    let webhooks = match Api::<MutatingWebhookConfiguration>::all(r.deps.kube.clone())
        .list(&ListParams::default())
        .await
    {
        Ok(list) => list.items,
        Err(error) => {
            tracing::warn!(%error, "could not list the mutating webhooks");
            Vec::new()
        }
    };
    match ladder::who_admitted(&pod, &webhooks).as_slice() {
        [] => "no LimitRange default or mutating webhook for pods was found to have done it".into(),
        found => format!("it could have been changed by {}", found.join(", ")),
    }
}

/// Restores what the intent changed in the workload's template, as `kubesent undo` does (only while the
/// template still holds KubeSent's value). Returns what was restored.
async fn take_back(
    r: &Remediator,
    api: &WorkloadApi,
    reference: &WorkloadRef,
    intent: &Intent,
) -> Result<String, String> {
    for _ in 0..ATTEMPTS {
        let workload = api.get(reference).await.map_err(|e| e.to_string())?;
        let patch = crate::undo::undo_owner_patch(&workload, &intent.action, &intent.incident)
            .map_err(|e| e.to_string())?;
        r.write_permit().await;
        match api.patch(&workload, patch).await {
            Ok(()) => {
                return Ok(crate::undo::reverse(&intent.action)
                    .map(|back| crate::undo::describe(&back))
                    .unwrap_or_default());
            }
            // The controller wrote its status meanwhile: read it again and re-check.
            Err(WorkloadError::Kube(kube::Error::Api(status))) if status.is_conflict() => continue,
            Err(WorkloadError::Kube(kube::Error::Api(status))) => return Err(status.message),
            Err(error) => return Err(error.to_string()),
        }
    }
    Err(format!("{reference} kept changing ({ATTEMPTS} attempts)"))
}

/// What the workload's watch says about a change under verification.
enum Signal {
    /// Another manager changed it back.
    Overridden {
        /// The field manager, in words.
        manager: String,
        /// What the template holds now.
        what: String,
    },
    /// Its controller cannot roll it out (why).
    Blocked(String),
}

/// Resolves once the workload's template no longer holds KubeSent's change (see
/// [`ladder::overridden`]) or its controller reports the rollout blocked (see [`ladder::rollout_blocked`]).
async fn watch_workload(
    kube: &kube::Client,
    namespace: &str,
    reference: &WorkloadRef,
    action: &Action,
    since: Option<jiff::Timestamp>,
) -> Signal {
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
            return Signal::Overridden { manager, what };
        }
        if let Some(why) = ladder::rollout_blocked(&workload, since) {
            return Signal::Blocked(why);
        }
    }
    std::future::pending().await
}

/// Evicts (uid-guarded, through the Eviction API, so PodDisruptionBudgets are honoured) the StatefulSet's
/// pods that the failing template left unready, so the controller creates them again from the fixed
/// template (see [`ladder::stuck_pods`]). Returns why an eviction was refused, when a budget refused one.
async fn evict_stuck_pods(
    r: &Remediator,
    namespace: &str,
    pods: &Api<Pod>,
    workload: &Workload,
    is_old: &impl Fn(&Pod) -> bool,
) -> Result<Option<String>, StepError> {
    let listed = pods.list(&ListParams::default().labels(&workload.selector())).await?;
    let owned: Vec<Pod> = listed
        .items
        .into_iter()
        .filter(|p| {
            p.metadata.owner_references.iter().flatten().any(|o| Some(o.uid.as_str()) == workload.uid())
        })
        .collect();
    let budgets = Api::<PodDisruptionBudget>::namespaced(r.deps.kube.clone(), namespace)
        .list(&ListParams::default())
        .await?
        .items;
    let budgets = budgets.as_slice();
    for pod in ladder::stuck_pods(&owned, is_old) {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let params = EvictParams {
            delete_options: Some(DeleteParams {
                preconditions: Some(Preconditions { uid: pod.metadata.uid.clone(), resource_version: None }),
                ..DeleteParams::default()
            }),
            ..EvictParams::default()
        };
        // A budget that says no is read first: the API's 429 is retried by the client as if it were
        // throttling.
        if let Some(refused) = ladder::budget_refuses(pod, budgets) {
            return Ok(Some(format!(
                "pod {name}, stuck on the failing revision, may not be evicted: {refused}"
            )));
        }
        r.write_permit().await;
        match pods.evict(&name, &params).await {
            Ok(_) => {
                info!(pod = %name, "evicted a pod stuck on the failing revision; the StatefulSet recreates it")
            }
            Err(kube::Error::Api(status)) if status.is_not_found() || status.is_conflict() => {}
            Err(kube::Error::Api(status)) if status.code == 429 => {
                let budget = status
                    .details
                    .as_ref()
                    .and_then(|d| d.causes.first())
                    .map(|c| format!(" ({})", c.message))
                    .unwrap_or_default();
                return Ok(Some(format!(
                    "pod {name}, stuck on the failing revision, may not be evicted: {}{budget}",
                    status.message
                )));
            }
            Err(error) => return Err(error.into()),
        }
    }
    Ok(None)
}

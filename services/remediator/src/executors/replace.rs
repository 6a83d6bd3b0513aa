//! Force replace: the original pod is deleted with uid and resourceVersion preconditions, the replacement
//! (held in the intent since before anything changed) is created under the same name once the original is
//! gone, and the replacement is verified.

use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Resource as _,
    api::{DeleteParams, PostParams, Preconditions},
};
use kube_runtime::{
    wait::{await_condition, conditions},
    watcher,
};
use kubesent_proto::OutcomeResult;
use tracing::info;

use super::{Executor, Step};
use crate::{Remediator, StepError, ladder, replace};
use kubesent_proto::intent::{Intent, Phase};

/// Delete attempts before a pod that keeps changing is given up on.
const ATTEMPTS: usize = 5;

/// The force-replace executor.
pub(crate) struct ForceReplace;

impl Executor for ForceReplace {
    async fn step(&self, r: &Remediator, intent: &mut Intent) -> Result<Step, StepError> {
        let pods: Api<Pod> = Api::namespaced(r.deps.kube.clone(), &intent.target.namespace);
        let name = intent.target.name.clone();
        let Some(replacement) = intent.replacement.clone() else {
            return Ok(Step::finish(OutcomeResult::Failed, "the intent holds no replacement pod"));
        };
        match intent.phase {
            Phase::Pending => {
                delete_original(r, &pods, intent).await?;
                intent.phase = Phase::Deleted;
                Ok(Step::Advanced)
            }
            Phase::Deleted => {
                let wait = await_condition(pods.clone(), &name, conditions::is_deleted(&intent.target.uid));
                tokio::time::timeout(r.config.delete_timeout, wait)
                    .await
                    .map_err(|_| StepError::StillTerminating {
                        pod: name.clone(),
                        after: r.config.delete_timeout,
                    })?
                    .map_err(StepError::Wait)?;
                r.write_permit().await;
                let created = match pods
                    .create(
                        &PostParams {
                            field_manager: Some(crate::FIELD_MANAGER.to_owned()),
                            ..PostParams::default()
                        },
                        &replacement,
                    )
                    .await
                {
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
                            return Ok(Step::finish(
                                OutcomeResult::Failed,
                                format!(
                                    "the name {name} was taken by another pod before the replacement was created"
                                ),
                            ));
                        }
                        existing
                    }
                    Err(error) => return Err(error.into()),
                };
                intent.replacement_uid = created.metadata.uid.clone();
                intent.phase = Phase::Created;
                info!(replacement = ?intent.replacement_uid, "replacement pod created");
                Ok(Step::Advanced)
            }
            _ => {
                let uid = intent.replacement_uid.clone().unwrap_or_default();
                let container = intent.action.container().unwrap_or_default().to_owned();
                let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
                let verdict = r
                    .verify(pods.clone(), config, |pods| {
                        match pods.iter().find(|p| p.metadata.uid.as_deref() == Some(uid.as_str())) {
                            None => ladder::Progress::Waiting,
                            Some(pod) => ladder::container_progress(pod, &container, None),
                        }
                    })
                    .await;
                let (result, detail) = verdict.describe("the replacement", r.config.verify_window);
                if let Ok(pod) = pods.get(&name).await {
                    r.announce(&pod.object_ref(&()), result, intent, &detail).await;
                }
                Ok(Step::Finish { result, detail, replacement_uid: intent.replacement_uid.clone() })
            }
        }
    }
}

/// Deletes the original pod with a uid precondition and the latest resourceVersion. A status update
/// between read and delete changes the resourceVersion, so a conflict is re-read and retried while the
/// uid is the same.
async fn delete_original(r: &Remediator, pods: &Api<Pod>, intent: &Intent) -> Result<(), StepError> {
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
        r.write_permit().await;
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

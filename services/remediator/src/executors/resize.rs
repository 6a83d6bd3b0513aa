//! In-place resize of a bare pod's memory (`pods/resize`), recorded on the pod first so it can be
//! reversed; verified once the kubelet has actuated it. Where the server does not serve the subresource or
//! the node cannot fit the new size, the intent is handed over to a force replace.

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, api::Patch};
use kube_runtime::watcher;
use kubesent_proto::{Action, OutcomeResult, Strategy};
use tracing::info;

use super::{Executor, Step, restarts, target_pod};
use crate::{Remediator, StepError, ladder, replace, verify::Verification};
use kubesent_proto::intent::{Intent, Phase};

/// The in-place resize executor.
pub(crate) struct InPlaceResize;

impl Executor for InPlaceResize {
    async fn step(&self, r: &Remediator, intent: &mut Intent) -> Result<Step, StepError> {
        let pods: Api<Pod> = Api::namespaced(r.deps.kube.clone(), &intent.target.namespace);
        let name = intent.target.name.clone();
        let Action::IncreaseMemory { container, from, to } = intent.action.clone() else {
            return Ok(Step::finish(OutcomeResult::Failed, "a resize needs a memory increase"));
        };
        if intent.phase == Phase::Pending {
            let Some(pod) = target_pod(&pods, intent).await? else {
                return Ok(Step::finish(OutcomeResult::Stale, "the pod was replaced before the resize"));
            };
            let patch = ladder::resize_patch(&pod, &container, from, to).map_err(StepError::NoPatch)?;
            // The resize subresource changes resources only; the record of what it was (to reverse it)
            // and of the incident goes on the pod first.
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
                r.write_permit().await;
                pods.patch(&name, &crate::patch_params(), &Patch::Merge(&record)).await?;
            }
            r.write_permit().await;
            return match pods.patch_resize(&name, &crate::patch_params(), &Patch::Strategic(&patch)).await {
                Ok(_) => {
                    info!(%container, %to, "resized in place");
                    intent.phase = Phase::Applied;
                    Ok(Step::Advanced)
                }
                Err(kube::Error::Api(status)) if matches!(status.code, 404 | 405 | 422) => {
                    info!(code = status.code, message = %status.message, "in-place resize not possible; replacing the pod");
                    Ok(Step::HandOver(Strategy::ForceReplace))
                }
                Err(error) => Err(error.into()),
            };
        }
        if intent.baseline_restarts.is_none() {
            // First the kubelet has to actuate the new size (or say it cannot).
            let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
            let uid = intent.target.uid.clone();
            let actuated = r
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
                return Ok(Step::HandOver(Strategy::ForceReplace));
            }
            let pod = pods.get(&name).await?;
            intent.baseline_restarts = Some(restarts(&pod, &container));
            return Ok(Step::Advanced);
        }
        Ok(r.verify_pod_in_place(intent, &pods, &container).await)
    }
}

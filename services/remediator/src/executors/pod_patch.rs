//! Pod patch: a bare pod's image is rolled back in place (an update the apiserver allows), with the
//! original recorded on the pod so it can be reversed, then verified.

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, api::Patch};
use kubesent_proto::{Action, OutcomeResult};
use tracing::info;

use super::{Executor, Step, restarts, target_pod};
use crate::{Remediator, StepError, ladder, replace};
use kubesent_proto::intent::{Intent, Phase};

/// The pod-patch executor.
pub(crate) struct PodPatch;

impl Executor for PodPatch {
    async fn step(&self, r: &Remediator, intent: &mut Intent) -> Result<Step, StepError> {
        let pods: Api<Pod> = Api::namespaced(r.deps.kube.clone(), &intent.target.namespace);
        let Action::RollbackImage { container, from, to } = intent.action.clone() else {
            return Ok(Step::finish(OutcomeResult::Failed, "a pod patch needs an image rollback"));
        };
        if intent.phase != Phase::Pending {
            return Ok(r.verify_pod_in_place(intent, &pods, &container).await);
        }
        let Some(pod) = target_pod(&pods, intent).await? else {
            return Ok(Step::finish(OutcomeResult::Stale, "the pod was replaced before the patch"));
        };
        intent.baseline_restarts = Some(restarts(&pod, &container));
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
            r.write_permit().await;
            pods.patch(&intent.target.name, &crate::patch_params(), &Patch::Strategic(&patch)).await?;
            info!(%container, %to, "pod image rolled back");
        }
        intent.phase = Phase::Applied;
        Ok(Step::Advanced)
    }
}

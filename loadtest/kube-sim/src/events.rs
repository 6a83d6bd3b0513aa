//! Events the control plane's controllers record about the objects they manage (a ReplicaSet's
//! `FailedCreate`), as core/v1 Events aggregated the way the event recorder aggregates them: the same
//! reason and message about the same object is one Event whose `count` grows.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use serde_json::json;

use crate::{resources::EVENTS, state::SimState, store::Mutation};

impl SimState {
    /// Records (or counts again) a `type_` event with `reason` and `message` about the object `involved`
    /// refers to in `namespace`, from `component` (`replicaset-controller`).
    pub fn record_event(
        &self,
        namespace: &str,
        involved: &OwnerReference,
        type_: &str,
        reason: &str,
        message: &str,
        component: &str,
    ) {
        if crate::api::namespace_phase(&self.store, namespace).as_deref() != Some("Active") {
            // New content in a namespace being deleted (or gone) is refused; the recorder drops it.
            return;
        }
        // One Event per object, reason and message: its name is derived from them.
        let key = format!("{}/{reason}/{message}", involved.uid);
        let hash = key
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        let name = format!("{}.{hash:016x}", involved.name);
        let now = crate::api::now_time();
        let result = self.store.mutate(&EVENTS, namespace, &name, |current| {
            let mut event = match current {
                Some(object) => object.value(),
                None => json!({
                    "metadata": {"name": name, "namespace": namespace, "uid": uuid::Uuid::new_v4().to_string(),
                        "creationTimestamp": now},
                    "involvedObject": {"kind": involved.kind, "namespace": namespace, "name": involved.name,
                        "uid": involved.uid, "apiVersion": involved.api_version},
                    "reason": reason, "message": message, "source": {"component": component},
                    "firstTimestamp": now, "count": 0, "type": type_, "eventTime": null,
                    "reportingComponent": component, "reportingInstance": "",
                }),
            };
            event["lastTimestamp"] = now.clone();
            event["count"] = json!(event["count"].as_i64().unwrap_or(0) + 1);
            Ok(Mutation::Put(event))
        });
        if let Err(error) = result {
            tracing::debug!(%error.message, reason, "recording an event failed");
        }
    }
}

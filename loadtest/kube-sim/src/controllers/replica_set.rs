//! The ReplicaSet controller: keeps the number of pods of the template, deletes the surplus.

use super::*;

impl Controllers<'_> {
    pub(super) fn replica_set(&self, ns: &str, name: &str) -> Result<(), ApiError> {
        let Ok(object) = self.state.store.get(&REPLICASETS, ns, name) else { return Ok(()) };
        let rs: ReplicaSet = object.typed()?;
        if rs.metadata.deletion_timestamp.is_some() {
            return Ok(());
        }
        let spec = rs.spec.clone().unwrap_or_default();
        let desired = spec.replicas.unwrap_or(1).max(0) as usize;
        let pods = self.owned_pods(ns, &object.uid)?;
        let mut active: Vec<&Pod> = pods.iter().filter(|p| is_active(p)).collect();
        // A create admission refused: the status says so (`ReplicaFailure`), then the error is returned
        // so the controller tries again after its back-off.
        let mut refused: Option<ApiError> = None;
        if active.len() < desired {
            let template = spec.template.clone().unwrap_or_default();
            for _ in active.len()..desired {
                let created = self.create_pod(
                    ns,
                    &template,
                    None,
                    &format!("{name}-"),
                    &BTreeMap::new(),
                    owner_ref("ReplicaSet", name, &object.uid),
                );
                match created {
                    Ok(()) => {}
                    Err(error) if error.refuses_creation() => {
                        refused = Some(error);
                        break;
                    }
                    Err(error) => return Err(error),
                }
            }
        } else if active.len() > desired {
            // Delete the least valuable first: not ready, then the newest.
            active.sort_by_key(|p| {
                (is_ready(p), std::cmp::Reverse(p.metadata.creation_timestamp.as_ref().map(|t| t.0)))
            });
            for pod in &active[..active.len() - desired] {
                self.delete_pod(ns, pod)?;
            }
        }
        let pods = self.owned_pods(ns, &object.uid)?;
        let counted: Vec<&Pod> = pods.iter().filter(|p| is_active(p)).collect();
        let ready = counted.iter().filter(|p| is_ready(p)).count();
        // A pod is available once it has been ready for minReadySeconds (on the simulated clock); the
        // ReplicaSet is looked at again when the next one will be.
        let min_ready = self.state.kubelet.clock().scaled(std::time::Duration::from_secs(u64::from(
            spec.min_ready_seconds.unwrap_or(0).max(0).unsigned_abs(),
        )));
        let now = jiff::Timestamp::now();
        let mut next_available: Option<std::time::Duration> = None;
        let available = counted
            .iter()
            .filter(|p| is_ready(p))
            .filter(|p| {
                let since = ready_since(p).unwrap_or(now);
                let waited = now.duration_since(since).unsigned_abs();
                let available = waited >= min_ready;
                if !available {
                    let left = min_ready - waited;
                    next_available = Some(next_available.map_or(left, |n| n.min(left)));
                }
                available
            })
            .count();
        if let Some(left) = next_available {
            self.requeue_after(Key::ReplicaSet(ns.to_owned(), name.to_owned()), left);
        }
        let mut status = json!({
            "replicas": counted.len(), "fullyLabeledReplicas": counted.len(), "readyReplicas": ready,
            "availableReplicas": available, "observedGeneration": rs.metadata.generation.unwrap_or(1),
        });
        if let Some(error) = &refused {
            let since = rs
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "ReplicaFailure"))
                .and_then(|c| c.last_transition_time.clone())
                .map_or_else(crate::api::now_time, |t| json!(t));
            status["conditions"] = json!([{"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
                "message": error.message, "lastTransitionTime": since}]);
        }
        self.write_status(&REPLICASETS, ns, name, &object.uid, status)?;
        refused.map_or(Ok(()), Err)
    }
}

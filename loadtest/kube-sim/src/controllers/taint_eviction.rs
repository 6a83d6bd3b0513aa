//! The taint eviction controller: a pod bound to a node with a `NoExecute` taint it does not tolerate is
//! deleted at once; one that tolerates it for `tolerationSeconds` is deleted that long (on the simulated
//! clock) after the taint was added, unless the taint goes first. Every pod tolerates the `not-ready`
//! and `unreachable` taints for 300 s by default (`DefaultTolerationSeconds`), so a node that stays
//! NotReady loses its pods after five simulated minutes and their controllers make new ones elsewhere.
//! An evicted pod gets the `DisruptionTarget` condition and a `TaintManagerEviction` event first.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Toleration};
use serde_json::Value;

use super::{Controllers, Key};
use crate::{
    api_error::ApiError,
    nodes::{Taint, tolerates},
    resources::{NODES, PODS},
    store::Mutation,
};

/// When a pod must leave a node with these `NoExecute` taints: `Some(Duration::ZERO)` at once, `None`
/// never; the minimum `tolerationSeconds` of the tolerations that match (as `getMinTolerationTime`).
pub(crate) fn eviction_delay(tolerations: &[Toleration], taints: &[Taint]) -> Option<Duration> {
    let mut used = Vec::new();
    for taint in taints {
        let matching: Vec<&Toleration> = tolerations.iter().filter(|t| tolerates(t, taint)).collect();
        if matching.is_empty() {
            return Some(Duration::ZERO);
        }
        used.extend(matching);
    }
    let seconds = used.iter().filter_map(|t| t.toleration_seconds).min()?;
    Some(Duration::from_secs(seconds.max(0).unsigned_abs()))
}

impl Controllers<'_> {
    /// Evicts the pods of node `name` whose toleration of its `NoExecute` taints has run out, and comes
    /// back when the next one's does.
    pub(super) fn taint_eviction(&self, name: &str) -> Result<(), ApiError> {
        let Ok(node) = self.state.store.get(&NODES, "", name) else { return Ok(()) };
        let node = node.value();
        let taints: Vec<(Taint, jiff::Timestamp)> = node
            .pointer("/spec/taints")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|t| t.get("effect").and_then(Value::as_str) == Some("NoExecute"))
            .filter_map(|t| {
                let taint = Taint::from_json(t)?;
                let added = t.get("timeAdded").and_then(Value::as_str).and_then(|a| a.parse().ok());
                Some((taint, added.unwrap_or_else(jiff::Timestamp::now)))
            })
            .collect();
        if taints.is_empty() {
            return Ok(());
        }
        let since = taints.iter().map(|(_, added)| *added).min().unwrap_or_else(jiff::Timestamp::now);
        let only_taints: Vec<Taint> = taints.into_iter().map(|(t, _)| t).collect();
        let clock = self.state.kubelet.clock();
        let now = jiff::Timestamp::now();
        let mut next: Option<Duration> = None;
        for object in self.state.store.all(&PODS) {
            if object.field("spec.nodeName").as_deref() != Some(name) {
                continue;
            }
            let Ok(pod) = serde_json::from_value::<Pod>(object.value()) else { continue };
            if pod.metadata.deletion_timestamp.is_some()
                || matches!(
                    pod.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                )
            {
                continue;
            }
            let tolerations = pod.spec.as_ref().and_then(|s| s.tolerations.clone()).unwrap_or_default();
            let Some(delay) = eviction_delay(&tolerations, &only_taints) else { continue };
            let due = since.checked_add(clock.scaled(delay)).unwrap_or(since);
            let left = due.duration_since(now);
            if left.is_positive() {
                let left = left.unsigned_abs();
                next = Some(next.map_or(left, |n| n.min(left)));
                continue;
            }
            self.evict_for_taint(&pod)?;
        }
        if let Some(next) = next {
            self.requeue_after(Key::TaintEviction(name.to_owned()), next);
        }
        Ok(())
    }

    fn evict_for_taint(&self, pod: &Pod) -> Result<(), ApiError> {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let marked = self.state.store.mutate(&PODS, &ns, &name, |current| {
            let Some(current) = current else { return Err(ApiError::not_found(&PODS, &name)) };
            let mut value = current.value();
            crate::pods::mark_disruption_target(
                &mut value,
                "DeletionByTaintManager",
                "Taint manager: deleting due to NoExecute taint",
            );
            Ok(Mutation::Put(value))
        });
        match marked {
            Ok(_) => {}
            Err(e) if e.code == 404 => return Ok(()),
            Err(e) => return Err(e),
        }
        self.state.kubelet.event(
            pod,
            "",
            "Normal",
            "TaintManagerEviction",
            format!("Marking for deletion Pod {ns}/{name}"),
        );
        self.delete_pod(&ns, pod)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taint(key: &str) -> Taint {
        Taint { key: key.into(), value: String::new(), effect: "NoExecute".into() }
    }

    fn toleration(key: &str, seconds: Option<i64>) -> Toleration {
        Toleration {
            key: Some(key.into()),
            operator: Some("Exists".into()),
            effect: Some("NoExecute".into()),
            toleration_seconds: seconds,
            ..Toleration::default()
        }
    }

    #[test]
    fn an_untolerated_taint_evicts_at_once_and_a_toleration_without_seconds_never() {
        let not_ready = [taint("node.kubernetes.io/not-ready")];
        assert_eq!(eviction_delay(&[], &not_ready), Some(Duration::ZERO));
        assert_eq!(eviction_delay(&[toleration("node.kubernetes.io/not-ready", None)], &not_ready), None);
        assert_eq!(
            eviction_delay(&[toleration("node.kubernetes.io/not-ready", Some(300))], &not_ready),
            Some(Duration::from_secs(300))
        );
    }

    #[test]
    fn the_shortest_matching_toleration_wins_and_every_taint_must_be_tolerated() {
        let both = [taint("node.kubernetes.io/not-ready"), taint("node.kubernetes.io/unreachable")];
        let tolerations = [
            toleration("node.kubernetes.io/not-ready", Some(300)),
            toleration("node.kubernetes.io/unreachable", Some(60)),
        ];
        assert_eq!(eviction_delay(&tolerations, &both), Some(Duration::from_secs(60)));
        assert_eq!(eviction_delay(&tolerations[..1], &both), Some(Duration::ZERO));
    }
}

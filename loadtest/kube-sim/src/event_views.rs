//! One store of Events, two APIs: the apiserver keeps each Event once and serves it as `v1` (what
//! `kubectl get events` and `kubectl describe` read) and as `events.k8s.io/v1` (what newer recorders,
//! kube-rs's among them, write). kube-sim stores both kinds and keeps each Event's twin in the other API
//! in step on every write, converted field by field as the apiserver's conversion does.

use serde_json::{Map, Value, json};

/// Each `v1` field and the `events.k8s.io/v1` field it is served as.
const FIELDS: [(&str, &str); 14] = [
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("reason", "reason"),
    ("type", "type"),
    ("eventTime", "eventTime"),
    ("series", "series"),
    ("action", "action"),
    ("related", "related"),
    ("reportingComponent", "reportingController"),
    ("reportingInstance", "reportingInstance"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
];

/// `event` as `api_version`, its fields renamed from `v1` to `events.k8s.io/v1` (`to_v1`) or back.
fn converted(event: &Value, api_version: &str, to_v1: bool) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("apiVersion".into(), json!(api_version));
    out.insert("kind".into(), json!("Event"));
    out.insert("metadata".into(), twin_metadata(event));
    for &(core, v1) in &FIELDS {
        let (from, to) = if to_v1 { (core, v1) } else { (v1, core) };
        if let Some(value) = event.get(from).filter(|v| !v.is_null()) {
            out.insert(to.into(), value.clone());
        }
    }
    out
}

/// The `events.k8s.io/v1` form of a `v1` Event.
pub fn to_events_v1(core: &Value) -> Value {
    let mut out = converted(core, "events.k8s.io/v1", true);
    // Required in events.k8s.io/v1; an Event recorded the old way has none.
    out.entry("eventTime").or_insert(Value::Null);
    Value::Object(out)
}

/// The `v1` form of an `events.k8s.io/v1` Event.
pub fn to_core(v1: &Value) -> Value {
    let mut out = converted(v1, "v1", false);
    out.entry("involvedObject").or_insert_with(|| json!({}));
    Value::Object(out)
}

/// The twin keeps the Event's identity (name, namespace, uid, labels, annotations, creation time); the
/// store gives it its own resourceVersion.
fn twin_metadata(event: &Value) -> Value {
    let mut metadata = Map::new();
    for field in ["name", "namespace", "uid", "labels", "annotations", "creationTimestamp"] {
        if let Some(value) = event.pointer(&format!("/metadata/{field}")).filter(|v| !v.is_null()) {
            metadata.insert(field.into(), value.clone());
        }
    }
    Value::Object(metadata)
}

/// Whether two Events hold the same content, whatever the store's bookkeeping (resourceVersion,
/// managedFields, generation).
pub fn same_content(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(metadata) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            metadata
                .retain(|k, _| matches!(k.as_str(), "name" | "namespace" | "uid" | "labels" | "annotations"));
        }
        v
    };
    strip(a) == strip(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_converts_both_ways_without_losing_what_kubectl_shows() {
        let v1 = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "web.1", "namespace": "shop", "uid": "u1", "resourceVersion": "7"},
            "regarding": {"kind": "Deployment", "name": "web", "namespace": "shop", "uid": "d1"},
            "note": "KubeSent took its change back", "reason": "RemediationReverted", "type": "Warning",
            "eventTime": "2026-12-06T01:00:00.000000Z", "action": "increase_memory",
            "reportingController": "kubesent-remediator", "reportingInstance": "kubesent-remediator-0",
            "series": {"count": 2, "lastObservedTime": "2026-12-06T01:00:05.000000Z"}});
        let core = to_core(&v1);
        assert_eq!(core["involvedObject"]["kind"], "Deployment");
        assert_eq!(core["message"], "KubeSent took its change back");
        assert_eq!(core["reportingComponent"], "kubesent-remediator");
        assert_eq!(core["metadata"]["uid"], "u1", "the same Event");
        assert!(core["metadata"].get("resourceVersion").is_none(), "the store gives the twin its own");
        assert!(same_content(&to_events_v1(&core), &v1), "{:#}", to_events_v1(&core));
        let old = json!({"metadata": {"name": "p.1", "namespace": "shop"}, "involvedObject": {"kind": "Pod", "name": "p"},
            "reason": "BackOff", "message": "Back-off restarting", "type": "Warning", "count": 3,
            "firstTimestamp": "2026-12-06T00:00:00Z", "lastTimestamp": "2026-12-06T00:05:00Z", "source": {"component": "kubelet"}});
        let as_v1 = to_events_v1(&old);
        assert_eq!(as_v1["deprecatedCount"], 3);
        assert_eq!(as_v1["deprecatedSource"]["component"], "kubelet");
        assert!(as_v1["eventTime"].is_null());
    }
}

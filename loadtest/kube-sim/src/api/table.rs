//! `meta.k8s.io/v1` Table responses, so `kubectl get` prints the same columns as against a real cluster.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

use crate::{resources::ResourceDef, store::StoredObject};

fn column(name: &str, type_: &str, format: &str, description: &str, priority: u8) -> Value {
    json!({"name": name, "type": type_, "format": format, "description": description, "priority": priority})
}

/// A Table of `objects`.
pub fn table(
    def: &ResourceDef,
    objects: &[Arc<StoredObject>],
    resource_version: u64,
    continue_token: Option<&str>,
) -> Value {
    let is_pods = def.group.is_empty() && def.plural == "pods";
    let columns = if is_pods {
        vec![
            column("Name", "string", "name", "Name must be unique within a namespace.", 0),
            column(
                "Ready",
                "string",
                "",
                "The aggregate readiness state of this pod for accepting traffic.",
                0,
            ),
            column("Status", "string", "", "The aggregate status of the containers in this pod.", 0),
            column(
                "Restarts",
                "string",
                "",
                "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
                0,
            ),
            column(
                "Age",
                "string",
                "",
                "CreationTimestamp is a timestamp representing the server time when this object was created.",
                0,
            ),
            column("IP", "string", "", "podIP is an IP address allocated to the pod.", 1),
            column(
                "Node",
                "string",
                "",
                "NodeName is a request to schedule this pod onto a specific node.",
                1,
            ),
        ]
    } else {
        vec![
            column("Name", "string", "name", "Name must be unique within a namespace.", 0),
            column(
                "Age",
                "string",
                "",
                "CreationTimestamp is a timestamp representing the server time when this object was created.",
                0,
            ),
        ]
    };
    let rows: Vec<Value> = objects
        .iter()
        .map(|object| {
            let value = object.value();
            let cells = if is_pods {
                serde_json::from_value::<Pod>(value.clone()).map(|pod| pod_cells(&pod)).unwrap_or_else(|_| vec![json!(object.name)])
            } else {
                vec![json!(object.name), json!(age(&value))]
            };
            let mut metadata = value.get("metadata").cloned().unwrap_or_else(|| json!({}));
            if let Some(m) = metadata.as_object_mut() {
                m.remove("managedFields");
            }
            json!({"cells": cells, "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": metadata}})
        })
        .collect();
    let mut metadata = json!({"resourceVersion": resource_version.to_string()});
    if let Some(token) = continue_token {
        metadata["continue"] = json!(token);
    }
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": metadata, "columnDefinitions": columns, "rows": rows})
}

fn human_duration(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=599 => format!("{}m{}s", s / 60, s % 60),
        600..=10_799 => format!("{}m", s / 60),
        10_800..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

fn seconds_since(timestamp: &str) -> Option<i64> {
    let then: jiff::Timestamp = timestamp.parse().ok()?;
    Some(jiff::Timestamp::now().as_second() - then.as_second())
}

fn age(value: &Value) -> String {
    value
        .pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str)
        .and_then(seconds_since)
        .map_or_else(|| "<unknown>".to_owned(), human_duration)
}

/// The cells kubectl's pod printer shows: NAME, READY, STATUS, RESTARTS, AGE, IP, NODE.
fn pod_cells(pod: &Pod) -> Vec<Value> {
    let status = pod.status.clone().unwrap_or_default();
    let statuses = status.container_statuses.clone().unwrap_or_default();
    let total = pod.spec.as_ref().map_or(0, |s| s.containers.len());
    let ready = statuses.iter().filter(|c| c.ready).count();
    let mut reason = status.reason.clone().or_else(|| status.phase.clone()).unwrap_or_default();
    let mut restarts = 0;
    let mut last_restart: Option<String> = None;
    for cs in statuses.iter().rev() {
        restarts += cs.restart_count;
        if let Some(finished) =
            cs.last_state.as_ref().and_then(|s| s.terminated.as_ref()).and_then(|t| t.finished_at.as_ref())
        {
            last_restart = Some(finished.0.to_string());
        }
        let state = cs.state.clone().unwrap_or_default();
        if let Some(waiting) = state.waiting.as_ref().and_then(|w| w.reason.clone()).filter(|r| !r.is_empty())
        {
            reason = waiting;
        } else if let Some(terminated) = state.terminated.as_ref() {
            reason =
                terminated.reason.clone().unwrap_or_else(|| format!("ExitCode:{}", terminated.exit_code));
        }
    }
    if pod.metadata.deletion_timestamp.is_some() {
        reason = "Terminating".to_owned();
    }
    let restarts_cell = match last_restart.as_deref().and_then(seconds_since) {
        Some(ago) if restarts > 0 => format!("{restarts} ({} ago)", human_duration(ago)),
        _ => restarts.to_string(),
    };
    let pod_age = pod.metadata.creation_timestamp.as_ref().map_or_else(
        || "<unknown>".to_owned(),
        |t| human_duration(jiff::Timestamp::now().as_second() - t.0.as_second()),
    );
    vec![
        json!(pod.metadata.name),
        json!(format!("{ready}/{total}")),
        json!(reason),
        json!(restarts_cell),
        json!(pod_age),
        json!(status.pod_ip.unwrap_or_else(|| "<none>".into())),
        json!(pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_else(|| "<none>".into())),
    ]
}

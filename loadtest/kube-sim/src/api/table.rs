//! `meta.k8s.io/v1` Table responses, so `kubectl get` prints the same columns as against a real cluster:
//! one printer per kind, with the columns, descriptions and cell values of the apiserver's own printers
//! (`pkg/printers/internalversion`), priority 1 for the columns only `-o wide` shows.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

use crate::{resources::ResourceDef, store::StoredObject};

/// One column: its header, type, format, description and priority (1: only with `-o wide`).
struct Column {
    name: &'static str,
    format: &'static str,
    description: &'static str,
    wide: bool,
}

const fn col(name: &'static str, description: &'static str) -> Column {
    Column { name, format: "", description, wide: false }
}

const fn wide(name: &'static str, description: &'static str) -> Column {
    Column { name, format: "", description, wide: true }
}

const NAME: Column = Column {
    name: "Name",
    format: "name",
    description: "Name must be unique within a namespace.",
    wide: false,
};
const AGE: Column =
    col("Age", "CreationTimestamp is a timestamp representing the server time when this object was created.");
const CONTAINERS: Column = wide("Containers", "Names of each container in the template.");
const IMAGES: Column = wide("Images", "Images referenced by each container in the template.");
const SELECTOR: Column = wide(
    "Selector",
    "Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment.",
);

/// How one kind is printed: its columns and the cells of one object (as many as columns).
struct Printer {
    columns: Vec<Column>,
    cells: fn(&Value) -> Vec<Value>,
}

fn printer(def: &ResourceDef) -> Printer {
    match (def.group, def.kind) {
        ("", "Pod") => Printer {
            columns: vec![
                NAME,
                col("Ready", "The aggregate readiness state of this pod for accepting traffic."),
                col("Status", "The aggregate status of the containers in this pod."),
                col(
                    "Restarts",
                    "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
                ),
                AGE,
                wide("IP", "podIP is an IP address allocated to the pod."),
                wide("Node", "NodeName is a request to schedule this pod onto a specific node."),
            ],
            cells: |value| match serde_json::from_value::<Pod>(value.clone()) {
                Ok(pod) => pod_cells(&pod),
                Err(_) => vec![
                    json!(name(value)),
                    json!(""),
                    json!(""),
                    json!(""),
                    json!(age(value)),
                    json!(""),
                    json!(""),
                ],
            },
        },
        ("apps", "Deployment") => Printer {
            columns: vec![
                NAME,
                col("Ready", "Number of the pod with ready state"),
                col(
                    "Up-to-date",
                    "Total number of non-terminated pods targeted by this deployment that have the desired template spec.",
                ),
                col(
                    "Available",
                    "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.",
                ),
                AGE,
                CONTAINERS,
                IMAGES,
                SELECTOR,
            ],
            cells: |v| {
                let (containers, images) = template_containers(v);
                vec![
                    json!(name(v)),
                    json!(format!("{}/{}", int(v, "/status/readyReplicas"), int(v, "/spec/replicas"))),
                    json!(int(v, "/status/updatedReplicas")),
                    json!(int(v, "/status/availableReplicas")),
                    json!(age(v)),
                    json!(containers),
                    json!(images),
                    json!(selector(v)),
                ]
            },
        },
        ("apps", "ReplicaSet") => Printer {
            columns: vec![
                NAME,
                col("Desired", "Replicas is the number of desired replicas."),
                col("Current", "Replicas is the most recently observed number of replicas."),
                col("Ready", "The number of ready replicas for this replica set."),
                AGE,
                CONTAINERS,
                IMAGES,
                SELECTOR,
            ],
            cells: |v| {
                let (containers, images) = template_containers(v);
                vec![
                    json!(name(v)),
                    json!(int(v, "/spec/replicas")),
                    json!(int(v, "/status/replicas")),
                    json!(int(v, "/status/readyReplicas")),
                    json!(age(v)),
                    json!(containers),
                    json!(images),
                    json!(selector(v)),
                ]
            },
        },
        ("apps", "StatefulSet") => Printer {
            columns: vec![NAME, col("Ready", "Number of the pod with ready state"), AGE, CONTAINERS, IMAGES],
            cells: |v| {
                let (containers, images) = template_containers(v);
                vec![
                    json!(name(v)),
                    json!(format!("{}/{}", int(v, "/status/readyReplicas"), int(v, "/spec/replicas"))),
                    json!(age(v)),
                    json!(containers),
                    json!(images),
                ]
            },
        },
        ("apps", "DaemonSet") => Printer {
            columns: vec![
                NAME,
                col(
                    "Desired",
                    "The total number of nodes that should be running the daemon pod (including nodes correctly running the daemon pod).",
                ),
                col(
                    "Current",
                    "The number of nodes that are running at least 1 daemon pod and are supposed to run the daemon pod.",
                ),
                col(
                    "Ready",
                    "numberReady is the number of nodes that should be running the daemon pod and have one or more of the daemon pod running with a Ready Condition.",
                ),
                col("Up-to-date", "The total number of nodes that are running updated daemon pod"),
                col(
                    "Available",
                    "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available (ready for at least spec.minReadySeconds)",
                ),
                col(
                    "Node Selector",
                    "NodeSelector is a selector which must be true for the pod to fit on a node. Selector which must match a node's labels for the pod to be scheduled on that node.",
                ),
                AGE,
                CONTAINERS,
                IMAGES,
                SELECTOR,
            ],
            cells: |v| {
                let (containers, images) = template_containers(v);
                vec![
                    json!(name(v)),
                    json!(int(v, "/status/desiredNumberScheduled")),
                    json!(int(v, "/status/currentNumberScheduled")),
                    json!(int(v, "/status/numberReady")),
                    json!(int(v, "/status/updatedNumberScheduled")),
                    json!(int(v, "/status/numberAvailable")),
                    json!(
                        pairs(v.pointer("/spec/template/spec/nodeSelector"))
                            .unwrap_or_else(|| "<none>".into())
                    ),
                    json!(age(v)),
                    json!(containers),
                    json!(images),
                    json!(selector(v)),
                ]
            },
        },
        ("apps", "ControllerRevision") => Printer {
            columns: vec![
                NAME,
                col("Controller", "Controller of the object"),
                col("Revision", "Revision indicates the revision of the state represented by Data."),
                AGE,
            ],
            cells: |v| {
                let controller = v
                    .pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .and_then(|owners| owners.iter().find(|o| o.get("controller") == Some(&json!(true))))
                    .map_or_else(
                        || "<none>".to_owned(),
                        |o| {
                            let kind =
                                o.get("kind").and_then(Value::as_str).unwrap_or_default().to_lowercase();
                            let group = o
                                .get("apiVersion")
                                .and_then(Value::as_str)
                                .and_then(|a| a.split_once('/'))
                                .map_or(String::new(), |(g, _)| format!(".{g}"));
                            format!(
                                "{kind}{group}/{}",
                                o.get("name").and_then(Value::as_str).unwrap_or_default()
                            )
                        },
                    );
                vec![json!(name(v)), json!(controller), json!(int(v, "/revision")), json!(age(v))]
            },
        },
        ("batch", "Job") => Printer {
            columns: vec![
                NAME,
                col("Status", "Status of the job."),
                col("Completions", "The completion status of the job."),
                col("Duration", "Time required to complete the job."),
                AGE,
                CONTAINERS,
                IMAGES,
                SELECTOR,
            ],
            cells: |v| {
                let (containers, images) = template_containers(v);
                let completions = match v.pointer("/spec/completions").and_then(Value::as_i64) {
                    Some(wanted) => format!("{}/{wanted}", int(v, "/status/succeeded")),
                    None => {
                        format!("{}/1 of {}", int(v, "/status/succeeded"), int(v, "/spec/parallelism").max(1))
                    }
                };
                vec![
                    json!(name(v)),
                    json!(job_status(v)),
                    json!(completions),
                    json!(job_duration(v)),
                    json!(age(v)),
                    json!(containers),
                    json!(images),
                    json!(selector(v)),
                ]
            },
        },
        ("batch", "CronJob") => Printer {
            columns: vec![
                NAME,
                col("Schedule", "The schedule in Cron format, see https://en.wikipedia.org/wiki/Cron."),
                col(
                    "Timezone",
                    "The time zone name for the given schedule, see https://en.wikipedia.org/wiki/List_of_tz_database_time_zones.",
                ),
                col("Suspend", "This flag tells the controller to suspend subsequent executions."),
                col("Active", "A list of pointers to currently running jobs."),
                col(
                    "Last Schedule",
                    "Information when was the last time the job was successfully scheduled.",
                ),
                AGE,
                wide("Containers", "Names of each container in the template."),
                wide("Images", "Images referenced by each container in the template."),
                wide("Selector", "Selector of the job's pods."),
            ],
            cells: |v| {
                let containers = v.pointer("/spec/jobTemplate/spec/template/spec/containers");
                vec![
                    json!(name(v)),
                    json!(text(v, "/spec/schedule")),
                    json!(v.pointer("/spec/timeZone").and_then(Value::as_str).unwrap_or("<none>")),
                    json!(if v.pointer("/spec/suspend") == Some(&json!(true)) { "True" } else { "False" }),
                    json!(v.pointer("/status/active").and_then(Value::as_array).map_or(0, Vec::len)),
                    json!(
                        v.pointer("/status/lastScheduleTime")
                            .and_then(Value::as_str)
                            .and_then(seconds_since)
                            .map_or_else(|| "<none>".to_owned(), human_duration)
                    ),
                    json!(age(v)),
                    json!(container_field(containers, "name")),
                    json!(container_field(containers, "image")),
                    json!("<none>"),
                ]
            },
        },
        ("", "Node") => Printer {
            columns: vec![
                NAME,
                col("Status", "The status of the node"),
                col("Roles", "The roles of the node"),
                AGE,
                col("Version", "Kubelet Version reported by the node."),
                wide(
                    "Internal-IP",
                    "List of addresses reachable to the node. Queried from cloud provider, if available.",
                ),
                wide(
                    "External-IP",
                    "List of addresses reachable to the node. Queried from cloud provider, if available.",
                ),
                wide(
                    "OS-Image",
                    "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy)).",
                ),
                wide(
                    "Kernel-Version",
                    "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64).",
                ),
                wide(
                    "Container-Runtime",
                    "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2).",
                ),
            ],
            cells: |v| {
                let address = |kind: &str| {
                    v.pointer("/status/addresses")
                        .and_then(Value::as_array)
                        .and_then(|a| a.iter().find(|a| a.get("type") == Some(&json!(kind))))
                        .and_then(|a| a.get("address"))
                        .and_then(Value::as_str)
                        .unwrap_or("<none>")
                        .to_owned()
                };
                vec![
                    json!(name(v)),
                    json!(node_status(v)),
                    json!(node_roles(v)),
                    json!(age(v)),
                    json!(text(v, "/status/nodeInfo/kubeletVersion")),
                    json!(address("InternalIP")),
                    json!(address("ExternalIP")),
                    json!(text(v, "/status/nodeInfo/osImage")),
                    json!(text(v, "/status/nodeInfo/kernelVersion")),
                    json!(text(v, "/status/nodeInfo/containerRuntimeVersion")),
                ]
            },
        },
        ("", "Namespace") => Printer {
            columns: vec![NAME, col("Status", "The status of the namespace"), AGE],
            cells: |v| vec![json!(name(v)), json!(text(v, "/status/phase")), json!(age(v))],
        },
        ("", "Event") => Printer {
            columns: vec![
                col("Last Seen", "Time when last this event was seen"),
                col("Type", "Type of this event (Normal, Warning), new types could be added in the future."),
                col(
                    "Reason",
                    "This should be a short, machine understandable string that gives the reason for this event being generated.",
                ),
                col("Object", "The object this Event is about."),
                wide("Subobject", "The subobject this Event is about."),
                wide("Source", "The component reporting this event."),
                col("Message", "A human-readable description of the status of this operation."),
                wide("First Seen", "The time at which the event was first recorded."),
                wide("Count", "The number of times this event has occurred."),
                // Shown with `-o wide` only, as the apiserver's event printer has it.
                Column { wide: true, ..NAME },
            ],
            cells: |v| {
                let last = ["/lastTimestamp", "/eventTime", "/metadata/creationTimestamp"]
                    .iter()
                    .find_map(|p| v.pointer(p).and_then(Value::as_str))
                    .and_then(seconds_since)
                    .map_or_else(|| "<unknown>".to_owned(), human_duration);
                let first = ["/firstTimestamp", "/eventTime", "/metadata/creationTimestamp"]
                    .iter()
                    .find_map(|p| v.pointer(p).and_then(Value::as_str))
                    .and_then(seconds_since)
                    .map_or_else(|| "<unknown>".to_owned(), human_duration);
                let source = v
                    .pointer("/source/component")
                    .or_else(|| v.pointer("/reportingComponent"))
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let host = v.pointer("/source/host").and_then(Value::as_str).filter(|h| !h.is_empty());
                vec![
                    json!(last),
                    json!(text(v, "/type")),
                    json!(text(v, "/reason")),
                    json!(format!(
                        "{}/{}",
                        text(v, "/involvedObject/kind").to_lowercase(),
                        text(v, "/involvedObject/name")
                    )),
                    json!(text(v, "/involvedObject/fieldPath")),
                    json!(host.map_or_else(|| source.to_owned(), |h| format!("{source}, {h}"))),
                    json!(text(v, "/message").trim()),
                    json!(first),
                    json!(v.get("count").and_then(Value::as_i64).unwrap_or(1)),
                    json!(name(v)),
                ]
            },
        },
        ("", "ConfigMap") => Printer {
            columns: vec![NAME, col("Data", "Data contains the configuration data."), AGE],
            cells: |v| {
                let data = ["data", "binaryData"]
                    .iter()
                    .filter_map(|k| v.get(k).and_then(Value::as_object))
                    .map(serde_json::Map::len)
                    .sum::<usize>();
                vec![json!(name(v)), json!(data), json!(age(v))]
            },
        },
        ("", "Secret") => Printer {
            columns: vec![
                NAME,
                col("Type", "The type of the secret"),
                col("Data", "The number of keys in the data field"),
                AGE,
            ],
            cells: |v| {
                let data = v.get("data").and_then(Value::as_object).map_or(0, serde_json::Map::len);
                let type_ = v.get("type").and_then(Value::as_str).unwrap_or("Opaque");
                vec![json!(name(v)), json!(type_), json!(data), json!(age(v))]
            },
        },
        ("", "ServiceAccount") => Printer {
            columns: vec![
                NAME,
                col(
                    "Secrets",
                    "Secrets is a list of the secrets in the same namespace that pods running using this ServiceAccount are allowed to use.",
                ),
                AGE,
            ],
            cells: |v| {
                let secrets = v.get("secrets").and_then(Value::as_array).map_or(0, Vec::len);
                vec![json!(name(v)), json!(secrets), json!(age(v))]
            },
        },
        ("coordination.k8s.io", "Lease") => Printer {
            columns: vec![NAME, col("Holder", "Holder identity"), AGE],
            cells: |v| vec![json!(name(v)), json!(text(v, "/spec/holderIdentity")), json!(age(v))],
        },
        ("", "LimitRange") => Printer {
            columns: vec![
                NAME,
                Column {
                    name: "Created At",
                    format: "date",
                    description: "CreationTimestamp is a timestamp representing the server time when this object was created.",
                    wide: false,
                },
            ],
            cells: |v| vec![json!(name(v)), json!(text(v, "/metadata/creationTimestamp"))],
        },
        ("", "ResourceQuota") => Printer {
            columns: vec![
                NAME,
                AGE,
                col(
                    "Request",
                    "Request represents a minimum amount of cpu/memory that a container may consume.",
                ),
                col(
                    "Limit",
                    "Limits control the maximum amount of cpu/memory that a container may use independent of contention on the node.",
                ),
            ],
            cells: |v| {
                // `resource: used/hard`, requests and counts in one column, limits in the other.
                let (mut requests, mut limits) = (Vec::new(), Vec::new());
                for (resource, hard) in
                    v.pointer("/status/hard").and_then(Value::as_object).into_iter().flatten()
                {
                    let used = v
                        .pointer("/status/used")
                        .and_then(|u| u.get(resource))
                        .and_then(Value::as_str)
                        .unwrap_or("0");
                    let cell = format!("{resource}: {used}/{}", hard.as_str().unwrap_or_default());
                    if resource.starts_with("limits.") { limits.push(cell) } else { requests.push(cell) }
                }
                vec![json!(name(v)), json!(age(v)), json!(requests.join(", ")), json!(limits.join(", "))]
            },
        },
        ("policy", "PodDisruptionBudget") => Printer {
            columns: vec![
                NAME,
                col("Min Available", "The minimum number of pods that must be available simultaneously"),
                col("Max Unavailable", "The maximum number of pods that may be unavailable simultaneously"),
                col("Allowed Disruptions", "Calculated number of pods that may be disrupted at this time"),
                AGE,
            ],
            cells: |v| {
                let bound = |pointer: &str| match v.pointer(pointer) {
                    Some(Value::Number(n)) => n.to_string(),
                    Some(Value::String(s)) => s.clone(),
                    _ => "N/A".to_owned(),
                };
                let allowed = v.pointer("/status/disruptionsAllowed").and_then(Value::as_i64).unwrap_or(0);
                vec![
                    json!(name(v)),
                    json!(bound("/spec/minAvailable")),
                    json!(bound("/spec/maxUnavailable")),
                    json!(allowed),
                    json!(age(v)),
                ]
            },
        },
        // The CustomResourceDefinition's additionalPrinterColumns; a value that is not there is a null
        // cell, which kubectl prints as <none>.
        ("autoscaling.k8s.io", "VerticalPodAutoscaler") => Printer {
            columns: vec![NAME, col("Mode", ""), col("CPU", ""), col("Mem", ""), col("Provided", ""), AGE],
            cells: |v| {
                let at = |pointer: &str| v.pointer(pointer).cloned().unwrap_or(Value::Null);
                let target = "/status/recommendation/containerRecommendations/0/target";
                let provided = v
                    .pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .and_then(|c| c.iter().find(|c| c["type"] == "RecommendationProvided"))
                    .map_or(Value::Null, |c| c["status"].clone());
                vec![
                    json!(name(v)),
                    at("/spec/updatePolicy/updateMode"),
                    at(&format!("{target}/cpu")),
                    at(&format!("{target}/memory")),
                    provided,
                    json!(age(v)),
                ]
            },
        },
        (
            "admissionregistration.k8s.io",
            "MutatingWebhookConfiguration" | "ValidatingWebhookConfiguration",
        ) => Printer {
            columns: vec![
                NAME,
                col("Webhooks", "Webhooks indicates the number of webhooks in the configuration"),
                AGE,
            ],
            cells: |v| {
                let count = v.get("webhooks").and_then(Value::as_array).map_or(0, Vec::len);
                vec![json!(name(v)), json!(count), json!(age(v))]
            },
        },
        _ => Printer { columns: vec![NAME, AGE], cells: |v| vec![json!(name(v)), json!(age(v))] },
    }
}

/// A Table of `objects`.
pub fn table(
    def: &ResourceDef,
    objects: &[Arc<StoredObject>],
    resource_version: u64,
    continue_token: Option<&str>,
) -> Value {
    let printer = printer(def);
    let columns: Vec<Value> = printer
        .columns
        .iter()
        .map(|c| {
            json!({"name": c.name, "type": "string", "format": c.format, "description": c.description,
                "priority": u8::from(c.wide)})
        })
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|object| {
            let value = object.value();
            let cells = (printer.cells)(&value);
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

fn name(value: &Value) -> &str {
    value.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default()
}

fn text<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value.pointer(pointer).and_then(Value::as_str).unwrap_or_default()
}

fn int(value: &Value, pointer: &str) -> i64 {
    value.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

/// `a=1,b=2` from a string map, `None` when empty or absent.
fn pairs(map: Option<&Value>) -> Option<String> {
    let map = map?.as_object()?;
    (!map.is_empty()).then(|| {
        map.iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(",")
    })
}

/// The `spec.selector` as kubectl prints it (`app=web`, `<none>`).
fn selector(value: &Value) -> String {
    let labels = pairs(value.pointer("/spec/selector/matchLabels"));
    let expressions: Vec<String> = value
        .pointer("/spec/selector/matchExpressions")
        .and_then(Value::as_array)
        .map(|e| {
            e.iter()
                .map(|e| {
                    let values: Vec<&str> = e
                        .get("values")
                        .and_then(Value::as_array)
                        .map(|v| v.iter().filter_map(Value::as_str).collect())
                        .unwrap_or_default();
                    let key = e.get("key").and_then(Value::as_str).unwrap_or_default();
                    match e.get("operator").and_then(Value::as_str).unwrap_or_default() {
                        "In" => format!("{key} in ({})", values.join(",")),
                        "NotIn" => format!("{key} notin ({})", values.join(",")),
                        "Exists" => key.to_owned(),
                        "DoesNotExist" => format!("!{key}"),
                        other => format!("{key} {other}"),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let all: Vec<String> = labels.into_iter().chain(expressions).collect();
    if all.is_empty() { "<none>".to_owned() } else { all.join(",") }
}

fn container_field(containers: Option<&Value>, field: &str) -> String {
    containers
        .and_then(Value::as_array)
        .map(|c| c.iter().filter_map(|c| c.get(field).and_then(Value::as_str)).collect::<Vec<_>>().join(","))
        .unwrap_or_default()
}

/// The CONTAINERS and IMAGES cells of a workload's pod template.
fn template_containers(value: &Value) -> (String, String) {
    let containers = value.pointer("/spec/template/spec/containers");
    (container_field(containers, "name"), container_field(containers, "image"))
}

fn condition_true(value: &Value, kind: &str) -> bool {
    value.pointer("/status/conditions").and_then(Value::as_array).is_some_and(|conditions| {
        conditions
            .iter()
            .any(|c| c.get("type") == Some(&json!(kind)) && c.get("status") == Some(&json!("True")))
    })
}

/// A Job's STATUS cell (kubectl 1.30+): Complete, Failed, Suspended, FailureTarget, SuccessCriteriaMet,
/// Terminating or Running.
fn job_status(value: &Value) -> &'static str {
    if condition_true(value, "Complete") {
        "Complete"
    } else if condition_true(value, "Failed") {
        "Failed"
    } else if value.pointer("/metadata/deletionTimestamp").is_some() {
        "Terminating"
    } else if condition_true(value, "FailureTarget") {
        "FailureTarget"
    } else if condition_true(value, "Suspended") {
        "Suspended"
    } else if condition_true(value, "SuccessCriteriaMet") {
        "SuccessCriteriaMet"
    } else {
        "Running"
    }
}

fn job_duration(value: &Value) -> String {
    let Some(start) = value.pointer("/status/startTime").and_then(Value::as_str).and_then(seconds_since)
    else {
        return String::new();
    };
    match value.pointer("/status/completionTime").and_then(Value::as_str).and_then(seconds_since) {
        Some(end) => human_duration(start - end),
        None => human_duration(start),
    }
}

/// `Ready`, `NotReady`, `Unknown`, with `,SchedulingDisabled` for a cordoned node.
fn node_status(value: &Value) -> String {
    let ready = value
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|c| c.iter().find(|c| c.get("type") == Some(&json!("Ready"))))
        .and_then(|c| c.get("status"))
        .and_then(Value::as_str);
    let mut status = match ready {
        Some("True") => "Ready".to_owned(),
        Some(_) => "NotReady".to_owned(),
        None => "Unknown".to_owned(),
    };
    if value.pointer("/spec/unschedulable") == Some(&json!(true)) {
        status.push_str(",SchedulingDisabled");
    }
    status
}

/// Roles from `node-role.kubernetes.io/<role>` labels (and `kubernetes.io/role`), `<none>` without.
fn node_roles(value: &Value) -> String {
    let mut roles: Vec<&str> = value
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|labels| {
            labels
                .iter()
                .filter_map(|(k, v)| {
                    k.strip_prefix("node-role.kubernetes.io/")
                        .filter(|r| !r.is_empty())
                        .or_else(|| (k == "kubernetes.io/role").then(|| v.as_str().unwrap_or_default()))
                })
                .collect()
        })
        .unwrap_or_default();
    roles.sort_unstable();
    roles.dedup();
    if roles.is_empty() { "<none>".to_owned() } else { roles.join(",") }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources;

    fn cells(def: &ResourceDef, value: &Value) -> Vec<Value> {
        let printer = printer(def);
        let cells = (printer.cells)(value);
        assert_eq!(cells.len(), printer.columns.len(), "one cell per column for {}", def.kind);
        cells
    }

    #[test]
    fn every_served_kind_has_one_cell_per_column_even_for_an_empty_object() {
        for def in resources::ALL {
            cells(def, &json!({"metadata": {"name": "x"}}));
        }
    }

    #[test]
    fn a_deployment_prints_ready_up_to_date_and_available_as_kubectl_does() {
        let deployment = json!({
            "metadata": {"name": "web", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                "template": {"spec": {"containers": [{"name": "app", "image": "web:1"}, {"name": "proxy", "image": "envoy:1"}]}}},
            "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}
        });
        let row = cells(&resources::DEPLOYMENTS, &deployment);
        assert_eq!(&row[..4], &[json!("web"), json!("2/3"), json!(3), json!(2)]);
        assert_eq!(&row[5..], &[json!("app,proxy"), json!("web:1,envoy:1"), json!("app=web")]);
    }

    #[test]
    fn an_unready_cordoned_node_prints_not_ready_and_scheduling_disabled_with_its_roles() {
        let node = json!({
            "metadata": {"name": "n1", "labels": {"node-role.kubernetes.io/control-plane": ""}},
            "spec": {"unschedulable": true},
            "status": {"conditions": [{"type": "Ready", "status": "False"}]}
        });
        assert_eq!(node_status(&node), "NotReady,SchedulingDisabled");
        assert_eq!(node_roles(&node), "control-plane");
    }

    #[test]
    fn a_failed_job_prints_failed_and_its_completions() {
        let job = json!({
            "metadata": {"name": "migrate"},
            "spec": {"completions": 1},
            "status": {"succeeded": 0, "conditions": [{"type": "Failed", "status": "True"}]}
        });
        assert_eq!(job_status(&job), "Failed");
        let printer = printer(&ResourceDef { group: "batch", kind: "Job", ..resources::PODS });
        assert_eq!((printer.cells)(&job)[2], json!("0/1"));
    }
}

//! Evidence about one failure: a trimmed, redacted view of the pod's spec and status, its logs, its
//! events, its owner chain and the owner's previous revision. Built by a pure function from Kubernetes
//! objects, so the worker (reading the API) and `kubesent diagnose` (reading kubectl output) share it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, ContainerStatus, Event, Pod, Probe};
use serde::Serialize;

use crate::redact::Redactor;

/// Log lines kept (the tail).
pub const LOG_TAIL_LINES: usize = 50;
/// Log lines read from the API: the decisive line is looked for in all of them.
pub const LOG_READ_LINES: i64 = 500;
/// Bytes of log kept at most (after trimming to the tail).
pub const LOG_MAX_BYTES: usize = 16 * 1024;
/// Events kept (the most recent).
const MAX_EVENTS: usize = 20;

/// One container of the spec, trimmed to what a diagnosis needs. Environment values are never read.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ContainerSpec {
    /// Name.
    pub name: String,
    /// True for init containers.
    pub init: bool,
    /// Image reference.
    pub image: String,
    /// Command and arguments, redacted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Limits and requests.
    pub resources: Resources,
    /// One line per probe.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub probes: Vec<String>,
    /// Names of the environment variables (values are not collected).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub env_names: Vec<String>,
    /// ConfigMap and Secret references (`configMapKeyRef settings/db_url`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub config_refs: Vec<String>,
}

/// A container's resource limits and requests, by resource name (`memory`, `cpu`,
/// `ephemeral-storage`, …), as the rules read them and the prompt shows them.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Resources {
    /// `limits`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, String>,
    /// `requests`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, String>,
}

impl Resources {
    /// The memory limit, when one is set and is a valid quantity.
    pub fn memory_limit(&self) -> Option<kubesent_proto::MemoryQuantity> {
        self.limits.get("memory").and_then(|q| kubesent_proto::MemoryQuantity::parse(q).ok())
    }
}

/// One container's state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ContainerState {
    /// Name.
    pub name: String,
    /// Ready.
    pub ready: bool,
    /// Restart count.
    pub restart_count: i32,
    /// `running`, `waiting: <reason>: <message>` or `terminated: <reason> (exit N)`.
    pub state: String,
    /// The last termination, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_termination: Option<String>,
}

/// The tail of a container's log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Logs {
    /// The container.
    pub container: String,
    /// Whether these are the previous (terminated) instance's logs.
    pub previous: bool,
    /// The last lines, sanitized and redacted.
    pub lines: Vec<String>,
    /// Whether older lines were dropped.
    pub truncated: bool,
    /// The line that says why the process failed, read from the whole log (a Go panic's message
    /// survives its goroutine dump), redacted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decisive: Option<crate::logread::Decisive>,
}

/// One event about the pod.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventSummary {
    /// `Normal` or `Warning`.
    #[serde(rename = "type")]
    pub type_: String,
    /// Reason.
    pub reason: String,
    /// Message, redacted.
    pub message: String,
    /// How many times it happened.
    pub count: i32,
}

/// The owner's revision the pod runs.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct CurrentRevision {
    /// Its revision number.
    pub revision: String,
    /// The ReplicaSet or ControllerRevision holding it.
    pub name: String,
    /// Whether it is the owner's newest revision (the one its template holds now).
    pub newest: bool,
}

/// The owner's previous revision.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct PreviousRevision {
    /// Its revision number.
    pub revision: String,
    /// The ReplicaSet or ControllerRevision holding it.
    #[serde(default)]
    pub name: String,
    /// Image per container.
    pub images: BTreeMap<String, String>,
    /// How many of its pods are ready now (a revision still serving is known to work).
    pub ready_replicas: i32,
    /// How many of its pods the controller wants now (0: scaled down).
    #[serde(default)]
    pub replicas: i32,
    /// How it served before, when KubeSent's record shows it known-good (it served healthy for the
    /// settling time): "served 3/3 ready for 6 h until 2026-12-06 14:02 UTC".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served: Option<String>,
}

/// Everything known about the failure, safe to send to a model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evidence {
    /// `namespace/name`.
    pub pod: String,
    /// Phase.
    pub phase: String,
    /// Restart policy.
    pub restart_policy: String,
    /// Containers (init first).
    pub containers: Vec<ContainerSpec>,
    /// The names of the secrets the pod pulls its images with (`spec.imagePullSecrets`, which the
    /// service account's are copied into at admission).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<String>,
    /// Container states.
    pub states: Vec<ContainerState>,
    /// Logs of the failing container.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logs: Option<Logs>,
    /// The pod's events, most recent last.
    pub events: Vec<EventSummary>,
    /// Owner chain, nearest first (`ReplicaSet/web-7d9c5b7f6`, `Deployment/web`).
    pub owners: Vec<String>,
    /// The owner's revision the pod runs, if known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<CurrentRevision>,
    /// The owner's previous revision, if one exists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_revision: Option<PreviousRevision>,
    /// The node the pod runs on, when it was read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeHealth>,
    /// KubeSent's own change, when the pod runs it and fails in a way it can cause.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub own_change: Option<kubesent_common::marks::OwnChange>,
}

/// What a pod's node reports about itself: the conditions that are not as a healthy node's are.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeHealth {
    /// Its name.
    pub name: String,
    /// `Ready=False (KubeletNotReady: …)`, `MemoryPressure=True (…)`; empty when all is well.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<String>,
    /// Cordoned (`spec.unschedulable`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub cordoned: bool,
}

impl NodeHealth {
    /// Whether the node reports the condition `kind` (`MemoryPressure`, `DiskPressure`, …) as true.
    pub fn reports(&self, kind: &str) -> bool {
        self.conditions.iter().any(|c| c.starts_with(&format!("{kind}=True")))
    }
}

/// A node's health as the evidence shows it.
pub fn node_health(node: &k8s_openapi::api::core::v1::Node) -> NodeHealth {
    let conditions = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .filter(|c| if c.type_ == "Ready" { c.status != "True" } else { c.status == "True" })
        .map(|c| {
            let why = match (c.reason.as_deref(), c.message.as_deref()) {
                (Some(reason), Some(message)) => format!(" ({reason}: {message})"),
                (Some(reason), None) => format!(" ({reason})"),
                (None, Some(message)) => format!(" ({message})"),
                (None, None) => String::new(),
            };
            format!("{}={}{why}", c.type_, c.status)
        })
        .collect();
    NodeHealth {
        name: node.metadata.name.clone().unwrap_or_default(),
        conditions,
        cordoned: node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true),
    }
}

fn probe_line(kind: &str, probe: &Probe) -> String {
    let how = if let Some(http) = &probe.http_get {
        let port = match &http.port {
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(p) => p.to_string(),
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(p) => p.clone(),
        };
        format!("httpGet :{port}{}", http.path.clone().unwrap_or_default())
    } else if let Some(tcp) = &probe.tcp_socket {
        format!("tcpSocket {:?}", tcp.port)
    } else if probe.exec.is_some() {
        "exec".to_owned()
    } else if probe.grpc.is_some() {
        "grpc".to_owned()
    } else {
        "unknown".to_owned()
    };
    format!(
        "{kind}: {how}, initialDelay {}s, period {}s, timeout {}s, failureThreshold {}",
        probe.initial_delay_seconds.unwrap_or(0),
        probe.period_seconds.unwrap_or(10),
        probe.timeout_seconds.unwrap_or(1),
        probe.failure_threshold.unwrap_or(3)
    )
}

fn container_spec(c: &Container, init: bool, redactor: &Redactor) -> ContainerSpec {
    let list =
        |values: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>| {
            values.into_iter().flatten().map(|(name, quantity)| (name.clone(), quantity.0.clone())).collect()
        };
    let resources = c
        .resources
        .as_ref()
        .map(|r| Resources { limits: list(r.limits.as_ref()), requests: list(r.requests.as_ref()) })
        .unwrap_or_default();
    let mut probes = Vec::new();
    for (kind, probe) in
        [("liveness", &c.liveness_probe), ("readiness", &c.readiness_probe), ("startup", &c.startup_probe)]
    {
        if let Some(p) = probe {
            probes.push(probe_line(kind, p));
        }
    }
    let mut config_refs = Vec::new();
    for env in c.env.iter().flatten() {
        if let Some(source) = &env.value_from {
            if let Some(r) = &source.config_map_key_ref {
                config_refs.push(format!("env {} from configMapKeyRef {}/{}", env.name, r.name, r.key));
            }
            if let Some(r) = &source.secret_key_ref {
                config_refs.push(format!("env {} from secretKeyRef {}/{}", env.name, r.name, r.key));
            }
        }
    }
    for source in c.env_from.iter().flatten() {
        if let Some(r) = &source.config_map_ref {
            config_refs.push(format!("envFrom configMapRef {}", r.name));
        }
        if let Some(r) = &source.secret_ref {
            config_refs.push(format!("envFrom secretRef {}", r.name));
        }
    }
    ContainerSpec {
        name: c.name.clone(),
        init,
        image: c.image.clone().unwrap_or_default(),
        command: c
            .command
            .iter()
            .flatten()
            .chain(c.args.iter().flatten())
            .map(|a| redactor.clean(a))
            .collect(),
        resources,
        probes,
        env_names: c.env.iter().flatten().map(|e| redactor.clean(&e.name)).collect(),
        config_refs,
    }
}

fn container_state(cs: &ContainerStatus, redactor: &Redactor) -> ContainerState {
    let state = cs.state.clone().unwrap_or_default();
    let text = if state.running.is_some() {
        "running".to_owned()
    } else if let Some(w) = state.waiting {
        format!(
            "waiting: {}: {}",
            w.reason.unwrap_or_default(),
            redactor.clean(&w.message.unwrap_or_default())
        )
    } else if let Some(t) = state.terminated {
        format!("terminated: {} (exit {})", t.reason.unwrap_or_default(), t.exit_code)
    } else {
        "unknown".to_owned()
    };
    let last_termination = cs.last_state.as_ref().and_then(|s| s.terminated.as_ref()).map(|t| {
        let finished = t.finished_at.as_ref().map(|f| f.0.to_string()).unwrap_or_default();
        format!("{} (exit {}) at {finished}", t.reason.clone().unwrap_or_default(), t.exit_code)
    });
    ContainerState {
        name: cs.name.clone(),
        ready: cs.ready,
        restart_count: cs.restart_count,
        state: text,
        last_termination,
    }
}

/// The last [`LOG_TAIL_LINES`] lines of `raw`, at most [`LOG_MAX_BYTES`], sanitized and redacted,
/// with lines that repeat counted instead of quoted again, and the log's decisive line.
pub fn log_tail(container: &str, previous: bool, raw: &str, redactor: &Redactor) -> Logs {
    let all: Vec<&str> = raw.lines().collect();
    let decisive = crate::logread::decisive(&all).map(|mut d| {
        d.line = redactor.clean(&d.line);
        d.context = d.context.map(|c| redactor.clean(&c));
        d
    });
    let all = crate::logread::count_repeats(&all.iter().map(|l| redactor.clean(l)).collect::<Vec<_>>());
    let start = all.len().saturating_sub(LOG_TAIL_LINES);
    let mut lines: Vec<String> = all[start..].to_vec();
    let mut truncated = start > 0;
    while lines.iter().map(|l| l.len() + 1).sum::<usize>() > LOG_MAX_BYTES && !lines.is_empty() {
        lines.remove(0);
        truncated = true;
    }
    Logs { container: container.to_owned(), previous, lines, truncated, decisive }
}

/// Builds the evidence from the live pod and what was read about it.
pub fn build(
    pod: &Pod,
    logs: Option<Logs>,
    events: &[Event],
    owners: Vec<String>,
    revision: Option<CurrentRevision>,
    previous_revision: Option<PreviousRevision>,
    redactor: &Redactor,
) -> Evidence {
    let spec = pod.spec.clone().unwrap_or_default();
    let containers = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| container_spec(c, true, redactor))
        .chain(spec.containers.iter().map(|c| container_spec(c, false, redactor)))
        .collect();
    let status = pod.status.clone().unwrap_or_default();
    let states = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .map(|cs| container_state(cs, redactor))
        .collect();
    let mut events: Vec<&Event> = events.iter().collect();
    // Core events carry their last time; events.k8s.io ones (read as core) only their eventTime.
    events.sort_by_key(|e| {
        e.last_timestamp
            .as_ref()
            .or(e.first_timestamp.as_ref())
            .map(|t| t.0)
            .or(e.event_time.as_ref().map(|t| t.0))
    });
    let start = events.len().saturating_sub(MAX_EVENTS);
    let events = events[start..]
        .iter()
        .map(|e| EventSummary {
            type_: e.type_.clone().unwrap_or_default(),
            reason: e.reason.clone().unwrap_or_default(),
            message: redactor.clean(&e.message.clone().unwrap_or_default()),
            count: e.count.unwrap_or(1),
        })
        .collect();
    Evidence {
        pod: format!(
            "{}/{}",
            pod.metadata.namespace.clone().unwrap_or_default(),
            pod.metadata.name.clone().unwrap_or_default()
        ),
        phase: status.phase.unwrap_or_default(),
        restart_policy: spec.restart_policy.clone().unwrap_or_else(|| "Always".into()),
        image_pull_secrets: spec
            .image_pull_secrets
            .iter()
            .flatten()
            .map(|s| redactor.clean(&s.name))
            .collect(),
        containers,
        states,
        logs,
        events,
        owners,
        revision,
        previous_revision,
        node: None,
        own_change: None,
    }
}

impl Evidence {
    /// What the evidence holds, in a line for humans (the incident's timeline, notifications).
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        match &self.logs {
            Some(logs) => {
                let which = if logs.previous { "previous instance" } else { "current instance" };
                let last = logs.lines.iter().rev().find(|l| !l.trim().is_empty());
                let last = last
                    .map(|l| format!(", last: \"{}\"", l.chars().take(120).collect::<String>()))
                    .unwrap_or_default();
                parts.push(format!("logs: {} lines of {} ({which}){last}", logs.lines.len(), logs.container));
            }
            None => parts.push("logs: none".into()),
        }
        if self.events.is_empty() {
            parts.push("events: none".into());
        } else {
            let mut counts: Vec<(String, i32)> = Vec::new();
            for event in &self.events {
                match counts.iter_mut().find(|(reason, _)| *reason == event.reason) {
                    Some((_, count)) => *count += event.count,
                    None => counts.push((event.reason.clone(), event.count)),
                }
            }
            let listed: Vec<String> =
                counts.iter().map(|(reason, count)| format!("{reason} ×{count}")).collect();
            parts.push(format!("events: {}", listed.join(", ")));
        }
        if let Some(owner) = self.owners.last() {
            let revision = self
                .revision
                .as_ref()
                .map(|r| format!(" revision {}{}", r.revision, if r.newest { " (newest)" } else { "" }))
                .unwrap_or_default();
            let previous = self
                .previous_revision
                .as_ref()
                .map(|p| format!(", previous revision {} with {} ready", p.revision, p.ready_replicas))
                .unwrap_or_default();
            parts.push(format!("owner {owner}{revision}{previous}"));
        }
        if let Some(node) = &self.node {
            let health =
                if node.conditions.is_empty() { "healthy".to_owned() } else { node.conditions.join(", ") };
            parts.push(format!("node {}: {health}", node.name));
        }
        parts.join("; ")
    }

    /// The container's spec.
    pub fn container(&self, name: &str) -> Option<&ContainerSpec> {
        self.containers.iter().find(|c| c.name == name)
    }

    /// The decisive line of the failing container's log, if it has one.
    pub fn decisive(&self) -> Option<&crate::logread::Decisive> {
        self.logs.as_ref().and_then(|l| l.decisive.as_ref())
    }

    /// All log lines and event messages, for rules that look for a phrase.
    pub fn texts(&self) -> impl Iterator<Item = &str> {
        self.logs
            .iter()
            .flat_map(|l| l.lines.iter().map(String::as_str))
            .chain(self.events.iter().map(|e| e.message.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn environment_values_are_never_collected_and_commands_are_redacted() {
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "shop"},
            "spec": {"containers": [{"name": "app", "image": "web:1",
                "command": ["/app", "--db=postgres://u:topsecret@db/x"],
                "env": [{"name": "DB_PASSWORD", "value": "hunter2"}, {"name": "MODE", "value": "prod"},
                        {"name": "URL", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "url"}}}]}]}}))
        .expect("pod");
        let evidence = build(&pod, None, &[], Vec::new(), None, None, &Redactor);
        let text = serde_json::to_string(&evidence).expect("json");
        assert!(!text.contains("hunter2") && !text.contains("topsecret") && !text.contains("prod"), "{text}");
        assert_eq!(evidence.containers[0].env_names, ["DB_PASSWORD", "MODE", "URL"]);
        assert_eq!(evidence.containers[0].config_refs, ["env URL from configMapKeyRef settings/url"]);
    }

    #[test]
    fn logs_keep_the_tail_within_the_byte_cap() {
        let raw: String = (0..500).map(|i| format!("line {i} {}\n", "x".repeat(100))).collect();
        let logs = log_tail("app", true, &raw, &Redactor);
        assert!(logs.lines.len() <= LOG_TAIL_LINES);
        assert!(logs.lines.iter().map(|l| l.len() + 1).sum::<usize>() <= LOG_MAX_BYTES);
        assert!(logs.truncated);
        assert!(logs.lines.last().is_some_and(|l| l.starts_with("line 499")));
    }
}

//! The resources kube-sim serves, and the discovery documents kubectl reads before its first request.

use serde_json::{Value, json};

/// Static description of one served resource.
#[derive(Debug, PartialEq, Eq)]
pub struct ResourceDef {
    /// API group (`""` for core).
    pub group: &'static str,
    /// API version.
    pub version: &'static str,
    /// Plural resource name (`pods`).
    pub plural: &'static str,
    /// Singular name (`pod`).
    pub singular: &'static str,
    /// Kind (`Pod`).
    pub kind: &'static str,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
    /// kubectl short names.
    pub short_names: &'static [&'static str],
    /// Subresources served (`status`, `log`, …).
    pub subresources: &'static [&'static str],
    /// Whether a PUT without `metadata.resourceVersion` is allowed (`AllowUnconditionalUpdate`).
    pub unconditional_update: bool,
    /// Whether a PUT to a missing object creates it (`AllowCreateOnUpdate`).
    pub create_on_update: bool,
    /// Field-selector labels the real apiserver supports for this kind (besides `metadata.name` and
    /// `metadata.namespace`, which every kind supports).
    pub field_labels: &'static [&'static str],
}

impl ResourceDef {
    /// `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `pods` or `leases.coordination.k8s.io`, as error messages print the resource.
    pub fn qualified_plural(&self) -> String {
        if self.group.is_empty() { self.plural.to_owned() } else { format!("{}.{}", self.plural, self.group) }
    }

    /// `details` of a NotFound/AlreadyExists/Conflict Status.
    pub fn error_details(&self, name: &str) -> Value {
        let mut details = json!({"name": name, "kind": self.plural});
        if !self.group.is_empty() {
            details["group"] = json!(self.group);
        }
        details
    }

    /// The list kind (`PodList`).
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    /// Whether `label` may be used in a field selector on this resource.
    pub fn supports_field(&self, label: &str) -> bool {
        label == "metadata.name" || label == "metadata.namespace" || self.field_labels.contains(&label)
    }
}

const POD_FIELDS: &[&str] = &[
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.nominatedNodeName",
];

const EVENT_FIELDS: &[&str] = &[
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
];

macro_rules! def {
    ($group:expr, $version:expr, $plural:expr, $singular:expr, $kind:expr, $namespaced:expr,
     short: $short:expr, sub: $sub:expr, unconditional: $unc:expr, create_on_update: $cou:expr, fields: $fields:expr) => {
        ResourceDef {
            group: $group,
            version: $version,
            plural: $plural,
            singular: $singular,
            kind: $kind,
            namespaced: $namespaced,
            short_names: $short,
            subresources: $sub,
            unconditional_update: $unc,
            create_on_update: $cou,
            field_labels: $fields,
        }
    };
}

/// Pods.
pub static PODS: ResourceDef = def!("", "v1", "pods", "pod", "Pod", true, short: &["po"],
    sub: &["status", "log", "resize", "eviction"], unconditional: true, create_on_update: false, fields: POD_FIELDS);
/// core/v1 Events (written by the kubelet model).
pub static EVENTS: ResourceDef = def!("", "v1", "events", "event", "Event", true, short: &["ev"],
    sub: &[], unconditional: true, create_on_update: true, fields: EVENT_FIELDS);
/// Namespaces.
pub static NAMESPACES: ResourceDef = def!("", "v1", "namespaces", "namespace", "Namespace", false, short: &["ns"],
    sub: &["status"], unconditional: true, create_on_update: false, fields: &["status.phase"]);
/// Nodes.
pub static NODES: ResourceDef = def!("", "v1", "nodes", "node", "Node", false, short: &["no"],
    sub: &["status"], unconditional: true, create_on_update: false, fields: &["spec.unschedulable"]);
/// ConfigMaps.
pub static CONFIGMAPS: ResourceDef = def!("", "v1", "configmaps", "configmap", "ConfigMap", true, short: &["cm"],
    sub: &[], unconditional: true, create_on_update: false, fields: &[]);
/// Secrets.
pub static SECRETS: ResourceDef = def!("", "v1", "secrets", "secret", "Secret", true, short: &[],
    sub: &[], unconditional: true, create_on_update: false, fields: &["type"]);
/// Leases (coordination.k8s.io/v1).
pub static LEASES: ResourceDef = def!("coordination.k8s.io", "v1", "leases", "lease", "Lease", true, short: &[],
    sub: &[], unconditional: false, create_on_update: true, fields: &[]);
/// events.k8s.io/v1 Events (written by kube-runtime's `Recorder`).
pub static EVENTS_V1: ResourceDef = def!("events.k8s.io", "v1", "events", "event", "Event", true, short: &["ev"],
    sub: &[], unconditional: true, create_on_update: true, fields: &[]);
/// Deployments.
pub static DEPLOYMENTS: ResourceDef = def!("apps", "v1", "deployments", "deployment", "Deployment", true,
    short: &["deploy"], sub: &["status", "scale"], unconditional: true, create_on_update: false, fields: &[]);
/// ReplicaSets.
pub static REPLICASETS: ResourceDef = def!("apps", "v1", "replicasets", "replicaset", "ReplicaSet", true,
    short: &["rs"], sub: &["status", "scale"], unconditional: true, create_on_update: false, fields: &["status.replicas"]);
/// StatefulSets.
pub static STATEFULSETS: ResourceDef = def!("apps", "v1", "statefulsets", "statefulset", "StatefulSet", true,
    short: &["sts"], sub: &["status", "scale"], unconditional: true, create_on_update: false, fields: &[]);
/// DaemonSets.
pub static DAEMONSETS: ResourceDef = def!("apps", "v1", "daemonsets", "daemonset", "DaemonSet", true,
    short: &["ds"], sub: &["status"], unconditional: true, create_on_update: false, fields: &[]);
/// Jobs (batch/v1).
pub static JOBS: ResourceDef = def!("batch", "v1", "jobs", "job", "Job", true, short: &[],
    sub: &["status"], unconditional: true, create_on_update: false, fields: &["status.successful"]);
/// CronJobs (batch/v1).
pub static CRONJOBS: ResourceDef = def!("batch", "v1", "cronjobs", "cronjob", "CronJob", true, short: &["cj"],
    sub: &["status"], unconditional: true, create_on_update: false, fields: &[]);
/// ControllerRevisions.
pub static CONTROLLERREVISIONS: ResourceDef = def!("apps", "v1", "controllerrevisions", "controllerrevision",
    "ControllerRevision", true, short: &[], sub: &[], unconditional: true, create_on_update: false, fields: &[]);

/// LimitRanges (admission defaults and limits pods' resources by them).
pub static LIMITRANGES: ResourceDef = def!("", "v1", "limitranges", "limitrange", "LimitRange", true, short: &["limits"],
    sub: &[], unconditional: true, create_on_update: false, fields: &[]);
/// ResourceQuotas (admission counts pods against them; the quota controller fills their status).
pub static RESOURCEQUOTAS: ResourceDef = def!("", "v1", "resourcequotas", "resourcequota", "ResourceQuota", true,
    short: &["quota"], sub: &["status"], unconditional: true, create_on_update: false, fields: &[]);
/// PodDisruptionBudgets (the Eviction API honours them; the disruption controller fills their status).
pub static PODDISRUPTIONBUDGETS: ResourceDef = def!("policy", "v1", "poddisruptionbudgets", "poddisruptionbudget",
    "PodDisruptionBudget", true, short: &["pdb"], sub: &["status"], unconditional: true, create_on_update: false, fields: &[]);
/// MutatingWebhookConfigurations (admission calls their webhooks, which may patch what is written).
pub static MUTATINGWEBHOOKCONFIGURATIONS: ResourceDef = def!("admissionregistration.k8s.io", "v1",
    "mutatingwebhookconfigurations", "mutatingwebhookconfiguration", "MutatingWebhookConfiguration", false,
    short: &[], sub: &[], unconditional: true, create_on_update: false, fields: &[]);
/// ValidatingWebhookConfigurations (admission calls their webhooks, which may refuse what is written).
pub static VALIDATINGWEBHOOKCONFIGURATIONS: ResourceDef = def!("admissionregistration.k8s.io", "v1",
    "validatingwebhookconfigurations", "validatingwebhookconfiguration", "ValidatingWebhookConfiguration", false,
    short: &[], sub: &[], unconditional: true, create_on_update: false, fields: &[]);
/// VerticalPodAutoscalers (autoscaling.k8s.io/v1), served as the VPA's CustomResourceDefinition
/// serves them (no recommender or updater runs: a test or campaign writes their recommendations).
pub static VERTICALPODAUTOSCALERS: ResourceDef = def!("autoscaling.k8s.io", "v1", "verticalpodautoscalers",
    "verticalpodautoscaler", "VerticalPodAutoscaler", true, short: &["vpa"], sub: &["status"], unconditional: false,
    create_on_update: false, fields: &[]);
/// ServiceAccounts.
pub static SERVICEACCOUNTS: ResourceDef = def!("", "v1", "serviceaccounts", "serviceaccount", "ServiceAccount", true,
    short: &["sa"], sub: &[], unconditional: true, create_on_update: false, fields: &[]);
/// Roles.
pub static ROLES: ResourceDef = def!("rbac.authorization.k8s.io", "v1", "roles", "role", "Role", true,
    short: &[], sub: &[], unconditional: true, create_on_update: true, fields: &[]);
/// RoleBindings.
pub static ROLEBINDINGS: ResourceDef = def!("rbac.authorization.k8s.io", "v1", "rolebindings", "rolebinding", "RoleBinding", true,
    short: &[], sub: &[], unconditional: true, create_on_update: true, fields: &[]);
/// ClusterRoles.
pub static CLUSTERROLES: ResourceDef = def!("rbac.authorization.k8s.io", "v1", "clusterroles", "clusterrole", "ClusterRole", false,
    short: &[], sub: &[], unconditional: true, create_on_update: true, fields: &[]);
/// ClusterRoleBindings.
pub static CLUSTERROLEBINDINGS: ResourceDef = def!("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "clusterrolebinding",
    "ClusterRoleBinding", false, short: &[], sub: &[], unconditional: true, create_on_update: true, fields: &[]);

/// Every served resource.
pub static ALL: &[&ResourceDef] = &[
    &PODS,
    &EVENTS,
    &NAMESPACES,
    &NODES,
    &CONFIGMAPS,
    &SECRETS,
    &LEASES,
    &EVENTS_V1,
    &DEPLOYMENTS,
    &REPLICASETS,
    &STATEFULSETS,
    &DAEMONSETS,
    &CONTROLLERREVISIONS,
    &JOBS,
    &CRONJOBS,
    &SERVICEACCOUNTS,
    &LIMITRANGES,
    &RESOURCEQUOTAS,
    &PODDISRUPTIONBUDGETS,
    &MUTATINGWEBHOOKCONFIGURATIONS,
    &VALIDATINGWEBHOOKCONFIGURATIONS,
    &VERTICALPODAUTOSCALERS,
    &ROLES,
    &ROLEBINDINGS,
    &CLUSTERROLES,
    &CLUSTERROLEBINDINGS,
];

/// The served resources that are custom resources on a real cluster (defined by a
/// CustomResourceDefinition): JSON only, no protobuf message, a schema that keeps unknown fields.
pub static CUSTOM_RESOURCES: &[&ResourceDef] = &[&VERTICALPODAUTOSCALERS];

impl ResourceDef {
    /// Whether a CustomResourceDefinition serves this resource on a real cluster.
    pub fn is_custom(&self) -> bool {
        CUSTOM_RESOURCES.iter().any(|custom| std::ptr::eq(*custom, self))
    }
}

/// The resource served at `group/version/plural`, if any.
pub fn lookup(group: &str, version: &str, plural: &str) -> Option<&'static ResourceDef> {
    ALL.iter().copied().find(|d| d.group == group && d.version == version && d.plural == plural)
}

const VERBS: &[&str] = &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

/// `GET /version`.
pub fn version_info(minor: u32) -> Value {
    json!({
        "major": "1", "minor": minor.to_string(), "gitVersion": format!("v1.{minor}.0-kubesent-sim"),
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean", "buildDate": "2026-11-01T00:00:00Z", "goVersion": "go1.25.0",
        "compiler": "gc", "platform": "linux/amd64", "emulationMajor": "1", "emulationMinor": minor.to_string(),
        "minCompatibilityMajor": "1", "minCompatibilityMinor": minor.saturating_sub(1).to_string(),
    })
}

/// `GET /api`.
pub fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions", "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn groups() -> Vec<(&'static str, &'static str)> {
    let mut groups: Vec<(&str, &str)> = Vec::new();
    for def in ALL.iter().filter(|d| !d.group.is_empty()) {
        if !groups.contains(&(def.group, def.version)) {
            groups.push((def.group, def.version));
        }
    }
    groups
}

/// `GET /apis`.
pub fn group_list() -> Value {
    let groups: Vec<Value> = groups()
        .into_iter()
        .map(|(group, version)| {
            let gv = json!({"groupVersion": format!("{group}/{version}"), "version": version});
            json!({"name": group, "versions": [gv.clone()], "preferredVersion": gv})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `GET /api/v1` or `GET /apis/{group}/{version}`, or `None` when the group version is not served.
pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    let defs: Vec<&ResourceDef> =
        ALL.iter().copied().filter(|d| d.group == group && d.version == version).collect();
    if defs.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for def in &defs {
        resources.push(json!({
            "name": def.plural, "singularName": def.singular, "namespaced": def.namespaced, "kind": def.kind,
            "verbs": VERBS, "shortNames": def.short_names, "storageVersionHash": "",
        }));
        for sub in def.subresources {
            let verbs: &[&str] = match *sub {
                "log" => &["get"],
                "resize" | "status" | "scale" => &["get", "patch", "update"],
                "eviction" => &["create"],
                _ => &["get"],
            };
            let kind = match *sub {
                "scale" => "Scale",
                "eviction" => "Eviction",
                _ => def.kind,
            };
            let mut entry = json!({
                "name": format!("{}/{sub}", def.plural), "singularName": "", "namespaced": def.namespaced,
                "kind": kind, "verbs": verbs,
            });
            if *sub == "eviction" {
                // kubectl drain reads which Eviction version to send from here.
                entry["group"] = json!("policy");
                entry["version"] = json!("v1");
            }
            resources.push(entry);
        }
    }
    let group_version = if group.is_empty() { version.to_owned() } else { format!("{group}/{version}") };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}),
    )
}

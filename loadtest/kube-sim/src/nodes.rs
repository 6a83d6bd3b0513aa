//! The cluster's nodes and the scheduler.
//!
//! Nodes are `v1/Node` objects (capacity, allocatable, conditions, taints, addresses) made from
//! [`NodeConfig`]s at start. The scheduler places each new pod that names no node on one where it fits,
//! as kube-scheduler's default profile filters them (NodeUnschedulable, TaintToleration, NodeAffinity's
//! nodeSelector, NodeResourcesFit) and scores them (least allocated); a pod that fits nowhere stays
//! Pending with the scheduler's own message (`0/3 nodes are available: 3 Insufficient memory. …`).
//! [`Nodes`] keeps what is bound where, so a fit is decided without listing every pod.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, PoisonError},
};

use k8s_openapi::api::core::v1::{Pod, Toleration};
use kubesent_proto::MemoryQuantity;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::{
    api_error::ApiError,
    resources::NODES,
    store::{Mutation, Store},
};

/// The taint a cordoned node carries (tolerated by DaemonSet pods).
pub const UNSCHEDULABLE_TAINT: &str = "node.kubernetes.io/unschedulable";
/// The taint the node lifecycle controller puts on a node that is not ready.
pub const NOT_READY_TAINT: &str = "node.kubernetes.io/not-ready";
/// The taint the node lifecycle controller puts on a node whose kubelet stopped posting its status.
pub const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";
/// The taint a node under memory pressure carries.
pub const MEMORY_PRESSURE_TAINT: &str = "node.kubernetes.io/memory-pressure";

/// A node taint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taint {
    /// Key.
    pub key: String,
    /// Value (may be empty).
    pub value: String,
    /// `NoSchedule`, `PreferNoSchedule` or `NoExecute`.
    pub effect: String,
}

impl Taint {
    fn to_json(&self) -> Value {
        let mut taint = json!({"key": self.key, "effect": self.effect});
        if !self.value.is_empty() {
            taint["value"] = json!(self.value);
        }
        taint
    }

    /// A taint of a Node object's `spec.taints`.
    pub fn from_json(value: &Value) -> Option<Self> {
        Some(Self {
            key: value.get("key")?.as_str()?.to_owned(),
            value: value.get("value").and_then(Value::as_str).unwrap_or_default().to_owned(),
            effect: value.get("effect")?.as_str()?.to_owned(),
        })
    }
}

/// A node of the simulated cluster, as it is started.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeConfig {
    /// Node name (also its `kubernetes.io/hostname` label).
    pub name: String,
    /// Allocatable CPU in millicores.
    pub cpu_millis: u64,
    /// Allocatable memory.
    pub memory: MemoryQuantity,
    /// Allocatable ephemeral storage.
    pub ephemeral_storage: MemoryQuantity,
    /// Most pods the node runs (the kubelet's `--max-pods`).
    pub max_pods: u32,
    /// Extra labels (besides hostname, os and arch).
    pub labels: BTreeMap<String, String>,
    /// Taints.
    pub taints: Vec<Taint>,
}

impl NodeConfig {
    /// A worker node named `name`: 16 CPUs, 128Gi memory, 500Gi ephemeral storage, 1,000 pods — large, so
    /// tests and campaigns fit unless they ask for more.
    pub fn worker(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            cpu_millis: 16_000,
            memory: MemoryQuantity::from_mib(128 * 1024),
            ephemeral_storage: MemoryQuantity::from_mib(500 * 1024),
            max_pods: 1000,
            labels: BTreeMap::new(),
            taints: Vec::new(),
        }
    }

    /// The Node object, with its InternalIP `10.0.0.<10 + index>`.
    pub fn object(&self, index: usize, kubernetes_minor: u32) -> Value {
        let mut labels: BTreeMap<String, String> = [
            ("kubernetes.io/hostname", self.name.as_str()),
            ("kubernetes.io/os", "linux"),
            ("kubernetes.io/arch", "amd64"),
            ("beta.kubernetes.io/os", "linux"),
            ("beta.kubernetes.io/arch", "amd64"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        labels.extend(self.labels.clone());
        let resources = json!({
            "cpu": format!("{}m", self.cpu_millis), "memory": self.memory.to_string(),
            "ephemeral-storage": self.ephemeral_storage.to_string(), "pods": self.max_pods.to_string(),
        });
        let now = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
        let condition = |kind: &str, status: &str, reason: &str, message: &str| {
            json!({"type": kind, "status": status, "reason": reason, "message": message,
                "lastHeartbeatTime": now, "lastTransitionTime": now})
        };
        let mut node = json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": self.name, "labels": labels, "uid": format!("00000000-0000-4000-a000-{:012x}", index + 1),
                "creationTimestamp": now,
                "annotations": {"node.alpha.kubernetes.io/ttl": "0", "volumes.kubernetes.io/controller-managed-attach-detach": "true"}},
            "spec": {"podCIDR": format!("10.244.{index}.0/24"), "podCIDRs": [format!("10.244.{index}.0/24")]},
            "status": {
                "capacity": resources, "allocatable": resources,
                "conditions": [
                    condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                    condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                    condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                    condition("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
                ],
                "addresses": [{"type": "InternalIP", "address": format!("10.0.0.{}", 10 + index)},
                    {"type": "Hostname", "address": self.name}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
                "nodeInfo": {"machineID": format!("{:032x}", index + 1), "systemUUID": format!("00000000-0000-4000-8000-{:012x}", index + 1),
                    "bootID": format!("00000000-0000-4000-9000-{:012x}", index + 1), "kernelVersion": "6.8.0-kubesent-sim",
                    "osImage": "Debian GNU/Linux 12 (bookworm)", "containerRuntimeVersion": "containerd://1.7.24",
                    "kubeletVersion": format!("v1.{kubernetes_minor}.0"), "kubeProxyVersion": format!("v1.{kubernetes_minor}.0"),
                    "operatingSystem": "linux", "architecture": "amd64"},
            },
        });
        if !self.taints.is_empty() {
            node["spec"]["taints"] = json!(self.taints.iter().map(Taint::to_json).collect::<Vec<_>>());
        }
        node
    }
}

/// CPU, memory and ephemeral storage: what a pod requests or a node has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    /// Millicores.
    pub cpu_millis: u64,
    /// Bytes of memory.
    pub memory: u64,
    /// Bytes of ephemeral storage.
    pub ephemeral_storage: u64,
}

impl Resources {
    fn add(self, other: Self) -> Self {
        Self {
            cpu_millis: self.cpu_millis.saturating_add(other.cpu_millis),
            memory: self.memory.saturating_add(other.memory),
            ephemeral_storage: self.ephemeral_storage.saturating_add(other.ephemeral_storage),
        }
    }

    fn max(self, other: Self) -> Self {
        Self {
            cpu_millis: self.cpu_millis.max(other.cpu_millis),
            memory: self.memory.max(other.memory),
            ephemeral_storage: self.ephemeral_storage.max(other.ephemeral_storage),
        }
    }

    fn from_map(map: Option<&Value>) -> Self {
        let quantity = |key: &str| map.and_then(|m| m.get(key)).and_then(Value::as_str);
        Self {
            cpu_millis: quantity("cpu").and_then(cpu_millis).unwrap_or(0),
            memory: quantity("memory")
                .and_then(|q| MemoryQuantity::parse(q).ok())
                .map_or(0, MemoryQuantity::bytes),
            ephemeral_storage: quantity("ephemeral-storage")
                .and_then(|q| MemoryQuantity::parse(q).ok())
                .map_or(0, MemoryQuantity::bytes),
        }
    }
}

/// Millicores of a CPU quantity (`500m`, `2`, `1.5`).
pub fn cpu_millis(quantity: &str) -> Option<u64> {
    let quantity = quantity.trim();
    if let Some(millis) = quantity.strip_suffix('m') {
        return millis.parse().ok();
    }
    let cores: f64 = quantity.parse().ok()?;
    (cores.is_finite() && cores >= 0.0).then(|| (cores * 1000.0).ceil() as u64)
}

/// What a pod requests, as the scheduler counts it: its containers' requests summed, or its largest init
/// container's when that is more.
pub fn requests(pod: &Pod) -> Resources {
    requests_with(pod, |r| r)
}

/// What the scheduler counts for a pod when it scores nodes: a container that requests no CPU or memory
/// counts as 100m and 200Mi (`DefaultMilliCPURequest`, `DefaultMemoryRequest`), so pods without requests
/// still spread over the nodes instead of piling onto the first.
fn scoring_requests(pod: &Pod) -> Resources {
    requests_with(pod, |r| Resources {
        cpu_millis: if r.cpu_millis == 0 { 100 } else { r.cpu_millis },
        memory: if r.memory == 0 { 200 << 20 } else { r.memory },
        ..r
    })
}

/// A pod's requests, each container's passed through `per_container`: its containers' sum, or its
/// largest init container's, whichever is more.
fn requests_with(pod: &Pod, per_container: impl Fn(Resources) -> Resources) -> Resources {
    let Some(spec) = pod.spec.as_ref() else { return Resources::default() };
    let of = |c: &k8s_openapi::api::core::v1::Container| {
        let requests = c.resources.as_ref().and_then(|r| r.requests.as_ref());
        let value = requests
            .map(|r| Value::Object(r.iter().map(|(k, q)| (k.clone(), Value::String(q.0.clone()))).collect()));
        per_container(Resources::from_map(value.as_ref()))
    };
    let regular = spec.containers.iter().map(of).fold(Resources::default(), Resources::add);
    let init = spec.init_containers.iter().flatten().map(of).fold(Resources::default(), Resources::max);
    regular.max(init)
}

/// A node as the scheduler sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Taints, including those the node's state implies (cordoned, not ready, memory pressure).
    pub taints: Vec<Taint>,
    /// Allocatable.
    pub allocatable: Resources,
    /// Most pods.
    pub max_pods: u64,
    /// Requested by the pods bound to it.
    pub requested: Resources,
    /// The same as the scheduler scores it (see [`scoring_requests`]).
    pub scored: Resources,
    /// Pods bound to it.
    pub pods: u64,
    /// Its InternalIP.
    pub address: String,
}

impl NodeView {
    /// Reads a Node object; `None` when it is not one.
    pub fn from_object(node: &Value) -> Option<Self> {
        let name = node.pointer("/metadata/name")?.as_str()?.to_owned();
        let labels = node
            .pointer("/metadata/labels")
            .and_then(Value::as_object)
            .map(|l| l.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())).collect())
            .unwrap_or_default();
        let mut taints: Vec<Taint> = node
            .pointer("/spec/taints")
            .and_then(Value::as_array)
            .map(|t| t.iter().filter_map(Taint::from_json).collect())
            .unwrap_or_default();
        let implied =
            |key: &str| Taint { key: key.to_owned(), value: String::new(), effect: "NoSchedule".into() };
        if node.pointer("/spec/unschedulable") == Some(&json!(true))
            && !taints.iter().any(|t| t.key == UNSCHEDULABLE_TAINT)
        {
            taints.push(implied(UNSCHEDULABLE_TAINT));
        }
        let allocatable = node.pointer("/status/allocatable");
        let address = node
            .pointer("/status/addresses")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().find(|a| a.get("type") == Some(&json!("InternalIP"))))
            .and_then(|a| a.get("address"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        Some(Self {
            name,
            labels,
            taints,
            allocatable: Resources::from_map(allocatable),
            max_pods: allocatable
                .and_then(|a| a.get("pods"))
                .and_then(Value::as_str)
                .and_then(|p| p.parse().ok())
                .unwrap_or(110),
            requested: Resources::default(),
            scored: Resources::default(),
            pods: 0,
            address,
        })
    }
}

/// Whether `toleration` tolerates `taint` (key, value by operator, and effect).
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    let effect_matches = toleration.effect.as_deref().is_none_or(|e| e.is_empty() || e == taint.effect);
    let key = toleration.key.as_deref().unwrap_or_default();
    let key_matches = match toleration.operator.as_deref() {
        Some("Exists") => key.is_empty() || key == taint.key,
        _ => key == taint.key && toleration.value.as_deref().unwrap_or_default() == taint.value,
    };
    effect_matches && key_matches
}

/// Whether `node` satisfies the pod's required node affinity (any of its terms; within a term, every
/// `matchExpressions` on labels and `matchFields` on `metadata.name`). No affinity matches every node.
fn required_affinity_matches(pod: &Pod, node: &NodeView) -> bool {
    let Some(terms) = pod
        .spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref())
        .map(|r| &r.node_selector_terms)
    else {
        return true;
    };
    let holds = |requirement: &k8s_openapi::api::core::v1::NodeSelectorRequirement, value: Option<&str>| {
        let values = requirement.values.as_deref().unwrap_or_default();
        match requirement.operator.as_str() {
            "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
            "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    };
    terms.iter().any(|term| {
        term.match_expressions.iter().flatten().all(|r| holds(r, node.labels.get(&r.key).map(String::as_str)))
            && term
                .match_fields
                .iter()
                .flatten()
                .all(|r| r.key == "metadata.name" && holds(r, Some(&node.name)))
    })
}

/// Whether a pod may run on `node` by its selector, affinity and tolerations (resources aside), as the
/// DaemonSet controller decides where its pods go.
pub fn admits(pod: &Pod, node: &NodeView) -> bool {
    misfits(pod, Resources::default(), node)
        .iter()
        .all(|r| r.starts_with("Insufficient") || r == "Too many pods")
}

/// Why one node does not fit a pod, as the scheduler's filter plugins word it.
fn misfits(pod: &Pod, wants: Resources, node: &NodeView) -> Vec<String> {
    let spec = pod.spec.as_ref();
    let tolerations = spec.and_then(|s| s.tolerations.as_deref()).unwrap_or_default();
    let untolerated = |taint: &&Taint| {
        (taint.effect == "NoSchedule" || taint.effect == "NoExecute")
            && !tolerations.iter().any(|toleration| tolerates(toleration, taint))
    };
    // NodeUnschedulable runs before TaintToleration.
    if node.taints.iter().filter(|t| t.key == UNSCHEDULABLE_TAINT).any(|t| untolerated(&t)) {
        return vec!["node(s) were unschedulable".into()];
    }
    if let Some(taint) = node.taints.iter().find(untolerated) {
        return vec![format!("node(s) had untolerated taint {{{}: {}}}", taint.key, taint.value)];
    }
    let selector = spec.and_then(|s| s.node_selector.as_ref());
    if selector.is_some_and(|s| s.iter().any(|(k, v)| node.labels.get(k) != Some(v)))
        || !required_affinity_matches(pod, node)
    {
        return vec!["node(s) didn't match Pod's node affinity/selector".into()];
    }
    let mut reasons = Vec::new();
    if node.pods + 1 > node.max_pods {
        reasons.push("Too many pods".to_owned());
    }
    let after = node.requested.add(wants);
    if wants.cpu_millis > 0 && after.cpu_millis > node.allocatable.cpu_millis {
        reasons.push("Insufficient cpu".to_owned());
    }
    if wants.memory > 0 && after.memory > node.allocatable.memory {
        reasons.push("Insufficient memory".to_owned());
    }
    if wants.ephemeral_storage > 0 && after.ephemeral_storage > node.allocatable.ephemeral_storage {
        reasons.push("Insufficient ephemeral-storage".to_owned());
    }
    reasons
}

/// The node `pod` goes to (least allocated among those where it fits), or the scheduler's message
/// saying why it fits none.
pub fn place(pod: &Pod, nodes: &[NodeView]) -> Result<String, String> {
    let wants = requests(pod);
    let scored = scoring_requests(pod);
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let (mut no_victims, mut not_helpful) = (0, 0);
    let mut best: Option<(u64, &str)> = None;
    for node in nodes {
        let misfit = misfits(pod, wants, node);
        if misfit.is_empty() {
            let share = |used: u64, total: u64| used.saturating_mul(1000).checked_div(total).unwrap_or(0);
            let after = node.scored.add(scored);
            let load = share(after.cpu_millis, node.allocatable.cpu_millis)
                + share(after.memory, node.allocatable.memory);
            if best.is_none_or(|(b, _)| load < b) {
                best = Some((load, &node.name));
            }
            continue;
        }
        let resources = misfit.iter().all(|r| r.starts_with("Insufficient") || r == "Too many pods");
        if resources {
            no_victims += 1
        } else {
            not_helpful += 1
        }
        for reason in misfit {
            *reasons.entry(reason).or_default() += 1;
        }
    }
    if let Some((_, name)) = best {
        return Ok(name.to_owned());
    }
    let total = nodes.len();
    if total == 0 {
        return Err("no nodes available to schedule pods".into());
    }
    // Sorted as the scheduler sorts its histogram: by the printed "<count> <reason>".
    let mut listed: Vec<String> = reasons.iter().map(|(reason, n)| format!("{n} {reason}")).collect();
    listed.sort();
    let mut preemption = Vec::new();
    if no_victims > 0 {
        preemption.push(format!("{no_victims} No preemption victims found for incoming pod"));
    }
    if not_helpful > 0 {
        preemption.push(format!("{not_helpful} Preemption is not helpful for scheduling"));
    }
    Err(format!(
        "0/{total} nodes are available: {}. preemption: 0/{total} nodes are available: {}.",
        listed.join(", "),
        preemption.join(", ")
    ))
}

/// A pod bound to a node.
#[derive(Debug, Clone)]
pub struct Binding {
    /// Node name.
    pub node: String,
    /// Namespace of the pod.
    pub namespace: String,
    /// Name of the pod.
    pub name: String,
    /// The container that uses the most memory (the one an eviction message names).
    pub main_container: String,
    /// What it requests.
    pub requests: Resources,
    /// What it requests as the scheduler scores it.
    pub scored: Resources,
    /// Memory its containers use (their simulated need, where it is within their limit).
    pub memory_use: u64,
}

fn binding(node: &str, pod: &Pod, (memory_use, main_container): (u64, String)) -> Binding {
    Binding {
        node: node.to_owned(),
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        name: pod.metadata.name.clone().unwrap_or_default(),
        main_container,
        requests: requests(pod),
        scored: scoring_requests(pod),
        memory_use,
    }
}

/// The nodes of the cluster and what is bound to each.
pub struct Nodes {
    store: Arc<Store>,
    bound: Mutex<HashMap<String, Binding>>,
    changed: watch::Sender<u64>,
}

impl Nodes {
    /// Nodes read from `store`.
    pub fn new(store: Arc<Store>) -> Arc<Self> {
        Arc::new(Self { store, bound: Mutex::new(HashMap::new()), changed: watch::Sender::new(0) })
    }

    fn bound(&self) -> std::sync::MutexGuard<'_, HashMap<String, Binding>> {
        self.bound.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every node with what is bound to it.
    pub fn views(&self) -> Vec<NodeView> {
        let bound = self.bound();
        self.views_with(&bound)
    }

    fn views_with(&self, bound: &HashMap<String, Binding>) -> Vec<NodeView> {
        let mut views: Vec<NodeView> =
            self.store.all(&NODES).iter().filter_map(|n| NodeView::from_object(&n.value())).collect();
        for binding in bound.values() {
            if let Some(view) = views.iter_mut().find(|v| v.name == binding.node) {
                view.requested = view.requested.add(binding.requests);
                view.scored = view.scored.add(binding.scored);
                view.pods += 1;
            }
        }
        views
    }

    /// Places `pod` (whose uid is `uid`) and binds it there; the scheduler's message when it fits no node.
    /// `memory_use` is what its containers use and which uses most.
    pub fn schedule(&self, uid: &str, pod: &Pod, memory_use: (u64, String)) -> Result<String, String> {
        let mut bound = self.bound();
        let node = place(pod, &self.views_with(&bound))?;
        bound.insert(uid.to_owned(), binding(&node, pod, memory_use));
        Ok(node)
    }

    /// Records a pod that names its node itself (the scheduler does not place it).
    pub fn occupy(&self, uid: &str, node: &str, pod: &Pod, memory_use: (u64, String)) {
        self.bound().insert(uid.to_owned(), binding(node, pod, memory_use));
    }

    /// Frees what a pod held (it finished, failed or was deleted); pods waiting for room try again.
    pub fn release(&self, uid: &str) {
        if self.bound().remove(uid).is_some() {
            self.changed.send_modify(|n| *n += 1);
        }
    }

    /// The pods bound to `node`, by uid.
    pub fn bound_to(&self, node: &str) -> Vec<(String, Binding)> {
        self.bound().iter().filter(|(_, b)| b.node == node).map(|(u, b)| (u.clone(), b.clone())).collect()
    }

    /// The node a pod is bound to (without what is requested on it).
    pub fn node_of(&self, uid: &str) -> Option<NodeView> {
        let node = self.bound().get(uid)?.node.clone();
        // Its address and allocatable only: no need to add up every binding.
        NodeView::from_object(&self.store.get(&NODES, "", &node).ok()?.value())
    }

    /// Wakes pods waiting for room when something changes (a pod freed room, a node changed).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Tells waiting pods that a node changed.
    pub fn touched(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    /// Changes node `name` through `change` (its conditions, taints), as its kubelet or the node
    /// lifecycle controller would.
    pub fn update(&self, name: &str, change: impl FnOnce(&mut Value)) -> Result<(), ApiError> {
        self.store.mutate(&NODES, "", name, |current| {
            let Some(current) = current else { return Err(ApiError::not_found(&NODES, name)) };
            let before = current.value();
            let mut after = before.clone();
            change(&mut after);
            Ok(if after == before { Mutation::Unchanged } else { Mutation::Put(after) })
        })?;
        self.touched();
        Ok(())
    }
}

impl Nodes {
    /// Makes node `name` NotReady (as when its container runtime is down: `Ready=False` and the
    /// `node.kubernetes.io/not-ready` taint, so nothing new is scheduled there) or Ready again.
    pub fn set_ready(&self, name: &str, ready: bool) -> Result<(), ApiError> {
        self.update(name, |node| {
            if ready {
                set_node_condition(node, "Ready", "True", "KubeletReady", "kubelet is posting ready status");
            } else {
                set_node_condition(
                    node,
                    "Ready",
                    "False",
                    "KubeletNotReady",
                    "container runtime status check may not have completed yet",
                );
            }
            // The kubelet's NoSchedule taint, and the node lifecycle controller's NoExecute one that the
            // taint eviction controller acts on.
            set_node_taint(node, NOT_READY_TAINT, !ready);
            set_no_execute_taint(node, NOT_READY_TAINT, !ready);
            set_node_taint(node, UNREACHABLE_TAINT, false);
            set_no_execute_taint(node, UNREACHABLE_TAINT, false);
        })
    }

    /// Makes node `name` unreachable, as when its kubelet stops posting status (the machine is gone or
    /// cut off): every condition `Unknown` and the `node.kubernetes.io/unreachable` taints. Its pods stay
    /// `Terminating` once deleted until it is ready again (nobody confirms they stopped), unless force
    /// deleted. [`Nodes::set_ready`] brings it back.
    pub fn set_unreachable(&self, name: &str) -> Result<(), ApiError> {
        self.update(name, |node| {
            for kind in ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"] {
                set_node_condition(
                    node,
                    kind,
                    "Unknown",
                    "NodeStatusUnknown",
                    "Kubelet stopped posting node status.",
                );
            }
            set_node_taint(node, NOT_READY_TAINT, false);
            set_no_execute_taint(node, NOT_READY_TAINT, false);
            set_node_taint(node, UNREACHABLE_TAINT, true);
            set_no_execute_taint(node, UNREACHABLE_TAINT, true);
        })
    }

    /// Whether node `name` is unreachable (its `Ready` condition `Unknown`).
    pub fn is_unreachable(&self, name: &str) -> bool {
        self.store.get(&NODES, "", name).is_ok_and(|node| {
            node.value()
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .and_then(|c| c.iter().find(|c| c.get("type") == Some(&json!("Ready"))))
                .is_some_and(|c| c.get("status") == Some(&json!("Unknown")))
        })
    }
}

/// Sets condition `kind` of a Node object (with a new transition time when its status changes).
pub fn set_node_condition(node: &mut Value, kind: &str, status: &str, reason: &str, message: &str) {
    let now = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let fresh = json!({"type": kind, "status": status, "reason": reason, "message": message,
        "lastHeartbeatTime": now, "lastTransitionTime": now});
    let conditions = node["status"]["conditions"].as_array_mut();
    match conditions {
        Some(list) => match list.iter_mut().find(|c| c.get("type") == Some(&json!(kind))) {
            Some(existing) if existing.get("status") == Some(&json!(status)) => {
                existing["lastHeartbeatTime"] = json!(now);
            }
            Some(existing) => *existing = fresh,
            None => list.push(fresh),
        },
        None => node["status"]["conditions"] = json!([fresh]),
    }
}

/// Adds (or, with `present` false, removes) the `NoSchedule` taint `key` of a Node object.
pub fn set_node_taint(node: &mut Value, key: &str, present: bool) {
    set_taint(node, key, "NoSchedule", present);
}

/// Adds (or removes) the `NoExecute` taint `key`, stamped with its `timeAdded` (from which pods'
/// `tolerationSeconds` count); an existing one keeps its time.
pub fn set_no_execute_taint(node: &mut Value, key: &str, present: bool) {
    set_taint(node, key, "NoExecute", present);
}

fn set_taint(node: &mut Value, key: &str, effect: &str, present: bool) {
    let mut taints: Vec<Value> =
        node.pointer("/spec/taints").and_then(Value::as_array).cloned().unwrap_or_default();
    let same = |t: &Value| t.get("key") == Some(&json!(key)) && t.get("effect") == Some(&json!(effect));
    if present && taints.iter().any(same) {
        return;
    }
    taints.retain(|t| !same(t));
    if present {
        let mut taint = json!({"key": key, "effect": effect});
        if effect == "NoExecute" {
            taint["timeAdded"] = crate::api::now_time();
        }
        taints.push(taint);
    }
    if taints.is_empty() {
        if let Some(spec) = node["spec"].as_object_mut() {
            spec.remove("taints");
        }
    } else {
        node["spec"]["taints"] = json!(taints);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "shop"}, "spec": spec}))
            .expect("pod")
    }

    fn memory_pod(memory: &str) -> Pod {
        pod(json!({"containers": [{"name": "app", "resources": {"requests": {"memory": memory}}}]}))
    }

    fn node(name: &str, memory_gib: u64) -> NodeView {
        let config =
            NodeConfig { memory: MemoryQuantity::from_mib(memory_gib * 1024), ..NodeConfig::worker(name) };
        NodeView::from_object(&config.object(0, 32)).expect("a node")
    }

    #[test]
    fn a_pod_goes_to_the_least_allocated_node_where_it_fits() {
        let mut busy = node("a", 8);
        busy.requested.memory = 6 << 30;
        busy.scored.memory = 6 << 30;
        let nodes = [busy, node("b", 8)];
        assert_eq!(place(&memory_pod("1Gi"), &nodes), Ok("b".to_owned()));
    }

    #[test]
    fn pods_without_requests_count_as_100m_and_200mi_when_nodes_are_scored_so_they_spread() {
        let no_requests = pod(json!({"containers": [{"name": "app"}]}));
        let mut first = node("a", 8);
        let bound = scoring_requests(&no_requests);
        assert_eq!((bound.cpu_millis, bound.memory), (100, 200 << 20));
        first.scored = bound;
        assert_eq!(requests(&no_requests), Resources::default(), "fit still uses what is requested");
        assert_eq!(place(&no_requests, &[first, node("b", 8)]), Ok("b".to_owned()));
    }

    #[test]
    fn a_pod_too_big_for_every_node_gets_the_schedulers_message() {
        let nodes = [node("a", 4), node("b", 4), node("c", 4)];
        assert_eq!(
            place(&memory_pod("8Gi"), &nodes),
            Err("0/3 nodes are available: 3 Insufficient memory. preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod.".to_owned())
        );
    }

    #[test]
    fn taints_selectors_and_cordons_are_reported_per_node_and_sorted() {
        let mut tainted = node("a", 4);
        tainted.taints.push(Taint {
            key: "dedicated".into(),
            value: "gpu".into(),
            effect: "NoSchedule".into(),
        });
        let mut cordoned = node("b", 4);
        cordoned.taints.push(Taint {
            key: UNSCHEDULABLE_TAINT.into(),
            value: String::new(),
            effect: "NoSchedule".into(),
        });
        let mut small = node("c", 1);
        small.labels.insert("disk".into(), "ssd".into());
        let other = node("d", 8);
        let wants = pod(json!({"nodeSelector": {"disk": "ssd"},
            "containers": [{"name": "app", "resources": {"requests": {"memory": "2Gi"}}}]}));
        let message = place(&wants, &[tainted, cordoned, small, other]).expect_err("fits nowhere");
        assert_eq!(
            message,
            "0/4 nodes are available: 1 Insufficient memory, 1 node(s) didn't match Pod's node affinity/selector, 1 node(s) had untolerated taint {dedicated: gpu}, 1 node(s) were unschedulable. preemption: 0/4 nodes are available: 1 No preemption victims found for incoming pod, 3 Preemption is not helpful for scheduling."
        );
    }

    #[test]
    fn a_toleration_lets_a_pod_onto_a_tainted_node() {
        let mut tainted = node("a", 4);
        tainted.taints.push(Taint {
            key: "dedicated".into(),
            value: "gpu".into(),
            effect: "NoSchedule".into(),
        });
        let tolerant = pod(
            json!({"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}],
            "containers": [{"name": "app"}]}),
        );
        assert_eq!(place(&tolerant, &[tainted.clone()]), Ok("a".to_owned()));
        let everything =
            pod(json!({"tolerations": [{"operator": "Exists"}], "containers": [{"name": "app"}]}));
        assert_eq!(place(&everything, &[tainted]), Ok("a".to_owned()));
    }

    #[test]
    fn requests_sum_containers_and_take_the_largest_init_container() {
        let p = pod(json!({
            "initContainers": [{"name": "migrate", "resources": {"requests": {"memory": "3Gi", "cpu": "2"}}}],
            "containers": [{"name": "a", "resources": {"requests": {"memory": "1Gi", "cpu": "500m"}}},
                           {"name": "b", "resources": {"requests": {"memory": "1Gi", "cpu": "250m"}}}]}));
        assert_eq!(requests(&p), Resources { cpu_millis: 2000, memory: 3 << 30, ephemeral_storage: 0 });
        assert_eq!(cpu_millis("1.5"), Some(1500));
        assert_eq!(cpu_millis("abc"), None);
    }
}

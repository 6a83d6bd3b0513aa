//! Pre-flight: what admission and the scheduler will make of a memory raise, checked before it is made.
//!
//! A raise the cluster cannot take does not heal anything: the LimitRanger or ResourceQuota admission
//! refuses the new pods (the rollout stalls on `FailedCreate`), or no node has room for the larger request
//! (the new pods stay `Pending`) while the old ones keep crashing. [`check`] reads the namespace's
//! LimitRanges and ResourceQuotas and the nodes' free memory, as the shell read them, and refuses such a
//! raise with the constraint named and what a human can change. It is not a scheduling simulation: node
//! selectors, affinity and taints are not weighed, only whether any schedulable node has the room.
//!
//! A container that states only a memory limit gets its request from the limit, so raising the limit
//! raises the request too. When the request is what does not fit, KubeSent does not lower it below the
//! limit on its own (that would overcommit the node the pod lands on); it says that a raise of the limit
//! alone would fit and leaves the choice to a human.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{Container, LimitRange, PodSpec, ResourceQuota, ResourceRequirements},
    apimachinery::pkg::api::resource::Quantity,
};
use kubesent_proto::MemoryQuantity;

/// What the cluster holds that bounds a raise, as the shell read it.
#[derive(Debug, Clone, Default)]
pub struct Room {
    /// The namespace's LimitRanges.
    pub limit_ranges: Vec<LimitRange>,
    /// The namespace's ResourceQuotas (their `status.used` as the apiserver keeps it).
    pub quotas: Vec<ResourceQuota>,
    /// The schedulable nodes and the memory their pods request.
    pub nodes: Vec<NodeRoom>,
    /// The namespace's VerticalPodAutoscalers (none where the VPA is not installed).
    pub autoscalers: Vec<VerticalAutoscaler>,
}

/// A VerticalPodAutoscaler (autoscaling.k8s.io/v1), as far as the pre-flight reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerticalAutoscaler {
    /// Its name.
    pub name: String,
    /// `spec.targetRef.kind` and `.name`.
    pub target: (String, String),
    /// `spec.updatePolicy.updateMode` (`Auto` when unset, as the VPA defaults it).
    pub update_mode: String,
    /// Per container (`*` for all): its `resourcePolicy.containerPolicies[].mode` and memory `maxAllowed`.
    pub containers: Vec<(String, Option<String>, Option<String>)>,
}

impl VerticalAutoscaler {
    /// Reads one from its JSON; `None` when it names no target.
    pub fn from_json(object: &serde_json::Value) -> Option<Self> {
        let text =
            |pointer: &str| object.pointer(pointer).and_then(serde_json::Value::as_str).map(str::to_owned);
        let containers = object
            .pointer("/spec/resourcePolicy/containerPolicies")
            .and_then(serde_json::Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|policy| {
                let name = policy.get("containerName")?.as_str()?.to_owned();
                let mode = policy.get("mode").and_then(serde_json::Value::as_str).map(str::to_owned);
                let max = policy
                    .pointer("/maxAllowed/memory")
                    .and_then(serde_json::Value::as_str)
                    .map(str::to_owned);
                Some((name, mode, max))
            })
            .collect();
        Some(Self {
            name: text("/metadata/name")?,
            target: (text("/spec/targetRef/kind")?, text("/spec/targetRef/name")?),
            update_mode: text("/spec/updatePolicy/updateMode").unwrap_or_else(|| "Auto".to_owned()),
            containers,
        })
    }

    /// Whether it changes the resources of container `container` of workload `kind`/`name`: it targets
    /// the workload, acts (any mode but `Off`), and its policy for the container is not `Off`.
    fn manages(&self, kind: &str, name: &str, container: &str) -> bool {
        if self.target.0 != kind || self.target.1 != name || self.update_mode == "Off" {
            return false;
        }
        let policy = self
            .containers
            .iter()
            .find(|(c, _, _)| c == container)
            .or_else(|| self.containers.iter().find(|(c, _, _)| c == "*"));
        policy.is_none_or(|(_, mode, _)| mode.as_deref() != Some("Off"))
    }

    fn max_allowed(&self, container: &str) -> Option<&str> {
        let policy = self
            .containers
            .iter()
            .find(|(c, _, _)| c == container)
            .or_else(|| self.containers.iter().find(|(c, _, _)| c == "*"));
        policy.and_then(|(_, _, max)| max.as_deref())
    }
}

/// A container whose memory a VerticalPodAutoscaler manages: the raise is the VPA's to make.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "container {container} of {kind} {workload} is managed by VerticalPodAutoscaler {vpa} (updateMode {mode}{max}): a direct change would be undone by it; raise its maxAllowed memory or let it act. KubeSent only suggests"
)]
pub struct ManagedByAutoscaler {
    /// The VPA.
    pub vpa: String,
    /// Its update mode.
    pub mode: String,
    /// `, maxAllowed memory 512Mi` when it caps the container.
    pub max: String,
    /// The workload kind.
    pub kind: String,
    /// The workload.
    pub workload: String,
    /// The container.
    pub container: String,
}

/// The VPA that manages `container` of workload `kind`/`name`, if one does.
pub fn autoscaler_of(
    room: &Room,
    kind: &str,
    name: &str,
    container: &str,
) -> Result<(), Box<ManagedByAutoscaler>> {
    let Some(vpa) = room.autoscalers.iter().find(|v| v.manages(kind, name, container)) else { return Ok(()) };
    Err(Box::new(ManagedByAutoscaler {
        vpa: vpa.name.clone(),
        mode: vpa.update_mode.clone(),
        max: vpa.max_allowed(container).map(|m| format!(", maxAllowed memory {m}")).unwrap_or_default(),
        kind: kind.to_owned(),
        workload: name.to_owned(),
        container: container.to_owned(),
    }))
}

/// One schedulable node's memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRoom {
    /// Node name.
    pub name: String,
    /// `status.allocatable.memory`, in bytes.
    pub allocatable: u64,
    /// The memory requests of the pods bound to it that have not finished, in bytes.
    pub requested: u64,
}

impl NodeRoom {
    fn free(&self) -> u64 {
        self.allocatable.saturating_sub(self.requested)
    }
}

/// How the new size reaches the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Landing {
    /// New pods from a template (a rollout or a replacement). `frees_first`: an old pod goes before a new
    /// one comes (a replacement, a rollout that may take a pod down), so quota and the old pod's node
    /// need only the increase; otherwise a whole new pod must fit beside the old ones.
    NewPods {
        /// Whether an old pod is removed before a new one is created.
        frees_first: bool,
        /// The old pod's node, whose room it frees when it goes first.
        old_node: Option<String>,
    },
    /// Resized in place on `node`: that node must hold the increase.
    InPlace {
        /// The pod's node.
        node: String,
    },
}

/// The raise to check: container `container` of `spec` (the template or the pod) to limit `to`.
#[derive(Debug, Clone, Copy)]
pub struct Raise<'a> {
    /// The pod spec the change starts from.
    pub spec: &'a PodSpec,
    /// The container raised.
    pub container: &'a str,
    /// Its new memory limit.
    pub to: MemoryQuantity,
}

/// Why the cluster would not take a raise.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Blocked {
    /// A LimitRange's `max` for a container or a pod.
    #[error(
        "LimitRange {name} allows at most {max} memory per {scope}; the fix needs {needed} (raise the LimitRange's max, or change the workload's memory by hand)"
    )]
    LimitRangeMax {
        /// The LimitRange.
        name: String,
        /// `Container` or `Pod`.
        scope: &'static str,
        /// Its max.
        max: MemoryQuantity,
        /// What the raise would need.
        needed: MemoryQuantity,
    },
    /// A LimitRange's `maxLimitRequestRatio` for memory.
    #[error(
        "LimitRange {name} allows a memory limit at most {ratio} times the request; {limit} over a request of {request} is more (raise the request with the limit)"
    )]
    LimitRangeRatio {
        /// The LimitRange.
        name: String,
        /// The ratio allowed.
        ratio: String,
        /// The new limit.
        limit: MemoryQuantity,
        /// The container's request.
        request: MemoryQuantity,
    },
    /// A ResourceQuota without room for what the new pods add.
    #[error(
        "ResourceQuota {name} allows {room} more {resource}; the fix needs {needed} (raise the quota or free room in the namespace)"
    )]
    Quota {
        /// The quota.
        name: String,
        /// The resource (`limits.memory`, `requests.memory`, `memory`).
        resource: String,
        /// Hard minus used.
        room: MemoryQuantity,
        /// What the fix adds.
        needed: MemoryQuantity,
    },
    /// No schedulable node has the room for the new request.
    #[error("{0}")]
    NoNode(String),
}

/// Checks `raise` against what the cluster holds: `Ok` when admission lets the new pods in and a node
/// has room for them.
pub fn check(raise: Raise<'_>, landing: &Landing, room: &Room) -> Result<(), Blocked> {
    let Some(container) = raise.spec.containers.iter().find(|c| c.name == raise.container) else {
        return Ok(());
    };
    let old_limit = memory(container, Resource::Limits).unwrap_or(0);
    let explicit_request = memory(container, Resource::Requests);
    let old_request = explicit_request.or(memory(container, Resource::Limits)).unwrap_or(0);
    let new_limit = raise.to.bytes();
    // Without a request of its own the container's request is its limit, and moves with it.
    let new_request = explicit_request.unwrap_or(new_limit);
    let other = |resource| {
        raise
            .spec
            .containers
            .iter()
            .filter(|c| c.name != raise.container)
            .filter_map(|c| effective(c, resource))
            .sum::<u64>()
    };
    let pod_limits = other(Resource::Limits) + new_limit;
    let pod_requests = other(Resource::Requests) + new_request;

    for range in &room.limit_ranges {
        limit_range(range, new_limit, new_request, explicit_request, pod_limits)?;
    }
    let (limit_increase, request_increase) =
        (new_limit.saturating_sub(old_limit), new_request.saturating_sub(old_request));
    let (quota_limits, quota_requests) = match landing {
        Landing::NewPods { frees_first: false, .. } => (pod_limits, pod_requests),
        _ => (limit_increase, request_increase),
    };
    for quota in &room.quotas {
        quota_room(quota, quota_limits, quota_requests)?;
    }
    node_room(
        landing,
        room,
        pod_requests,
        request_increase,
        explicit_request.is_none().then_some(old_request),
    )
}

/// The memory a pod requests for scheduling: its containers' requests (their limits where they state
/// none). Init containers and overhead are left out.
pub fn pod_request(spec: &PodSpec) -> u64 {
    spec.containers.iter().filter_map(|c| effective(c, Resource::Requests)).sum()
}

/// The most memory the pod could request with `container`'s limit raised to `to`: what a node must
/// have free for it (an upper bound: a container with a request below its limit needs less).
pub fn raised_request(spec: &PodSpec, container: &str, to: MemoryQuantity) -> u64 {
    spec.containers
        .iter()
        .map(|c| if c.name == container { to.bytes() } else { effective(c, Resource::Requests).unwrap_or(0) })
        .sum()
}

/// [`pod_request`] of a pod as read for the nodes' room (only its containers' resources).
pub fn request_of<'a>(resources: impl IntoIterator<Item = Option<&'a ResourceRequirements>>) -> u64 {
    resources
        .into_iter()
        .filter_map(|r| {
            let memory = |list: Option<&BTreeMap<String, Quantity>>| {
                MemoryQuantity::parse(&list?.get("memory")?.0).ok().map(MemoryQuantity::bytes)
            };
            let r = r?;
            memory(r.requests.as_ref()).or(memory(r.limits.as_ref()))
        })
        .sum()
}

#[derive(Clone, Copy)]
enum Resource {
    Limits,
    Requests,
}

/// The container's stated memory limit or request, in bytes.
fn memory(container: &Container, resource: Resource) -> Option<u64> {
    let resources = container.resources.as_ref()?;
    let list = match resource {
        Resource::Limits => resources.limits.as_ref(),
        Resource::Requests => resources.requests.as_ref(),
    }?;
    MemoryQuantity::parse(&list.get("memory")?.0).ok().map(MemoryQuantity::bytes)
}

/// What a container counts for: its request (or, without one, its limit) or its limit.
fn effective(container: &Container, resource: Resource) -> Option<u64> {
    match resource {
        Resource::Limits => memory(container, Resource::Limits),
        Resource::Requests => memory(container, Resource::Requests).or(memory(container, Resource::Limits)),
    }
}

fn quantity(text: Option<&k8s_openapi::apimachinery::pkg::api::resource::Quantity>) -> Option<u64> {
    MemoryQuantity::parse(&text?.0).ok().map(MemoryQuantity::bytes)
}

fn limit_range(
    range: &LimitRange,
    limit: u64,
    request: u64,
    explicit_request: Option<u64>,
    pod_limits: u64,
) -> Result<(), Blocked> {
    let name = range.metadata.name.clone().unwrap_or_default();
    for item in range.spec.iter().flat_map(|s| &s.limits) {
        let max = quantity(item.max.as_ref().and_then(|m| m.get("memory")));
        match item.type_.as_str() {
            "Container" => {
                if let Some(max) = max
                    && limit.max(request) > max
                {
                    return Err(Blocked::LimitRangeMax {
                        name,
                        scope: "container",
                        max: MemoryQuantity::from_bytes(max),
                        needed: MemoryQuantity::from_bytes(limit.max(request)),
                    });
                }
                if let Some(ratio) = item.max_limit_request_ratio.as_ref().and_then(|r| r.get("memory"))
                    && let Some(request) = explicit_request.filter(|r| *r > 0)
                    && let Ok(allowed) = ratio.0.parse::<f64>()
                    && limit as f64 / request as f64 > allowed
                {
                    return Err(Blocked::LimitRangeRatio {
                        name,
                        ratio: ratio.0.clone(),
                        limit: MemoryQuantity::from_bytes(limit),
                        request: MemoryQuantity::from_bytes(request),
                    });
                }
            }
            "Pod" => {
                if let Some(max) = max
                    && pod_limits > max
                {
                    return Err(Blocked::LimitRangeMax {
                        name,
                        scope: "pod",
                        max: MemoryQuantity::from_bytes(max),
                        needed: MemoryQuantity::from_bytes(pod_limits),
                    });
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn quota_room(quota: &ResourceQuota, limits: u64, requests: u64) -> Result<(), Blocked> {
    let name = quota.metadata.name.clone().unwrap_or_default();
    let hard = quota.spec.as_ref().and_then(|s| s.hard.as_ref());
    let used = quota.status.as_ref().and_then(|s| s.used.as_ref());
    for (resource, needed) in [("limits.memory", limits), ("requests.memory", requests), ("memory", requests)]
    {
        let Some(hard) = quantity(hard.and_then(|h| h.get(resource))) else { continue };
        let used = quantity(used.and_then(|u| u.get(resource))).unwrap_or(0);
        let room = hard.saturating_sub(used);
        if needed > room {
            return Err(Blocked::Quota {
                name,
                resource: resource.to_owned(),
                room: MemoryQuantity::from_bytes(room),
                needed: MemoryQuantity::from_bytes(needed),
            });
        }
    }
    Ok(())
}

/// Whether a node has room: for new pods, any schedulable node (the old pod's own counting as freed
/// when it goes first); in place, the pod's node for the increase. `implicit_old_request`: the old
/// request when it came from the limit, to say whether a raise of the limit alone would fit.
fn node_room(
    landing: &Landing,
    room: &Room,
    pod_requests: u64,
    request_increase: u64,
    implicit_old_request: Option<u64>,
) -> Result<(), Blocked> {
    if room.nodes.is_empty() {
        // Nothing was read (no permission to list nodes, or none schedulable): not KubeSent's to judge.
        return Ok(());
    }
    let needed = MemoryQuantity::from_bytes(pod_requests);
    let limit_alone = |free: u64| {
        implicit_old_request
            .filter(|old| pod_requests.saturating_sub(request_increase).max(*old) <= free)
            .map(|old| {
                format!(
                    "; a raise of the limit alone would fit if the request stayed at {}: KubeSent does not set a request below the limit by itself (it would overcommit the node), so set resources.requests.memory by hand or add capacity",
                    MemoryQuantity::from_bytes(old)
                )
            })
            .unwrap_or_default()
    };
    match landing {
        Landing::InPlace { node } => {
            let Some(own) = room.nodes.iter().find(|n| &n.name == node) else { return Ok(()) };
            if request_increase <= own.free() {
                return Ok(());
            }
            Err(Blocked::NoNode(format!(
                "node {node} has {} memory free and the resize needs {} more{}",
                MemoryQuantity::from_bytes(own.free()),
                MemoryQuantity::from_bytes(request_increase),
                if implicit_old_request.is_some() {
                    limit_alone(own.free() + pod_requests.saturating_sub(request_increase))
                } else {
                    String::new()
                }
            )))
        }
        Landing::NewPods { frees_first, old_node } => {
            let free_on = |node: &NodeRoom| {
                let freed = if *frees_first && old_node.as_deref() == Some(node.name.as_str()) {
                    pod_requests.saturating_sub(request_increase)
                } else {
                    0
                };
                node.free() + freed
            };
            let most_free = room.nodes.iter().map(free_on).max().unwrap_or(0);
            if pod_requests <= most_free {
                return Ok(());
            }
            let largest = room.nodes.iter().map(|n| n.allocatable).max().unwrap_or(0);
            if pod_requests > largest {
                return Err(Blocked::NoNode(format!(
                    "no node could ever hold the new pod: it requests {needed} memory and the largest node has {} allocatable{}",
                    MemoryQuantity::from_bytes(largest),
                    limit_alone(most_free)
                )));
            }
            Err(Blocked::NoNode(format!(
                "no node has room for the new pod: it requests {needed} memory and the most any of the {} schedulable nodes has free is {}{}",
                room.nodes.len(),
                MemoryQuantity::from_bytes(most_free),
                limit_alone(most_free)
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn spec(resources: serde_json::Value) -> PodSpec {
        serde_json::from_value(
            json!({"containers": [{"name": "app", "image": "web:1", "resources": resources}]}),
        )
        .expect("spec")
    }

    fn raise<'a>(spec: &'a PodSpec, to: &str) -> Raise<'a> {
        Raise { spec, container: "app", to: MemoryQuantity::parse(to).expect("quantity") }
    }

    fn node(name: &str, allocatable: &str, requested: &str) -> NodeRoom {
        let bytes = |t: &str| MemoryQuantity::parse(t).expect("quantity").bytes();
        NodeRoom { name: name.into(), allocatable: bytes(allocatable), requested: bytes(requested) }
    }

    fn rollout() -> Landing {
        Landing::NewPods { frees_first: false, old_node: None }
    }

    fn quota(hard: serde_json::Value, used: serde_json::Value) -> ResourceQuota {
        serde_json::from_value(json!({"metadata": {"name": "shop-quota"}, "spec": {"hard": hard}, "status": {"hard": hard, "used": used}}))
            .expect("quota")
    }

    fn limit_range(limits: serde_json::Value) -> LimitRange {
        serde_json::from_value(json!({"metadata": {"name": "limits"}, "spec": {"limits": limits}}))
            .expect("limit range")
    }

    #[test]
    fn a_container_a_vpa_acts_on_is_its_to_change_unless_the_vpa_or_its_policy_is_off() {
        let vpa = |mode: &str, policy: serde_json::Value| {
            VerticalAutoscaler::from_json(&json!({"metadata": {"name": "web-vpa"},
                "spec": {"targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                    "updatePolicy": {"updateMode": mode}, "resourcePolicy": {"containerPolicies": policy}}}))
            .expect("vpa")
        };
        let room = |v| Room { autoscalers: vec![v], ..Room::default() };
        let managed = autoscaler_of(
            &room(vpa("Auto", json!([{"containerName": "*", "maxAllowed": {"memory": "512Mi"}}]))),
            "Deployment",
            "web",
            "app",
        )
        .expect_err("managed");
        assert_eq!(
            managed.to_string(),
            "container app of Deployment web is managed by VerticalPodAutoscaler web-vpa (updateMode Auto, maxAllowed memory 512Mi): a direct change would be undone by it; raise its maxAllowed memory or let it act. KubeSent only suggests"
        );
        assert_eq!(
            autoscaler_of(&room(vpa("Off", json!([]))), "Deployment", "web", "app"),
            Ok(()),
            "recommends only"
        );
        let opted_out = vpa("Auto", json!([{"containerName": "app", "mode": "Off"}]));
        assert_eq!(
            autoscaler_of(&room(opted_out), "Deployment", "web", "app"),
            Ok(()),
            "this container is left alone"
        );
        assert_eq!(
            autoscaler_of(&room(vpa("Auto", json!([]))), "Deployment", "api", "app"),
            Ok(()),
            "another workload"
        );
        assert!(
            VerticalAutoscaler::from_json(&json!({"metadata": {"name": "x"}, "spec": {}})).is_none(),
            "no target"
        );
    }

    #[test]
    fn a_raise_the_cluster_can_take_passes() {
        let spec = spec(json!({"limits": {"memory": "384Mi"}}));
        let room = Room {
            limit_ranges: vec![limit_range(json!([{"type": "Container", "max": {"memory": "1Gi"}}]))],
            quotas: vec![quota(json!({"limits.memory": "4Gi"}), json!({"limits.memory": "768Mi"}))],
            nodes: vec![node("n1", "4Gi", "1Gi")],
            autoscalers: Vec::new(),
        };
        assert_eq!(check(raise(&spec, "768Mi"), &rollout(), &room), Ok(()));
        assert_eq!(
            check(raise(&spec, "768Mi"), &rollout(), &Room::default()),
            Ok(()),
            "nothing read, nothing refused"
        );
    }

    #[test]
    fn a_quota_without_room_for_a_new_pod_names_itself_and_the_room_it_has() {
        let spec = spec(json!({"limits": {"memory": "384Mi"}}));
        let room = Room {
            quotas: vec![quota(json!({"limits.memory": "1280Mi"}), json!({"limits.memory": "768Mi"}))],
            ..Room::default()
        };
        let blocked = check(raise(&spec, "640Mi"), &rollout(), &room).expect_err("no room");
        assert_eq!(
            blocked.to_string(),
            "ResourceQuota shop-quota allows 512Mi more limits.memory; the fix needs 640Mi (raise the quota or free room in the namespace)"
        );
        // A rollout that takes an old pod down first needs only the increase.
        let frees = Landing::NewPods { frees_first: true, old_node: None };
        assert_eq!(check(raise(&spec, "640Mi"), &frees, &room), Ok(()));
        // The request moves with an implicit one, and a requests.memory quota counts it.
        let requests = Room {
            quotas: vec![quota(json!({"requests.memory": "1Gi"}), json!({"requests.memory": "768Mi"}))],
            ..Room::default()
        };
        assert!(
            matches!(check(raise(&spec, "640Mi"), &rollout(), &requests), Err(Blocked::Quota { resource, .. }) if resource == "requests.memory")
        );
    }

    #[test]
    fn a_limit_range_max_or_ratio_refuses_what_its_admission_would() {
        let spec = spec(json!({"limits": {"memory": "384Mi"}}));
        let max = Room {
            limit_ranges: vec![limit_range(json!([{"type": "Container", "max": {"memory": "512Mi"}}]))],
            ..Room::default()
        };
        assert_eq!(
            check(raise(&spec, "768Mi"), &rollout(), &max).expect_err("over max").to_string(),
            "LimitRange limits allows at most 512Mi memory per container; the fix needs 768Mi (raise the LimitRange's max, or change the workload's memory by hand)"
        );
        let with_request =
            self::spec(json!({"limits": {"memory": "384Mi"}, "requests": {"memory": "256Mi"}}));
        let ratio = Room {
            limit_ranges: vec![limit_range(
                json!([{"type": "Container", "maxLimitRequestRatio": {"memory": "2"}}]),
            )],
            ..Room::default()
        };
        assert!(matches!(
            check(raise(&with_request, "768Mi"), &rollout(), &ratio),
            Err(Blocked::LimitRangeRatio { .. })
        ));
        assert_eq!(check(raise(&with_request, "512Mi"), &rollout(), &ratio), Ok(()));
        let pod_max = Room {
            limit_ranges: vec![limit_range(json!([{"type": "Pod", "max": {"memory": "512Mi"}}]))],
            ..Room::default()
        };
        assert!(matches!(
            check(raise(&spec, "768Mi"), &rollout(), &pod_max),
            Err(Blocked::LimitRangeMax { scope: "pod", .. })
        ));
    }

    #[test]
    fn nodes_too_full_or_too_small_refuse_and_say_whether_the_limit_alone_would_fit() {
        // Two nodes of 1Gi, each running one 384Mi pod: a 768Mi pod fits neither.
        let spec = spec(json!({"limits": {"memory": "384Mi"}}));
        let room =
            Room { nodes: vec![node("n1", "1Gi", "384Mi"), node("n2", "1Gi", "384Mi")], ..Room::default() };
        let blocked = check(raise(&spec, "768Mi"), &rollout(), &room).expect_err("no room").to_string();
        assert!(blocked.starts_with("no node has room for the new pod: it requests 768Mi memory and the most any of the 2 schedulable nodes has free is 640Mi; a raise of the limit alone would fit if the request stayed at 384Mi"), "{blocked}");
        // A node that could never hold it is named as such.
        let never = check(raise(&spec, "2Gi"), &rollout(), &room).expect_err("too big").to_string();
        assert!(never.starts_with("no node could ever hold the new pod: it requests 2Gi memory and the largest node has 1Gi allocatable"), "{never}");
        // A replacement frees the old pod's room on its node first.
        let replaced = Landing::NewPods { frees_first: true, old_node: Some("n1".into()) };
        assert_eq!(check(raise(&spec, "768Mi"), &replaced, &room), Ok(()));
        // In place, the pod's own node must hold the increase.
        let in_place = Landing::InPlace { node: "n2".into() };
        assert_eq!(check(raise(&spec, "640Mi"), &in_place, &room), Ok(()));
        assert!(matches!(check(raise(&spec, "1100Mi"), &in_place, &room), Err(Blocked::NoNode(_))));
    }
}

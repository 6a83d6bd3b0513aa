//! Reading the nodes' room for the pre-flight (see [`crate::preflight`]) without reading the cluster:
//! node by node, largest first, each node's pods through a field selector and decoded lean (only their
//! containers' resources), stopping at the first node with room. A cluster of 100,000 pods costs one
//! node's pods per raise, not every pod (the full list cost gigabytes of JSON per verdict in the storm).

use k8s_openapi::{
    api::core::v1::{Node, ResourceRequirements},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{Api, api::ListParams};
use kubesent_proto::MemoryQuantity;
use serde::Deserialize;

use crate::preflight::{self, NodeRoom};

/// Pods per page of a node's list (a node runs at most a few hundred).
const PAGE: u32 = 500;

/// A pod as the room count reads it: its containers' resources.
#[derive(Debug, Clone, Deserialize)]
struct RoomPod {
    #[serde(default)]
    metadata: ObjectMeta,
    #[serde(default)]
    spec: Option<RoomSpec>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct RoomSpec {
    #[serde(default)]
    containers: Vec<RoomContainer>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct RoomContainer {
    #[serde(default)]
    resources: Option<ResourceRequirements>,
}

kubesent_common::lean_pod_resource!(RoomPod);

/// The schedulable nodes' room: `first` (a pod's own node) and then the others by allocatable memory,
/// largest first, each with what its unfinished pods request, until one has `need` bytes free. The nodes
/// not read are left out: the pre-flight decides on what was read (the largest node is always among it).
pub async fn room(kube: &kube::Client, first: Option<&str>, need: u64) -> Result<Vec<NodeRoom>, kube::Error> {
    let nodes = Api::<Node>::all(kube.clone()).list(&ListParams::default()).await?;
    let mut candidates: Vec<NodeRoom> = nodes
        .items
        .iter()
        .filter(|n| !n.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false))
        .filter_map(|n| {
            let allocatable = n.status.as_ref()?.allocatable.as_ref()?.get("memory")?;
            Some(NodeRoom {
                name: n.metadata.name.clone()?,
                allocatable: MemoryQuantity::parse(&allocatable.0).ok()?.bytes(),
                requested: 0,
            })
        })
        .collect();
    candidates.sort_by_key(|n| (Some(n.name.as_str()) != first, std::cmp::Reverse(n.allocatable)));
    let pods = Api::<RoomPod>::all(kube.clone());
    let mut read = Vec::new();
    for mut node in candidates {
        let mut bound = ListParams::default()
            .fields(&format!("spec.nodeName={},status.phase!=Succeeded,status.phase!=Failed", node.name))
            .limit(PAGE);
        loop {
            let page = pods.list(&bound).await?;
            node.requested += page
                .items
                .iter()
                .map(|p| {
                    preflight::request_of(
                        p.spec.iter().flat_map(|s| s.containers.iter()).map(|c| c.resources.as_ref()),
                    )
                })
                .sum::<u64>();
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => bound = bound.continue_token(&token),
                None => break,
            }
        }
        let has_room = node.allocatable.saturating_sub(node.requested) >= need;
        read.push(node);
        if has_room {
            break;
        }
    }
    Ok(read)
}

//! Small read-only helpers over Pod objects shared by the services.

use k8s_openapi::api::core::v1::{Container, Pod};
use kubesent_proto::MemoryQuantity;

/// The container (regular or init) named `name`.
pub fn container<'a>(pod: &'a Pod, name: &str) -> Option<&'a Container> {
    let spec = pod.spec.as_ref()?;
    spec.containers.iter().chain(spec.init_containers.iter().flatten()).find(|c| c.name == name)
}

/// The memory limit of container `name`, when it has one that parses.
pub fn memory_limit(pod: &Pod, name: &str) -> Option<MemoryQuantity> {
    let quantity = container(pod, name)?.resources.as_ref()?.limits.as_ref()?.get("memory")?;
    MemoryQuantity::parse(&quantity.0).ok()
}

//! OOM kills of a process inside a container that keeps running (cgroup v1, or a kubelet with
//! `singleProcessOOMKill`): the container's status never shows them, only the node's kernel log does.
//! node-problem-detector turns that log into `OOMKilling` Events on the Node; with its rule matching the
//! kernel's `oom-kill:` line, the message names the victim's cgroup, and the cgroup names the pod's uid
//! and the container's id. Pure parsing and matching; the lookup of the node's pods is the caller's.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kubesent_proto::FailureKind;

use crate::{
    classify::{ContainerObservation, FailureSignal},
    lean::LeanPod,
    tracker::Transition,
};

/// The reason node-problem-detector gives a kernel OOM kill.
pub const OOM_EVENT_REASON: &str = "OOMKilling";

/// The reason of a job about a process OOM-killed inside a container that kept running.
pub const PROCESS_OOM_REASON: &str = "ProcessOOMKilled";

/// A process the kernel OOM-killed, and the pod and container whose cgroup it ran in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessOom {
    /// The pod's uid.
    pub pod_uid: String,
    /// The container's id (64 hex digits), as the runtime names it.
    pub container_id: String,
    /// The process's name.
    pub task: String,
    /// Its pid on the node.
    pub pid: Option<u32>,
}

/// The value of `key=` in the kernel's comma-separated `oom-kill:` line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!("{key}="))? + key.len() + 1;
    let rest = &line[start..];
    Some(rest.split([',', ' ']).next().unwrap_or(rest))
}

/// The pod uid in a cgroup path segment: `pod<uid>` (cgroupfs) or `kubepods-burstable-pod<uid with _>.slice`
/// (systemd).
fn pod_uid(segment: &str) -> Option<String> {
    let at = segment.rfind("pod")?;
    let uid = segment[at + 3..].trim_end_matches(".slice").replace('_', "-");
    let valid = uid.len() == 36 && uid.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    valid.then_some(uid)
}

/// The container id in the last cgroup path segment: `cri-containerd-<id>.scope`, `crio-<id>.scope`,
/// `docker-<id>.scope` (systemd) or `<id>` (cgroupfs).
fn container_id(segment: &str) -> Option<String> {
    let id = segment.trim_end_matches(".scope");
    let id = id.rsplit('-').next().unwrap_or(id);
    (id.len() == 64 && id.chars().all(|c| c.is_ascii_hexdigit())).then(|| id.to_owned())
}

/// The process OOM kill a node event's message describes, when it names the victim's cgroup
/// (`oom-kill:constraint=CONSTRAINT_MEMCG,…,task_memcg=/kubepods/burstable/pod<uid>/<id>,task=python,pid=4242,…`).
pub fn process_oom(message: &str) -> Option<ProcessOom> {
    let cgroup = field(message, "task_memcg").or_else(|| field(message, "oom_memcg"))?;
    let mut segments = cgroup.split('/').filter(|s| !s.is_empty()).rev();
    let container_id = container_id(segments.next()?)?;
    let pod_uid = segments.find_map(pod_uid)?;
    Some(ProcessOom {
        pod_uid,
        container_id,
        task: field(message, "task").unwrap_or("a process").chars().take(64).collect(),
        pid: field(message, "pid").and_then(|p| p.parse().ok()),
    })
}

/// The OOM transition of the container of `pod` the kill happened in, when `pod` is the one and it runs
/// that container now.
pub fn transition(pod: &LeanPod, oom: &ProcessOom, at: Option<Time>) -> Option<Transition> {
    if pod.metadata.uid.as_deref() != Some(oom.pod_uid.as_str()) {
        return None;
    }
    let status = pod.status.as_ref()?;
    let (cs, init) = status
        .init_container_statuses
        .iter()
        .flatten()
        .map(|cs| (cs, true))
        .chain(status.container_statuses.iter().flatten().map(|cs| (cs, false)))
        .find(|(cs, _)| cs.container_id.as_deref().is_some_and(|id| id.ends_with(&oom.container_id)))?;
    let pid = oom.pid.map(|p| format!(" (pid {p})")).unwrap_or_default();
    Some(Transition {
        container: ContainerObservation {
            name: cs.name.clone(),
            init,
            restart_count: cs.restart_count,
            image: cs.image.clone(),
            failure: None,
            running_after_oom: false,
        },
        signal: FailureSignal {
            kind: FailureKind::OomKilled,
            reason: PROCESS_OOM_REASON.into(),
            message: Some(format!(
                "process {}{pid} was OOM-killed by the kernel inside container {}, which kept running (node-problem-detector's OOMKilling event)",
                oom.task, cs.name
            )),
            exit_code: None,
            failed_at: at,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "8b2c1d3e-4f5a-4b6c-9d7e-0f1a2b3c4d5e";
    const ID: &str = "4f1c2a7d9b3e5f60718293a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4";

    #[test]
    fn the_victims_pod_and_container_are_read_from_either_cgroup_driver() {
        let systemd = format!(
            "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=cri-containerd-{ID}.scope,mems_allowed=0,oom_memcg=/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{ID}.scope,task_memcg=/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{ID}.scope,task=python3,pid=4242,uid=0",
            UID.replace('-', "_"),
            UID.replace('-', "_")
        );
        let cgroupfs = format!(
            "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset={ID},mems_allowed=0,oom_memcg=/kubepods/pod{UID},task_memcg=/kubepods/pod{UID}/{ID},task=java,pid=77,uid=1000"
        );
        let crio = format!(
            "oom-kill:constraint=CONSTRAINT_MEMCG,task_memcg=/kubepods.slice/kubepods-pod{}.slice/crio-{ID}.scope,task=node,pid=9",
            UID.replace('-', "_")
        );
        for (message, task) in [(systemd, "python3"), (cgroupfs, "java"), (crio, "node")] {
            let oom = process_oom(&message).unwrap_or_else(|| panic!("{message}"));
            assert_eq!((oom.pod_uid.as_str(), oom.container_id.as_str(), oom.task.as_str()), (UID, ID, task));
        }
    }

    #[test]
    fn a_kill_that_names_no_container_cgroup_is_not_attributed() {
        for message in [
            "Killed process 3420 (python) total-vm:1021544kB, anon-rss:524288kB, file-rss:0kB, shmem-rss:0kB",
            "oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),task_memcg=/system.slice/sshd.service,task=sshd,pid=1",
            "oom-kill:task_memcg=/kubepods/podnot-a-uid/zz,task=x",
            "",
        ] {
            assert_eq!(process_oom(message), None, "{message}");
        }
    }

    #[test]
    fn the_kill_becomes_an_oom_of_the_container_running_with_that_id() {
        let pod: LeanPod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "shop", "uid": UID},
            "status": {"phase": "Running", "containerStatuses": [
                {"name": "sidecar", "image": "s", "imageID": "", "ready": true, "restartCount": 0,
                    "containerID": "containerd://0000000000000000000000000000000000000000000000000000000000000000",
                    "state": {"running": {}}},
                {"name": "app", "image": "a", "imageID": "", "ready": true, "restartCount": 0,
                    "containerID": format!("containerd://{ID}"), "state": {"running": {}}}]}
        }))
        .expect("pod");
        let oom = ProcessOom {
            pod_uid: UID.into(),
            container_id: ID.into(),
            task: "python3".into(),
            pid: Some(4242),
        };
        let found = transition(&pod, &oom, None).expect("the app container");
        assert_eq!((found.container.name.as_str(), found.signal.kind), ("app", FailureKind::OomKilled));
        assert_eq!(found.signal.reason, PROCESS_OOM_REASON);
        assert!(
            found
                .signal
                .message
                .as_deref()
                .is_some_and(|m| m.contains("process python3 (pid 4242) was OOM-killed"))
        );
        let other = ProcessOom { pod_uid: "another".into(), ..oom };
        assert!(transition(&pod, &other, None).is_none());
    }
}

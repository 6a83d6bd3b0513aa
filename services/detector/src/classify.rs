//! Pure classification of a pod's container statuses into failures. No I/O, no clock.

use kubesent_proto::FailureKind;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::lean::{LeanContainerStatus, LeanPod};

/// A failure signal read off one container status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureSignal {
    /// The classified kind.
    pub kind: FailureKind,
    /// The kubelet's reason.
    pub reason: String,
    /// The kubelet's message, if any.
    pub message: Option<String>,
    /// Exit code of the relevant termination.
    pub exit_code: Option<i32>,
    /// When the failure began, as the status records it (a termination's end, a condition's change).
    pub failed_at: Option<Time>,
}

/// What the detector needs to know about one container, kept small on purpose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerObservation {
    /// Container name.
    pub name: String,
    /// True for init containers.
    pub init: bool,
    /// The kubelet's restart count.
    pub restart_count: i32,
    /// The image.
    pub image: String,
    /// The failure the container is in now, if any.
    pub failure: Option<FailureSignal>,
    /// True when the container runs and its last termination was an OOM kill (possibly stale).
    pub running_after_oom: bool,
}

/// Exit code of a SIGKILL.
const SIGKILL_EXIT: i32 = 137;

/// Classifies every container (init containers first) of `pod`. A failure of the whole pod (evicted,
/// unschedulable) is reported on its first app container, the one its incident is keyed by, and the
/// kills an eviction causes are not reported as failures of their own.
pub fn classify(pod: &LeanPod) -> Vec<ContainerObservation> {
    let Some(status) = &pod.status else { return Vec::new() };
    if let Some(signal) = pod_failure(pod) {
        let first = pod.spec.as_ref().and_then(|s| s.containers.first());
        let statuses = status.container_statuses.iter().flatten();
        let mut observations: Vec<ContainerObservation> = statuses
            .map(|cs| ContainerObservation {
                name: cs.name.clone(),
                init: false,
                restart_count: cs.restart_count,
                image: cs.image.clone(),
                failure: None,
                running_after_oom: false,
            })
            .collect();
        let name = first.map(|c| c.name.clone()).or_else(|| observations.first().map(|o| o.name.clone()));
        let Some(name) = name else { return Vec::new() };
        match observations.iter_mut().find(|o| o.name == name) {
            Some(observation) => observation.failure = Some(signal),
            None => observations.insert(
                0,
                ContainerObservation {
                    name,
                    init: false,
                    restart_count: 0,
                    image: first.and_then(|c| c.image.clone()).unwrap_or_default(),
                    failure: Some(signal),
                    running_after_oom: false,
                },
            ),
        }
        return observations;
    }
    // Containers of a `restartPolicy: Never` pod never reach CrashLoopBackOff: their first crash is the failure.
    let restarts = pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) != Some("Never");
    let init = status.init_container_statuses.iter().flatten().map(|cs| observe(cs, true, restarts));
    let regular = status.container_statuses.iter().flatten().map(|cs| observe(cs, false, restarts));
    let mut observations: Vec<ContainerObservation> = init.chain(regular).collect();
    // A running app container that is not ready: its readiness (or startup) probe has not passed yet.
    // The incident book holds it for the unready threshold, so only one that never becomes ready is
    // reported. A pod being deleted turns unready on its way out, which is no failure.
    if pod.metadata.deletion_timestamp.is_none() && status.phase.as_deref() == Some("Running") {
        let regular = status.container_statuses.iter().flatten();
        for cs in regular.filter(|cs| !cs.ready && cs.state.as_ref().is_some_and(|s| s.running.is_some())) {
            if let Some(observation) =
                observations.iter_mut().find(|o| !o.init && o.name == cs.name && o.failure.is_none())
            {
                let unready_since = condition_time(pod, "Ready");
                observation.failure = Some(match oom_behind_unreadiness(cs, unready_since.as_ref()) {
                    // Up again between OOM kills: the kills, not the probe, are the failure.
                    Some(kill) => FailureSignal {
                        kind: FailureKind::OomKilled,
                        reason: "OOMKilled".into(),
                        message: kill.message.clone(),
                        exit_code: Some(kill.exit_code),
                        failed_at: kill.finished_at.clone(),
                    },
                    None => FailureSignal {
                        kind: FailureKind::NotReady,
                        reason: "NotReady".into(),
                        message: ready_condition_message(pod),
                        exit_code: None,
                        failed_at: unready_since,
                    },
                });
            }
        }
    }
    if pod.metadata.deletion_timestamp.is_none()
        && status.phase.as_deref() == Some("Pending")
        && let Some((at, signal)) = never_started(pod)
        && let Some(observation) = observations.iter_mut().find(|o| o.name == at && o.failure.is_none())
    {
        observation.failure = Some(signal);
    }
    observations
}

/// What a scheduled, pending pod is waiting for to start, when nothing has failed: the init container
/// still running (it has not finished), or the first app container still being created. The incident
/// book holds it for the start threshold, so only a pod that never starts is reported.
fn never_started(pod: &LeanPod) -> Option<(String, FailureSignal)> {
    let status = pod.status.as_ref()?;
    let scheduled =
        status.conditions.iter().flatten().find(|c| c.type_ == "PodScheduled" && c.status == "True")?;
    let since = scheduled.last_transition_time.clone();
    let running_init = status
        .init_container_statuses
        .iter()
        .flatten()
        .find(|cs| cs.state.as_ref().is_some_and(|s| s.running.is_some()));
    if let Some(init) = running_init {
        return Some((
            init.name.clone(),
            FailureSignal {
                kind: FailureKind::NeverStarted,
                reason: "InitContainerRunning".into(),
                message: Some(format!("init container {} is running and has not finished", init.name)),
                exit_code: None,
                failed_at: since,
            },
        ));
    }
    let creating = status.container_statuses.iter().flatten().find(|cs| {
        let reason = cs.state.as_ref().and_then(|s| s.waiting.as_ref()).and_then(|w| w.reason.as_deref());
        matches!(reason, Some("ContainerCreating" | "PodInitializing"))
    })?;
    let waiting = creating.state.as_ref().and_then(|s| s.waiting.as_ref())?;
    Some((
        creating.name.clone(),
        FailureSignal {
            kind: FailureKind::NeverStarted,
            reason: waiting.reason.clone().unwrap_or_default(),
            message: waiting.message.clone(),
            exit_code: None,
            failed_at: since,
        },
    ))
}

/// How long after an OOM kill the pod may have turned unready and still be unready because of it.
const UNREADY_AFTER_KILL: jiff::SignedDuration = jiff::SignedDuration::from_secs(60);

/// The OOM kill a running, unready container is still recovering from: its last termination was an
/// OOM kill and the pod turned unready before it or within a minute after it (the container runs
/// again between kills). An OOM kill older than the unreadiness is stale: the container was ready
/// after it, and whatever keeps it unready now is another matter.
fn oom_behind_unreadiness<'a>(
    cs: &'a LeanContainerStatus,
    unready_since: Option<&Time>,
) -> Option<&'a crate::lean::LeanTerminated> {
    let kill = cs.last_state.as_ref()?.terminated.as_ref()?;
    if kill.reason.as_deref() != Some("OOMKilled") || cs.restart_count < 1 {
        return None;
    }
    let killed_at = kill.finished_at.as_ref()?.0;
    let unready_since = unready_since?.0;
    (unready_since <= killed_at.checked_add(UNREADY_AFTER_KILL).ok()?).then_some(kill)
}

/// When the pod's condition `kind` last changed.
fn condition_time(pod: &LeanPod, kind: &str) -> Option<Time> {
    let conditions = pod.status.as_ref()?.conditions.as_ref()?;
    conditions.iter().find(|c| c.type_ == kind).and_then(|c| c.last_transition_time.clone())
}

/// The message of the pod's `Ready=False` condition (`containers with unready status: [app]`).
fn ready_condition_message(pod: &LeanPod) -> Option<String> {
    let conditions = pod.status.as_ref()?.conditions.as_ref()?;
    conditions.iter().find(|c| c.type_ == "Ready" && c.status == "False").and_then(|c| c.message.clone())
}

/// A failure of the pod as a whole: evicted by the kubelet, or fitting no node.
fn pod_failure(pod: &LeanPod) -> Option<FailureSignal> {
    let status = pod.status.as_ref()?;
    // The kubelet's graceful node shutdown fails a pod with reason `Terminated` (`Shutdown` and
    // `NodeShutdown` in earlier releases) and says so in the message.
    let shut_down = matches!(status.reason.as_deref(), Some("Terminated" | "Shutdown" | "NodeShutdown"))
        && status.phase.as_deref() == Some("Failed")
        && status.message.as_deref().is_some_and(|m| {
            let m = m.to_ascii_lowercase();
            m.contains("node shutdown") || m.contains("node is shutting")
        });
    if status.reason.as_deref() == Some("Evicted") || shut_down {
        return Some(FailureSignal {
            kind: FailureKind::Evicted,
            reason: status.reason.clone().unwrap_or_default(),
            message: status.message.clone(),
            exit_code: None,
            failed_at: condition_time(pod, "DisruptionTarget").or_else(|| condition_time(pod, "Ready")),
        });
    }
    let unschedulable = status.conditions.iter().flatten().find(|c| {
        c.type_ == "PodScheduled" && c.status == "False" && c.reason.as_deref() == Some("Unschedulable")
    })?;
    Some(FailureSignal {
        kind: FailureKind::Unschedulable,
        reason: "Unschedulable".into(),
        message: unschedulable.message.clone(),
        exit_code: None,
        failed_at: unschedulable.last_transition_time.clone(),
    })
}

fn observe(cs: &LeanContainerStatus, init: bool, restarts: bool) -> ContainerObservation {
    let state = cs.state.as_ref();
    let last = cs.last_state.as_ref().and_then(|s| s.terminated.as_ref());
    let failure = if let Some(waiting) = state.and_then(|s| s.waiting.as_ref()) {
        let reason = waiting.reason.clone().unwrap_or_default();
        let start_error = last.filter(|t| t.reason.as_deref() == Some("StartError"));
        let kind = match reason.as_str() {
            "CrashLoopBackOff" => Some(match last {
                Some(t) if t.reason.as_deref() == Some("OOMKilled") => FailureKind::OomKilled,
                Some(t) if t.reason.as_deref() == Some("StartError") => FailureKind::StartError,
                Some(t) if t.exit_code == SIGKILL_EXIT => FailureKind::Killed,
                _ => FailureKind::CrashLoop,
            }),
            "ImagePullBackOff" => Some(FailureKind::ImagePullBackOff),
            "ErrImagePull" => Some(FailureKind::ErrImagePull),
            "InvalidImageName" => Some(FailureKind::InvalidImageName),
            "CreateContainerConfigError" => Some(FailureKind::CreateContainerConfigError),
            "CreateContainerError" | "RunContainerError" => Some(FailureKind::StartError),
            _ => None,
        };
        kind.map(|kind| FailureSignal {
            kind,
            reason: reason.clone(),
            // A start error's cause is the runtime's message in the last termination, not the back-off.
            message: match start_error {
                Some(t) if reason == "CrashLoopBackOff" => t.message.clone(),
                _ => waiting.message.clone(),
            },
            exit_code: if reason == "CrashLoopBackOff" { last.map(|t| t.exit_code) } else { None },
            // A back-off follows a termination; the other waiting reasons carry no time.
            failed_at: if reason == "CrashLoopBackOff" {
                last.and_then(|t| t.finished_at.clone())
            } else {
                None
            },
        })
    } else if let Some(terminated) = state.and_then(|s| s.terminated.as_ref()) {
        let reason = terminated.reason.clone().unwrap_or_default();
        let kind = if reason == "OOMKilled" {
            Some(FailureKind::OomKilled)
        } else if reason == "StartError" && !restarts {
            Some(FailureKind::StartError)
        } else if terminated.exit_code == SIGKILL_EXIT {
            Some(FailureKind::Killed)
        } else if terminated.exit_code != 0 && !restarts {
            Some(FailureKind::CrashLoop)
        } else {
            // A plain non-zero exit is reported once it turns into CrashLoopBackOff: a single crash
            // of a restarting container is not yet a failure worth a diagnosis.
            None
        };
        kind.map(|kind| FailureSignal {
            kind,
            reason,
            message: terminated.message.clone(),
            exit_code: Some(terminated.exit_code),
            failed_at: terminated.finished_at.clone(),
        })
    } else {
        None
    };
    let running = state.is_some_and(|s| s.running.is_some());
    ContainerObservation {
        name: cs.name.clone(),
        init,
        restart_count: cs.restart_count,
        image: cs.image.clone(),
        failure,
        running_after_oom: running && last.is_some_and(|t| t.reason.as_deref() == Some("OOMKilled")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod_with(state: serde_json::Value, last: serde_json::Value) -> LeanPod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "shop", "uid": "u"},
            "status": {"containerStatuses": [{"name": "app", "image": "i", "imageID": "", "ready": false,
                "restartCount": 3, "state": state, "lastState": last}]}
        }))
        .expect("pod")
    }

    fn kind(pod: &LeanPod) -> Option<FailureKind> {
        classify(pod).first().and_then(|c| c.failure.as_ref()).map(|f| f.kind)
    }

    #[test]
    fn crash_loop_back_off_is_split_by_the_last_termination() {
        let waiting = json!({"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}});
        let oom = pod_with(waiting.clone(), json!({"terminated": {"exitCode": 137, "reason": "OOMKilled"}}));
        assert_eq!(kind(&oom), Some(FailureKind::OomKilled));
        let killed = pod_with(waiting.clone(), json!({"terminated": {"exitCode": 137, "reason": "Error"}}));
        assert_eq!(kind(&killed), Some(FailureKind::Killed));
        let crashed = pod_with(waiting, json!({"terminated": {"exitCode": 1, "reason": "Error"}}));
        assert_eq!(kind(&crashed), Some(FailureKind::CrashLoop));
        assert_eq!(classify(&crashed)[0].failure.as_ref().and_then(|f| f.exit_code), Some(1));
    }

    #[test]
    fn an_evicted_pod_is_one_eviction_on_its_first_container_not_a_sigkill_of_each() {
        let pod: LeanPod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "shop", "uid": "u"},
            "spec": {"containers": [{"name": "app"}, {"name": "proxy"}]},
            "status": {"phase": "Failed", "reason": "Evicted",
                "message": "Pod ephemeral local storage usage exceeds the total limit of containers 1Gi. ",
                "containerStatuses": [
                    {"name": "app", "image": "i", "restartCount": 0, "state": {"terminated": {"exitCode": 137, "reason": "Error"}}},
                    {"name": "proxy", "image": "i", "restartCount": 0, "state": {"terminated": {"exitCode": 137, "reason": "Error"}}}]}
        }))
        .expect("pod");
        let observations = classify(&pod);
        let failing: Vec<_> = observations
            .iter()
            .filter_map(|o| o.failure.as_ref().map(|f| (o.name.as_str(), f.kind)))
            .collect();
        assert_eq!(failing, [("app", FailureKind::Evicted)]);
        assert_eq!(
            observations[0].failure.as_ref().and_then(|f| f.message.as_deref()),
            Some("Pod ephemeral local storage usage exceeds the total limit of containers 1Gi. ")
        );
    }

    #[test]
    fn a_pod_that_fits_no_node_is_unschedulable_with_the_schedulers_message() {
        let message = "0/3 nodes are available: 3 Insufficient memory. preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod.";
        let pod: LeanPod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "shop", "uid": "u"},
            "spec": {"containers": [{"name": "app", "image": "web:1"}]},
            "status": {"phase": "Pending", "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}]}
        }))
        .expect("pod");
        let observations = classify(&pod);
        assert_eq!(observations.len(), 1);
        assert_eq!((observations[0].name.as_str(), observations[0].image.as_str()), ("app", "web:1"));
        let signal = observations[0].failure.as_ref().expect("failing");
        assert_eq!((signal.kind, signal.message.as_deref()), (FailureKind::Unschedulable, Some(message)));
        let scheduled: LeanPod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "shop", "uid": "u"},
            "spec": {"containers": [{"name": "app"}]},
            "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}]}
        }))
        .expect("pod");
        assert!(classify(&scheduled).iter().all(|o| o.failure.is_none()));
    }

    #[test]
    fn a_container_the_runtime_cannot_start_is_a_start_error_with_the_runtimes_message() {
        let message = "failed to create containerd task: failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: exec: \"/app\": stat /app: no such file or directory: unknown";
        let pod = pod_with(
            json!({"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 20s"}}),
            json!({"terminated": {"exitCode": 128, "reason": "StartError", "message": message}}),
        );
        let signal = classify(&pod)[0].failure.clone().expect("failing");
        assert_eq!(
            (signal.kind, signal.exit_code, signal.message.as_deref()),
            (FailureKind::StartError, Some(128), Some(message))
        );
        let create = pod_with(
            json!({"waiting": {"reason": "CreateContainerError", "message": "no command specified"}}),
            json!({}),
        );
        assert_eq!(kind(&create), Some(FailureKind::StartError));
        let run = pod_with(
            json!({"waiting": {"reason": "RunContainerError", "message": "failed to start"}}),
            json!({}),
        );
        assert_eq!(kind(&run), Some(FailureKind::StartError));
    }

    #[test]
    fn an_unready_container_up_between_oom_kills_is_oom_killed_unless_the_kill_is_older_than_the_unreadiness()
    {
        let pod = |unready_since: &str| -> LeanPod {
            serde_json::from_value(json!({
                "metadata": {"name": "p", "namespace": "shop", "uid": "u"},
                "status": {"phase": "Running",
                    "conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": unready_since,
                        "message": "containers with unready status: [app]"}],
                    "containerStatuses": [{"name": "app", "image": "i", "imageID": "", "ready": false,
                        "restartCount": 5, "state": {"running": {"startedAt": "2026-11-01T09:41:30Z"}},
                        "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled",
                            "finishedAt": "2026-11-01T09:41:09Z"}}}]}
            }))
            .expect("pod")
        };
        // Unready since the kill (the probe fails while it starts again): the kills are the failure.
        let looping = classify(&pod("2026-11-01T09:41:10Z"))[0].failure.clone().expect("failing");
        assert_eq!((looping.kind, looping.exit_code), (FailureKind::OomKilled, Some(137)));
        // Unready only an hour after its last kill: it was ready in between, the kill is stale.
        assert_eq!(kind(&pod("2026-11-01T10:45:00Z")), Some(FailureKind::NotReady));
    }

    #[test]
    fn a_scheduled_pod_still_creating_or_initializing_never_started_and_one_unscheduled_is_unschedulable() {
        let pending = |init: serde_json::Value, app_waiting: &str, scheduled: &str| -> LeanPod {
            serde_json::from_value(json!({
                "metadata": {"name": "p", "namespace": "shop", "uid": "u"},
                "status": {"phase": "Pending",
                    "conditions": [{"type": "PodScheduled", "status": scheduled, "lastTransitionTime": "2026-11-20T10:00:00Z",
                        "reason": if scheduled == "False" { "Unschedulable" } else { "" }, "message": "0/3 nodes are available"}],
                    "initContainerStatuses": init,
                    "containerStatuses": [{"name": "app", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                        "state": {"waiting": {"reason": app_waiting}}}]}
            }))
            .expect("pod")
        };
        let creating = classify(&pending(json!([]), "ContainerCreating", "True"));
        let signal = creating[0].failure.clone().expect("failing");
        assert_eq!((signal.kind, signal.reason.as_str()), (FailureKind::NeverStarted, "ContainerCreating"));
        assert!(signal.failed_at.is_some(), "held from when it was scheduled");
        // An init container still running: it is the one that has not finished, not the app container.
        let running_init = json!([{"name": "wait-for-db", "image": "busybox", "imageID": "", "ready": false,
            "restartCount": 0, "state": {"running": {"startedAt": "2026-11-20T10:00:05Z"}}}]);
        let initializing = classify(&pending(running_init, "PodInitializing", "True"));
        let init = initializing.iter().find(|o| o.init).expect("the init container");
        assert_eq!(
            init.failure.as_ref().map(|f| (f.kind, f.reason.as_str())),
            Some((FailureKind::NeverStarted, "InitContainerRunning"))
        );
        assert!(initializing.iter().filter(|o| !o.init).all(|o| o.failure.is_none()));
        // An init container that crash-loops is a crash loop, and an unscheduled pod is unschedulable.
        let crashing_init = json!([{"name": "migrate", "image": "m", "imageID": "", "ready": false, "restartCount": 4,
            "state": {"waiting": {"reason": "CrashLoopBackOff"}}, "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}}]);
        let crashing = classify(&pending(crashing_init, "PodInitializing", "True"));
        assert_eq!(
            crashing.iter().find_map(|o| o.failure.as_ref().map(|f| f.kind)),
            Some(FailureKind::CrashLoop)
        );
        assert_eq!(kind(&pending(json!([]), "ContainerCreating", "False")), Some(FailureKind::Unschedulable));
    }

    #[test]
    fn a_running_container_with_a_stale_oom_is_not_failing() {
        let pod = pod_with(
            json!({"running": {"startedAt": "2026-11-01T09:00:00Z"}}),
            json!({"terminated": {"exitCode": 137, "reason": "OOMKilled"}}),
        );
        let observed = &classify(&pod)[0];
        assert_eq!(observed.failure, None);
        assert!(observed.running_after_oom);
    }

    #[test]
    fn an_oom_kill_is_a_failure_as_soon_as_the_container_terminates() {
        let pod = pod_with(json!({"terminated": {"exitCode": 137, "reason": "OOMKilled"}}), json!({}));
        assert_eq!(kind(&pod), Some(FailureKind::OomKilled));
    }

    #[test]
    fn image_and_config_errors_are_classified_by_waiting_reason() {
        for (reason, expected) in [
            ("ImagePullBackOff", FailureKind::ImagePullBackOff),
            ("ErrImagePull", FailureKind::ErrImagePull),
            ("InvalidImageName", FailureKind::InvalidImageName),
            ("CreateContainerConfigError", FailureKind::CreateContainerConfigError),
        ] {
            let pod = pod_with(json!({"waiting": {"reason": reason}}), json!({}));
            assert_eq!(kind(&pod), Some(expected), "{reason}");
        }
        let creating = pod_with(json!({"waiting": {"reason": "ContainerCreating"}}), json!({}));
        assert_eq!(kind(&creating), None);
    }

    #[test]
    fn a_pod_without_status_has_no_observations() {
        let pod: LeanPod = serde_json::from_value(json!({"metadata": {"name": "p"}})).expect("pod");
        assert!(classify(&pod).is_empty());
    }
}

//! The Job controller: runs the template's pods until `completions` of them succeed, `parallelism` at a
//! time; counts failed pods (and, with `restartPolicy: OnFailure`, container restarts) against
//! `backoffLimit` and fails the Job `BackoffLimitExceeded` beyond it; fails it `DeadlineExceeded` once it
//! has been active `activeDeadlineSeconds`; deletes the active pods of a failed Job. Conditions as
//! Kubernetes 1.31+ writes them (`FailureTarget` then `Failed`, `SuccessCriteriaMet` then `Complete`).
//! A failed pod is replaced after the controller's back-off (10 s doubling per failure, at most six
//! minutes, on the simulated clock). Not modelled: indexed completion, pod failure policies.

use k8s_openapi::api::batch::v1::Job;

use super::*;

/// Labels the Job controller puts on its pods.
pub(crate) fn job_pod_labels(name: &str, uid: &str) -> BTreeMap<String, String> {
    [
        ("batch.kubernetes.io/controller-uid", uid),
        ("batch.kubernetes.io/job-name", name),
        ("controller-uid", uid),
        ("job-name", name),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref().and_then(|s| s.phase.as_deref())
}

fn restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map_or(0, |c| c.iter().map(|c| c.restart_count).sum())
}

/// The Job controller's wait before re-creating a pod after `failures` failed ones: 10 s, doubling per
/// failure, at most six minutes (simulated time).
pub(crate) fn recreation_backoff(failures: usize) -> std::time::Duration {
    const BASE: std::time::Duration = std::time::Duration::from_secs(10);
    const MAX: std::time::Duration = std::time::Duration::from_secs(360);
    if failures == 0 {
        return std::time::Duration::ZERO;
    }
    let factor = 1u32.checked_shl(u32::try_from(failures - 1).unwrap_or(u32::MAX)).unwrap_or(u32::MAX);
    BASE.saturating_mul(factor).min(MAX)
}

fn condition(kind: &str, reason: &str, message: &str, now: &str) -> Value {
    json!({"type": kind, "status": "True", "reason": reason, "message": message,
        "lastProbeTime": now, "lastTransitionTime": now})
}

impl Controllers<'_> {
    pub(super) fn job(&self, ns: &str, name: &str) -> Result<(), ApiError> {
        let Ok(object) = self.state.store.get(&JOBS, ns, name) else { return Ok(()) };
        let job: Job = object.typed()?;
        if job.metadata.deletion_timestamp.is_some() {
            return Ok(());
        }
        let spec = job.spec.clone().unwrap_or_default();
        let status = job.status.clone().unwrap_or_default();
        let mut conditions: Vec<Value> = object
            .value()
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let finished = conditions.iter().any(|c| {
            matches!(c.get("type").and_then(Value::as_str), Some("Complete" | "Failed"))
                && c.get("status") == Some(&json!("True"))
        });
        if finished {
            self.state.job_failures.lock().unwrap_or_else(PoisonError::into_inner).remove(&object.uid);
        }
        let pods = self.owned_pods(ns, &object.uid)?;
        let active: Vec<&Pod> = pods.iter().filter(|p| is_active(p)).collect();
        let succeeded = pods.iter().filter(|p| phase(p) == Some("Succeeded")).count();
        let failed = pods.iter().filter(|p| phase(p) == Some("Failed")).count();
        let on_failure =
            spec.template.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) == Some("OnFailure");
        let restarted: i32 = if on_failure { active.iter().map(|p| restarts(p)).sum() } else { 0 };
        let failures = i32::try_from(failed).unwrap_or(i32::MAX).saturating_add(restarted);
        let now = jiff::Timestamp::now();
        let stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
        let started = status.start_time.as_ref().map_or(now, |t| t.0);
        let completions = usize::try_from(spec.completions.unwrap_or(1).max(0)).unwrap_or(0);
        let parallelism = usize::try_from(spec.parallelism.unwrap_or(1).max(0)).unwrap_or(0);
        // activeDeadlineSeconds runs on the simulated clock, as the kubelet's timings do.
        let clock = self.state.kubelet.clock();
        let deadline = spec.active_deadline_seconds.and_then(|s| {
            jiff::SignedDuration::try_from(
                clock.scaled(std::time::Duration::from_secs(s.max(0).unsigned_abs())),
            )
            .ok()
        });
        let mut completion_time =
            status.completion_time.as_ref().map(|t| t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
        if !finished {
            let failure = if failures > spec.backoff_limit.unwrap_or(6) {
                Some(("BackoffLimitExceeded", "Job has reached the specified backoff limit"))
            } else if deadline.is_some_and(|d| now.duration_since(started) >= d) {
                Some(("DeadlineExceeded", "Job was active longer than specified deadline"))
            } else {
                None
            };
            if let Some((reason, message)) = failure {
                conditions.push(condition("FailureTarget", reason, message, &stamp));
                conditions.push(condition("Failed", reason, message, &stamp));
                for pod in &active {
                    self.delete_pod(ns, pod)?;
                }
            } else if succeeded >= completions {
                let message = "Reached expected number of succeeded pods";
                conditions.push(condition("SuccessCriteriaMet", "CompletionsReached", message, &stamp));
                conditions.push(condition("Complete", "CompletionsReached", message, &stamp));
                completion_time = Some(stamp.clone());
            } else {
                let wanted = parallelism.min(completions - succeeded);
                let template = spec.template.clone();
                let backoff = clock.scaled(recreation_backoff(failed));
                let last_failure = (failed > 0).then(|| {
                    let mut seen = self.state.job_failures.lock().unwrap_or_else(PoisonError::into_inner);
                    let entry = seen.entry(object.uid.clone()).or_insert((0, std::time::Instant::now()));
                    if failed > entry.0 {
                        *entry = (failed, std::time::Instant::now());
                    }
                    entry.1
                });
                let waiting = last_failure
                    .and_then(|at| backoff.checked_sub(at.elapsed()))
                    .filter(|left| !left.is_zero());
                if let Some(left) = waiting {
                    self.requeue_after(Key::Job(ns.to_owned(), name.to_owned()), left);
                }
                let creating = if waiting.is_some() { active.len() } else { wanted };
                for _ in active.len()..creating {
                    self.create_pod(
                        ns,
                        &template,
                        None,
                        &format!("{name}-"),
                        &job_pod_labels(name, &object.uid),
                        batch_owner_ref("Job", name, &object.uid),
                    )?;
                }
                if let Some(deadline) = deadline {
                    let left = deadline.checked_sub(now.duration_since(started)).unwrap_or_default();
                    self.requeue_after(Key::Job(ns.to_owned(), name.to_owned()), left.unsigned_abs());
                }
            }
        }
        let pods = self.owned_pods(ns, &object.uid)?;
        let active_now: Vec<&Pod> = pods.iter().filter(|p| is_active(p)).collect();
        let mut status = json!({
            "startTime": status.start_time.as_ref().map_or(stamp.clone(), |t| t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()),
            "succeeded": pods.iter().filter(|p| phase(p) == Some("Succeeded")).count(),
            "failed": pods.iter().filter(|p| phase(p) == Some("Failed")).count(),
            "ready": active_now.iter().filter(|p| is_ready(p)).count(),
            "terminating": pods.iter().filter(|p| p.metadata.deletion_timestamp.is_some()).count(),
        });
        if !active_now.is_empty() {
            status["active"] = json!(active_now.len());
        }
        if !conditions.is_empty() {
            status["conditions"] = json!(conditions);
        }
        if let Some(time) = completion_time {
            status["completionTime"] = json!(time);
        }
        self.write_status(&JOBS, ns, name, &object.uid, status)
    }
}

/// Defaults the apiserver sets on a new Job (uid `uid`, name `name`): the selector on its controller-uid,
/// the pod labels, `backoffLimit` 6, `completions` and `parallelism` 1, `suspend` false.
pub(crate) fn job_defaults(value: &mut Value, name: &str, uid: &str) {
    let labels = job_pod_labels(name, uid);
    let spec = &mut value["spec"];
    if spec.get("selector").is_none() {
        spec["selector"] = json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
        spec["manualSelector"] = json!(false);
    }
    for (key, default) in [("backoffLimit", 6), ("completions", 1), ("parallelism", 1)] {
        if spec.get(key).is_none() {
            spec[key] = json!(default);
        }
    }
    if spec.get("completionMode").is_none() {
        spec["completionMode"] = json!("NonIndexed");
    }
    if spec.get("suspend").is_none() {
        spec["suspend"] = json!(false);
    }
    let template_labels = &mut spec["template"]["metadata"]["labels"];
    if !template_labels.is_object() {
        *template_labels = json!({});
    }
    for (key, value) in labels {
        template_labels[key] = json!(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_pod_is_replaced_after_ten_seconds_doubling_to_six_minutes() {
        let waits: Vec<u64> = (0..8).map(|f| recreation_backoff(f).as_secs()).collect();
        assert_eq!(waits, [0, 10, 20, 40, 80, 160, 320, 360]);
        assert_eq!(recreation_backoff(usize::MAX).as_secs(), 360);
    }
}

//! Container logs (with the `logs` options kubectl uses) and the core/v1 events the kubelet writes.

use super::*;

impl Kubelet {
    pub(super) fn append_logs(&self, runtime: &PodRuntime, cid: &str, lines: Vec<String>) {
        let mut logs = lock(&runtime.logs);
        let entry = logs.entry(cid.to_owned()).or_default();
        let now = Timestamp::now();
        entry.extend(lines.into_iter().map(|text| LogLine { at: now, text }));
    }

    /// The body of a `pods/log` request, following kubelet's `validateContainerLogStatus`.
    pub fn logs(&self, pod: &Pod, options: &LogOptions) -> Result<String, ApiError> {
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let container = pods::log_container(pod, options.container.as_deref())?;
        if pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).is_none_or(str::is_empty) {
            return Ok(String::new());
        }
        let c = &container.name;
        let status = pod
            .status
            .iter()
            .flat_map(|s| {
                s.container_statuses.iter().flatten().chain(s.init_container_statuses.iter().flatten())
            })
            .find(|cs| cs.name == *c);
        let not_available =
            || ApiError::bad_request(format!("container {c:?} in pod {pod_name:?} is not available"));
        let Some(status) = status else { return Err(not_available()) };
        let state = status.state.clone().unwrap_or_default();
        let last = status.last_state.as_ref().and_then(|s| s.terminated.as_ref());
        let terminated_last = || {
            last.and_then(|t| t.container_id.clone()).ok_or_else(|| {
                ApiError::bad_request(format!("container {c:?} in pod {pod_name:?} is terminated"))
            })
        };
        let cid = if options.previous {
            last.and_then(|t| t.container_id.clone()).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "previous terminated container {c:?} in pod {pod_name:?} not found"
                ))
            })?
        } else if state.running.is_some() {
            status.container_id.clone().ok_or_else(not_available)?
        } else if let Some(terminated) = &state.terminated {
            match terminated.container_id.clone().filter(|id| !id.is_empty()) {
                Some(id) => id,
                None => terminated_last()?,
            }
        } else if last.is_some() {
            terminated_last()?
        } else if let Some(waiting) = &state.waiting {
            let why = match waiting.reason.as_deref() {
                Some("ErrImagePull") => "image can't be pulled".to_owned(),
                Some("ImagePullBackOff") => "trying and failing to pull image".to_owned(),
                other => other.unwrap_or_default().to_owned(),
            };
            return Err(ApiError::bad_request(format!(
                "container {c:?} in pod {pod_name:?} is waiting to start: {why}"
            )));
        } else {
            return Err(ApiError::bad_request(format!(
                "container {c:?} in pod {pod_name:?} is waiting to start - no logs yet"
            )));
        };
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let runtime = self.runtime(&uid);
        let lines = lock(&runtime.logs).get(&cid).cloned().unwrap_or_default();
        Ok(render_logs(&lines, options))
    }

    /// Writes (or aggregates) a core/v1 event about the pod, as the kubelet (or, by reason, the
    /// scheduler or the taint eviction controller) does.
    pub(crate) fn event(&self, pod: &Pod, container: &str, type_: &str, reason: &str, message: String) {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let now = Timestamp::now();
        let key = (uid.clone(), reason.to_owned(), container.to_owned(), message.clone());
        let existing = lock(&self.events).get(&key).cloned();
        if existing.is_none()
            && crate::api::namespace_phase(&self.store, &namespace).as_deref() != Some("Active")
        {
            // New content in a namespace being deleted (or gone) is refused; the kubelet drops the event.
            return;
        }
        let name = existing.clone().unwrap_or_else(|| format!("{pod_name}.{:x}", now.as_nanosecond()));
        let field_path = (!container.is_empty()).then(|| format!("spec.containers{{{container}}}"));
        let component = match reason {
            "Scheduled" | "FailedScheduling" => "default-scheduler",
            "TaintManagerEviction" => "taint-eviction-controller",
            _ => "kubelet",
        };
        let node = if component == "kubelet" {
            pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        let stamp = Time(now);
        let result = self.store.mutate(&EVENTS, &namespace, &name, |current| {
            let mut event = match current {
                Some(object) => object.value(),
                None => json!({
                    "metadata": {"name": name, "namespace": namespace, "uid": uuid::Uuid::new_v4().to_string(), "creationTimestamp": stamp},
                    "involvedObject": {"kind": "Pod", "namespace": namespace, "name": pod_name, "uid": uid, "apiVersion": "v1",
                        "resourceVersion": pod.metadata.resource_version, "fieldPath": field_path},
                    "reason": reason, "message": message, "source": {"component": component, "host": node},
                    "firstTimestamp": stamp, "count": 0, "type": type_, "eventTime": null,
                    "reportingComponent": component, "reportingInstance": if component == "kubelet" { node.as_str() } else { "" },
                }),
            };
            event["lastTimestamp"] = json!(stamp);
            event["count"] = json!(event["count"].as_i64().unwrap_or(0) + 1);
            Ok(Mutation::Put(event))
        });
        if result.is_ok() && existing.is_none() {
            lock(&self.events).insert(key, name);
        }
    }
}

pub(super) fn render_logs(lines: &[LogLine], options: &LogOptions) -> String {
    let since = options.since_time.or_else(|| {
        options
            .since_seconds
            .and_then(|s| Timestamp::now().checked_sub(jiff::SignedDuration::from_secs(s)).ok())
    });
    let selected: Vec<&LogLine> = lines.iter().filter(|l| since.is_none_or(|s| l.at >= s)).collect();
    let start = options.tail_lines.map_or(0, |t| selected.len().saturating_sub(t));
    let mut out = String::new();
    for line in &selected[start..] {
        if options.timestamps {
            out.push_str(&format!("{} ", line.at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")));
        }
        out.push_str(&line.text);
        out.push('\n');
    }
    if let Some(limit) = options.limit_bytes
        && out.len() > limit
    {
        let mut cut = limit;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out
}

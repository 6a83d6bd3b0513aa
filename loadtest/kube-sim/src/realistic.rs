//! Pods as they look on a real cluster, for benchmarks and load tests: managedFields from
//! kube-controller-manager and the kubelet, an app container and a sidecar with env lists, ports, probes
//! and volume mounts, an init container, a projected service-account volume, tolerations, five
//! conditions and full container statuses. The size is set by how many environment variables the
//! containers carry, so the same shape comes in 5, 10 or 20 KB.

use serde_json::{Value, json};

/// What the pod's app container is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppState {
    /// Running and ready, never restarted.
    Healthy,
    /// Running again after an OOM kill (a stale `lastState`: not a failure now).
    RunningAfterOom,
    /// Just OOM-killed (terminated, not yet restarted).
    OomKilled,
    /// Waiting in `CrashLoopBackOff` after OOM kills.
    OomCrashLoop,
    /// Waiting in `CrashLoopBackOff` after exiting with 1.
    CrashLoop,
    /// Waiting in `ImagePullBackOff`.
    ImagePullBackOff,
}

impl AppState {
    /// Every state, healthy first.
    pub const ALL: [AppState; 6] = [
        AppState::Healthy,
        AppState::RunningAfterOom,
        AppState::OomKilled,
        AppState::OomCrashLoop,
        AppState::CrashLoop,
        AppState::ImagePullBackOff,
    ];

    /// A short name for fixture and benchmark labels.
    pub fn as_str(self) -> &'static str {
        match self {
            AppState::Healthy => "healthy",
            AppState::RunningAfterOom => "running-after-oom",
            AppState::OomKilled => "oom-killed",
            AppState::OomCrashLoop => "oom-crashloop",
            AppState::CrashLoop => "crashloop",
            AppState::ImagePullBackOff => "image-pull-back-off",
        }
    }
}

/// Which pod to make.
#[derive(Debug, Clone)]
pub struct RealisticPod {
    /// Namespace.
    pub namespace: String,
    /// Pod name; a Deployment replica's is `<deployment>-<hash>-<suffix>`.
    pub name: String,
    /// Index that makes the uid and IPs unique.
    pub index: usize,
    /// `Some((deployment, pod-template-hash))` for a Deployment replica, `None` for a bare pod.
    pub deployment: Option<(String, String)>,
    /// What the app container is doing.
    pub state: AppState,
    /// Approximate size of the pod's JSON, in KiB.
    pub size_kib: usize,
}

impl RealisticPod {
    /// A replica of Deployment `web` (hash `7d9c5b7f6`) in `shop`.
    pub fn replica(index: usize, state: AppState, size_kib: usize) -> Self {
        RealisticPod {
            namespace: "shop".into(),
            name: format!("web-7d9c5b7f6-{index:05}"),
            index,
            deployment: Some(("web".into(), "7d9c5b7f6".into())),
            state,
            size_kib,
        }
    }

    /// The pod as JSON, padded with environment variables to about [`RealisticPod::size_kib`].
    pub fn to_json(&self) -> Value {
        self.with_env(self.padding())
    }

    /// How many environment variables bring the pod to [`RealisticPod::size_kib`].
    pub fn padding(&self) -> usize {
        let target = self.size_kib * 1024;
        let mut env = 0;
        loop {
            let size = serde_json::to_vec(&self.with_env(env)).map_or(0, |v| v.len());
            if size >= target || env > 4096 {
                return env;
            }
            // A variable costs about 60 bytes; step by half the gap so the size is not overshot.
            env += (target - size).div_ceil(120).max(1);
        }
    }

    /// The pod as JSON with `env` environment variables split between the app and the sidecar. Below
    /// 9 KiB the pod is a plainer one: a small log-shipping sidecar instead of a service-mesh proxy, a
    /// short init container, no probes, and managedFields that name fewer fields.
    pub fn with_env(&self, env: usize) -> Value {
        let mut pod = self.full_shape(env);
        if self.size_kib < 9 {
            plainer(&mut pod);
        }
        pod
    }

    fn full_shape(&self, env: usize) -> Value {
        let i = self.index;
        let ns = &self.namespace;
        let name = &self.name;
        let app_image = if self.state == AppState::ImagePullBackOff {
            "registry.local/shop/web:9.9.9-missing"
        } else {
            "registry.local/shop/web:1.4.2"
        };
        let mut labels = json!({"app.kubernetes.io/name": "web", "app.kubernetes.io/part-of": "shop",
            "app.kubernetes.io/version": "1.4.2", "team": "checkout", "security.istio.io/tlsMode": "istio"});
        let mut owner = json!([]);
        if let Some((deployment, hash)) = &self.deployment {
            labels["pod-template-hash"] = json!(hash);
            owner = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{deployment}-{hash}"),
                "uid": "5f0c2d1e-8b7a-4c3d-9e2f-1a2b3c4d5e6f", "controller": true, "blockOwnerDeletion": true}]);
        }
        let app_env: Vec<Value> = (0..env / 2)
            .map(|k| json!({"name": format!("FEATURE_FLAG_{k:04}"), "value": format!("enabled-{k}-for-checkout")}))
            .collect();
        let sidecar_env: Vec<Value> = (0..env - env / 2)
            .map(|k| json!({"name": format!("PROXY_OPTION_{k:04}"), "value": format!("proxy-value-{k}")}))
            .collect();
        let mounts = json!([
            {"name": "config", "mountPath": "/etc/web", "readOnly": true},
            {"name": "kube-api-access-x7k2p", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}
        ]);
        let probe = |path: &str| {
            json!({"httpGet": {"path": path, "port": 8080, "scheme": "HTTP"},
            "initialDelaySeconds": 5, "timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3})
        };
        let (app_state, app_last, restarts, ready) = match self.state {
            AppState::Healthy => {
                (json!({"running": {"startedAt": "2026-11-01T09:00:07Z"}}), json!({}), 0, true)
            }
            AppState::RunningAfterOom => (
                json!({"running": {"startedAt": "2026-11-01T09:14:07Z"}}),
                json!({"terminated": {"exitCode": 137, "reason": "OOMKilled", "startedAt": "2026-11-01T09:00:07Z",
                    "finishedAt": "2026-11-01T09:14:05Z", "containerID": format!("containerd://{:064x}", i + 1)}}),
                1,
                true,
            ),
            AppState::OomKilled => (
                json!({"terminated": {"exitCode": 137, "reason": "OOMKilled", "startedAt": "2026-11-01T09:00:07Z",
                    "finishedAt": "2026-11-01T09:14:05Z", "containerID": format!("containerd://{:064x}", i + 1)}}),
                json!({}),
                0,
                false,
            ),
            AppState::OomCrashLoop => (
                json!({"waiting": {"reason": "CrashLoopBackOff",
                    "message": format!("back-off 40s restarting failed container=app pod={name}_{ns}(uid)")}}),
                json!({"terminated": {"exitCode": 137, "reason": "OOMKilled", "startedAt": "2026-11-01T09:13:07Z",
                    "finishedAt": "2026-11-01T09:14:05Z", "containerID": format!("containerd://{:064x}", i + 1)}}),
                3,
                false,
            ),
            AppState::CrashLoop => (
                json!({"waiting": {"reason": "CrashLoopBackOff",
                    "message": format!("back-off 40s restarting failed container=app pod={name}_{ns}(uid)")}}),
                json!({"terminated": {"exitCode": 1, "reason": "Error", "startedAt": "2026-11-01T09:13:07Z",
                    "finishedAt": "2026-11-01T09:13:08Z", "containerID": format!("containerd://{:064x}", i + 1)}}),
                3,
                false,
            ),
            AppState::ImagePullBackOff => (
                json!({"waiting": {"reason": "ImagePullBackOff",
                    "message": "Back-off pulling image \"registry.local/shop/web:9.9.9-missing\""}}),
                json!({}),
                0,
                false,
            ),
        };
        let ready_status = if ready { "True" } else { "False" };
        let condition = |kind: &str, status: &str| {
            json!({"type": kind, "status": status, "lastProbeTime": null,
            "lastTransitionTime": "2026-11-01T09:00:08Z"})
        };
        let fields_spec = json!({"f:containers": {"k:{\"name\":\"app\"}": {".": {}, "f:env": {}, "f:image": {},
            "f:imagePullPolicy": {}, "f:livenessProbe": {}, "f:name": {}, "f:ports": {}, "f:readinessProbe": {},
            "f:resources": {"f:limits": {"f:memory": {}}, "f:requests": {"f:cpu": {}, "f:memory": {}}},
            "f:terminationMessagePath": {}, "f:terminationMessagePolicy": {}, "f:volumeMounts": {}},
            "k:{\"name\":\"istio-proxy\"}": {".": {}, "f:args": {}, "f:env": {}, "f:image": {}, "f:name": {},
            "f:resources": {}}}, "f:dnsPolicy": {}, "f:enableServiceLinks": {}, "f:initContainers": {},
            "f:restartPolicy": {}, "f:schedulerName": {}, "f:securityContext": {}, "f:serviceAccount": {},
            "f:serviceAccountName": {}, "f:terminationGracePeriodSeconds": {}, "f:volumes": {}});
        let fields_status = json!({"f:conditions": {"k:{\"type\":\"ContainersReady\"}": {".": {}, "f:lastProbeTime": {},
            "f:lastTransitionTime": {}, "f:status": {}, "f:type": {}}, "k:{\"type\":\"Initialized\"}": {".": {},
            "f:lastProbeTime": {}, "f:lastTransitionTime": {}, "f:status": {}, "f:type": {}},
            "k:{\"type\":\"PodReadyToStartContainers\"}": {".": {}, "f:lastProbeTime": {}, "f:lastTransitionTime": {},
            "f:status": {}, "f:type": {}}, "k:{\"type\":\"Ready\"}": {".": {}, "f:lastProbeTime": {},
            "f:lastTransitionTime": {}, "f:status": {}, "f:type": {}}}, "f:containerStatuses": {}, "f:hostIP": {},
            "f:hostIPs": {}, "f:initContainerStatuses": {}, "f:phase": {}, "f:podIP": {}, "f:podIPs": {},
            "f:startTime": {}});
        let container_status = |cname: &str,
                                image: &str,
                                state: &Value,
                                last: &Value,
                                restarts: i32,
                                ready: bool| {
            json!({"name": cname, "image": image, "imageID": format!("{image}@sha256:{:064x}", i + 7),
                "containerID": format!("containerd://{:064x}", i + 3), "ready": ready, "started": ready,
                "restartCount": restarts, "state": state, "lastState": last,
                "volumeMounts": [{"name": "kube-api-access-x7k2p", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                    "readOnly": true, "recursiveReadOnly": "Disabled"}]})
        };
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": name, "generateName": name.rsplit_once('-').map_or(String::new(), |(prefix, _)| format!("{prefix}-")),
                "namespace": ns, "uid": format!("7c1e4a2b-0000-4000-8000-{i:012}"),
                "resourceVersion": (1000 + i).to_string(), "creationTimestamp": "2026-11-01T09:00:00Z",
                "labels": labels,
                "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "9090",
                    "checksum/config": "3f7a9c2e1b5d8f0a6c4e2b9d7f1a3c5e8b0d2f4a6c8e1b3d5f7a9c2e4b6d8f0a",
                    "kubectl.kubernetes.io/restartedAt": "2026-10-30T17:12:44Z",
                    "sidecar.istio.io/status": "{\"initContainers\":[\"istio-init\"],\"containers\":[\"istio-proxy\"],\"volumes\":[\"istio-envoy\",\"istio-data\"]}"},
                "ownerReferences": owner,
                "managedFields": [
                    {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
                        "time": "2026-11-01T09:00:00Z", "fieldsType": "FieldsV1",
                        "fieldsV1": {"f:metadata": {"f:annotations": {".": {}, "f:checksum/config": {},
                            "f:kubectl.kubernetes.io/restartedAt": {}, "f:prometheus.io/port": {}, "f:prometheus.io/scrape": {}},
                            "f:generateName": {}, "f:labels": {".": {}, "f:app.kubernetes.io/name": {},
                            "f:app.kubernetes.io/part-of": {}, "f:app.kubernetes.io/version": {}, "f:pod-template-hash": {},
                            "f:team": {}}, "f:ownerReferences": {".": {}, "k:{\"uid\":\"5f0c2d1e-8b7a-4c3d-9e2f-1a2b3c4d5e6f\"}": {}}},
                            "f:spec": fields_spec}},
                    {"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "time": "2026-11-01T09:14:05Z",
                        "fieldsType": "FieldsV1", "fieldsV1": {"f:status": fields_status}, "subresource": "status"}
                ]
            },
            "spec": {
                "volumes": [
                    {"name": "config", "configMap": {"name": "web-config", "defaultMode": 420}},
                    {"name": "istio-envoy", "emptyDir": {"medium": "Memory"}},
                    {"name": "kube-api-access-x7k2p", "projected": {"defaultMode": 420, "sources": [
                        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}]}}
                ],
                "initContainers": [{"name": "istio-init", "image": "registry.local/istio/proxyv2:1.24.1",
                    "args": ["istio-iptables", "-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-b", "*"],
                    "resources": {"limits": {"cpu": "2", "memory": "1Gi"}, "requests": {"cpu": "10m", "memory": "40Mi"}},
                    "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
                    "imagePullPolicy": "IfNotPresent", "securityContext": {"capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
                        "privileged": false, "runAsGroup": 0, "runAsNonRoot": false, "runAsUser": 0}}],
                "containers": [
                    {"name": "app", "image": app_image, "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"},
                        {"name": "metrics", "containerPort": 9090, "protocol": "TCP"}],
                        "env": app_env,
                        "resources": {"limits": {"memory": "512Mi"}, "requests": {"cpu": "250m", "memory": "256Mi"}},
                        "volumeMounts": mounts, "livenessProbe": probe("/healthz"), "readinessProbe": probe("/readyz"),
                        "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "FallbackToLogsOnError",
                        "imagePullPolicy": "IfNotPresent"},
                    {"name": "istio-proxy", "image": "registry.local/istio/proxyv2:1.24.1",
                        "args": ["proxy", "sidecar", "--domain", format!("{ns}.svc.cluster.local"), "--proxyLogLevel=warning",
                            "--proxyComponentLogLevel=misc:error", "--log_output_level=default:info"],
                        "env": sidecar_env,
                        "resources": {"limits": {"cpu": "2", "memory": "1Gi"}, "requests": {"cpu": "100m", "memory": "128Mi"}},
                        "volumeMounts": mounts, "readinessProbe": probe("/healthz/ready"),
                        "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
                        "imagePullPolicy": "IfNotPresent"}
                ],
                "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
                "serviceAccountName": "web", "serviceAccount": "web", "nodeName": format!("node-{}", i % 50),
                "securityContext": {"fsGroup": 1337}, "schedulerName": "default-scheduler",
                "tolerations": [
                    {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                    {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
                ],
                "priority": 0, "enableServiceLinks": true, "preemptionPolicy": "PreemptLowerPriority"
            },
            "status": {
                "phase": "Running",
                "conditions": [
                    condition("PodReadyToStartContainers", "True"), condition("Initialized", "True"),
                    condition("Ready", ready_status), condition("ContainersReady", ready_status),
                    condition("PodScheduled", "True")
                ],
                "hostIP": format!("10.0.{}.{}", i % 50, 10), "hostIPs": [{"ip": format!("10.0.{}.{}", i % 50, 10)}],
                "podIP": format!("10.244.{}.{}", (i / 250) % 250, i % 250), "podIPs": [{"ip": format!("10.244.{}.{}", (i / 250) % 250, i % 250)}],
                "startTime": "2026-11-01T09:00:01Z",
                "initContainerStatuses": [container_status("istio-init", "registry.local/istio/proxyv2:1.24.1",
                    &json!({"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": "2026-11-01T09:00:02Z",
                        "finishedAt": "2026-11-01T09:00:03Z", "containerID": format!("containerd://{:064x}", i + 5)}}),
                    &json!({}), 0, false)],
                "containerStatuses": [
                    container_status("app", app_image, &app_state, &app_last, restarts, ready),
                    container_status("istio-proxy", "registry.local/istio/proxyv2:1.24.1",
                        &json!({"running": {"startedAt": "2026-11-01T09:00:04Z"}}), &json!({}), 0, true)
                ],
                "qosClass": "Burstable"
            }
        })
    }
}

/// Reduces the full shape to a plainer pod of the same parts.
fn plainer(pod: &mut Value) {
    let sidecar = json!({"name": "log-shipper", "image": "registry.local/ops/fluent-bit:3.2",
        "resources": {"limits": {"memory": "64Mi"}, "requests": {"cpu": "10m", "memory": "32Mi"}},
        "volumeMounts": [{"name": "config", "mountPath": "/etc/web", "readOnly": true}]});
    let env = pod["spec"]["containers"][1]["env"].take();
    pod["spec"]["containers"][1] = sidecar;
    pod["spec"]["containers"][1]["env"] = env;
    pod["spec"]["initContainers"][0] = json!({"name": "wait-for-db", "image": "registry.local/ops/wait-for:1.1",
        "command": ["wait-for", "db:5432"], "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}});
    for probe in ["livenessProbe", "readinessProbe"] {
        if let Some(app) = pod["spec"]["containers"][0].as_object_mut() {
            app.remove(probe);
        }
    }
    if let Some(annotations) = pod["metadata"]["annotations"].as_object_mut() {
        annotations.remove("sidecar.istio.io/status");
    }
    if let Some(labels) = pod["metadata"]["labels"].as_object_mut() {
        labels.remove("security.istio.io/tlsMode");
    }
    pod["metadata"]["managedFields"][0]["fieldsV1"]["f:spec"] =
        json!({"f:containers": {}, "f:initContainers": {}, "f:volumes": {}});
    pod["metadata"]["managedFields"][1]["fieldsV1"]["f:status"] =
        json!({"f:conditions": {}, "f:containerStatuses": {}, "f:initContainerStatuses": {}, "f:phase": {}});
    pod["spec"]["volumes"] =
        json!([{"name": "config", "configMap": {"name": "web-config", "defaultMode": 420}}]);
    for statuses in ["containerStatuses", "initContainerStatuses"] {
        if let Some(all) = pod["status"][statuses].as_array_mut() {
            for status in all {
                if let Some(status) = status.as_object_mut() {
                    status.remove("volumeMounts");
                }
            }
        }
    }
    pod["status"]["initContainerStatuses"][0]["name"] = json!("wait-for-db");
    pod["status"]["initContainerStatuses"][0]["image"] = json!("registry.local/ops/wait-for:1.1");
    pod["status"]["containerStatuses"][1]["name"] = json!("log-shipper");
    pod["status"]["containerStatuses"][1]["image"] = json!("registry.local/ops/fluent-bit:3.2");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_come_in_the_size_asked_for() {
        for size in [5, 10, 20] {
            let bytes = serde_json::to_vec(&RealisticPod::replica(1, AppState::Healthy, size).to_json())
                .expect("json");
            let kib = bytes.len() as f64 / 1024.0;
            assert!(kib >= size as f64 && kib < size as f64 + 1.0, "{size} KiB asked, {kib:.1} made");
            let minimal = RealisticPod::replica(1, AppState::Healthy, size).with_env(0);
            let fixed = serde_json::to_vec(&minimal).expect("json").len() as f64 / 1024.0;
            println!("{size} KiB: {kib:.1} KiB, of which {fixed:.1} KiB without padding");
        }
    }

    #[test]
    fn a_realistic_pod_is_a_valid_pod() {
        for state in AppState::ALL {
            let pod: k8s_openapi::api::core::v1::Pod =
                serde_json::from_value(RealisticPod::replica(2, state, 10).to_json()).expect("a Pod");
            assert_eq!(pod.spec.expect("spec").containers.len(), 2);
        }
    }
}

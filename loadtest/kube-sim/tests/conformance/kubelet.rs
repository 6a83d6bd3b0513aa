//! The simulated kubelet: OOM kills and crash loops, images and pull secrets, config errors, scripted exits, logs, in-place resize, readiness.

use super::*;

#[tokio::test]
async fn an_under_provisioned_container_is_oom_killed_and_crash_loops() {
    let sim = sim().await;
    let pods: Api<Pod> = Api::namespaced(client(&sim), "shop");
    pods.create(&PostParams::default(), &pod("web-1", "128Mi", "200Mi")).await.expect("created");
    let crashed = wait_for(&pods, "web-1", |p: Option<&Pod>| {
        p.and_then(last_terminated_reason).as_deref() == Some("OOMKilled")
            && p.and_then(|p| {
                p.status.as_ref()?.container_statuses.as_ref()?.first()?.state.as_ref()?.waiting.clone()
            })
            .is_some_and(|w| w.reason.as_deref() == Some("CrashLoopBackOff"))
    })
    .await;
    let status = &crashed.status.expect("status").container_statuses.expect("statuses")[0];
    let terminated = status.last_state.as_ref().and_then(|s| s.terminated.as_ref()).expect("terminated");
    assert_eq!(terminated.exit_code, 137);
    assert!(status.restart_count >= 1);
    let message = status
        .state
        .as_ref()
        .and_then(|s| s.waiting.as_ref())
        .and_then(|w| w.message.clone())
        .expect("message");
    assert!(message.starts_with("back-off 10s restarting failed container=app pod=web-1_shop("), "{message}");

    let previous = pods
        .logs("web-1", &LogParams { previous: true, ..LogParams::default() })
        .await
        .expect("previous logs");
    assert!(previous.contains("allocating"), "{previous}");
}

#[tokio::test]
async fn a_container_with_enough_memory_runs() {
    let sim = sim().await;
    let pods: Api<Pod> = Api::namespaced(client(&sim), "shop");
    pods.create(&PostParams::default(), &pod("web-2", "256Mi", "200Mi")).await.expect("created");
    wait_for(&pods, "web-2", conditions::is_pod_running()).await;
    let err = pods
        .logs("web-2", &LogParams { previous: true, ..LogParams::default() })
        .await
        .expect_err("no previous");
    let kube::Error::Api(status) = err else { panic!("expected a Status, got {err:?}") };
    assert_eq!(status.code, 400);
    assert_eq!(status.message, "previous terminated container \"app\" in pod \"web-2\" not found");
}

#[tokio::test]
async fn a_missing_image_backs_off_with_the_kubelets_messages_and_events() {
    let sim = sim().await;
    sim.state().registry.set("registry.local/shop/web:9.9.9", kubesent_kube_sim::ImageState::Missing);
    let client = client(&sim);
    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    pods.create(&PostParams::default(), &plain_pod("web-9", "registry.local/shop/web:9.9.9"))
        .await
        .expect("created");
    let pod = wait_for(&pods, "web-9", |p: Option<&Pod>| {
        p.and_then(waiting_reason).as_deref() == Some("ImagePullBackOff")
    })
    .await;
    let message = container_status(&pod).and_then(|s| s.state?.waiting?.message).expect("message");
    assert!(message.starts_with("Back-off pulling image \"registry.local/shop/web:9.9.9\": ErrImagePull: rpc error: code = NotFound"), "{message}");
    assert!(message.ends_with("registry.local/shop/web:9.9.9: not found"), "{message}");
    let reasons: Vec<String> = events_for(&client, "web-9").await.into_iter().map(|(r, _)| r).collect();
    for expected in ["Scheduled", "Pulling", "Failed", "BackOff"] {
        assert!(reasons.iter().any(|r| r == expected), "missing {expected} in {reasons:?}");
    }
    let err = pods.logs("web-9", &LogParams::default()).await.expect_err("no logs yet");
    let kube::Error::Api(status) = err else { panic!("expected a Status") };
    assert_eq!(
        status.message,
        "container \"app\" in pod \"web-9\" is waiting to start: trying and failing to pull image"
    );
}

#[tokio::test]
async fn a_private_image_needs_a_pull_secret_that_exists() {
    use k8s_openapi::api::core::v1::Secret;
    let sim = sim().await;
    sim.state().registry.set("registry.local/private/app", kubesent_kube_sim::ImageState::Private);
    let client = client(&sim);
    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    pods.create(&PostParams::default(), &plain_pod("no-secret", "registry.local/private/app:1"))
        .await
        .expect("created");
    let pod = wait_for(&pods, "no-secret", |p: Option<&Pod>| {
        p.and_then(waiting_reason).as_deref() == Some("ImagePullBackOff")
    })
    .await;
    let message = container_status(&pod).and_then(|s| s.state?.waiting?.message).expect("message");
    assert!(message.contains("pull access denied") && message.contains("authorization failed"), "{message}");

    let secret: Secret = serde_json::from_value(
        json!({"metadata": {"name": "regcred"}, "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": "e30="}}),
    )
    .expect("secret");
    Api::<Secret>::namespaced(client.clone(), "shop")
        .create(&PostParams::default(), &secret)
        .await
        .expect("secret created");
    let mut with_secret = plain_pod("with-secret", "registry.local/private/app:1");
    with_secret.spec.as_mut().expect("spec").image_pull_secrets =
        Some(vec![k8s_openapi::api::core::v1::LocalObjectReference { name: "regcred".into() }]);
    pods.create(&PostParams::default(), &with_secret).await.expect("created");
    wait_for(&pods, "with-secret", conditions::is_pod_running()).await;
}

#[tokio::test]
async fn a_missing_config_map_key_is_a_config_error_until_the_key_exists() {
    use k8s_openapi::api::core::v1::ConfigMap;
    let sim = sim().await;
    let client = client(&sim);
    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "cfg"}, "spec": {"containers": [{"name": "app", "image": "web:1",
        "env": [{"name": "DB_URL", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "db_url"}}}]}]}})).expect("pod");
    pods.create(&PostParams::default(), &pod).await.expect("created");
    let failing = wait_for(&pods, "cfg", |p: Option<&Pod>| {
        p.and_then(waiting_reason).as_deref() == Some("CreateContainerConfigError")
    })
    .await;
    let message = container_status(&failing).and_then(|s| s.state?.waiting?.message);
    assert_eq!(message.as_deref(), Some("configmap \"settings\" not found"));

    let configs: Api<ConfigMap> = Api::namespaced(client.clone(), "shop");
    let partial: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "settings"}, "data": {"other": "x"}}))
            .expect("cm");
    configs.create(&PostParams::default(), &partial).await.expect("cm created");
    wait_for(&pods, "cfg", |p: Option<&Pod>| {
        p.and_then(container_status).and_then(|s| s.state?.waiting?.message).as_deref()
            == Some("couldn't find key db_url in ConfigMap shop/settings")
    })
    .await;
    let fixed = json!({"data": {"db_url": "postgres://db"}});
    configs
        .patch("settings", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&fixed))
        .await
        .expect("patched");
    wait_for(&pods, "cfg", conditions::is_pod_running()).await;
}

#[tokio::test]
async fn a_scripted_exit_code_crash_loops_with_its_logs() {
    let sim = sim().await;
    let pods: Api<Pod> = Api::namespaced(client(&sim), "shop");
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "crash", "annotations": {
        "sim.kubesent.io/exit-code": "3", "sim.kubesent.io/logs": "connecting to db:5432\nerror: connection refused"}},
        "spec": {"containers": [{"name": "app", "image": "web:1"}]}})).expect("pod");
    pods.create(&PostParams::default(), &pod).await.expect("created");
    let looping = wait_for(&pods, "crash", |p: Option<&Pod>| {
        p.and_then(waiting_reason).as_deref() == Some("CrashLoopBackOff")
    })
    .await;
    let last = container_status(&looping).and_then(|s| s.last_state?.terminated).expect("last termination");
    assert_eq!((last.exit_code, last.reason.as_deref()), (3, Some("Error")));
    let logs = pods
        .logs("crash", &LogParams { previous: true, tail_lines: Some(2), ..LogParams::default() })
        .await
        .expect("logs");
    assert_eq!(logs, "error: connection refused\nfatal: exiting with status 3\n");
}

#[tokio::test]
async fn resizing_memory_in_place_heals_an_oom_loop_only_when_the_new_limit_is_enough() {
    let sim = sim().await;
    let pods: Api<Pod> = Api::namespaced(client(&sim), "shop");
    for name in ["right", "wrong"] {
        pods.create(&PostParams::default(), &pod(name, "128Mi", "200Mi")).await.expect("created");
    }
    for name in ["right", "wrong"] {
        wait_for(&pods, name, |p: Option<&Pod>| {
            p.and_then(last_terminated_reason).as_deref() == Some("OOMKilled")
        })
        .await;
    }
    let resize = |limit: &str| json!({"spec": {"containers": [{"name": "app", "resources": {"limits": {"memory": limit}, "requests": {"memory": limit}}}]}});
    let resized = pods
        .patch_resize(
            "right",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Strategic(&resize("256Mi")),
        )
        .await
        .expect("resize accepted");
    assert_eq!(resized.metadata.generation, Some(2));
    pods.patch_resize(
        "wrong",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Strategic(&resize("160Mi")),
    )
    .await
    .expect("resize accepted");
    let healed = wait_for(&pods, "right", |p: Option<&Pod>| {
        p.is_some_and(|p| {
            p.status.as_ref().and_then(|s| s.observed_generation) == Some(2)
                && container_status(p).is_some_and(|s| {
                    s.ready && s.resources.and_then(|r| r.limits).is_some_and(|l| l["memory"].0 == "256Mi")
                })
        })
    })
    .await;
    let restarts_after_fix = container_status(&healed).map(|s| s.restart_count).unwrap_or_default();
    let still_failing = wait_for(&pods, "wrong", |p: Option<&Pod>| {
        p.and_then(container_status).is_some_and(|s| {
            s.restart_count >= 3
                && s.resources.and_then(|r| r.limits).is_some_and(|l| l["memory"].0 == "160Mi")
        })
    })
    .await;
    assert_eq!(
        last_terminated_reason(&still_failing).as_deref(),
        Some("OOMKilled"),
        "a wrong fix does not heal"
    );
    let now = pods.get("right").await.expect("pod");
    assert_eq!(
        container_status(&now).map(|s| s.restart_count),
        Some(restarts_after_fix),
        "the right fix stopped the OOM kills"
    );
}

#[tokio::test]
async fn changing_a_pods_resources_through_an_update_is_forbidden_but_the_image_may_change() {
    let sim = sim().await;
    let pods: Api<Pod> = Api::namespaced(client(&sim), "shop");
    pods.create(&PostParams::default(), &pod("upd", "128Mi", "1Mi")).await.expect("created");
    let patch =
        json!({"spec": {"containers": [{"name": "app", "resources": {"limits": {"memory": "256Mi"}}}]}});
    let err = pods
        .patch("upd", &kube::api::PatchParams::default(), &kube::api::Patch::Strategic(&patch))
        .await
        .expect_err("forbidden");
    let kube::Error::Api(status) = err else { panic!("expected a Status") };
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    assert!(status.message.starts_with("Pod \"upd\" is invalid: spec: Forbidden: pod updates may not change fields other than `spec.containers[*].image`"), "{}", status.message);
    let image = json!({"spec": {"containers": [{"name": "app", "image": "registry.local/shop/web:2"}]}});
    let updated = pods
        .patch("upd", &kube::api::PatchParams::default(), &kube::api::Patch::Strategic(&image))
        .await
        .expect("image update allowed");
    assert_eq!(updated.spec.expect("spec").containers[0].image.as_deref(), Some("registry.local/shop/web:2"));
    wait_for(&pods, "upd", |p: Option<&Pod>| {
        p.and_then(container_status).is_some_and(|s| s.image == "registry.local/shop/web:2" && s.ready)
    })
    .await;
}

#[tokio::test]
async fn multi_container_logs_need_a_container_name() {
    let sim = sim().await;
    let pods: Api<Pod> = Api::namespaced(client(&sim), "shop");
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "two"}, "spec": {"containers": [
        {"name": "app", "image": "web:1"}, {"name": "sidecar", "image": "proxy:1"}]}}))
    .expect("pod");
    pods.create(&PostParams::default(), &pod).await.expect("created");
    let err = pods.logs("two", &LogParams::default()).await.expect_err("ambiguous");
    let kube::Error::Api(status) = err else { panic!("expected a Status") };
    assert_eq!(
        (status.code, status.message.as_str()),
        (400, "a container name must be specified for pod two, choose one of: [app sidecar]")
    );
    let err = pods
        .logs("two", &LogParams { container: Some("nope".into()), ..LogParams::default() })
        .await
        .expect_err("unknown");
    let kube::Error::Api(status) = err else { panic!("expected a Status") };
    assert_eq!(status.message, "container nope is not valid for pod two");
}

#[tokio::test]
async fn unscheduled_and_finished_pods_are_deleted_at_once() {
    // Real-time kubelet: binding takes 100 ms, so a delete right after create hits an unscheduled pod.
    let sim = KubeSim::start(SimConfig::default()).await.expect("starts");
    let pods: Api<Pod> = Api::namespaced(client(&sim), "shop");
    pods.create(&PostParams::default(), &pod("early", "256Mi", "1Mi")).await.expect("created");
    let deleted =
        pods.delete("early", &DeleteParams::default()).await.expect("deleted").left().expect("object");
    assert_eq!(deleted.spec.and_then(|s| s.node_name), None);
    assert!(pods.get_opt("early").await.expect("get").is_none(), "gone without a grace period");

    let fast = KubeSim::start(SimConfig { time_scale: FAST, ..SimConfig::default() }).await.expect("starts");
    let pods: Api<Pod> = Api::namespaced(client(&fast), "shop");
    let job: Pod = serde_json::from_value(
        json!({"metadata": {"name": "done", "annotations": {"sim.kubesent.io/exit-code": "0"}},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "app", "image": "job:1"}]}}),
    )
    .expect("pod");
    pods.create(&PostParams::default(), &job).await.expect("created");
    wait_for(&pods, "done", |p: Option<&Pod>| {
        p.and_then(|p| p.status.as_ref()?.phase.clone()).as_deref() == Some("Succeeded")
    })
    .await;
    pods.delete("done", &DeleteParams::default()).await.expect("deleted");
    assert!(pods.get_opt("done").await.expect("get").is_none(), "a finished pod has no grace period");
}

#[tokio::test]
async fn an_infeasible_resize_is_reported_as_pending() {
    let sim = sim().await;
    let pods: Api<Pod> = Api::namespaced(client(&sim), "shop");
    pods.create(&PostParams::default(), &pod("big", "256Mi", "1Mi")).await.expect("created");
    wait_for(&pods, "big", conditions::is_pod_running()).await;
    let resize = json!({"spec": {"containers": [{"name": "app", "resources": {"limits": {"memory": "256Gi"}, "requests": {"memory": "256Gi"}}}]}});
    pods.patch_resize("big", &kube::api::PatchParams::default(), &kube::api::Patch::Strategic(&resize))
        .await
        .expect("accepted by the API");
    let pending = wait_for(&pods, "big", |p: Option<&Pod>| {
        p.and_then(|p| p.status.as_ref()?.conditions.clone())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "PodResizePending"))
    })
    .await;
    let condition = pending
        .status
        .and_then(|s| s.conditions)
        .and_then(|c| c.into_iter().find(|c| c.type_ == "PodResizePending"))
        .expect("condition");
    assert_eq!(condition.reason.as_deref(), Some("Infeasible"));
    assert!(condition.message.is_some_and(|m| m.starts_with(
        "Node didn't have enough capacity: memory, requested: 274877906944, capacity: 137438953472"
    )));
}

#[tokio::test]
async fn log_parameters_limit_bytes_timestamps_and_validation() {
    let sim = sim().await;
    let pods: Api<Pod> = Api::namespaced(client(&sim), "shop");
    let p: Pod = serde_json::from_value(
        json!({"metadata": {"name": "chatty", "annotations": {"sim.kubesent.io/logs": "one\ntwo\nthree"}},
        "spec": {"containers": [{"name": "app", "image": "web:1"}]}}),
    )
    .expect("pod");
    pods.create(&PostParams::default(), &p).await.expect("created");
    wait_for(&pods, "chatty", conditions::is_pod_running()).await;
    let limited = pods
        .logs("chatty", &LogParams { limit_bytes: Some(10), ..LogParams::default() })
        .await
        .expect("logs");
    assert_eq!(limited.len(), 10);
    let stamped = pods
        .logs("chatty", &LogParams { timestamps: true, tail_lines: Some(1), ..LogParams::default() })
        .await
        .expect("logs");
    let (stamp, line) = stamped.trim_end().split_once(' ').expect("timestamp prefix");
    assert!(stamp.parse::<jiff::Timestamp>().is_ok(), "{stamp}");
    assert_eq!(line, "ready: listening on :8080");
    let err = pods
        .logs("chatty", &LogParams { tail_lines: Some(-1), ..LogParams::default() })
        .await
        .expect_err("negative");
    let kube::Error::Api(status) = err else { panic!("expected a Status") };
    assert_eq!(status.code, 422);
    assert!(
        status.message.contains("tailLines: Invalid value: -1: must be greater than or equal to 0"),
        "{}",
        status.message
    );
}

#[tokio::test]
async fn a_container_with_a_readiness_probe_runs_unready_until_its_initial_delay_has_passed() {
    let sim = sim().await;
    let pods: Api<Pod> = Api::namespaced(client(&sim), "shop");
    pods.create(&PostParams::default(), &with_readiness_probe(pod("web-1", "256Mi", "200Mi"), 30))
        .await
        .expect("created");
    let running = wait_for(&pods, "web-1", conditions::is_pod_running()).await;
    assert!(!ready(&running), "running but not yet ready: {:?}", running.status);
    let became_ready = wait_for(&pods, "web-1", |p: Option<&Pod>| p.is_some_and(ready)).await;
    assert_eq!(container_status(&became_ready).map(|cs| cs.restart_count), Some(0));
}

#[tokio::test]
async fn a_container_killed_before_its_first_readiness_probe_is_never_ready() {
    let sim = sim().await;
    let pods: Api<Pod> = Api::namespaced(client(&sim), "shop");
    // OOM-killed after 2 s of running; the first readiness probe would come at 30 s.
    pods.create(&PostParams::default(), &with_readiness_probe(pod("web-1", "128Mi", "200Mi"), 30))
        .await
        .expect("created");
    let mut events = watcher(pods.clone(), watcher::Config::default()).applied_objects().boxed();
    let mut states = Vec::new();
    tokio::time::timeout(PATIENCE, async {
        while let Some(pod) = events.try_next().await.expect("watch ok") {
            let restarts = container_status(&pod).map_or(0, |cs| cs.restart_count);
            states.push(pod);
            if restarts >= 2 {
                return;
            }
        }
    })
    .await
    .expect("two restarts in time");
    assert!(!states.iter().any(ready), "no state of the pod was ready");
}

#[tokio::test]
async fn a_container_the_runtime_cannot_start_ends_with_start_error_and_crash_loops() {
    let sim = sim().await;
    let pods: Api<Pod> = Api::namespaced(client(&sim), "shop");
    let message = "failed to create containerd task: failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: exec: \"/app/server\": stat /app/server: no such file or directory: unknown";
    let broken: Pod = serde_json::from_value(json!({
        "metadata": {"name": "broken", "annotations": {"sim.kubesent.io/start-error": message}},
        "spec": {"containers": [{"name": "app", "image": "registry.local/shop/web:1.4.2"}]}
    }))
    .expect("pod json");
    pods.create(&PostParams::default(), &broken).await.expect("created");
    let looping = wait_for(&pods, "broken", |p: Option<&Pod>| {
        p.and_then(|p| {
            p.status.as_ref()?.container_statuses.as_ref()?.first()?.state.as_ref()?.waiting.clone()
        })
        .is_some_and(|w| w.reason.as_deref() == Some("CrashLoopBackOff"))
    })
    .await;
    let status = &looping.status.expect("status").container_statuses.expect("statuses")[0];
    let last = status.last_state.as_ref().and_then(|s| s.terminated.clone()).expect("a last termination");
    assert_eq!(
        (last.exit_code, last.reason.as_deref(), last.message.as_deref()),
        (128, Some("StartError"), Some(message))
    );
    assert_eq!(last.started_at.map(|t| t.0), Some(jiff::Timestamp::UNIX_EPOCH), "the process never started");
    assert!(status.restart_count >= 1);
}

//! The request verbs: preconditions, malformed and invalid requests, leases, status updates, events, RBAC, injected faults and the request log.

use super::*;

#[tokio::test]
async fn delete_preconditions_are_enforced_and_graceful_delete_ends_in_deleted() {
    // Slower than the other tests' clock: the pod's shutdown (1 s simulated) must outlast the create that
    // checks its name is still taken (at the fast clock it took 10 ms, and a loaded machine lost the race).
    let sim =
        KubeSim::start(SimConfig { time_scale: 0.5, ..SimConfig::default() }).await.expect("kube-sim starts");
    let pods: Api<Pod> = Api::namespaced(client(&sim), "shop");
    let created = pods.create(&PostParams::default(), &pod("web-3", "256Mi", "1Mi")).await.expect("created");
    let uid = created.metadata.uid.clone().expect("uid");
    wait_for(&pods, "web-3", conditions::is_pod_running()).await;

    let wrong = DeleteParams {
        preconditions: Some(Preconditions { uid: Some("not-the-uid".into()), resource_version: None }),
        ..DeleteParams::default()
    };
    let err = pods.delete("web-3", &wrong).await.expect_err("precondition fails");
    let kube::Error::Api(status) = err else { panic!("expected a Status") };
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    assert!(
        status.message.contains("Precondition failed: UID in precondition: not-the-uid"),
        "{}",
        status.message
    );

    let right = DeleteParams {
        preconditions: Some(Preconditions { uid: Some(uid.clone()), resource_version: None }),
        ..DeleteParams::default()
    };
    let answer = pods.delete("web-3", &right).await.expect("deleted");
    let terminating = answer.left().expect("pods return the object, not a Status");
    assert!(terminating.metadata.deletion_timestamp.is_some());

    let err = pods
        .create(&PostParams::default(), &pod("web-3", "256Mi", "1Mi"))
        .await
        .expect_err("name still taken");
    let kube::Error::Api(status) = err else { panic!("expected a Status") };
    assert_eq!((status.code, status.reason.as_str()), (409, "AlreadyExists"));

    tokio::time::timeout(PATIENCE, await_condition(pods.clone(), "web-3", conditions::is_deleted(&uid)))
        .await
        .expect("deleted in time")
        .expect("watch works");
}

#[tokio::test]
async fn malformed_and_invalid_requests_get_status_errors() {
    let sim = sim().await;
    let http = reqwest_like_post(&sim, "/api/v1/namespaces/shop/pods", "{not json").await;
    assert_eq!(http.0, 400);
    assert_eq!(http.1["kind"], "Status");
    assert_eq!(http.1["reason"], "BadRequest");

    let pods: Api<Pod> = Api::namespaced(client(&sim), "shop");
    let invalid: Pod =
        serde_json::from_value(json!({"metadata": {"name": "x"}, "spec": {"containers": []}})).expect("json");
    let err = pods.create(&PostParams::default(), &invalid).await.expect_err("invalid");
    let kube::Error::Api(status) = err else { panic!("expected a Status") };
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    assert_eq!(status.message, "Pod \"x\" is invalid: spec.containers: Required value");

    let err = pods
        .list(&ListParams::default().fields("spec.containers.image=x"))
        .await
        .expect_err("unsupported field");
    let kube::Error::Api(status) = err else { panic!("expected a Status") };
    assert_eq!(
        (status.code, status.message.as_str()),
        (400, "field label not supported: spec.containers.image")
    );
}

#[tokio::test]
async fn a_lease_update_without_resource_version_is_invalid_and_a_stale_one_conflicts() {
    use k8s_openapi::api::coordination::v1::Lease;
    let sim = sim().await;
    let leases: Api<Lease> = Api::namespaced(client(&sim), "kubesent");
    let lease: Lease =
        serde_json::from_value(json!({"metadata": {"name": "remediator"}, "spec": {"holderIdentity": "a"}}))
            .expect("lease");
    let created = leases.create(&PostParams::default(), &lease).await.expect("created");

    let err = leases
        .replace("remediator", &PostParams::default(), &lease)
        .await
        .expect_err("needs a resourceVersion");
    let kube::Error::Api(status) = err else { panic!("expected a Status") };
    assert_eq!(status.code, 422);
    assert_eq!(
        status.message,
        "Lease.coordination.k8s.io \"remediator\" is invalid: metadata.resourceVersion: Invalid value: 0x0: must be specified for an update"
    );

    let mut update = created.clone();
    update.spec.as_mut().expect("spec").holder_identity = Some("b".into());
    leases
        .replace("remediator", &PostParams::default(), &update)
        .await
        .expect("current resourceVersion is accepted");
    let err = leases.replace("remediator", &PostParams::default(), &update).await.expect_err("now stale");
    let kube::Error::Api(status) = err else { panic!("expected a Status") };
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
}

#[tokio::test]
async fn status_updates_change_only_the_status() {
    let sim = sim().await;
    let pods: Api<Pod> = Api::namespaced(client(&sim), "shop");
    pods.create(&PostParams::default(), &pod("s", "256Mi", "1Mi")).await.expect("created");
    let patch = json!({"status": {"phase": "Failed", "reason": "Evicted"}, "spec": {"containers": [{"name": "app", "image": "other:2"}]}});
    let patched = pods
        .patch_status("s", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch))
        .await
        .expect("status patched");
    assert_eq!(patched.status.as_ref().and_then(|s| s.reason.as_deref()), Some("Evicted"));
    assert_eq!(
        patched.spec.expect("spec").containers[0].image.as_deref(),
        Some("registry.local/shop/web:1.4.2")
    );
}

#[tokio::test]
async fn the_runtime_recorder_creates_then_patches_an_event_series() {
    use k8s_openapi::api::events::v1::Event;
    use kube_runtime::events::{Event as RuntimeEvent, EventType, Recorder, Reporter};
    let sim = sim().await;
    let client = client(&sim);
    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    let created = pods.create(&PostParams::default(), &pod("ev", "256Mi", "1Mi")).await.expect("created");
    let recorder = Recorder::new(
        client.clone(),
        Reporter { controller: "kubesent-remediator".into(), instance: Some("r-0".into()) },
    );
    let reference = kube::Resource::object_ref(&created, &());
    let event = RuntimeEvent {
        type_: EventType::Normal,
        reason: "OOMRemediation".into(),
        note: Some("memory 128Mi -> 256Mi".into()),
        action: "IncreaseMemory".into(),
        secondary: None,
    };
    recorder.publish(&event, &reference).await.expect("first event created");
    recorder.publish(&event, &reference).await.expect("repeat patched as a series");
    let events: Vec<Event> = Api::<Event>::namespaced(client.clone(), "shop")
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("OOMRemediation"))
        .collect();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].series.as_ref().map(|s| s.count), Some(2));
    // The same Event through the core API, as `kubectl get events` and `kubectl describe` read it; and the
    // kubelet's own Events (written there) through events.k8s.io.
    let core: Vec<k8s_openapi::api::core::v1::Event> =
        Api::namespaced(client.clone(), "shop").list(&ListParams::default()).await.expect("list").items;
    let twin = core.iter().find(|e| e.reason.as_deref() == Some("OOMRemediation")).expect("served as v1 too");
    assert_eq!(twin.message.as_deref(), Some("memory 128Mi -> 256Mi"));
    assert_eq!(twin.involved_object.name.as_deref(), Some("ev"));
    assert_eq!(twin.reporting_component.as_deref(), Some("kubesent-remediator"));
    assert_eq!(twin.series.as_ref().and_then(|s| s.count), Some(2));
    assert_eq!(twin.metadata.uid, events[0].metadata.uid, "one Event");
    let kubelet = Api::<Event>::namespaced(client, "shop")
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .find(|e| e.reason.as_deref() == Some("Scheduled"));
    assert!(kubelet.is_some_and(|e| e.regarding.and_then(|r| r.name).as_deref() == Some("ev")));
    assert!(
        sim.requests()
            .iter()
            .any(|r| r.method == "PATCH"
                && r.path.starts_with("/apis/events.k8s.io/v1/namespaces/shop/events/"))
    );
}

#[tokio::test]
async fn an_invalid_events_k8s_io_event_is_refused() {
    use k8s_openapi::api::events::v1::Event;
    let sim = sim().await;
    let events: Api<Event> = Api::namespaced(client(&sim), "shop");
    let event: Event =
        serde_json::from_value(json!({"metadata": {"name": "bad"}, "type": "Fatal", "reason": "X"}))
            .expect("event");
    let err = events.create(&PostParams::default(), &event).await.expect_err("invalid");
    let kube::Error::Api(status) = err else { panic!("expected a Status") };
    assert_eq!(status.code, 422);
    assert!(status.message.contains("eventTime: Required value"), "{}", status.message);
    assert!(status.message.contains("type: Unsupported value: \"Fatal\""), "{}", status.message);
}

#[tokio::test]
async fn injected_errors_throttling_and_latency_reach_the_client() {
    let sim = sim().await;
    let pods: Api<Pod> = Api::namespaced(client(&sim), "shop");
    sim.state().faults.set_error_rate(1.0);
    let err = pods.list(&ListParams::default()).await.expect_err("every request fails");
    let kube::Error::Api(status) = err else { panic!("expected a Status") };
    assert_eq!((status.code, status.reason.as_str()), (500, "InternalError"));
    sim.state().faults.set_error_rate(0.0);

    sim.state().faults.throttle(1, 7);
    let err = pods.list(&ListParams::default()).await.expect_err("throttled");
    let kube::Error::Api(status) = err else { panic!("expected a Status") };
    assert_eq!(status.code, 429);
    assert_eq!(status.message, "Too many requests, please try again later.\n");
    pods.list(&ListParams::default()).await.expect("only one request was throttled");

    // kube's default retry layer retries 429 and honours Retry-After.
    let mut config = kube::Config::new(sim.url().parse().expect("url"));
    config.default_retry = true;
    let retrying: Api<Pod> = Api::namespaced(Client::try_from(config).expect("client"), "shop");
    sim.state().faults.throttle(2, 1);
    retrying.list(&ListParams::default()).await.expect("retried past the throttling");
    let throttled = sim.requests().iter().filter(|r| r.status == 429).count();
    assert_eq!(throttled, 3);

    sim.state().faults.set_latency(Duration::from_millis(200));
    let started = std::time::Instant::now();
    pods.list(&ListParams::default()).await.expect("slow but served");
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn a_partitioned_client_hangs_while_others_are_served() {
    let sim = sim().await;
    let cut_off = client_with_token(&sim, "client-a");
    let other = client_with_token(&sim, "client-b");
    sim.state().faults.partition("client-a");
    let pending = tokio::spawn(async move {
        Api::<Pod>::namespaced(cut_off, "shop").list(&ListParams::default()).await.map(|l| l.items.len())
    });
    Api::<Pod>::namespaced(other, "shop")
        .list(&ListParams::default())
        .await
        .expect("another client is served");
    assert!(!pending.is_finished(), "the partitioned client gets no answer");
    sim.state().faults.heal("client-a");
    let answered = tokio::time::timeout(PATIENCE, pending)
        .await
        .expect("answered after healing")
        .expect("task")
        .expect("listed");
    assert_eq!(answered, 0);
}

#[tokio::test]
async fn the_request_log_shows_that_no_mutating_call_was_made() {
    let sim = sim().await;
    let pods: Api<Pod> = Api::namespaced(client(&sim), "shop");
    pods.list(&ListParams::default()).await.expect("list");
    let _ = pods.get_opt("nope").await.expect("get");
    assert!(sim.state().mutating_requests().is_empty());
    pods.create(&PostParams::default(), &pod("m", "256Mi", "1Mi")).await.expect("created");
    let mutating = sim.state().mutating_requests();
    assert_eq!(mutating.len(), 1);
    assert_eq!((mutating[0].method.as_str(), mutating[0].status), ("POST", 201));
}

#[tokio::test]
async fn rbac_from_the_deployment_yaml_allows_what_is_granted_and_forbids_the_rest() {
    let sim = sim().await;
    let admin = sim.enable_rbac();
    assert!(sim.apply_yaml(RBAC_YAML).expect("rbac applied") >= 10);
    let admin_pods: Api<Pod> = Api::namespaced(client_with_token(&sim, &admin), "shop");
    admin_pods.create(&PostParams::default(), &pod("web-1", "256Mi", "1Mi")).await.expect("admin creates");

    let diagnoser = client_with_token(&sim, &sim.service_account_token("kubesent", "kubesent-diagnoser"));
    let pods: Api<Pod> = Api::namespaced(diagnoser, "shop");
    pods.get("web-1").await.expect("the diagnoser may read pods");
    let err = pods.delete("web-1", &DeleteParams::default()).await.expect_err("but not delete them");
    let kube::Error::Api(status) = err else { panic!("expected a Status") };
    assert_eq!((status.code, status.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        status.message,
        "pods \"web-1\" is forbidden: User \"system:serviceaccount:kubesent:kubesent-diagnoser\" cannot delete resource \"pods\" in API group \"\" in the namespace \"shop\""
    );
    let resize =
        json!({"spec": {"containers": [{"name": "app", "resources": {"limits": {"memory": "512Mi"}}}]}});
    let err = pods
        .patch_resize("web-1", &kube::api::PatchParams::default(), &kube::api::Patch::Strategic(&resize))
        .await
        .expect_err("pods/resize is not granted");
    let kube::Error::Api(status) = err else { panic!("expected a Status") };
    assert!(status.message.contains("cannot patch resource \"pods/resize\""), "{}", status.message);

    let detector = client_with_token(&sim, &sim.service_account_token("kubesent", "kubesent-detector"));
    Api::<Pod>::all(detector.clone())
        .list(&ListParams::default())
        .await
        .expect("the detector lists pods everywhere");
    let err = Api::<Pod>::namespaced(detector, "shop").get("web-1").await.expect_err("but has no get");
    let kube::Error::Api(status) = err else { panic!("expected a Status") };
    assert_eq!(status.code, 403);

    let anonymous = client(&sim);
    let err = Api::<Pod>::namespaced(anonymous, "shop").get("web-1").await.expect_err("no token");
    let kube::Error::Api(status) = err else { panic!("expected a Status") };
    assert_eq!((status.code, status.reason.as_str()), (401, "Unauthorized"));
}

#[tokio::test]
async fn a_secrets_string_data_is_stored_as_base64_data_and_its_type_defaults_to_opaque() {
    use k8s_openapi::api::core::v1::Secret;
    let sim = sim().await;
    let secrets: Api<Secret> = Api::namespaced(client(&sim), "shop");
    let secret: Secret = serde_json::from_value(json!({"metadata": {"name": "db"},
        "data": {"user": "YWRtaW4=", "password": "b2xk"}, "stringData": {"password": "new"}}))
    .expect("secret json");
    let stored = secrets.create(&PostParams::default(), &secret).await.expect("created");
    assert_eq!(stored.type_.as_deref(), Some("Opaque"));
    assert!(stored.string_data.is_none(), "stringData is write-only");
    let data = stored.data.expect("data");
    let text = |k: &str| String::from_utf8(data[k].0.clone()).expect("utf-8");
    assert_eq!((text("user"), text("password")), ("admin".to_owned(), "new".to_owned()), "stringData wins");
}

#[tokio::test]
async fn a_client_that_takes_only_protobuf_answers_gets_406_and_one_that_also_takes_json_gets_json() {
    use axum::http;
    let sim = sim().await;
    let client = client(&sim);
    let get = |accept: &'static str| {
        let client = client.clone();
        async move {
            let request = http::Request::get("/api/v1/namespaces/shop/pods")
                .header(http::header::ACCEPT, accept)
                .body(kube::client::Body::empty())
                .expect("request");
            let response = client.send(request).await.expect("sent");
            let content_type = response.headers().get(http::header::CONTENT_TYPE).cloned();
            (response.status().as_u16(), content_type)
        }
    };
    let (status, _) = get("application/vnd.kubernetes.protobuf").await;
    assert_eq!(status, 406);
    let (status, content_type) = get("application/vnd.kubernetes.protobuf, application/json").await;
    assert_eq!(status, 200);
    assert_eq!(content_type.as_ref().and_then(|v| v.to_str().ok()), Some("application/json"));
}

#[tokio::test]
async fn the_eviction_api_marks_the_pod_and_deletes_it_gracefully_and_a_missing_pod_is_404() {
    let sim = sim().await;
    let pods: Api<Pod> = Api::namespaced(client(&sim), "shop");
    pods.create(&PostParams::default(), &pod("web-7", "256Mi", "1Mi")).await.expect("created");
    wait_for(&pods, "web-7", conditions::is_pod_running()).await;
    let answer = pods.evict("web-7", &kube::api::EvictParams::default()).await.expect("evicted");
    assert_eq!((answer.status, answer.code), (Some(kube::core::response::StatusSummary::Success), 201));
    let evicted = pods.get("web-7").await.expect("terminating, not gone yet");
    assert!(evicted.metadata.deletion_timestamp.is_some());
    let condition = pod_condition(&evicted, "DisruptionTarget").expect("DisruptionTarget");
    assert_eq!(
        (condition.status.as_str(), condition.reason.as_deref()),
        ("True", Some("EvictionByEvictionAPI"))
    );
    let err = pods.evict("nobody", &kube::api::EvictParams::default()).await.expect_err("no such pod");
    let kube::Error::Api(status) = err else { panic!("expected a Status") };
    assert_eq!(status.code, 404);
}

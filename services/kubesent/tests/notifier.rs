//! The notifier against local HTTP receivers standing in for Slack and a webhook endpoint: an incident
//! healed by the pipeline arrives on both (Block Kit on Slack; the versioned payload, signed, on the
//! webhook), a receiver that fails at first gets the message again, an approval request names the
//! commands, and an outcome delivered twice is sent once. The notifier connects as its own NATS user.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    routing::post,
};
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, api::PostParams};
use kubesent::notifier::{self, Delivery, NotifierConfig, NotifierDeps, NotifierMetrics, Sink, SinkKind};
use kubesent_common::nats::{self, Role};
use kubesent_loadtest::stack::{Stack, StackOptions};
use kubesent_proto::{self as proto, Outcome, OutcomeResult};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

#[derive(Clone, Default)]
struct Receiver {
    requests: Arc<Mutex<Vec<(String, HeaderMap, Value)>>>,
    /// Answers 500 to this many webhook requests first.
    failures_left: Arc<Mutex<u32>>,
}

async fn receive(
    State(receiver): State<Receiver>,
    Path(sink): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut failures = receiver.failures_left.lock().expect("lock");
    let mut headers = headers;
    if sink == "hook" {
        // The signature, checked over the exact bytes received; the test asserts the verdict.
        let expected = notifier::signature(b"s3cret", &body);
        let given = headers.get(notifier::SIGNATURE_HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let verdict = if given == expected { "valid" } else { "INVALID" };
        headers.insert("x-test-signature", axum::http::HeaderValue::from_static(verdict));
    }
    receiver.requests.lock().expect("lock").push((sink.clone(), headers, value));
    if sink == "hook" && *failures > 0 {
        *failures -= 1;
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    StatusCode::OK
}

impl Receiver {
    fn of(&self, sink: &str) -> Vec<(HeaderMap, Value)> {
        self.requests
            .lock()
            .expect("lock")
            .iter()
            .filter(|(s, _, _)| s == sink)
            .map(|(_, h, v)| (h.clone(), v.clone()))
            .collect()
    }

    async fn until(&self, done: impl Fn(&Self) -> bool) {
        tokio::time::timeout(Duration::from_secs(60), async {
            while !done(self) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the receivers got what was expected in time");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healed_incidents_and_approval_requests_reach_slack_and_a_signed_webhook_once_each() {
    let receiver = Receiver { failures_left: Arc::new(Mutex::new(1)), ..Receiver::default() };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let app = axum::Router::new().route("/{sink}", post(receive)).with_state(receiver.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let stack = Stack::start(StackOptions {
        time_scale: 0.02,
        verify_window: Duration::from_secs(1),
        ..StackOptions::default()
    })
    .await
    .expect("stack starts");
    let client =
        nats::connect_as(&stack.users.args(stack.nats.url(), Role::Notifier), Role::Notifier, "test")
            .await
            .expect("the notifier's user connects");
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = NotifierMetrics::register(&mut registry);
    let config = NotifierConfig {
        sinks: vec![
            Sink { kind: SinkKind::Slack, url: format!("http://{address}/slack").into(), per_second: 50 },
            Sink { kind: SinkKind::Webhook, url: format!("http://{address}/hook").into(), per_second: 50 },
        ],
        webhook_secret: Some("s3cret".to_owned().into()),
        results: OutcomeResult::ALL.iter().copied().filter(|r| *r != OutcomeResult::Stale).collect(),
        cluster: "prod-eu".into(),
        attempts: 4,
        first_retry: Duration::from_millis(50),
        timeout: Duration::from_secs(5),
    };
    let deps = NotifierDeps {
        js: async_nats::jetstream::new(client),
        metrics: metrics.clone(),
        health: Arc::default(),
    };
    let health = deps.health.clone();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(notifier::run(config, deps, shutdown.clone()));
    tokio::time::timeout(Duration::from_secs(30), async {
        while !health.is_ready() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the notifier is ready");

    // A real incident: an OOM-killed pod, healed by the pipeline.
    let mut outcomes = stack.nats_client.subscribe("kubesent.outcomes.>").await.expect("subscribed");
    let pods: Api<Pod> = Api::namespaced(stack.kube.clone(), "shop");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web-1", "annotations": {"sim.kubesent.io/memory-need": "200Mi"}},
        "spec": {"containers": [{"name": "app", "image": "registry.local/shop/web:1.4.2",
            "resources": {"limits": {"memory": "128Mi"}}}]}
    }))
    .expect("pod");
    pods.create(&PostParams::default(), &pod).await.expect("created");
    let message = tokio::time::timeout(Duration::from_secs(90), futures::StreamExt::next(&mut outcomes))
        .await
        .expect("an outcome")
        .expect("open");
    let healed: Outcome = proto::decode(&message.payload).expect("outcome");
    assert_eq!(healed.result, OutcomeResult::Healed, "{}", healed.detail);
    receiver.until(|r| !r.of("slack").is_empty() && r.of("hook").len() >= 2).await;

    let (_, slack) = &receiver.of("slack")[0];
    let blocks = slack["blocks"].as_array().expect("Block Kit blocks");
    let header = blocks[0]["text"]["text"].as_str().expect("header");
    assert!(
        header.contains("healed") && header.contains("shop/Pod web-1") && header.contains("prod-eu"),
        "{header}"
    );
    let text = slack.to_string();
    for part in [
        "*Root cause*",
        "OOM-killed",
        "raise the memory limit of app from 128Mi to 256Mi",
        &format!("kubesent undo {}", healed.incident),
    ] {
        assert!(text.contains(part), "{part} in the Slack message: {text}");
    }
    let hooks = receiver.of("hook");
    assert_eq!(hooks.len(), 2, "the webhook failed once and got the message again");
    for (headers, _) in &hooks {
        assert_eq!(
            headers.get("x-test-signature").and_then(|v| v.to_str().ok()),
            Some("valid"),
            "signed over its body"
        );
    }
    let delivery =
        |h: &HeaderMap| h.get(notifier::DELIVERY_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
    assert_eq!(delivery(&hooks[0].0), delivery(&hooks[1].0), "the same delivery id on the retry");
    let payload = &hooks[1].1;
    assert_eq!(payload["version"], notifier::WEBHOOK_VERSION);
    assert_eq!(payload["type"], "outcome");
    assert_eq!(payload["incident"], healed.incident.as_str());
    assert_eq!(payload["result"], "healed");
    assert_eq!(payload["failure"]["kind"], "oom-killed");
    assert_eq!(payload["action"]["type"], "increase_memory");
    assert_eq!(payload["commands"]["undo"], format!("kubesent undo {}", healed.incident));

    // The same outcome again (a redelivery): nothing new is sent.
    nats::publish(&stack.js, message.subject.to_string(), "again", message.payload.to_vec(), &[])
        .await
        .expect("stored");
    // An approval request.
    let waiting = Outcome {
        result: OutcomeResult::AwaitingApproval,
        incident: proto::IncidentId("inc-aaaaaaaaaaaaaaaaaaaaaaaa".into()),
        ..healed.clone()
    };
    nats::publish(
        &stack.js,
        "kubesent.outcomes.shop.awaiting_approval".into(),
        "approval",
        proto::encode(&waiting),
        &[],
    )
    .await
    .expect("stored");
    receiver.until(|r| r.of("hook").len() >= 3 && r.of("slack").len() >= 2).await;
    let approval = &receiver.of("hook")[2].1;
    assert_eq!(approval["type"], "approval_request");
    assert_eq!(approval["commands"]["approve"], "kubesent approve inc-aaaaaaaaaaaaaaaaaaaaaaaa");
    assert_eq!(approval["commands"]["reject"], "kubesent reject inc-aaaaaaaaaaaaaaaaaaaaaaaa");
    // On Slack, buttons for `kubesent slack`, naming the incident.
    let asking = receiver.of("slack")[1].1.to_string();
    for part in [
        "\"action_id\":\"kubesent_approve\"",
        "\"action_id\":\"kubesent_reject\"",
        "\"value\":\"inc-aaaaaaaaaaaaaaaaaaaaaaaa\"",
    ] {
        assert!(asking.contains(part), "{part} in {asking}");
    }
    tokio::time::timeout(Duration::from_secs(10), async {
        while metrics.count(SinkKind::Slack, Delivery::Duplicate) < 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the repeat is counted as a duplicate");
    assert_eq!(receiver.of("slack").len(), 2, "one Slack message per incident and result");
    assert_eq!(metrics.count(SinkKind::Webhook, Delivery::Sent), 2);
    assert_eq!(metrics.count(SinkKind::Webhook, Delivery::Failed), 0);

    // A class demoted after harmful fixes: announced on both sinks; a refused request is not.
    let demoted = proto::autonomy::PolicyChange {
        schema: proto::SCHEMA_VERSION,
        event: proto::autonomy::PolicyEvent::Demoted,
        class: proto::autonomy::ActionClass::MemoryRaise,
        namespace: None,
        from: proto::autonomy::Mode::Auto,
        to: proto::autonomy::Mode::Approve,
        by: "kubesent".into(),
        why: "2 automatic memory-raise fixes were harmful within 24h".into(),
        record: proto::autonomy::Tally { agreed: 7, disagreed: 0, harmful: 2 },
        at: jiff::Timestamp::now(),
    };
    let refused =
        proto::autonomy::PolicyChange { event: proto::autonomy::PolicyEvent::Refused, ..demoted.clone() };
    for (change, id) in [(&refused, "refused"), (&demoted, "demoted")] {
        let subject = proto::autonomy::policy_subject(change.event);
        nats::publish(&stack.js, subject, id, proto::encode(change), &[]).await.expect("stored");
    }
    receiver.until(|r| r.of("hook").len() >= 4 && r.of("slack").len() >= 3).await;
    let policy = &receiver.of("hook")[3].1;
    assert_eq!(
        (policy["type"].as_str(), policy["event"].as_str()),
        (Some("policy"), Some("demoted")),
        "{policy}"
    );
    assert_eq!(policy["record"]["harmful"], 2);
    let slack = receiver.of("slack")[2].1.to_string();
    assert!(slack.contains("memory-raise demoted: auto → approve on prod-eu"), "{slack}");
    assert!(slack.contains("9 judged: 7 agreed, 0 disagreed, 2 harmful"), "{slack}");
    shutdown.cancel();
    running.await.expect("joined").expect("the notifier stops cleanly");
    stack.stop().await;
}

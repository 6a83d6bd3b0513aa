//! One trace per incident: the detector's, diagnoser's and remediator's spans for an incident share one
//! trace id, the outcome names it, and the spans reach an OTLP/HTTP collector.

use std::time::Duration;

use axum::{Router, body::Bytes, routing::post};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, api::PostParams};
use kubesent_common::telemetry::{SpanExport, TelemetryOptions};
use kubesent_loadtest::stack::{Stack, StackOptions};
use kubesent_proto::{self as proto, Outcome, OutcomeResult};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const PATIENCE: Duration = Duration::from_secs(90);

/// A collector that accepts OTLP/HTTP JSON at `/v1/traces` and hands over every request body.
async fn collector() -> (String, mpsc::UnboundedReceiver<Bytes>) {
    let (sender, receiver) = mpsc::unbounded_channel();
    let app = Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let sender = sender.clone();
            async move {
                let _ = sender.send(body);
                ([("content-type", "application/json")], "{}")
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{address}/v1/traces"), receiver)
}

/// A span as exported: name, trace id and its string attributes.
#[derive(Debug)]
struct ExportedSpan {
    name: String,
    trace_id: String,
    incident: Option<String>,
}

fn spans_of(body: &[u8]) -> Vec<ExportedSpan> {
    let request: Value = serde_json::from_slice(body).expect("an OTLP JSON request");
    let mut spans = Vec::new();
    for resource in request["resourceSpans"].as_array().into_iter().flatten() {
        for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
            for span in scope["spans"].as_array().into_iter().flatten() {
                let incident = span["attributes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|a| a["key"] == "incident")
                    .and_then(|a| a["value"]["stringValue"].as_str())
                    .map(|v| v.trim_matches('"').to_owned());
                spans.push(ExportedSpan {
                    name: span["name"].as_str().unwrap_or_default().to_owned(),
                    trace_id: span["traceId"].as_str().unwrap_or_default().to_owned(),
                    incident,
                });
            }
        }
    }
    spans
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_incident_is_one_trace_across_the_three_services_and_reaches_the_collector() {
    let (endpoint, mut requests) = collector().await;
    let telemetry = kubesent_common::telemetry::init_with(
        "kubesent-e2e",
        TelemetryOptions { spans: SpanExport::Otlp { endpoint, json: true }, ..TelemetryOptions::default() },
    );
    let stack = Stack::start(StackOptions {
        time_scale: 0.02,
        verify_window: Duration::from_secs(1),
        ..StackOptions::default()
    })
    .await
    .expect("stack starts");
    let mut outcomes = stack.nats_client.subscribe("kubesent.outcomes.>").await.expect("subscribed");
    let pods: Api<Pod> = Api::namespaced(stack.kube.clone(), "shop");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web-1", "namespace": "shop", "annotations": {"sim.kubesent.io/memory-need": "200Mi"}},
        "spec": {"containers": [{"name": "app", "image": "registry.local/shop/web:1.4.2",
            "resources": {"limits": {"memory": "128Mi"}}}]}
    }))
    .expect("pod json");
    pods.create(&PostParams::default(), &pod).await.expect("pod created");
    let message = tokio::time::timeout(PATIENCE, outcomes.next())
        .await
        .expect("an outcome in time")
        .expect("subscribed");
    let outcome: Outcome = proto::decode(&message.payload).expect("outcome");
    assert_eq!(outcome.result, OutcomeResult::Healed, "{}", outcome.detail);
    stack.stop().await;
    tokio::task::spawn_blocking(move || telemetry.flush()).await.expect("flushed");

    let mut spans = Vec::new();
    while let Ok(body) = requests.try_recv() {
        spans.extend(spans_of(&body));
    }
    let trace_id = outcome.trace_id.clone().expect("the outcome names its trace");
    let incident = outcome.incident.to_string();
    // The detector's job, the diagnoser's and the remediator's processing, the verdict and the outcome.
    for stage in [
        "send kubesent.jobs.shop.",
        "process failure job",
        "send kubesent.verdicts.shop.",
        "process verdict",
        "send kubesent.outcomes.shop.",
    ] {
        let found: Vec<&ExportedSpan> = spans
            .iter()
            .filter(|s| s.name.starts_with(stage) && s.incident.as_deref() == Some(incident.as_str()))
            .collect();
        assert!(!found.is_empty(), "a {stage} span for {incident} was exported: {spans:?}");
        assert!(found.iter().all(|s| s.trace_id == trace_id), "{stage} is in trace {trace_id}: {found:?}");
    }
}

//! What a tracing backend receives from KubeSent: OTLP over HTTP as protobuf, decoded here with the
//! OpenTelemetry protobuf definitions. One incident is one trace: the detector's PRODUCER span for the
//! job, the diagnoser's CONSUMER span with the model's CLIENT span and the verdict's PRODUCER span, the
//! remediator's CONSUMER span with a CLIENT span per Kubernetes API request and the outcome's PRODUCER
//! span, with the messaging and `k8s.*` attributes dashboards group by.
//!
//! Its own test binary: the process-wide subscriber is installed once, exporting to the receiver here.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{body::Bytes, extract::State, http::HeaderMap, routing::post};
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, api::PostParams};
use kubesent_common::telemetry::{SpanExport, TelemetryOptions};
use kubesent_loadtest::stack::{Stack, StackOptions};
use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{AnyValue, any_value},
    trace::v1::{Span, span::SpanKind},
};
use prost::Message as _;
use serde_json::json;

type Received = Arc<Mutex<Vec<(String, Bytes)>>>;

async fn receive(State(received): State<Received>, headers: HeaderMap, body: Bytes) -> &'static str {
    let content_type =
        headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    received.lock().expect("lock").push((content_type, body));
    ""
}

fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        _ => String::new(),
    }
}

fn attributes(span: &Span) -> BTreeMap<String, String> {
    span.attributes.iter().map(|kv| (kv.key.clone(), text(kv.value.as_ref()))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_receives_protobuf_spans_of_every_kind_in_one_trace_per_incident() {
    let received: Received = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let app = axum::Router::new().route("/v1/traces", post(receive)).with_state(received.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let guard = kubesent_common::telemetry::init_with(
        "kubesent-test",
        TelemetryOptions {
            spans: SpanExport::Otlp { endpoint: format!("http://{address}/v1/traces"), json: false },
            ..TelemetryOptions::default()
        },
    );
    let stack = Stack::start(StackOptions {
        time_scale: 0.02,
        verify_window: Duration::from_secs(1),
        model: true,
        ..StackOptions::default()
    })
    .await
    .expect("stack starts");
    let mut outcomes = stack.nats_client.subscribe("kubesent.outcomes.>").await.expect("subscribed");
    let pods: Api<Pod> = Api::namespaced(stack.kube.clone(), "shop");
    // A crash the rules are unsure about (the model is asked), and an OOM kill they fix.
    for (name, annotations) in [
        ("odd", json!({"sim.kubesent.io/exit-code": "3", "sim.kubesent.io/run-seconds": "1"})),
        ("hungry", json!({"sim.kubesent.io/memory-need": "200Mi"})),
    ] {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": annotations},
            "spec": {"containers": [{"name": "app", "image": "registry.local/shop/web:1.4.2",
                "resources": {"limits": {"memory": "128Mi"}}}]}
        }))
        .expect("pod");
        pods.create(&PostParams::default(), &pod).await.expect("created");
    }
    let mut finished = BTreeMap::new();
    while finished.len() < 2 {
        let message = tokio::time::timeout(Duration::from_secs(90), futures::StreamExt::next(&mut outcomes))
            .await
            .expect("an outcome in time")
            .expect("open");
        let outcome: kubesent_proto::Outcome = kubesent_proto::decode(&message.payload).expect("outcome");
        finished.insert(outcome.pod.name.clone(), outcome);
    }
    stack.stop().await;
    tokio::task::spawn_blocking(move || guard.flush()).await.expect("flushed");

    let exports = received.lock().expect("lock").clone();
    assert!(!exports.is_empty(), "spans were exported");
    let mut spans = Vec::new();
    for (content_type, body) in &exports {
        assert_eq!(content_type, "application/x-protobuf", "http/protobuf, as the OTLP default");
        let request = ExportTraceServiceRequest::decode(body.clone()).expect("an OTLP protobuf request");
        for resource in request.resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
    }
    let hungry = &finished["hungry"];
    let trace_id = hungry.trace_id.clone().expect("the outcome names its trace");
    let in_trace: Vec<&Span> = spans.iter().filter(|s| hex(&s.trace_id) == trace_id).collect();
    let of_kind = |kind: SpanKind| in_trace.iter().filter(move |s| s.kind == kind as i32).copied();

    let producers: Vec<BTreeMap<String, String>> = of_kind(SpanKind::Producer).map(attributes).collect();
    let destinations: Vec<&str> =
        producers.iter().filter_map(|a| a.get("messaging.destination.name").map(String::as_str)).collect();
    for prefix in ["kubesent.jobs.shop.", "kubesent.verdicts.shop.", "kubesent.outcomes.shop."] {
        assert!(
            destinations.iter().any(|d| d.starts_with(prefix)),
            "a PRODUCER span sends on {prefix}*: {destinations:?}"
        );
    }
    for producer in &producers {
        assert_eq!(producer.get("messaging.system").map(String::as_str), Some("nats"));
        assert_eq!(producer.get("k8s.namespace.name").map(String::as_str), Some("shop"));
        assert_eq!(producer.get("k8s.pod.name").map(String::as_str), Some("hungry"));
    }
    let root = in_trace.iter().find(|s| s.parent_span_id.is_empty()).expect("the trace has a root");
    assert_eq!(root.kind, SpanKind::Producer as i32, "the detector's job starts the incident's trace");
    let consumers: Vec<BTreeMap<String, String>> = of_kind(SpanKind::Consumer).map(attributes).collect();
    let groups: Vec<&str> =
        consumers.iter().filter_map(|a| a.get("messaging.consumer.group.name").map(String::as_str)).collect();
    assert!(groups.contains(&"diagnosers") && groups.contains(&"remediator"), "{groups:?}");
    let kube_calls: Vec<BTreeMap<String, String>> = of_kind(SpanKind::Client).map(attributes).collect();
    assert!(
        kube_calls.iter().any(|a| a.get("http.method").map(String::as_str) == Some("PATCH")),
        "the fix's Kubernetes API requests are CLIENT spans: {kube_calls:?}"
    );

    let odd_trace = finished["odd"].trace_id.clone().expect("trace id");
    let model_calls: Vec<BTreeMap<String, String>> = spans
        .iter()
        .filter(|s| hex(&s.trace_id) == odd_trace && s.kind == SpanKind::Client as i32)
        .map(attributes)
        .filter(|a| a.contains_key("gen_ai.request.model"))
        .collect();
    assert!(!model_calls.is_empty(), "the model call is a CLIENT span in the incident's trace");

    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    for lifetime in ["pods", "publisher", "takeover", "decisions", "retention"] {
        assert!(!names.contains(&lifetime), "no span lives as long as a service: {lifetime}");
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

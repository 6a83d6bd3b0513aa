//! W3C trace context over NATS headers, so one incident is one trace across the three services.

use async_nats::HeaderMap;
use opentelemetry::{
    propagation::{Extractor, Injector},
    trace::TraceContextExt as _,
};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, crate::headers::header_value(&value));
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

/// Writes the current span's context into `headers` (`traceparent`, `tracestate`).
pub fn inject(headers: &mut HeaderMap) {
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&context, &mut HeaderInjector(headers))
    });
}

/// Makes `span` a child of the trace carried in `headers`, if any.
pub fn continue_trace(span: &tracing::Span, headers: Option<&HeaderMap>) {
    let Some(headers) = headers else { return };
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)));
    if parent.span().span_context().is_valid() {
        // An error here means the span is disabled; the trace simply stays unlinked.
        let _ = span.set_parent(parent);
    }
}

/// A PRODUCER span for sending one message on `subject` (OpenTelemetry messaging conventions), about
/// `incident` of pod `namespace/pod`. `root`: it starts the incident's trace (the detector's job); else
/// it is a child of the current span (a verdict or an outcome sent while handling a message).
pub fn producer_span(
    root: bool,
    subject: &str,
    message_id: &str,
    incident: &str,
    namespace: &str,
    pod: &str,
) -> tracing::Span {
    macro_rules! producer {
        ($($parent:tt)*) => {
            tracing::info_span!(
                $($parent)*
                "publish",
                otel.name = %format_args!("send {subject}"),
                otel.kind = "producer",
                messaging.system = "nats",
                messaging.operation.type = "send",
                messaging.operation.name = "publish",
                messaging.destination.name = %subject,
                messaging.message.id = %message_id,
                incident = %incident,
                k8s.namespace.name = %namespace,
                k8s.pod.name = %pod,
            )
        };
    }
    if root { producer!(parent: None,) } else { producer!() }
}

/// A CONSUMER span for processing one message of the durable consumer `group` (OpenTelemetry messaging
/// conventions), continuing the trace its headers carry; `incident`, `namespace` and `pod` (also as
/// `k8s.namespace.name` and `k8s.pod.name`) are recorded once the message is decoded.
pub fn consumer_span(
    name: &'static str,
    group: &'static str,
    subject: &str,
    headers: Option<&HeaderMap>,
) -> tracing::Span {
    let span = tracing::info_span!(
        parent: None,
        "process",
        otel.name = %format_args!("process {name}"),
        otel.kind = "consumer",
        messaging.system = "nats",
        messaging.operation.type = "process",
        messaging.destination.name = %subject,
        messaging.consumer.group.name = group,
        incident = tracing::field::Empty,
        namespace = tracing::field::Empty,
        pod = tracing::field::Empty,
        k8s.namespace.name = tracing::field::Empty,
        k8s.pod.name = tracing::field::Empty,
    );
    continue_trace(&span, headers);
    span
}

/// Records the incident and its pod on a span made by [`consumer_span`].
pub fn record_target(span: &tracing::Span, incident: &str, namespace: &str, pod: &str) {
    span.record("incident", incident);
    span.record("namespace", namespace);
    span.record("pod", pod);
    span.record("k8s.namespace.name", namespace);
    span.record("k8s.pod.name", pod);
}

/// The trace id of the current span, when tracing is on.
pub fn current_trace_id() -> Option<String> {
    let context = tracing::Span::current().context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| span_context.trace_id().to_string())
}

//! Logging and tracing set-up: `tracing` with an env filter (`RUST_LOG`), text or JSON lines, and an
//! OpenTelemetry layer so every span has a W3C trace id that travels in NATS headers. Spans are exported
//! over OTLP/HTTP when the standard `OTEL_EXPORTER_OTLP_*` environment variables name a collector.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_subscriber::{EnvFilter, Layer as _, layer::SubscriberExt as _, util::SubscriberInitExt as _};

/// Where finished spans go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SpanExport {
    /// As the standard environment says: OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` or
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set and `OTEL_TRACES_EXPORTER` is not `none`; the protocol
    /// from `OTEL_EXPORTER_OTLP_PROTOCOL` (`http/protobuf`, the default, or `http/json`).
    #[default]
    FromEnvironment,
    /// Nowhere (spans still get trace ids for propagation and logs).
    Off,
    /// OTLP/HTTP to `endpoint` (the full URL, e.g. `http://collector:4318/v1/traces`).
    Otlp {
        /// Collector URL.
        endpoint: String,
        /// JSON instead of protobuf.
        json: bool,
    },
}

impl SpanExport {
    /// Whether the environment asks for OTLP export.
    fn environment_wants_otlp() -> bool {
        let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
        let disabled = std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v.trim() == "none");
        !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
    }
}

/// How to set up telemetry.
#[derive(Debug, Clone)]
pub struct TelemetryOptions {
    /// JSON log lines instead of text.
    pub json_logs: bool,
    /// The filter when `RUST_LOG` is unset.
    pub default_filter: String,
    /// Span export.
    pub spans: SpanExport,
    /// Log to stderr (a human's command, whose stdout is its answer) instead of stdout (a service).
    pub to_stderr: bool,
}

/// The log filter when `RUST_LOG` is unset: `info`, without kube-leader-election's own INFO lines (every
/// standby would log "lease is held by … and has not yet expired" at each poll; the election logs
/// becoming and ceasing to lead itself).
pub const DEFAULT_FILTER: &str = "info,kube_leader_election=warn";

impl Default for TelemetryOptions {
    fn default() -> Self {
        Self {
            json_logs: false,
            default_filter: DEFAULT_FILTER.into(),
            spans: SpanExport::FromEnvironment,
            to_stderr: false,
        }
    }
}

/// Keeps the tracer provider alive; flushes it on drop.
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl TelemetryGuard {
    /// Exports every finished span now. Blocks the calling thread until the collector answered (call it
    /// from `spawn_blocking` in async code).
    pub fn flush(&self) {
        if let Err(error) = self.provider.force_flush() {
            tracing::warn!(%error, "flushing spans failed");
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        let _ = self.provider.shutdown();
    }
}

/// Installs the global subscriber for `service`, logging at `info` unless `RUST_LOG` says otherwise. A
/// second call in the same process (tests, the demo running every service) keeps the first subscriber.
pub fn init(service: &'static str, json: bool) -> TelemetryGuard {
    init_with(service, TelemetryOptions { json_logs: json, ..TelemetryOptions::default() })
}

/// Like [`init`], with `default_filter` used when `RUST_LOG` is unset.
pub fn init_with_level(service: &'static str, json: bool, default_filter: &str) -> TelemetryGuard {
    init_with(
        service,
        TelemetryOptions {
            json_logs: json,
            default_filter: default_filter.into(),
            ..TelemetryOptions::default()
        },
    )
}

/// Installs the global subscriber for `service` with `options`.
pub fn init_with(service: &'static str, options: TelemetryOptions) -> TelemetryGuard {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    // OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES (read by the resource detectors) win over the role name.
    let resource = if std::env::var("OTEL_SERVICE_NAME").is_ok() {
        Resource::builder().build()
    } else {
        Resource::builder().with_service_name(service).build()
    };
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    let mut export_problem = None;
    match otlp_exporter(&options.spans) {
        Ok(Some(exporter)) => builder = builder.with_batch_exporter(exporter),
        Ok(None) => {}
        Err(problem) => export_problem = Some(problem),
    }
    let provider = builder.build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    let tracer = provider.tracer(service);
    let filter =
        || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&options.default_filter));
    // Spans see what the logs see, plus kube-client's CLIENT span around every API request (it makes it
    // at DEBUG, with the HTTP method, URL and status).
    let span_filter = match KUBE_CLIENT_SPANS.parse() {
        Ok(directive) => filter().add_directive(directive),
        Err(_) => filter(),
    };
    let otel = tracing_opentelemetry::layer().with_tracer(tracer).with_filter(span_filter);
    let registry = tracing_subscriber::registry().with(otel);
    let _ = if options.json_logs {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_filter(filter()),
            )
            .try_init()
    } else {
        // Colours only on a terminal: log files and collectors get plain text.
        let colours = if options.to_stderr {
            std::io::IsTerminal::is_terminal(&std::io::stderr())
        } else {
            std::io::IsTerminal::is_terminal(&std::io::stdout())
        };
        let layer = tracing_subscriber::fmt::layer().with_target(false).with_ansi(colours);
        if options.to_stderr {
            registry.with(layer.with_writer(std::io::stderr).with_filter(filter())).try_init()
        } else {
            registry.with(layer.with_filter(filter())).try_init()
        }
    };
    if let Some(problem) = export_problem {
        // A broken collector setting must not stop the service; it is reported once, loudly.
        tracing::error!(%problem, "span export is off: the OTLP exporter could not be built (KubeSent speaks OTLP over HTTP: http/protobuf or http/json, port 4318)");
    }
    TelemetryGuard { provider }
}

/// The directive that lets kube-client's per-request spans through to the span exporter.
const KUBE_CLIENT_SPANS: &str = "kube_client::client::builder=debug";

/// Whether the environment names an OTLP protocol; without one it is `http/protobuf`, as the
/// OpenTelemetry specification says (the exporter crate would pick JSON, since both are compiled in).
fn environment_names_protocol(var: impl Fn(&str) -> Option<String>) -> bool {
    ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"]
        .iter()
        .any(|name| var(name).is_some_and(|v| !v.trim().is_empty()))
}

fn otlp_exporter(export: &SpanExport) -> Result<Option<opentelemetry_otlp::SpanExporter>, String> {
    let builder = opentelemetry_otlp::SpanExporter::builder().with_http();
    let builder = match export {
        SpanExport::Off => return Ok(None),
        SpanExport::FromEnvironment if !SpanExport::environment_wants_otlp() => return Ok(None),
        SpanExport::FromEnvironment if environment_names_protocol(|name| std::env::var(name).ok()) => builder,
        SpanExport::FromEnvironment => builder.with_protocol(Protocol::HttpBinary),
        SpanExport::Otlp { endpoint, json } => builder
            .with_endpoint(endpoint.clone())
            .with_protocol(if *json { Protocol::HttpJson } else { Protocol::HttpBinary }),
    };
    builder.build().map(Some).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn without_a_protocol_in_the_environment_spans_go_as_protobuf() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned())
        };
        assert!(!super::environment_names_protocol(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")])));
        assert!(!super::environment_names_protocol(env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", " ")])));
        assert!(super::environment_names_protocol(env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")])));
        assert!(super::environment_names_protocol(env(&[(
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "http/json"
        )])));
    }

    #[test]
    fn init_installs_a_subscriber() {
        let _guard = super::init("test", false);
        tracing::info!("hello from the test");
        assert!(tracing::dispatcher::has_been_set());
    }
}

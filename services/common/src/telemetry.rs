//! Logging and tracing set-up: `tracing` with an env filter (`RUST_LOG`), text or JSON lines, and an
//! OpenTelemetry layer so every span has a W3C trace id that travels in NATS headers.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_subscriber::{EnvFilter, layer::SubscriberExt as _, util::SubscriberInitExt as _};

/// Keeps the tracer provider alive; flushes it on drop.
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        let _ = self.provider.shutdown();
    }
}

/// Installs the global subscriber for `service`, logging at `info` unless `RUST_LOG` says otherwise. A
/// second call in the same process (tests, the demo running every service) keeps the first subscriber.
pub fn init(service: &'static str, json: bool) -> TelemetryGuard {
    init_with_level(service, json, "info")
}

/// Like [`init`], with `default_filter` used when `RUST_LOG` is unset.
pub fn init_with_level(service: &'static str, json: bool, default_filter: &str) -> TelemetryGuard {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let provider = SdkTracerProvider::builder().build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    let tracer = provider.tracer(service);
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let otel = tracing_opentelemetry::layer().with_tracer(tracer);
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let _ = if json {
        registry
            .with(tracing_subscriber::fmt::layer().json().flatten_event(true).with_current_span(true))
            .try_init()
    } else {
        registry.with(tracing_subscriber::fmt::layer().with_target(false)).try_init()
    };
    TelemetryGuard { provider }
}

#[cfg(test)]
mod tests {
    #[test]
    fn init_installs_a_subscriber() {
        let _guard = super::init("test", false);
        tracing::info!("hello from the test");
        assert!(tracing::dispatcher::has_been_set());
    }
}

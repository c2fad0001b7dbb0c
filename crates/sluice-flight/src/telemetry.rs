//! Exporting spans over OTLP/gRPC (the `otlp` feature): what the `sluice`
//! binary and the Rust stage SDK share.
//!
//! [`export_traces`] installs a global OpenTelemetry tracer provider whose
//! spans go, in batches, to an OTLP/gRPC endpoint (an OpenTelemetry
//! collector, Jaeger, ...). OpenTelemetry's batch processor exports from a
//! thread of its own, where tonic finds no tokio reactor; the exporter here
//! brings a small runtime of its own for that.

use std::fmt;
use std::time::Duration;

use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};

pub use crate::launch::{ENV_ENDPOINT, ENV_SERVICE};

/// Spans being exported; [`Telemetry::shutdown`] sends what is left.
#[derive(Clone)]
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Telemetry")
    }
}

impl Telemetry {
    /// Exports the spans ended so far. It blocks until they are sent (or
    /// the export times out): call it off async threads.
    pub fn flush(&self) {
        let _ = self.provider.force_flush();
    }

    /// Exports the spans not sent yet and stops; call before the process
    /// ends, off async threads.
    pub fn shutdown(self) {
        let _ = self.provider.force_flush();
        let _ = self.provider.shutdown();
    }
}

/// Exports every span of this process to the OTLP/gRPC `endpoint`, as
/// service `service`.
pub fn export_traces(endpoint: &str, service: &str) -> Result<Telemetry, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the OTLP exporter's runtime: {e}"))?;
    let exporter = {
        let _inside = runtime.enter();
        opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| format!("cannot export traces to {endpoint}: {e}"))?
    };
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(OwnRuntime {
            inner: exporter,
            runtime,
        })
        .with_resource(
            Resource::builder()
                .with_service_name(service.to_string())
                .build(),
        )
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    Ok(Telemetry { provider })
}

/// [`export_traces`] to `OTEL_EXPORTER_OTLP_ENDPOINT`, when it is set, as
/// `OTEL_SERVICE_NAME` or `default_service`.
pub fn export_traces_from_env(default_service: &str) -> Option<Result<Telemetry, String>> {
    let endpoint = std::env::var(ENV_ENDPOINT).ok().filter(|e| !e.is_empty())?;
    let service = std::env::var(ENV_SERVICE)
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| default_service.to_string());
    Some(export_traces(&endpoint, &service))
}

/// An exporter that drives another one on a runtime of its own (see the
/// module docs).
struct OwnRuntime<E> {
    inner: E,
    runtime: tokio::runtime::Runtime,
}

impl<E> fmt::Debug for OwnRuntime<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OwnRuntime")
    }
}

impl<E: SpanExporter> SpanExporter for OwnRuntime<E> {
    fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
        // called on the batch processor's own thread, never on a runtime's
        let result = self.runtime.block_on(self.inner.export(batch));
        std::future::ready(result)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let _inside = self.runtime.enter();
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        let _inside = self.runtime.enter();
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

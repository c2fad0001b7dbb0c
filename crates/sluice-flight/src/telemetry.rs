//! Exporting spans over OTLP/gRPC (the `otlp` feature): what the `sluice`
//! binary and the Rust stage SDK share, the W3C `traceparent` the engine
//! writes and the stages read among it.
//!
//! [`export_traces`] installs a global OpenTelemetry tracer provider whose
//! spans go, in batches, to an OTLP/gRPC endpoint (an OpenTelemetry
//! collector, Jaeger, ...). OpenTelemetry's batch processor exports from a
//! thread of its own, where tonic finds no tokio reactor; the exporter here
//! brings a small runtime of its own for that.

use std::fmt;
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
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

/// The W3C `traceparent` of `cx`'s span (`00-<trace>-<span>-<flags>`),
/// when it is a real (exported) one.
pub fn traceparent(cx: &Context) -> Option<String> {
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

/// The remote parent a `traceparent` names. A peer sends it: anything but
/// version `00` with ids and flags of exactly their lengths in lowercase
/// hex, and ids not all zero, is refused.
pub fn remote_parent(traceparent: &str) -> Option<Context> {
    let lower_hex = |s: &str, len: usize| {
        s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let mut parts = traceparent.split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00"
        || parts.next().is_some()
        || !lower_hex(trace, 32)
        || !lower_hex(span, 16)
        || !lower_hex(flags, 2)
    {
        return None;
    }
    let sc = SpanContext::new(
        TraceId::from_hex(trace).ok()?,
        SpanId::from_hex(span).ok()?,
        TraceFlags::new(u8::from_str_radix(flags, 16).ok()?),
        true,
        TraceState::default(),
    );
    sc.is_valid()
        .then(|| Context::new().with_remote_span_context(sc))
}

/// A `tracing` span naming the trace and span ids of `cx`'s span, so the
/// log lines inside it carry them (`SLUICE_LOG_FORMAT=json`); none when
/// nothing is traced.
pub fn log_span(cx: &Context) -> tracing::Span {
    let span = cx.span();
    let sc = span.span_context();
    if !sc.is_valid() {
        return tracing::Span::none();
    }
    crate::logging::span_with_trace_ids(&sc.trace_id().to_string(), &sc.span_id().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn traceparents_parse_and_bad_ones_are_refused() {
        let cx = remote_parent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let sc = cx.span().span_context().clone();
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(sc.is_remote());
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-xyz-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-001",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
        ] {
            assert!(remote_parent(bad).is_none(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn a_traceparent_is_refused_or_written_back_the_same(tp in "(00|[ -~]{0,3})-[0-9a-fA-F+]{0,33}-[0-9a-f+]{15,17}-[0-9a-f+-]{1,3}|[ -~]{0,60}") {
            if let Some(cx) = remote_parent(&tp) {
                prop_assert_eq!(traceparent(&cx), Some(tp));
            }
        }

        #[test]
        fn every_traceparent_written_is_read_back(trace in 1u128.., span in 1u64.., flags in any::<u8>()) {
            let sc = SpanContext::new(
                TraceId::from(trace),
                SpanId::from(span),
                TraceFlags::new(flags),
                true,
                TraceState::default(),
            );
            let tp = traceparent(&Context::new().with_remote_span_context(sc.clone())).unwrap();
            let back = remote_parent(&tp).unwrap();
            let read = back.span().span_context().clone();
            prop_assert_eq!(read, sc);
        }
    }
}

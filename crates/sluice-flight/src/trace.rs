//! The span of each exchange in a Rust stage: a child of the engine's
//! exchange span, whose W3C context comes in every batch's envelope
//! (`traceparent`). Spans are made and exported with the `otlp` feature
//! when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (the engine passes its own on
//! to the stages it starts); otherwise this is all no-ops.

use tonic::Status;

use crate::manifest::{Manifest, OpenRequest};

/// The exporter of this process's spans, when there is one.
pub(crate) struct Exporting(#[cfg(feature = "otlp")] Option<crate::telemetry::Telemetry>);

/// Starts exporting when the environment asks for it (service:
/// `OTEL_SERVICE_NAME`, or `<stage>-<language>`).
pub(crate) fn export_from_env(manifest: &Manifest) -> Exporting {
    #[cfg(feature = "otlp")]
    {
        let service = format!("{}-{}", manifest.name, manifest.language);
        match crate::telemetry::export_traces_from_env(&service) {
            Some(Ok(t)) => Exporting(Some(t)),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "spans are not exported");
                Exporting(None)
            }
            None => Exporting(None),
        }
    }
    #[cfg(not(feature = "otlp"))]
    {
        let _ = manifest;
        Exporting()
    }
}

/// Sends the spans not exported yet (when the stage stops).
pub(crate) fn shutdown(exporting: Exporting) {
    #[cfg(feature = "otlp")]
    if let Some(t) = exporting.0 {
        t.shutdown();
    }
    #[cfg(not(feature = "otlp"))]
    let _ = exporting;
}

/// The span of one exchange; started at the first batch that names its parent.
#[derive(Default)]
pub(crate) struct ExchangeSpan {
    /// The exchange's stage, epoch and partition, once opened (for its log).
    pub(crate) opened: Option<(String, u64, u32)>,
    #[cfg(feature = "otlp")]
    cx: Option<opentelemetry::Context>,
}

impl ExchangeSpan {
    /// Starts the span of the exchange `open` under `traceparent`, once.
    pub(crate) fn start_once(&mut self, traceparent: Option<&str>, open: &OpenRequest) {
        if self.opened.is_none() {
            self.opened = Some((open.stage.clone(), open.epoch, open.partition));
        }
        #[cfg(feature = "otlp")]
        {
            use opentelemetry::trace::{TraceContextExt, Tracer};
            if self.cx.is_some() {
                return;
            }
            let Some(parent) = traceparent.and_then(crate::telemetry::remote_parent) else {
                return;
            };
            let tracer = opentelemetry::global::tracer("sluice-stage");
            let span = tracer
                .span_builder(format!("exchange {}", open.stage))
                .with_kind(opentelemetry::trace::SpanKind::Server)
                .with_attributes([
                    opentelemetry::KeyValue::new("sluice.stage", open.stage.clone()),
                    opentelemetry::KeyValue::new("sluice.epoch", open.epoch as i64),
                    opentelemetry::KeyValue::new("sluice.partition", i64::from(open.partition)),
                ])
                .start_with_context(&tracer, &parent);
            self.cx = Some(parent.with_span(span));
        }
        #[cfg(not(feature = "otlp"))]
        let _ = (traceparent, open);
    }

    /// A `tracing` span naming the trace and span ids, so the exchange's log
    /// lines carry them; none when the exchange is not traced.
    pub(crate) fn log_span(&self) -> tracing::Span {
        #[cfg(feature = "otlp")]
        if let Some(cx) = &self.cx {
            return crate::telemetry::log_span(cx);
        }
        tracing::Span::none()
    }

    /// Ends the span, recording `error` on it.
    pub(crate) fn end(self, error: Option<&Status>) {
        #[cfg(feature = "otlp")]
        if let Some(cx) = self.cx {
            use opentelemetry::trace::TraceContextExt;
            let span = cx.span();
            if let Some(e) = error {
                span.set_status(opentelemetry::trace::Status::error(e.message().to_string()));
            }
            span.end();
        }
        #[cfg(not(feature = "otlp"))]
        let _ = error;
    }
}

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
            let Some(parent) = traceparent.and_then(parse_traceparent) else {
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
            use opentelemetry::trace::TraceContextExt;
            let span = cx.span();
            let sc = span.span_context();
            return crate::logging::span_with_trace_ids(
                &sc.trace_id().to_string(),
                &sc.span_id().to_string(),
            );
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

/// The remote parent a W3C `traceparent` (`00-<trace>-<span>-<flags>`) names.
#[cfg(feature = "otlp")]
fn parse_traceparent(tp: &str) -> Option<opentelemetry::Context> {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    let mut parts = tp.split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00" || parts.next().is_some() || trace.len() != 32 || span.len() != 16 {
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
        .then(|| opentelemetry::Context::new().with_remote_span_context(sc))
}

#[cfg(all(test, feature = "otlp"))]
mod tests {
    use super::*;
    use opentelemetry::trace::TraceContextExt;

    #[test]
    fn traceparents_parse_and_bad_ones_are_refused() {
        let cx =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
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
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
    }
}

//! Spans of a run, through the OpenTelemetry API.
//!
//! ```text
//! run ─┬─ epoch ─┬─ source read
//!      │         ├─ exchange (an external stage; its context goes to the stage as `traceparent`)
//!      │         ├─ sink write (one per sink)
//!      │         └─ commit (of the group the epoch ends)
//!      └─ epoch ...
//! ```
//!
//! Spans go through OpenTelemetry's global tracer provider. A run whose
//! `[observability]` names an OTLP endpoint installs an exporter there
//! ([`export`]), once per process, and flushes it when it ends; with none
//! installed every span is a no-op. A program that installs a provider of
//! its own gets the spans too. Contexts are passed explicitly (not through
//! thread-locals), so spans made in DataFusion's tasks find their epoch.

use std::sync::Mutex;
use std::time::SystemTime;

use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue, global};
use sluice_flight::telemetry::{Telemetry, export_traces};

use super::ObservabilityConfig;

/// The tracer's name (the instrumentation scope).
const SCOPE: &str = "sluice";

/// The exporter this process installed, and where it sends spans.
static EXPORTER: Mutex<Option<(String, Telemetry)>> = Mutex::new(None);

/// Exports this process's spans to the OTLP endpoint `config` names, if
/// any. The first endpoint a process exports to stays: a later run naming
/// another one is told so in the log.
pub(crate) fn export(config: &ObservabilityConfig) -> Result<(), String> {
    let Some(endpoint) = config.otlp_endpoint() else {
        return Ok(());
    };
    let mut exporter = EXPORTER.lock().unwrap_or_else(|p| p.into_inner());
    match &*exporter {
        Some((installed, _)) if *installed == endpoint => Ok(()),
        Some((installed, _)) => {
            tracing::warn!(
                "spans keep going to {installed}: this process already exports there, not to {endpoint}"
            );
            Ok(())
        }
        None => {
            let telemetry = export_traces(&endpoint, &config.trace_service())?;
            *exporter = Some((endpoint, telemetry));
            Ok(())
        }
    }
}

/// Sends the spans ended so far, when this process exports (at a run's end).
pub(crate) async fn flush() {
    let telemetry = EXPORTER
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .map(|(_, t)| t.clone());
    if let Some(t) = telemetry {
        // flushing waits for the exporter's thread: not on a runtime thread
        let _ = tokio::task::spawn_blocking(move || t.flush()).await;
    }
}

/// A span `name` under `parent`, started now (or at `start`).
pub(crate) fn start(
    name: &'static str,
    parent: &Context,
    attributes: Vec<KeyValue>,
    start: Option<SystemTime>,
) -> Context {
    let tracer = global::tracer(SCOPE);
    let mut builder = tracer
        .span_builder(name)
        .with_kind(SpanKind::Internal)
        .with_attributes(attributes);
    if let Some(t) = start {
        builder = builder.with_start_time(t);
    }
    let span = builder.start_with_context(&tracer, parent);
    parent.with_span(span)
}

/// Ends the span of `cx`, recording `error` on it (status and message).
pub(crate) fn end(cx: &Context, error: Option<&dyn std::error::Error>) {
    let span = cx.span();
    if let Some(e) = error {
        span.record_error(e);
        span.set_status(Status::error(e.to_string()));
    }
    span.end();
}

/// Ends the span of `cx` at `at`.
pub(crate) fn end_at(cx: &Context, at: SystemTime) {
    cx.span().end_with_timestamp(at);
}

pub(crate) use sluice_flight::telemetry::{log_span, traceparent};

/// An attribute naming a pipeline component.
pub(crate) fn component(name: &str) -> KeyValue {
    KeyValue::new("sluice.component", name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_provider_spans_are_no_ops_and_give_no_traceparent() {
        let cx = start("epoch", &Context::new(), vec![component("x")], None);
        assert_eq!(traceparent(&cx), None);
        end(&cx, None);
    }
}

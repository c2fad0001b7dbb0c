//! Event time and watermarks.
//!
//! A source with `event_time` reads its rows in order and keeps the largest
//! event time seen ([`SourceClock`]). Its watermark is that largest time
//! minus the `watermark` bound: the promise that no row older than it is
//! still to come. A row older than the watermark *when it is read* is late
//! (`late = "drop"` or `"dead_letter"`). Lateness is judged row by row in
//! the source's order, against the rows before it, so it does not depend on
//! where epochs are cut: the same input gives the same late rows whatever
//! the epoch size, and a replay gives the same ones again.
//!
//! An operator's watermark is the smallest of its sources' watermarks. A
//! source read to its end has a watermark of +∞, so every window closes at
//! the end of bounded input; a source idle for `idle_timeout` does not hold
//! the others back.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::spec::values::HumanDuration;

/// The watermark of a source read to its end: every window closes.
pub(crate) const END_OF_TIME: i64 = i64::MAX;

/// What a late row does.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Deserialize, Serialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Late {
    /// Dropped and counted.
    #[default]
    Drop,
    /// Written to the dead-letter sink with code `LATE`.
    DeadLetter,
}

/// `event_time`, `watermark`, `idle_timeout` and `late` of a source.
#[derive(Debug, Clone, PartialEq)]
pub struct EventTimeConfig {
    /// The timestamp column holding each row's event time.
    pub column: String,
    /// How far behind the largest event time seen the watermark stays.
    pub bound: Duration,
    /// How long the source may read nothing before it stops holding back
    /// the watermark of operators that also read other sources.
    pub idle_timeout: Option<Duration>,
    /// What a late row does.
    pub late: Late,
}

/// The keys as a pipeline file writes them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventTimeKeys {
    #[serde(default)]
    pub event_time: Option<String>,
    #[serde(default)]
    pub watermark: Option<HumanDuration>,
    #[serde(default)]
    pub idle_timeout: Option<HumanDuration>,
    #[serde(default)]
    pub late: Option<Late>,
}

impl EventTimeKeys {
    /// The config, or why the keys do not make one (the key at fault and the message).
    pub(crate) fn config(self) -> Result<Option<EventTimeConfig>, (&'static str, String)> {
        let Some(column) = self.event_time else {
            for (key, set) in [
                ("watermark", self.watermark.is_some()),
                ("idle_timeout", self.idle_timeout.is_some()),
                ("late", self.late.is_some()),
            ] {
                if set {
                    return Err((
                        key,
                        format!(
                            "`{key}` needs `event_time`, the timestamp column the source's rows are timed by"
                        ),
                    ));
                }
            }
            return Ok(None);
        };
        Ok(Some(EventTimeConfig {
            column,
            bound: self.watermark.map_or(Duration::ZERO, |d| d.0),
            idle_timeout: self.idle_timeout.map(|d| d.0),
            late: self.late.unwrap_or_default(),
        }))
    }
}

impl EventTimeConfig {
    /// The bound in microseconds (saturating: a bound of centuries is allowed).
    pub(crate) fn bound_us(&self) -> i64 {
        i64::try_from(self.bound.as_micros()).unwrap_or(i64::MAX)
    }
}

/// Where one source's event time stands, for one sink's plan.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceClock {
    /// The largest event time read so far, in µs since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_event_time: Option<i64>,
    /// The source was read to its end: its watermark is +∞.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ended: bool,
}

impl SourceClock {
    /// The source's watermark with `bound_us`: `None` before its first row.
    pub fn watermark(&self, bound_us: i64) -> Option<i64> {
        if self.ended {
            return Some(END_OF_TIME);
        }
        self.max_event_time.map(|m| m.saturating_sub(bound_us))
    }
}

/// What the loop tells an epoch about one event-time source.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ClockInput {
    /// The watermark bound in µs.
    pub bound_us: i64,
    /// The source read nothing for `idle_timeout`: it does not hold others back.
    pub idle: bool,
    /// The source is read to its end (this epoch has no slice of it, or its last).
    pub ended: bool,
    /// What its late rows do.
    pub late: Late,
}

/// The watermark of an operator reading `clocks` (each with its input),
/// never behind `previous`: the smallest of the sources' watermarks, leaving
/// out idle sources; `previous` when every source is idle or one has no row yet.
pub(crate) fn combine<'a>(
    clocks: impl IntoIterator<Item = (&'a SourceClock, &'a ClockInput)>,
    previous: Option<i64>,
) -> Option<i64> {
    let mut least: Option<i64> = None;
    let mut any = false;
    for (clock, input) in clocks {
        if input.idle && !clock.ended && !input.ended {
            continue;
        }
        any = true;
        let ended = SourceClock {
            ended: clock.ended || input.ended,
            ..*clock
        };
        match ended.watermark(input.bound_us) {
            // a source that has not read a row holds everything back
            None => return previous,
            Some(w) => least = Some(least.map_or(w, |l| l.min(w))),
        }
    }
    if !any {
        return previous;
    }
    match (least, previous) {
        (Some(w), Some(p)) => Some(w.max(p)),
        (w, p) => w.or(p),
    }
}

/// An event time (µs since the Unix epoch) as people read it: RFC 3339 in UTC.
pub fn format_event_time(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
        .unwrap_or_else(|| format!("{us} µs"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(bound_us: i64) -> ClockInput {
        ClockInput {
            bound_us,
            idle: false,
            ended: false,
            late: Late::Drop,
        }
    }

    fn clock(max: i64) -> SourceClock {
        SourceClock {
            max_event_time: Some(max),
            ended: false,
        }
    }

    #[test]
    fn the_watermark_is_the_least_of_the_sources_and_never_goes_back() {
        let (a, b) = (clock(100), clock(50));
        let (ia, ib) = (input(10), input(5));
        assert_eq!(combine([(&a, &ia), (&b, &ib)], None), Some(45));
        assert_eq!(combine([(&a, &ia), (&b, &ib)], Some(60)), Some(60));
    }

    #[test]
    fn an_idle_source_does_not_hold_the_others_back_unless_all_are_idle() {
        let (a, b) = (clock(100), clock(50));
        let ia = input(0);
        let ib = ClockInput {
            idle: true,
            ..input(0)
        };
        assert_eq!(combine([(&a, &ia), (&b, &ib)], None), Some(100));
        let ia_idle = ClockInput { idle: true, ..ia };
        assert_eq!(combine([(&a, &ia_idle), (&b, &ib)], Some(7)), Some(7));
    }

    #[test]
    fn an_ended_source_is_at_the_end_of_time() {
        let a = SourceClock {
            max_event_time: None,
            ended: true,
        };
        assert_eq!(combine([(&a, &input(5))], None), Some(END_OF_TIME));
        let b = clock(10);
        let ended = ClockInput {
            ended: true,
            ..input(5)
        };
        assert_eq!(combine([(&b, &ended)], None), Some(END_OF_TIME));
    }

    #[test]
    fn a_source_without_rows_holds_the_watermark() {
        let a = SourceClock::default();
        assert_eq!(combine([(&a, &input(5))], Some(3)), Some(3));
        assert_eq!(combine([(&a, &input(5))], None), None);
    }

    #[test]
    fn keys_without_event_time_are_refused() {
        let keys = EventTimeKeys {
            late: Some(Late::DeadLetter),
            ..Default::default()
        };
        assert_eq!(keys.config().unwrap_err().0, "late");
    }
}

//! The metrics of a run, in Prometheus' text exposition format (0.0.4).
//!
//! Counters and gauges are set from what the run counts (the same numbers
//! the run summary is built from, so a scrape after the last commit equals
//! the summary), histograms are observed as epochs and commits happen.
//! Every series carries `pipeline`; per-component series `component` and
//! `kind`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// Upper bounds (seconds) of the duration histograms' buckets.
const BUCKETS: [f64; 13] = [
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// A metric family: name, help text, type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: FamilyKind,
}

/// Prometheus' metric types sluice uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum FamilyKind {
    Counter,
    Gauge,
    Histogram,
}

impl FamilyKind {
    fn as_str(self) -> &'static str {
        match self {
            FamilyKind::Counter => "counter",
            FamilyKind::Gauge => "gauge",
            FamilyKind::Histogram => "histogram",
        }
    }
}

/// Label pairs of one series, in a fixed order.
pub(crate) type Labels = Vec<(&'static str, String)>;

/// Counts of observations by bucket, as Prometheus exposes them.
#[derive(Debug, Clone, Default)]
pub(crate) struct Histogram {
    /// Observations at or below each of [`BUCKETS`].
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    pub(crate) fn observe(&mut self, v: f64) {
        for (i, le) in BUCKETS.iter().enumerate() {
            if v <= *le {
                self.counts[i] += 1;
            }
        }
        self.count += 1;
        self.sum += v;
    }
}

#[derive(Debug, Default)]
struct Series {
    values: BTreeMap<(Family, Labels), f64>,
    histograms: BTreeMap<(Family, Labels), Histogram>,
}

/// The metrics of one run; see the module docs.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    series: Mutex<Series>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Series> {
        // a poisoned lock means a panic elsewhere; the numbers are still whole
        self.series.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets a counter or gauge.
    pub(crate) fn set(&self, family: Family, labels: Labels, value: f64) {
        self.lock().values.insert((family, labels), value);
    }

    /// Adds to a counter.
    pub(crate) fn add(&self, family: Family, labels: Labels, value: f64) {
        *self.lock().values.entry((family, labels)).or_insert(0.0) += value;
    }

    /// Observes one value of a histogram.
    pub(crate) fn observe(&self, family: Family, labels: Labels, value: f64) {
        self.lock()
            .histograms
            .entry((family, labels))
            .or_default()
            .observe(value);
    }

    /// Replaces a histogram by one another part keeps (an external
    /// stage's round trips).
    pub(crate) fn set_histogram(&self, family: Family, labels: Labels, h: Histogram) {
        self.lock().histograms.insert((family, labels), h);
    }

    /// The text exposition of every series.
    pub(crate) fn render(&self) -> String {
        let series = self.lock();
        let mut families: BTreeMap<Family, Vec<String>> = BTreeMap::new();
        for ((family, labels), v) in &series.values {
            families.entry(*family).or_default().push(format!(
                "{}{} {}",
                family.name,
                braces(labels, None),
                number(*v)
            ));
        }
        for ((family, labels), h) in &series.histograms {
            let lines = families.entry(*family).or_default();
            for (i, le) in BUCKETS.iter().enumerate() {
                lines.push(format!(
                    "{}_bucket{} {}",
                    family.name,
                    braces(labels, Some(&number(*le))),
                    h.counts[i]
                ));
            }
            lines.push(format!(
                "{}_bucket{} {}",
                family.name,
                braces(labels, Some("+Inf")),
                h.count
            ));
            lines.push(format!(
                "{}_sum{} {}",
                family.name,
                braces(labels, None),
                number(h.sum)
            ));
            lines.push(format!(
                "{}_count{} {}",
                family.name,
                braces(labels, None),
                h.count
            ));
        }
        let mut out = String::new();
        for (family, lines) in families {
            let _ = writeln!(out, "# HELP {} {}", family.name, family.help);
            let _ = writeln!(out, "# TYPE {} {}", family.name, family.kind.as_str());
            for l in lines {
                let _ = writeln!(out, "{l}");
            }
        }
        out
    }
}

/// `{a="x",b="y"}`, with `le` last for a bucket.
fn braces(labels: &Labels, le: Option<&str>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

/// A label value as the exposition format wants it: `\`, `"` and newlines escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A sample value: integers without a fraction, others in full.
fn number(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROWS: Family = Family {
        name: "sluice_test_rows_total",
        help: "Rows.",
        kind: FamilyKind::Counter,
    };
    const TIME: Family = Family {
        name: "sluice_test_seconds",
        help: "Time.",
        kind: FamilyKind::Histogram,
    };

    #[test]
    fn series_render_in_the_text_format_with_escaped_labels() {
        let r = Registry::default();
        r.add(ROWS, vec![("component", "a\"b\\c\nd".into())], 2.0);
        r.add(ROWS, vec![("component", "a\"b\\c\nd".into())], 3.0);
        r.observe(TIME, vec![], 0.2);
        r.observe(TIME, vec![], 7.0);
        let text = r.render();
        assert!(
            text.contains("# TYPE sluice_test_rows_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("sluice_test_rows_total{component=\"a\\\"b\\\\c\\nd\"} 5\n"),
            "{text}"
        );
        assert!(
            text.contains("sluice_test_seconds_bucket{le=\"0.25\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("sluice_test_seconds_bucket{le=\"10\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("sluice_test_seconds_bucket{le=\"+Inf\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("sluice_test_seconds_sum 7.2\n"), "{text}");
        assert!(text.contains("sluice_test_seconds_count 2\n"), "{text}");
    }
}

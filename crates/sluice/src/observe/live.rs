//! The live pipeline page (`sluice run --ui 127.0.0.1:8080`): three static
//! files served by the binary, and `/api/state`, the JSON they poll.
//!
//! The state is set where the metrics are, from the same numbers: the
//! per-component counts of committed epochs (the run summary's), the
//! commits with their epochs and source offsets, and the dead letters of
//! committed epochs. A page polls every half second and draws rows/s and
//! latency from the differences; nothing here keeps a time series.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::server::{HttpServer, Reply};
use crate::commit_log::SourceOffsets;
use crate::compile::PipelinePlan;
use crate::dead_letter::DeadLetter;
use crate::metrics::{ComponentStats, RunSummary};
use crate::spec::graph::NodeKind;

/// Commits the page lists, newest first.
const COMMITS_KEPT: usize = 50;
/// Dead letters the page lists, newest first.
const DEAD_LETTERS_KEPT: usize = 20;
/// Longest raw input shown for a dead letter; the sink has it whole.
const RAW_SHOWN: usize = 300;

const INDEX_HTML: &str = include_str!("page/index.html");
const PAGE_JS: &str = include_str!("page/page.js");
const PAGE_CSS: &str = include_str!("page/page.css");

/// What the page shows of one run; see the module docs.
#[derive(Debug)]
pub(crate) struct LivePage {
    state: Mutex<State>,
}

#[derive(Debug, Serialize)]
struct State {
    pipeline: String,
    run_id: String,
    /// `running`, `finished` or `failed`.
    status: &'static str,
    error: Option<String>,
    started_ms: u64,
    graph: Graph,
    /// The counts of committed epochs (the summary's), by component.
    components: Vec<ComponentStats>,
    /// Latency per component, milliseconds: an external stage's median
    /// batch round trip, a sink's last commit, a source's last
    /// read-to-commit time.
    latency_ms: BTreeMap<String, f64>,
    /// Files waiting in tailed folders, by source.
    backlog_files: BTreeMap<String, u64>,
    epoch_failures: u64,
    commits: VecDeque<CommitView>,
    dead_letters: VecDeque<DeadLetterView>,
    /// Dead letters of epochs written but not committed yet, by epoch (a
    /// failed epoch's are replaced when it is written again).
    #[serde(skip)]
    pending: BTreeMap<u64, Vec<DeadLetterView>>,
    /// The summary, once the run finished.
    summary: Option<RunSummary>,
}

/// The pipeline graph: sources → stages → sinks.
#[derive(Debug, Serialize)]
struct Graph {
    nodes: Vec<Node>,
    /// `[from, to]`: `to` reads `from`.
    edges: Vec<[String; 2]>,
}

#[derive(Debug, Serialize)]
struct Node {
    name: String,
    role: &'static str,
    kind: String,
    /// 0 for sources, then one more than the deepest input.
    depth: usize,
}

#[derive(Debug, Serialize)]
struct CommitView {
    first_epoch: u64,
    epoch: u64,
    at_ms: u64,
    took_ms: f64,
    /// Rows committed, by sink.
    rows: BTreeMap<String, u64>,
    /// Where each source's epochs ended (a restart resumes there).
    offsets: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Serialize)]
struct DeadLetterView {
    epoch: u64,
    component: String,
    code: String,
    message: String,
    /// `file:line`, `file@offset`, or nothing (a stage's row).
    location: Option<String>,
    raw: String,
    skipped: bool,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl LivePage {
    pub(crate) fn new(plan: &PipelinePlan, run_id: &str) -> Self {
        Self {
            state: Mutex::new(State {
                pipeline: plan.spec.id(),
                run_id: run_id.to_string(),
                status: "running",
                error: None,
                started_ms: now_ms(),
                graph: graph_of(plan),
                components: Vec::new(),
                latency_ms: BTreeMap::new(),
                backlog_files: BTreeMap::new(),
                epoch_failures: 0,
                commits: VecDeque::new(),
                dead_letters: VecDeque::new(),
                pending: BTreeMap::new(),
                summary: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The dead letters of `epoch`, just written (shown once it commits).
    pub(crate) fn epoch_written(&self, epoch: u64, letters: &[DeadLetter]) {
        let views = letters
            .iter()
            .rev()
            .take(DEAD_LETTERS_KEPT)
            .map(|d| view_of(epoch, d))
            .collect();
        self.lock().pending.insert(epoch, views);
    }

    /// Epochs `first..=last` committed; `components` are the run's counts
    /// since it started.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn committed(
        &self,
        first: u64,
        last: u64,
        took: Duration,
        latencies: &[Duration],
        rows: &BTreeMap<String, u64>,
        offsets: &BTreeMap<String, SourceOffsets>,
        components: Vec<ComponentStats>,
    ) {
        let mut st = self.lock();
        let read_to_commit = latencies.iter().max().copied().unwrap_or_default();
        for c in &components {
            let latency = match c.role.as_str() {
                "sink" => Some(ms(took)),
                "source" => Some(ms(read_to_commit)),
                _ if c.kind == "external" => Some(c.batch_latency_p50_us as f64 / 1e3),
                _ => None,
            };
            if let Some(l) = latency {
                st.latency_ms.insert(c.name.clone(), l);
            }
        }
        st.components = components;
        st.commits.push_front(CommitView {
            first_epoch: first,
            epoch: last,
            at_ms: now_ms(),
            took_ms: ms(took),
            rows: rows.clone(),
            offsets: offsets
                .iter()
                .map(|(k, o)| (k.clone(), o.end.clone()))
                .collect(),
        });
        st.commits.truncate(COMMITS_KEPT);
        let done: Vec<u64> = st.pending.range(..=last).map(|(e, _)| *e).collect();
        for e in done {
            for d in st.pending.remove(&e).unwrap_or_default() {
                st.dead_letters.push_front(d);
            }
        }
        st.dead_letters.truncate(DEAD_LETTERS_KEPT);
    }

    pub(crate) fn epoch_failed(&self) {
        self.lock().epoch_failures += 1;
    }

    pub(crate) fn backlog(&self, source: &str, files: u64) {
        self.lock().backlog_files.insert(source.to_string(), files);
    }

    /// The run ended: with its summary, or its error.
    pub(crate) fn finished(&self, result: Result<&RunSummary, String>) {
        let mut st = self.lock();
        match result {
            Ok(s) => {
                st.status = "finished";
                st.components = s.components.clone();
                st.summary = Some(s.clone());
            }
            Err(e) => {
                st.status = "failed";
                st.error = Some(e);
            }
        }
    }

    fn json(&self) -> String {
        serde_json::to_string(&*self.lock()).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// Serves the page at `addr` until the returned server is dropped.
    pub(crate) async fn serve(self: Arc<Self>, addr: &str) -> std::io::Result<HttpServer> {
        HttpServer::bind(
            addr,
            Arc::new(move |path: &str| {
                Some(match path {
                    "/" | "/index.html" => Reply::new("text/html; charset=utf-8", INDEX_HTML),
                    "/page.js" => Reply::new("text/javascript; charset=utf-8", PAGE_JS),
                    "/page.css" => Reply::new("text/css; charset=utf-8", PAGE_CSS),
                    "/api/state" => Reply::new("application/json", self.json()),
                    _ => return None,
                })
            }),
        )
        .await
    }
}

fn view_of(epoch: u64, d: &DeadLetter) -> DeadLetterView {
    let location = match (&d.file, d.line, d.offset) {
        (Some(f), Some(l), _) => Some(format!("{f}:{l}")),
        (Some(f), None, Some(o)) => Some(format!("{f}@{o}")),
        (Some(f), None, None) => Some(f.clone()),
        (None, ..) => None,
    };
    let mut raw = d.raw.clone();
    if raw.len() > RAW_SHOWN {
        let mut cut = RAW_SHOWN;
        while !raw.is_char_boundary(cut) {
            cut -= 1;
        }
        raw.truncate(cut);
        raw.push('…');
    }
    DeadLetterView {
        epoch,
        component: d.component.name().to_string(),
        code: d.code.as_str().to_string(),
        message: d.message.clone(),
        location,
        raw,
        skipped: d.skipped,
    }
}

/// The plan's graph, each node with its depth (for a left-to-right layout).
fn graph_of(plan: &PipelinePlan) -> Graph {
    let g = &plan.graph;
    let mut depth: BTreeMap<&str, usize> = BTreeMap::new();
    let mut order: Vec<&str> = g
        .kinds
        .iter()
        .filter(|(_, k)| **k == NodeKind::Source)
        .map(|(n, _)| n.as_str())
        .collect();
    order.extend(g.stage_order.iter().map(String::as_str));
    order.extend(
        g.kinds
            .iter()
            .filter(|(_, k)| **k == NodeKind::Sink)
            .map(|(n, _)| n.as_str()),
    );
    let mut nodes = Vec::new();
    let mut edges = Vec::new();
    for name in order {
        let inputs = g.inputs.get(name).map(Vec::as_slice).unwrap_or_default();
        let d = inputs
            .iter()
            .map(|i| depth.get(i.as_str()).map_or(0, |d| d + 1))
            .max()
            .unwrap_or(0);
        depth.insert(name, d);
        edges.extend(inputs.iter().map(|i| [i.clone(), name.to_string()]));
        let (role, kind) = match g.kinds.get(name) {
            Some(NodeKind::Source) => ("source", plan.sources.get(name).map(|s| s.kind.clone())),
            Some(NodeKind::Stage) => (
                "stage",
                plan.spec.stages.get(name).map(|s| s.kind().to_string()),
            ),
            _ => (
                "sink",
                plan.sinks.get(name).map(|s| s.sink.kind().to_string()),
            ),
        };
        nodes.push(Node {
            name: name.to_string(),
            role,
            kind: kind.unwrap_or_default(),
            depth: d,
        });
    }
    // the dead-letter sink reads whatever gives rows up: it stands apart
    if let Some(s) = plan.sinks.get(crate::dead_letter::SINK_NAME)
        && !g.kinds.contains_key(crate::dead_letter::SINK_NAME)
    {
        let d = depth.values().max().copied().unwrap_or(0);
        nodes.push(Node {
            name: crate::dead_letter::SINK_NAME.to_string(),
            role: "sink",
            kind: s.sink.kind().to_string(),
            depth: d,
        });
    }
    Graph { nodes, edges }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::ComponentId;

    #[test]
    fn dead_letter_views_name_their_place_and_cut_long_input_on_a_char() {
        let d = DeadLetter {
            component: ComponentId::Source("orders".into()),
            code: sluice_contract::ErrorCode::Malformed,
            message: "bad".into(),
            file: Some("a.csv".into()),
            line: Some(7),
            offset: None,
            raw: "é".repeat(RAW_SHOWN),
            skipped: false,
        };
        let v = view_of(3, &d);
        assert_eq!(v.location.as_deref(), Some("a.csv:7"));
        assert!(v.raw.ends_with('…') && v.raw.len() <= RAW_SHOWN + '…'.len_utf8());
        assert_eq!(
            (v.component.as_str(), v.code.as_str()),
            ("orders", "MALFORMED")
        );
    }
}

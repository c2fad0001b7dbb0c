//! `sluice explain`: the pipeline graph (text, DOT, Mermaid) and the physical plans.

use std::fmt::Write;

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::catalog::TableProvider;
use datafusion::physical_plan::displayable;

use crate::compile::{CompiledPipeline, SinkInput};
use crate::epoch::EpochBinding;
use crate::error::Result;
use crate::sources::SliceLimits;
use crate::spec::graph::NodeKind;

/// How to draw the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphFormat {
    /// Indented text.
    Text,
    /// Graphviz DOT.
    Dot,
    /// Mermaid flowchart.
    Mermaid,
}

impl std::str::FromStr for GraphFormat {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "text" => Ok(GraphFormat::Text),
            "dot" => Ok(GraphFormat::Dot),
            "mermaid" => Ok(GraphFormat::Mermaid),
            o => Err(format!(
                "unknown graph format `{o}`; use text, dot or mermaid"
            )),
        }
    }
}

impl CompiledPipeline {
    fn kind_of(&self, name: &str) -> String {
        let plan = &self.plan;
        if let Some(s) = plan.sources.get(name) {
            s.kind.clone()
        } else if let Some(s) = plan.spec.stages.get(name) {
            s.kind().to_string()
        } else if let Some(s) = plan.spec.sinks.get(name) {
            s.kind_name().to_string()
        } else {
            String::new()
        }
    }

    fn nodes_in_order(&self) -> Vec<(String, NodeKind)> {
        let mut out: Vec<(String, NodeKind)> = self
            .plan
            .spec
            .sources
            .keys()
            .map(|n| (n.clone(), NodeKind::Source))
            .collect();
        out.extend(
            self.plan
                .graph
                .stage_order
                .iter()
                .map(|n| (n.clone(), NodeKind::Stage)),
        );
        out.extend(
            self.plan
                .spec
                .sinks
                .keys()
                .map(|n| (n.clone(), NodeKind::Sink)),
        );
        out
    }

    /// The pipeline graph.
    pub fn graph_text(&self, format: GraphFormat) -> String {
        let mut s = String::new();
        let nodes = self.nodes_in_order();
        let inputs = |n: &str| self.plan.graph.inputs.get(n).cloned().unwrap_or_default();
        match format {
            GraphFormat::Text => {
                let _ = writeln!(s, "pipeline {}", self.plan.spec.id());
                for (name, kind) in &nodes {
                    let role = match kind {
                        NodeKind::Source => "source",
                        NodeKind::Stage => "stage ",
                        NodeKind::Sink => "sink  ",
                    };
                    let _ = write!(s, "  {role} {name} ({})", self.kind_of(name));
                    let ins = inputs(name);
                    if !ins.is_empty() {
                        let _ = write!(s, " <- {}", ins.join(", "));
                    }
                    if let Some(url) = self
                        .plan
                        .spec
                        .sinks
                        .get(name)
                        .and_then(|_| self.plan.sinks.get(name))
                        .map(|s| s.sink.url())
                    {
                        let _ = write!(s, " -> {url}");
                    }
                    let _ = writeln!(s);
                }
            }
            GraphFormat::Dot => {
                let _ = writeln!(s, "digraph \"{}\" {{\n  rankdir=LR;", self.plan.spec.id());
                for (name, kind) in &nodes {
                    let shape = match kind {
                        NodeKind::Source => "cylinder",
                        NodeKind::Stage => "box",
                        NodeKind::Sink => "folder",
                    };
                    let _ = writeln!(
                        s,
                        "  \"{name}\" [shape={shape}, label=\"{name}\\n{}\"];",
                        self.kind_of(name)
                    );
                }
                for (name, _) in &nodes {
                    for i in inputs(name) {
                        let _ = writeln!(s, "  \"{i}\" -> \"{name}\";");
                    }
                }
                let _ = writeln!(s, "}}");
            }
            GraphFormat::Mermaid => {
                let _ = writeln!(s, "flowchart LR");
                for (name, kind) in &nodes {
                    let label = format!("{name}<br/>{}", self.kind_of(name));
                    let _ = match kind {
                        NodeKind::Source => writeln!(s, "  {name}[(\"{label}\")]"),
                        NodeKind::Stage => writeln!(s, "  {name}[\"{label}\"]"),
                        NodeKind::Sink => writeln!(s, "  {name}[/\"{label}\"/]"),
                    };
                }
                for (name, _) in &nodes {
                    for i in inputs(name) {
                        let _ = writeln!(s, "  {i} --> {name}");
                    }
                }
            }
        }
        s
    }

    /// The optimized physical plan of every sink, planned against the first
    /// slice of every source (nothing is read or committed).
    pub async fn physical_plans(&mut self) -> Result<Vec<(String, String)>> {
        let mut slices: BTreeMap<String, Arc<dyn TableProvider>> = BTreeMap::new();
        for (name, src) in self.sources.iter_mut() {
            if let Some(s) = src
                .next_slice_json(&SliceLimits::default())
                .await
                .map_err(|e| e.in_source(name))?
            {
                slices.insert(name.clone(), s.table);
            }
        }
        let binding = Arc::new(EpochBinding::new(0, slices, opentelemetry::Context::new()));
        let state = binding.bind(&self.plan.session.state());
        let mut out = Vec::new();
        for (name, sink) in &self.plan.sinks {
            if !matches!(sink.input, SinkInput::Plan(_)) {
                continue;
            }
            let plan = self.plan.physical_plan(sink, &state).await?;
            out.push((
                name.clone(),
                displayable(plan.as_ref()).indent(true).to_string(),
            ));
        }
        Ok(out)
    }
}

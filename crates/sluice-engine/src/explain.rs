//! `sluice explain`: the pipeline graph (text, DOT, Mermaid) and the physical plans.

use std::fmt::Write;

use datafusion::physical_plan::displayable;

use crate::compile::CompiledPipeline;
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
        if let Some(s) = self.sources.get(name) {
            s.source.kind().to_string()
        } else if let Some(s) = self.spec.stages.get(name) {
            s.kind().to_string()
        } else if let Some(s) = self.spec.sinks.get(name) {
            s.kind().to_string()
        } else {
            String::new()
        }
    }

    fn nodes_in_order(&self) -> Vec<(String, NodeKind)> {
        let mut out: Vec<(String, NodeKind)> = self
            .spec
            .sources
            .keys()
            .map(|n| (n.clone(), NodeKind::Source))
            .collect();
        out.extend(
            self.graph
                .stage_order
                .iter()
                .map(|n| (n.clone(), NodeKind::Stage)),
        );
        out.extend(self.spec.sinks.keys().map(|n| (n.clone(), NodeKind::Sink)));
        out
    }

    /// The pipeline graph.
    pub fn graph_text(&self, format: GraphFormat) -> String {
        let mut s = String::new();
        let nodes = self.nodes_in_order();
        let inputs = |n: &str| self.graph.inputs.get(n).cloned().unwrap_or_default();
        match format {
            GraphFormat::Text => {
                let _ = writeln!(s, "pipeline {}", self.spec.id());
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
                        .spec
                        .sinks
                        .get(name)
                        .and_then(|c| self.sinks.get(name).map(|s| (c, s)))
                        .map(|(_, s)| s.sink.url())
                    {
                        let _ = write!(s, " -> {url}");
                    }
                    let _ = writeln!(s);
                }
            }
            GraphFormat::Dot => {
                let _ = writeln!(s, "digraph \"{}\" {{\n  rankdir=LR;", self.spec.id());
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
        for (name, src) in self.sources.iter_mut() {
            let slice = src.source.next_slice(&SliceLimits::default()).await?;
            let table: std::sync::Arc<dyn datafusion::catalog::TableProvider> = match slice {
                Some(s) => s.table,
                None => std::sync::Arc::new(datafusion::datasource::empty::EmptyTable::new(
                    src.source.schema(),
                )),
            };
            let _ = name;
            src.table.set_slice(table);
        }
        let mut out = Vec::new();
        for name in self.sinks.keys() {
            let plan = self.physical_plan(name).await?;
            out.push((
                name.clone(),
                displayable(plan.as_ref()).indent(true).to_string(),
            ));
        }
        Ok(out)
    }
}

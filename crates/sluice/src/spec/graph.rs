//! The pipeline graph: who reads whom, checked for dangling inputs, cycles and
//! components nobody consumes, and put in topological order.

use std::collections::{BTreeMap, BTreeSet};

use super::PipelineSpec;
use crate::error::SpecIssue;

/// What a node of the graph is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum NodeKind {
    /// A source.
    Source,
    /// A stage.
    Stage,
    /// A sink.
    Sink,
}

/// The checked graph of a pipeline.
#[derive(Debug, Clone)]
pub(crate) struct Graph {
    /// Stages in an order where every stage comes after its inputs.
    pub stage_order: Vec<String>,
    /// For each node, the nodes it reads.
    pub inputs: BTreeMap<String, Vec<String>>,
    /// Kind of each node.
    pub kinds: BTreeMap<String, NodeKind>,
}

impl Graph {
    /// Checks the graph of `spec`, returning every problem found.
    pub(crate) fn check(spec: &PipelineSpec) -> Result<Graph, Vec<SpecIssue>> {
        let mut issues = Vec::new();
        let mut kinds = BTreeMap::new();
        for name in spec.sources.keys() {
            kinds.insert(name.clone(), NodeKind::Source);
        }
        for name in spec.stages.keys() {
            if kinds.contains_key(name) {
                issues.push(
                    spec.issue(format!("stages.{name}"), format!("`{name}` is already the name of a source"))
                        .with_help("sources and stages share one namespace because SQL refers to both by name; rename one"),
                );
            }
            kinds.insert(name.clone(), NodeKind::Stage);
        }
        for (section, names) in [
            ("sources", spec.sources.keys().collect::<Vec<_>>()),
            ("stages", spec.stages.keys().collect()),
        ] {
            for name in names {
                if !is_identifier(name) {
                    issues.push(
                        spec.issue(format!("{section}.{name}"), format!("`{name}` is not a plain SQL name"))
                            .with_help("use lowercase letters, digits and `_`, starting with a letter, so SQL can refer to it unquoted"),
                    );
                }
            }
        }
        if spec.sinks.is_empty() {
            issues.push(
                spec.issue(
                    "sinks",
                    "the pipeline has no sink, so it would compute nothing",
                )
                .with_help("add a [sinks.<name>] table with `input = \"<stage>\"`"),
            );
        }

        let mut inputs: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, stage) in &spec.stages {
            let key = format!("stages.{name}.inputs");
            let ins = stage.inputs();
            if ins.is_empty() {
                issues.push(
                    spec.issue(&key, "a stage needs at least one input")
                        .with_help(
                            "list the sources or stages it reads, e.g. `inputs = [\"orders\"]`",
                        ),
                );
            }
            for i in ins {
                if i == name {
                    issues
                        .push(spec.issue(&key, format!("stage `{name}` lists itself as an input")));
                } else if !kinds.contains_key(i) {
                    issues.push(unknown_input(spec, &key, i, name, &kinds));
                }
            }
            inputs.insert(name.clone(), ins.to_vec());
        }
        for (name, sink) in &spec.sinks {
            if let Some(kind) = kinds.get(name) {
                let what = if *kind == NodeKind::Source {
                    "source"
                } else {
                    "stage"
                };
                issues.push(
                    spec.issue(format!("sinks.{name}"), format!("`{name}` is already the name of a {what}"))
                        .with_help("every source, stage and sink needs its own name; e.g. call the sink `{name}_out`".replace("{name}", name)),
                );
                continue;
            }
            let key = format!("sinks.{name}.input");
            let input = sink.input.as_str();
            if !kinds.contains_key(input) {
                issues.push(unknown_input(spec, &key, input, name, &kinds));
            }
            inputs.insert(name.clone(), vec![input.to_string()]);
            kinds.entry(name.clone()).or_insert(NodeKind::Sink);
        }

        // every source and stage must feed something
        let consumed: BTreeSet<&String> = inputs.values().flatten().collect();
        for (name, kind) in &kinds {
            let section = match kind {
                NodeKind::Source => "sources",
                NodeKind::Stage => "stages",
                NodeKind::Sink => continue,
            };
            if !consumed.contains(name) {
                issues.push(
                    spec.issue(
                        format!("{section}.{name}"),
                        format!("`{name}` has no consumer: no stage or sink reads it"),
                    )
                    .with_help(format!(
                        "add `{name}` to a stage's `inputs` or a sink's `input`, or remove it"
                    )),
                );
            }
        }

        let stage_order = match topo_order(spec, &inputs) {
            Ok(order) => order,
            Err(cycle) => {
                let first = cycle.first().cloned().unwrap_or_default();
                issues.push(
                    spec.issue(
                        format!("stages.{first}.inputs"),
                        format!("stages form a cycle: {}", cycle.join(" → ")),
                    )
                    .with_help(
                        "a pipeline is a DAG; break the cycle by removing one of these inputs",
                    ),
                );
                Vec::new()
            }
        };
        if issues.is_empty() {
            Ok(Graph {
                stage_order,
                inputs,
                kinds,
            })
        } else {
            Err(issues)
        }
    }

    /// Every node `name` depends on (transitively), in topological order,
    /// sources first, not including `name` itself.
    pub(crate) fn ancestors(&self, name: &str) -> Vec<String> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![name.to_string()];
        while let Some(n) = stack.pop() {
            for i in self.inputs.get(&n).into_iter().flatten() {
                if seen.insert(i.clone()) {
                    stack.push(i.clone());
                }
            }
        }
        let mut out: Vec<String> = self
            .kinds
            .iter()
            .filter(|(n, k)| **k == NodeKind::Source && seen.contains(*n))
            .map(|(n, _)| n.clone())
            .collect();
        out.extend(
            self.stage_order
                .iter()
                .filter(|s| seen.contains(*s))
                .cloned(),
        );
        out
    }

    /// The sources `name` reads, directly or through stages.
    pub(crate) fn sources_of(&self, name: &str) -> Vec<String> {
        self.ancestors(name)
            .into_iter()
            .filter(|n| self.kinds.get(n) == Some(&NodeKind::Source))
            .collect()
    }
}

fn unknown_input(
    spec: &PipelineSpec,
    key: &str,
    input: &str,
    reader: &str,
    kinds: &BTreeMap<String, NodeKind>,
) -> SpecIssue {
    let known: Vec<&str> = kinds
        .iter()
        .filter(|(n, k)| **k != NodeKind::Sink && n.as_str() != reader)
        .map(|(n, _)| n.as_str())
        .collect();
    spec.issue(key, format!("unknown input `{input}`"))
        .with_help(if known.is_empty() {
            "declare it as a [sources.<name>] or [stages.<name>] table".to_string()
        } else {
            format!(
                "inputs must name a source or stage; known: {}",
                known.join(", ")
            )
        })
}

/// Stages in dependency order, or the names along a cycle.
fn topo_order(
    spec: &PipelineSpec,
    inputs: &BTreeMap<String, Vec<String>>,
) -> Result<Vec<String>, Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    fn visit(
        n: &str,
        spec: &PipelineSpec,
        inputs: &BTreeMap<String, Vec<String>>,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
        order: &mut Vec<String>,
    ) -> Result<(), Vec<String>> {
        match marks.get(n) {
            Some(Mark::Done) => return Ok(()),
            Some(Mark::Visiting) => {
                let start = path.iter().position(|p| p == n).unwrap_or(0);
                let mut cycle = path[start..].to_vec();
                cycle.push(n.to_string());
                return Err(cycle);
            }
            None => {}
        }
        marks.insert(n.to_string(), Mark::Visiting);
        path.push(n.to_string());
        for i in inputs.get(n).into_iter().flatten() {
            if spec.stages.contains_key(i) {
                visit(i, spec, inputs, marks, path, order)?;
            }
        }
        path.pop();
        marks.insert(n.to_string(), Mark::Done);
        order.push(n.to_string());
        Ok(())
    }
    let mut marks = BTreeMap::new();
    let mut order = Vec::new();
    for name in spec.stages.keys() {
        visit(name, spec, inputs, &mut marks, &mut Vec::new(), &mut order)?;
    }
    Ok(order)
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn check(text: &str) -> Result<Graph, String> {
        let spec = PipelineSpec::from_toml(text, Path::new("p.toml"), Path::new("."))
            .map_err(|e| e.to_string())?;
        Graph::check(&spec).map_err(|issues| {
            issues
                .iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        })
    }

    const HEAD: &str = "[pipeline]\nname = \"t\"\n[sources.src]\nkind = \"tpch\"\n";

    #[test]
    fn orders_stages_after_their_inputs() {
        let g = check(&format!(
            "{HEAD}[stages.b]\nkind = \"sql\"\ninputs = [\"a\"]\nquery = \"select * from a\"\n\
             [stages.a]\nkind = \"sql\"\ninputs = [\"src\"]\nquery = \"select * from src\"\n\
             [sinks.out]\nkind = \"stdout\"\ninput = \"b\"\n"
        ))
        .unwrap();
        assert_eq!(g.stage_order, vec!["a", "b"]);
        assert_eq!(g.ancestors("out"), vec!["src", "a", "b"]);
        assert_eq!(g.sources_of("out"), vec!["src"]);
    }

    #[test]
    fn reports_cycles_unknown_inputs_and_unconsumed_nodes() {
        let err = check(&format!(
            "{HEAD}[stages.a]\nkind = \"sql\"\ninputs = [\"b\", \"src\"]\nquery = \"select 1\"\n\
             [stages.b]\nkind = \"sql\"\ninputs = [\"a\"]\nquery = \"select 1\"\n\
             [stages.lonely]\nkind = \"sql\"\ninputs = [\"nowhere\"]\nquery = \"select 1\"\n\
             [sinks.out]\nkind = \"stdout\"\ninput = \"a\"\n"
        ))
        .unwrap_err();
        assert!(err.contains("stages form a cycle: a → b → a"), "{err}");
        assert!(
            err.contains("`stages.lonely.inputs`: unknown input `nowhere`"),
            "{err}"
        );
        assert!(err.contains("`lonely` has no consumer"), "{err}");
    }

    #[test]
    fn refuses_a_pipeline_without_sinks_and_bad_names() {
        let err = check("[pipeline]\nname = \"t\"\n[sources.Src]\nkind = \"tpch\"\n").unwrap_err();
        assert!(err.contains("has no sink"), "{err}");
        assert!(err.contains("`Src` is not a plain SQL name"), "{err}");
    }
}

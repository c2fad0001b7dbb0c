//! The `tpch` source: TPC-H tables generated in-process by `tpchgen-arrow`.
//!
//! The table is cut into generator *parts* (deterministic row ranges); a slice
//! is a run of consecutive parts, its offset the next part to generate, so an
//! epoch can be re-generated exactly after a crash.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sluice_contract::SourceProvenance;

use super::{AnySource, Slice, SliceLimits, Source, SourceContext};
use crate::error::{Result, SluiceError};
use crate::ops::generate::GeneratedTable;
use crate::ops::tpch_scan::{TpchGenerator, TpchTable};

/// `[sources.<name>] kind = "tpch"`: a TPC-H table generated in-process.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TpchSourceConfig {
    /// Table to generate: lineitem, orders, customer, part, partsupp, supplier, nation, region.
    #[serde(default = "default_table")]
    pub table: TpchTable,
    /// TPC-H scale factor (1 = about 6 million lineitem rows).
    #[serde(default = "default_scale")]
    pub scale_factor: f64,
    /// Generator parts the table is cut into (default: about one per million
    /// rows, at least one per partition). Epoch limits cut at part borders.
    #[serde(default)]
    pub parts: Option<usize>,
}

fn default_table() -> TpchTable {
    TpchTable::Lineitem
}

fn default_scale() -> f64 {
    1.0
}

/// Opens a `tpch` source.
pub(super) fn open(cfg: &TpchSourceConfig, ctx: &SourceContext<'_>) -> Result<Box<dyn AnySource>> {
    if !(cfg.scale_factor > 0.0 && cfg.scale_factor.is_finite()) {
        return Err(SluiceError::spec(
            ctx.spec
                .issue(
                    format!("sources.{}.scale_factor", ctx.name),
                    format!("scale factor must be positive, got {}", cfg.scale_factor),
                )
                .with_help("use e.g. 0.01 for a quick run, 1 for about 6 million lineitem rows"),
        ));
    }
    let total_rows = cfg.table.estimated_rows(cfg.scale_factor);
    let parts = if cfg.table.is_partitionable() {
        cfg.parts
            .unwrap_or_else(|| ((total_rows / 1_000_000) as usize).max(ctx.target_partitions))
            .max(1)
    } else {
        1
    };
    if parts > i32::MAX as usize {
        return Err(SluiceError::spec(ctx.spec.issue(
            format!("sources.{}.parts", ctx.name),
            format!("at most {} parts, got {parts}", i32::MAX),
        )));
    }
    Ok(Box::new(TpchSource {
        name: ctx.name.to_string(),
        table: cfg.table,
        scale_factor: cfg.scale_factor,
        parts,
        next_part: 1,
        target_partitions: ctx.target_partitions,
        batch_size: ctx.batch_size,
    }))
}

#[derive(Debug)]
struct TpchSource {
    name: String,
    table: TpchTable,
    scale_factor: f64,
    parts: usize,
    /// 1-based, as tpchgen numbers parts.
    next_part: usize,
    target_partitions: usize,
    batch_size: usize,
}

impl TpchSource {
    fn rows_per_part(&self) -> u64 {
        (self.table.estimated_rows(self.scale_factor) / self.parts as u64).max(1)
    }

    fn generator(&self) -> Arc<dyn crate::ops::generate::BatchGenerator> {
        Arc::new(TpchGenerator::new(
            self.table,
            self.scale_factor,
            self.parts,
            self.batch_size,
        ))
    }

    fn offsets(&self, next_part: usize) -> TpchOffset {
        TpchOffset {
            next_part: next_part as u64,
            parts: self.parts as u64,
            scale_factor: self.scale_factor,
        }
    }

    /// Checks `at` was made with this source's data set.
    fn same_data_set(&self, at: &TpchOffset) -> Result<()> {
        if at.parts as usize == self.parts && at.scale_factor == self.scale_factor {
            if at.next_part == 0 || at.next_part > at.parts + 1 {
                return Err(SluiceError::Source {
                    source_name: self.name.clone(),
                    file: None,
                    line: None,
                    message: format!(
                        "the committed offsets name part {} of {}; parts are numbered 1..={}",
                        at.next_part, at.parts, at.parts
                    ),
                    retry: crate::error::RetryHint::Never,
                    cause: None,
                });
            }
            return Ok(());
        }
        Err(SluiceError::Source {
            source_name: self.name.clone(),
            file: None,
            line: None,
            message: format!(
                "the committed output was generated with scale_factor={} in {} parts, but the pipeline now says scale_factor={} in {} parts; resuming would mix two data sets",
                at.scale_factor, at.parts, self.scale_factor, self.parts
            ),
            retry: crate::error::RetryHint::Never,
            cause: None,
        })
    }
}

/// A TPC-H source's position: the next part, of how many, at which scale.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TpchOffset {
    /// The next part to generate (1-based, as tpchgen numbers parts).
    pub next_part: u64,
    /// The parts the table is cut into.
    pub parts: u64,
    /// The scale factor.
    pub scale_factor: f64,
}

#[async_trait]
impl Source for TpchSource {
    type Offset = TpchOffset;

    fn kind(&self) -> &str {
        "tpch"
    }

    fn schema(&self) -> SchemaRef {
        self.table.schema()
    }

    fn provenance(&self) -> SourceProvenance {
        let mut parameters = serde_json::Map::new();
        parameters.insert("generator".into(), json!("tpchgen-arrow 4"));
        parameters.insert("table".into(), json!(self.table.name()));
        parameters.insert("scale_factor".into(), json!(self.scale_factor));
        parameters.insert("parts".into(), json!(self.parts));
        SourceProvenance {
            source: self.name.clone(),
            kind: "tpch".into(),
            uris: vec![format!(
                "tpch://{}?scale_factor={}",
                self.table.name(),
                self.scale_factor
            )],
            parameters,
            upstream: None,
        }
    }

    async fn restart(&mut self) -> Result<()> {
        self.next_part = 1;
        Ok(())
    }

    async fn resume(&mut self, at: &TpchOffset) -> Result<()> {
        self.same_data_set(at)?;
        self.next_part = at.next_part as usize;
        Ok(())
    }

    async fn next_slice(&mut self, limits: &SliceLimits) -> Result<Option<Slice<TpchOffset>>> {
        if self.next_part > self.parts {
            return Ok(None);
        }
        let remaining = self.parts + 1 - self.next_part;
        let take = match limits.max_rows {
            Some(max) => ((max / self.rows_per_part()) as usize).clamp(1, remaining),
            None => remaining,
        };
        let first = self.next_part;
        let last = first + take - 1;
        let start = self.offsets(first);
        self.next_part = last + 1;
        let table = GeneratedTable::new(
            self.generator(),
            (first as u64..=last as u64).collect(),
            self.target_partitions,
        );
        Ok(Some(Slice {
            table: Arc::new(table),
            start,
            end: self.offsets(self.next_part),
            estimated_rows: Some(self.rows_per_part() * take as u64),
            uris: vec![format!(
                "tpch://{}?scale_factor={}&parts={first}..={last}",
                self.table.name(),
                self.scale_factor
            )],
        }))
    }

    async fn replay(&mut self, start: &TpchOffset, end: &TpchOffset) -> Result<Slice<TpchOffset>> {
        self.same_data_set(start)?;
        self.same_data_set(end)?;
        let (first, next) = (start.next_part as usize, end.next_part as usize);
        if first > next {
            return Err(SluiceError::Source {
                source_name: self.name.clone(),
                file: None,
                line: None,
                message: format!(
                    "the committed offsets run backwards (parts {first}..{next}); the commit log was edited"
                ),
                retry: crate::error::RetryHint::Never,
                cause: None,
            });
        }
        let table = GeneratedTable::new(
            self.generator(),
            (first as u64..next as u64).collect(),
            self.target_partitions,
        );
        self.next_part = next;
        Ok(Slice {
            table: Arc::new(table),
            start: start.clone(),
            end: end.clone(),
            estimated_rows: Some(self.rows_per_part() * (next - first) as u64),
            uris: vec![format!(
                "tpch://{}?scale_factor={}&parts={first}..{next}",
                self.table.name(),
                self.scale_factor
            )],
        })
    }

    fn estimated_remaining_rows(&self) -> Option<u64> {
        Some(self.rows_per_part() * (self.parts + 1).saturating_sub(self.next_part) as u64)
    }
}

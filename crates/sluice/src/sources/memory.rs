//! `MemorySource`: record batches held in memory, for embedding and tests.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::datasource::MemTable;
use serde::{Deserialize, Serialize};
use sluice_contract::SourceProvenance;

use super::{AnySource, Slice, SliceLimits, Source, SourceContext, SourceFactory};
use crate::error::{Result, SluiceError};
use crate::metrics::ComponentId;

/// A bounded source over batches in memory, cut into slices of
/// `[settings.epoch] max_rows` rows (one slice without it).
#[derive(Debug, Clone)]
pub struct MemorySource {
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
    name: String,
    /// The next row to hand out.
    next: u64,
}

impl MemorySource {
    /// A source over `batches`, which must all have `schema`.
    pub fn try_new(schema: SchemaRef, batches: Vec<RecordBatch>) -> Result<Self> {
        if let Some((i, b)) = batches
            .iter()
            .enumerate()
            .find(|(_, b)| b.schema().fields() != schema.fields())
        {
            let columns = |s: &SchemaRef| {
                s.fields()
                    .iter()
                    .map(|f| format!("{} {}", f.name(), f.data_type()))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(SluiceError::spec(crate::error::SpecIssue::new(
                crate::spec::IN_CODE,
                "MemorySource",
                format!(
                    "batch {i} has the columns ({}), the source declares ({})",
                    columns(&b.schema()),
                    columns(&schema)
                ),
            )));
        }
        Ok(Self {
            schema,
            batches,
            name: String::new(),
            next: 0,
        })
    }
}

/// A memory source's position: rows handed out so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryOffset {
    /// Rows `0..rows` (in batch order) were read.
    pub rows: u64,
}

#[async_trait]
impl SourceFactory for MemorySource {
    async fn open(&self, ctx: &SourceContext<'_>) -> Result<Box<dyn AnySource>> {
        let mut s = self.clone();
        s.name = ctx.name.to_string();
        Ok(Box::new(s))
    }
}

impl MemorySource {
    fn total(&self) -> u64 {
        self.batches.iter().map(|b| b.num_rows() as u64).sum()
    }

    /// Rows `from..to` (in batch order), zero-copy slices of the batches.
    fn rows(&self, from: u64, to: u64) -> Vec<RecordBatch> {
        let mut out = Vec::new();
        let mut at = 0u64;
        for b in &self.batches {
            let n = b.num_rows() as u64;
            let (lo, hi) = (from.max(at), to.min(at + n));
            if lo < hi {
                out.push(b.slice((lo - at) as usize, (hi - lo) as usize));
            }
            at += n;
        }
        out
    }

    fn slice(&self, from: u64, to: u64) -> Result<Slice<MemoryOffset>> {
        let table = MemTable::try_new(Arc::clone(&self.schema), vec![self.rows(from, to)])
            .map_err(|e| {
                SluiceError::from_datafusion(e, Some(ComponentId::Source(self.name.clone())))
            })?;
        Ok(Slice {
            table: Arc::new(table),
            start: MemoryOffset { rows: from },
            end: MemoryOffset { rows: to },
            estimated_rows: Some(to - from),
            uris: vec![format!("memory-batches://{}?rows={from}..{to}", self.name)],
        })
    }

    fn check(&self, at: &MemoryOffset) -> Result<u64> {
        if at.rows <= self.total() {
            return Ok(at.rows);
        }
        Err(SluiceError::Source {
            source_name: self.name.clone(),
            file: None,
            line: None,
            message: format!(
                "the committed offset (row {}) is past the {} rows this source holds; the commit log belongs to another pipeline",
                at.rows,
                self.total()
            ),
            retry: crate::error::RetryHint::Never,
            cause: None,
        })
    }
}

#[async_trait]
impl Source for MemorySource {
    type Offset = MemoryOffset;

    fn kind(&self) -> &str {
        "memory"
    }

    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn provenance(&self) -> SourceProvenance {
        SourceProvenance {
            source: self.name.clone(),
            kind: "memory".into(),
            uris: vec![format!("memory-batches://{}", self.name)],
            parameters: Default::default(),
            upstream: None,
        }
    }

    async fn restart(&mut self) -> Result<()> {
        self.next = 0;
        Ok(())
    }

    async fn resume(&mut self, at: &MemoryOffset) -> Result<()> {
        self.next = self.check(at)?;
        Ok(())
    }

    async fn replay(
        &mut self,
        start: &MemoryOffset,
        end: &MemoryOffset,
    ) -> Result<Slice<MemoryOffset>> {
        let (from, to) = (self.check(start)?, self.check(end)?);
        self.next = to;
        self.slice(from, to.max(from))
    }

    async fn next_slice(&mut self, limits: &SliceLimits) -> Result<Option<Slice<MemoryOffset>>> {
        let total = self.total();
        if self.next >= total {
            return Ok(None);
        }
        let from = self.next;
        let to = limits
            .max_rows
            .map_or(total, |m| from.saturating_add(m.max(1)).min(total));
        self.next = to;
        self.slice(from, to).map(Some)
    }

    fn estimated_remaining_rows(&self) -> Option<u64> {
        Some(self.total().saturating_sub(self.next))
    }
}

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

/// A bounded source over batches in memory; read as one slice.
#[derive(Debug, Clone)]
pub struct MemorySource {
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
    name: String,
    done: bool,
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
            done: false,
        })
    }
}

/// A memory source's position: whether its one slice was handed out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryOffset {
    /// The batches were read.
    pub done: bool,
}

#[async_trait]
impl SourceFactory for MemorySource {
    async fn open(&self, ctx: &SourceContext<'_>) -> Result<Box<dyn AnySource>> {
        let mut s = self.clone();
        s.name = ctx.name.to_string();
        Ok(Box::new(s))
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
        self.done = false;
        Ok(())
    }

    async fn resume(&mut self, at: &MemoryOffset) -> Result<()> {
        self.done = at.done;
        Ok(())
    }

    async fn replay(
        &mut self,
        _start: &MemoryOffset,
        _end: &MemoryOffset,
    ) -> Result<Slice<MemoryOffset>> {
        self.done = false;
        self.next_slice(&SliceLimits::default())
            .await?
            .ok_or_else(|| SluiceError::Internal("memory source has nothing to replay".into()))
    }

    async fn next_slice(&mut self, _limits: &SliceLimits) -> Result<Option<Slice<MemoryOffset>>> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        let rows = self.batches.iter().map(|b| b.num_rows() as u64).sum();
        let table = MemTable::try_new(Arc::clone(&self.schema), vec![self.batches.clone()])
            .map_err(|e| {
                SluiceError::from_datafusion(e, Some(ComponentId::Source(self.name.clone())))
            })?;
        Ok(Some(Slice {
            table: Arc::new(table),
            start: MemoryOffset { done: false },
            end: MemoryOffset { done: true },
            estimated_rows: Some(rows),
            uris: vec![],
        }))
    }
}

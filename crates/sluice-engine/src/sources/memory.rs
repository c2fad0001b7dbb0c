//! `MemorySource`: record batches held in memory, for embedding and tests.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::datasource::MemTable;
use serde_json::json;
use sluice_contract::SourceProvenance;

use super::{Slice, SliceLimits, Source, SourceContext, SourceFactory};
use crate::error::{Result, SluiceError};

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
        if let Some(b) = batches
            .iter()
            .find(|b| b.schema().fields() != schema.fields())
        {
            return Err(SluiceError::Internal(format!(
                "MemorySource batch schema {:?} differs from the declared schema {:?}",
                b.schema(),
                schema
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

#[async_trait]
impl SourceFactory for MemorySource {
    async fn open(&self, ctx: &SourceContext<'_>) -> Result<Box<dyn Source>> {
        let mut s = self.clone();
        s.name = ctx.name.to_string();
        Ok(Box::new(s))
    }
}

#[async_trait]
impl Source for MemorySource {
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

    async fn resume(&mut self, offsets: &serde_json::Value) -> Result<()> {
        self.done = offsets
            .get("done")
            .and_then(|d| d.as_bool())
            .unwrap_or(false);
        Ok(())
    }

    async fn replay(
        &mut self,
        _start: &serde_json::Value,
        _end: &serde_json::Value,
    ) -> Result<Slice> {
        self.done = false;
        self.next_slice(&SliceLimits::default())
            .await?
            .ok_or_else(|| SluiceError::Internal("memory source has nothing to replay".into()))
    }

    async fn next_slice(&mut self, _limits: &SliceLimits) -> Result<Option<Slice>> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        let rows = self.batches.iter().map(|b| b.num_rows() as u64).sum();
        let table = MemTable::try_new(Arc::clone(&self.schema), vec![self.batches.clone()])
            .map_err(|e| SluiceError::from_datafusion(e, Some(&self.name)))?;
        Ok(Some(Slice {
            table: Arc::new(table),
            start: json!({ "done": false }),
            end: json!({ "done": true }),
            estimated_rows: Some(rows),
            uris: vec![],
        }))
    }
}

//! Runs the `.slt` files of `tests/slt/` against a sluice session (a unit
//! test: it plans stage borders the way [`super::stages`] does).
//!
//! Besides plain SQL, the files may declare pipeline stages:
//! `CREATE STAGE <name> AS <query>` plans the query the way an SQL stage is
//! planned (a stage border node, registered as a view), so the files check
//! what chaining stages means: results, and that borders do not block pushdown.

use std::path::PathBuf;
use std::sync::Arc;

use crate::ops::stage::StageNode;
use crate::{Engine, PipelineSpec};
use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::datasource::ViewTable;
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;
use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType};

struct SluiceDb {
    ctx: SessionContext,
}

fn rows(batches: &[RecordBatch]) -> Result<Vec<Vec<String>>, DataFusionError> {
    let options = FormatOptions::default().with_null("NULL");
    let mut out = Vec::new();
    for b in batches {
        let fmts: Vec<ArrayFormatter> = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<_, _>>()?;
        for r in 0..b.num_rows() {
            out.push(fmts.iter().map(|f| f.value(r).to_string()).collect());
        }
    }
    Ok(out)
}

#[async_trait]
impl AsyncDB for SluiceDb {
    type Error = DataFusionError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, DataFusionError> {
        let trimmed = sql.trim();
        if let Some(rest) = trimmed.strip_prefix("CREATE STAGE ") {
            let (name, query) = rest.split_once(" AS ").ok_or_else(|| {
                DataFusionError::Plan("write CREATE STAGE <name> AS <query>".into())
            })?;
            let plan = self.ctx.state().create_logical_plan(query).await?;
            let staged = StageNode::wrap(name.trim(), "sql", plan);
            self.ctx.register_table(
                name.trim(),
                Arc::new(ViewTable::new(staged, Some(query.to_string()))),
            )?;
            return Ok(DBOutput::StatementComplete(0));
        }
        let df = self.ctx.sql(trimmed).await?;
        let width = df.schema().fields().len();
        let batches = df.collect().await?;
        let is_query = trimmed.to_ascii_uppercase().starts_with("SELECT")
            || trimmed.to_ascii_uppercase().starts_with("WITH")
            || trimmed.to_ascii_uppercase().starts_with("EXPLAIN")
            || trimmed.to_ascii_uppercase().starts_with("VALUES");
        if !is_query {
            return Ok(DBOutput::StatementComplete(0));
        }
        Ok(DBOutput::Rows {
            types: vec![DefaultColumnType::Any; width],
            rows: rows(&batches)?,
        })
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "sluice"
    }

    async fn sleep(dur: std::time::Duration) {
        tokio::time::sleep(dur).await;
    }
}

#[tokio::test]
async fn sql_semantics_slt_files() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/slt");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.retain(|p| p.extension().is_some_and(|e| e == "slt"));
    files.sort();
    assert!(!files.is_empty());
    for file in files {
        let mut runner = sqllogictest::Runner::new(|| async {
            let mut spec = PipelineSpec::new("slt", "1");
            spec.settings.target_partitions = Some(2);
            let ctx = super::session::session_for(&Engine::new(), &spec);
            Ok(SluiceDb { ctx })
        });
        if let Err(e) = runner.run_file_async(&file).await {
            panic!("{}: {e}", file.display());
        }
    }
}

//! `kind = "delta"`: one version of a Delta table (the newest, or `version`),
//! read whole in one epoch through delta-rs's DataFusion scan, so filters
//! and projections reach the files and partition columns prune them.
//!
//! When a sluice `delta` sink wrote the table, the lineage and provenance
//! of its newest sluice commit carry on into this pipeline's output.

use serde::{Deserialize, Serialize};

#[cfg(feature = "delta")]
pub(crate) use reader::open;

#[cfg(not(feature = "delta"))]
pub(crate) async fn open(
    _: &DeltaSourceConfig,
    ctx: &super::SourceContext<'_>,
) -> crate::error::Result<Box<dyn super::AnySource>> {
    Err(crate::error::SluiceError::spec(ctx.spec.issue(
        format!("sources.{}.kind", ctx.name),
        "sluice was built without its `delta` feature (on by default)",
    )))
}

/// `[sources.<name>] kind = "delta"`: a Delta table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeltaSourceConfig {
    /// The table's folder or URL (`out/events`, `s3://bucket/events`).
    pub url: String,
    /// The table version to read (default: the newest when the run starts).
    #[serde(default)]
    pub version: Option<u64>,
}

/// A delta source's position: the table version read, once it was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeltaOffset {
    /// `None` before the read; then the version read.
    pub version: Option<u64>,
}

#[cfg(feature = "delta")]
mod reader {
    use std::sync::Arc;

    use async_trait::async_trait;
    use datafusion::arrow::datatypes::SchemaRef;
    use datafusion::catalog::TableProvider;
    use sluice_contract::{LineageEntry, Provenance, SourceProvenance};

    use super::super::{AnySource, Slice, SliceLimits, Source, SourceContext};
    use super::{DeltaOffset, DeltaSourceConfig};
    use crate::error::{Result, RetryHint, SluiceError};
    use crate::sinks::delta::{Table, sluice_commit};
    use crate::storage::Location;

    /// A source reading one version of a Delta table; see the module docs.
    pub(crate) struct DeltaSource {
        name: String,
        table: Table,
        version: u64,
        provider: Arc<dyn TableProvider>,
        upstream_lineage: Vec<LineageEntry>,
        upstream_provenance: Option<Provenance>,
        read: bool,
    }

    impl std::fmt::Debug for DeltaSource {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "DeltaSource({}@{})", self.name, self.version)
        }
    }

    /// Opens a `delta` source.
    pub(crate) async fn open(
        cfg: &DeltaSourceConfig,
        ctx: &SourceContext<'_>,
    ) -> Result<Box<dyn AnySource>> {
        let name = ctx.name.to_string();
        let issue = |m: String| SluiceError::spec(ctx.spec.issue(format!("sources.{name}.url"), m));
        let location = Location::parse(&cfg.url, &ctx.spec.base_dir).map_err(issue)?;
        let store = ctx
            .stores
            .store_for(&location, &ctx.spec.settings.s3)
            .map_err(issue)?;
        let mut table = Table::new(&location, store).map_err(issue)?;
        let fail = |what: &str, e: deltalake_core::DeltaTableError| {
            let retry = crate::error::retry_hint_of(&e);
            SluiceError::Source {
                source_name: name.clone(),
                file: Some(location.url()),
                line: None,
                message: format!("{what}: {e}"),
                retry,
                cause: Some(crate::error::Cause::new(e)),
            }
        };
        let exists = table
            .refresh()
            .await
            .map_err(|e| fail("cannot read the table's log", e))?;
        if !exists {
            return Err(SluiceError::Source {
                source_name: name.clone(),
                file: Some(location.url()),
                line: None,
                message: "no Delta table here (no _delta_log/)".into(),
                retry: RetryHint::Never,
                cause: None,
            });
        }
        let (upstream_lineage, upstream_provenance) = upstream(&table, &name, &location).await?;
        let version = cfg
            .version
            .unwrap_or_else(|| table.table.version().unwrap_or_default());
        let provider = scan(&mut table, version)
            .await
            .map_err(|(message, retry)| SluiceError::Source {
                source_name: name.clone(),
                file: Some(location.url()),
                line: None,
                message,
                retry,
                cause: None,
            })?;
        let source = DeltaSource {
            name,
            version,
            provider,
            table,
            upstream_lineage,
            upstream_provenance,
            read: false,
        };
        Ok(Box::new(source))
    }

    /// Version `version` of the table's log, and the scan of it; an error
    /// says what failed and whether trying again may help.
    async fn scan(
        table: &mut Table,
        version: u64,
    ) -> std::result::Result<Arc<dyn TableProvider>, (String, RetryHint)> {
        fn failed(
            what: &str,
            version: u64,
            e: &(dyn std::error::Error + 'static),
        ) -> (String, RetryHint) {
            (
                format!("cannot {what} version {version} of the table: {e}"),
                crate::error::retry_hint_of(e),
            )
        }
        if table.table.version() != Some(version) {
            table
                .table
                .load_version(version)
                .await
                .map_err(|e| failed("read", version, &e))?;
        }
        table
            .table
            .table_provider()
            .await
            .map_err(|e| failed("scan", version, &e))
    }

    /// The lineage and provenance of the newest sluice commit in the table's
    /// history, when a sluice sink wrote it.
    async fn upstream(
        table: &Table,
        name: &str,
        location: &Location,
    ) -> Result<(Vec<LineageEntry>, Option<Provenance>)> {
        let history = table
            .history(Some(crate::sinks::delta::HISTORY_DEPTH))
            .await
            .map_err(|e| SluiceError::Source {
                source_name: name.to_string(),
                file: Some(location.url()),
                line: None,
                message: format!("cannot read the table's history: {e}"),
                retry: RetryHint::WithBackoff,
                cause: None,
            })?;
        for info in &history {
            match sluice_commit(info) {
                Some(Ok(c)) => return Ok((c.lineage, Some(c.provenance))),
                Some(Err(m)) => {
                    return Err(SluiceError::Source {
                        source_name: name.to_string(),
                        file: Some(location.url()),
                        line: None,
                        message: m,
                        retry: RetryHint::Never,
                        cause: None,
                    });
                }
                None => {}
            }
        }
        Ok((Vec::new(), None))
    }

    impl DeltaSource {
        fn err(&self, message: String, retry: RetryHint) -> SluiceError {
            SluiceError::Source {
                source_name: self.name.clone(),
                file: Some(self.table.location.url()),
                line: None,
                message,
                retry,
                cause: None,
            }
        }

        /// Reads version `version` of the log and makes its scan.
        async fn load(&mut self, version: u64) -> Result<()> {
            self.provider = scan(&mut self.table, version)
                .await
                .map_err(|(message, retry)| self.err(message, retry))?;
            self.version = version;
            Ok(())
        }

        fn slice(&self) -> Slice<DeltaOffset> {
            Slice {
                table: Arc::clone(&self.provider),
                start: DeltaOffset { version: None },
                end: DeltaOffset {
                    version: Some(self.version),
                },
                estimated_rows: None,
                uris: vec![format!(
                    "{}#version={}",
                    self.table.location.url(),
                    self.version
                )],
            }
        }
    }

    #[async_trait]
    impl Source for DeltaSource {
        type Offset = DeltaOffset;

        fn kind(&self) -> &str {
            "delta"
        }

        fn schema(&self) -> SchemaRef {
            self.provider.schema()
        }

        fn provenance(&self) -> SourceProvenance {
            let mut parameters = serde_json::Map::new();
            parameters.insert("version".into(), self.version.into());
            SourceProvenance {
                source: self.name.clone(),
                kind: "delta".into(),
                uris: vec![self.table.location.url()],
                parameters,
                upstream: self.upstream_provenance.clone().map(Box::new),
            }
        }

        fn upstream_lineage(&self) -> Vec<LineageEntry> {
            self.upstream_lineage.clone()
        }

        async fn restart(&mut self) -> Result<()> {
            self.read = false;
            Ok(())
        }

        async fn resume(&mut self, at: &DeltaOffset) -> Result<()> {
            self.read = at.version.is_some();
            Ok(())
        }

        async fn replay(
            &mut self,
            _start: &DeltaOffset,
            end: &DeltaOffset,
        ) -> Result<Slice<DeltaOffset>> {
            let Some(version) = end.version else {
                return Err(self.err(
                    "the commit to replay read no version of the table".into(),
                    RetryHint::Never,
                ));
            };
            self.load(version).await?;
            self.read = true;
            Ok(self.slice())
        }

        async fn next_slice(
            &mut self,
            _limits: &SliceLimits,
        ) -> Result<Option<Slice<DeltaOffset>>> {
            if self.read {
                return Ok(None);
            }
            self.read = true;
            Ok(Some(self.slice()))
        }
    }
}

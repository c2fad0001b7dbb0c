//! The flags file: the rollout choice of each stage, changed without a
//! restart.
//!
//! `sluice rollout set` (and the guard, when it rolls back) write it; the
//! engine reads it at every epoch boundary. It lives beside the commit log
//! of the pipeline's first file sink (`<sink>/_sluice/rollout.json`), or
//! where `[settings] rollout_flags` says; the run's status
//! (`rollout-status.json`) is written beside it after every commit.
//!
//! ```json
//! {"format": 1, "stages": {"enriched": {"mode": "canary", "variant": "rust",
//!   "percent": 25.0, "set_by": "cli", "set_at": "2026-12-02T11:00:00Z"}}}
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use super::config::{Choice, Mode, StageRollout};
use crate::spec::PipelineSpec;
use crate::storage::{Location, StoreRegistry};

/// Version of the flags file format.
pub(crate) const FLAGS_FORMAT: u32 = 1;

/// One stage's entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flag {
    /// The mode.
    pub mode: Mode,
    /// The variant.
    pub variant: String,
    /// Canary share, 0 to 100; without it, the pipeline file's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// `cli` or `guard`.
    #[serde(default)]
    pub set_by: String,
    /// When (RFC 3339).
    #[serde(default)]
    pub set_at: String,
    /// Why (a guard's rollback says which threshold broke).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Flag {
    /// The choice this entry makes for the stage rolled out as `r`.
    pub fn choice(&self, r: &StageRollout) -> Choice {
        Choice {
            mode: self.mode,
            variant: self.variant.clone(),
            percent: self.percent.unwrap_or(r.config.percent),
        }
    }
}

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flags {
    /// [`FLAGS_FORMAT`].
    pub format: u32,
    /// Entries by stage.
    #[serde(default)]
    pub stages: BTreeMap<String, Flag>,
}

/// Where a pipeline's flags (and rollout status) are.
#[derive(Debug, Clone)]
pub(crate) struct FlagsFile {
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
    status: ObjectPath,
    /// The flags file's URL, for messages.
    pub url: String,
}

impl FlagsFile {
    /// The flags file of `spec`: `[settings] rollout_flags`, else beside the
    /// commit log of its first file sink. `None` when neither exists.
    pub(crate) fn of(spec: &PipelineSpec, stores: &StoreRegistry) -> Result<Option<Self>, String> {
        let url = match &spec.settings.rollout_flags {
            Some(u) => u.clone(),
            None => {
                let Some(sink) = spec.sinks.values().find_map(|s| s.files()) else {
                    return Ok(None);
                };
                format!("{}/_sluice/rollout.json", sink.url.trim_end_matches('/'))
            }
        };
        let loc = Location::parse(&url, &spec.base_dir)?;
        let store = stores.store_for(&loc, &spec.settings.s3)?;
        let path = loc.prefix.clone();
        let name = path.filename().unwrap_or("rollout.json");
        let status_name = "rollout-status.json";
        let status = match path.as_ref().strip_suffix(name) {
            Some(dir) if !dir.is_empty() => ObjectPath::from(format!("{}{status_name}", dir)),
            _ => ObjectPath::from(status_name),
        };
        Ok(Some(Self {
            store,
            url: loc.url(),
            path,
            status,
        }))
    }

    /// The flags, or `None` when no file exists yet. A file that is not
    /// valid flags is an error naming it.
    pub(crate) async fn read(&self) -> Result<Option<Flags>, String> {
        let bytes = match self.store.get(&self.path).await {
            Ok(r) => r
                .bytes()
                .await
                .map_err(|e| format!("cannot read {}: {e}", self.url))?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(format!("cannot read {}: {e}", self.url)),
        };
        let flags: Flags = serde_json::from_slice(&bytes).map_err(|e| {
            format!(
                "{} line {}: not a rollout flags file: {e}",
                self.url,
                e.line()
            )
        })?;
        if flags.format != FLAGS_FORMAT {
            return Err(format!(
                "{}: flags format {} is not the {FLAGS_FORMAT} this sluice reads",
                self.url, flags.format
            ));
        }
        Ok(Some(flags))
    }

    /// Replaces the file (atomically on every store: one put).
    pub(crate) async fn write(&self, flags: &Flags) -> Result<(), String> {
        let text = serde_json::to_vec_pretty(flags).map_err(|e| e.to_string())?;
        self.store
            .put(&self.path, PutPayload::from(text))
            .await
            .map(|_| ())
            .map_err(|e| format!("cannot write {}: {e}", self.url))
    }

    /// Writes the run's rollout status beside the flags.
    pub(crate) async fn write_status(&self, status: &serde_json::Value) -> Result<(), String> {
        let text = serde_json::to_vec_pretty(status).map_err(|e| e.to_string())?;
        self.store
            .put(&self.status, PutPayload::from(text))
            .await
            .map(|_| ())
            .map_err(|e| format!("cannot write the rollout status beside {}: {e}", self.url))
    }

    /// The last status a run wrote, if any.
    pub(crate) async fn read_status(&self) -> Result<Option<serde_json::Value>, String> {
        match self.store.get(&self.status).await {
            Ok(r) => {
                let bytes = r.bytes().await.map_err(|e| e.to_string())?;
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| format!("the rollout status beside {} is corrupt: {e}", self.url))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(format!(
                "cannot read the rollout status beside {}: {e}",
                self.url
            )),
        }
    }
}

/// Now, as flags and status files write it.
pub(crate) fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_flag_without_a_percent_keeps_the_pipeline_files() {
        let r = StageRollout {
            variants: BTreeMap::new(),
            config: super::super::config::RolloutConfig {
                percent: 25.0,
                ..Default::default()
            },
            splittable: true,
        };
        let f: Flag = serde_json::from_str(r#"{"mode": "canary", "variant": "v2"}"#).unwrap();
        assert_eq!(f.choice(&r).percent, 25.0);
        let f: Flag =
            serde_json::from_str(r#"{"mode": "canary", "variant": "v2", "percent": 5}"#).unwrap();
        assert_eq!(f.choice(&r).percent, 5.0);
    }

    proptest! {
        /// Whatever bytes a flags file holds, reading it gives flags or an
        /// error naming the file, never a panic.
        #[test]
        fn any_bytes_read_without_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300), prefix in 0usize..3) {
            let heads: [&[u8]; 3] = [b"", br#"{"format":1,"stages":{"s":{"mode":""#, br#"{"format":1,"stages":"#];
            let mut data = heads[prefix].to_vec();
            data.extend(bytes);
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
            let f = FlagsFile { store: Arc::clone(&store), path: ObjectPath::from("f/rollout.json"), status: ObjectPath::from("f/rollout-status.json"), url: "memory:///f/rollout.json".into() };
            let r = rt.block_on(async {
                store.put(&f.path, PutPayload::from(data)).await.unwrap();
                f.read().await
            });
            if let Err(e) = r {
                prop_assert!(e.contains("memory:///f/rollout.json"), "{}", e);
            }
        }
    }
}

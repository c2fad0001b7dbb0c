//! [`StateStore`]: operator snapshots beside a sink's commit log.
//!
//! Each snapshot is one Arrow IPC file,
//! `_sluice/state/<operator>/<epoch>-<run>.arrow`, named by the commit that
//! wrote it and the run, so two runs never write the same name. A commit
//! names the files it covers ([`super::StateCommit`]); any other file under
//! `_sluice/state/` is either superseded (an older commit's) or debris of a
//! run that died before its commit, and is deleted.

use std::collections::BTreeSet;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::Schema;
use datafusion::arrow::ipc::reader::FileReader;
use datafusion::arrow::ipc::writer::FileWriter;
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use super::{OperatorState, StateRef};
use crate::error::{Result, RetryHint, SluiceError};

/// Folder (under a sink's root) of the state snapshots.
pub(crate) const STATE_DIR: &str = "_sluice/state";

/// Where one sink keeps its operators' state; see the module docs.
#[derive(Debug, Clone)]
pub struct StateStore {
    sink: String,
    url: String,
    store: Arc<dyn ObjectStore>,
    /// The sink's root in the store.
    root: ObjectPath,
}

impl StateStore {
    /// The state of sink `sink` (whose root is `root` in `store`, shown as
    /// `url` in messages).
    pub fn new(sink: &str, url: &str, store: Arc<dyn ObjectStore>, root: ObjectPath) -> Self {
        Self {
            sink: sink.to_string(),
            url: url.trim_end_matches('/').to_string(),
            store,
            root,
        }
    }

    fn path(&self, relative: &str) -> ObjectPath {
        let mut p = self.root.clone();
        for part in relative.split('/').filter(|s| !s.is_empty()) {
            p = p.join(part);
        }
        p
    }

    fn err(
        &self,
        what: String,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> SluiceError {
        SluiceError::sink_failed(&self.sink, self.url.clone(), &what, cause)
    }

    /// Writes `state` of `operator` as the snapshot of commit `epoch` made by
    /// run `run_id`; returns its reference for the commit.
    pub async fn write(
        &self,
        operator: &str,
        epoch: u64,
        run_id: &str,
        state: &OperatorState,
    ) -> Result<StateRef> {
        let relative = format!("{STATE_DIR}/{operator}/{epoch:020}-{run_id}.arrow");
        let schema = state
            .batches
            .first()
            .map(|b| b.schema())
            .unwrap_or_else(|| Arc::new(Schema::empty()));
        let what = || format!("write the state of `{operator}` to {}/{relative}", self.url);
        let mut w = FileWriter::try_new(Vec::new(), &schema).map_err(|e| self.err(what(), e))?;
        for b in &state.batches {
            w.write(b).map_err(|e| self.err(what(), e))?;
        }
        w.finish().map_err(|e| self.err(what(), e))?;
        let bytes = w.into_inner().map_err(|e| self.err(what(), e))?;
        let size = bytes.len() as u64;
        let crc32 = crc32fast::hash(&bytes);
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        self.store
            .put_opts(&self.path(&relative), PutPayload::from(bytes), opts)
            .await
            .map_err(|e| self.err(what(), e))?;
        Ok(StateRef {
            path: relative,
            epoch,
            rows: state.rows(),
            bytes: size,
            memory_bytes: state.memory_bytes(),
            crc32: Some(crc32),
            watermark: state.watermark,
        })
    }

    /// Reads the snapshot `r` names.
    pub async fn read(&self, r: &StateRef) -> Result<OperatorState> {
        let what = || format!("read the state snapshot {}/{}", self.url, r.path);
        if !r.path.starts_with(STATE_DIR) || r.path.split('/').any(|p| p == "..") {
            return Err(SluiceError::Sink {
                sink: self.sink.clone(),
                url: self.url.clone(),
                message: format!(
                    "{}: the commit names a state file outside {STATE_DIR}/; the commit log was edited",
                    what()
                ),
                retry: RetryHint::Never,
                cause: None,
            });
        }
        let bytes = self
            .store
            .get(&self.path(&r.path))
            .await
            .map_err(|e| self.err(what(), e))?
            .bytes()
            .await
            .map_err(|e| self.err(what(), e))?;
        let corrupt = |message: String| SluiceError::Sink {
            sink: self.sink.clone(),
            url: self.url.clone(),
            message: format!("{}: the snapshot is corrupt: {message}", what()),
            retry: RetryHint::Never,
            cause: None,
        };
        if let Some(want) = r.crc32 {
            let have = crc32fast::hash(&bytes);
            if have != want {
                return Err(corrupt(format!(
                    "its CRC-32 is {have:08x}, the commit recorded {want:08x}: the file changed after it was committed"
                )));
            }
        }
        let batches = decode(bytes).map_err(corrupt)?;
        let state = OperatorState {
            batches,
            watermark: r.watermark,
        };
        if state.rows() != r.rows {
            return Err(corrupt(format!(
                "it holds {} rows, the commit says {}",
                state.rows(),
                r.rows
            )));
        }
        Ok(state)
    }

    /// Every snapshot file under `_sluice/state/`, relative to the root.
    async fn list(&self) -> Result<Vec<String>> {
        let dir = self.path(STATE_DIR);
        let metas: Vec<_> = self
            .store
            .list(Some(&dir))
            .try_collect()
            .await
            .map_err(|e| self.err(format!("list {}/{STATE_DIR}", self.url), e))?;
        Ok(metas
            .into_iter()
            .map(|m| crate::storage::relative_to(&m.location, &self.root).to_string())
            .collect())
    }

    /// Deletes `paths` (relative to the root); a file already gone is fine.
    pub(crate) async fn delete(&self, paths: impl IntoIterator<Item = &String>) -> Result<u64> {
        let mut n = 0;
        for p in paths {
            match self.store.delete(&self.path(p)).await {
                Ok(()) => n += 1,
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.err(format!("delete {}/{p}", self.url), e)),
            }
        }
        Ok(n)
    }

    /// Deletes every snapshot `keep` does not name (superseded ones, and
    /// debris of runs that died before their commit). Returns their paths.
    pub(crate) async fn remove_unreferenced(&self, keep: &BTreeSet<String>) -> Result<Vec<String>> {
        let gone: Vec<String> = self
            .list()
            .await?
            .into_iter()
            .filter(|p| !keep.contains(p))
            .collect();
        self.delete(&gone).await?;
        Ok(gone)
    }

    /// Deletes every snapshot (`--reset`). Returns how many.
    pub(crate) async fn reset(&self) -> Result<u64> {
        let all = self.list().await?;
        self.delete(&all).await
    }
}

/// The batches of an Arrow IPC file. Decoded under `catch_unwind`: the
/// arrow-ipc crate panics on some corrupt files (see
/// `sources/file/footer.rs`), and a snapshot is input the engine did not
/// check when it wrote it.
fn decode(bytes: bytes::Bytes) -> std::result::Result<Vec<RecordBatch>, String> {
    let decoded = std::panic::catch_unwind(move || {
        FileReader::try_new(std::io::Cursor::new(bytes), None)?
            .collect::<std::result::Result<Vec<_>, _>>()
    });
    match decoded {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(panic) => Err(format!(
            "the Arrow IPC reader gave up on it ({})",
            sluice_flight::panic_message(panic.as_ref())
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field};
    use object_store::memory::InMemory;
    use proptest::strategy::Strategy;

    fn store() -> StateStore {
        StateStore::new(
            "out",
            "memory:///out",
            Arc::new(InMemory::new()),
            ObjectPath::from("out"),
        )
    }

    fn state(values: &[i64]) -> OperatorState {
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(values.to_vec()))])
            .unwrap();
        OperatorState {
            batches: vec![batch],
            watermark: Some(7),
        }
    }

    #[tokio::test]
    async fn a_snapshot_reads_back_as_written() -> Result<()> {
        let s = store();
        let r = s.write("w", 3, "0123abcd", &state(&[1, 2, 3])).await?;
        assert_eq!(
            r.path,
            "_sluice/state/w/00000000000000000003-0123abcd.arrow"
        );
        assert_eq!((r.rows, r.watermark), (3, Some(7)));
        let back = s.read(&r).await?;
        assert_eq!(back.batches, state(&[1, 2, 3]).batches);
        assert_eq!(back.watermark, Some(7));
        let empty = s
            .write("w", 4, "0123abcd", &OperatorState::default())
            .await?;
        assert!(s.read(&empty).await?.is_empty());
        Ok(())
    }

    #[tokio::test]
    async fn unreferenced_snapshots_are_removed() -> Result<()> {
        let s = store();
        let old = s.write("w", 1, "aaaaaaaa", &state(&[1])).await?;
        let kept = s.write("w", 2, "aaaaaaaa", &state(&[2])).await?;
        let keep = BTreeSet::from([kept.path.clone()]);
        assert_eq!(s.remove_unreferenced(&keep).await?, vec![old.path.clone()]);
        assert!(s.read(&old).await.is_err());
        assert_eq!(s.read(&kept).await?.rows(), 1);
        Ok(())
    }

    #[tokio::test]
    async fn a_reference_outside_the_state_folder_or_with_wrong_rows_is_refused() -> Result<()> {
        let s = store();
        let mut r = s.write("w", 1, "aaaaaaaa", &state(&[1, 2])).await?;
        r.rows = 5;
        let e = s.read(&r).await.unwrap_err().to_string();
        assert!(e.contains("holds 2 rows, the commit says 5"), "{e}");
        r.path = "_sluice/state/../../etc/passwd".into();
        let e = s.read(&r).await.unwrap_err().to_string();
        assert!(e.contains("outside"), "{e}");
        Ok(())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// A commit whose `state` section was edited (any path, counts,
        /// checksum or watermark) restores the rows written or is refused;
        /// it never panics and never restores other rows.
        #[test]
        fn an_edited_state_reference_restores_the_rows_written_or_is_refused(
            path in proptest::prop_oneof![
                proptest::strategy::Just(None),
                proptest::strategy::Just(Some("_sluice/state/w/../../x.arrow".to_string())),
                proptest::strategy::Just(Some("/etc/passwd".to_string())),
                proptest::strategy::Just(Some("_sluice/state/w/missing.arrow".to_string())),
                "[a-z_/.]{0,40}".prop_map(Some),
            ],
            rows in proptest::option::of(proptest::num::u64::ANY),
            crc in proptest::option::of(proptest::option::of(proptest::num::u32::ANY)),
            watermark in proptest::option::of(proptest::option::of(proptest::num::i64::ANY)),
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            runtime.block_on(async {
                let s = store();
                let written = state(&[4, 5, 6]);
                let good = s.write("w", 1, "aaaaaaaa", &written).await.unwrap();
                let mut r = good.clone();
                if let Some(p) = &path { r.path = p.clone(); }
                if let Some(n) = rows { r.rows = n; }
                if let Some(c) = crc { r.crc32 = c; }
                if let Some(w) = watermark { r.watermark = w; }
                // what a commit file carries goes through JSON and back
                let json = serde_json::to_string(&r).unwrap();
                let r: StateRef = serde_json::from_str(&json).unwrap();
                match s.read(&r).await {
                    Ok(back) => {
                        assert_eq!(back.batches, written.batches);
                        assert_eq!(r.path, good.path);
                        assert_eq!(r.rows, good.rows);
                    }
                    Err(e) => assert!(!e.to_string().is_empty()),
                }
            });
        }

        /// A snapshot with bytes flipped, cut short or grown is read back as
        /// the exact rows it held or refused with an error, never a panic
        /// and never a changed value.
        #[test]
        fn a_damaged_snapshot_is_read_whole_or_refused(
            values in proptest::collection::vec(proptest::num::i64::ANY, 0..50),
            flips in proptest::collection::vec((proptest::num::usize::ANY, 1u8..=255), 0..4),
            cut in proptest::option::of(proptest::num::usize::ANY),
            tail in proptest::collection::vec(proptest::num::u8::ANY, 0..16),
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            runtime.block_on(async {
                let s = store();
                let written = state(&values);
                let r = s.write("w", 1, "aaaaaaaa", &written).await.unwrap();
                let path = s.path(&r.path);
                let mut bytes = s.store.get(&path).await.unwrap().bytes().await.unwrap().to_vec();
                for (at, x) in &flips {
                    let n = bytes.len();
                    bytes[at % n] ^= x;
                }
                if let Some(c) = cut {
                    bytes.truncate(c % (bytes.len() + 1));
                }
                bytes.extend_from_slice(&tail);
                s.store.put(&path, bytes.into()).await.unwrap();
                if let Ok(back) = s.read(&r).await {
                    // the commit's CRC-32 lets no changed byte through:
                    // what is read is exactly what was written
                    assert_eq!(back.batches, written.batches);
                }
            });
        }
    }
}

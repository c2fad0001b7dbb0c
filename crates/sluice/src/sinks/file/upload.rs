//! Uploads of a file sink's files, and what a crash mid-upload leaves.
//!
//! On a store with multipart uploads (S3), a file larger than one part goes
//! up in parts, and the upload's id is recorded beside the sink
//! (`_sluice/uploads/<file>.json`) before the first part is sent. A process
//! killed mid-upload leaves an incomplete upload, which S3 keeps (and
//! bills) until someone aborts it: [`abort_left_uploads`], run by recovery,
//! aborts every upload a record names. A file of one part is a single PUT,
//! which a crash cannot leave half done.
//!
//! Other stores use object_store's `BufWriter`; on local disk its uploads
//! are staged as `<file>#<n>`, which recovery deletes too
//! ([`crate::commit_log`]).

use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use futures::future::BoxFuture;
use object_store::buffered::BufWriter;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as ObjectPath;
use object_store::{MultipartId, ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::task::JoinSet;

use crate::epoch::failpoint::{Failpoint, Point};
use crate::error::Cause;
use crate::storage::{Location, relative_to};

/// Folder (under a sink's root) of the records of uploads under way.
pub(crate) const UPLOADS_DIR: &str = "_sluice/uploads";

/// A part's size: S3 wants at least 5 MiB for all parts but the last.
const PART_SIZE: usize = 10 << 20;

/// Parts sent at once.
const PARTS_IN_FLIGHT: usize = 4;

/// What recovery needs to abort an upload.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UploadRecord {
    /// The object being uploaded.
    path: String,
    /// The store's id of the multipart upload.
    upload_id: String,
}

/// One file's upload; see the module docs.
pub(crate) enum Upload {
    /// object_store's buffered writer (stores without tracked multipart uploads).
    Buffered(Box<BufWriter>),
    /// An upload whose multipart id is recorded before its first part.
    Tracked(Box<TrackedUpload>),
}

impl Upload {
    /// An upload of `path` under the sink at `root`.
    pub(crate) fn new(
        store: Arc<dyn ObjectStore>,
        multipart: Option<Arc<dyn MultipartStore>>,
        root: &Location,
        path: ObjectPath,
    ) -> Self {
        match multipart {
            None => Upload::Buffered(Box::new(BufWriter::new(store, path))),
            Some(multipart) => {
                let rel = relative_to(&path, &root.prefix).to_string();
                Upload::Tracked(Box::new(TrackedUpload {
                    record: root.child(&format!("{UPLOADS_DIR}/{rel}.json")),
                    store,
                    multipart,
                    path,
                    buffer: Vec::new(),
                    id: None,
                    parts: Vec::new(),
                    sending: JoinSet::new(),
                    failpoint: Failpoint::from_env(),
                }))
            }
        }
    }

    /// Appends bytes.
    pub(crate) async fn put(&mut self, bytes: Bytes) -> Result<(), Cause> {
        match self {
            Upload::Buffered(w) => w.put(bytes).await.map_err(Cause::new),
            Upload::Tracked(t) => t.put(bytes).await,
        }
    }

    /// Completes the object.
    pub(crate) async fn finish(&mut self) -> Result<(), Cause> {
        match self {
            Upload::Buffered(w) => w.shutdown().await.map_err(Cause::new),
            Upload::Tracked(t) => t.finish().await,
        }
    }

    /// Gives the object up: nothing of it stays on the store.
    pub(crate) async fn abort(&mut self) {
        match self {
            Upload::Buffered(w) => {
                let _ = w.abort().await;
            }
            Upload::Tracked(t) => t.abort().await,
        }
    }
}

/// The Parquet writer writes through an [`Upload`].
impl parquet::arrow::async_writer::AsyncFileWriter for Upload {
    fn write(&mut self, bs: Bytes) -> BoxFuture<'_, parquet::errors::Result<()>> {
        Box::pin(async move {
            self.put(bs)
                .await
                .map_err(|e| parquet::errors::ParquetError::External(Box::new(e)))
        })
    }

    fn complete(&mut self) -> BoxFuture<'_, parquet::errors::Result<()>> {
        Box::pin(async move {
            self.finish()
                .await
                .map_err(|e| parquet::errors::ParquetError::External(Box::new(e)))
        })
    }
}

/// A multipart upload recorded beside the sink; see the module docs.
pub(crate) struct TrackedUpload {
    store: Arc<dyn ObjectStore>,
    multipart: Arc<dyn MultipartStore>,
    path: ObjectPath,
    /// Where the upload's record goes.
    record: ObjectPath,
    /// Bytes not sent yet (less than a part, between calls).
    buffer: Vec<u8>,
    /// The multipart upload, once the file outgrew one part.
    id: Option<MultipartId>,
    /// Sent parts, by index.
    parts: Vec<Option<PartId>>,
    sending: JoinSet<(usize, object_store::Result<PartId>)>,
    failpoint: Failpoint,
}

impl TrackedUpload {
    async fn put(&mut self, bytes: Bytes) -> Result<(), Cause> {
        self.buffer.extend_from_slice(&bytes);
        while self.buffer.len() >= PART_SIZE {
            let rest = self.buffer.split_off(PART_SIZE);
            let part = std::mem::replace(&mut self.buffer, rest);
            self.send(part).await?;
        }
        Ok(())
    }

    /// Starts sending one part; starts (and records) the upload first.
    async fn send(&mut self, part: Vec<u8>) -> Result<(), Cause> {
        let id = match &self.id {
            Some(id) => id.clone(),
            None => {
                let id = self
                    .multipart
                    .create_multipart(&self.path)
                    .await
                    .map_err(Cause::new)?;
                let record = UploadRecord {
                    path: self.path.to_string(),
                    upload_id: id.clone(),
                };
                let body = serde_json::to_vec(&record).map_err(Cause::new)?;
                if let Err(e) = self.store.put(&self.record, PutPayload::from(body)).await {
                    // unrecorded, the upload must not outlive this error
                    let _ = self.multipart.abort_multipart(&self.path, &id).await;
                    return Err(Cause::new(e));
                }
                self.id = Some(id.clone());
                id
            }
        };
        while self.sending.len() >= PARTS_IN_FLIGHT {
            self.settle_one().await?;
        }
        let idx = self.parts.len();
        self.parts.push(None);
        let (multipart, path) = (Arc::clone(&self.multipart), self.path.clone());
        self.sending.spawn(async move {
            let sent = multipart
                .put_part(&path, &id, idx, PutPayload::from(part))
                .await;
            (idx, sent)
        });
        Ok(())
    }

    /// Waits for one part under way.
    async fn settle_one(&mut self) -> Result<(), Cause> {
        let Some(joined) = self.sending.join_next().await else {
            return Ok(());
        };
        let (idx, sent) = joined.map_err(Cause::new)?;
        self.parts[idx] = Some(sent.map_err(Cause::new)?);
        // the kill tests stop here: a part is up, the upload is not complete
        self.failpoint.hit(Point::MidUpload, 0);
        Ok(())
    }

    async fn finish(&mut self) -> Result<(), Cause> {
        if self.id.is_none() {
            // one part: a single PUT
            let body = PutPayload::from(std::mem::take(&mut self.buffer));
            return self
                .store
                .put(&self.path, body)
                .await
                .map(|_| ())
                .map_err(Cause::new);
        }
        if !self.buffer.is_empty() {
            let last = std::mem::take(&mut self.buffer);
            self.send(last).await?;
        }
        while !self.sending.is_empty() {
            self.settle_one().await?;
        }
        let parts: Vec<PartId> = self.parts.drain(..).flatten().collect();
        let Some(id) = self.id.take() else {
            return Ok(());
        };
        self.multipart
            .complete_multipart(&self.path, &id, parts)
            .await
            .map_err(Cause::new)?;
        // the file is whole: the record has done its work
        let _ = self.store.delete(&self.record).await;
        Ok(())
    }

    async fn abort(&mut self) {
        self.sending.abort_all();
        while self.sending.join_next().await.is_some() {}
        // the record stays when the abort fails: recovery tries again
        if let Some(id) = self.id.take()
            && self
                .multipart
                .abort_multipart(&self.path, &id)
                .await
                .is_ok()
        {
            let _ = self.store.delete(&self.record).await;
        }
    }
}

/// Aborts every multipart upload the sink at `root` recorded and did not
/// complete (a process killed mid-upload), and deletes the records.
/// Returns the objects whose uploads were aborted, relative to `root`.
pub(crate) async fn abort_left_uploads(
    store: &Arc<dyn ObjectStore>,
    multipart: &Arc<dyn MultipartStore>,
    root: &Location,
    may_abort: impl Fn(&str, std::time::SystemTime) -> bool,
) -> object_store::Result<Vec<String>> {
    let dir = root.child(UPLOADS_DIR);
    let records: Vec<_> = store.list(Some(&dir)).try_collect().await?;
    let mut aborted = Vec::new();
    for meta in records {
        // (another worker's upload in progress, when the log is shared)
        if !may_abort(
            meta.location.filename().unwrap_or(""),
            meta.last_modified.into(),
        ) {
            continue;
        }
        let body = store.get(&meta.location).await?.bytes().await?;
        match serde_json::from_slice::<UploadRecord>(&body) {
            Ok(r) => {
                let path = ObjectPath::from(r.path.as_str());
                match multipart.abort_multipart(&path, &r.upload_id).await {
                    // aborted, or completed or aborted before the crash
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
                aborted.push(format!(
                    "{} (incomplete upload {})",
                    relative_to(&path, &root.prefix),
                    r.upload_id
                ));
            }
            Err(e) => {
                tracing::warn!(record = %meta.location, error = %e, "an upload record sluice cannot read was deleted; an upload it named may be left on the store");
            }
        }
        store.delete(&meta.location).await?;
    }
    Ok(aborted)
}

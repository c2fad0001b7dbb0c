//! Avro values in the Confluent wire format: a magic byte `0`, a 4-byte
//! big-endian schema id, then the Avro body written with that schema.
//!
//! - **Writer schemas by id.** An id is looked up in `schema_ids` (ids
//!   mapped to registry schemas, `name@version`, in the pipeline file), then
//!   in the Confluent-compatible registry at `schema_registry`
//!   (`GET /schemas/ids/<id>`), once per id and run. The ids a slice holds
//!   are resolved when the slice is read, before the epoch runs.
//! - **Decoding** is arrow-avro's. A message is decoded on its own first,
//!   so that a bad one (a wrong magic byte, an unknown id, a body that is
//!   cut short or too long) costs its own row and goes to `on_error`; the
//!   rest are decoded together.
//! - **Columns** are the declared ones, taken by name from what each writer
//!   schema decodes to and cast: a nullable column a writer schema lacks is
//!   null; a value that does not cast exactly refuses its message.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{Arc, RwLock};

use arrow_avro::reader::ReaderBuilder;
use arrow_avro::schema::{AvroSchema, Fingerprint, FingerprintAlgorithm, SchemaStore};
use datafusion::arrow::array::{ArrayRef, RecordBatch, new_null_array};
use datafusion::arrow::compute::{CastOptions, cast_with_options, concat_batches};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::error::ArrowError;
use sluice_contract::ErrorCode;

use super::chunk::{Chunk, Refused};

/// The writer schemas known by id, shared by a source and its slices.
#[derive(Debug, Default)]
pub(crate) struct WriterSchemas {
    by_id: RwLock<BTreeMap<u32, AvroSchema>>,
}

impl WriterSchemas {
    pub(crate) fn insert(&self, id: u32, schema: AvroSchema) {
        if let Ok(mut m) = self.by_id.write() {
            m.insert(id, schema);
        }
    }

    pub(crate) fn contains(&self, id: u32) -> bool {
        self.by_id.read().is_ok_and(|m| m.contains_key(&id))
    }

    fn store(&self) -> SchemaStore {
        let mut store = SchemaStore::new_with_type(FingerprintAlgorithm::Id);
        if let Ok(m) = self.by_id.read() {
            for (id, s) in m.iter() {
                // ids are unique keys of the map: setting one cannot collide
                let _ = store.set(Fingerprint::Id(*id), s.clone());
            }
        }
        store
    }
}

/// The schema id of a value in the Confluent wire format, if it is one.
pub(crate) fn schema_id(value: &[u8]) -> Option<u32> {
    match value {
        [0, a, b, c, d, ..] => Some(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

/// How `format = "avro"` values become the declared columns.
#[derive(Debug)]
pub(crate) struct AvroDecoding {
    /// The declared columns (without the metadata columns).
    pub declared: SchemaRef,
    pub schemas: Arc<WriterSchemas>,
}

impl AvroDecoding {
    fn decoder(&self, batch_size: usize) -> Result<arrow_avro::reader::Decoder, ArrowError> {
        ReaderBuilder::new()
            .with_batch_size(batch_size.max(1))
            .with_writer_schema_store(self.schemas.store())
            .build_decoder()
    }

    /// Decodes messages `rows` of `c`: the declared columns of the messages
    /// that decode, in order, and the ones refused.
    pub(crate) fn decode(
        &self,
        c: &Chunk,
        rows: Range<usize>,
    ) -> Result<(Option<RecordBatch>, Vec<Refused>), ArrowError> {
        let mut refused: Vec<Refused> = Vec::new();
        let mut kept: Vec<usize> = Vec::with_capacity(rows.len());
        let mut probe = self.decoder(1)?;
        for i in rows {
            let Some(span) = &c.spans[i] else {
                refused.push((
                    i,
                    ErrorCode::Malformed,
                    "the message has no value (a tombstone)".into(),
                ));
                continue;
            };
            let value = &c.values[span.clone()];
            let Some(id) = schema_id(value) else {
                refused.push((
                    i,
                    ErrorCode::Malformed,
                    "not in the Confluent wire format (a 0 byte, then a 4-byte schema id)".into(),
                ));
                continue;
            };
            if !self.schemas.contains(id) {
                refused.push((
                    i,
                    ErrorCode::SchemaMismatch,
                    format!("schema id {id} is not known to the registry"),
                ));
                continue;
            }
            // alone first: a bad body may leave a decoder half-way through a row
            match probe
                .decode(value)
                .map_err(|e| e.to_string())
                .and_then(|n| {
                    let row = probe.flush().map_err(|e| e.to_string())?;
                    match (n == value.len(), row.map_or(0, |r| r.num_rows())) {
                        (true, 1) => Ok(()),
                        (false, _) => Err(format!(
                            "the body is {} bytes too long or cut short",
                            value.len() - n
                        )),
                        (true, n) => Err(format!("the body decodes to {n} rows, not one")),
                    }
                }) {
                Ok(()) => kept.push(i),
                Err(m) => {
                    refused.push((
                        i,
                        ErrorCode::Malformed,
                        format!("Avro body of schema id {id}: {m}"),
                    ));
                    probe = self.decoder(1)?;
                }
            }
        }
        // the good ones together; a new writer schema flushes what came before
        let mut decoder = self.decoder(kept.len())?;
        let mut parts: Vec<RecordBatch> = Vec::new();
        for &i in &kept {
            let value = &c.values[c.spans[i].clone().unwrap_or_default()];
            let mut at = 0;
            while at < value.len() {
                let n = decoder.decode(&value[at..]).map_err(ArrowError::from)?;
                if n == 0 {
                    if let Some(b) = decoder.flush().map_err(ArrowError::from)? {
                        parts.push(b);
                    }
                    continue;
                }
                at += n;
            }
        }
        if let Some(b) = decoder.flush().map_err(ArrowError::from)? {
            parts.push(b);
        }
        let mut declared_parts = Vec::with_capacity(parts.len());
        let mut row = 0;
        for p in parts {
            match self.to_declared(&p) {
                Ok(b) => declared_parts.push(b),
                Err(m) => {
                    // a writer schema whose values do not fit the columns
                    for &i in &kept[row..row + p.num_rows()] {
                        refused.push((i, ErrorCode::TypeMismatch, m.clone()));
                    }
                }
            }
            row += p.num_rows();
        }
        refused.sort_by_key(|r| r.0);
        if declared_parts.is_empty() {
            return Ok((None, refused));
        }
        Ok((
            Some(concat_batches(&self.declared, &declared_parts)?),
            refused,
        ))
    }

    /// The declared columns of a decoded batch, by name.
    fn to_declared(&self, b: &RecordBatch) -> Result<RecordBatch, String> {
        let strict = CastOptions {
            safe: false,
            ..CastOptions::default()
        };
        let columns: Vec<ArrayRef> = self
            .declared
            .fields()
            .iter()
            .map(|f| match b.column_by_name(f.name()) {
                Some(col) => cast_with_options(col, f.data_type(), &strict)
                    .map_err(|e| format!("column `{}`: {e}", f.name())),
                None if f.is_nullable() => Ok(new_null_array(f.data_type(), b.num_rows())),
                None => Err(format!(
                    "the writer schema lacks the required column `{}`",
                    f.name()
                )),
            })
            .collect::<Result<_, _>>()?;
        RecordBatch::try_new(Arc::clone(&self.declared), columns).map_err(|e| e.to_string())
    }
}

/// Registers the Avro schema `schema` (its JSON) under `subject` of the
/// Confluent-compatible registry at `base`; returns its id (the same id
/// when it is registered already).
pub(crate) async fn register_schema(
    base: &str,
    subject: &str,
    schema: &str,
) -> Result<u32, String> {
    let url = format!("{}/subjects/{subject}/versions", base.trim_end_matches('/'));
    let resp = reqwest::Client::new()
        .post(&url)
        .header("Content-Type", "application/vnd.schemaregistry.v1+json")
        .body(serde_json::json!({ "schema": schema }).to_string())
        .send()
        .await
        .map_err(|e| format!("cannot reach the schema registry at {url}: {e}"))?;
    let status = resp.status();
    let body = resp
        .bytes()
        .await
        .map_err(|e| format!("cannot read the schema registry's answer for {url}: {e}"))?;
    if !status.is_success() {
        return Err(format!(
            "the schema registry refused the writer schema at {url} ({status}): {}",
            String::from_utf8_lossy(&body)
        ));
    }
    #[derive(serde::Deserialize)]
    struct Answer {
        id: u32,
    }
    serde_json::from_slice::<Answer>(&body)
        .map(|a| a.id)
        .map_err(|e| format!("the schema registry's answer for {url} has no schema id: {e}"))
}

/// The schema of id `id` from a Confluent-compatible registry at `base`;
/// `Ok(None)` when the registry does not have it.
pub(crate) async fn fetch_schema(base: &str, id: u32) -> Result<Option<AvroSchema>, String> {
    let url = format!("{}/schemas/ids/{id}", base.trim_end_matches('/'));
    let resp = reqwest::get(&url)
        .await
        .map_err(|e| format!("cannot reach the schema registry at {url}: {e}"))?;
    if resp.status() == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    if !resp.status().is_success() {
        return Err(format!(
            "the schema registry answered {} for {url}",
            resp.status()
        ));
    }
    let body = resp
        .bytes()
        .await
        .map_err(|e| format!("cannot read the schema registry's answer for {url}: {e}"))?;
    #[derive(serde::Deserialize)]
    struct Answer {
        schema: String,
        #[serde(default, rename = "schemaType")]
        schema_type: Option<String>,
    }
    let a: Answer = serde_json::from_slice(&body)
        .map_err(|e| format!("the schema registry's answer for {url} is not a schema: {e}"))?;
    if a.schema_type.as_deref().is_some_and(|t| t != "AVRO") {
        return Err(format!("schema id {id} at {url} is not an Avro schema"));
    }
    // arrow-avro parses it when a decoder is built: a bad one fails there
    Ok(Some(AvroSchema::new(a.schema)))
}

//! The stage manifest (`DoAction("describe")`) and the open request.

use std::sync::Arc;

use arrow_flight::{IpcMessage, SchemaAsIpc};
use arrow_ipc::writer::IpcWriteOptions;
use arrow_schema::{Schema, SchemaRef};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use crate::PROTOCOL;

/// A schema in a manifest: a contract name and version, and the Arrow schema.
#[derive(Debug, Clone, PartialEq)]
pub struct SchemaDecl {
    /// Contract name.
    pub name: String,
    /// Contract version.
    pub version: String,
    /// The Arrow schema.
    pub schema: SchemaRef,
}

#[derive(Serialize, Deserialize)]
struct SchemaDeclJson {
    name: String,
    version: String,
    ipc: String,
}

impl Serialize for SchemaDecl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let ipc = schema_to_base64(&self.schema).map_err(serde::ser::Error::custom)?;
        SchemaDeclJson {
            name: self.name.clone(),
            version: self.version.clone(),
            ipc,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for SchemaDecl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let j = SchemaDeclJson::deserialize(d)?;
        let schema = schema_from_base64(&j.ipc).map_err(serde::de::Error::custom)?;
        Ok(SchemaDecl {
            name: j.name,
            version: j.version,
            schema: Arc::new(schema),
        })
    }
}

/// The Arrow schema as Flight serializes it, base64.
pub fn schema_to_base64(schema: &Schema) -> Result<String, String> {
    let options = IpcWriteOptions::default();
    let IpcMessage(bytes) = SchemaAsIpc::new(schema, &options)
        .try_into()
        .map_err(|e: arrow_schema::ArrowError| e.to_string())?;
    Ok(STANDARD.encode(&bytes))
}

/// Decodes [`schema_to_base64`]'s output (also Go's `flight.SerializeSchema`,
/// which appends an end-of-stream marker).
pub fn schema_from_base64(text: &str) -> Result<Schema, String> {
    let bytes = STANDARD
        .decode(text)
        .map_err(|e| format!("schema is not base64: {e}"))?;
    arrow_ipc::convert::try_schema_from_ipc_buffer(&bytes)
        .map_err(|e| format!("schema is not an Arrow IPC schema: {e}"))
}

/// Whether output rows keep input order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ordering {
    /// Output rows keep the input order.
    Preserve,
    /// No promise.
    None,
}

/// Whether the stage reports per-row errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorSemantics {
    /// Row errors may come in `row_errors` messages.
    Row,
    /// Only fatal errors.
    FatalOnly,
}

/// What a stage says about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Implementation name.
    pub name: String,
    /// Implementation version.
    pub version: String,
    /// Implementation language.
    pub language: String,
    /// [`PROTOCOL`].
    pub protocol: String,
    /// Accepted input; `None` accepts any schema.
    pub input_schema: Option<SchemaDecl>,
    /// Produced output; `None` (only with a `None` input) means output = input.
    pub output_schema: Option<SchemaDecl>,
    /// Largest input batch in rows.
    pub max_batch_rows: u64,
    /// Largest input batch in bytes.
    pub max_batch_bytes: u64,
    /// Whether output depends on earlier batches of the exchange.
    pub stateful: bool,
    /// Ordering guarantee.
    pub ordering: Ordering,
    /// Error semantics.
    pub errors: ErrorSemantics,
}

impl Manifest {
    /// A manifest with defaults: Rust, 65536 rows / 32 MiB batches, stateless,
    /// order preserving, fatal errors only.
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            version: version.into(),
            language: "rust".into(),
            protocol: PROTOCOL.into(),
            input_schema: None,
            output_schema: None,
            max_batch_rows: 65_536,
            max_batch_bytes: 32 << 20,
            stateful: false,
            ordering: Ordering::Preserve,
            errors: ErrorSemantics::FatalOnly,
        }
    }

    /// The output schema for a given input schema.
    pub fn output_for(&self, input: &SchemaRef) -> SchemaRef {
        match &self.output_schema {
            Some(o) => Arc::clone(&o.schema),
            None => Arc::clone(input),
        }
    }

    /// Checks the manifest is coherent.
    pub fn check(&self) -> Result<(), String> {
        if self.protocol != PROTOCOL {
            return Err(format!(
                "protocol is `{}`, expected `{PROTOCOL}`",
                self.protocol
            ));
        }
        if self.input_schema.is_some() && self.output_schema.is_none() {
            return Err("output_schema may be null only when input_schema is null".into());
        }
        if self.max_batch_rows == 0 || self.max_batch_bytes == 0 {
            return Err("max_batch_rows and max_batch_bytes must be positive".into());
        }
        Ok(())
    }
}

/// The JSON `cmd` of the first message of an exchange.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenRequest {
    /// [`PROTOCOL`].
    pub protocol: String,
    /// The stage's name in the pipeline.
    pub stage: String,
    /// The epoch of the exchange.
    pub epoch: u64,
    /// The plan partition of the exchange.
    pub partition: u32,
    /// The stage's `config` table from the pipeline.
    #[serde(default)]
    pub config: serde_json::Value,
}

/// Checks that `actual` can be read as `declared`: same field names and
/// types in order (metadata ignored); a nullable field where a not-null one
/// is declared is a mismatch. The error names the field.
pub fn check_schema(declared: &Schema, actual: &Schema) -> Result<(), String> {
    if declared.fields().len() != actual.fields().len() {
        let names = |s: &Schema| {
            s.fields()
                .iter()
                .map(|f| f.name().clone())
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(format!(
            "expected {} fields ({}), got {} ({})",
            declared.fields().len(),
            names(declared),
            actual.fields().len(),
            names(actual)
        ));
    }
    for (d, a) in declared.fields().iter().zip(actual.fields()) {
        if d.name() != a.name() {
            return Err(format!(
                "field `{}`: found a field named `{}` in its place",
                d.name(),
                a.name()
            ));
        }
        if d.data_type() != a.data_type() {
            return Err(format!(
                "field `{}`: expected {}, got {}",
                d.name(),
                d.data_type(),
                a.data_type()
            ));
        }
        if !d.is_nullable() && a.is_nullable() {
            return Err(format!(
                "field `{}`: declared not null, but the data may hold nulls",
                d.name()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_schema::{DataType, Field, TimeUnit};

    #[test]
    fn manifests_round_trip_through_json_with_exact_schemas() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new(
                "at",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
            Field::new("price", DataType::Decimal128(15, 2), true),
            Field::new_list("tags", Field::new_list_field(DataType::Utf8, true), true),
        ]));
        let mut m = Manifest::new("x", "1.0.0");
        m.input_schema = Some(SchemaDecl {
            name: "in".into(),
            version: "1".into(),
            schema: schema.clone(),
        });
        m.output_schema = Some(SchemaDecl {
            name: "out".into(),
            version: "2".into(),
            schema,
        });
        let json = serde_json::to_string(&m).unwrap();
        let back: Manifest = serde_json::from_str(&json).unwrap();
        assert_eq!(back, m);
        assert!(back.check().is_ok());
    }

    #[test]
    fn schema_checks_name_the_field() {
        let a = Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("n", DataType::Utf8, true),
        ]);
        let b = Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("n", DataType::Int32, true),
        ]);
        assert!(check_schema(&a, &a).is_ok());
        assert_eq!(
            check_schema(&a, &b).unwrap_err(),
            "field `n`: expected Utf8, got Int32"
        );
        let c = Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("n", DataType::Utf8, true),
        ]);
        assert!(
            check_schema(&a, &c)
                .unwrap_err()
                .contains("declared not null")
        );
    }
}

//! The stage manifest (`DoAction("describe")`) and the open request.

use std::sync::Arc;

use arrow_flight::{IpcMessage, SchemaAsIpc};
use arrow_ipc::writer::IpcWriteOptions;
use arrow_schema::{DataType, FieldRef, Schema, SchemaRef};
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
    // a stage's bytes: arrow's reader panics on some malformed schemas
    std::panic::catch_unwind(|| arrow_ipc::convert::try_schema_from_ipc_buffer(&bytes))
        .map_err(|panic| crate::panic_message(panic.as_ref()).to_string())
        .and_then(|r| r.map_err(|e| e.to_string()))
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
    /// The protocol version of this answer ([`crate::version`]).
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
    /// v1.1: the engine casts view types (`Utf8View`, `BinaryView`, also
    /// nested) to plain ones before sending, for stages whose Arrow library
    /// lacks kernels for them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub plain_types: bool,
    /// v1.1: the stage's timing promise, measured by the engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timing: Option<Timing>,
    /// v1.1: the stage can take batches through shared memory when it runs
    /// as the engine's child (docs/protocol.md, section 8; [`crate::shm`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared_memory: bool,
}

/// How fast a stage promises to answer (v1.1): the engine measures every
/// batch's round trip against it and counts breaches (docs/protocol.md,
/// section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timing {
    /// The 99th percentile of a batch's round trip, in milliseconds.
    pub batch_p99_ms: u64,
    /// The longest a batch may wait for its answer, in milliseconds; the
    /// engine's `timeout` when the pipeline sets none.
    pub max_answer_ms: u64,
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
            plain_types: false,
            timing: None,
            shared_memory: false,
        }
    }

    /// The manifest as answered in `protocol`: a v1 answer leaves out what
    /// v1.1 added (a v1 engine would not read it).
    pub fn in_protocol(&self, protocol: &str) -> Manifest {
        let mut m = self.clone();
        m.protocol = protocol.to_string();
        if protocol == crate::version::V1 {
            m.plain_types = false;
            m.timing = None;
            m.shared_memory = false;
        }
        m
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
        if !crate::version::is_spoken(&self.protocol) {
            return Err(format!(
                "the stage speaks protocol `{}`; this engine speaks {}",
                self.protocol,
                crate::version::SPOKEN.join(", ")
            ));
        }
        if self.protocol == crate::version::V1
            && (self.plain_types || self.timing.is_some() || self.shared_memory)
        {
            return Err(format!(
                "a {} manifest carries `plain_types`, `timing` or `shared_memory`, which {} added",
                crate::version::V1,
                crate::version::V1_1
            ));
        }
        if let Some(t) = self.timing
            && (t.batch_p99_ms == 0 || t.max_answer_ms == 0 || t.batch_p99_ms > t.max_answer_ms)
        {
            return Err(format!(
                "timing: batch_p99_ms ({}) and max_answer_ms ({}) must be positive, the p99 at most the maximum",
                t.batch_p99_ms, t.max_answer_ms
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
    /// The protocol version the manifest was answered in.
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
    /// v1.1, stateful stages: the state the last committed epoch left for
    /// this stage and partition, base64; `None` before the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// v1.1, a stage whose manifest says `shared_memory`, run as the
    /// engine's child: the memory batches travel through ([`crate::shm`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_memory: Option<crate::shm::Offer>,
    /// v1.1: `Some(true)` when the engine takes `unchanged` answers in
    /// this exchange ([`crate::envelope::Kind::Unchanged`]; the client
    /// offers them). Absent, `null` and `false` all mean it does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unchanged: Option<bool>,
}

impl OpenRequest {
    /// The request of an exchange of `stage` (its pipeline name) for
    /// `epoch` and `partition`, in `protocol` (the version `describe`
    /// settled on): no `config`, no snapshot, no shared memory (the client
    /// offers it when the exchange has it).
    pub fn new(
        protocol: impl Into<String>,
        stage: impl Into<String>,
        epoch: u64,
        partition: u32,
    ) -> Self {
        Self {
            protocol: protocol.into(),
            stage: stage.into(),
            epoch,
            partition,
            config: serde_json::Value::Null,
            snapshot: None,
            shared_memory: None,
            unchanged: None,
        }
    }

    /// With the stage's `config` table.
    pub fn with_config(mut self, config: serde_json::Value) -> Self {
        self.config = config;
        self
    }

    /// The state to start from ([`OpenRequest::snapshot`], decoded); `None`
    /// before the first commit.
    pub fn restore(&self) -> Result<Option<Vec<u8>>, crate::StageError> {
        self.snapshot
            .as_deref()
            .map(|s| {
                STANDARD.decode(s).map_err(|e| {
                    crate::StageError::new(
                        sluice_contract::ErrorCode::InvalidArgument,
                        format!("the open request's snapshot is not base64: {e}"),
                    )
                })
            })
            .transpose()
    }

    /// Whether the exchange takes part in commits with its state: a
    /// stateful stage in v1.1.
    pub fn carries_state(&self, manifest: &Manifest) -> bool {
        manifest.stateful && self.protocol == crate::version::V1_1
    }

    /// Whether the stage may answer `unchanged`: offered, in v1.1.
    pub fn takes_unchanged(&self) -> bool {
        self.unchanged == Some(true) && self.protocol == crate::version::V1_1
    }
}

/// `data_type` with its view types made plain (`Utf8View` → `Utf8`,
/// `BinaryView` → `Binary`, inside lists, structs, maps and dictionaries
/// too), or `None` when it holds none: what the engine sends a stage whose
/// manifest says `plain_types`.
pub fn plain_type(data_type: &DataType) -> Option<DataType> {
    let field = |f: &FieldRef| -> Option<FieldRef> {
        plain_type(f.data_type()).map(|t| Arc::new(f.as_ref().clone().with_data_type(t)))
    };
    Some(match data_type {
        DataType::Utf8View => DataType::Utf8,
        DataType::BinaryView => DataType::Binary,
        DataType::List(f) => DataType::List(field(f)?),
        DataType::LargeList(f) => DataType::LargeList(field(f)?),
        DataType::FixedSizeList(f, n) => DataType::FixedSizeList(field(f)?, *n),
        DataType::Map(f, sorted) => DataType::Map(field(f)?, *sorted),
        DataType::Dictionary(k, v) => DataType::Dictionary(k.clone(), Box::new(plain_type(v)?)),
        DataType::Struct(fields) => {
            if fields.iter().all(|f| plain_type(f.data_type()).is_none()) {
                return None;
            }
            DataType::Struct(
                fields
                    .iter()
                    .map(|f| field(f).unwrap_or_else(|| Arc::clone(f)))
                    .collect(),
            )
        }
        _ => return None,
    })
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

    mod unchanged_offer {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Whatever JSON the engine (a peer) puts under `unchanged`,
            /// the open request parses or is refused, never panics, and
            /// only `true` in a v1.1 exchange is an offer.
            #[test]
            fn any_value_is_an_offer_only_when_true_in_v1_1(
                value in prop_oneof![
                    any::<bool>().prop_map(|b| b.to_string()),
                    any::<i64>().prop_map(|n| n.to_string()),
                    any::<String>().prop_map(|t| serde_json::Value::String(t).to_string()),
                    Just("null".to_string()),
                    Just("[true]".to_string()),
                    Just(r#"{"x":true}"#.to_string()),
                ],
                v1_1 in any::<bool>(),
            ) {
                let protocol = if v1_1 { crate::version::V1_1 } else { crate::version::V1 };
                let json = format!(r#"{{"protocol":"{protocol}","stage":"s","epoch":1,"partition":0,"unchanged":{value}}}"#);
                let parsed = serde_json::from_str::<OpenRequest>(&json);
                let bool_or_null = ["true", "false", "null"].contains(&value.as_str());
                prop_assert_eq!(parsed.is_ok(), bool_or_null, "{}", json);
                if let Ok(open) = parsed {
                    prop_assert_eq!(open.takes_unchanged(), v1_1 && value == "true");
                }
            }
        }
    }

    /// `unchanged` is taken only as `true` in a v1.1 exchange: `null`,
    /// `false` and its absence mean no offer, as in the Go and Python SDKs.
    #[test]
    fn an_unchanged_offer_is_true_in_v1_1_or_none() {
        for (protocol, key, takes) in [
            (crate::version::V1_1, r#","unchanged":true"#, true),
            (crate::version::V1_1, r#","unchanged":false"#, false),
            (crate::version::V1_1, r#","unchanged":null"#, false),
            (crate::version::V1_1, "", false),
            (crate::version::V1, r#","unchanged":true"#, false),
        ] {
            let json =
                format!(r#"{{"protocol":"{protocol}","stage":"s","epoch":1,"partition":0{key}}}"#);
            let open: OpenRequest = serde_json::from_str(&json).unwrap();
            assert_eq!(open.takes_unchanged(), takes, "{json}");
        }
    }
    use arrow_schema::{Field, TimeUnit};

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

    proptest::proptest! {
        /// A manifest is a stage's answer: any JSON value mutated from a valid
        /// one (keys dropped, values replaced) decodes and checks to a manifest
        /// or a reason, never a panic; one that passes `check` speaks a
        /// version the engine speaks.
        #[test]
        fn any_manifest_answer_is_checked_or_refused(
            drop in proptest::collection::vec(0usize..14, 0..3),
            replace in proptest::option::of((0usize..14, proptest::prelude::any::<i64>(), "[a-z.0-9]{0,12}")),
        ) {
            let mut m = Manifest::new("x", "1.0.0");
            m.timing = Some(Timing { batch_p99_ms: 5, max_answer_ms: 50 });
            m.plain_types = true;
            let mut json = serde_json::to_value(m.in_protocol(crate::version::V1_1)).unwrap();
            let obj = json.as_object_mut().unwrap();
            let keys: Vec<String> = obj.keys().cloned().collect();
            for d in drop {
                if let Some(k) = keys.get(d) { obj.remove(k); }
            }
            if let Some((i, n, s)) = replace
                && let Some(k) = keys.get(i)
            {
                obj.insert(k.clone(), if n % 2 == 0 { serde_json::json!(n) } else { serde_json::json!(s) });
            }
            if let Ok(m) = serde_json::from_value::<Manifest>(json)
                && m.check().is_ok()
            {
                proptest::prop_assert!(crate::version::is_spoken(&m.protocol));
            }
        }
    }

    proptest::proptest! {
        /// A declared schema is a stage's bytes too: the IPC of the kit's
        /// type zoo schema, cut or with a byte changed, gives a schema or a
        /// reason, never a panic (arrow's reader panics on some; see
        /// `schema_from_base64`).
        #[test]
        fn any_declared_schema_bytes_are_a_schema_or_refused(
            cut in proptest::prelude::any::<proptest::sample::Index>(),
            flips in proptest::collection::vec((proptest::prelude::any::<proptest::sample::Index>(), proptest::prelude::any::<u8>()), 0..4),
        ) {
            let zoo = crate::conformance::type_zoo(1).schema();
            let mut ipc = STANDARD.decode(schema_to_base64(&zoo).unwrap()).unwrap();
            for (at, byte) in flips {
                let i = at.index(ipc.len());
                ipc[i] = byte;
            }
            ipc.truncate(cut.index(ipc.len() + 1).max(ipc.len() / 2));
            let text = serde_json::json!({"name": "in", "version": "1", "ipc": STANDARD.encode(&ipc)});
            if let Err(e) = serde_json::from_value::<SchemaDecl>(text) {
                proptest::prop_assert!(e.to_string().contains("schema is not"), "{}", e);
            }
        }
    }

    #[test]
    fn v1_1_keys_are_answered_only_in_v1_1() {
        let mut m = Manifest::new("x", "1.0.0");
        m.plain_types = true;
        m.timing = Some(Timing {
            batch_p99_ms: 20,
            max_answer_ms: 500,
        });
        let v11 = serde_json::to_string(&m.in_protocol(crate::version::V1_1)).unwrap();
        assert!(v11.ends_with(
            r#""errors":"fatal_only","plain_types":true,"timing":{"batch_p99_ms":20,"max_answer_ms":500}}"#
        ));
        let back: Manifest = serde_json::from_str(&v11).unwrap();
        assert!(back.check().is_ok());
        assert_eq!(back, m.in_protocol(crate::version::V1_1));
        let v1 = serde_json::to_string(&m.in_protocol(crate::version::V1)).unwrap();
        assert!(v1.ends_with(r#""errors":"fatal_only"}"#), "{v1}");
        assert!(v1.contains(r#""protocol":"sluice.stage.v1","#));
        // a v1 manifest that carries them anyway is refused
        let mut bad: Manifest = serde_json::from_str(&v11).unwrap();
        bad.protocol = crate::version::V1.into();
        assert!(bad.check().unwrap_err().contains("v1.1"));
        let mut future: Manifest = serde_json::from_str(&v11).unwrap();
        future.protocol = "sluice.stage.v2".into();
        assert!(future.check().unwrap_err().contains("sluice.stage.v2"));
        let mut slow = m.clone();
        slow.timing = Some(Timing {
            batch_p99_ms: 600,
            max_answer_ms: 500,
        });
        assert!(slow.check().is_err());
    }

    #[test]
    fn plain_types_replace_every_view_and_nothing_else() {
        use arrow_schema::Fields;
        assert_eq!(plain_type(&DataType::Utf8View), Some(DataType::Utf8));
        assert_eq!(plain_type(&DataType::BinaryView), Some(DataType::Binary));
        assert_eq!(plain_type(&DataType::Utf8), None);
        assert_eq!(plain_type(&DataType::Int64), None);
        let nested = DataType::Struct(Fields::from(vec![
            Field::new("id", DataType::Int64, false),
            Field::new_list(
                "names",
                Field::new_list_field(DataType::Utf8View, true),
                true,
            ),
        ]));
        let want = DataType::Struct(Fields::from(vec![
            Field::new("id", DataType::Int64, false),
            Field::new_list("names", Field::new_list_field(DataType::Utf8, true), true),
        ]));
        assert_eq!(plain_type(&nested), Some(want));
        let dict = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8View));
        assert_eq!(
            plain_type(&dict),
            Some(DataType::Dictionary(
                Box::new(DataType::Int32),
                Box::new(DataType::Utf8)
            ))
        );
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

//! The schema registry: a folder of `<name>/<version>.json` files, each one
//! version of a named schema in a JSON form people can write and review
//! (documented in `docs/schemas.md`):
//!
//! ```json
//! { "name": "events", "version": 2, "doc": "what one row is",
//!   "fields": [
//!     { "name": "id", "type": "bigint", "nullable": false, "id": 1 },
//!     { "name": "device", "type": "struct", "fields": [ { "name": "os", "type": "varchar" } ] },
//!     { "name": "tags", "type": "list", "item": { "type": "varchar" } }
//!   ],
//!   "metadata": { "owner": "growth" } }
//! ```
//!
//! Scalar types use the names of [`crate::types::parse_data_type`]; `id` is a
//! stable field id, stored as Parquet's `PARQUET:field_id` field metadata, which
//! lets the compatibility checker tell a rename from a drop and an add.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use arrow_schema::{DataType, Field, Fields, Schema};
use serde::Deserialize;

use crate::types::parse_data_type;

/// Field metadata key of a stable field id (the key arrow-rs and Parquet use).
pub const FIELD_ID: &str = "PARQUET:field_id";
/// Schema metadata key of a registry schema's free-text description.
pub const DOC: &str = "sluice.schema.doc";

/// One version of a schema, as read from the registry.
#[derive(Debug, Clone, PartialEq)]
pub struct RegisteredSchema {
    /// The schema's name (its folder).
    pub name: String,
    /// Its version (the file's name).
    pub version: u32,
    /// The Arrow schema, with field ids and metadata.
    pub schema: Schema,
    /// The file it came from.
    pub file: PathBuf,
}

/// A registry folder.
#[derive(Debug, Clone)]
pub struct Registry {
    root: PathBuf,
}

/// A registry error, naming the file and what is wrong in it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{file}: {message}")]
pub struct RegistryError {
    /// The file (or folder) at fault.
    pub file: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl Registry {
    /// The registry in `root` (usually `schemas/` next to the pipeline file).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Its folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The names of the schemas it holds, sorted.
    pub fn names(&self) -> Result<Vec<String>, RegistryError> {
        let entries = std::fs::read_dir(&self.root)
            .map_err(|e| self.error(&self.root, format!("cannot list the registry: {e}")))?;
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .collect();
        names.sort();
        Ok(names)
    }

    /// The folder of schema `name`: a name is one folder of the registry,
    /// never a path leading out of it (`../x`, `/etc`).
    fn dir_of(&self, name: &str) -> Result<PathBuf, RegistryError> {
        let mut parts = Path::new(name).components();
        match (parts.next(), parts.next()) {
            (Some(std::path::Component::Normal(_)), None) => Ok(self.root.join(name)),
            _ => Err(self.error(
                &self.root,
                format!("`{name}` is not a schema name: a name is one folder of the registry, without `/` or `..`"),
            )),
        }
    }

    /// The versions of `name`, ascending.
    pub fn versions(&self, name: &str) -> Result<Vec<u32>, RegistryError> {
        let dir = self.dir_of(name)?;
        let entries = std::fs::read_dir(&dir).map_err(|e| {
            self.error(
                &dir,
                format!(
                    "no schema `{name}` in the registry ({e}); expected files {name}/<version>.json"
                ),
            )
        })?;
        let mut versions = Vec::new();
        for e in entries.filter_map(|e| e.ok()) {
            let file = e.file_name().to_string_lossy().to_string();
            let Some(stem) = file.strip_suffix(".json") else {
                continue;
            };
            let v = stem.parse::<u32>().map_err(|_| {
                self.error(
                    &e.path(),
                    "a registry file is named <version>.json with a whole number, e.g. 3.json"
                        .into(),
                )
            })?;
            versions.push(v);
        }
        versions.sort_unstable();
        Ok(versions)
    }

    /// Reads `name@version`, or `name` at its latest version.
    pub fn get(&self, reference: &str) -> Result<RegisteredSchema, RegistryError> {
        let (name, version) = match reference.split_once('@') {
            Some((n, v)) => {
                let v = v.trim_start_matches('v').parse::<u32>().map_err(|_| {
                    self.error(
                        &self.root,
                        format!("`{reference}`: a schema reference is name@version, e.g. events@2"),
                    )
                })?;
                (n, v)
            }
            None => {
                let latest = self.versions(reference)?.last().copied().ok_or_else(|| {
                    self.error(
                        &self.root.join(reference),
                        format!("schema `{reference}` has no versions"),
                    )
                })?;
                (reference, latest)
            }
        };
        self.load(name, version)
    }

    /// Reads one version.
    pub fn load(&self, name: &str, version: u32) -> Result<RegisteredSchema, RegistryError> {
        let file = self.dir_of(name)?.join(format!("{version}.json"));
        let text = std::fs::read_to_string(&file).map_err(|e| {
            self.error(
                &file,
                format!(
                    "cannot read schema `{name}@{version}` ({e}); versions present: {:?}",
                    self.versions(name).unwrap_or_default()
                ),
            )
        })?;
        let doc: SchemaDoc = serde_json::from_str(&text)
            .map_err(|e| self.error(&file, format!("not a registry schema: {e}")))?;
        if doc.name != name || doc.version != version {
            return Err(self.error(
                &file,
                format!(
                    "the file says {}@{}, its path says {name}@{version}",
                    doc.name, doc.version
                ),
            ));
        }
        let schema = doc.to_arrow().map_err(|m| self.error(&file, m))?;
        Ok(RegisteredSchema {
            name: name.into(),
            version,
            schema,
            file,
        })
    }

    fn error(&self, file: &Path, message: String) -> RegistryError {
        RegistryError {
            file: file.display().to_string(),
            message,
        }
    }
}

/// The registry JSON form of `schema` as `name@version` (the inverse of
/// reading a registry file; scalar types are written with Arrow's names).
pub fn schema_to_json(name: &str, version: u32, schema: &Schema) -> serde_json::Value {
    let mut metadata: BTreeMap<&String, &String> = schema.metadata().iter().collect();
    let doc = metadata.remove(&DOC.to_string());
    let mut out = serde_json::json!({
        "name": name,
        "version": version,
        "fields": schema.fields().iter().map(|f| field_to_json(f, true)).collect::<Vec<_>>(),
        "metadata": metadata,
    });
    if let Some(d) = doc {
        out["doc"] = serde_json::json!(d);
    }
    out
}

fn field_to_json(f: &Field, named: bool) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    if named {
        out.insert("name".into(), f.name().as_str().into());
    }
    match f.data_type() {
        DataType::Struct(sub) => {
            out.insert("type".into(), "struct".into());
            out.insert(
                "fields".into(),
                sub.iter()
                    .map(|s| field_to_json(s, true))
                    .collect::<Vec<_>>()
                    .into(),
            );
        }
        DataType::List(item) => {
            out.insert("type".into(), "list".into());
            out.insert("item".into(), field_to_json(item, false));
        }
        other => {
            out.insert("type".into(), other.to_string().into());
        }
    }
    out.insert("nullable".into(), f.is_nullable().into());
    let mut md: BTreeMap<String, String> = f
        .metadata()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Some(id) = md.remove(FIELD_ID).and_then(|i| i.parse::<i64>().ok()) {
        out.insert("id".into(), id.into());
    }
    if let Some(d) = md.remove("doc") {
        out.insert("doc".into(), d.into());
    }
    if !md.is_empty() {
        out.insert("metadata".into(), serde_json::json!(md));
    }
    serde_json::Value::Object(out)
}

/// The JSON form of a registry file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SchemaDoc {
    name: String,
    version: u32,
    #[serde(default)]
    doc: Option<String>,
    fields: Vec<FieldDoc>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

/// One field (or a list's item, which has no name).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FieldDoc {
    #[serde(default)]
    name: Option<String>,
    #[serde(rename = "type")]
    data_type: String,
    #[serde(default = "yes")]
    nullable: bool,
    #[serde(default)]
    id: Option<i64>,
    #[serde(default)]
    doc: Option<String>,
    /// Subfields of a `struct`.
    #[serde(default)]
    fields: Option<Vec<FieldDoc>>,
    /// Item of a `list`.
    #[serde(default)]
    item: Option<Box<FieldDoc>>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

fn yes() -> bool {
    true
}

impl SchemaDoc {
    fn to_arrow(&self) -> Result<Schema, String> {
        let fields = fields_to_arrow(&self.fields, "fields")?;
        let mut md: HashMap<String, String> = self.metadata.clone().into_iter().collect();
        if let Some(d) = &self.doc {
            md.insert(DOC.into(), d.clone());
        }
        Ok(Schema::new_with_metadata(fields, md))
    }
}

fn fields_to_arrow(docs: &[FieldDoc], path: &str) -> Result<Fields, String> {
    let mut out = Vec::with_capacity(docs.len());
    for (i, f) in docs.iter().enumerate() {
        let here = format!("{path}[{i}]");
        let name = f
            .name
            .clone()
            .ok_or_else(|| format!("{here}: a field needs a `name`"))?;
        if out.iter().any(|o: &Field| o.name() == &name) {
            return Err(format!("{here}: field `{name}` is declared twice"));
        }
        out.push(field_to_arrow(f, name, &here)?);
    }
    Ok(out.into())
}

fn field_to_arrow(f: &FieldDoc, name: String, here: &str) -> Result<Field, String> {
    let data_type = match f.data_type.to_ascii_lowercase().as_str() {
        "struct" => {
            let sub = f
                .fields
                .as_ref()
                .ok_or_else(|| format!("{here} (`{name}`): a struct needs `fields`"))?;
            DataType::Struct(fields_to_arrow(sub, &format!("{here}.fields"))?)
        }
        "list" => {
            let item = f
                .item
                .as_ref()
                .ok_or_else(|| format!("{here} (`{name}`): a list needs an `item`"))?;
            let item = field_to_arrow(item, "item".into(), &format!("{here}.item"))?;
            DataType::List(item.into())
        }
        _ => {
            if f.fields.is_some() || f.item.is_some() {
                return Err(format!(
                    "{here} (`{name}`): `fields` and `item` belong to struct and list types"
                ));
            }
            parse_data_type(&f.data_type).map_err(|e| format!("{here} (`{name}`): {e}"))?
        }
    };
    let mut md: HashMap<String, String> = f.metadata.clone().into_iter().collect();
    if let Some(id) = f.id {
        md.insert(FIELD_ID.into(), id.to_string());
    }
    if let Some(d) = &f.doc {
        md.insert("doc".into(), d.clone());
    }
    Ok(Field::new(name, data_type, f.nullable).with_metadata(md))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry_with(files: &[(&str, &str)]) -> (tempfile::TempDir, Registry) {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let p = dir.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        let r = Registry::new(dir.path());
        (dir, r)
    }

    #[test]
    fn nested_fields_ids_and_metadata_are_read() {
        let (_d, r) = registry_with(&[(
            "events/2.json",
            r#"{"name":"events","version":2,"doc":"one click","fields":[
                {"name":"id","type":"bigint","nullable":false,"id":1},
                {"name":"device","type":"struct","fields":[{"name":"os","type":"varchar"}]},
                {"name":"tags","type":"list","item":{"type":"varchar","nullable":false}},
                {"name":"at","type":"timestamptz"}],"metadata":{"owner":"growth"}}"#,
        )]);
        let s = r.get("events").unwrap();
        assert_eq!(s.version, 2);
        let f = s.schema.field_with_name("id").unwrap();
        assert!(!f.is_nullable());
        assert_eq!(f.metadata()[FIELD_ID], "1");
        assert!(
            matches!(s.schema.field_with_name("device").unwrap().data_type(), DataType::Struct(f) if f.len() == 1)
        );
        match s.schema.field_with_name("tags").unwrap().data_type() {
            DataType::List(item) => assert!(!item.is_nullable()),
            other => panic!("{other}"),
        }
        assert_eq!(s.schema.metadata()["owner"], "growth");
        assert_eq!(s.schema.metadata()[DOC], "one click");
    }

    #[test]
    fn schemas_round_trip_through_the_json_form() {
        let (_d, r) = registry_with(&[(
            "e/1.json",
            r#"{"name":"e","version":1,"doc":"d","fields":[
                {"name":"id","type":"bigint","nullable":false,"id":1,"doc":"key"},
                {"name":"s","type":"struct","fields":[{"name":"t","type":"timestamptz"},{"name":"d","type":"decimal(9,2)"}]},
                {"name":"l","type":"list","item":{"type":"varchar","nullable":false}}],"metadata":{"k":"v"}}"#,
        )]);
        let a = r.get("e@1").unwrap().schema;
        let json = schema_to_json("e", 2, &a).to_string();
        let (_d2, r2) = registry_with(&[("e/2.json", &json)]);
        assert_eq!(r2.get("e@2").unwrap().schema, a, "{json}");
    }

    /// A reference names a folder of the registry, never a path out of it.
    #[test]
    fn names_do_not_lead_out_of_the_registry() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(outside.path().join("x")).unwrap();
        std::fs::write(
            outside.path().join("x/1.json"),
            r#"{"name":"x","version":1,"fields":[]}"#,
        )
        .unwrap();
        let (_d, r) = registry_with(&[("a/1.json", r#"{"name":"a","version":1,"fields":[]}"#)]);
        let escape = format!("{}/x", outside.path().display());
        let up = format!(
            "../{}/x",
            outside.path().file_name().unwrap().to_string_lossy()
        );
        for name in [escape.as_str(), up.as_str(), "..", ".", "a/..", ""] {
            let e = r.get(&format!("{name}@1")).unwrap_err().to_string();
            assert!(e.contains("not a schema name"), "{name}: {e}");
            assert!(r.versions(name).is_err(), "{name}");
        }
        assert_eq!(r.get("a@1").unwrap().version, 1);
    }

    proptest::proptest! {
        /// Whatever bytes a registry file holds, reading it gives a schema
        /// or an error naming the file; never a panic.
        #[test]
        fn any_file_is_a_schema_or_an_error(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(dir.path().join("s")).unwrap();
            std::fs::write(dir.path().join("s/1.json"), &bytes).unwrap();
            if let Err(e) = Registry::new(dir.path()).get("s@1") {
                proptest::prop_assert!(e.to_string().contains("1.json"), "{}", e);
            }
        }

        /// A registry file with any field types and flags reads back
        /// through the JSON form the registry writes.
        #[test]
        fn json_like_files_are_a_schema_or_an_error(
            types in proptest::collection::vec("(bigint|varchar|struct|list|decimal\\([0-9]{1,2},-?[0-9]{1,2}\\)|Int64|Timestamp\\(Second, None\\)|nope)", 0..5),
            nullable in proptest::prelude::any::<bool>(),
        ) {
            let fields: Vec<serde_json::Value> = types
                .iter()
                .enumerate()
                .map(|(i, t)| serde_json::json!({"name": format!("f{i}"), "type": t, "nullable": nullable}))
                .collect();
            let text = serde_json::json!({"name": "s", "version": 1, "fields": fields}).to_string();
            let (_d, r) = registry_with(&[("s/1.json", &text)]);
            match r.get("s@1") {
                Ok(s) => {
                    let json = schema_to_json("s", 2, &s.schema).to_string();
                    let (_d2, r2) = registry_with(&[("s/2.json", &json)]);
                    proptest::prop_assert_eq!(r2.get("s@2").map(|s| s.schema), Ok(s.schema));
                }
                Err(e) => proptest::prop_assert!(e.to_string().contains("1.json"), "{}", e),
            }
        }
    }

    #[test]
    fn errors_name_the_file_and_the_field() {
        let (_d, r) = registry_with(&[
            (
                "a/1.json",
                r#"{"name":"a","version":1,"fields":[{"name":"x","type":"nope"}]}"#,
            ),
            ("b/1.json", r#"{"name":"b","version":2,"fields":[]}"#),
        ]);
        let e = r.get("a@1").unwrap_err().to_string();
        assert!(
            e.contains("a/1.json") && e.contains("fields[0] (`x`)") && e.contains("`nope`"),
            "{e}"
        );
        let e = r.get("b@1").unwrap_err().to_string();
        assert!(e.contains("says b@2"), "{e}");
        let e = r.get("a@7").unwrap_err().to_string();
        assert!(e.contains("versions present: [1]"), "{e}");
    }
}

//! The keys a config struct accepts, read from its `Deserialize` impl, so
//! that key lists (error hints, the docs check) never drift from the structs.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

/// The field names `T` deserializes (`#[serde(skip)]` fields excluded), as
/// serde's derive lists them. Empty for a type that is not a struct.
pub(crate) fn fields_of<T: for<'de> Deserialize<'de>>() -> &'static [&'static str] {
    let mut found: &'static [&'static str] = &[];
    let _ = T::deserialize(FieldRecorder { found: &mut found });
    found
}

/// Takes `keys` out of `table`, into a table of their own: the part of a
/// component's table that is decoded once for every kind.
pub(crate) fn split_off(table: &mut toml::Table, keys: &[&str]) -> toml::Table {
    keys.iter()
        .filter_map(|k| Some((k.to_string(), table.remove(*k)?)))
        .collect()
}

/// serde's "unknown field" message for `key`, listing `keys` as expected,
/// so the "did you mean" hint sees every key a table may have.
pub(crate) fn unknown_key(key: &str, keys: &[&str]) -> String {
    expected(&format!("unknown field `{key}`"), keys)
}

/// A table decoded in parts (shared keys, then the kind's own) gets serde's
/// message from the last part, which lists only that part's keys: list
/// `keys`, every key the table may have, instead.
pub(crate) fn with_all_keys(message: String, keys: &[&str]) -> String {
    let head = match message
        .split_once(", expected")
        .or_else(|| message.split_once(", there are no fields"))
    {
        Some((head, _)) if head.starts_with("unknown field `") => head,
        _ => return message,
    };
    expected(head, keys)
}

fn expected(head: &str, keys: &[&str]) -> String {
    let list: Vec<String> = keys.iter().map(|k| format!("`{k}`")).collect();
    format!("{head}, expected one of {}", list.join(", "))
}

/// A deserializer that records the fields of the struct asked for and stops.
struct FieldRecorder<'a> {
    found: &'a mut &'static [&'static str],
}

/// Ends the recording deserialization (it never produces a value).
#[derive(Debug)]
struct Stop;

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("field names recorded")
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Stop
    }
}

impl<'de> Deserializer<'de> for FieldRecorder<'_> {
    type Error = Stop;

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Stop> {
        *self.found = fields;
        Err(Stop)
    }

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Stop> {
        Err(Stop)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Example {
        a: u32,
        #[serde(rename = "b_key")]
        b: String,
        #[serde(skip)]
        c: bool,
    }

    #[test]
    fn messages_list_every_key() {
        let m = "unknown field `lokup`, expected one of `path`, `header`".to_string();
        assert_eq!(
            with_all_keys(m, &["path", "lookup"]),
            "unknown field `lokup`, expected one of `path`, `lookup`"
        );
        let m = "unknown field `x`, there are no fields".to_string();
        assert_eq!(
            with_all_keys(m, &["input"]),
            "unknown field `x`, expected one of `input`"
        );
        let m = "missing field `path`".to_string();
        assert_eq!(with_all_keys(m.clone(), &["path"]), m);
        assert_eq!(
            unknown_key("a", &["b"]),
            "unknown field `a`, expected one of `b`"
        );
    }

    #[test]
    fn fields_are_read_from_the_derive() {
        assert_eq!(fields_of::<Example>(), &["a", "b_key"]);
        assert!(fields_of::<u32>().is_empty());
    }
}

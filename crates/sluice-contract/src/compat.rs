//! Schema compatibility: can data written under one schema be read under
//! another, keeping every value?
//!
//! A reader maps the writer's columns by name (nested struct fields too).
//! Reading works when every field the reader wants is either in the data with
//! a type that widens to the reader's ([`promotes`], the table in
//! `docs/schemas.md`) and a nullability the reader accepts, or absent and
//! nullable (read as NULL). Fields the reader does not want are ignored.
//!
//! Modes compare two versions of a schema:
//! - `backward`: readers of the new version read data written at the old one;
//! - `forward`: readers of the old version read data written at the new one;
//! - `full`: both.
//!
//! Renames: when both versions give a field the same id (`PARQUET:field_id`)
//! under different names, the checker refuses it and says so — readers match
//! by name, so a rename would silently read NULLs.

use std::fmt;

use arrow_schema::{DataType, Field, Fields, Schema, TimeUnit};

use crate::registry::FIELD_ID;

/// Which readers must keep working.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// New readers, old data.
    Backward,
    /// Old readers, new data.
    Forward,
    /// Both.
    Full,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "backward" => Ok(Mode::Backward),
            "forward" => Ok(Mode::Forward),
            "full" => Ok(Mode::Full),
            other => Err(format!(
                "`{other}` is not a compatibility mode: backward, forward or full"
            )),
        }
    }
}

/// One way a change breaks readers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    /// Dotted path of the field (`device.os`, `tags[]`).
    pub field: String,
    /// What changed.
    pub change: String,
    /// Who it breaks, e.g. "readers of v2 reading data written at v1".
    pub breaks: String,
}

impl fmt::Display for Break {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}`: {} — breaks {}",
            self.field, self.change, self.breaks
        )
    }
}

/// The breaks of going from `old` (version `v_old`) to `new` under `mode`;
/// empty when the change is compatible.
pub fn check(old: &Schema, v_old: &str, new: &Schema, v_new: &str, mode: Mode) -> Vec<Break> {
    let mut out = Vec::new();
    if matches!(mode, Mode::Backward | Mode::Full) {
        let who = format!("readers of {v_new} reading data written at {v_old}");
        readable(old.fields(), new.fields(), "", &who, &mut out);
    }
    if matches!(mode, Mode::Forward | Mode::Full) {
        let who = format!("readers of {v_old} reading data written at {v_new}");
        readable(new.fields(), old.fields(), "", &who, &mut out);
    }
    renames(
        old.fields(),
        new.fields(),
        "",
        &format!("every reader matching {v_old} and {v_new} by name"),
        &mut out,
    );
    out
}

/// Breaks of reading data with `written` fields under `wanted` fields.
pub fn read_breaks(written: &Schema, wanted: &Schema, who: &str) -> Vec<Break> {
    let mut out = Vec::new();
    readable(written.fields(), wanted.fields(), "", who, &mut out);
    out
}

fn path(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

fn readable(written: &Fields, wanted: &Fields, prefix: &str, who: &str, out: &mut Vec<Break>) {
    for r in wanted {
        let here = path(prefix, r.name());
        match written.iter().find(|w| w.name() == r.name()) {
            None if r.is_nullable() => {}
            None => out.push(Break {
                field: here,
                change: "required (not null) but absent from the data".into(),
                breaks: who.into(),
            }),
            Some(w) => field_readable(w, r, &here, who, out),
        }
    }
}

fn field_readable(w: &Field, r: &Field, here: &str, who: &str, out: &mut Vec<Break>) {
    if w.is_nullable() && !r.is_nullable() {
        out.push(Break {
            field: here.into(),
            change: "nullable in the data but required (not null) by the reader".into(),
            breaks: who.into(),
        });
    }
    match (w.data_type(), r.data_type()) {
        (DataType::Struct(wf), DataType::Struct(rf)) => readable(wf, rf, here, who, out),
        (DataType::List(wi), DataType::List(ri) | DataType::LargeList(ri))
        | (DataType::LargeList(wi), DataType::LargeList(ri)) => {
            field_readable(wi, ri, &format!("{here}[]"), who, out)
        }
        (a, b) if promotes(a, b) => {}
        (a, b) => out.push(Break {
            field: here.into(),
            change: format!(
                "type {} in the data, {} for the reader: not a widening (see docs/schemas.md)",
                name(a),
                name(b)
            ),
            breaks: who.into(),
        }),
    }
}

fn renames(old: &Fields, new: &Fields, prefix: &str, who: &str, out: &mut Vec<Break>) {
    let id = |f: &Field| f.metadata().get(FIELD_ID).cloned();
    for o in old {
        let Some(oid) = id(o) else { continue };
        if let Some(n) = new
            .iter()
            .find(|n| id(n).as_ref() == Some(&oid) && n.name() != o.name())
        {
            out.push(Break {
                field: path(prefix, o.name()),
                change: format!(
                    "renamed to `{}` (field id {oid}); readers match fields by name, so the values would read as NULL — add the new field and keep the old one instead",
                    n.name()
                ),
                breaks: who.into(),
            });
        }
        if let (DataType::Struct(of), Some(DataType::Struct(nf))) = (
            o.data_type(),
            new.iter()
                .find(|n| n.name() == o.name())
                .map(|n| n.data_type()),
        ) {
            renames(of, nf, &path(prefix, o.name()), who, out);
        }
    }
}

fn name(t: &DataType) -> String {
    match t {
        DataType::Struct(_) => "struct".into(),
        DataType::List(_) => "list".into(),
        DataType::LargeList(_) => "large list".into(),
        other => other.to_string(),
    }
}

/// Whether every value of type `from` reads as the same value of type `to`.
/// The table (also in `docs/schemas.md`):
///
/// | from | to |
/// |---|---|
/// | Int8 → Int16 → Int32 → Int64 | any wider signed integer |
/// | UInt8 → UInt16 → UInt32 → UInt64 | any wider unsigned integer, or a signed integer twice as wide |
/// | Int8, Int16, UInt8, UInt16 | Float32, Float64 |
/// | Int32, UInt32 | Float64 |
/// | Float16 → Float32 → Float64 | wider floats |
/// | Decimal128(p, s) | Decimal128(p', s') with s' ≥ s and p' − s' ≥ p − s |
/// | Utf8, LargeUtf8, Utf8View (and the binary ones) | each other |
/// | Timestamp(s) → (ms) → (µs) | a finer unit up to µs, same time zone |
/// | Date32 | Date64 |
pub fn promotes(from: &DataType, to: &DataType) -> bool {
    use DataType::*;
    if from == to {
        return true;
    }
    let signed = |t: &DataType| match t {
        Int8 => Some(8),
        Int16 => Some(16),
        Int32 => Some(32),
        Int64 => Some(64),
        _ => None,
    };
    let unsigned = |t: &DataType| match t {
        UInt8 => Some(8),
        UInt16 => Some(16),
        UInt32 => Some(32),
        UInt64 => Some(64),
        _ => None,
    };
    let float = |t: &DataType| match t {
        Float16 => Some(11),
        Float32 => Some(24),
        Float64 => Some(53),
        _ => None,
    };
    let unit = |u: &TimeUnit| match u {
        TimeUnit::Second => 0,
        TimeUnit::Millisecond => 1,
        TimeUnit::Microsecond => 2,
        TimeUnit::Nanosecond => 3,
    };
    match (from, to) {
        (a, b) if signed(a).is_some() && signed(b).is_some() => signed(a) < signed(b),
        (a, b) if unsigned(a).is_some() && unsigned(b).is_some() => unsigned(a) < unsigned(b),
        (a, b) if unsigned(a).is_some() && signed(b).is_some() => {
            unsigned(a).unwrap_or(64) < signed(b).unwrap_or(0)
        }
        // an integer fits a float whose mantissa holds all its bits
        (a, b) if (signed(a).is_some() || unsigned(a).is_some()) && float(b).is_some() => {
            signed(a).or(unsigned(a)).unwrap_or(64) <= float(b).unwrap_or(0)
        }
        (a, b) if float(a).is_some() && float(b).is_some() => float(a) < float(b),
        (Decimal128(p, s), Decimal128(p2, s2)) => {
            s2 >= s && (*p2 as i16 - *s2 as i16) >= (*p as i16 - *s as i16)
        }
        // string and binary layouts hold the same values (view types are how
        // Parquet readers hand them out)
        (Utf8 | LargeUtf8 | Utf8View, Utf8 | LargeUtf8 | Utf8View) => true,
        (Binary | LargeBinary | BinaryView, Binary | LargeBinary | BinaryView) => true,
        (Date32, Date64) => true,
        // nanoseconds overflow after 2262: not a widening for every value
        (Timestamp(u1, tz1), Timestamp(u2, tz2)) => {
            tz1 == tz2 && unit(u1) < unit(u2) && *u2 != TimeUnit::Nanosecond
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(fields: Vec<Field>) -> Schema {
        Schema::new(fields)
    }

    #[test]
    fn adding_a_nullable_field_and_widening_are_backward_compatible() {
        let v1 = s(vec![Field::new("id", DataType::Int32, false)]);
        let v2 = s(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("note", DataType::Utf8, true),
        ]);
        assert!(check(&v1, "v1", &v2, "v2", Mode::Backward).is_empty());
        // old readers cannot take Int64 ids
        let f = check(&v1, "v1", &v2, "v2", Mode::Forward);
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(
            f[0].to_string()
                .contains("`id`: type Int64 in the data, Int32 for the reader"),
            "{}",
            f[0]
        );
        assert!(
            f[0].breaks
                .contains("readers of v1 reading data written at v2")
        );
    }

    #[test]
    fn a_new_required_field_breaks_backward_and_names_it() {
        let v1 = s(vec![Field::new("id", DataType::Int64, false)]);
        let v2 = s(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("shop", DataType::Utf8, false),
        ]);
        let b = check(&v1, "v1", &v2, "v2", Mode::Backward);
        assert_eq!(b[0].field, "shop");
        assert!(b[0].change.contains("required"));
        assert!(check(&v1, "v1", &v2, "v2", Mode::Forward).is_empty());
    }

    #[test]
    fn nested_struct_and_list_changes_are_followed() {
        let dev = |extra: bool| {
            let mut f = vec![Field::new("os", DataType::Utf8, true)];
            if extra {
                f.push(Field::new("version", DataType::Int32, true));
            }
            DataType::Struct(f.into())
        };
        let v1 = s(vec![
            Field::new("device", dev(false), true),
            Field::new_list("tags", Field::new_list_field(DataType::Int32, true), true),
        ]);
        let v2 = s(vec![
            Field::new("device", dev(true), true),
            Field::new_list("tags", Field::new_list_field(DataType::Int16, true), true),
        ]);
        let b = check(&v1, "v1", &v2, "v2", Mode::Full);
        let fields: Vec<_> = b.iter().map(|b| b.field.as_str()).collect();
        assert_eq!(fields, ["tags[]"], "{b:?}");
    }

    #[test]
    fn renames_by_field_id_are_refused() {
        let id = |n: &str, i: &str| {
            Field::new(n, DataType::Int64, true)
                .with_metadata([(FIELD_ID.to_string(), i.to_string())].into())
        };
        let v1 = s(vec![id("amount", "3")]);
        let v2 = s(vec![id("total", "3")]);
        let b = check(&v1, "v1", &v2, "v2", Mode::Backward);
        assert!(
            b.iter()
                .any(|b| b.change.contains("renamed to `total` (field id 3)")),
            "{b:?}"
        );
    }

    #[test]
    fn the_promotion_table() {
        use DataType::*;
        assert!(promotes(&Int8, &Int64) && !promotes(&Int64, &Int32));
        assert!(
            promotes(&UInt32, &Int64) && !promotes(&UInt32, &Int32) && !promotes(&Int32, &UInt64)
        );
        assert!(
            promotes(&Int32, &Float64)
                && !promotes(&Int32, &Float32)
                && !promotes(&Int64, &Float64)
        );
        assert!(promotes(&Float32, &Float64) && !promotes(&Float64, &Float32));
        assert!(
            promotes(&Decimal128(10, 2), &Decimal128(12, 3))
                && !promotes(&Decimal128(10, 2), &Decimal128(10, 3))
        );
        assert!(promotes(&Utf8, &LargeUtf8) && !promotes(&Utf8, &Int64));
        let ts = |u| Timestamp(u, Some("UTC".into()));
        assert!(promotes(
            &ts(TimeUnit::Millisecond),
            &ts(TimeUnit::Microsecond)
        ));
        assert!(!promotes(
            &ts(TimeUnit::Microsecond),
            &ts(TimeUnit::Nanosecond)
        ));
        assert!(!promotes(
            &ts(TimeUnit::Millisecond),
            &Timestamp(TimeUnit::Microsecond, None)
        ));
    }
}

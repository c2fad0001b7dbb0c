//! Column types written by people: SQL names (`bigint`, `decimal(15,2)`,
//! `timestamptz`) or Arrow's own names (`Int64`, `Timestamp(Millisecond, None)`),
//! shared by pipeline specs and the schema registry.

use std::str::FromStr;

use arrow_schema::{DataType, TimeUnit};

/// Parses a column type written in a pipeline spec or a registry schema.
pub fn parse_data_type(text: &str) -> Result<DataType, String> {
    let t = text.trim();
    let lower = t.to_ascii_lowercase();
    let simple = match lower.as_str() {
        "bool" | "boolean" => Some(DataType::Boolean),
        "tinyint" | "int8" => Some(DataType::Int8),
        "smallint" | "int16" => Some(DataType::Int16),
        "int" | "integer" | "int32" => Some(DataType::Int32),
        "bigint" | "long" | "int64" => Some(DataType::Int64),
        "uint8" => Some(DataType::UInt8),
        "uint16" => Some(DataType::UInt16),
        "uint32" => Some(DataType::UInt32),
        "uint64" => Some(DataType::UInt64),
        "real" | "float" | "float32" => Some(DataType::Float32),
        "double" | "float64" => Some(DataType::Float64),
        "string" | "text" | "varchar" | "utf8" => Some(DataType::Utf8),
        "large_string" | "largeutf8" => Some(DataType::LargeUtf8),
        "binary" | "bytea" | "blob" => Some(DataType::Binary),
        "date" | "date32" => Some(DataType::Date32),
        "timestamp" => Some(DataType::Timestamp(TimeUnit::Microsecond, None)),
        "timestamptz" => Some(DataType::Timestamp(
            TimeUnit::Microsecond,
            Some("UTC".into()),
        )),
        "timestamp_ms" => Some(DataType::Timestamp(TimeUnit::Millisecond, None)),
        _ => None,
    };
    if let Some(dt) = simple {
        return Ok(dt);
    }
    if let Some(args) = lower
        .strip_prefix("decimal(")
        .and_then(|r| r.strip_suffix(')'))
    {
        let mut parts = args.split(',').map(|p| p.trim().parse::<i64>());
        if let (Some(Ok(p)), Some(Ok(s)), None) = (parts.next(), parts.next(), parts.next())
            && (1..=38).contains(&p)
            // not `abs`: it overflows on i64::MIN (a panic, or in a release
            // build a wrap that would pass for scale 0)
            && s.unsigned_abs() <= p.unsigned_abs()
        {
            return Ok(DataType::Decimal128(p as u8, s as i8));
        }
        return Err(format!(
            "`{text}`: decimal needs precision 1..=38 and a scale, e.g. decimal(15,2)"
        ));
    }
    DataType::from_str(t).map_err(|e| {
        format!("`{text}` is not a known type ({e}); use an SQL name such as bigint, double, varchar, date, timestamp, decimal(15,2) or an Arrow name such as Int64")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Types a registry file or a pipeline may name, as Arrow displays them
    /// (the registry writes that form back).
    fn data_type() -> impl Strategy<Value = DataType> {
        let unit = prop::sample::select(vec![
            TimeUnit::Second,
            TimeUnit::Millisecond,
            TimeUnit::Microsecond,
            TimeUnit::Nanosecond,
        ]);
        let tz = prop::option::of(prop::sample::select(vec!["UTC", "+02:00", "Europe/Oslo"]));
        prop_oneof![
            prop::sample::select(vec![
                DataType::Boolean,
                DataType::Int8,
                DataType::Int16,
                DataType::Int32,
                DataType::Int64,
                DataType::UInt8,
                DataType::UInt16,
                DataType::UInt32,
                DataType::UInt64,
                DataType::Float16,
                DataType::Float32,
                DataType::Float64,
                DataType::Utf8,
                DataType::LargeUtf8,
                DataType::Utf8View,
                DataType::Binary,
                DataType::LargeBinary,
                DataType::BinaryView,
                DataType::Date32,
                DataType::Date64,
            ]),
            (unit.clone(), tz).prop_map(|(u, tz)| DataType::Timestamp(u, tz.map(Into::into))),
            unit.prop_map(DataType::Duration),
            (1u8..=38)
                .prop_flat_map(|p| (Just(p), -(p as i8)..=(p as i8)))
                .prop_map(|(p, s)| DataType::Decimal128(p, s)),
        ]
    }

    proptest! {
        /// Whatever text a person writes, it is a type or a refusal that
        /// quotes it; never a panic.
        #[test]
        fn any_text_is_a_type_or_a_refusal(text in ".{0,40}") {
            if let Err(e) = parse_data_type(&text) {
                prop_assert!(e.contains(&format!("`{text}`")), "{e}");
            }
        }

        /// Text that looks like a type with arguments goes deeper into
        /// both parsers (ours for `decimal`, Arrow's for the rest).
        #[test]
        fn type_like_text_is_a_type_or_a_refusal(
            head in prop::sample::select(vec!["decimal(", "Decimal128(", "Decimal256(", "Timestamp(", "Duration(", "List(", "Struct(", "Dictionary(", "FixedSizeBinary(", "Map(", "Time32(", "Interval("]),
            tail in "[0-9a-zA-Z(),:\\\" \\-+]{0,30}",
        ) {
            let text = format!("{head}{tail}");
            if let Err(e) = parse_data_type(&text) {
                prop_assert!(e.contains(&format!("`{text}`")), "{e}");
            }
        }

        /// `decimal(p, s)` is read as written when 1 ≤ p ≤ 38 and |s| ≤ p,
        /// and refused otherwise, for any numbers: never truncated into
        /// another type.
        #[test]
        fn decimals_are_read_as_written_or_refused(p in any::<i64>(), s in any::<i64>(), small in any::<bool>()) {
            let (p, s) = if small { (p % 50, s % 50) } else { (p, s) };
            let got = parse_data_type(&format!("decimal({p}, {s})"));
            let valid = (1..=38).contains(&p) && s.checked_abs().is_some_and(|a| a <= p);
            if valid {
                prop_assert_eq!(got, Ok(DataType::Decimal128(p as u8, s as i8)));
            } else {
                prop_assert!(got.is_err(), "decimal({}, {}) read as {:?}", p, s, got);
            }
        }

        /// The name the registry writes for a type reads back as that type.
        #[test]
        fn arrow_names_read_back(dt in data_type()) {
            prop_assert_eq!(parse_data_type(&dt.to_string()), Ok(dt.clone()));
        }
    }

    #[test]
    fn the_smallest_scale_is_refused_not_wrapped() {
        let got = parse_data_type(&format!("decimal(10, {})", i64::MIN));
        assert!(got.is_err(), "{got:?}");
    }
}

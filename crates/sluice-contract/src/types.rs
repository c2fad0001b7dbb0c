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
            && s.abs() <= p
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

//! Human-friendly values in pipeline specs: byte sizes, durations, column types.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use datafusion::arrow::datatypes::{Field, Schema};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A size in bytes, written as an integer or as `"128MiB"`, `"64MB"`, `"512KiB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let split = t
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let value: f64 = num.parse().map_err(|_| {
            format!("`{s}` is not a size; write bytes as an integer or like \"128MiB\"")
        })?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" => 1_000,
            "kib" | "k" => 1 << 10,
            "mb" => 1_000_000,
            "mib" | "m" => 1 << 20,
            "gb" => 1_000_000_000,
            "gib" | "g" => 1 << 30,
            other => {
                return Err(format!(
                    "unknown size unit `{other}` in `{s}`; use B, KiB, MiB, GiB, KB, MB or GB"
                ));
            }
        };
        let bytes = value * mult as f64;
        if !bytes.is_finite() || bytes >= u64::MAX as f64 {
            return Err(format!("`{s}` is more bytes than sluice can count"));
        }
        if bytes.fract() != 0.0 {
            return Err(format!("`{s}` is not a whole number of bytes"));
        }
        Ok(ByteSize(bytes as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0 as f64;
        if self.0 >= 1 << 30 {
            write!(f, "{:.1}GiB", b / (1u64 << 30) as f64)
        } else if self.0 >= 1 << 20 {
            write!(f, "{:.1}MiB", b / (1u64 << 20) as f64)
        } else if self.0 >= 1 << 10 {
            write!(f, "{:.1}KiB", b / 1024.0)
        } else {
            write!(f, "{}B", self.0)
        }
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size in bytes (integer) or a string like \"128MiB\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

/// A duration written as `"250ms"`, `"1s"`, `"2m"`, `"1h"` or `"7d"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let split = t
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let value: f64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a duration; write it like \"500ms\" or \"2s\""))?;
        let secs = match unit.trim() {
            "ms" => value / 1000.0,
            "s" | "" => value,
            "m" | "min" => value * 60.0,
            "h" => value * 3600.0,
            "d" => value * 86400.0,
            other => {
                return Err(format!(
                    "unknown duration unit `{other}` in `{s}`; use ms, s, m, h or d"
                ));
            }
        };
        Duration::try_from_secs_f64(secs)
            .map(HumanDuration)
            .map_err(|_| {
                format!("`{s}` is not a duration sluice can wait (at most about 584 billion years)")
            })
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration string like \"500ms\" or \"2s\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<HumanDuration, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// One declared column of a source schema.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnSpec {
    /// Column name.
    pub name: String,
    /// Column type: an SQL name (`bigint`, `varchar`, `decimal(15,2)`,
    /// `timestamp`) or an Arrow name (`Int64`, `Utf8`, `Timestamp(Millisecond, None)`).
    #[serde(rename = "type")]
    pub data_type: String,
    /// Whether the column may hold nulls (default true).
    #[serde(default = "default_true")]
    pub nullable: bool,
}

fn default_true() -> bool {
    true
}

pub(crate) use sluice_contract::types::parse_data_type;

/// Builds an Arrow schema from declared columns; the error names the column.
pub(crate) fn schema_from_columns(columns: &[ColumnSpec]) -> Result<Schema, String> {
    let mut fields = Vec::with_capacity(columns.len());
    for (i, c) in columns.iter().enumerate() {
        let dt = parse_data_type(&c.data_type)
            .map_err(|e| format!("columns[{i}] (`{}`): {e}", c.name))?;
        if columns[..i].iter().any(|o| o.name == c.name) {
            return Err(format!(
                "columns[{i}]: column `{}` is declared twice",
                c.name
            ));
        }
        fields.push(Field::new(&c.name, dt, c.nullable));
    }
    Ok(Schema::new(fields))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{DataType, TimeUnit};

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!("128MiB".parse::<ByteSize>().unwrap(), ByteSize(128 << 20));
        assert_eq!("64MB".parse::<ByteSize>().unwrap(), ByteSize(64_000_000));
        assert_eq!("1.5GiB".parse::<ByteSize>().unwrap(), ByteSize(3 << 29));
        assert!(
            "12 parsecs"
                .parse::<ByteSize>()
                .unwrap_err()
                .contains("parsecs")
        );
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(
            "250ms".parse::<HumanDuration>().unwrap().0,
            Duration::from_millis(250)
        );
        assert_eq!(
            "2m".parse::<HumanDuration>().unwrap().0,
            Duration::from_secs(120)
        );
        assert!("soon".parse::<HumanDuration>().is_err());
    }

    #[test]
    fn types_accept_sql_and_arrow_names() {
        assert_eq!(parse_data_type("BIGINT").unwrap(), DataType::Int64);
        assert_eq!(
            parse_data_type("decimal(15, 2)").unwrap(),
            DataType::Decimal128(15, 2)
        );
        assert_eq!(parse_data_type("Int16").unwrap(), DataType::Int16);
        assert_eq!(
            parse_data_type("Timestamp(Millisecond, None)").unwrap(),
            DataType::Timestamp(TimeUnit::Millisecond, None)
        );
        assert!(parse_data_type("decimal(99,2)").is_err());
        assert!(parse_data_type("widget").unwrap_err().contains("widget"));
    }

    #[test]
    fn duplicate_columns_are_refused() {
        let cols = vec![
            ColumnSpec {
                name: "a".into(),
                data_type: "int".into(),
                nullable: true,
            },
            ColumnSpec {
                name: "a".into(),
                data_type: "int".into(),
                nullable: true,
            },
        ];
        assert!(
            schema_from_columns(&cols)
                .unwrap_err()
                .contains("declared twice")
        );
    }
}

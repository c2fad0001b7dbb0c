//! CSV records decoded straight into Arrow columns, in one pass over their
//! fields.
//!
//! The framer has already found each record's borders and counted its
//! fields; handing the bytes to arrow's CSV reader meant parsing them a second
//! time (its `csv_core` pass was the largest single cost of a CSV scan). Here
//! the fields are cut at the delimiters, quoted ones unquoted into a side
//! buffer, and each column is read by arrow's own value parsers
//! (`cast_utils::Parser`, `string_to_datetime`), so a value reads exactly as
//! through arrow's reader. A value that does not read costs its own row, with
//! a message naming the column and the text, and no batch is decoded twice to
//! find it.
//!
//! Types arrow's CSV reader has and this module does not (dictionaries,
//! `Float16`) go the old way, through arrow's reader
//! ([`supports`] decides).

use std::ops::Range;
use std::sync::Arc;

use chrono::{TimeZone, Utc};
use datafusion::arrow::array::timezone::Tz;
use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, NullArray, PrimitiveBuilder, StringBuilder, StringViewBuilder,
};
use datafusion::arrow::compute::kernels::cast_utils::{Parser, string_to_datetime};
use datafusion::arrow::datatypes::{
    ArrowTimestampType, DataType, Date32Type, Date64Type, Float32Type, Float64Type, Int8Type,
    Int16Type, Int32Type, Int64Type, Time32MillisecondType, Time32SecondType,
    Time64MicrosecondType, Time64NanosecondType, TimeUnit, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType, UInt8Type, UInt16Type,
    UInt32Type, UInt64Type,
};
use datafusion::common::internal_err;
use sluice_contract::ErrorCode;

use super::CsvOptions;
use super::decoding::{Bad, decimal_column, field_count_problem, is_decimal, is_infinity_literal};

/// Whether a column of type `t` is read here (else through arrow's reader).
pub(super) fn supports(t: &DataType) -> bool {
    use DataType::*;
    matches!(
        t,
        Null | Boolean
            | Int8
            | Int16
            | Int32
            | Int64
            | UInt8
            | UInt16
            | UInt32
            | UInt64
            | Float32
            | Float64
            | Decimal32(..)
            | Decimal64(..)
            | Decimal128(..)
            | Decimal256(..)
            | Date32
            | Date64
            | Time32(TimeUnit::Second | TimeUnit::Millisecond)
            | Time64(TimeUnit::Microsecond | TimeUnit::Nanosecond)
            | Timestamp(..)
            | Utf8
            | Utf8View
    )
}

/// Whether the dialect can be cut here: its special bytes are ASCII, so a cut
/// next to one always falls between two characters.
pub(super) fn dialect_supported(o: &CsvOptions) -> bool {
    o.delimiter.is_ascii() && o.quote.is_ascii() && o.escape.is_none_or(|e| e.is_ascii())
}

/// The buffers a cut fills, kept from batch to batch (fresh ones per batch
/// cost page faults: the kernel zeroes every new page).
#[derive(Debug, Default)]
pub(crate) struct CutBuffers {
    bounds: Vec<usize>,
    /// One record's bounds, before they are spread over the columns.
    record: Vec<usize>,
    /// Quoted records, unquoted (or every record, when the batch is not
    /// all UTF-8).
    side: String,
    rows: Vec<usize>,
}

/// The fields of a batch's records, cut.
///
/// Row `r`'s field `j` spans `bounds[j * stride + r] ..
/// bounds[(j + 1) * stride + r] - 1`: every field is followed by one
/// separator byte (its delimiter, or the record's line end). The bounds are
/// laid out column by column, so reading a column walks memory in order
/// (row by row, each field was a cache miss away from the last). Positions below
/// `base` are in `text` (the records as they came), the others at `base`
/// onwards in `side`.
pub(super) struct CutFields<'a> {
    /// The records as they came (when all of them are UTF-8).
    text: &'a str,
    side: &'a str,
    base: usize,
    bounds: &'a [usize],
    stride: usize,
    /// The index (among the records handed over) of each row.
    pub(super) rows: &'a [usize],
}

impl<'a> CutFields<'a> {
    /// Column `column`'s fields: the start of each row's, and the start of
    /// the next field (one past its separator).
    fn column(&self, column: usize) -> (&'a [usize], &'a [usize]) {
        let rows = self.len();
        let at = column * self.stride;
        let next = at + self.stride;
        (&self.bounds[at..at + rows], &self.bounds[next..next + rows])
    }

    /// The text of a field from its bounds (see [`CutFields::column`]).
    #[inline]
    fn field_text(&self, start: usize, next: usize) -> &'a str {
        let end = next - 1;
        // bounds sit next to ASCII bytes (see `dialect_supported`) in valid
        // UTF-8, so always between characters: `get` cannot fail, and is
        // used so that even a broken invariant is not a panic
        let field = if start >= self.base {
            self.side.get(start - self.base..end - self.base)
        } else {
            self.text.get(start..end)
        };
        field.unwrap_or_default()
    }

    /// The bytes of column `column`'s fields, all rows.
    fn column_bytes(&self, column: usize) -> usize {
        let (starts, nexts) = self.column(column);
        nexts.iter().zip(starts).map(|(n, s)| n - 1 - s).sum()
    }

    /// How many rows (records cut into the expected number of fields).
    pub(super) fn len(&self) -> usize {
        self.rows.len()
    }
}

/// Cuts `spans` of `raw` (each record followed by a line end) into `width`
/// fields each. Records that are not UTF-8, or do not have `width` fields,
/// are pushed to `bad` and get no row.
pub(super) fn cut<'a>(
    raw: &'a [u8],
    spans: &[Range<usize>],
    o: &CsvOptions,
    width: usize,
    bad: &mut Vec<Bad>,
    buffers: &'a mut CutBuffers,
) -> CutFields<'a> {
    let CutBuffers {
        bounds,
        record: one,
        side,
        rows,
    } = buffers;
    let stride = spans.len();
    bounds.clear();
    bounds.resize((width + 1) * stride, 0);
    side.clear();
    rows.clear();
    // the side buffer's positions start past every position in `raw`
    let base = raw.len() + 1;
    let text = std::str::from_utf8(raw).ok();
    for (index, span) in spans.iter().enumerate() {
        let record = &raw[span.clone()];
        one.clear();
        // the common case: no quote, and fields are the bytes between
        // delimiters
        let mut in_place = text.is_some();
        if in_place {
            one.push(span.start);
            in_place = delimiters_unless_quoted(record, span.start, o.delimiter, o.quote, one);
        }
        if in_place {
            one.push(span.end + 1);
        } else {
            // the batch's text when it is all UTF-8 (a record's ends are line
            // ends, so between characters), else this record checked alone
            let text = text.and_then(|t| t.get(span.clone()));
            let Some(record) = text.or_else(|| std::str::from_utf8(record).ok()) else {
                bad.push(Bad {
                    index,
                    code: ErrorCode::Malformed,
                    message: "invalid UTF-8".to_string(),
                });
                continue;
            };
            one.clear();
            unquote(record, o, side, one, base);
        }
        // a record cut into the wrong number of fields gets no row (the
        // framer counted them already; this keeps the two from ever
        // disagreeing)
        if one.len() != width + 1 {
            let p = field_count_problem(one.len() - 1, width);
            bad.push(Bad {
                index,
                code: p.code,
                message: p.message,
            });
            continue;
        }
        let row = rows.len();
        for (column, bound) in one.iter().enumerate() {
            bounds[column * stride + row] = *bound;
        }
        rows.push(index);
    }
    CutFields {
        text: text.unwrap_or_default(),
        side,
        base,
        bounds,
        stride,
        rows,
    }
}

/// Pushes `offset` plus one past each delimiter of `record` to `bounds`;
/// false (and stops) at a quote.
///
/// Eight bytes at a time, as one `u64` (fields are short: a search call per
/// field costs more than it saves, and a byte loop is a third slower).
fn delimiters_unless_quoted(
    record: &[u8],
    offset: usize,
    delimiter: u8,
    quote: u8,
    bounds: &mut Vec<usize>,
) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    // the top bit of each byte of `x` that is zero, exactly (no borrow
    // between bytes, unlike the shorter `(x - ONES) & !x` test)
    let zero_bytes = |x: u64| !(((x & LOW7) + LOW7) | x | LOW7);
    let (d, q) = (ONES * u64::from(delimiter), ONES * u64::from(quote));
    let word = |w: u64, at: usize, bounds: &mut Vec<usize>| {
        if zero_bytes(w ^ q) != 0 {
            return false;
        }
        let mut hits = zero_bytes(w ^ d);
        while hits != 0 {
            bounds.push(offset + at + (hits.trailing_zeros() / 8) as usize + 1);
            hits &= hits - 1;
        }
        true
    };
    let mut words = record.chunks_exact(8);
    let mut at = 0;
    for chunk in &mut words {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(chunk);
        if !word(u64::from_le_bytes(bytes), at, bounds) {
            return false;
        }
        at += 8;
    }
    // the tail, padded with a byte that is neither delimiter nor quote
    let rest = words.remainder();
    let filler = (0u8..=2)
        .find(|b| *b != delimiter && *b != quote)
        .unwrap_or(b'a');
    let mut bytes = [filler; 8];
    bytes[..rest.len()].copy_from_slice(rest);
    word(u64::from_le_bytes(bytes), at, bounds)
}

/// Appends `record`'s fields to `out`, unquoted as arrow's reader (csv_core)
/// does: a field that starts with a quote runs to its closing quote, a
/// doubled quote inside is one quote, and the escape byte (if any) takes the
/// next byte as it is. Pushes the start of every field, then the end of the
/// record plus one, to `bounds` (as positions in `out` plus `base`).
fn unquote(record: &str, o: &CsvOptions, out: &mut String, bounds: &mut Vec<usize>, base: usize) {
    let b = record.as_bytes();
    // `run` is the start of the bytes not yet copied; cuts are made only
    // next to ASCII special bytes, so every slice is whole characters
    let mut run = 0;
    let mut i = 0;
    let mut quoted = false;
    let mut field_start = 0;
    bounds.push(base + out.len());
    while i < b.len() {
        let c = b[i];
        if quoted {
            if Some(c) == o.escape && c != o.quote {
                out.push_str(&record[run..i]);
                run = i + 1;
                i += 2;
            } else if c == o.quote {
                out.push_str(&record[run..i]);
                if b.get(i + 1) == Some(&o.quote) {
                    // a doubled quote: the second one is kept
                    run = i + 1;
                    i += 2;
                } else {
                    quoted = false;
                    run = i + 1;
                    i += 1;
                }
            } else {
                i += 1;
            }
        } else if c == o.delimiter {
            out.push_str(&record[run..i]);
            out.push(char::from(c));
            bounds.push(base + out.len());
            run = i + 1;
            field_start = i + 1;
            i += 1;
        } else if c == o.quote && i == field_start {
            quoted = true;
            run = i + 1;
            i += 1;
        } else {
            i += 1;
        }
    }
    out.push_str(record.get(run..).unwrap_or_default());
    out.push('\n');
    bounds.push(base + out.len());
}

/// Reads column `column` of `fields` as `target`; a value that does not read
/// is passed to `refuse` (with its row and why) and becomes a null. An empty
/// field is a null, as in arrow's reader.
pub(super) fn read_column(
    fields: &CutFields<'_>,
    column: usize,
    target: &DataType,
    refuse: &mut impl FnMut(usize, ErrorCode, String),
) -> datafusion::common::Result<ArrayRef> {
    let rows = fields.len();
    let (starts, nexts) = fields.column(column);
    let text =
        |row: usize| Some(fields.field_text(starts[row], nexts[row])).filter(|s| !s.is_empty());
    let mut mismatch = |row: usize, m: String| refuse(row, ErrorCode::TypeMismatch, m);
    Ok(match target {
        DataType::Null => Arc::new(NullArray::new(rows)),
        DataType::Boolean => {
            let mut b = BooleanBuilder::with_capacity(rows);
            for row in 0..rows {
                match text(row) {
                    None => b.append_null(),
                    Some(s) if s.eq_ignore_ascii_case("true") => b.append_value(true),
                    Some(s) if s.eq_ignore_ascii_case("false") => b.append_value(false),
                    Some(s) => {
                        mismatch(row, not_a(s, target));
                        b.append_null();
                    }
                }
            }
            Arc::new(b.finish())
        }
        DataType::Int8 => parsed::<Int8Type>(rows, text, &mut mismatch, take_any),
        DataType::Int16 => parsed::<Int16Type>(rows, text, &mut mismatch, take_any),
        DataType::Int32 => parsed::<Int32Type>(rows, text, &mut mismatch, take_any),
        DataType::Int64 => parsed::<Int64Type>(rows, text, &mut mismatch, take_any),
        DataType::UInt8 => parsed::<UInt8Type>(rows, text, &mut mismatch, take_any),
        DataType::UInt16 => parsed::<UInt16Type>(rows, text, &mut mismatch, take_any),
        DataType::UInt32 => parsed::<UInt32Type>(rows, text, &mut mismatch, take_any),
        DataType::UInt64 => parsed::<UInt64Type>(rows, text, &mut mismatch, take_any),
        DataType::Float32 => parsed::<Float32Type>(rows, text, &mut mismatch, |v, s| {
            overflowed(v.is_infinite(), s)
        }),
        DataType::Float64 => parsed::<Float64Type>(rows, text, &mut mismatch, |v, s| {
            overflowed(v.is_infinite(), s)
        }),
        DataType::Date32 => parsed::<Date32Type>(rows, text, &mut mismatch, take_any),
        DataType::Date64 => parsed::<Date64Type>(rows, text, &mut mismatch, take_any),
        DataType::Time32(TimeUnit::Second) => {
            parsed::<Time32SecondType>(rows, text, &mut mismatch, take_any)
        }
        DataType::Time32(TimeUnit::Millisecond) => {
            parsed::<Time32MillisecondType>(rows, text, &mut mismatch, take_any)
        }
        DataType::Time64(TimeUnit::Microsecond) => {
            parsed::<Time64MicrosecondType>(rows, text, &mut mismatch, take_any)
        }
        DataType::Time64(TimeUnit::Nanosecond) => {
            parsed::<Time64NanosecondType>(rows, text, &mut mismatch, take_any)
        }
        DataType::Timestamp(unit, zone) => match zone {
            Some(z) => {
                let tz: Tz = z.parse()?;
                timestamps(*unit, zone, rows, text, &tz, &mut mismatch)
            }
            None => timestamps(*unit, zone, rows, text, &Utc, &mut mismatch),
        },
        t if is_decimal(t) => match decimal_column(t, rows, text, &mut mismatch) {
            Some(column) => column?,
            None => return internal_err!("{t} is not a decimal type"),
        },
        DataType::Utf8 => {
            let mut b = StringBuilder::with_capacity(rows, fields.column_bytes(column));
            for row in 0..rows {
                b.append_option(text(row));
            }
            Arc::new(b.finish())
        }
        DataType::Utf8View => {
            let mut b = StringViewBuilder::with_capacity(rows);
            for row in 0..rows {
                b.append_option(text(row));
            }
            Arc::new(b.finish())
        }
        other => {
            return Err(datafusion::common::DataFusionError::Internal(format!(
                "CSV columns of type {other} are read by arrow's reader"
            )));
        }
    })
}

fn not_a(text: &str, target: &DataType) -> String {
    format!("{text:?} is not a valid {target}")
}

/// A column of values read by arrow's parser for `T`; `refuse_value` may
/// still refuse a parsed value (saying why).
fn parsed<'s, T: Parser>(
    rows: usize,
    text: impl Fn(usize) -> Option<&'s str>,
    mismatch: &mut impl FnMut(usize, String),
    refuse_value: impl Fn(T::Native, &str) -> Option<String>,
) -> ArrayRef {
    let mut b = PrimitiveBuilder::<T>::with_capacity(rows);
    for row in 0..rows {
        let Some(s) = text(row) else {
            b.append_null();
            continue;
        };
        let why = match T::parse(s) {
            Some(v) => match refuse_value(v, s) {
                None => {
                    b.append_value(v);
                    continue;
                }
                Some(why) => why,
            },
            None => not_a(s, &T::DATA_TYPE),
        };
        mismatch(row, why);
        b.append_null();
    }
    Arc::new(b.finish())
}

/// Any value arrow's parser reads is taken.
fn take_any<V>(_: V, _: &str) -> Option<String> {
    None
}

/// A float too large for its type, which arrow's parser reads as infinity,
/// is refused unless it was written as infinity.
fn overflowed(infinite: bool, s: &str) -> Option<String> {
    (infinite && !is_infinity_literal(s)).then(|| format!("{s} is out of range for a float"))
}

/// Timestamps as arrow's reader reads them (`string_to_datetime` in `tz`,
/// the column's zone, or UTC when it has none).
fn timestamps<'s, Z: TimeZone>(
    unit: TimeUnit,
    zone: &Option<Arc<str>>,
    rows: usize,
    text: impl Fn(usize) -> Option<&'s str>,
    tz: &Z,
    mismatch: &mut impl FnMut(usize, String),
) -> ArrayRef {
    fn build<'s, T: ArrowTimestampType, Z: TimeZone>(
        zone: &Option<Arc<str>>,
        rows: usize,
        text: impl Fn(usize) -> Option<&'s str>,
        tz: &Z,
        mismatch: &mut impl FnMut(usize, String),
    ) -> ArrayRef {
        let mut b = PrimitiveBuilder::<T>::with_capacity(rows);
        for row in 0..rows {
            let Some(s) = text(row) else {
                b.append_null();
                continue;
            };
            let value = string_to_datetime(tz, s)
                .map_err(|e| e.to_string())
                .and_then(|d| {
                    match T::UNIT {
                        TimeUnit::Second => Some(d.timestamp()),
                        TimeUnit::Millisecond => Some(d.timestamp_millis()),
                        TimeUnit::Microsecond => Some(d.timestamp_micros()),
                        TimeUnit::Nanosecond => d.timestamp_nanos_opt(),
                    }
                    .ok_or_else(|| format!("{s:?} is out of range for nanoseconds"))
                });
            match value {
                Ok(v) => b.append_value(v),
                Err(m) => {
                    mismatch(row, m);
                    b.append_null();
                }
            }
        }
        Arc::new(b.finish().with_timezone_opt(zone.clone()))
    }
    match unit {
        TimeUnit::Second => build::<TimestampSecondType, Z>(zone, rows, text, tz, mismatch),
        TimeUnit::Millisecond => {
            build::<TimestampMillisecondType, Z>(zone, rows, text, tz, mismatch)
        }
        TimeUnit::Microsecond => {
            build::<TimestampMicrosecondType, Z>(zone, rows, text, tz, mismatch)
        }
        TimeUnit::Nanosecond => build::<TimestampNanosecondType, Z>(zone, rows, text, tz, mismatch),
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::datatypes::{Field, Schema};
    use proptest::prelude::*;

    use super::super::LineFormat;
    use super::super::decoding::{BatchDecoder, packed};
    use super::super::framing::Framer;
    use super::*;

    /// Every type read here, zones and units included.
    fn types() -> Vec<DataType> {
        vec![
            DataType::Null,
            DataType::Boolean,
            DataType::Int8,
            DataType::Int32,
            DataType::Int64,
            DataType::UInt16,
            DataType::UInt64,
            DataType::Float32,
            DataType::Float64,
            DataType::Decimal128(10, 2),
            DataType::Decimal256(40, 5),
            DataType::Decimal32(5, 2),
            DataType::Decimal64(12, 3),
            DataType::Date32,
            DataType::Date64,
            DataType::Time32(TimeUnit::Second),
            DataType::Time64(TimeUnit::Nanosecond),
            DataType::Timestamp(TimeUnit::Millisecond, None),
            DataType::Timestamp(TimeUnit::Microsecond, Some("+02:00".into())),
            DataType::Timestamp(TimeUnit::Nanosecond, Some("America/New_York".into())),
            DataType::Timestamp(TimeUnit::Second, None),
            DataType::Utf8,
            DataType::Utf8View,
        ]
    }

    /// Values that read as some types and not others, at their edges.
    const VALUES: &[&str] = &[
        "",
        "0",
        "-1",
        "127",
        "128",
        "-129",
        "255",
        "65536",
        "4294967296",
        "18446744073709551615",
        "9223372036854775808",
        "-9223372036854775809",
        "+5",
        "1.5",
        "7.0",
        "-0.125",
        "1e400",
        "-1e40",
        "3.4e39",
        "inf",
        "-Infinity",
        "NaN",
        "true",
        "FALSE",
        "tRuE",
        "yes",
        "2024-01-02",
        "2024-02-30",
        "99999-01-01",
        "1970-01-01T00:00:00",
        "2024-01-02 03:04:05.123456789",
        "2024-01-02T03:04:05Z",
        "2024-01-02T03:04:05+05:30",
        "2262-04-12T00:00:00",
        "12:34:56",
        "12:34:56.789",
        "25:00:00",
        " 1",
        "1 ",
        "1.005",
        "123456789.12",
        "abc",
        "héllo",
        "日本語",
        "a\"b",
        "a,b",
        "x\ny",
        "\"\"",
        "a\\b",
        "\\\"",
    ];

    /// One field as written: bare, quoted (doubled or escaped inner quotes),
    /// or with text after its closing quote; now and then not UTF-8.
    fn render(value: &str, how: u8, escape: bool) -> Vec<u8> {
        let must_quote = value.contains([',', '"', '\n', '\r']);
        match how % 5 {
            _ if how == 255 => b"\xff\xfe".to_vec(),
            0 | 1 if !must_quote => value.as_bytes().to_vec(),
            3 if escape => {
                format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\"")).into_bytes()
            }
            4 if !must_quote => format!("\"{value}\"x").into_bytes(),
            _ => format!("\"{}\"", value.replace('"', "\"\"")).into_bytes(),
        }
    }

    fn decoded(
        d: &BatchDecoder,
        records: &[Vec<u8>],
    ) -> (
        Option<datafusion::arrow::array::RecordBatch>,
        Vec<(usize, ErrorCode)>,
    ) {
        let (raw, spans) = packed(records);
        let mut bad = Vec::new();
        let batch = d
            .decode(&raw, &spans, &mut bad, &mut CutBuffers::default())
            .unwrap();
        let mut bad: Vec<_> = bad.into_iter().map(|b| (b.index, b.code)).collect();
        bad.sort();
        (batch, bad)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Read here or by arrow's reader, the same records give the same
        /// rows with the same values, and the same records are refused with
        /// the same codes.
        #[test]
        fn columns_read_as_arrow_reads_them(
            columns in proptest::collection::vec((0..23usize, any::<bool>()), 1..6),
            cells in proptest::collection::vec(
                proptest::collection::vec((0..VALUES.len(), any::<u8>()), 6), 1..30),
            escape in any::<bool>(),
            projection_mask in any::<u8>(),
        ) {
            let types = types();
            let schema = Arc::new(Schema::new(
                columns.iter().enumerate().map(|(i, (t, nullable))| {
                    Field::new(format!("c{i}"), types[*t].clone(), *nullable)
                }).collect::<Vec<_>>(),
            ));
            let projection: Vec<usize> =
                (0..columns.len()).filter(|i| projection_mask & (1 << i) != 0).collect();
            let options = CsvOptions {
                escape: escape.then_some(b'\\'),
                newlines_in_values: true,
                ..CsvOptions::default()
            };
            let format = LineFormat::Csv(options.clone());
            let direct = BatchDecoder::new(format.clone(), &schema, Some(&projection), 8).unwrap();
            let arrow = BatchDecoder::new(format, &schema, Some(&projection), 8)
                .unwrap()
                .through_arrow_reader();
            // the records the scan would hand over: framed whole, with the
            // right field count
            let dialect = LineFormat::Csv(options.clone()).dialect();
            let records: Vec<Vec<u8>> = cells
                .iter()
                .map(|row| {
                    row[..columns.len()]
                        .iter()
                        .map(|(v, how)| render(VALUES[*v], *how, escape))
                        .collect::<Vec<_>>()
                        .join(&b","[..])
                })
                .filter(|r| {
                    let mut frames = Vec::new();
                    Framer::new(dialect, 1).frame(r, true, &mut frames);
                    matches!(&frames[..], [f] if f.fault.is_none() && f.end == r.len()
                        && direct.precheck(r, f.fields, &mut Vec::new()).is_ok())
                })
                .collect();
            let (got, got_bad) = decoded(&direct, &records);
            let (want, want_bad) = decoded(&arrow, &records);
            prop_assert_eq!(&got_bad, &want_bad);
            prop_assert_eq!(got, want);
        }
    }

    proptest! {
        /// The word-at-a-time search finds what a byte loop finds.
        #[test]
        fn delimiters_are_found_eight_bytes_at_a_time(
            record in proptest::collection::vec(
                prop_oneof![Just(b','), Just(b'"'), Just(b'\t'), Just(0u8), Just(0x80u8), any::<u8>()],
                0..100),
            tab in any::<bool>(),
            offset in 0usize..1000,
        ) {
            let delimiter = if tab { b'\t' } else { b',' };
            let mut got = Vec::new();
            let unquoted = delimiters_unless_quoted(&record, offset, delimiter, b'"', &mut got);
            prop_assert_eq!(unquoted, !record.contains(&b'"'));
            if unquoted {
                let want: Vec<usize> = record.iter().enumerate()
                    .filter(|(_, b)| **b == delimiter)
                    .map(|(i, _)| offset + i + 1)
                    .collect();
                prop_assert_eq!(got, want);
            }
        }
    }

    #[test]
    fn quoted_fields_are_unquoted_as_csv_core_does() {
        let o = CsvOptions {
            escape: Some(b'\\'),
            ..CsvOptions::default()
        };
        let mut out = String::new();
        let mut bounds = Vec::new();
        unquote(
            r#""a""b",c"d,"e\"f\\","","x"y"#,
            &o,
            &mut out,
            &mut bounds,
            0,
        );
        assert_eq!(out, "a\"b,c\"d,e\"f\\,,xy\n");
        assert_eq!(bounds, vec![0, 4, 8, 13, 14, 17]);
    }
}

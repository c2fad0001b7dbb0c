//! Decoding framed records into Arrow batches, exactly or not at all.
//!
//! The scan hands over a batch's well-framed records, each followed by a
//! `\n`, in one buffer.
//!
//! - CSV is cut into fields and read column by column ([`csv_columns`]): a
//!   value that does not read costs its own row, found in the same pass.
//! - JSON lines (and CSV with a type only arrow's CSV reader has) are
//!   decoded by arrow's readers in one go; when that fails or the row count
//!   is off, the records are halved until every bad one is found on its own
//!   (a few decodes per bad record, not one per record).
//!
//! Then the checks arrow does not make: decimals read strictly (arrow drops
//! extra digits), floats that overflowed, and nulls in columns declared not
//! null. Bad rows are taken out with one filter; the scan turns them into
//! dead letters.

use std::ops::Range;
use std::sync::Arc;

use datafusion::arrow::array::timezone::Tz;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, PrimitiveBuilder, RecordBatch, RecordBatchOptions,
};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::i256;
use datafusion::arrow::datatypes::{
    DataType, Decimal32Type, Decimal64Type, Decimal128Type, Decimal256Type, DecimalType, Field,
    Float32Type, Float64Type, Schema, SchemaRef,
};
use datafusion::arrow::error::ArrowError;
use datafusion::common::project_schema;
use sluice_contract::ErrorCode;

use super::csv_columns;
pub(crate) use super::csv_columns::CutBuffers;
use super::framing::csv_field_ranges;
use super::json_check::{JsonChecker, Problem};
use super::numbers::{decimal_value, decimal_value_256};
use super::{CsvOptions, LineFormat};

/// A record given up, by its index among the records handed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Bad {
    pub index: usize,
    pub code: ErrorCode,
    pub message: String,
}

/// Decodes batches of one source's records; see the module docs.
#[derive(Debug)]
pub(crate) struct BatchDecoder {
    format: LineFormat,
    /// What the scan emits: the projected source schema.
    out_schema: SchemaRef,
    /// What arrow decodes into: every column nullable (nulls are checked
    /// here), CSV decimals as text (read strictly here).
    decode_schema: SchemaRef,
    /// What arrow's decoders return: `decode_schema`, projected.
    decoded_schema: SchemaRef,
    /// The output schema with every column nullable: the checked columns
    /// before the bad rows are taken out.
    checked_schema: SchemaRef,
    /// Index in the file's columns of each output column.
    file_index: Vec<usize>,
    /// Columns in the file (CSV: the field count every record must have).
    file_columns: usize,
    json: Option<JsonChecker>,
    /// A column is a decimal (read as text, then converted here).
    has_decimals: bool,
    /// CSV read by [`csv_columns`] (every output type and the dialect are
    /// supported there) rather than by arrow's reader.
    csv_direct: bool,
    batch_size: usize,
}

impl BatchDecoder {
    pub(crate) fn new(
        format: LineFormat,
        file_schema: &SchemaRef,
        projection: Option<&Vec<usize>>,
        batch_size: usize,
    ) -> datafusion::common::Result<Self> {
        let out_schema = project_schema(file_schema, projection)?;
        let csv = matches!(format, LineFormat::Csv(_));
        let decode_fields: Vec<Field> = file_schema
            .fields()
            .iter()
            .map(|f| {
                // decimals are read as text and converted exactly here: arrow's
                // decimal parser drops extra digits and wraps around on long ones
                let t = match f.data_type() {
                    t if is_decimal(t) => DataType::Utf8,
                    t => t.clone(),
                };
                Field::new(f.name(), t, true).with_metadata(f.metadata().clone())
            })
            .collect();
        let decode_schema = Arc::new(Schema::new(decode_fields));
        let file_index = match projection {
            Some(p) => p.clone(),
            None => (0..file_schema.fields().len()).collect(),
        };
        let checked_schema = Arc::new(Schema::new(
            out_schema
                .fields()
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true))
                .collect::<Vec<_>>(),
        ));
        let has_decimals = file_schema
            .fields()
            .iter()
            .any(|f| is_decimal(f.data_type()));
        // a column's time zone is checked here, naming the column, rather
        // than failing the first batch as an internal error
        for f in out_schema.fields() {
            if let DataType::Timestamp(_, Some(zone)) = f.data_type() {
                zone.parse::<Tz>().map_err(|e| {
                    datafusion::common::DataFusionError::Plan(format!("column `{}`: {e}", f.name()))
                })?;
            }
        }
        let decoded_schema = project_schema(&decode_schema, projection)?;
        let csv_direct = match &format {
            LineFormat::Csv(o) => {
                csv_columns::dialect_supported(o)
                    && out_schema
                        .fields()
                        .iter()
                        .all(|f| csv_columns::supports(f.data_type()))
            }
            LineFormat::Jsonl => false,
        };
        Ok(Self {
            csv_direct,
            decoded_schema,
            has_decimals,
            checked_schema,
            json: (!csv).then(|| JsonChecker::new(file_schema)),
            format,
            out_schema,
            decode_schema,
            file_index,
            file_columns: file_schema.fields().len(),
            batch_size,
        })
    }

    /// The same decoder with CSV read by arrow's reader, the way every CSV
    /// was read before [`csv_columns`]: the reference its tests compare with.
    #[cfg(test)]
    pub(crate) fn through_arrow_reader(mut self) -> Self {
        self.csv_direct = false;
        self
    }

    /// The schema of the batches [`BatchDecoder::decode`] returns.
    pub(crate) fn schema(&self) -> &SchemaRef {
        &self.out_schema
    }

    /// What can be told of a record before decoding: its field count (CSV)
    /// or its JSON grammar and value kinds (JSON lines).
    pub(crate) fn precheck(
        &self,
        record: &[u8],
        fields: usize,
        scratch: &mut Vec<bool>,
    ) -> Result<(), Problem> {
        match &self.json {
            Some(checker) => checker.check(record, scratch),
            None if fields != self.file_columns => {
                Err(field_count_problem(fields, self.file_columns))
            }
            None => Ok(()),
        }
    }

    /// Decodes `spans` of `raw` (each record followed by `\n`, in order and
    /// back to back). Returns the good rows in order; pushes the rest to `bad`.
    /// `buffers` are the caller's to keep from batch to batch.
    pub(crate) fn decode(
        &self,
        raw: &[u8],
        spans: &[Range<usize>],
        bad: &mut Vec<Bad>,
        buffers: &mut CutBuffers,
    ) -> datafusion::common::Result<Option<RecordBatch>> {
        if spans.is_empty() {
            return Ok(None);
        }
        if let (true, LineFormat::Csv(o)) = (self.csv_direct, &self.format) {
            return self.decode_csv(raw, spans, o, bad, buffers);
        }
        let mut parts = Vec::new();
        let mut good_rows = Vec::new();
        self.sort_out(raw, spans, 0, &mut parts, &mut good_rows, bad);
        if parts.is_empty() {
            return Ok(None);
        }
        let decoded = match parts.pop() {
            Some(only) if parts.is_empty() => only,
            Some(last) => {
                parts.push(last);
                concat_batches(&self.decoded_schema, &parts)?
            }
            None => return Ok(None),
        };
        self.finish(decoded, raw, spans, &good_rows, bad)
    }

    /// Decodes `spans` whole, or halves them until each bad record is alone.
    fn sort_out(
        &self,
        raw: &[u8],
        spans: &[Range<usize>],
        first: usize,
        parts: &mut Vec<RecordBatch>,
        good_rows: &mut Vec<usize>,
        bad: &mut Vec<Bad>,
    ) {
        let bytes = &raw[spans[0].start..spans[spans.len() - 1].end + 1];
        let result = self.decode_bytes(bytes, spans.len());
        match result {
            Ok(batch) if batch.num_rows() == spans.len() => {
                good_rows.extend(first..first + spans.len());
                parts.push(batch);
            }
            Ok(batch) if spans.len() == 1 => bad.push(Bad {
                index: first,
                code: ErrorCode::Malformed,
                message: format!("the record decodes to {} rows, not one", batch.num_rows()),
            }),
            Err(e) if spans.len() == 1 => {
                let record = &raw[spans[0].clone()];
                let utf8 = std::str::from_utf8(record).is_ok();
                bad.push(Bad {
                    index: first,
                    code: if utf8 {
                        ErrorCode::TypeMismatch
                    } else {
                        ErrorCode::Malformed
                    },
                    message: if utf8 {
                        arrow_message(&e)
                    } else {
                        "invalid UTF-8".to_string()
                    },
                });
            }
            _ => {
                let half = spans.len() / 2;
                self.sort_out(raw, &spans[..half], first, parts, good_rows, bad);
                self.sort_out(raw, &spans[half..], first + half, parts, good_rows, bad);
            }
        }
    }

    /// One arrow decode of `bytes`, expecting about `rows` rows.
    fn decode_bytes(&self, bytes: &[u8], rows: usize) -> Result<RecordBatch, ArrowError> {
        let batch_size = rows.max(1).max(self.batch_size);
        let (consumed, batch) = match &self.format {
            LineFormat::Csv(o) => {
                let mut d = csv_builder(Arc::clone(&self.decode_schema), o)
                    .with_batch_size(batch_size)
                    .with_projection(self.file_index.clone())
                    .build_decoder();
                let n = decode_all(bytes, |b| d.decode(b))?;
                (n, d.flush()?)
            }
            LineFormat::Jsonl => {
                // numbers into text columns as written: how decimals arrive
                // (the JSON check has refused numbers for real text columns;
                // only schemas with a decimal column ask for it)
                let mut d =
                    datafusion::arrow::json::ReaderBuilder::new(Arc::clone(&self.decoded_schema))
                        .with_batch_size(batch_size)
                        .with_coerce_primitive(self.has_decimals)
                        .build_decoder()?;
                let n = decode_all(bytes, |b| d.decode(b))?;
                if d.has_partial_record() {
                    return Err(ArrowError::JsonError("the record is cut short".into()));
                }
                (n, d.flush()?)
            }
        };
        if consumed < bytes.len() {
            return Err(ArrowError::ParseError(
                "more rows than records in the batch".into(),
            ));
        }
        Ok(batch.unwrap_or_else(|| RecordBatch::new_empty(Arc::clone(&self.decoded_schema))))
    }

    /// CSV cut and read column by column ([`csv_columns`]): one pass, and a
    /// bad value costs its own row only.
    fn decode_csv(
        &self,
        raw: &[u8],
        spans: &[Range<usize>],
        o: &CsvOptions,
        bad: &mut Vec<Bad>,
        buffers: &mut CutBuffers,
    ) -> datafusion::common::Result<Option<RecordBatch>> {
        let fields = csv_columns::cut(raw, spans, o, self.file_columns, bad, buffers);
        let mut verdicts = Verdicts::new(fields.rows, bad);
        let mut columns = Vec::with_capacity(self.out_schema.fields().len());
        for (field, &index) in self.out_schema.fields().iter().zip(&self.file_index) {
            let name = field.name();
            columns.push(csv_columns::read_column(
                &fields,
                index,
                field.data_type(),
                &mut |row, code, m| verdicts.refuse(row, code, format!("column `{name}`: {m}")),
            )?);
        }
        self.settle(columns, verdicts)
    }

    /// The checks arrow's readers do not make, then the output schema.
    fn finish(
        &self,
        decoded: RecordBatch,
        raw: &[u8],
        spans: &[Range<usize>],
        good_rows: &[usize],
        bad: &mut Vec<Bad>,
    ) -> datafusion::common::Result<Option<RecordBatch>> {
        let mut verdicts = Verdicts::new(good_rows, bad);
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(decoded.num_columns());
        for (i, field) in self.out_schema.fields().iter().enumerate() {
            let column = decoded.column(i);
            let name = field.name();
            let column = match (field.data_type(), &self.format) {
                (t, _) if is_decimal(t) => {
                    let text = column.as_string::<i32>();
                    let value = |row: usize| text.is_valid(row).then(|| text.value(row));
                    let mut refuse = |row, m| {
                        verdicts.refuse(
                            row,
                            ErrorCode::TypeMismatch,
                            format!("column `{name}`: {m}"),
                        )
                    };
                    decimal_column(t, text.len(), value, &mut refuse).unwrap_or_else(|| {
                        datafusion::common::internal_err!("{t} is not a decimal type")
                    })?
                }
                (DataType::Float32 | DataType::Float64, LineFormat::Csv(o)) => {
                    for row in infinite_rows(column) {
                        let record = &raw[spans[good_rows[row]].clone()];
                        let text = csv_field_text(record, o, self.file_index[i]);
                        if !is_infinity_literal(&text) {
                            verdicts.refuse(
                                row,
                                ErrorCode::TypeMismatch,
                                format!("column `{name}`: {text} is out of range for a float"),
                            );
                        }
                    }
                    Arc::clone(column)
                }
                _ => Arc::clone(column),
            };
            columns.push(column);
        }
        self.settle(columns, verdicts)
    }

    /// Nulls in not-null columns refused, the refused rows taken out, and
    /// the output schema put on the rest.
    fn settle(
        &self,
        columns: Vec<ArrayRef>,
        mut verdicts: Verdicts<'_>,
    ) -> datafusion::common::Result<Option<RecordBatch>> {
        let rows = verdicts.keep.len();
        for (field, column) in self.out_schema.fields().iter().zip(&columns) {
            if !field.is_nullable() && column.null_count() > 0 {
                for row in (0..rows).filter(|r| column.is_null(*r)) {
                    verdicts.refuse(
                        row,
                        ErrorCode::ConstraintViolation,
                        format!(
                            "column `{}` is declared not null but has no value",
                            field.name()
                        ),
                    );
                }
            }
        }
        let mut batch = RecordBatch::try_new_with_options(
            Arc::clone(&self.checked_schema),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )?;
        if verdicts.keep.iter().any(|k| !k) {
            batch = filter_record_batch(&batch, &BooleanArray::from(verdicts.keep))?;
        }
        if batch.num_rows() == 0 {
            return Ok(None);
        }
        Ok(Some(RecordBatch::try_new_with_options(
            Arc::clone(&self.out_schema),
            batch.columns().to_vec(),
            &RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
        )?))
    }
}

/// The rows of a decoded batch that checks after decoding gave up: the first
/// refusal of a row is the one reported.
struct Verdicts<'a> {
    keep: Vec<bool>,
    /// The record index (among those handed over) of each row.
    index: &'a [usize],
    bad: &'a mut Vec<Bad>,
}

impl<'a> Verdicts<'a> {
    fn new(index: &'a [usize], bad: &'a mut Vec<Bad>) -> Self {
        Self {
            keep: vec![true; index.len()],
            index,
            bad,
        }
    }

    fn refuse(&mut self, row: usize, code: ErrorCode, message: String) {
        if std::mem::replace(&mut self.keep[row], false) {
            self.bad.push(Bad {
                index: self.index[row],
                code,
                message,
            });
        }
    }
}

/// A CSV record with the wrong number of fields.
pub(super) fn field_count_problem(fields: usize, columns: usize) -> Problem {
    Problem {
        code: ErrorCode::Malformed,
        message: format!(
            "{fields} field{} where the schema has {columns} column{}",
            if fields == 1 { "" } else { "s" },
            if columns == 1 { "" } else { "s" }
        ),
    }
}

fn csv_builder(schema: SchemaRef, o: &CsvOptions) -> datafusion::arrow::csv::ReaderBuilder {
    let mut b = datafusion::arrow::csv::ReaderBuilder::new(schema)
        .with_header(false)
        .with_delimiter(o.delimiter)
        .with_quote(o.quote);
    if let Some(e) = o.escape {
        b = b.with_escape(e);
    }
    b
}

/// Feeds `bytes` to a decoder until it takes no more; returns the bytes taken.
fn decode_all(
    bytes: &[u8],
    mut decode: impl FnMut(&[u8]) -> Result<usize, ArrowError>,
) -> Result<usize, ArrowError> {
    let mut at = 0;
    loop {
        let n = decode(&bytes[at..])?;
        at += n;
        if n == 0 || at == bytes.len() {
            return Ok(at);
        }
    }
}

/// arrow's message without its prefix and its line count (which counts
/// within the bytes decoded, not the file; the dead letter has the line).
fn arrow_message(e: &ArrowError) -> String {
    let m = e.to_string();
    let mut m = m
        .strip_prefix("Csv error: ")
        .or_else(|| m.strip_prefix("Json error: "))
        .or_else(|| m.strip_prefix("Parser error: "))
        .unwrap_or(&m)
        .to_string();
    for marker in [" for line ", " at line "] {
        if let Some(i) = m.find(marker) {
            let digits = m[i + marker.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .count();
            m.replace_range(i..i + marker.len() + digits, "");
        }
    }
    m
}

/// A decimal type whose values are read from text exactly: every digit
/// kept or the value refused (arrow's parser drops extra digits and wraps
/// around on long ones).
pub(super) trait ExactDecimal: DecimalType {
    fn read(text: &[u8], precision: u8, scale: i8) -> Result<Self::Native, String>;
}

impl ExactDecimal for Decimal128Type {
    fn read(text: &[u8], precision: u8, scale: i8) -> Result<i128, String> {
        decimal_value(text, precision, scale)?
            .ok_or_else(|| "too wide for a 128-bit decimal".to_string())
    }
}

/// The narrow decimals: the 128-bit reading, which fits them once their
/// precision (at most 9 and 18 digits) has been checked.
impl ExactDecimal for Decimal32Type {
    fn read(text: &[u8], precision: u8, scale: i8) -> Result<i32, String> {
        i32::try_from(Decimal128Type::read(text, precision, scale)?)
            .map_err(|_| "too wide for a 32-bit decimal".to_string())
    }
}

impl ExactDecimal for Decimal64Type {
    fn read(text: &[u8], precision: u8, scale: i8) -> Result<i64, String> {
        i64::try_from(Decimal128Type::read(text, precision, scale)?)
            .map_err(|_| "too wide for a 64-bit decimal".to_string())
    }
}

impl ExactDecimal for Decimal256Type {
    fn read(text: &[u8], precision: u8, scale: i8) -> Result<i256, String> {
        decimal_value_256(text, precision, scale)
    }
}

/// A decimal column read from the texts `text(row)` (None: null); a value
/// whose digits do not all fit is passed to `refuse` and becomes a null.
pub(super) fn decimals<'s, T: ExactDecimal>(
    rows: usize,
    text: impl Fn(usize) -> Option<&'s str>,
    precision: u8,
    scale: i8,
    refuse: &mut impl FnMut(usize, String),
) -> datafusion::common::Result<ArrayRef> {
    let mut b = PrimitiveBuilder::<T>::with_capacity(rows);
    for row in 0..rows {
        match text(row).map(|v| T::read(v.trim_ascii().as_bytes(), precision, scale)) {
            Some(Ok(d)) => b.append_value(d),
            Some(Err(m)) => {
                refuse(row, m);
                b.append_null();
            }
            None => b.append_null(),
        }
    }
    Ok(Arc::new(
        b.finish().with_precision_and_scale(precision, scale)?,
    ))
}

/// Decimals of any width are read as text and converted here, exactly.
pub(super) fn is_decimal(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Decimal32(..)
            | DataType::Decimal64(..)
            | DataType::Decimal128(..)
            | DataType::Decimal256(..)
    )
}

/// A decimal column of type `target` read exactly from the texts `text(row)`
/// (see [`decimals`]); `None` when `target` is not a decimal type.
pub(super) fn decimal_column<'s>(
    target: &DataType,
    rows: usize,
    text: impl Fn(usize) -> Option<&'s str>,
    refuse: &mut impl FnMut(usize, String),
) -> Option<datafusion::common::Result<ArrayRef>> {
    Some(match *target {
        DataType::Decimal32(p, s) => decimals::<Decimal32Type>(rows, text, p, s, refuse),
        DataType::Decimal64(p, s) => decimals::<Decimal64Type>(rows, text, p, s, refuse),
        DataType::Decimal128(p, s) => decimals::<Decimal128Type>(rows, text, p, s, refuse),
        DataType::Decimal256(p, s) => decimals::<Decimal256Type>(rows, text, p, s, refuse),
        _ => return None,
    })
}

/// Rows holding an infinite float.
fn infinite_rows(column: &ArrayRef) -> Vec<usize> {
    let rows = |inf: &mut dyn Iterator<Item = bool>| {
        inf.enumerate()
            .filter(|(_, i)| *i)
            .map(|(r, _)| r)
            .collect()
    };
    match column.data_type() {
        DataType::Float64 => {
            let a = column.as_primitive::<Float64Type>();
            if !a.values().iter().any(|v| v.is_infinite()) {
                return Vec::new();
            }
            rows(&mut a.values().iter().map(|v| v.is_infinite()))
        }
        DataType::Float32 => {
            let a = column.as_primitive::<Float32Type>();
            if !a.values().iter().any(|v| v.is_infinite()) {
                return Vec::new();
            }
            rows(&mut a.values().iter().map(|v| v.is_infinite()))
        }
        _ => Vec::new(),
    }
}

/// The text of field `index` of a CSV record, unquoted.
fn csv_field_text(record: &[u8], o: &CsvOptions, index: usize) -> String {
    let ranges = csv_field_ranges(record, o.delimiter, o.quote, o.escape);
    let Some(&(s, e)) = ranges.get(index) else {
        return String::new();
    };
    let q = o.quote as char;
    String::from_utf8_lossy(&record[s..e])
        .trim()
        .trim_matches(q)
        .to_string()
}

pub(super) fn is_infinity_literal(text: &str) -> bool {
    let t = text
        .trim()
        .trim_start_matches(['+', '-'])
        .to_ascii_lowercase();
    t == "inf" || t == "infinity"
}

/// Records laid out as the scan hands them to [`BatchDecoder::decode`]:
/// back to back, each followed by `\n`, with their spans.
#[cfg(test)]
pub(super) fn packed(records: &[impl AsRef<[u8]>]) -> (Vec<u8>, Vec<Range<usize>>) {
    let mut raw = Vec::new();
    let mut spans = Vec::new();
    for r in records {
        let s = raw.len();
        raw.extend_from_slice(r.as_ref());
        spans.push(s..raw.len());
        raw.push(b'\n');
    }
    (raw, spans)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::TimeUnit;

    fn decoder(format: LineFormat, fields: Vec<Field>) -> BatchDecoder {
        BatchDecoder::new(format, &Arc::new(Schema::new(fields)), None, 1024).unwrap()
    }

    /// Decodes `records`; returns the rows' first column as text and the
    /// bad records' (index, code).
    fn run(d: &BatchDecoder, records: &[&str]) -> (Vec<String>, Vec<(usize, ErrorCode)>) {
        let (raw, spans) = packed(records);
        let mut bad = Vec::new();
        let batch = d
            .decode(&raw, &spans, &mut bad, &mut CutBuffers::default())
            .unwrap();
        let values = batch
            .map(|b| {
                let c = datafusion::arrow::compute::cast(b.column(0), &DataType::Utf8).unwrap();
                c.as_string::<i32>()
                    .iter()
                    .map(|v| v.unwrap_or("null").to_string())
                    .collect()
            })
            .unwrap_or_default();
        bad.sort_by_key(|b| b.index);
        (values, bad.into_iter().map(|b| (b.index, b.code)).collect())
    }

    #[test]
    fn csv_bad_values_are_found_among_good_ones() {
        let d = decoder(
            LineFormat::Csv(CsvOptions::default()),
            vec![
                Field::new("i", DataType::Int32, true),
                Field::new("d", DataType::Decimal128(5, 2), false),
                Field::new("f", DataType::Float64, true),
            ],
        );
        let (rows, bad) = run(
            &d,
            &[
                "1,1.50,1",
                "x,1,1",
                "3,1.555,1",
                "4,,1",
                "5,1,1e400",
                "6,1,inf",
                "7.5,1,1",
            ],
        );
        assert_eq!(rows, vec!["1", "6"]);
        assert_eq!(
            bad,
            vec![
                (1, ErrorCode::TypeMismatch),
                (2, ErrorCode::TypeMismatch),
                (3, ErrorCode::ConstraintViolation),
                (4, ErrorCode::TypeMismatch),
                (6, ErrorCode::TypeMismatch),
            ]
        );
    }

    #[test]
    fn json_values_are_decoded_or_refused_never_changed() {
        let d = decoder(
            LineFormat::Jsonl,
            vec![
                Field::new("t", DataType::Date32, true),
                Field::new("i", DataType::Int64, false),
            ],
        );
        let (rows, bad) = run(
            &d,
            &[
                r#"{"t": "2024-01-02", "i": 1}"#,
                r#"{"t": "yesterday", "i": 2}"#,
                r#"{"t": null}"#,
            ],
        );
        assert_eq!(rows, vec!["2024-01-02"]);
        assert_eq!(
            bad,
            vec![
                (1, ErrorCode::TypeMismatch),
                (2, ErrorCode::ConstraintViolation)
            ]
        );
    }

    #[test]
    fn narrow_decimals_are_exact_too() {
        for format in [LineFormat::Csv(CsvOptions::default()), LineFormat::Jsonl] {
            let csv = matches!(format, LineFormat::Csv(_));
            let d = decoder(
                format,
                vec![
                    Field::new("a", DataType::Decimal32(5, 2), true),
                    Field::new("b", DataType::Decimal64(12, 3), true),
                ],
            );
            let records: Vec<String> = [("123.45", "1.5"), ("1.555", "1"), ("1", "1.0005")]
                .iter()
                .map(|(a, b)| match csv {
                    true => format!("{a},{b}"),
                    false => format!(r#"{{"a": {a}, "b": {b}}}"#),
                })
                .collect();
            let records: Vec<&str> = records.iter().map(String::as_str).collect();
            let (rows, bad) = run(&d, &records);
            assert_eq!(rows, vec!["123.45"], "csv: {csv}");
            assert_eq!(
                bad,
                vec![(1, ErrorCode::TypeMismatch), (2, ErrorCode::TypeMismatch)],
                "csv: {csv}"
            );
        }
    }

    #[test]
    fn a_column_in_an_unknown_time_zone_is_refused_naming_it() {
        let e = BatchDecoder::new(
            LineFormat::Csv(CsvOptions::default()),
            &Arc::new(Schema::new(vec![Field::new(
                "at",
                DataType::Timestamp(TimeUnit::Millisecond, Some("Mars/Olympus".into())),
                true,
            )])),
            None,
            8,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("column `at`") && e.contains("Mars/Olympus"),
            "{e}"
        );
    }

    #[test]
    fn json_decimals_are_read_exactly_however_they_are_written() {
        let d = decoder(
            LineFormat::Jsonl,
            vec![Field::new("d", DataType::Decimal128(10, 2), true)],
        );
        let wide = format!(r#"{{"d": 1{}e-40}}"#, "0".repeat(40));
        let zeros = format!(r#"{{"d": 1{}e-150}}"#, "0".repeat(150));
        let (rows, bad) = run(
            &d,
            &[
                &wide,
                &zeros,
                r#"{"d": 12.5}"#,
                r#"{"d": 0e99999}"#,
                r#"{"d": 1.005}"#,
            ],
        );
        assert_eq!(rows, vec!["1.00", "1.00", "12.50", "0.00"]);
        assert_eq!(bad, vec![(4, ErrorCode::TypeMismatch)]);
    }
}

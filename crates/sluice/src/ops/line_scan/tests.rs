//! The reading contract, tested on generated messy files: every record is
//! passed on with its exact values or given up (with its physical line and
//! the right code), exactly once, whatever the line endings, blank lines,
//! quoted newlines, compression, batch size, partitions and epoch cuts.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{
    DataType, Decimal128Type, Field, Float64Type, Int64Type, Schema,
};
use datafusion::catalog::TableProvider;
use datafusion::prelude::SessionContext;
use futures::StreamExt;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use proptest::prelude::*;
use sluice_contract::ErrorCode;
use tokio::io::AsyncWriteExt;

use super::decoding::{BatchDecoder, CutBuffers};
use super::framing::{self, Dialect, Framer};
use super::*;
use crate::dead_letter::DeadLetter;
use crate::epoch::EpochBinding;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Format {
    Csv {
        header: bool,
        newlines_in_values: bool,
    },
    Jsonl,
}

#[derive(Debug, Clone, PartialEq)]
struct Good {
    id: i64,
    name: String,
    cents: i64,
    score: f64,
    flag: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BadKind {
    FractionalInt,
    IntOverflow,
    DecimalDigits,
    TextForNumber,
    FloatOverflow,
    QuotedNumber,
    MissingField,
    ExtraField,
    UnclosedQuote,
    InvalidUtf8,
    NullId,
    Garbage,
    TrailingComma,
    ControlChar,
    TwoValues,
    Cut,
}

const BAD_KINDS: &[BadKind] = &[
    BadKind::FractionalInt,
    BadKind::IntOverflow,
    BadKind::DecimalDigits,
    BadKind::TextForNumber,
    BadKind::FloatOverflow,
    BadKind::QuotedNumber,
    BadKind::MissingField,
    BadKind::ExtraField,
    BadKind::UnclosedQuote,
    BadKind::InvalidUtf8,
    BadKind::NullId,
    BadKind::Garbage,
    BadKind::TrailingComma,
    BadKind::ControlChar,
    BadKind::TwoValues,
    BadKind::Cut,
];

#[derive(Debug, Clone)]
enum Row {
    Good(Good),
    Bad(BadKind),
}

#[derive(Debug, Clone, Copy)]
enum Ending {
    Lf,
    CrLf,
    Cr,
}

impl Ending {
    fn bytes(self) -> &'static [u8] {
        match self {
            Ending::Lf => b"\n",
            Ending::CrLf => b"\r\n",
            Ending::Cr => b"\r",
        }
    }
}

#[derive(Debug, Clone)]
struct Case {
    format: Format,
    rows: Vec<Row>,
    /// Per row: its line ending, and blank lines after it.
    endings: Vec<(Ending, u8)>,
    last_ending: bool,
    compression: Compression,
    batch_size: usize,
    partitions: usize,
    /// Epoch cuts (fractions of the file), for plain files.
    cuts: Vec<f64>,
    min_split: u64,
    /// A UTF-8 byte-order mark starts the file.
    bom: bool,
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
        Field::new("amount", DataType::Decimal128(12, 2), true),
        Field::new("score", DataType::Float64, true),
        Field::new("flag", DataType::Boolean, true),
    ]))
}

fn name_strategy(newlines: bool) -> impl Strategy<Value = String> {
    let chars = if newlines {
        "[a-z][a-z ,\"é\\n]{0,8}"
    } else {
        "[a-z][a-z ,\"é]{0,8}"
    };
    proptest::string::string_regex(chars).expect("regex")
}

fn good_strategy(newlines: bool) -> impl Strategy<Value = Good> {
    (
        name_strategy(newlines),
        -1_000_000_000i64..1_000_000_000,
        prop_oneof![
            (-1e6f64..1e6),
            Just(1e300),
            Just(-2.5e-300),
            Just(0.1),
            Just(-0.0)
        ],
        proptest::option::of(any::<bool>()),
    )
        .prop_map(|(name, cents, score, flag)| Good {
            id: 0,
            name,
            cents,
            score,
            flag,
        })
}

fn case_strategy() -> impl Strategy<Value = Case> {
    prop_oneof![
        (any::<bool>(), any::<bool>()).prop_map(|(header, newlines_in_values)| Format::Csv {
            header,
            newlines_in_values
        }),
        Just(Format::Jsonl),
    ]
    .prop_flat_map(|format| {
        let newlines = matches!(
            format,
            Format::Csv {
                newlines_in_values: true,
                ..
            } | Format::Jsonl
        );
        let row = prop_oneof![
            3 => good_strategy(newlines).prop_map(Row::Good),
            1 => proptest::sample::select(BAD_KINDS).prop_map(Row::Bad),
        ];
        (
            Just(format),
            proptest::collection::vec(row, 0..60),
            proptest::collection::vec(
                (
                    prop_oneof![Just(Ending::Lf), Just(Ending::CrLf), Just(Ending::Cr)],
                    prop_oneof![4 => Just(0u8), 1 => 1u8..3],
                ),
                61,
            ),
            any::<bool>(),
            prop_oneof![
                Just(Compression::None),
                Just(Compression::Gzip),
                Just(Compression::Zstd)
            ],
            1usize..12,
            1usize..4,
            proptest::collection::vec(0.0f64..1.0, 0..4),
            prop_oneof![Just(1u64), Just(64), Just(MIN_TEST_SPLIT)],
            any::<bool>(),
        )
    })
    .prop_map(
        |(
            format,
            rows,
            endings,
            last_ending,
            compression,
            batch_size,
            partitions,
            cuts,
            min_split,
            bom,
        )| {
            let mut rows = rows;
            for (i, r) in rows.iter_mut().enumerate() {
                if let Row::Good(g) = r {
                    g.id = (i as i64 - 20) * (1 << 40) + 7;
                }
            }
            Case {
                format,
                rows,
                endings,
                last_ending,
                compression,
                batch_size,
                partitions,
                cuts,
                min_split,
                bom,
            }
        },
    )
}

const MIN_TEST_SPLIT: u64 = 1 << 20;

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn amount(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    format!(
        "{sign}{}.{:02}",
        cents.unsigned_abs() / 100,
        cents.unsigned_abs() % 100
    )
}

fn render_good(format: Format, g: &Good) -> Vec<u8> {
    let flag = |csv: bool| match g.flag {
        Some(b) => b.to_string(),
        None if csv => String::new(),
        None => "null".into(),
    };
    match format {
        Format::Csv { .. } => format!(
            "{},{},{},{:?},{}",
            g.id,
            csv_field(&g.name),
            amount(g.cents),
            g.score,
            flag(true)
        )
        .into_bytes(),
        Format::Jsonl => format!(
            r#"{{"id": {}, "name": {}, "amount": {}, "score": {:?}, "flag": {}}}"#,
            g.id,
            serde_json::to_string(&g.name).unwrap_or_default(),
            amount(g.cents),
            g.score,
            flag(false)
        )
        .into_bytes(),
    }
}

/// A bad record, and the code it must be given up with (None: any code).
fn render_bad(format: Format, kind: BadKind) -> (Vec<u8>, Option<ErrorCode>) {
    use BadKind::*;
    use ErrorCode::*;
    let csv = |s: &[u8], code| (s.to_vec(), Some(code));
    match format {
        Format::Csv { .. } => match kind {
            FractionalInt => csv(b"7.5,n,1.00,1.5,true", TypeMismatch),
            IntOverflow => csv(b"99999999999999999999,n,1.00,1.5,true", TypeMismatch),
            DecimalDigits => csv(b"1,n,1.005,1.5,true", TypeMismatch),
            TextForNumber | QuotedNumber => csv(b"1,n,abc,1.5,true", TypeMismatch),
            FloatOverflow => csv(b"1,n,1.00,1e400,true", TypeMismatch),
            MissingField | Cut => csv(b"1,n,1.00,1.5", Malformed),
            ExtraField | TrailingComma => csv(b"1,n,1.00,1.5,true,", Malformed),
            UnclosedQuote => csv(b"1,\"n,1.00,1.5,true", Malformed),
            InvalidUtf8 | ControlChar => csv(b"1,n\xff,1.00,1.5,true", Malformed),
            NullId => csv(b",n,1.00,1.5,true", ConstraintViolation),
            Garbage | TwoValues => csv(b"\xff\xfe#garbage!", Malformed),
        },
        Format::Jsonl => {
            let j = |s: &[u8], code| (s.to_vec(), Some(code));
            match kind {
                FractionalInt => j(br#"{"id": 7.5}"#, TypeMismatch),
                IntOverflow => j(br#"{"id": -99999999999999999999}"#, TypeMismatch),
                DecimalDigits => j(br#"{"id": 1, "amount": 1.005}"#, TypeMismatch),
                TextForNumber => j(br#"{"id": 1, "amount": "abc"}"#, TypeMismatch),
                FloatOverflow => j(br#"{"id": 1, "score": 1e400}"#, TypeMismatch),
                QuotedNumber => j(br#"{"id": "42"}"#, TypeMismatch),
                MissingField => j(br#"{"name": "x"}"#, ConstraintViolation),
                NullId => j(br#"{"id": null}"#, ConstraintViolation),
                ExtraField | TrailingComma => j(br#"{"id": 1, "name": "n",}"#, Malformed),
                UnclosedQuote | Cut => j(br#"{"id": 1, "name": "n"#, Malformed),
                InvalidUtf8 => j(b"{\"id\": 1, \"name\": \"\xff\"}", Malformed),
                ControlChar => j(b"{\"id\": 1, \"name\": \"a\x01b\"}", Malformed),
                TwoValues => j(br#"{"id": 1}{"id": 2}"#, Malformed),
                Garbage => j(b"\xff\xfe#garbage!", Malformed),
            }
        }
    }
}

/// The file's bytes, and per bad record: its first physical line, its bytes
/// and its code.
#[allow(clippy::type_complexity)]
fn render(case: &Case) -> (Vec<u8>, Vec<(u64, Vec<u8>, Option<ErrorCode>)>) {
    let mut out = Vec::new();
    let mut line = 1u64;
    let mut bad = Vec::new();
    if case.bom {
        out.extend_from_slice(b"\xEF\xBB\xBF");
    }
    let breaks = |bytes: &[u8]| {
        let mut cr = false;
        framing::count_line_breaks(bytes, &mut cr) + u64::from(cr)
    };
    if let Format::Csv { header: true, .. } = case.format {
        out.extend_from_slice(b"id,name,amount,score,flag\n");
        line += 1;
    }
    for (i, row) in case.rows.iter().enumerate() {
        let text = match row {
            Row::Good(g) => render_good(case.format, g),
            Row::Bad(kind) => {
                let (text, code) = render_bad(case.format, *kind);
                bad.push((line, text.clone(), code));
                text
            }
        };
        line += breaks(&text);
        out.extend_from_slice(&text);
        let (ending, blanks) = case.endings[i];
        if i + 1 < case.rows.len() || case.last_ending {
            out.extend_from_slice(ending.bytes());
            line += 1;
            for b in 0..blanks {
                out.extend_from_slice(if b == 0 { b"  " } else { b"" });
                out.extend_from_slice(ending.bytes());
                line += 1;
            }
        }
    }
    (out, bad)
}

async fn compress(bytes: &[u8], c: Compression) -> Vec<u8> {
    match c {
        Compression::Gzip => {
            let mut e = async_compression::tokio::write::GzipEncoder::new(Vec::new());
            e.write_all(bytes).await.unwrap();
            e.shutdown().await.unwrap();
            e.into_inner()
        }
        Compression::Zstd => {
            let mut e = async_compression::tokio::write::ZstdEncoder::new(Vec::new());
            e.write_all(bytes).await.unwrap();
            e.shutdown().await.unwrap();
            e.into_inner()
        }
        _ => bytes.to_vec(),
    }
}

struct Outcome {
    rows: Vec<Good>,
    dead: Vec<DeadLetter>,
    error: Option<String>,
}

async fn read(case: &Case, on_error: OnError, bytes: &[u8]) -> Outcome {
    let store = Arc::new(InMemory::new());
    let ext = match case.compression {
        Compression::Gzip => ".gz",
        Compression::Zstd => ".zst",
        _ => "",
    };
    let path = Path::from(format!("in/data{ext}"));
    store
        .put(
            &path,
            PutPayload::from(compress(bytes, case.compression).await),
        )
        .await
        .unwrap();
    let object = store.head(&path).await.unwrap();
    let format = match case.format {
        Format::Csv {
            header,
            newlines_in_values,
        } => LineFormat::Csv(CsvOptions {
            has_header: header,
            newlines_in_values,
            ..CsvOptions::default()
        }),
        Format::Jsonl => LineFormat::Jsonl,
    };
    // epochs: byte ranges of a plain file, as `next_files` cuts them
    let mut parts = vec![FilePart::whole(object.clone())];
    if split::splittable(&format, case.compression.of(path.as_ref())) && !case.cuts.is_empty() {
        let mut at: Vec<u64> = case
            .cuts
            .iter()
            .map(|f| (f * object.size as f64) as u64)
            .collect();
        at.push(0);
        at.push(object.size);
        at.sort_unstable();
        at.dedup();
        parts = at
            .windows(2)
            .map(|w| FilePart {
                object: object.clone(),
                range: Some(w[0]..w[1]),
            })
            .collect();
    }
    let mut out = Outcome {
        rows: Vec::new(),
        dead: Vec::new(),
        error: None,
    };
    for part in parts {
        let table = LineFilesTable {
            source_name: "src".into(),
            store: Arc::clone(&store) as Arc<dyn ObjectStore>,
            store_url: "memory://".into(),
            format: format.clone(),
            schema: schema(),
            files: vec![part],
            compression: case.compression,
            target_partitions: case.partitions,
            batch_size: case.batch_size,
            on_error,
            line_offset: 0,
            min_split_bytes: case.min_split,
            bytes_per_row: None,
        };
        let binding = Arc::new(EpochBinding::new(
            0,
            BTreeMap::new(),
            opentelemetry::Context::new(),
        ));
        let state = binding.bind(&SessionContext::new().state());
        let plan = table.scan(&state, None, &[], None).await.unwrap();
        let task = state.task_ctx();
        for p in 0..plan.properties().partitioning.partition_count() {
            let mut stream = plan.execute(p, Arc::clone(&task)).unwrap();
            while let Some(b) = stream.next().await {
                match b {
                    Ok(b) => out.rows.extend(goods(&b)),
                    Err(e) => {
                        out.error.get_or_insert(e.to_string());
                    }
                }
            }
        }
        out.dead.extend(binding.dead_letters().take());
    }
    out
}

fn goods(b: &RecordBatch) -> Vec<Good> {
    let id = b.column(0).as_primitive::<Int64Type>();
    let name = b.column(1).as_string::<i32>();
    let amount = b.column(2).as_primitive::<Decimal128Type>();
    let score = b.column(3).as_primitive::<Float64Type>();
    let flag = b.column(4).as_boolean();
    (0..b.num_rows())
        .map(|r| Good {
            id: id.value(r),
            name: name.value(r).to_string(),
            cents: amount.value(r) as i64,
            score: score.value(r),
            flag: flag.is_valid(r).then(|| flag.value(r)),
        })
        .collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Rows out + records given up = records in the file; good rows keep
    /// their exact values; each bad one is named at its first physical line
    /// with its code.
    #[test]
    fn every_record_comes_out_once_exactly_or_is_given_up_at_its_line(case in case_strategy()) {
        let (bytes, bad) = render(&case);
        let got = runtime().block_on(read(&case, OnError::DeadLetter, &bytes));
        prop_assert!(got.error.is_none(), "{:?}", got.error);
        let mut expected: Vec<Good> = case.rows.iter().filter_map(|r| match r {
            Row::Good(g) => Some(g.clone()),
            Row::Bad(_) => None,
        }).collect();
        expected.sort_by_key(|g| g.id);
        let mut rows = got.rows;
        rows.sort_by_key(|g| g.id);
        prop_assert_eq!(rows.len(), expected.len());
        for (g, e) in rows.iter().zip(&expected) {
            prop_assert_eq!(g.score.to_bits(), e.score.to_bits(), "{:?} vs {:?}", g, e);
            prop_assert_eq!(g, e);
        }
        let mut dead = got.dead;
        dead.sort_by_key(|d| d.offset);
        let letters: Vec<(Option<u64>, String, ErrorCode)> =
            dead.iter().map(|d| (d.line, d.raw.clone(), d.code)).collect();
        prop_assert_eq!(dead.len(), bad.len(), "{:?} vs {:?}", letters, bad);
        for (d, (line, text, code)) in dead.iter().zip(&bad) {
            prop_assert_eq!(d.line, Some(*line), "{:?}", d);
            prop_assert_eq!(&d.raw, &String::from_utf8_lossy(text).into_owned());
            if let Some(code) = code {
                prop_assert_eq!(d.code, *code, "{:?}", d);
            }
            prop_assert!(!d.skipped);
        }
    }

    /// In `fail` mode a file with a bad record fails, naming the first one's line.
    #[test]
    fn fail_mode_names_the_first_bad_record(case in case_strategy()) {
        let case = Case { partitions: 1, cuts: Vec::new(), ..case };
        let (bytes, bad) = render(&case);
        let got = runtime().block_on(read(&case, OnError::Fail, &bytes));
        match bad.first() {
            None => prop_assert!(got.error.is_none(), "{:?}", got.error),
            Some((line, _, _)) => {
                let e = got.error.unwrap_or_default();
                prop_assert!(e.contains("source `src`: file memory://in/data"), "{}", e);
                prop_assert!(e.contains(&format!(", line {line}: ")), "line {}: {}", line, e);
            }
        }
    }
}

/// Random bytes and mutated valid files never panic a scan, in any mode,
/// and a scan that dead-letters never fails because of what it read.
#[test]
fn no_bytes_panic_a_scan() {
    use proptest::test_runner::{Config, TestRunner};
    let rt = runtime();
    let cases: u32 = std::env::var("SLUICE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (
        case_strategy(),
        proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        proptest::collection::vec(any::<u8>(), 0..64),
    );
    runner
        .run(&strategy, |(case, flips, tail)| {
            let (mut bytes, _) = render(&case);
            for (at, b) in flips {
                if !bytes.is_empty() {
                    let i = at.index(bytes.len());
                    bytes[i] = b;
                }
            }
            bytes.extend_from_slice(&tail);
            for mode in [OnError::DeadLetter, OnError::Fail] {
                let got = rt.block_on(read(&case, mode, &bytes));
                // with dead letters, a run fails only if something is really wrong
                if mode == OnError::DeadLetter {
                    prop_assert!(got.error.is_none(), "{:?}", got.error);
                }
            }
            Ok(())
        })
        .unwrap();
}

/// The framer and the decoders alone, at fuzzing volume: random bytes and
/// mutated valid records, cut into random chunks, never panic, and every
/// framed record is decoded or given up exactly once.
#[test]
fn framing_and_decoding_survive_any_bytes() {
    use proptest::test_runner::{Config, TestRunner};
    let cases: u32 = std::env::var("SLUICE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let decoders: Vec<(Dialect, BatchDecoder)> = [
        LineFormat::Csv(CsvOptions::default()),
        LineFormat::Csv(CsvOptions {
            newlines_in_values: true,
            escape: Some(b'\\'),
            ..CsvOptions::default()
        }),
        LineFormat::Jsonl,
    ]
    .into_iter()
    .map(|f| {
        (
            f.dialect(),
            BatchDecoder::new(f, &schema(), None, 16).unwrap(),
        )
    })
    .collect();
    let strategy = (
        0..decoders.len(),
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..200),
            proptest::collection::vec(
                prop_oneof![
                    Just(b'"'),
                    Just(b','),
                    Just(b'\n'),
                    Just(b'\r'),
                    Just(b'{'),
                    Just(b'}'),
                    Just(b':'),
                    Just(b'1'),
                    Just(b'.'),
                    Just(b'e'),
                    Just(b'\\'),
                    Just(b' '),
                    any::<u8>()
                ],
                0..200
            ),
        ],
        1usize..40,
        prop_oneof![Just(usize::MAX), 1usize..60],
    );
    runner
        .run(&strategy, |(which, bytes, chunk, max_record)| {
            let (dialect, decoder) = &decoders[which];
            let max_record = max_record.min(framing::MAX_RECORD_BYTES);
            let mut framer = Framer::new(*dialect, 1).with_max_record(max_record);
            let mut buf = Vec::new();
            let mut frames = Vec::new();
            let mut fed = 0;
            let mut last_line = 0;
            let mut buffers = CutBuffers::default();
            loop {
                let eof = fed == bytes.len();
                frames.clear();
                let used = framer.frame(&buf, eof, &mut frames);
                let mut raw = Vec::new();
                let mut spans = Vec::new();
                for f in &frames {
                    prop_assert!(f.start <= f.end && f.end <= used);
                    prop_assert!(f.line > last_line);
                    last_line = f.line;
                    let record = &buf[f.start..f.end];
                    if f.fault.is_none()
                        && decoder.precheck(record, f.fields, &mut Vec::new()).is_ok()
                    {
                        let s = raw.len();
                        raw.extend_from_slice(record);
                        spans.push(s..raw.len());
                        raw.push(b'\n');
                    }
                }
                let mut bad = Vec::new();
                let rows = decoder
                    .decode(&raw, &spans, &mut bad, &mut buffers)
                    .unwrap();
                let n = rows.map_or(0, |b| b.num_rows());
                prop_assert_eq!(n + bad.len(), spans.len());
                buf.drain(..used);
                // what waits for more bytes is bounded by the record cap (plus
                // the last piece, when a `\r` ends it and the next byte decides)
                let bound = max_record.saturating_add(chunk);
                prop_assert!(buf.len() <= bound, "{} bytes held", buf.len());
                if eof {
                    prop_assert!(buf.is_empty());
                    return Ok(());
                }
                let take = chunk.min(bytes.len() - fed);
                buf.extend_from_slice(&bytes[fed..fed + take]);
                fed += take;
            }
        })
        .unwrap();
}

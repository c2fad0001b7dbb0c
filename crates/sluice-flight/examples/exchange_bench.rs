//! Throughput and per-batch round trip of a stage, in isolation: the same
//! lineitem-like batch (16 columns, ~130 bytes a row) is sent `--batches`
//! times through one exchange; the bench reports GB/s (Arrow bytes through
//! the stage), rows/s and the p50/p99 time from sending a batch to its answer.
//!
//! ```text
//! cargo run --release -p sluice-flight --example exchange_bench -- --rows 65536 --batches 200 -- target/stages/rust/identity
//! ```
//!
//! Batches go through shared memory when the stage's manifest offers it;
//! `--flight` sends them over Flight, as to a remote stage. A v1.1 stage may
//! answer a batch `unchanged` (an identity stage does), and then its rows
//! only travel one way; `--send-back` does not offer that, so every answer
//! carries its rows back, as a stage that changes them must.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::{
    ArrayRef, Date32Array, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
};
use arrow_schema::{DataType, Field, Schema};
use futures::StreamExt;
use sluice_flight::envelope::Kind;
use sluice_flight::{OpenRequest, StageEvent};

fn lineitem_like(rows: usize) -> RecordBatch {
    let mut fields = Vec::new();
    let mut cols: Vec<ArrayRef> = Vec::new();
    for i in 0..4 {
        fields.push(Field::new(format!("k{i}"), DataType::Int64, false));
        cols.push(Arc::new(Int64Array::from_iter_values(
            (0..rows).map(|r| (r * (i + 7)) as i64),
        )));
    }
    for i in 0..2 {
        fields.push(Field::new(format!("n{i}"), DataType::Int32, false));
        cols.push(Arc::new(Int32Array::from_iter_values(
            (0..rows).map(|r| (r % 50) as i32 + i),
        )));
    }
    for i in 0..4 {
        fields.push(Field::new(format!("f{i}"), DataType::Float64, false));
        cols.push(Arc::new(Float64Array::from_iter_values(
            (0..rows).map(|r| r as f64 * 1.5 + i as f64),
        )));
    }
    let words = [
        "AIR",
        "DELIVER IN PERSON",
        "TRUCK",
        "carefully final deposits haggle",
        "N",
        "O",
        "MAIL",
    ];
    for i in 0..4 {
        fields.push(Field::new(format!("s{i}"), DataType::Utf8, false));
        cols.push(Arc::new(StringArray::from_iter_values(
            (0..rows).map(|r| words[(r + i) % words.len()]),
        )));
    }
    for i in 0..2 {
        fields.push(Field::new(format!("d{i}"), DataType::Date32, false));
        cols.push(Arc::new(Date32Array::from_iter_values(
            (0..rows).map(|r| 8000 + (r % 2500) as i32 + i),
        )));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)
        .unwrap_or_else(|e| panic!("bench batch: {e}"))
}

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// large batches: mimalloc reuses memory where the system allocator maps and faults in fresh pages
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let rows = arg(&args, "--rows", 65_536);
    let batches = arg(&args, "--batches", 100);
    let split = args
        .iter()
        .position(|a| a == "--")
        .ok_or("give the stage command after --")?;
    let (program, rest) = args[split + 1..]
        .split_first()
        .ok_or("give the stage command after --")?;
    let socket = sluice_flight::launch::socket_path("bench");
    let mut child = sluice_flight::launch::spawn(sluice_flight::launch::ChildStage {
        name: "bench",
        program: std::path::Path::new(program),
        args: rest,
        socket: &socket,
        otlp: None,
    })?;
    let mut client =
        sluice_flight::launch::wait_healthy(&mut child, &socket, Duration::from_secs(20)).await?;
    let manifest = client.describe().await?;
    let flight_only = args[..split].iter().any(|a| a == "--flight");
    client.use_shared_memory(manifest.shared_memory && !flight_only);
    client.offer_unchanged_answers(!args[..split].iter().any(|a| a == "--send-back"));

    let batch = lineitem_like(rows);
    let bytes_per_batch: usize = batch
        .columns()
        .iter()
        .map(|c| c.to_data().get_slice_memory_size().unwrap_or(0))
        .sum();
    let open = OpenRequest::new(&manifest.protocol, "bench", 0, 0);
    // one warm-up exchange
    for (round, n) in [(0, batches.min(10)), (1, batches)] {
        let sent_at: Arc<std::sync::Mutex<Vec<Instant>>> = Arc::default();
        let stamps = Arc::clone(&sent_at);
        let b = batch.clone();
        let input = futures::stream::iter(0..n)
            .map(move |_| {
                stamps
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(Instant::now());
                Ok(b.clone())
            })
            .boxed();
        let start = Instant::now();
        let mut events = client.exchange(&open, batch.schema(), input, None).await?;
        let mut rtts = Vec::with_capacity(n);
        let mut rows_out = 0usize;
        // the path the answers took, not the one asked for: a failed offer
        // falls back to Flight
        let (mut answers, mut in_shm, mut unchanged) = (0usize, 0usize, 0usize);
        while let Some(e) = events.next().await {
            match e? {
                StageEvent::Batch { batch, envelope } => {
                    rows_out += batch.num_rows();
                    answers += 1;
                    in_shm += usize::from(envelope.shm.is_some());
                    unchanged += usize::from(envelope.kind == Kind::Unchanged);
                    if let Some(seq) = envelope.in_seq
                        && let Some(t) = sent_at
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get(seq as usize)
                    {
                        rtts.push(t.elapsed());
                    }
                }
                StageEvent::Flushed(_) => break,
                _ => {}
            }
        }
        let took = start.elapsed();
        if round == 0 {
            continue;
        }
        let path = match in_shm {
            0 if answers == 0 => "none",
            _ if unchanged == answers => "unchanged",
            0 => "flight",
            n if n + unchanged == answers => "shm",
            _ => "mixed",
        };
        rtts.sort();
        let q = |p: f64| {
            rtts.get(((rtts.len().max(1) - 1) as f64 * p) as usize)
                .copied()
                .unwrap_or_default()
        };
        let gb = (bytes_per_batch * n) as f64 / 1e9;
        println!(
            "{{\"stage\":\"{program}\",\"path\":\"{path}\",\"answers\":{answers},\"answers_in_shm\":{in_shm},\"answers_unchanged\":{unchanged},\"rows_per_batch\":{rows},\"batches\":{n},\"rows\":{rows_out},\"seconds\":{:.4},\"gb_per_s\":{:.3},\"rows_per_s\":{:.0},\"rtt_p50_ms\":{:.3},\"rtt_p99_ms\":{:.3}}}",
            took.as_secs_f64(),
            gb / took.as_secs_f64(),
            rows_out as f64 / took.as_secs_f64(),
            q(0.5).as_secs_f64() * 1e3,
            q(0.99).as_secs_f64() * 1e3
        );
    }
    let _ = child.start_kill();
    Ok(())
}

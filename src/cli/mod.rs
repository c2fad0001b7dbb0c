//! Command definitions and dispatch.

/// `println!` for the CLI's output. Rust ignores SIGPIPE, so that a write to
/// the socket of a stage process that died returns an error instead of
/// killing the engine; the price is that a closed stdout (`sluice inspect …
/// | head`) must be handled here: the process ends quietly, as other CLI
/// tools do.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format_args!($($arg)*), true)
    };
}

/// `print!` for the CLI's output; see `outln!`.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format_args!($($arg)*), false)
    };
}

mod dead_letters;
mod delta;
mod inspect;
mod progress;
mod rollout;
mod schema_check;
mod stage_bench;
mod stage_check;
mod summary;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sluice::GraphFormat;
use sluice::{Engine, PipelineSpec, RunOptions, SluiceError};

/// Writes to stdout; exits 0 when the reader went away and 1 on any other
/// write error (there is nowhere left to report it but stderr).
pub(crate) fn write_stdout(args: std::fmt::Arguments<'_>, newline: bool) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let written = stdout
        .write_fmt(args)
        .and_then(|()| {
            if newline {
                stdout.write_all(b"\n")
            } else {
                Ok(())
            }
        })
        .and_then(|()| stdout.flush());
    if let Err(e) = written {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to stdout: {e}");
        std::process::exit(1);
    }
}

/// sluice: streaming ETL on Apache Arrow and DataFusion.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a pipeline until its input is exhausted, committing each epoch.
    Run {
        /// The pipeline file (TOML).
        pipeline: PathBuf,
        /// Override a key of the pipeline file: `--set sources.lineitem.scale_factor=0.1`.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Stop after this many epochs; the next run continues from there.
        #[arg(long)]
        max_epochs: Option<u64>,
        /// Delete the sinks' committed output first and start over.
        #[arg(long)]
        reset: bool,
        /// Stop (after committing) once streaming sources have nothing new.
        #[arg(long)]
        exit_when_idle: bool,
        /// Print the run summary as JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// No progress bar.
        #[arg(long, short)]
        quiet: bool,
        /// Serve Prometheus metrics at http://ADDR/metrics while it runs
        /// (overrides `[observability] metrics`).
        #[arg(long, value_name = "ADDR")]
        metrics: Option<String>,
        /// Export spans over OTLP/gRPC to URL, e.g. http://127.0.0.1:4317
        /// (overrides `[observability] otlp` and OTEL_EXPORTER_OTLP_ENDPOINT;
        /// the external stages it starts export there too).
        #[arg(long, value_name = "URL")]
        otlp: Option<String>,
        /// Serve the live pipeline page at http://ADDR/ while it runs, e.g.
        /// 127.0.0.1:8080 (overrides `[observability] ui`).
        #[arg(long, value_name = "ADDR")]
        ui: Option<String>,
    },
    /// Check a pipeline without running it. Exit code 0 when valid, 2 when not.
    Validate {
        /// The pipeline file (TOML).
        pipeline: PathBuf,
        /// Override a key of the pipeline file.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// Print the pipeline graph and the optimized physical plan of every sink.
    Explain {
        /// The pipeline file (TOML).
        pipeline: PathBuf,
        /// Graph format: text, dot or mermaid.
        #[arg(long, default_value = "text")]
        format: GraphFormat,
        /// Print the graph only, without plans.
        #[arg(long)]
        graph_only: bool,
        /// Override a key of the pipeline file.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// Work with external stages.
    #[command(subcommand)]
    Stage(StageCommand),
    /// Roll out a variant of a stage: shadow, canary, promote, roll back (docs/rollout.md).
    #[command(subcommand)]
    Rollout(RolloutCommand),
    /// List the rows a pipeline's sources and stages gave up on, from its
    /// `[dead_letter]` sink; `--export` writes their raw lines for fixing.
    DeadLetters {
        /// The dead-letter sink's folder or URL.
        url: String,
        /// Only the rows of this source or stage.
        #[arg(long)]
        source: Option<String>,
        /// Write the raw lines (of `--source`) to this file, one per line.
        #[arg(long)]
        export: Option<PathBuf>,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Feed corrected rows (e.g. fixed dead-letter lines) of one source
    /// through the pipeline into the same sinks, committed exactly once.
    Replay {
        /// The pipeline file (TOML).
        pipeline: PathBuf,
        /// The csv or jsonl source the rows belong to.
        #[arg(long)]
        source: String,
        /// The corrected rows: a file of lines in the source's format
        /// (csv without a header).
        #[arg(long)]
        input: PathBuf,
        /// Override a key of the pipeline file.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Print the run summary as JSON.
        #[arg(long)]
        json: bool,
        /// No progress bar.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Work with the schema registry (`schemas/<name>/<version>.json`).
    #[command(subcommand)]
    Schema(SchemaCommand),
    /// Rewrite a Delta table's small files into files of a target size, in
    /// one transaction that changes no data (docs/delta.md).
    Compact {
        /// The table's folder or URL.
        url: String,
        /// The size of the files written, e.g. 128MiB.
        #[arg(long, default_value = "128MiB")]
        target_file_size: sluice::spec::ByteSize,
        /// Print what was done as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete the files a Delta table removed longer ago than the retention
    /// period (docs/delta.md).
    Vacuum {
        /// The table's folder or URL.
        url: String,
        /// Keep files removed more recently than this, e.g. 7d or 12h.
        #[arg(long, default_value = "7d")]
        retain: sluice::spec::HumanDuration,
        /// Also delete files the log never named, older than the retention.
        #[arg(long)]
        full: bool,
        /// List what would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Allow a retention shorter than the table's
        /// `delta.deletedFileRetentionDuration`.
        #[arg(long)]
        force: bool,
    },
    /// List the commits, files, rows, schema and lineage of a sluice sink
    /// (and the history of a Delta table).
    Inspect {
        /// The sink's folder or URL (`out/revenue`, `s3://bucket/out`).
        url: String,
        /// Print the commits as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum SchemaCommand {
    /// Compare consecutive versions of registry schemas and refuse breaking
    /// changes. Exit code 0 when every change is compatible, 2 when not.
    Check {
        /// Schemas to check (default: every schema in the registry).
        names: Vec<String>,
        /// The registry folder.
        #[arg(long, default_value = "schemas")]
        registry: PathBuf,
        /// backward: new readers read old data; forward: old readers read new
        /// data; full: both.
        #[arg(long, default_value = "backward")]
        mode: sluice::contract::compat::Mode,
    },
}

#[derive(Debug, Subcommand)]
enum RolloutCommand {
    /// Change a rolled-out stage's flag: `mode=off|shadow|canary|primary`,
    /// `percent=25`, `variant=rust`. A running pipeline takes it at its next epoch.
    Set {
        /// The pipeline file (TOML).
        pipeline: PathBuf,
        /// The stage.
        stage: String,
        /// KEY=VALUE changes.
        #[arg(required = true, value_name = "KEY=VALUE")]
        changes: Vec<String>,
    },
    /// Per stage and variant: mode, guard verdict, rows, errors, diff, latency, CPU and RSS.
    Status {
        /// The pipeline file (TOML).
        pipeline: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The variant replaces the primary (`set <stage> mode=primary`).
    Promote {
        /// The pipeline file (TOML).
        pipeline: PathBuf,
        /// The stage.
        stage: String,
    },
    /// Back to the primary alone (`set <stage> mode=off`).
    Rollback {
        /// The pipeline file (TOML).
        pipeline: PathBuf,
        /// The stage.
        stage: String,
    },
}

#[derive(Debug, Subcommand)]
enum StageCommand {
    /// Certify a stage against the stage protocol (the conformance kit):
    /// `sluice stage check -- ./my-stage --flag` or `--url grpc://host:port`.
    Check {
        /// Address of a running stage.
        #[arg(long)]
        url: Option<String>,
        /// The stage's config, as JSON, in every open request (what its
        /// `config` table in a pipeline would be), e.g. `'{"max": 3}'`; so
        /// that a stage that only rejects rows under some config shows its
        /// row errors to the `row_errors` check. Default: none (`null`).
        #[arg(long)]
        config: Option<String>,
        /// The program (and arguments) to start on a unix socket.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Serve the jittery pass-through stage on $SLUICE_STAGE_SOCKET (or
    /// $SLUICE_STAGE_ADDR): random delays, bursts and stalls past the
    /// timeout, set by its `config` table. Put it in a pipeline where a
    /// pass-through could be: the output must not change (checks the engine).
    Jitter {
        /// Promise this batch p99 in the manifest (`timing`, v1.1), in ms.
        #[arg(long, requires = "promise_max_ms")]
        promise_p99_ms: Option<u64>,
        /// Promise this longest answer in the manifest, in ms.
        #[arg(long, requires = "promise_p99_ms")]
        promise_max_ms: Option<u64>,
    },
    /// Run a stage and its variants side by side on sample input: rows/s,
    /// CPU per million rows, peak RSS and batch latency at several batch
    /// sizes, and which variant is cheaper for this workload.
    Bench {
        /// The pipeline file (TOML).
        pipeline: PathBuf,
        /// The stage.
        stage: String,
        /// Rows of sample input (one epoch of the pipeline's sources).
        #[arg(long, default_value_t = 200_000)]
        rows: usize,
        /// A Parquet file of input rows instead of the pipeline's sources.
        #[arg(long)]
        input: Option<PathBuf>,
        /// Rows per batch, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1024,8192,65536")]
        batch_sizes: Vec<usize>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Logs go to stderr; `SLUICE_LOG` sets the filter (default `warn`),
/// `SLUICE_LOG_FORMAT=json` switches to JSON lines with trace ids (the
/// format Rust stages log in too; see `sluice_flight::logging`).
pub fn init_logging() {
    sluice_flight::logging::init();
}

/// The first SIGINT/SIGTERM asks the run to stop after the current epoch and
/// commit (exit 0); a second one exits at once without committing.
async fn stop_on_signals(stopper: sluice::Stopper) {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        return;
    };
    let mut first = true;
    loop {
        tokio::select! {
            r = tokio::signal::ctrl_c() => { if r.is_err() { return; } }
            _ = term.recv() => {}
        }
        if first {
            first = false;
            eprintln!(
                "\nstopping: finishing and committing the current epoch (signal again to abort without committing)"
            );
            stopper.stop();
        } else {
            eprintln!("aborted: nothing of the uncommitted epochs was committed");
            std::process::exit(130);
        }
    }
}

/// Exit code for an error: 2 for a pipeline that is invalid as written, 1 otherwise.
fn exit_for(e: &SluiceError) -> ExitCode {
    match e {
        SluiceError::Spec(_) | SluiceError::Plan { .. } => ExitCode::from(2),
        _ => ExitCode::from(1),
    }
}

fn report(e: &SluiceError) -> ExitCode {
    eprintln!("error: {e}");
    exit_for(e)
}

/// Runs one command.
pub async fn main(cli: Cli) -> ExitCode {
    let engine = Engine::new();
    match cli.command {
        Command::Run {
            pipeline,
            overrides,
            max_epochs,
            reset,
            exit_when_idle,
            json,
            quiet,
            metrics,
            otlp,
            ui,
        } => {
            let mut spec = match PipelineSpec::from_file_with_overrides(&pipeline, &overrides) {
                Ok(s) => s,
                Err(e) => return report(&e),
            };
            if otlp.is_some() {
                // before compiling: the stages started then are told too
                spec.observability.otlp = otlp;
            }
            run(
                &engine,
                spec,
                RunArgs {
                    max_epochs,
                    reset,
                    exit_when_idle,
                    json,
                    quiet,
                    metrics,
                    ui,
                },
            )
            .await
        }
        Command::Replay {
            pipeline,
            source,
            input,
            mut overrides,
            json,
            quiet,
        } => {
            let spec = match dead_letters::replay_spec(&pipeline, &source, &input, &mut overrides) {
                Ok(s) => s,
                Err(e) => return report(&e),
            };
            run(
                &engine,
                spec,
                RunArgs {
                    max_epochs: None,
                    reset: false,
                    exit_when_idle: true,
                    json,
                    quiet,
                    metrics: None,
                    ui: None,
                },
            )
            .await
        }
        Command::DeadLetters {
            url,
            source,
            export,
            json,
        } => dead_letters::list(&engine, &url, source.as_deref(), export.as_deref(), json).await,
        Command::Validate {
            pipeline,
            overrides,
        } => {
            let spec = match PipelineSpec::from_file_with_overrides(&pipeline, &overrides) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("{}: invalid\n{e}", pipeline.display());
                    return ExitCode::from(2);
                }
            };
            match engine.validate(spec).await {
                Ok(c) => {
                    outln!(
                        "{}: valid ({} sources, {} stages, {} sinks)",
                        pipeline.display(),
                        c.source_names().count(),
                        c.spec().stages.len(),
                        c.sink_names().count()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{}: invalid\n{e}", pipeline.display());
                    ExitCode::from(2)
                }
            }
        }
        Command::Explain {
            pipeline,
            format,
            graph_only,
            overrides,
        } => {
            let spec = match PipelineSpec::from_file_with_overrides(&pipeline, &overrides) {
                Ok(s) => s,
                Err(e) => return report(&e),
            };
            let mut compiled = match engine.compile(spec).await {
                Ok(c) => c,
                Err(e) => return report(&e),
            };
            out!("{}", compiled.graph_text(format));
            if graph_only || format != GraphFormat::Text {
                return ExitCode::SUCCESS;
            }
            match compiled.physical_plans().await {
                Ok(plans) => {
                    for (sink, plan) in plans {
                        outln!(
                            "\nphysical plan of sink `{sink}` (all stages fused into one DataFusion plan):\n{plan}"
                        );
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => report(&e),
            }
        }
        Command::Inspect { url, json } => inspect::run(&engine, &url, json).await,
        Command::Compact {
            url,
            target_file_size,
            json,
        } => delta::compact(&engine, &url, target_file_size.0, json).await,
        Command::Vacuum {
            url,
            retain,
            full,
            dry_run,
            force,
        } => delta::vacuum(&engine, &url, retain.0, full, dry_run, force).await,
        Command::Stage(StageCommand::Check {
            url,
            config,
            command,
        }) => stage_check::run(url, config, command).await,
        Command::Stage(StageCommand::Jitter {
            promise_p99_ms,
            promise_max_ms,
        }) => {
            let timing = promise_p99_ms.zip(promise_max_ms).map(|(p99, max)| {
                sluice_flight::manifest::Timing {
                    batch_p99_ms: p99,
                    max_answer_ms: max,
                }
            });
            match sluice_flight::serve(sluice_flight::jitter::JitterStage::new(timing)).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Stage(StageCommand::Bench {
            pipeline,
            stage,
            rows,
            input,
            batch_sizes,
            json,
        }) => stage_bench::run(&engine, &pipeline, &stage, rows, input, batch_sizes, json).await,
        Command::Rollout(RolloutCommand::Set {
            pipeline,
            stage,
            changes,
        }) => rollout::set(&engine, &pipeline, &stage, &changes).await,
        Command::Rollout(RolloutCommand::Promote { pipeline, stage }) => {
            rollout::set(&engine, &pipeline, &stage, &["mode=primary".into()]).await
        }
        Command::Rollout(RolloutCommand::Rollback { pipeline, stage }) => {
            rollout::set(&engine, &pipeline, &stage, &["mode=off".into()]).await
        }
        Command::Rollout(RolloutCommand::Status { pipeline, json }) => {
            rollout::status(&engine, &pipeline, json).await
        }
        Command::Schema(SchemaCommand::Check {
            names,
            registry,
            mode,
        }) => schema_check::run(&registry, &names, mode),
    }
}

/// How `sluice run` runs.
struct RunArgs {
    max_epochs: Option<u64>,
    reset: bool,
    exit_when_idle: bool,
    json: bool,
    quiet: bool,
    metrics: Option<String>,
    ui: Option<String>,
}

/// Runs a pipeline with a progress bar and prints its summary.
async fn run(engine: &Engine, spec: PipelineSpec, args: RunArgs) -> ExitCode {
    let RunArgs {
        max_epochs,
        reset,
        exit_when_idle,
        json,
        quiet,
        metrics,
        ui,
    } = args;
    let compiled = match engine.compile(spec).await {
        Ok(c) => c,
        Err(e) => return report(&e),
    };
    if reset {
        match compiled.reset_sinks().await {
            Ok(n) => eprintln!("reset: deleted {n} objects of earlier output"),
            Err(e) => return report(&e),
        }
    }
    // a served /metrics or page outlives the run by `metrics_linger`: so
    // does the process
    let o = &compiled.spec().observability;
    let serves = metrics.is_some() || ui.is_some() || o.metrics.is_some() || o.ui.is_some();
    let linger = match o.metrics_linger {
        Some(d) if serves => d.0,
        _ => std::time::Duration::ZERO,
    };
    if let Some(addr) = ui.as_ref().or(o.ui.as_ref()).filter(|_| !quiet) {
        eprintln!("live page: http://{addr}/");
    }
    let reads_stdin = compiled
        .spec()
        .sources
        .values()
        .any(|s| matches!(s.kind, sluice::sources::SourceKind::Stdin(_)));
    let handle = compiled.start(RunOptions {
        max_epochs,
        exit_when_idle,
        metrics,
        ui,
    });
    let bar = (!quiet && !json).then(|| progress::start(handle.progress().clone()));
    let signals = tokio::spawn(stop_on_signals(handle.stopper()));
    let result = handle.wait().await;
    signals.abort();
    if let Some(bar) = bar {
        bar.finish().await;
    }
    match result {
        Ok(summary) => {
            if json {
                match serde_json::to_string_pretty(&summary) {
                    Ok(s) => outln!("{s}"),
                    Err(e) => eprintln!("error: cannot encode the summary: {e}"),
                }
            } else {
                summary::print(&summary);
            }
            tokio::time::sleep(linger).await;
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            eprintln!("{}", after_failure(&e, reads_stdin));
            exit_for(&e)
        }
    }
}

/// What happens next, after a run failed with `e`: said as it will be, not
/// as it would be for a replayable, healthy input.
fn after_failure(e: &sluice::SluiceError, reads_stdin: bool) -> String {
    let mut next = String::from("nothing of the failed epoch was committed");
    match e {
        sluice::SluiceError::Source {
            file: Some(file),
            retry: sluice::RetryHint::Never,
            ..
        } if !file.starts_with("stdin://") => next.push_str(&format!(
            "; the next run reads {file} again and fails the same way until it is fixed, \
             removed, or the source sets on_error = \"skip\" or \"dead_letter\""
        )),
        _ if !reads_stdin => next.push_str("; the next run redoes it from the last commit"),
        _ => {}
    }
    if reads_stdin {
        next.push_str(
            "; standard input cannot be read again: its lines since the last commit are lost \
             (read from a `dir` source when the input must survive a failure)",
        );
    }
    next
}

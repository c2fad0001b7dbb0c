//! The `sluice` command line: run, validate, explain and inspect pipelines.

mod cli;

use std::process::ExitCode;

use clap::Parser;

// DataFusion allocates and frees many large buffers; mimalloc keeps them
// instead of mapping fresh pages each time (as DataFusion's own CLI does).
// Built with `no_thp`: mimalloc does not ask for transparent huge pages,
// whose 2 MiB zeroing on first touch cost more than their TLB savings give
// back here (docs/benchmarks.md: workload 2 ran 10 % faster in 10 % less
// memory without them; set MIMALLOC_ALLOW_THP=0 on kernels whose THP mode
// is `always`).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // SIGPIPE stays ignored (Rust's default): a stage process that dies
    // must not kill the engine through a write to its socket. A closed
    // stdout is handled where the CLI writes (`outln!`).
    let args = cli::Cli::parse();
    cli::init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(cli::main(args))
}

//! The `identity` example stage in Rust: answers every batch with itself.
//! For benchmarks and the conformance kit; its Go twin is
//! `sdk/go/examples/identity`.
//!
//! ```text
//! SLUICE_STAGE_SOCKET=/tmp/identity.sock cargo run -p sluice-flight --example identity
//! ```

use arrow_array::RecordBatch;
use sluice_flight::{Manifest, OpenRequest, Processed, Processor, Stage, StageError, serve};

struct Identity;
struct Pass;

#[async_trait::async_trait]
impl Stage for Identity {
    fn manifest(&self) -> Manifest {
        // no schemas: any input, output = input
        Manifest::new("identity", "1.0.0")
    }

    async fn open(&self, _request: &OpenRequest) -> Result<Box<dyn Processor>, StageError> {
        Ok(Box::new(Pass))
    }
}

#[async_trait::async_trait]
impl Processor for Pass {
    async fn process(&mut self, batch: RecordBatch) -> Result<Processed, StageError> {
        Ok(Processed::batch(batch))
    }
}

// large batches: mimalloc reuses memory where the system allocator maps and faults in fresh pages
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    serve(Identity).await?;
    Ok(())
}

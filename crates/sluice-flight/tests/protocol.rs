//! Golden vectors of the stage protocol, shared with the Go SDK's tests.

use std::io::Cursor;

use arrow_array::RecordBatch;
use arrow_ipc::reader::StreamReader;
use arrow_ipc::writer::StreamWriter;

const VECTOR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../testdata/protocol/type_zoo.arrows"
);

fn encode(batch: &RecordBatch) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = StreamWriter::try_new(&mut out, &batch.schema()).unwrap();
    w.write(batch).unwrap();
    w.finish().unwrap();
    drop(w);
    out
}

/// `type_zoo.arrows` is the conformance kit's type zoo (20 rows) as an Arrow
/// IPC stream. Rust decodes it to exactly the zoo, and re-encodes it to the
/// same bytes. (`SLUICE_UPDATE_GOLDEN=1` rewrites the file.)
#[test]
fn the_type_zoo_vector_decodes_and_re_encodes_identically() {
    let zoo = sluice_flight::conformance::type_zoo(20);
    if std::env::var("SLUICE_UPDATE_GOLDEN").is_ok() {
        std::fs::write(VECTOR, encode(&zoo)).unwrap();
    }
    let bytes = std::fs::read(VECTOR).expect("testdata/protocol/type_zoo.arrows");
    let batches: Vec<RecordBatch> = StreamReader::try_new(Cursor::new(&bytes), None)
        .unwrap()
        .map(|b| b.unwrap())
        .collect();
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0], zoo, "the vector holds the zoo's values");
    assert_eq!(
        encode(&batches[0]),
        bytes,
        "re-encoding gives the same bytes"
    );
}

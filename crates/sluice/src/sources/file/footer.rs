//! A Parquet file's footer, checked before DataFusion reads it. A file ends
//! with its metadata (thrift, which may embed the Arrow schema it was
//! written with), the metadata's length (4 bytes, little endian) and the
//! magic `PAR1`. Corrupt footers make the parquet 59 and arrow-ipc 59 crates
//! panic, from schema inference and from every scan: a length larger than
//! the file (an integer overflow), an embedded Arrow schema naming a type
//! that does not exist (`unimplemented!`). So every Parquet file a source
//! will read is checked here first (two ranged reads), its metadata decoded
//! under `catch_unwind`, and a bad one is refused naming the source and the
//! file. (The panic hook still prints what the crates said.)

use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use parquet::arrow::parquet_to_arrow_schema;
use parquet::file::metadata::ParquetMetaDataReader;

use crate::error::{Result, RetryHint, SluiceError};
use crate::storage::Location;

/// The magic a Parquet file starts and ends with.
const MAGIC: &[u8; 4] = b"PAR1";
/// Magic at the start, then metadata length and magic at the end.
const SMALLEST: u64 = 12;
/// Footers read at once (a folder on S3 has many files).
const CONCURRENT_READS: usize = 32;

/// Why `tail`, the last 8 bytes of a file of `size` bytes, is not the end
/// of a Parquet file; `None` when it is.
pub(super) fn footer_problem(size: u64, tail: &[u8]) -> Option<String> {
    if size < SMALLEST || tail.len() != 8 {
        return Some(format!(
            "not a Parquet file: {size} bytes, fewer than the {SMALLEST} of the smallest one"
        ));
    }
    if &tail[4..] != MAGIC {
        return Some(
            "not a Parquet file, or one cut short: it does not end with the magic `PAR1`".into(),
        );
    }
    let metadata = u64::from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]));
    (metadata + SMALLEST > size).then(|| {
        format!(
            "a corrupt Parquet file: its footer gives {metadata} bytes of metadata, more than the \
             file's {size} bytes hold"
        )
    })
}

/// Checks the footer of every file in `files`; the first bad one fails,
/// naming source `source` and the file.
pub(super) async fn check_footers(
    store: &dyn ObjectStore,
    location: &Location,
    source: &str,
    files: &[ObjectMeta],
) -> Result<()> {
    // in chunks of joined futures: a stream of them would hold a closure
    // over borrowed lifetimes, which the async trait's `Send` bound refuses
    for chunk in files.chunks(CONCURRENT_READS) {
        futures::future::try_join_all(
            chunk
                .iter()
                .map(|f| check_footer(store, location, source, f)),
        )
        .await?;
    }
    Ok(())
}

async fn check_footer(
    store: &dyn ObjectStore,
    location: &Location,
    source: &str,
    f: &ObjectMeta,
) -> Result<()> {
    let file = || Some(location.object_url(&f.location));
    let read = |range: std::ops::Range<u64>| async move {
        store.get_range(&f.location, range).await.map_err(|e| {
            SluiceError::source_failed(source, file(), "cannot read the file's footer", e)
        })
    };
    let problem = if f.size < SMALLEST {
        footer_problem(f.size, &[])
    } else {
        let tail = read(f.size - 8..f.size).await?;
        match footer_problem(f.size, &tail) {
            Some(p) => Some(p),
            None => {
                let length = u64::from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]));
                metadata_problem(&read(f.size - 8 - length..f.size - 8).await?)
            }
        }
    };
    match problem {
        None => Ok(()),
        Some(message) => Err(SluiceError::Source {
            source_name: source.to_string(),
            file: file(),
            line: None,
            message,
            retry: RetryHint::Never,
            cause: None,
        }),
    }
}

/// Why a footer's metadata cannot be read, if it cannot: its thrift, and
/// the Arrow schema it may embed, decoded as DataFusion will (see the
/// module docs for why under `catch_unwind`).
fn metadata_problem(metadata: &[u8]) -> Option<String> {
    let decoded = std::panic::catch_unwind(|| {
        let md = ParquetMetaDataReader::decode_metadata(metadata)
            .map_err(|e| format!("its metadata cannot be decoded: {e}"))?;
        let fm = md.file_metadata();
        parquet_to_arrow_schema(fm.schema_descr(), fm.key_value_metadata())
            .map_err(|e| format!("its schema cannot be read: {e}"))?;
        Ok::<(), String>(())
    });
    match decoded {
        Ok(Ok(())) => None,
        Ok(Err(m)) => Some(format!("a corrupt Parquet file: {m}")),
        Err(panic) => Some(format!(
            "a corrupt Parquet file: the parquet reader gave up on its metadata ({})",
            sluice_flight::panic_message(panic.as_ref())
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tail(metadata: u32, magic: &[u8; 4]) -> Vec<u8> {
        let mut t = metadata.to_le_bytes().to_vec();
        t.extend_from_slice(magic);
        t
    }

    #[test]
    fn footers_are_taken_exactly_when_their_metadata_fits_in_the_file() {
        assert_eq!(footer_problem(112, &tail(100, MAGIC)), None);
        assert!(
            footer_problem(111, &tail(100, MAGIC))
                .unwrap()
                .contains("100 bytes of metadata")
        );
        assert!(
            footer_problem(112, &tail(100, b"PAR0"))
                .unwrap()
                .contains("`PAR1`")
        );
        assert!(
            footer_problem(11, &tail(0, MAGIC))
                .unwrap()
                .contains("11 bytes")
        );
        assert!(footer_problem(u64::MAX, &tail(u32::MAX, MAGIC)).is_none());
    }

    proptest! {
        #[test]
        fn any_tail_of_any_size_gives_an_answer(size in any::<u64>(), tail in prop::collection::vec(any::<u8>(), 0..12)) {
            let answer = footer_problem(size, &tail);
            if answer.is_none() {
                let metadata = u64::from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]));
                prop_assert!(&tail[4..] == MAGIC && metadata + SMALLEST <= size);
            }
        }
    }
}

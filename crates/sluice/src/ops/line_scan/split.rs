//! Splitting files into byte ranges: one planner for partitions and epochs.
//!
//! An uncompressed file whose records cannot hold a newline may be read in
//! byte ranges, by several partitions at once and over several epochs. A
//! range owns the lines that start inside it (as DataFusion's own CSV scan
//! does), so ranges need not fall on line starts and no line is read twice
//! or lost.

use std::ops::Range;

use bytes::{Buf, Bytes};

use super::{Compression, LineFormat};

/// Files (or parts) smaller than this are never split: fewer, larger reads
/// beat an exact share.
pub(crate) const MIN_SPLIT_BYTES: u64 = 8 << 20;

/// Whether a file of `format` with `compression` may be read in byte ranges.
pub(crate) fn splittable(format: &LineFormat, compression: Compression) -> bool {
    compression == Compression::None
        && match format {
            LineFormat::Csv(o) => !o.newlines_in_values,
            LineFormat::Jsonl => true,
        }
}

/// Cuts `range` into pieces of about `size` bytes (at least `min`, normally
/// [`MIN_SPLIT_BYTES`]); a last piece under half of that joins the one before.
pub(crate) fn cut(range: Range<u64>, size: u64, min: u64) -> Vec<Range<u64>> {
    let size = size.max(min).max(1);
    let mut out = Vec::new();
    let mut start = range.start;
    while start < range.end {
        let mut end = start.saturating_add(size).min(range.end);
        if range.end - end < size / 2 {
            end = range.end;
        }
        out.push(start..end);
        start = end;
    }
    out
}

/// Keeps the bytes of the lines that start inside a byte range.
pub(crate) struct RangeWindow {
    /// Absolute offset of the next byte of the stream.
    pos: u64,
    /// Still dropping the partial line before the range.
    skipping: bool,
    /// Offset of the range's last byte; the line containing it is the last one.
    last_byte: Option<u64>,
    done: bool,
}

impl RangeWindow {
    pub(crate) fn new(range: Option<Range<u64>>) -> Self {
        match range {
            None => Self {
                pos: 0,
                skipping: false,
                last_byte: None,
                done: false,
            },
            Some(r) => Self {
                pos: r.start.saturating_sub(1),
                skipping: r.start > 0,
                last_byte: Some(r.end.saturating_sub(1)),
                done: false,
            },
        }
    }

    /// Returns the part of `chunk` inside the window, the file offset of its
    /// first byte, and whether the window is finished.
    pub(crate) fn clip(&mut self, mut chunk: Bytes) -> (Bytes, u64, bool) {
        if self.done {
            return (Bytes::new(), self.pos, true);
        }
        let chunk_start = self.pos;
        self.pos += chunk.len() as u64;
        let mut offset = chunk_start;
        if self.skipping {
            match memchr::memchr(b'\n', &chunk) {
                Some(i) => {
                    chunk.advance(i + 1);
                    offset += i as u64 + 1;
                    self.skipping = false;
                    // the newline ending the previous unit's last line is at or past
                    // our last byte: no line starts inside this range
                    if self.last_byte.is_some_and(|last| offset > last) {
                        self.done = true;
                        return (Bytes::new(), offset, true);
                    }
                }
                None => return (Bytes::new(), self.pos, false),
            }
        }
        if let Some(last) = self.last_byte
            && self.pos > last
        {
            // the window ends at the first newline at or after `last`
            let from = last.saturating_sub(offset) as usize;
            match memchr::memchr(b'\n', chunk.get(from.min(chunk.len())..).unwrap_or(&[])) {
                Some(i) => {
                    chunk.truncate(from + i + 1);
                    self.done = true;
                    return (chunk, offset, true);
                }
                None => {
                    // the last line continues in the next chunk
                    self.last_byte = Some(self.pos);
                }
            }
        }
        (chunk, offset, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(data: &str, range: Range<u64>, chunk: usize) -> String {
        let mut w = RangeWindow::new(Some(range.clone()));
        // the stream of a split starts one byte early
        let start = range.start.saturating_sub(1) as usize;
        let mut out = Vec::new();
        for c in data.as_bytes()[start..].chunks(chunk) {
            let (b, at, done) = w.clip(Bytes::copy_from_slice(c));
            if !b.is_empty() {
                assert_eq!(&data.as_bytes()[at as usize..at as usize + b.len()], &b[..]);
            }
            out.extend_from_slice(&b);
            if done {
                break;
            }
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn ranges_own_the_lines_that_start_in_them() {
        let data = "aa\nbbbb\ncc\ndddddd\ne\n";
        for chunk in [1, 2, 3, 7, 100] {
            for cut in 1..data.len() as u64 {
                let a = lines_of(data, 0..cut, chunk);
                let b = lines_of(data, cut..data.len() as u64, chunk);
                assert_eq!(
                    format!("{a}{b}"),
                    data,
                    "cut at {cut}, chunk {chunk}: {a:?} + {b:?}"
                );
                assert!(a.is_empty() || a.ends_with('\n'));
            }
        }
    }

    #[test]
    fn three_way_splits_lose_and_repeat_nothing() {
        let data = "a\nbbbbbbbbbbbbbbbb\nc\ndd\n\neeeeeeeeeee\nf";
        let n = data.len() as u64;
        for chunk in [1, 4, 64] {
            for c1 in 1..n {
                for c2 in c1..n {
                    let parts = [
                        lines_of(data, 0..c1, chunk),
                        lines_of(data, c1..c2, chunk),
                        lines_of(data, c2..n, chunk),
                    ];
                    assert_eq!(
                        parts.concat(),
                        data,
                        "cuts {c1},{c2} chunk {chunk}: {parts:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn cuts_cover_the_range_in_pieces_of_about_the_size() {
        let m = MIN_SPLIT_BYTES;
        assert_eq!(cut(0..m, 1, m), vec![0..m]);
        assert_eq!(
            cut(5..5 + 3 * m, m, m),
            vec![5..5 + m, 5 + m..5 + 2 * m, 5 + 2 * m..5 + 3 * m]
        );
        assert_eq!(cut(0..2 * m + m / 4, m, m), vec![0..m, m..2 * m + m / 4]);
        assert!(cut(3..3, m, m).is_empty());
        assert_eq!(cut(0..10, 0, 0).len(), 10);
    }
}

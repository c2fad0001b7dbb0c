//! Framing: cutting a byte stream into records, with their physical lines.
//!
//! The decoders (sluice's CSV column reader, arrow's JSON reader) are only
//! ever handed whole, well-framed records. Framing is ours, so that:
//!
//! - every record is known before it is decoded: its first physical line,
//!   its byte offset, and (CSV) its field count, so a bad one is named
//!   exactly and the rows out + rows given up always equal the records in;
//! - a stretch that cannot be framed (a quote that never closes, text after
//!   a closing quote, a quote running past a line end without
//!   `newlines_in_values`) becomes one faulty record, and framing goes on
//!   after it instead of taking the rest of the file down with it.
//!
//! A physical line ends at `\n`, `\r\n` or a lone `\r` (as editors count
//! them). Blank lines (only ASCII whitespace) are not records: they are
//! counted as lines and skipped in every mode.

use std::fmt;

/// A UTF-8 byte-order mark: skipped at the start of a file (csv and jsonl
/// alike), by scans and schema samples.
pub(crate) const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// How records are delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// Delimited text.
    Csv {
        delimiter: u8,
        quote: u8,
        escape: Option<u8>,
        /// A quoted value may span lines.
        newlines_in_values: bool,
    },
    /// One JSON value per line.
    Jsonl,
}

/// Why a stretch of bytes is not a well-formed record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// A quoted value runs past the end of its line, and values may not hold
    /// newlines.
    QuoteAcrossLine,
    /// A quoted value is still open at the end of the input.
    UnclosedQuote,
    /// Something other than a delimiter or a line end follows a closing quote.
    TextAfterQuote,
    /// A quoted value (values may hold newlines) runs on over lines past
    /// [`MAX_RECORD_BYTES`] without closing.
    QuotedSpanTooLong,
    /// A line runs past [`MAX_RECORD_BYTES`] without a line break.
    LineTooLong,
}

/// The most bytes a record may take before it is given up. Without a bound,
/// one stray quote with `newlines_in_values`, or a file with no line breaks,
/// would be held in memory whole:
/// - a multi-line quoted value past it costs its first line, as a quote that
///   never closes does, and framing goes on with the next line;
/// - a single line past it is given up (its first `MAX_RECORD_BYTES`) and
///   the rest of the line is skipped unread.
pub(crate) const MAX_RECORD_BYTES: usize = 64 << 20;

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fault::QuoteAcrossLine => {
                "a quoted value runs past the end of the line (set newlines_in_values = true if values may hold newlines)"
            }
            Fault::UnclosedQuote => "a quoted value is never closed",
            Fault::TextAfterQuote => "text follows a closing quote inside a field",
            Fault::QuotedSpanTooLong => {
                "a quoted value runs on over lines past 64 MiB without closing (a stray quote?)"
            }
            Fault::LineTooLong => {
                "a line runs past 64 MiB without a line break; its first 64 MiB are given up here and the rest of the line is skipped"
            }
        })
    }
}

/// One record found in a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Frame {
    /// Start of the record in the buffer handed to [`Framer::frame`].
    pub start: usize,
    /// End of the record (its line terminator excluded).
    pub end: usize,
    /// Physical line of its first byte, counted from the framer's first line.
    pub line: u64,
    /// CSV: fields counted outside quotes (1 + delimiters). 0 for JSON.
    pub fields: usize,
    /// Set when the bytes could not be framed as a record.
    pub fault: Option<Fault>,
}

/// Where the scan of an unfinished record stopped, to resume it when more
/// bytes arrive (so a long record is not scanned again per chunk).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CsvState {
    /// At the start of a field.
    FieldStart,
    /// Inside an unquoted field.
    Unquoted,
    /// Inside a quoted field.
    Quoted,
    /// Just after a quote inside a quoted field: a second quote is a literal
    /// quote, anything else closed the field.
    QuoteInQuoted,
    /// After the escape character inside a quoted field.
    Escaped,
}

#[derive(Debug, Clone, Copy)]
struct Resume {
    /// Position (in the buffer) to go on scanning from.
    pos: usize,
    state: CsvState,
    /// Line breaks inside the record so far.
    breaks: u64,
    /// Delimiters seen outside quotes so far.
    delimiters: usize,
    /// Position of the first line break inside the record, if any.
    first_break: Option<usize>,
}

impl Resume {
    /// A scan at `pos`, at the start of a field, with nothing seen yet.
    fn at(pos: usize) -> Self {
        Self {
            pos,
            state: CsvState::FieldStart,
            breaks: 0,
            delimiters: 0,
            first_break: None,
        }
    }
}

/// Cuts a byte stream into records; see the module docs.
///
/// The caller hands [`Framer::frame`] a buffer that starts at a record
/// boundary, drops the bytes it reports consumed, appends more, and calls
/// again. The framer keeps the line count and the scan of an unfinished
/// record between calls.
#[derive(Debug)]
pub(crate) struct Framer {
    dialect: Dialect,
    /// Physical line of the next byte to frame.
    line: u64,
    resume: Option<Resume>,
    /// See [`MAX_RECORD_BYTES`] (smaller in tests).
    max_record: usize,
    /// Skipping the rest of a line given up as too long.
    skipping: bool,
}

impl Framer {
    /// A framer whose first byte is on physical line `first_line`.
    pub(crate) fn new(dialect: Dialect, first_line: u64) -> Self {
        Self {
            dialect,
            line: first_line,
            resume: None,
            max_record: MAX_RECORD_BYTES,
            skipping: false,
        }
    }

    /// The same framer with a record cap of `max_record` bytes (tests
    /// reach the cap with small inputs).
    #[cfg(test)]
    pub(crate) fn with_max_record(mut self, max_record: usize) -> Self {
        self.max_record = max_record;
        self
    }

    /// Frames the records at the start of `buf` into `out`; returns the bytes
    /// they (with their terminators and the blank lines between them) take.
    /// With `eof`, `buf` holds the rest of the input and all of it is framed.
    pub(crate) fn frame(&mut self, buf: &[u8], eof: bool, out: &mut Vec<Frame>) -> usize {
        let delimiter = match self.dialect {
            Dialect::Csv { delimiter, .. } => Some(delimiter),
            Dialect::Jsonl => None,
        };
        let mut pos = 0;
        if self.skipping {
            // the rest of a line given up as too long
            let Some(n) = memchr::memchr2(b'\n', b'\r', buf) else {
                return buf.len();
            };
            let Some(next) = self.after_break(buf, n, eof) else {
                return n; // a `\r` ends the buffer: the next byte decides
            };
            self.skipping = false;
            self.line += 1;
            pos = next;
        }
        loop {
            // blank lines between records
            while pos < buf.len() {
                match buf[pos] {
                    b'\n' => self.line += 1,
                    b'\r' => {
                        if pos + 1 == buf.len() && !eof {
                            return pos; // `\r\n` or lone `\r`: the next byte decides
                        }
                        if buf.get(pos + 1) != Some(&b'\n') {
                            self.line += 1;
                        }
                    }
                    b' ' | b'\t' | b'\x0c' if Some(buf[pos]) != delimiter => {
                        // whitespace starting a record: blank only if the line is
                        // (a tab that delimits fields is not whitespace: `\t\t` is a record)
                        let is_blank = |c: &u8| c.is_ascii_whitespace() && Some(*c) != delimiter;
                        let line_end = memchr::memchr2(b'\n', b'\r', &buf[pos..]);
                        let blank = match line_end {
                            Some(n) => buf[pos..pos + n].iter().all(is_blank),
                            None if eof => buf[pos..].iter().all(is_blank),
                            // blank so far: wait for the line's end, unless it runs
                            // past the record cap (then it is framed, and capped,
                            // as a record)
                            None if buf.len() - pos <= self.max_record
                                && buf[pos..].iter().all(is_blank) =>
                            {
                                return pos;
                            }
                            None => false,
                        };
                        if !blank {
                            break;
                        }
                        pos += line_end.unwrap_or(buf.len() - pos);
                        continue;
                    }
                    _ => break,
                }
                pos += 1;
            }
            if pos == buf.len() {
                return pos;
            }
            let found = match self.dialect {
                Dialect::Jsonl => self.line_record(buf, pos, eof),
                Dialect::Csv { .. } => self.csv_record(buf, pos, eof),
            };
            match found {
                Some((frame, next)) => {
                    out.push(frame);
                    pos = next;
                }
                // an unfinished record past the cap is given up here, whatever
                // made it wait (the buffer's end, or a `\r` at it)
                None => match self.resume {
                    Some(r) if buf.len() - pos > self.max_record => match r.first_break {
                        None => {
                            // one line: give up what there is of it, skip the rest
                            out.push(Frame {
                                start: pos,
                                end: buf.len(),
                                line: self.line,
                                fields: 0,
                                fault: Some(Fault::LineTooLong),
                            });
                            self.resume = None;
                            self.skipping = true;
                            return buf.len();
                        }
                        Some(first_break) => {
                            // a quoted value over lines: its first line is given
                            // up (as for a quote that never closes), and framing
                            // goes on with the next line
                            let end = pos + first_break;
                            out.push(Frame {
                                start: pos,
                                end,
                                line: self.line,
                                fields: r.delimiters + 1,
                                fault: Some(Fault::QuotedSpanTooLong),
                            });
                            self.line += 1;
                            self.resume = None;
                            // that break was read whole when it was found
                            pos = self.after_break(buf, end, eof).unwrap_or(end + 1);
                        }
                    },
                    _ => return pos,
                },
            }
        }
    }

    /// A record that ends at its line's end (JSON lines).
    fn line_record(&mut self, buf: &[u8], start: usize, eof: bool) -> Option<(Frame, usize)> {
        // a long line arriving in many chunks is searched once, not per chunk
        let from = start + self.resume.take().map_or(0, |r| r.pos);
        let end = match memchr::memchr2(b'\n', b'\r', &buf[from..]) {
            Some(n) => from + n,
            None if eof => buf.len(),
            None => {
                self.park(&Resume::at(buf.len()), start);
                return None;
            }
        };
        let Some(next) = self.after_break(buf, end, eof) else {
            self.park(&Resume::at(end), start);
            return None;
        };
        let frame = Frame {
            start,
            end,
            line: self.line,
            fields: 0,
            fault: None,
        };
        self.line += 1;
        Some((frame, next))
    }

    /// Position after the line break at `at` (`buf.len()` at the end), or
    /// `None` when a `\r` ends the buffer and the next byte decides.
    fn after_break(&self, buf: &[u8], at: usize, eof: bool) -> Option<usize> {
        match buf.get(at) {
            None => Some(at),
            Some(b'\n') => Some(at + 1),
            Some(_) => match buf.get(at + 1) {
                Some(b'\n') => Some(at + 2),
                Some(_) => Some(at + 1),
                None if eof => Some(at + 1),
                None => None,
            },
        }
    }

    /// A CSV record starting at `start`, quote-aware.
    fn csv_record(&mut self, buf: &[u8], start: usize, eof: bool) -> Option<(Frame, usize)> {
        let Dialect::Csv {
            delimiter,
            quote,
            escape,
            newlines_in_values,
        } = self.dialect
        else {
            return None;
        };
        // a resumed scan's positions are kept relative to the record's start
        let mut r = match self.resume.take() {
            Some(r) => Resume {
                pos: start + r.pos,
                first_break: r.first_break.map(|b| start + b),
                ..r
            },
            None => Resume::at(start),
        };
        let finish = |this: &mut Self, r: &Resume, end: usize, next: usize, fault| {
            let frame = Frame {
                start,
                end,
                line: this.line,
                fields: r.delimiters + 1,
                fault,
            };
            this.line += r.breaks + 1;
            Some((frame, next))
        };
        loop {
            let Some(&b) = buf.get(r.pos) else {
                if !eof {
                    self.park(&r, start);
                    return None;
                }
                let end = buf.len();
                return match r.state {
                    CsvState::Quoted | CsvState::Escaped => {
                        self.first_line_only(&r, buf, start, eof, Fault::UnclosedQuote)
                    }
                    _ => finish(self, &r, end, end, None),
                };
            };
            match r.state {
                CsvState::Quoted => {
                    // jump to the next byte that matters inside quotes
                    let rest = &buf[r.pos..];
                    let hit = match escape {
                        Some(e) if e != quote => memchr::memchr3(quote, e, b'\n', rest)
                            .into_iter()
                            .chain(memchr::memchr(b'\r', rest))
                            .min(),
                        _ => memchr::memchr3(quote, b'\n', b'\r', rest),
                    };
                    let Some(n) = hit else {
                        r.pos = buf.len();
                        continue;
                    };
                    r.pos += n;
                    let b = buf[r.pos];
                    if b == b'\n' || b == b'\r' {
                        if !newlines_in_values {
                            let next = self.after_break(buf, r.pos, eof);
                            let Some(next) = next else {
                                self.park(&r, start);
                                return None;
                            };
                            return finish(self, &r, r.pos, next, Some(Fault::QuoteAcrossLine));
                        }
                        let Some(next) = self.after_break(buf, r.pos, eof) else {
                            self.park(&r, start);
                            return None;
                        };
                        r.first_break.get_or_insert(r.pos);
                        r.breaks += 1;
                        r.pos = next;
                    } else if Some(b) == escape && b != quote {
                        r.state = CsvState::Escaped;
                        r.pos += 1;
                    } else {
                        r.state = CsvState::QuoteInQuoted;
                        r.pos += 1;
                    }
                }
                CsvState::Escaped => {
                    if b == b'\n' || b == b'\r' {
                        // an escaped line break is still a line break
                        if !newlines_in_values {
                            r.state = CsvState::Quoted;
                            continue;
                        }
                        let Some(next) = self.after_break(buf, r.pos, eof) else {
                            self.park(&r, start);
                            return None;
                        };
                        r.first_break.get_or_insert(r.pos);
                        r.breaks += 1;
                        r.pos = next;
                    } else {
                        r.pos += 1;
                    }
                    r.state = CsvState::Quoted;
                }
                CsvState::FieldStart | CsvState::Unquoted | CsvState::QuoteInQuoted => {
                    if b == b'\n' || b == b'\r' {
                        let Some(next) = self.after_break(buf, r.pos, eof) else {
                            self.park(&r, start);
                            return None;
                        };
                        return finish(self, &r, r.pos, next, None);
                    }
                    if b == delimiter {
                        r.delimiters += 1;
                        r.state = CsvState::FieldStart;
                        r.pos += 1;
                        continue;
                    }
                    match r.state {
                        CsvState::FieldStart if b == quote => {
                            r.state = CsvState::Quoted;
                            r.pos += 1;
                        }
                        CsvState::QuoteInQuoted if b == quote => {
                            // a doubled quote: a literal quote
                            r.state = CsvState::Quoted;
                            r.pos += 1;
                        }
                        CsvState::QuoteInQuoted => {
                            return self.first_line_only(
                                &r,
                                buf,
                                start,
                                eof,
                                Fault::TextAfterQuote,
                            );
                        }
                        _ => {
                            // plain bytes, whole fields at a time: up to the next quote
                            // or line end, counting the delimiters on the way (one
                            // search per record, not per field)
                            let rest = &buf[r.pos..];
                            let n =
                                memchr::memchr3(quote, b'\n', b'\r', rest).unwrap_or(rest.len());
                            let run = &rest[..n];
                            r.delimiters += run.iter().filter(|c| **c == delimiter).count();
                            r.state = match run.last() {
                                Some(c) if *c == delimiter => CsvState::FieldStart,
                                Some(_) => CsvState::Unquoted,
                                None => r.state,
                            };
                            r.pos += n;
                            if r.pos < buf.len() && buf[r.pos] == quote {
                                // opens a quoted field only at a field's start
                                r.state = if r.state == CsvState::FieldStart {
                                    CsvState::Quoted
                                } else {
                                    CsvState::Unquoted
                                };
                                r.pos += 1;
                            }
                        }
                    }
                }
            }
        }
    }

    /// Keeps the scan of an unfinished record, relative to its start.
    fn park(&mut self, r: &Resume, start: usize) {
        self.resume = Some(Resume {
            pos: r.pos - start,
            first_break: r.first_break.map(|b| b - start),
            ..*r
        });
    }

    /// A faulty record: when it spans lines, only its first line is taken as
    /// the bad stretch (the quote that opened the span is the likely culprit)
    /// and framing starts again on the next line; otherwise the record up to
    /// its line's end is.
    fn first_line_only(
        &mut self,
        r: &Resume,
        buf: &[u8],
        start: usize,
        eof: bool,
        fault: Fault,
    ) -> Option<(Frame, usize)> {
        let end = match r.first_break {
            Some(b) => b,
            None => match memchr::memchr2(b'\n', b'\r', &buf[r.pos.min(buf.len())..]) {
                Some(n) => r.pos + n,
                None if eof => buf.len(),
                None => {
                    self.park(r, start);
                    return None;
                }
            },
        };
        let Some(next) = self.after_break(buf, end, eof) else {
            self.park(r, start);
            return None;
        };
        let frame = Frame {
            start,
            end,
            line: self.line,
            fields: r.delimiters + 1,
            fault: Some(fault),
        };
        self.line += 1;
        Some((frame, next))
    }
}

/// Line breaks in `bytes` (`\n`, `\r\n` or a lone `\r`); `pending_cr` carries
/// a `\r` that ended the previous piece.
pub(crate) fn count_line_breaks(bytes: &[u8], pending_cr: &mut bool) -> u64 {
    let mut n = 0;
    let mut from = 0;
    if std::mem::take(pending_cr) {
        n += 1; // that `\r` was a break, with or without a `\n` after it
        if bytes.first() == Some(&b'\n') {
            from = 1;
        }
    }
    let mut iter = memchr::memchr2_iter(b'\n', b'\r', &bytes[from..]).peekable();
    while let Some(i) = iter.next() {
        let i = i + from;
        if bytes[i] == b'\n' {
            n += 1;
        } else if i + 1 == bytes.len() {
            *pending_cr = true;
        } else {
            n += 1;
            if bytes[i + 1] == b'\n' {
                iter.next();
            }
        }
    }
    n
}

/// The byte ranges of a CSV record's fields, quotes kept (for the rare checks
/// that need a field's text after arrow has parsed it).
pub(crate) fn csv_field_ranges(
    record: &[u8],
    delimiter: u8,
    quote: u8,
    escape: Option<u8>,
) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    let mut at_start = true;
    let mut escaped = false;
    for (i, &b) in record.iter().enumerate() {
        if std::mem::take(&mut escaped) {
            continue; // the byte after the escape is taken as it is
        }
        if quoted && Some(b) == escape && escape != Some(quote) {
            escaped = true;
        } else if b == quote && (at_start || quoted) {
            quoted = !quoted;
        } else if b == delimiter && !quoted {
            out.push((start, i));
            start = i + 1;
            at_start = true;
            continue;
        }
        at_start = false;
    }
    out.push((start, record.len()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CSV: Dialect = Dialect::Csv {
        delimiter: b',',
        quote: b'"',
        escape: None,
        newlines_in_values: false,
    };
    const CSV_NL: Dialect = Dialect::Csv {
        delimiter: b',',
        quote: b'"',
        escape: None,
        newlines_in_values: true,
    };

    /// Frames `data` fed in pieces of `chunk` bytes, as a scan does:
    /// (text, line, fields, fault) per record.
    fn frames(
        dialect: Dialect,
        data: &[u8],
        chunk: usize,
    ) -> Vec<(String, u64, usize, Option<Fault>)> {
        let mut f = Framer::new(dialect, 1);
        let mut buf: Vec<u8> = Vec::new();
        let mut out = Vec::new();
        let mut fed = 0;
        loop {
            let eof = fed == data.len();
            let mut got = Vec::new();
            let used = f.frame(&buf, eof, &mut got);
            for g in got {
                out.push((
                    String::from_utf8_lossy(&buf[g.start..g.end]).into_owned(),
                    g.line,
                    g.fields,
                    g.fault,
                ));
            }
            buf.drain(..used);
            if eof {
                assert!(buf.is_empty(), "left over: {buf:?}");
                return out;
            }
            let take = chunk.min(data.len() - fed);
            buf.extend_from_slice(&data[fed..fed + take]);
            fed += take;
        }
    }

    fn each_chunking(dialect: Dialect, data: &[u8]) -> Vec<(String, u64, usize, Option<Fault>)> {
        let whole = frames(dialect, data, data.len().max(1));
        for chunk in 1..=data.len().max(1) {
            assert_eq!(frames(dialect, data, chunk), whole, "chunk {chunk}");
        }
        whole
    }

    #[test]
    fn lines_are_physical_whatever_the_line_ends() {
        let got = each_chunking(Dialect::Jsonl, b"{\"a\":1}\r\n\n  \r{\"a\":2}\r{\"a\":3}");
        let lines: Vec<(String, u64)> = got.into_iter().map(|g| (g.0, g.1)).collect();
        assert_eq!(
            lines,
            vec![
                ("{\"a\":1}".into(), 1),
                ("{\"a\":2}".into(), 4),
                ("{\"a\":3}".into(), 5)
            ]
        );
    }

    #[test]
    fn quoted_newlines_make_one_record_spanning_lines() {
        let got = each_chunking(CSV_NL, b"a,b\n\"x\r\ny\",2\n3,\"\"\"q\"\"\"\n4,5");
        assert_eq!(
            got,
            vec![
                ("a,b".into(), 1, 2, None),
                ("\"x\r\ny\",2".into(), 2, 2, None),
                ("3,\"\"\"q\"\"\"".into(), 4, 2, None),
                ("4,5".into(), 5, 2, None),
            ]
        );
    }

    #[test]
    fn a_quote_across_a_line_is_confined_to_that_line() {
        let got = each_chunking(CSV, b"1,\"ab\n2,x\n");
        assert_eq!(
            got,
            vec![
                ("1,\"ab".into(), 1, 2, Some(Fault::QuoteAcrossLine)),
                ("2,x".into(), 2, 2, None),
            ]
        );
    }

    #[test]
    fn an_unclosed_quote_costs_its_first_line_only() {
        let got = each_chunking(CSV_NL, b"1,a\n2,\"b\n3,c\n4,d");
        assert_eq!(
            got,
            vec![
                ("1,a".into(), 1, 2, None),
                ("2,\"b".into(), 2, 2, Some(Fault::UnclosedQuote)),
                ("3,c".into(), 3, 2, None),
                ("4,d".into(), 4, 2, None),
            ]
        );
        // mid-file, the next quote closes it and text follows: caught too
        let got = each_chunking(CSV_NL, b"1,\"b\n2,\"c\"\n3,d\n");
        assert_eq!(got[0].3, Some(Fault::TextAfterQuote));
        assert_eq!(got[0].0, "1,\"b");
        assert_eq!(
            &got[1..],
            &[("2,\"c\"".into(), 2, 2, None), ("3,d".into(), 3, 2, None)]
        );
    }

    #[test]
    fn a_quoted_span_past_the_cap_costs_its_first_line_and_reading_goes_on() {
        // a stray quote with newlines_in_values: without the cap the framer
        // would wait for a closing quote until the end of the input
        let mut data = b"1,ok\n2,\"stray\n".to_vec();
        for i in 0..50 {
            data.extend_from_slice(format!("{},plain\n", i + 3).as_bytes());
        }
        let mut framer = Framer::new(CSV_NL, 1);
        framer.max_record = 64;
        let mut out = Vec::new();
        let mut buf: Vec<u8> = Vec::new();
        let mut got = Vec::new();
        for chunk in data.chunks(16) {
            buf.extend_from_slice(chunk);
            out.clear();
            let used = framer.frame(&buf, false, &mut out);
            got.extend(
                out.iter()
                    .map(|f| (buf[f.start..f.end].to_vec(), f.line, f.fault)),
            );
            buf.drain(..used);
            // what waits is bounded by the cap, not the input
            assert!(buf.len() <= 64 + 16 + 16, "{} bytes held", buf.len());
        }
        out.clear();
        framer.frame(&buf, true, &mut out);
        got.extend(
            out.iter()
                .map(|f| (buf[f.start..f.end].to_vec(), f.line, f.fault)),
        );
        assert_eq!(got[0], (b"1,ok".to_vec(), 1, None));
        assert_eq!(
            got[1],
            (b"2,\"stray".to_vec(), 2, Some(Fault::QuotedSpanTooLong))
        );
        // every line after the stray quote's is read as a record of its own
        assert_eq!(got.len(), 52);
        let plain: Vec<u64> = got[2..]
            .iter()
            .filter(|g| g.2.is_none())
            .map(|g| g.1)
            .collect();
        assert_eq!(plain, (3..=52).collect::<Vec<u64>>());
    }

    #[test]
    fn a_line_past_the_cap_is_given_up_and_the_rest_of_it_skipped() {
        for dialect in [CSV, CSV_NL, Dialect::Jsonl] {
            let mut data = b"first\r\n".to_vec();
            data.extend(std::iter::repeat_n(b'x', 1000));
            data.extend_from_slice(b"\r\nafter\n\"q\n");
            let mut framer = Framer::new(dialect, 1);
            framer.max_record = 100;
            let mut buf: Vec<u8> = Vec::new();
            let mut out = Vec::new();
            let mut got = Vec::new();
            for (i, chunk) in data.chunks(7).enumerate() {
                buf.extend_from_slice(chunk);
                let eof = (i + 1) * 7 >= data.len();
                out.clear();
                let used = framer.frame(&buf, eof, &mut out);
                got.extend(out.iter().map(|f| (f.end - f.start, f.line, f.fault)));
                buf.drain(..used);
                assert!(
                    buf.len() <= 100 + 7,
                    "{dialect:?}: {} bytes held",
                    buf.len()
                );
            }
            assert_eq!(got[0], (5, 1, None), "{dialect:?}");
            assert_eq!(got[1].1, 2, "{dialect:?}");
            assert_eq!(got[1].2, Some(Fault::LineTooLong), "{dialect:?}");
            assert!(got[1].0 > 100 && got[1].0 <= 107, "{dialect:?}: {got:?}");
            assert_eq!(got[2], (5, 3, None), "{dialect:?}");
            assert_eq!(got[3].1, 4, "{dialect:?}");
            assert_eq!(got.len(), 4, "{dialect:?}: {got:?}");
        }
    }

    #[test]
    fn line_breaks_are_counted_across_pieces() {
        let data = b"a\r\nb\rc\n\r\r\nd\r";
        for cut in 0..=data.len() {
            let mut cr = false;
            let n =
                count_line_breaks(&data[..cut], &mut cr) + count_line_breaks(&data[cut..], &mut cr);
            assert_eq!(n + u64::from(cr), 6, "cut at {cut}");
        }
    }

    #[test]
    fn field_ranges_respect_quotes() {
        let r = b"1,\"a,b\",,x\"y";
        let got: Vec<&[u8]> = csv_field_ranges(r, b',', b'"', None)
            .into_iter()
            .map(|(s, e)| &r[s..e])
            .collect();
        assert_eq!(got, vec![&b"1"[..], b"\"a,b\"", b"", b"x\"y"]);
        // an escaped quote does not close the field
        let r = b"\"x\\\",inf\",1e999";
        let got: Vec<&[u8]> = csv_field_ranges(r, b',', b'"', Some(b'\\'))
            .into_iter()
            .map(|(s, e)| &r[s..e])
            .collect();
        assert_eq!(got, vec![&b"\"x\\\",inf\""[..], b"1e999"]);
    }

    #[test]
    fn a_line_of_tab_delimiters_is_a_record_not_a_blank_line() {
        let tsv = Dialect::Csv {
            delimiter: b'\t',
            quote: b'"',
            escape: None,
            newlines_in_values: false,
        };
        let got = each_chunking(tsv, b"a\tb\n\t\n  \n1\t2");
        assert_eq!(
            got.iter().map(|g| (g.0.as_str(), g.1)).collect::<Vec<_>>(),
            vec![("a\tb", 1), ("\t", 2), ("1\t2", 4)]
        );
    }
}

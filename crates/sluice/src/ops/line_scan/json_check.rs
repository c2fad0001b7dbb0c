//! A strict check of one JSON-lines record before arrow decodes it.
//!
//! arrow's JSON decoder accepts more than JSON (a trailing comma, raw
//! control characters in strings, several values on a line) and coerces
//! values into their columns (`"42"` into a bigint, `7.5` truncated to 7).
//! This check reads the record once, by the JSON grammar, and holds every
//! top-level value whose column has a plain type to that type exactly. It
//! tells a syntax error (`MALFORMED`) from a value of the wrong kind
//! (`TYPE_MISMATCH`), so no error text is ever parsed.

use std::collections::HashMap;

use datafusion::arrow::datatypes::{DataType, Schema};
use sluice_contract::ErrorCode;

use super::numbers::{decimal_fits, float_fits, integer_fits};

/// Deeper nesting than this is refused rather than followed.
const MAX_DEPTH: usize = 256;

/// What a column takes.
#[derive(Debug, Clone, Copy)]
enum Expect {
    Integer {
        min: i128,
        max: i128,
    },
    Float {
        single: bool,
    },
    Decimal {
        precision: u8,
        scale: i8,
    },
    Boolean,
    String,
    /// Left to arrow (timestamps, dates, nested and binary values).
    Any,
}

impl Expect {
    fn of(t: &DataType) -> Self {
        use DataType::*;
        let int = |min: i128, max: i128| Expect::Integer { min, max };
        match t {
            Int8 => int(i8::MIN.into(), i8::MAX.into()),
            Int16 => int(i16::MIN.into(), i16::MAX.into()),
            Int32 => int(i32::MIN.into(), i32::MAX.into()),
            Int64 => int(i64::MIN.into(), i64::MAX.into()),
            UInt8 => int(0, u8::MAX.into()),
            UInt16 => int(0, u16::MAX.into()),
            UInt32 => int(0, u32::MAX.into()),
            UInt64 => int(0, u64::MAX.into()),
            Float16 | Float32 => Expect::Float { single: true },
            Float64 => Expect::Float { single: false },
            Decimal32(p, s) | Decimal64(p, s) | Decimal128(p, s) | Decimal256(p, s) => {
                Expect::Decimal {
                    precision: *p,
                    scale: *s,
                }
            }
            Boolean => Expect::Boolean,
            Utf8 | LargeUtf8 | Utf8View => Expect::String,
            _ => Expect::Any,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Expect::Integer { .. } => "an integer",
            Expect::Float { .. } => "a number",
            Expect::Decimal { .. } => "a decimal number",
            Expect::Boolean => "true or false",
            Expect::String => "a string",
            Expect::Any => "a value",
        }
    }
}

/// Why a record was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    pub code: ErrorCode,
    pub message: String,
}

fn malformed(at: usize, what: impl std::fmt::Display) -> Problem {
    Problem {
        code: ErrorCode::Malformed,
        message: format!("{what} (at byte {} of the record)", at + 1),
    }
}

/// Checks JSON-lines records against a schema; see the module docs.
#[derive(Debug)]
pub(crate) struct JsonChecker {
    /// Column name bytes → (index, expectation); looked up by a scan of
    /// `names` when there are few columns (faster than hashing every key).
    columns: HashMap<Vec<u8>, (usize, Expect)>,
    names: Vec<String>,
    expects: Vec<Expect>,
}

/// Up to this many columns, keys are matched by a linear scan.
const LINEAR_LOOKUP: usize = 24;

/// The kind of a value just read.
enum Token {
    Null,
    Bool,
    Number,
    String,
    Nested,
}

impl JsonChecker {
    /// A checker for records of `schema` (every column, read or not, is
    /// checked, so what is refused does not depend on the query).
    pub(crate) fn new(schema: &Schema) -> Self {
        let mut columns = HashMap::new();
        let mut names = Vec::new();
        let mut expects = Vec::new();
        for (i, f) in schema.fields().iter().enumerate() {
            let expect = Expect::of(f.data_type());
            columns.insert(f.name().as_bytes().to_vec(), (i, expect));
            names.push(f.name().clone());
            expects.push(expect);
        }
        Self {
            columns,
            names,
            expects,
        }
    }

    /// The column named `key`; `next` (the column after the previous key's)
    /// is tried first, since records usually keep one key order.
    fn column(&self, key: &[u8], next: usize) -> Option<(usize, Expect)> {
        if self.names.get(next).is_some_and(|n| n.as_bytes() == key) {
            return Some((next, self.expects[next]));
        }
        if self.names.len() <= LINEAR_LOOKUP {
            let i = self.names.iter().position(|n| n.as_bytes() == key)?;
            Some((i, self.expects[i]))
        } else {
            self.columns.get(key).copied()
        }
    }

    /// Checks one record (without its line terminator). `seen` is scratch
    /// space, reused between records.
    pub(crate) fn check(&self, record: &[u8], seen: &mut Vec<bool>) -> Result<(), Problem> {
        if let Err(e) = std::str::from_utf8(record) {
            return Err(malformed(e.valid_up_to(), "invalid UTF-8"));
        }
        seen.clear();
        seen.resize(self.names.len(), false);
        let mut next = 0;
        let mut p = Parser {
            b: record,
            pos: 0,
            depth: 0,
        };
        p.ws();
        if p.peek() != Some(b'{') {
            return Err(malformed(p.pos, "a JSON-lines record must be an object"));
        }
        p.pos += 1;
        p.ws();
        if p.peek() == Some(b'}') {
            p.pos += 1;
        } else {
            loop {
                p.ws();
                let key_at = p.pos;
                if p.peek() != Some(b'"') {
                    return Err(malformed(p.pos, "expected a key in double quotes"));
                }
                let key = match p.string()? {
                    (raw, false) => Key::Raw(raw),
                    (raw, true) => Key::Escaped(unescape(raw)),
                };
                p.ws();
                if p.peek() != Some(b':') {
                    return Err(malformed(p.pos, "expected `:` after a key"));
                }
                p.pos += 1;
                p.ws();
                let value_at = p.pos;
                let token = p.value()?;
                let column = match &key {
                    Key::Raw(k) => self.column(k, next),
                    Key::Escaped(k) => self.column(k, next),
                };
                if let Some((i, expect)) = column {
                    next = i + 1;
                    if std::mem::replace(&mut seen[i], true) {
                        return Err(malformed(
                            key_at,
                            format!("the key `{}` appears twice", self.names[i]),
                        ));
                    }
                    self.fits(i, expect, token, &record[value_at..p.pos])?;
                }
                p.ws();
                match p.peek() {
                    Some(b',') => {
                        p.pos += 1;
                        p.ws();
                        if p.peek() == Some(b'}') {
                            return Err(malformed(p.pos, "a trailing comma before `}`"));
                        }
                    }
                    Some(b'}') => {
                        p.pos += 1;
                        break;
                    }
                    _ => return Err(malformed(p.pos, "expected `,` or `}`")),
                }
            }
        }
        p.ws();
        if p.pos < record.len() {
            return Err(malformed(p.pos, "more than one JSON value on the line"));
        }
        Ok(())
    }

    fn fits(
        &self,
        column: usize,
        expect: Expect,
        token: Token,
        text: &[u8],
    ) -> Result<(), Problem> {
        let mismatch = |message: String| Problem {
            code: ErrorCode::TypeMismatch,
            message: format!("column `{}`: {message}", self.names[column]),
        };
        let found = || {
            let shown: String = String::from_utf8_lossy(text).chars().take(60).collect();
            mismatch(format!("expected {}, found {shown}", expect.name()))
        };
        match (expect, token) {
            (_, Token::Null) | (Expect::Any, _) => Ok(()),
            (Expect::Integer { min, max }, Token::Number) => {
                integer_fits(text, min, max).map_err(mismatch)
            }
            (Expect::Float { single }, Token::Number) => float_fits(text, single).map_err(mismatch),
            (Expect::Decimal { precision, scale }, Token::Number) => {
                decimal_fits(text, precision, scale).map_err(mismatch)
            }
            (Expect::Boolean, Token::Bool) | (Expect::String, Token::String) => Ok(()),
            (_, Token::Nested | Token::Number | Token::String | Token::Bool) => Err(found()),
        }
    }
}

/// A key as written, or unescaped when it holds escapes.
enum Key<'a> {
    Raw(&'a [u8]),
    Escaped(Vec<u8>),
}

struct Parser<'a> {
    b: &'a [u8],
    pos: usize,
    depth: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn value(&mut self) -> Result<Token, Problem> {
        match self.peek() {
            Some(b'"') => self.string().map(|_| Token::String),
            Some(b'{' | b'[') => self.nested(),
            Some(b'-' | b'0'..=b'9') => self.number().map(|_| Token::Number),
            Some(b't') => self.word(b"true", Token::Bool),
            Some(b'f') => self.word(b"false", Token::Bool),
            Some(b'n') => self.word(b"null", Token::Null),
            Some(_) => Err(malformed(self.pos, "expected a JSON value")),
            None => Err(malformed(self.pos, "the record ends where a value belongs")),
        }
    }

    fn word(&mut self, w: &[u8], token: Token) -> Result<Token, Problem> {
        if self.b[self.pos..].starts_with(w) {
            self.pos += w.len();
            Ok(token)
        } else {
            Err(malformed(self.pos, "expected a JSON value"))
        }
    }

    /// An object or array, iteratively checked for syntax only.
    fn nested(&mut self) -> Result<Token, Problem> {
        let open = self.b[self.pos];
        self.pos += 1;
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(malformed(
                self.pos,
                format!("nested deeper than {MAX_DEPTH} levels"),
            ));
        }
        let close = if open == b'{' { b'}' } else { b']' };
        self.ws();
        if self.peek() == Some(close) {
            self.pos += 1;
            self.depth -= 1;
            return Ok(Token::Nested);
        }
        loop {
            self.ws();
            if open == b'{' {
                if self.peek() != Some(b'"') {
                    return Err(malformed(self.pos, "expected a key in double quotes"));
                }
                self.string()?;
                self.ws();
                if self.peek() != Some(b':') {
                    return Err(malformed(self.pos, "expected `:` after a key"));
                }
                self.pos += 1;
                self.ws();
            }
            self.value()?;
            self.ws();
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    self.ws();
                    if self.peek() == Some(close) {
                        return Err(malformed(self.pos, "a trailing comma"));
                    }
                }
                Some(c) if c == close => {
                    self.pos += 1;
                    self.depth -= 1;
                    return Ok(Token::Nested);
                }
                _ => {
                    return Err(malformed(
                        self.pos,
                        format!("expected `,` or `{}`", close as char),
                    ));
                }
            }
        }
    }

    /// A string (the cursor on its opening quote): its raw text, and
    /// whether it holds escapes.
    fn string(&mut self) -> Result<(&'a [u8], bool), Problem> {
        let start = self.pos + 1;
        let mut i = start;
        let mut escaped = false;
        loop {
            // the next quote or backslash; nothing before it may be a control character
            let rest = self.b.get(i..).unwrap_or_default();
            let Some(n) = memchr::memchr2(b'"', b'\\', rest) else {
                return Err(malformed(start - 1, "a string is not closed"));
            };
            let plain = &rest[..n];
            // branch-free over the run, so it vectorises; located only when found
            if plain.iter().fold(false, |any, b| any | (*b < 0x20)) {
                let at = plain.iter().position(|b| *b < 0x20).unwrap_or(0);
                return Err(malformed(
                    i + at,
                    format!(
                        "a raw control character (0x{:02x}) inside a string",
                        plain[at]
                    ),
                ));
            }
            i += n;
            if self.b[i] == b'"' {
                break;
            }
            escaped = true;
            match self.b.get(i + 1) {
                Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i += 2,
                Some(b'u') => {
                    let hex = self.b.get(i + 2..i + 6);
                    if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                        return Err(malformed(i, "a \\u escape needs four hex digits"));
                    }
                    i += 6;
                }
                _ => return Err(malformed(i, "an invalid escape in a string")),
            }
        }
        self.pos = i + 1;
        Ok((&self.b[start..i], escaped))
    }

    /// A number by the JSON grammar: `-? (0 | [1-9][0-9]*) (.[0-9]+)? ([eE][+-]?[0-9]+)?`.
    fn number(&mut self) -> Result<(), Problem> {
        let start = self.pos;
        let digits = |p: &mut Self| {
            let from = p.pos;
            while matches!(p.peek(), Some(b'0'..=b'9')) {
                p.pos += 1;
            }
            p.pos - from
        };
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        let first = self.peek();
        let n = digits(self);
        if n == 0 || (first == Some(b'0') && n > 1) {
            return Err(malformed(start, "a malformed number"));
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if digits(self) == 0 {
                return Err(malformed(start, "a malformed number"));
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if digits(self) == 0 {
                return Err(malformed(start, "a malformed number"));
            }
        }
        Ok(())
    }
}

/// A key's text with its escapes resolved (enough to match column names).
fn unescape(raw: &[u8]) -> Vec<u8> {
    let text = format!("\"{}\"", String::from_utf8_lossy(raw));
    serde_json::from_str::<String>(&text)
        .map(String::into_bytes)
        .unwrap_or_else(|_| raw.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::Field;

    fn checker() -> JsonChecker {
        JsonChecker::new(&Schema::new(vec![
            Field::new("i", DataType::Int64, true),
            Field::new("s", DataType::Utf8, true),
            Field::new("f", DataType::Float64, true),
            Field::new("d", DataType::Decimal128(6, 2), true),
            Field::new("b", DataType::Boolean, true),
            Field::new(
                "t",
                DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Microsecond, None),
                true,
            ),
        ]))
    }

    fn code(record: &str) -> Option<ErrorCode> {
        checker()
            .check(record.as_bytes(), &mut Vec::new())
            .err()
            .map(|p| p.code)
    }

    #[test]
    fn good_records_pass() {
        for r in [
            r#"{"i": -9223372036854775808, "s": "a\"\u00e9", "f": 1.5e10, "d": 1234.50}"#,
            r#"{}"#,
            r#"  {"b": true, "t": "2024-01-01T00:00:00", "other": [1, {"x": [null]}]}  "#,
            r#"{"i": null, "s": null}"#,
            r#"{"\u0069": 5}"#,
        ] {
            assert_eq!(code(r), None, "{r}");
        }
    }

    #[test]
    fn syntax_errors_are_malformed() {
        for r in [
            r#"{"i": 1,}"#,
            "{\"s\": \"a\tb\"}",
            r#"{"i": 1}{"i": 2}"#,
            r#"[1, 2]"#,
            r#"{"i": 01}"#,
            r#"{"i": 1"#,
            r#"{"other": [1,]}"#,
            r#"{"i": 1, "i": 2}"#,
            r#"{"s": "\x"}"#,
            r#"{'i': 1}"#,
            r#"{"i": NaN}"#,
        ] {
            assert_eq!(code(r), Some(ErrorCode::Malformed), "{r}");
        }
        let deep = format!("{{\"o\": {}{}}}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(code(&deep), Some(ErrorCode::Malformed));
        assert_eq!(
            checker()
                .check(b"{\"s\": \"\xff\"}", &mut Vec::new())
                .unwrap_err()
                .code,
            ErrorCode::Malformed
        );
    }

    #[test]
    fn values_that_do_not_fit_are_type_mismatches() {
        for r in [
            r#"{"i": 7.5}"#,
            r#"{"i": "42"}"#,
            r#"{"i": -9223372036854775809}"#,
            r#"{"f": 1e400}"#,
            r#"{"f": "1.5"}"#,
            r#"{"d": 1.234}"#,
            r#"{"s": 5}"#,
            r#"{"s": {"a": 1}}"#,
            r#"{"b": "true"}"#,
            r#"{"\u0069": 7.5}"#,
        ] {
            assert_eq!(code(r), Some(ErrorCode::TypeMismatch), "{r}");
        }
    }
}

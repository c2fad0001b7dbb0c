//! Whether a number's text fits its column exactly.
//!
//! arrow's readers are lenient where a value would change: JSON `7.5` is
//! truncated into an integer column, an overflowing integer saturates,
//! `1e400` becomes infinity, and extra decimal digits are dropped. sluice
//! promises that a value is passed on exactly or given up as
//! `TYPE_MISMATCH`, so these rules run on the text before arrow parses it.

/// The parts of a number literal: `[sign] digits [. digits] [e [sign] digits]`.
struct Literal<'a> {
    negative: bool,
    int: &'a [u8],
    frac: &'a [u8],
    /// The exponent, saturated far past any length a record can have.
    exp: i64,
    has_exp: bool,
}

fn literal(text: &[u8]) -> Option<Literal<'_>> {
    let (negative, rest) = match text.first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let digits = |s: &[u8]| s.iter().take_while(|b| b.is_ascii_digit()).count();
    let n = digits(rest);
    let (int, mut rest) = rest.split_at(n);
    let mut frac: &[u8] = &[];
    if let Some(after) = rest.strip_prefix(b".") {
        let m = digits(after);
        frac = &after[..m];
        rest = &after[m..];
    }
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    let (mut exp, mut has_exp) = (0i64, false);
    if let Some(after) = rest.strip_prefix(b"e").or_else(|| rest.strip_prefix(b"E")) {
        let (neg, after) = match after.first() {
            Some(b'-') => (true, &after[1..]),
            Some(b'+') => (false, &after[1..]),
            _ => (false, after),
        };
        let m = digits(after);
        if m == 0 || m != after.len() {
            return None;
        }
        for d in &after[..m] {
            exp = (exp * 10 + i64::from(d - b'0')).min(1 << 40);
        }
        if neg {
            exp = -exp;
        }
        has_exp = true;
    } else if !rest.is_empty() {
        return None;
    }
    Some(Literal {
        negative,
        int,
        frac,
        exp,
        has_exp,
    })
}

use datafusion::arrow::datatypes::i256;

/// The text, for a message (built only when one is).
fn shown(text: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(text)
}

/// An integer literal within `min..=max`: no fraction, no exponent.
pub(crate) fn integer_fits(text: &[u8], min: i128, max: i128) -> Result<(), String> {
    let shown = || shown(text);
    let lit = literal(text).ok_or_else(|| format!("{} is not a number", shown()))?;
    if !lit.frac.is_empty() || lit.has_exp || text.contains(&b'.') {
        return Err(format!("{} is not an integer", shown()));
    }
    let digits = lit.int.iter().skip_while(|d| **d == b'0').count();
    let value = if digits > 38 {
        None
    } else {
        let mut v: i128 = 0;
        for d in lit.int {
            v = v * 10 + i128::from(d - b'0');
        }
        Some(if lit.negative { -v } else { v })
    };
    match value {
        Some(v) if (min..=max).contains(&v) => Ok(()),
        _ => Err(format!("{} is out of range ({min} to {max})", shown())),
    }
}

/// A float literal that does not overflow to infinity.
pub(crate) fn float_fits(text: &[u8], single: bool) -> Result<(), String> {
    let shown = || shown(text);
    let lit = literal(text).ok_or_else(|| format!("{} is not a number", shown()))?;
    // below this many integer digits and without an exponent nothing overflows
    let safe = if single { 38 } else { 308 };
    if !lit.has_exp && lit.int.len() <= safe {
        return Ok(());
    }
    let s = std::str::from_utf8(text).map_err(|_| format!("{} is not a number", shown()))?;
    let finite = if single {
        s.parse::<f32>().is_ok_and(f32::is_finite)
    } else {
        s.parse::<f64>().is_ok_and(f64::is_finite)
    };
    if finite {
        Ok(())
    } else {
        Err(format!(
            "{} is out of range for a {}-bit float",
            shown(),
            if single { 32 } else { 64 }
        ))
    }
}

/// A decimal literal whose digits fit `precision` and `scale` exactly:
/// digits past the scale must be zeros (so `1.50` fits scale 1, `1.55` does not).
pub(crate) fn decimal_fits(text: &[u8], precision: u8, scale: i8) -> Result<(), String> {
    decimal_value(text, precision, scale).map(drop)
}

/// The value of a decimal literal that fits `precision` and `scale` exactly
/// (see [`decimal_fits`]), as an unscaled integer, when it fits an `i128`
/// (always for `precision` up to 38); `Ok(None)` when it fits but is wider.
pub(crate) fn decimal_value(text: &[u8], precision: u8, scale: i8) -> Result<Option<i128>, String> {
    if let Some(v) = plain_decimal(text, precision, scale) {
        return Ok(Some(v));
    }
    exact_decimal(
        text,
        precision,
        scale,
        38,
        0i128,
        |v, d| v * 10 + i128::from(d),
        |v| -v,
    )
}

/// [`decimal_value`] for 256-bit decimals (up to 76 digits).
pub(crate) fn decimal_value_256(text: &[u8], precision: u8, scale: i8) -> Result<i256, String> {
    let v = exact_decimal(
        text,
        precision,
        scale,
        76,
        i256::ZERO,
        |v, d| {
            v.wrapping_mul(i256::from_i128(10))
                .wrapping_add(i256::from_i128(i128::from(d)))
        },
        |v| v.wrapping_neg(),
    )?;
    v.ok_or_else(|| format!("{} is too wide for a 256-bit decimal", shown(text)))
}

/// The check of [`decimal_fits`], and the unscaled value in `T` when it has
/// fewer than `digits` digits (every value of a column whose precision is
/// at most `digits`, so the arithmetic cannot overflow); `Ok(None)` for a
/// value that fits the column but not `T`. The value is computed here from
/// the digits, never by a parser that wraps around.
fn exact_decimal<T>(
    text: &[u8],
    precision: u8,
    scale: i8,
    digits: i64,
    zero: T,
    push_digit: impl Fn(T, u8) -> T,
    negate: impl Fn(T) -> T,
) -> Result<Option<T>, String> {
    let shown = || shown(text);
    let lit = literal(text).ok_or_else(|| format!("{} is not a number", shown()))?;
    // the digits are int ++ frac; find the first and last significant ones
    let digit = |i: usize| {
        if i < lit.int.len() {
            lit.int[i]
        } else {
            lit.frac[i - lit.int.len()]
        }
    };
    let len = lit.int.len() + lit.frac.len();
    let Some(first) = (0..len).find(|i| digit(*i) != b'0') else {
        return Ok(Some(zero));
    };
    let last = (first..len)
        .rev()
        .find(|i| digit(*i) != b'0')
        .unwrap_or(first);
    let point = lit.int.len() as i64 + lit.exp;
    // place of the first and last significant digit, as powers of ten
    let high = point - 1 - first as i64;
    let low = point - 1 - last as i64;
    let scale = i64::from(scale);
    if low < -scale {
        return Err(format!(
            "{} has more decimal digits than the column's scale {scale}",
            shown()
        ));
    }
    if high + 1 > i64::from(precision) - scale {
        return Err(format!(
            "{} has more digits than the column's precision {precision} (scale {scale}) allows",
            shown()
        ));
    }
    // unscaled value: the significant digits, shifted to the scale
    if high + scale >= digits {
        return Ok(None);
    }
    let mut v = zero;
    for i in first..=last {
        v = push_digit(v, digit(i) - b'0');
    }
    for _ in 0..(low + scale) {
        v = push_digit(v, 0);
    }
    Ok(Some(if lit.negative { negate(v) } else { v }))
}

/// The common case of [`decimal_value`] in one pass: `[sign] digits [.
/// digits]`, no exponent, fitting exactly. `None` for anything else (which
/// the general path then reads, or refuses with a reason).
fn plain_decimal(text: &[u8], precision: u8, scale: i8) -> Option<i128> {
    if !(0..=38).contains(&scale) || precision > 38 {
        return None;
    }
    let (negative, digits) = match text.first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let scale = scale as usize;
    let mut v: i128 = 0;
    let mut int_digits = 0usize; // significant integer digits
    let mut frac_digits = 0usize; // fractional digits taken into `v`
    let mut seen_point = false;
    let mut any = false;
    for &b in digits {
        match b {
            b'0'..=b'9' if !seen_point => {
                any = true;
                if v != 0 || b != b'0' {
                    int_digits += 1;
                    // the scale's digits come on top: all of them fit 38 digits
                    if int_digits + scale > usize::from(precision) {
                        return None;
                    }
                    v = v * 10 + i128::from(b - b'0');
                }
            }
            b'0'..=b'9' => {
                any = true;
                if frac_digits < scale {
                    v = v * 10 + i128::from(b - b'0');
                    frac_digits += 1;
                } else if b != b'0' {
                    return None; // a digit past the scale: the general path says why
                }
            }
            b'.' if !seen_point => seen_point = true,
            _ => return None,
        }
    }
    if !any || int_digits + scale > usize::from(precision) {
        return None;
    }
    for _ in frac_digits..scale {
        v *= 10;
    }
    Some(if negative { -v } else { v })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_must_be_whole_and_in_range() {
        assert!(integer_fits(b"-9223372036854775808", i64::MIN.into(), i64::MAX.into()).is_ok());
        assert!(integer_fits(b"-9223372036854775809", i64::MIN.into(), i64::MAX.into()).is_err());
        assert!(integer_fits(b"7.5", 0, 100).is_err());
        assert!(integer_fits(b"7.0", 0, 100).is_err());
        assert!(integer_fits(b"1e2", 0, 1000).is_err());
        assert!(integer_fits(b"256", 0, 255).is_err());
        assert!(integer_fits(&[b'9'; 60], 0, i128::MAX).is_err());
        assert!(integer_fits(b"000042", 0, 100).is_ok());
    }

    #[test]
    fn floats_must_not_overflow() {
        assert!(float_fits(b"1e400", false).is_err());
        assert!(float_fits(b"-1e308", false).is_ok());
        assert!(float_fits(b"1e39", true).is_err());
        assert!(float_fits(b"1e-400", false).is_ok()); // underflow to 0 is rounding, as any float
        assert!(float_fits(b"1.5", false).is_ok());
    }

    #[test]
    fn decimals_keep_every_digit() {
        assert!(decimal_fits(b"12.34", 4, 2).is_ok());
        assert!(decimal_fits(b"12.345", 5, 2).is_err());
        assert!(decimal_fits(b"12.340", 4, 2).is_ok());
        assert!(decimal_fits(b"123.4", 4, 2).is_err());
        assert!(decimal_fits(b"-0.01", 2, 2).is_ok());
        assert!(decimal_fits(b"1.5e1", 4, 2).is_ok());
        assert!(decimal_fits(b"1.5e-3", 4, 2).is_err());
        assert!(decimal_fits(b"0e99999999999", 4, 2).is_ok());
        assert!(decimal_fits(b"1e99999999999", 38, 2).is_err());
        assert!(decimal_fits(b"abc", 4, 2).is_err());
        assert!(decimal_fits(b"120", 3, -1).is_ok());
        assert!(decimal_fits(b"125", 3, -1).is_err());
    }

    #[test]
    fn decimal_values_are_unscaled_exactly() {
        assert_eq!(decimal_value(b"12.34", 4, 2), Ok(Some(1234)));
        assert_eq!(decimal_value(b"-0.5", 4, 2), Ok(Some(-50)));
        assert_eq!(decimal_value(b"1.5e1", 4, 2), Ok(Some(1500)));
        assert_eq!(decimal_value(b"120", 3, -1), Ok(Some(12)));
        assert_eq!(decimal_value(b"+007.10", 5, 2), Ok(Some(710)));
        assert_eq!(decimal_value(b"0.000", 5, 2), Ok(Some(0)));
        let big = "9".repeat(38);
        assert_eq!(
            decimal_value(big.as_bytes(), 38, 0),
            Ok(Some(big.parse::<i128>().unwrap()))
        );
        assert_eq!(decimal_value(b"1", 76, 40), Ok(None));
        assert_eq!(
            decimal_value_256(b"1", 76, 40),
            Ok(i256::from_i128(10).wrapping_pow(40))
        );
        // arrow's parser wraps around on these; the exact reading does not
        let wide = format!("1{}e-40", "0".repeat(80));
        assert_eq!(
            decimal_value_256(wide.as_bytes(), 50, 0),
            Ok(i256::from_i128(10).wrapping_pow(40))
        );
        let long = format!("1{}e-40", "0".repeat(40));
        assert_eq!(decimal_value(long.as_bytes(), 10, 2), Ok(Some(100)));
    }

    #[test]
    fn the_plain_path_agrees_with_arrows_parser_and_defers_the_rest() {
        use datafusion::arrow::compute::kernels::cast_utils::parse_decimal;
        use datafusion::arrow::datatypes::Decimal128Type;
        for t in [
            "0",
            "-0",
            "12.34",
            "12.3",
            "12.",
            ".5",
            "-.50",
            "+7",
            "007.10",
            "99.99",
            "100.00",
            "1.230",
            "-123456789012345678.1234567890",
        ] {
            for (p, s) in [(4u8, 2i8), (38, 0), (38, 10), (10, 3), (3, 0), (30, 10)] {
                if let Some(v) = plain_decimal(t.as_bytes(), p, s) {
                    let arrow = parse_decimal::<Decimal128Type>(t, p, s);
                    assert_eq!(Ok(v), arrow.map_err(|e| e.to_string()), "{t} ({p},{s})");
                }
            }
        }
        // what does not fit, or is not plain, goes to the general path
        for (t, p, s) in [
            ("1.234", 10, 2),
            ("123.4", 4, 2),
            ("1e2", 10, 0),
            ("abc", 4, 2),
            ("", 4, 2),
            (".", 4, 2),
        ] {
            assert_eq!(plain_decimal(t.as_bytes(), p, s), None, "{t}");
        }
        assert_eq!(plain_decimal(b"12.34", 4, 2), Some(1234));
        // 38 integer digits and a full scale would overflow an i128
        let wide = format!("{}.{}", "9".repeat(38), "9".repeat(38));
        assert_eq!(plain_decimal(wide.as_bytes(), 38, 38), None);
        assert!(decimal_value(wide.as_bytes(), 38, 38).is_err());
        assert!(decimal_value(wide.as_bytes(), 38, 0).is_err());
    }

    proptest::proptest! {
        /// Any literal, any precision and scale: no panic, and what is read
        /// is arrow's value for it (when arrow reads it too).
        #[test]
        fn decimals_are_read_exactly_or_refused(
            text in "[+-]?[0-9]{0,45}(\\.[0-9]{0,45})?([eE][+-]?[0-9]{1,3})?",
            precision in 1u8..=38,
            scale_pick in 0u8..=38,
        ) {
            use datafusion::arrow::compute::kernels::cast_utils::parse_decimal;
            use datafusion::arrow::datatypes::Decimal128Type;
            let scale = (scale_pick % (precision + 1)) as i8;
            if let Ok(Some(v)) = decimal_value(text.as_bytes(), precision, scale)
                && !text.contains(['e', 'E'])
                && let Ok(a) = parse_decimal::<Decimal128Type>(&text, precision, scale)
            {
                proptest::prop_assert_eq!(v, a, "{} ({},{})", text, precision, scale);
            }
            let _ = integer_fits(text.as_bytes(), i64::MIN.into(), i64::MAX.into());
            let _ = float_fits(text.as_bytes(), false);
        }
    }
}

//! Durations as the .NET sample writes them: TimeSpan strings (`00:00:30`, `1.02:03:04.5`) and plain
//! numbers of seconds (`30`, `2.5`).
//!
//! Invariants: every function here is total (no input panics), refuses negative, NaN, infinite and
//! absurdly large values (more than [`MAX_DURATION`], ten years), and its error strings say which
//! form is expected without repeating the input (the caller names the key and shows the value).
//!
//! One deliberate difference from .NET: a bare integer (`7`) is 7 **seconds** here, where .NET's
//! `TimeSpan.Parse` would read 7 days. Lease durations are seconds-scale, and the design asks for
//! "numbers of seconds"; a value with a colon is always read exactly as .NET reads it.

use std::time::Duration;

/// The largest duration accepted anywhere in the configuration: 3650 days (about ten years).
pub const MAX_DURATION: Duration = Duration::from_secs(3650 * 86_400);

const EXPECTED: &str = "expected a TimeSpan like 00:00:30, 1.02:03:04.5 or 00:00:00.250 \
     ([d.]hh:mm[:ss[.fffffff]]), or a number of seconds like 30 or 2.5";

/// Parses a .NET TimeSpan string or a plain number of seconds.
///
/// Accepted forms (surrounding whitespace is ignored):
/// - `hh:mm` (`1:00` is one hour), `hh:mm:ss`, `hh:mm:ss.fffffff`, each optionally preceded by
///   `d.` days (`1.02:03:04.5`), or `d:hh:mm:ss[.fffffff]`;
/// - a number of seconds: `30`, `2.5`, `0.250` (digits, at most one `.`, up to 9 decimals).
///
/// # Errors
///
/// A message saying what is wrong and which forms are expected, for: an empty string, a sign
/// (`-00:00:01`, `+5`), units or exponents (`30s`, `1e3`), `NaN`/`inf`, hours ≥ 24, minutes or
/// seconds ≥ 60, more than 9 fractional digits, and anything above [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err(format!("the value is empty; {EXPECTED}"));
    }
    if t.starts_with('-') {
        return Err(format!("negative durations are not allowed; {EXPECTED}"));
    }
    if t.starts_with('+') {
        return Err(format!("write the duration without a sign; {EXPECTED}"));
    }
    if t.contains(':') {
        parse_timespan(t)
    } else {
        parse_seconds(t)
    }
}

/// Converts a number of seconds (as JSON gives it) to a duration.
///
/// # Errors
///
/// For negative, NaN, infinite values and values above [`MAX_DURATION`].
pub fn duration_from_secs_f64(secs: f64) -> Result<Duration, String> {
    if secs.is_nan() || secs.is_infinite() {
        return Err(format!("the number is not finite; {EXPECTED}"));
    }
    if secs < 0.0 {
        return Err(format!("negative durations are not allowed; {EXPECTED}"));
    }
    let d = Duration::try_from_secs_f64(secs).map_err(|_| too_large())?;
    check_max(d)
}

/// Formats a duration as a .NET TimeSpan string: `00:00:30`, `1.02:03:04.5`, `00:00:00.25`.
///
/// Round-trips through [`parse_duration`] (to 100 ns, .NET's tick).
#[must_use]
pub fn format_timespan(d: Duration) -> String {
    let total = d.as_secs();
    let (days, rem) = (total / 86_400, total % 86_400);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    let mut out = if days > 0 {
        format!("{days}.{h:02}:{m:02}:{s:02}")
    } else {
        format!("{h:02}:{m:02}:{s:02}")
    };
    let ticks = d.subsec_nanos() / 100;
    if ticks > 0 {
        let frac = format!("{ticks:07}");
        out.push('.');
        out.push_str(frac.trim_end_matches('0'));
    }
    out
}

fn too_large() -> String {
    format!(
        "the duration is too large (the limit is {} days); {EXPECTED}",
        MAX_DURATION.as_secs() / 86_400
    )
}

fn check_max(d: Duration) -> Result<Duration, String> {
    if d > MAX_DURATION {
        Err(too_large())
    } else {
        Ok(d)
    }
}

/// `digits[.digits]` seconds.
fn parse_seconds(t: &str) -> Result<Duration, String> {
    let (int, frac) = match t.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (t, None),
    };
    if !is_digits(int) || frac.is_some_and(|f| !is_digits(f)) {
        let lower = t.to_ascii_lowercase();
        let hint = if lower.ends_with("ms") || lower.ends_with('s') || lower.ends_with("sec") {
            "units are not accepted (write 30 or 00:00:30, not 30s); "
        } else {
            ""
        };
        return Err(format!("not a duration: {hint}{EXPECTED}"));
    }
    let secs = parse_component(int)?;
    let nanos = match frac {
        Some(f) => parse_fraction(f)?,
        None => 0,
    };
    // secs < 10^13 and nanos < 10^9: Duration::new cannot overflow.
    check_max(Duration::new(secs, nanos))
}

/// `[d.]hh:mm[:ss[.f]]` or `d:hh:mm:ss[.f]`.
fn parse_timespan(t: &str) -> Result<Duration, String> {
    let parts: Vec<&str> = t.split(':').collect();
    let (days, hours, minutes, seconds_part) = match parts.as_slice() {
        [dh, m] => {
            let (d, h) = split_days(dh)?;
            (d, h, *m, None)
        }
        [dh, m, s] => {
            let (d, h) = split_days(dh)?;
            (d, h, *m, Some(*s))
        }
        [d, h, m, s] if !d.is_empty() => (*d, *h, *m, Some(*s)),
        [_, _, _, _] => {
            return Err(format!(
                "not a duration: days missing before the first ':'; {EXPECTED}"
            ))
        }
        _ => return Err(format!("not a duration: too many ':'; {EXPECTED}")),
    };
    let (secs, frac) = match seconds_part {
        Some(s) => match s.split_once('.') {
            Some((s, f)) => (Some(s), Some(f)),
            None => (Some(s), None),
        },
        None => (None, None),
    };
    // `days` is empty when the string has no day part (split_days allows only that).
    let day_part = (!days.is_empty()).then_some(days);
    for part in [day_part, Some(hours), Some(minutes), secs, frac]
        .into_iter()
        .flatten()
    {
        if !is_digits(part) {
            return Err(format!(
                "not a duration: each part must be digits; {EXPECTED}"
            ));
        }
    }
    let days = if days.is_empty() {
        0
    } else {
        parse_component(days)?
    };
    let hours = parse_component(hours)?;
    let minutes = parse_component(minutes)?;
    let secs = match secs {
        Some(s) => parse_component(s)?,
        None => 0,
    };
    if hours >= 24 {
        return Err(format!(
            "hours must be 0-23 (got {hours}); write a day count in front, like 1.00:00:00 for 24 hours"
        ));
    }
    if minutes >= 60 {
        return Err(format!("minutes must be 0-59 (got {minutes}); {EXPECTED}"));
    }
    if secs >= 60 {
        return Err(format!("seconds must be 0-59 (got {secs}); {EXPECTED}"));
    }
    let nanos = match frac {
        Some(f) => parse_fraction(f)?,
        None => 0,
    };
    if days > MAX_DURATION.as_secs() / 86_400 {
        return Err(too_large());
    }
    let whole = days * 86_400 + hours * 3600 + minutes * 60 + secs;
    check_max(Duration::new(whole, nanos))
}

/// Splits `d.hh` into days and hours (days empty when absent).
fn split_days(dh: &str) -> Result<(&str, &str), String> {
    match dh.split_once('.') {
        Some(("", _)) => Err(format!(
            "not a duration: days missing before '.'; {EXPECTED}"
        )),
        Some((d, h)) => Ok((d, h)),
        None => Ok(("", dh)),
    }
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// A run of digits as u64, refusing anything too long to be a sane duration component.
fn parse_component(s: &str) -> Result<u64, String> {
    // 12 digits is already ~31 000 years of seconds; longer would only overflow.
    let trimmed = s.trim_start_matches('0');
    if trimmed.len() > 12 {
        return Err(too_large());
    }
    if trimmed.is_empty() {
        return Ok(0);
    }
    trimmed.parse::<u64>().map_err(|_| too_large())
}

/// Fractional digits (after the '.') as nanoseconds.
fn parse_fraction(f: &str) -> Result<u32, String> {
    if f.len() > 9 {
        return Err(format!(
            "at most 9 digits are allowed after the '.' (nanoseconds); {EXPECTED}"
        ));
    }
    let mut nanos: u32 = 0;
    for (i, b) in f.bytes().enumerate() {
        let digit = u32::from(b - b'0');
        // i < 9, so 10^(8-i) fits and the sum stays below 10^9.
        nanos += digit * 10u32.pow(8 - u32::try_from(i).unwrap_or(8));
    }
    Ok(nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Duration {
        parse_duration(s).unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
    }

    fn err(s: &str) -> String {
        match parse_duration(s) {
            Ok(d) => panic!("{s:?} should be refused, got {d:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn timespan_forms_parse_as_dotnet_does() {
        assert_eq!(ok("00:00:30"), Duration::from_secs(30));
        assert_eq!(ok("00:00:20"), Duration::from_secs(20));
        assert_eq!(ok("00:01:00"), Duration::from_secs(60));
        assert_eq!(ok("1:00"), Duration::from_secs(3600));
        assert_eq!(ok("01:30"), Duration::from_secs(5400));
        assert_eq!(
            ok("1.02:03:04.5"),
            Duration::from_millis(((86_400 + 7200 + 184) * 1000) + 500)
        );
        assert_eq!(ok("1:02:03:04"), Duration::from_secs(86_400 + 7384));
        assert_eq!(ok("00:00:00.250"), Duration::from_millis(250));
        assert_eq!(ok("00:00:00.0000001"), Duration::from_nanos(100));
        assert_eq!(ok("  00:00:05  "), Duration::from_secs(5));
        assert_eq!(ok("2.00:00"), Duration::from_secs(2 * 86_400));
        assert_eq!(ok("00:00:00"), Duration::ZERO);
    }

    #[test]
    fn plain_numbers_are_seconds() {
        assert_eq!(ok("30"), Duration::from_secs(30));
        assert_eq!(ok("7"), Duration::from_secs(7));
        assert_eq!(ok("2.5"), Duration::from_millis(2500));
        assert_eq!(ok("0.001"), Duration::from_millis(1));
        assert_eq!(ok("000030"), Duration::from_secs(30));
        assert_eq!(ok("0"), Duration::ZERO);
    }

    #[test]
    fn refusals_say_what_is_expected() {
        assert!(err("-00:00:01").contains("negative"));
        assert!(err("-5").contains("negative"));
        assert!(err("").contains("empty"));
        assert!(err("   ").contains("empty"));
        assert!(err("NaN").contains("expected a TimeSpan"));
        assert!(err("inf").contains("expected a TimeSpan"));
        assert!(err("1e3").contains("expected a TimeSpan"));
        assert!(err("30s").contains("units are not accepted"));
        assert!(err("00:60:00").contains("minutes must be 0-59"));
        assert!(err("00:00:60").contains("seconds must be 0-59"));
        assert!(err("24:00:00").contains("hours must be 0-23"));
        assert!(err("3651.00:00:00").contains("too large"));
        assert!(err("99999999999999999999").contains("too large"));
        assert!(err("400000000").contains("too large"));
        assert!(err("00:00:00.1234567891").contains("at most 9 digits"));
        assert!(err("1:2:3:4:5").contains("too many"));
        assert!(err(".5").contains("expected"));
        assert!(err("5.").contains("expected"));
        assert!(err("+5").contains("without a sign"));
        assert!(err(".01:00:00").contains("days missing"));
        assert!(err("1::00").contains("digits"));
        assert!(err(":01:02:03").contains("days missing"));
    }

    #[test]
    fn numbers_from_json_are_checked() {
        assert_eq!(duration_from_secs_f64(2.5), Ok(Duration::from_millis(2500)));
        assert!(duration_from_secs_f64(f64::NAN).is_err());
        assert!(duration_from_secs_f64(f64::INFINITY).is_err());
        assert!(duration_from_secs_f64(-1.0).is_err());
        assert!(duration_from_secs_f64(1e300)
            .unwrap_err()
            .contains("too large"));
        assert!(duration_from_secs_f64(4e8)
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn format_round_trips() {
        for d in [
            Duration::ZERO,
            Duration::from_secs(30),
            Duration::from_millis(250),
            Duration::from_millis(93_784_500),
            Duration::from_secs(3650 * 86_400),
            Duration::from_nanos(100),
        ] {
            assert_eq!(ok(&format_timespan(d)), d, "{}", format_timespan(d));
        }
        assert_eq!(format_timespan(Duration::from_secs(30)), "00:00:30");
        assert_eq!(
            format_timespan(Duration::from_millis(93_784_500)),
            "1.02:03:04.5"
        );
    }

    /// Deterministic pseudo-random strings over the characters that matter: no input may panic,
    /// and whatever is accepted must be within range.
    #[test]
    fn weird_strings_never_panic() {
        const ALPHABET: &[char] = &[
            '0', '1', '5', '9', '.', ':', '-', '+', ' ', 'e', 'E', 'n', 'a', 'N', 'i', 'f', 's',
            '\u{0}', '\u{00e9}', '\u{0663}', '\u{ff10}', '\t',
        ];
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let len = usize::try_from(next() % 16).unwrap_or(0);
            let s: String = (0..len)
                .map(|_| ALPHABET[usize::try_from(next() % ALPHABET.len() as u64).unwrap_or(0)])
                .collect();
            if let Ok(d) = parse_duration(&s) {
                assert!(d <= MAX_DURATION, "{s:?} gave {d:?}");
            }
        }
        for s in [
            "9".repeat(500),
            format!("{}:00", "9".repeat(40)),
            "00:00:00.".to_owned(),
            ":".to_owned(),
            "::::".to_owned(),
            "1.".repeat(30),
            "١٢:٠٠".to_owned(),
            "3650.00:00:00".to_owned(),
            "3650.00:00:00.000000001".to_owned(),
            "315360000".to_owned(),
            "315360000.000000001".to_owned(),
        ] {
            let _ = parse_duration(&s);
        }
        assert_eq!(ok("3650.00:00:00"), MAX_DURATION);
        assert!(parse_duration("3650.00:00:00.000000001").is_err());
        assert!(parse_duration("315360000.5").is_err());
    }
}

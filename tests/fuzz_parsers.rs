//! Property tests (proptest) of the configuration parsers: .NET TimeSpan durations and
//! connection strings. Whatever the input: no panic, a result within range, an error that says
//! what is expected, and never a password in an error, a warning, `Display` or `Debug`.

use std::time::Duration;

use distributed_leasing::config::timespan::{duration_from_secs_f64, MAX_DURATION};
use distributed_leasing::config::{
    format_timespan, parse_connection_string, parse_duration, parse_endpoint, StoreTarget,
};
use proptest::prelude::*;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // Failures are reproduced from the printed seed; no files are written next to the test.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Characters that matter to the duration parser, plus a few that should merely be refused.
fn duration_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9.:+\\- ]{0,24}",
        "[0-9.:eEnaNifs+\\-\t\u{0}\u{e9}\u{663}\u{ff10} ]{0,16}",
        any::<String>(),
        "[0-9]{1,40}(\\.[0-9]{0,12})?",
    ]
}

/// `(days, hours, minutes, seconds, fraction digits)` with values on both sides of each limit.
fn timespan_parts() -> impl Strategy<Value = (u64, u64, u64, u64, String)> {
    (
        prop_oneof![0u64..5, 3645u64..3655, 0u64..100_000],
        0u64..30,
        0u64..70,
        0u64..70,
        "[0-9]{0,11}",
    )
}

fn expected_timespan(d: u64, h: u64, m: u64, s: u64, frac: &str) -> Option<Duration> {
    if h >= 24 || m >= 60 || s >= 60 || frac.len() > 9 {
        return None;
    }
    let nanos: u32 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().unwrap()
    };
    let total = Duration::new(d * 86_400 + h * 3600 + m * 60 + s, nanos);
    (total <= MAX_DURATION).then_some(total)
}

proptest! {
    #![proptest_config(config(4000))]

    #[test]
    fn duration_parser_never_panics_and_stays_in_range(s in duration_text()) {
        match parse_duration(&s) {
            Ok(d) => prop_assert!(d <= MAX_DURATION, "{s:?} gave {d:?}"),
            Err(e) => {
                prop_assert!(!e.is_empty());
                prop_assert!(!e.contains('\n'), "{e}");
                // Says what to write instead (the caller adds the key and the value).
                prop_assert!(
                    e.contains("expected a TimeSpan") || e.contains("must be") || e.contains("too large"),
                    "{s:?}: {e}"
                );
            }
        }
    }

    #[test]
    fn timespans_parse_exactly_as_dotnet_reads_them(
        (d, h, m, s, frac) in timespan_parts(),
        with_days in any::<bool>(),
        colon_days in any::<bool>(),
    ) {
        let secs = if frac.is_empty() { format!("{s:02}") } else { format!("{s:02}.{frac}") };
        let text = match (with_days || d > 0, colon_days) {
            (false, _) => format!("{h:02}:{m:02}:{secs}"),
            (true, false) => format!("{d}.{h:02}:{m:02}:{secs}"),
            (true, true) => format!("{d}:{h:02}:{m:02}:{secs}"),
        };
        let want = expected_timespan(d, h, m, s, &frac);
        match (parse_duration(&text), want) {
            (Ok(got), Some(want)) => prop_assert_eq!(got, want, "{}", text),
            (Err(_), None) => {}
            (got, want) => prop_assert!(false, "{text:?}: got {got:?}, expected {want:?}"),
        }
    }

    #[test]
    fn plain_numbers_are_seconds(secs in 0u64..400_000_000, frac in "[0-9]{0,9}") {
        let text = if frac.is_empty() { secs.to_string() } else { format!("{secs}.{frac}") };
        let want = expected_timespan(0, 0, 0, 0, &frac).map(|f| f + Duration::from_secs(secs));
        match parse_duration(&text) {
            Ok(d) => prop_assert_eq!(Some(d), want.filter(|w| *w <= MAX_DURATION)),
            Err(e) => {
                prop_assert!(want.is_none_or(|w| w > MAX_DURATION), "{text}: {e}");
                prop_assert!(e.contains("too large"), "{e}");
            }
        }
    }

    #[test]
    fn formatted_durations_round_trip(ticks in 0u64..=u64::try_from(MAX_DURATION.as_nanos() / 100).unwrap()) {
        let d = Duration::from_nanos(ticks * 100);
        prop_assert_eq!(parse_duration(&format_timespan(d)), Ok(d));
    }

    #[test]
    fn json_numbers_are_checked(x in any::<f64>()) {
        match duration_from_secs_f64(x) {
            Ok(d) => {
                prop_assert!(x.is_finite() && x >= 0.0);
                prop_assert!(d <= MAX_DURATION);
            }
            Err(e) => prop_assert!(!(0.0..=3.0e8).contains(&x), "{x}: {e}"),
        }
    }
}

/// A password that is easy to spot in any output: never a substring of the fixed text around it.
fn secret() -> impl Strategy<Value = String> {
    "[A-Za-z0-9]{6,20}".prop_map(|s| format!("Sx9{s}"))
}

/// Password characters the StackExchange form can carry (it splits on ',').
fn se_password() -> impl Strategy<Value = String> {
    (secret(), "[^,]{0,12}").prop_map(|(s, tail)| format!("{s}{tail}"))
}

fn stackexchange_string() -> impl Strategy<Value = (String, String)> {
    let host = prop_oneof![
        Just("127.0.0.1".to_owned()),
        Just("mycache.redis.cache.windows.net".to_owned()),
        Just("[::1]".to_owned()),
        "[a-z0-9.\\-]{0,20}",
    ];
    let port = prop_oneof![
        Just(String::new()),
        (0u32..70_000).prop_map(|p| format!(":{p}")),
        "[:0-9a-z]{0,6}",
    ];
    let option = prop_oneof![
        Just("ssl=True".to_owned()),
        Just("ssl=maybe".to_owned()),
        Just("abortConnect=False".to_owned()),
        "(defaultDatabase|connectTimeout|syncTimeout|user|bogus|=)=[a-zA-Z0-9\\-.]{0,8}",
        "[^,]{0,10}",
    ];
    (
        host,
        port,
        se_password(),
        prop::collection::vec(option, 0..4),
        any::<bool>(),
    )
        .prop_map(|(host, port, pw, mut options, pw_first)| {
            let entry = format!("password={pw}");
            if pw_first {
                options.insert(0, entry);
            } else {
                options.push(entry);
            }
            (format!("{host}{port},{}", options.join(",")), pw)
        })
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn url_string() -> impl Strategy<Value = (String, String)> {
    (
        prop_oneof![
            Just("redis"),
            Just("rediss"),
            Just("valkey"),
            Just("REDIS"),
            Just("http")
        ],
        prop::option::of("[a-z]{1,8}"),
        (secret(), any::<String>()).prop_map(|(s, tail)| format!("{s}{tail}")),
        prop_oneof![
            Just("127.0.0.1:6379"),
            Just("[::1]"),
            Just("host:99999"),
            Just("")
        ],
        prop_oneof![Just(""), Just("/0"), Just("/15"), Just("/x"), Just("/-1")],
    )
        .prop_map(|(scheme, user, pw, host, db)| {
            let user = user.unwrap_or_default();
            (
                format!("{scheme}://{user}:{}@{host}{db}", percent_encode(&pw)),
                pw,
            )
        })
}

fn assert_no_secret(
    input: &str,
    secret: &str,
    result: &Result<(StoreTarget, Vec<String>), String>,
) -> Result<(), TestCaseError> {
    let shown = match result {
        Ok((target, warnings)) => {
            let mut shown = format!("{target}\n{target:?}\n{}", warnings.join("\n"));
            if let StoreTarget::Redis(r) = target {
                shown.push_str(&r.display_url());
            }
            shown
        }
        Err(e) => e.clone(),
    };
    prop_assert!(
        !shown.contains(secret),
        "the password of {input:?} shows in: {shown}"
    );
    Ok(())
}

proptest! {
    #![proptest_config(config(3000))]

    #[test]
    fn connection_string_parser_never_panics(s in prop_oneof![
        any::<String>(),
        "[a-z0-9:/@.,=\\[\\]%?# ]{0,40}",
        "(redis|rediss|sqlite|valkeys)://[a-z0-9:/@.,=\\[\\]%?# ]{0,30}",
    ]) {
        match parse_connection_string(&s) {
            Ok((target, warnings)) => {
                let _ = (format!("{target} {target:?}"), warnings);
            }
            Err(e) => {
                prop_assert!(!e.is_empty());
                prop_assert!(!e.contains('\n'), "{e}");
            }
        }
        let _ = parse_endpoint(&s, true, 6380);
    }

    #[test]
    fn stackexchange_passwords_never_show_and_parse_exactly((s, pw) in stackexchange_string()) {
        let result = parse_connection_string(&s);
        assert_no_secret(&s, &pw, &result)?;
        if let Ok((StoreTarget::Redis(target), _)) = &result {
            let got = target.password.as_ref().map(|p| p.expose().to_owned());
            prop_assert_eq!(got.as_deref(), Some(pw.trim()), "{}", s);
        }
        match parse_endpoint(&s, true, 6380) {
            Ok((target, warnings)) => prop_assert!(false, "an endpoint with a password was accepted: {target:?} {warnings:?}"),
            Err(e) => prop_assert!(!e.contains(&pw), "{e}"),
        }
    }

    #[test]
    fn url_passwords_never_show_and_decode_exactly((s, pw) in url_string()) {
        let result = parse_connection_string(&s);
        assert_no_secret(&s, &pw, &result)?;
        if let Ok((StoreTarget::Redis(target), _)) = &result {
            let got = target.password.as_ref().map(|p| p.expose().to_owned());
            prop_assert_eq!(got.as_deref(), Some(pw.as_str()), "{}", s);
            // The URL handed to the driver carries it, percent-encoded, and decodes back.
            prop_assert!(target.to_url().expose().contains('@'));
        }
        if let Err(e) = parse_endpoint(&s, true, 6380) {
            prop_assert!(!e.contains(&pw), "{e}");
        }
    }
}

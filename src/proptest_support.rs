//! What the property tests of several modules share: how many cases to run, and
//! arbitrary JSON values of the kinds clients send.

use proptest::prelude::*;
use serde_json::Value;

/// Cases per property: modest by default so the suite stays fast; `PROPTEST_CASES=N`
/// raises it for a long run.
pub fn config(default_cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cases);
    ProptestConfig {
        cases,
        // Failing cases are reported with their seed; no files are written next to the
        // sources (a regression becomes a named unit test instead).
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Short strings over a small alphabet (so keys and values collide), with a few
/// characters that need escaping or are more than one byte.
pub fn text() -> impl Strategy<Value = String> {
    "[ab:\"\\\\é\u{1}\n]{0,6}"
}

/// Any JSON value, a few levels deep: integers at the edges of i64/u64, floats, strings
/// with escapes and multi-byte characters, arrays and objects.
pub fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        prop_oneof![Just(i64::MIN), Just(i64::MAX), Just(0), Just(-1)].prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e12f64..1e12).prop_map(Value::from),
        prop_oneof![Just(1e300), Just(-0.0), Just(0.1), Just(5e-324)].prop_map(Value::from),
        text().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((text(), inner), 0..4)
                .prop_map(|entries| Value::Object(entries.into_iter().collect())),
        ]
    })
}

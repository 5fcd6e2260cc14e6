//! Settings and shared strategies of the property tests that feed hostile input to the parsers
//! (API bodies, the RFB filter, SDP, tokens, agent answers, run events).
//!
//! Each property runs a bounded number of cases under `cargo test`;
//! `POLYDEV_FUZZ_CASES=N` runs N cases of every property instead, for long
//! runs. The seed is fixed, so every run tries the same cases unless
//! `PROPTEST_RNG_SEED` names another.

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use serde_json::Value;

/// The seed used unless `PROPTEST_RNG_SEED` is set.
pub const SEED: u64 = 0x0070_6f6c_7964_6576;

/// `default` cases, or `POLYDEV_FUZZ_CASES` when it is set.
pub fn cases(default: u32) -> u32 {
    match std::env::var("POLYDEV_FUZZ_CASES") {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("POLYDEV_FUZZ_CASES={v:?} is not a whole number")),
        _ => default,
    }
}

/// A proptest configuration running [`cases`]`(default)` cases from the
/// fixed seed (or `PROPTEST_RNG_SEED`).
pub fn config(default: u32) -> Config {
    let mut c = Config::with_cases(cases(default));
    if c.rng_seed == RngSeed::Random {
        c.rng_seed = RngSeed::Fixed(SEED);
    }
    c
}

/// Any JSON value, small: scalars of every type, arrays and objects nested
/// a few levels.
pub fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::btree_map(".{0,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

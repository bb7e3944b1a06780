//! The seeds of randomised tests, printed and replayable: `MINF_TEST_SEED=N cargo test ...` runs
//! a test again on the inputs of a failed run. A file of its own (included with `#[path]`), so
//! the GPU tests do not depend on the `minf` binary as `common/mod.rs` does.

use std::time::{SystemTime, UNIX_EPOCH};

/// The environment variable that replays a randomised test with a given seed.
pub const SEED_VAR: &str = "MINF_TEST_SEED";

/// The seed of a randomised test's inputs: `MINF_TEST_SEED` when set (to reproduce a failure),
/// else a fresh one from the clock. Printed with `test`'s name either way (the harness shows it
/// when the test fails), e.g. `a_shape_for: seed 1234 (replay: MINF_TEST_SEED=1234)`.
pub fn test_seed(test: &str) -> u64 {
    let seed = match std::env::var(SEED_VAR) {
        Ok(value) => {
            value.trim().parse().unwrap_or_else(|_| panic!("{SEED_VAR}={value:?}: expected an unsigned 64-bit integer"))
        }
        Err(_) => SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64),
    };
    println!("{test}: seed {seed} (replay: {SEED_VAR}={seed})");
    seed
}

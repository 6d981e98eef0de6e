//! The PostgreSQL protocol fuzzer (see `sluice_e2e::pgfuzz`) against the gateway on the
//! quickstart config, checked by the oracle.
//!
//! `SLUICE_PG_FUZZ_SECONDS` (default 60) bounds it; `cargo xtask fuzz --pg-protocol SECONDS`
//! runs it longer. `SLUICE_PG_FUZZ_SEED` fixes the seed (default: from the clock, printed);
//! `SLUICE_PG_FUZZ_CASE` replays one case of that seed.

// Tests fail by panicking, helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sluice_e2e::pgfuzz::{self, FuzzOptions};
use sluice_e2e::Env;

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok().filter(|v| !v.is_empty())?;
    Some(
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
    )
}

#[test]
fn protocol_fuzz_keeps_the_oracle_invariant() {
    let seconds = env_u64("SLUICE_PG_FUZZ_SECONDS").unwrap_or(60);
    let seed = env_u64("SLUICE_PG_FUZZ_SEED").unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let options = FuzzOptions {
        seed,
        duration: Duration::from_secs(seconds),
        only_case: env_u64("SLUICE_PG_FUZZ_CASE"),
        quiet: Duration::from_secs(10),
        check_every: 25,
    };
    eprintln!("pg protocol fuzz: seed {seed}, {seconds} s (SLUICE_PG_FUZZ_SEED={seed} replays it)");
    let mut env = Env::quickstart().start();
    let report = pgfuzz::run(&mut env, &options);
    eprintln!(
        "pg protocol fuzz: seed {seed}: {} cases, {} batches, {} failure(s)",
        report.cases,
        report.batches,
        report.failures.len()
    );
    assert!(
        report.failures.is_empty(),
        "pg protocol fuzz found {} failure(s):\n{}",
        report.failures.len(),
        report.failures.join("\n")
    );
}

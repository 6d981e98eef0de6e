//! See `sluice_postgres::fuzzing::backend`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_postgres::fuzzing::backend(data));

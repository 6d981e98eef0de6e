//! The config loader: any text gives a config or an error naming the problem,
//! never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match sluice_core::Config::from_toml_str(&text, "fuzz.toml") {
        Ok(_) => {}
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});

//! The stream masker across chunk splits: with detectors whose matches are
//! bounded (hold-back 128 bytes), pushing the input in chunks cut at any
//! offsets and flushing gives exactly what masking the whole input at once
//! gives. With the default detectors (unbounded matches) it must not panic.
#![no_main]

use sluice_core::masking::{compile, MaskingConfig, MaskingEngine};
use std::sync::OnceLock;

fn engine(detectors: &str) -> MaskingEngine {
    let config: MaskingConfig =
        sluice_core::toml::from_str(&format!("detectors = [{detectors}]")).unwrap();
    compile(&config, None).unwrap()
}

fn bounded() -> &'static MaskingEngine {
    static E: OnceLock<MaskingEngine> = OnceLock::new();
    E.get_or_init(|| {
        engine(r#""credit_card", "us_ssn", "iban", "aws_access_key", "github_token", "ipv4""#)
    })
}

fn defaults() -> &'static MaskingEngine {
    static E: OnceLock<MaskingEngine> = OnceLock::new();
    E.get_or_init(|| engine(r#""default", "ipv4", "ipv6""#))
}

fn streamed(engine: &MaskingEngine, cuts: &[u8], input: &[u8]) -> Vec<u8> {
    let mut s = engine.stream();
    let mut out = Vec::new();
    let mut rest = input;
    for &c in cuts {
        let n = (c as usize).min(rest.len());
        let (chunk, tail) = rest.split_at(n);
        out.extend(s.push(chunk));
        rest = tail;
    }
    out.extend(s.push(rest));
    out.extend(s.flush());
    out
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // First byte: how many cut lengths follow; then the input.
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = (n as usize % 16).min(rest.len());
    let (cuts, input) = rest.split_at(n);

    let e = bounded();
    assert!(e.holdback() <= 4096);
    let whole = e.mask_bytes(input).0.into_owned();
    assert_eq!(
        streamed(e, cuts, input),
        whole,
        "chunked output differs from whole-input output"
    );

    let _ = streamed(defaults(), cuts, input);
    let _ = defaults().mask_bytes(input);
});

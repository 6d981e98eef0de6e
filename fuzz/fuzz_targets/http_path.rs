//! HTTP path normalisation, which decides what policy and the upstream see:
//! any path is normalised or refused, never a panic, and the canonical form
//! sent upstream normalises to the same segments (nothing decodes twice).
#![no_main]

use sluice_http::path::{NormalPath, MAX_PATH_LEN};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let raw = String::from_utf8_lossy(data);
    let Ok(path) = NormalPath::parse(&raw) else {
        return;
    };
    assert!(!path.segments().iter().any(|s| s == ".." || s.contains('/')));
    let upstream = path.encoded(false);
    // Re-encoding can lengthen a path (U+FFFD from invalid UTF-8 is 9 bytes
    // encoded); past the limit a second parse refuses it for that alone.
    if upstream.len() > MAX_PATH_LEN {
        return;
    }
    let again = NormalPath::parse(&upstream).expect("the canonical path parses");
    assert_eq!(again.segments(), path.segments(), "{raw:?} -> {upstream:?}");
});

//! Gateway token parsing and verification: arbitrary text is rejected with an
//! error, never a panic; a token the authority issued verifies; a token
//! changed in any character that survives decoding differently is rejected.
#![no_main]

use sluice_core::token::TokenAuthority;
use std::sync::OnceLock;
use std::time::Duration;

fn authority() -> &'static (TokenAuthority, String) {
    static A: OnceLock<(TokenAuthority, String)> = OnceLock::new();
    A.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("sluice-fuzz-token-{}", std::process::id()));
        let a = TokenAuthority::load_or_create(&dir, Duration::from_secs(3600)).unwrap();
        let token = a
            .issue("fuzz", &["agents".to_string()], Duration::from_secs(3600))
            .unwrap();
        (a, token)
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (a, token) = authority();
    let text = String::from_utf8_lossy(data);
    if let Ok(identity) = a.verify(&text) {
        // Only the authority's own token (or text carrying the same signed
        // claims) can verify: the identity must be the one issued.
        assert_eq!(identity.subject, "fuzz");
        assert_eq!(identity.groups, ["agents"]);
    }
    // Flip one character of the real token, chosen by the input.
    if let Some((&pos, rest)) = data.split_first() {
        let mut t: Vec<u8> = token.clone().into_bytes();
        let i = pos as usize % t.len();
        let b = rest.first().copied().unwrap_or(b'A');
        if t[i] != b && b.is_ascii_graphic() {
            t[i] = b;
            if let Ok(s) = String::from_utf8(t) {
                if let Ok(identity) = a.verify(&s) {
                    assert_eq!(identity.subject, "fuzz");
                }
            }
        }
    }
    assert!(a.verify(token).is_ok());
});

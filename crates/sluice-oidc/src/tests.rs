use crate::provider::{parse_algorithm, raw_parts};

#[test]
fn raw_header_keeps_alg_none_and_hmac_as_text() {
    // {"alg":"none","kid":"k"} . {"iss":"https://idp"} . ""
    let (h, p) =
        raw_parts("eyJhbGciOiJub25lIiwia2lkIjoiayJ9.eyJpc3MiOiJodHRwczovL2lkcCJ9.").unwrap();
    assert_eq!(h.alg.as_deref(), Some("none"));
    assert_eq!(h.kid.as_deref(), Some("k"));
    assert_eq!(p["iss"], "https://idp");
    assert!(raw_parts("a.b").is_none());
    assert!(raw_parts("a.b.c.d").is_none());
    assert!(raw_parts("!!.??.x").is_none());
}

#[test]
fn only_asymmetric_algorithms_parse() {
    for ok in ["RS256", "PS256", "ES256", "EdDSA"] {
        assert!(parse_algorithm(ok).is_ok(), "{ok}");
    }
    for bad in ["HS256", "none", "NONE", "hs512", ""] {
        assert!(parse_algorithm(bad).is_err(), "{bad}");
    }
}

use super::*;
use base64_url as b64;

mod base64_url {
    // Minimal unpadded base64url for crafting hostile tokens in tests.
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    pub fn encode(data: &[u8]) -> String {
        let mut out = String::new();
        for chunk in data.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            let chars = chunk.len() + 1;
            for i in 0..chars {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }
    pub fn decode_segment(s: &str) -> Vec<u8> {
        let mut bits = 0u32;
        let mut nbits = 0;
        let mut out = Vec::new();
        for c in s.bytes() {
            let v = ALPHABET.iter().position(|&a| a == c).unwrap() as u32;
            bits = (bits << 6) | v;
            nbits += 6;
            if nbits >= 8 {
                nbits -= 8;
                out.push((bits >> nbits) as u8);
            }
        }
        out
    }
}

fn authority(dir: &Path) -> TokenAuthority {
    TokenAuthority::load_or_create(dir, Duration::from_secs(3600)).unwrap()
}

fn groups() -> Vec<String> {
    vec!["agents".into()]
}

#[test]
fn issued_token_verifies_and_key_persists() {
    let dir = tempfile::tempdir().unwrap();
    let a = authority(dir.path());
    let t = a
        .issue("agent-7", &groups(), Duration::from_secs(600))
        .unwrap();
    let id = authority(dir.path()).verify(&t).unwrap();
    assert_eq!(id.subject, "agent-7");
    assert_eq!(id.groups, groups());
    assert!(!id.token_id.is_empty());
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.path().join("keys/token-signing.pem"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn ttl_above_maximum_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = authority(dir.path())
        .issue("a", &groups(), Duration::from_secs(7200))
        .unwrap_err();
    assert!(matches!(err, TokenError::TtlTooLong { .. }));
}

fn forge(header: &str, claims: serde_json::Value, sig: &str) -> String {
    format!(
        "{}.{}.{}",
        b64::encode(header.as_bytes()),
        b64::encode(claims.to_string().as_bytes()),
        sig
    )
}

fn claims(exp_offset: i64, nbf_offset: i64) -> serde_json::Value {
    let now = unix_now() as i64;
    serde_json::json!({"iss":"sluice","aud":"sluice","sub":"mallory","groups":["admins"],
        "exp": now + exp_offset, "nbf": now + nbf_offset, "iat": now, "jti": "x"})
}

#[test]
fn alg_none_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let t = forge(r#"{"alg":"none","typ":"JWT"}"#, claims(600, 0), "");
    assert!(matches!(
        authority(dir.path()).verify(&t),
        Err(TokenError::Invalid)
    ));
}

#[test]
fn hmac_signed_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let t = forge(r#"{"alg":"HS256","typ":"JWT"}"#, claims(600, 0), "c2ln");
    assert!(matches!(
        authority(dir.path()).verify(&t),
        Err(TokenError::Invalid)
    ));
}

#[test]
fn token_from_another_key_is_refused() {
    let ours = tempfile::tempdir().unwrap();
    let theirs = tempfile::tempdir().unwrap();
    let t = authority(theirs.path())
        .issue("agent", &groups(), Duration::from_secs(60))
        .unwrap();
    assert!(matches!(
        authority(ours.path()).verify(&t),
        Err(TokenError::Invalid)
    ));
}

#[test]
fn tampered_claims_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let a = authority(dir.path());
    let t = a
        .issue("agent", &groups(), Duration::from_secs(60))
        .unwrap();
    let parts: Vec<&str> = t.split('.').collect();
    let mut body: serde_json::Value =
        serde_json::from_slice(&b64::decode_segment(parts[1])).unwrap();
    body["groups"] = serde_json::json!(["admins"]);
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64::encode(body.to_string().as_bytes()),
        parts[2]
    );
    assert!(matches!(a.verify(&forged), Err(TokenError::Invalid)));
}

#[test]
fn expired_and_not_yet_valid_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let a = authority(dir.path());
    // Sign arbitrary claims with the real key to reach the time checks.
    let sign = |c: serde_json::Value| {
        let mut h = Header::new(Algorithm::EdDSA);
        h.kid = Some(a.key_id.clone());
        jsonwebtoken::encode(&h, &c, &a.encoding).unwrap()
    };
    assert!(matches!(
        a.verify(&sign(claims(-60, -120))),
        Err(TokenError::Expired)
    ));
    assert!(matches!(
        a.verify(&sign(claims(600, 300))),
        Err(TokenError::NotYetValid)
    ));
    let mut wrong_aud = claims(600, 0);
    wrong_aud["aud"] = "other".into();
    assert!(matches!(
        a.verify(&sign(wrong_aud)),
        Err(TokenError::WrongIssuer)
    ));
    assert!(a.verify(&sign(claims(600, 0))).is_ok());
}

#[test]
fn garbage_and_huge_tokens_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let a = authority(dir.path());
    for t in ["", "a.b.c", "....", "\u{0}\u{1}", &"x".repeat(100_000)] {
        assert!(a.verify(t).is_err(), "{t:.20}");
    }
}

#[test]
fn bearer_header_parsing() {
    use super::{bearer_from_header, BearerError};
    assert_eq!(bearer_from_header(Some(b"Bearer abc.def")), Ok("abc.def"));
    assert_eq!(bearer_from_header(Some(b"bearer  abc ")), Ok("abc"));
    assert_eq!(bearer_from_header(None), Err(BearerError::Missing));
    assert_eq!(
        bearer_from_header(Some(b"Basic dXNlcg==")),
        Err(BearerError::NotBearer)
    );
    assert_eq!(
        bearer_from_header(Some(b"Bearer")),
        Err(BearerError::NotBearer)
    );
    assert_eq!(
        bearer_from_header(Some(b"Bearer   ")),
        Err(BearerError::NotBearer)
    );
    assert_eq!(
        bearer_from_header(Some(b"Bearer \xff")),
        Err(BearerError::NotText)
    );
    // The error never echoes the value.
    let e = bearer_from_header(Some(b"Token secret-value")).unwrap_err();
    assert!(!e.to_string().contains("secret-value"));
}

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

/// A config whose `[auth]` names keys by file.
fn keyed_config(dir: &Path, auth: &str) -> crate::Config {
    let text = format!(
        "[gateway]\nstate_dir = {:?}\n\n[auth]\n{auth}\n",
        dir.join("state").display().to_string()
    );
    crate::Config::from_toml_str(&text, "t.toml").unwrap()
}

fn write_key(dir: &Path, name: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let private = dir.join(format!("{name}.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    std::fs::write(&private, key.serialize_pem()).unwrap();
    std::fs::write(&public, key.public_key_pem()).unwrap();
    (private.display().to_string(), public.display().to_string())
}

/// Two nodes configured with the same signing key accept each other's
/// tokens; during a rotation the new key signs and the old one (its public
/// half) still verifies; an unknown key never does.
#[test]
fn configured_keys_are_shared_and_rotate() {
    let dir = tempfile::tempdir().unwrap();
    let (old, old_pub) = write_key(dir.path(), "old");
    let (new, _) = write_key(dir.path(), "new");
    let node = |auth: &str| TokenAuthority::from_config(&keyed_config(dir.path(), auth)).unwrap();
    let a = node(&format!("signing_key = {{ file = {old:?} }}"));
    let b = node(&format!("signing_key = {{ file = {old:?} }}"));
    let t = a
        .issue("agent", &groups(), Duration::from_secs(600))
        .unwrap();
    assert_eq!(b.verify(&t).unwrap().subject, "agent");
    // Nothing was generated into the state directory.
    assert!(!dir.path().join("state/keys/token-signing.pem").exists());
    // Rotation: the new key signs, the old one still verifies.
    let rotated = node(&format!(
        "signing_key = {{ file = {new:?} }}\nverification_keys = [{{ file = {old_pub:?} }}]"
    ));
    assert_eq!(rotated.verify(&t).unwrap().subject, "agent");
    let fresh = rotated
        .issue("agent", &groups(), Duration::from_secs(600))
        .unwrap();
    assert!(a.verify(&fresh).is_err());
    // After the rotation, the old key is gone: its tokens no longer verify.
    let after = node(&format!("signing_key = {{ file = {new:?} }}"));
    assert!(matches!(after.verify(&t), Err(TokenError::Invalid)));
    assert_eq!(after.verify(&fresh).unwrap().subject, "agent");
    // A key that is not Ed25519 is refused with the key named, never shown.
    let rsa = dir.path().join("rsa.pem");
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    std::fs::write(&rsa, pair.serialize_pem()).unwrap();
    let config = keyed_config(
        dir.path(),
        &format!("signing_key = {{ file = {:?} }}", rsa.display().to_string()),
    );
    let err = TokenAuthority::from_config(&config)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("auth.signing_key") && err.contains("not an Ed25519 key"),
        "{err}"
    );
    assert!(!err.contains("PRIVATE KEY"), "{err}");
}

/// A PEM the parser cannot read (a blank line inside makes it read the key
/// line as a header) is refused without the key appearing in the error.
#[test]
fn a_malformed_key_is_refused_without_showing_it() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let pem = key.serialize_pem();
    let body = pem.lines().nth(1).unwrap().to_string();
    let broken = pem.replacen("\n-----END", "\n\n-----END", 1);
    let path = dir.path().join("broken.pem");
    std::fs::write(&path, &broken).unwrap();
    let config = keyed_config(
        dir.path(),
        &format!(
            "signing_key = {{ file = {:?} }}",
            path.display().to_string()
        ),
    );
    let err = TokenAuthority::check_config(&config)
        .unwrap_err()
        .to_string();
    assert!(err.contains("auth.signing_key"), "{err}");
    assert!(!err.contains(&body), "{err}");
    // Nothing is generated by a check.
    assert!(!dir.path().join("state").exists());
}

/// A token exchanged for an identity provider's subject stays that
/// provider's subject: it is not the gateway's own user of the same name.
#[test]
fn an_exchanged_token_keeps_its_subjects_issuer() {
    let dir = tempfile::tempdir().unwrap();
    let a = authority(dir.path());
    let issued = a
        .issue_with(&TokenRequest {
            subject: "alice".into(),
            groups: groups(),
            ttl: Duration::from_secs(600),
            connections: Some(vec!["appdb".into()]),
            parent_token_id: Some("parent".into()),
            subject_issuer: Some("https://idp.example".into()),
            ..TokenRequest::default()
        })
        .unwrap();
    let id = a.verify(&issued.token).unwrap();
    assert_eq!(id.issuer, "https://idp.example");
    let own = a
        .issue("alice", &groups(), Duration::from_secs(600))
        .unwrap();
    assert_eq!(a.verify(&own).unwrap().issuer, GATEWAY_ISSUER);
}

#[test]
fn a_token_verified_before_is_known_by_its_exact_bytes_only() {
    let dir = tempfile::tempdir().unwrap();
    let a = authority(dir.path());
    let t = a
        .issue("agent-7", &groups(), Duration::from_secs(600))
        .unwrap();
    let first = a.verify(&t).unwrap();
    let again = a.verify(&t).unwrap();
    assert_eq!(again.subject, first.subject);
    assert_eq!(again.token_id, first.token_id);
    // A copy with any byte changed is checked in full, and fails.
    let (signed, sig) = t.rsplit_once('.').unwrap();
    let flipped = if sig.starts_with('A') { 'B' } else { 'A' };
    let altered = format!("{signed}.{flipped}{}", &sig[1..]);
    assert!(matches!(a.verify(&altered), Err(TokenError::Invalid)));
    let (header, rest) = t.split_once('.').unwrap();
    let (claims, sig) = rest.split_once('.').unwrap();
    let mut claims_json: serde_json::Value =
        serde_json::from_slice(&b64::decode_segment(claims)).unwrap();
    claims_json["sub"] = "root".into();
    let resigned = format!(
        "{header}.{}.{sig}",
        b64::encode(claims_json.to_string().as_bytes())
    );
    assert!(a.verify(&resigned).is_err());
}

#[test]
fn a_remembered_token_has_its_times_checked_on_every_use() {
    let dir = tempfile::tempdir().unwrap();
    let a = authority(dir.path());
    let t = a
        .issue("agent-7", &groups(), Duration::from_secs(600))
        .unwrap();
    let token = a.verify_full(&t).unwrap();
    let known = |exp, nbf, iat| Verified {
        token: token.clone(),
        exp,
        nbf,
        iat,
    };
    let now = 1_000_000;
    assert!(known(now + 60, now - 60, now - 60).check_times(now).is_ok());
    // Within the leeway, as jsonwebtoken allows on the first check.
    assert!(known(now - LEEWAY_SECS, now + LEEWAY_SECS, now)
        .check_times(now)
        .is_ok());
    assert!(matches!(
        known(now - LEEWAY_SECS - 1, now - 60, now - 60).check_times(now),
        Err(TokenError::Expired)
    ));
    assert!(matches!(
        known(now + 60, now + LEEWAY_SECS + 1, now).check_times(now),
        Err(TokenError::NotYetValid)
    ));
    assert!(matches!(
        known(now + 60, now, now + LEEWAY_SECS + 1).check_times(now),
        Err(TokenError::NotYetValid)
    ));
}

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

// Userinfo for JWT access tokens, fetch rate limits and key expiry cannot be
// driven on npm oidc-provider (its userinfo takes only opaque tokens; its
// keys cannot be made to expire on demand), so these run against a minimal
// loopback IdP serving real discovery, JWKS and userinfo documents over HTTP.
mod loopback_idp {
    use crate::OidcProvider;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use base64::Engine;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use serde_json::{json, Value};
    use sluice_core::auth::{AuthError, Authenticator};
    use sluice_core::config::OidcProviderConfig;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{SystemTime, UNIX_EPOCH};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct Idp {
        issuer: String,
        jwks: Arc<Mutex<Value>>,
        fetches: Arc<AtomicUsize>,
        task: tokio::task::JoinHandle<()>,
    }

    async fn start() -> Idp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let jwks = Arc::new(Mutex::new(json!({"keys": []})));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (j, f, iss) = (jwks.clone(), fetches.clone(), issuer.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = vec![0u8; 8192];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                let path = head.split(' ').nth(1).unwrap_or("").to_string();
                let body = match path.as_str() {
                    "/.well-known/openid-configuration" => json!({
                        "issuer": iss,
                        "jwks_uri": format!("{iss}/jwks"),
                        "userinfo_endpoint": format!("{iss}/userinfo"),
                    }),
                    "/jwks" => {
                        f.fetch_add(1, Ordering::SeqCst);
                        j.lock().unwrap().clone()
                    }
                    "/userinfo"
                        if head
                            .to_ascii_lowercase()
                            .contains("authorization: bearer ey") =>
                    {
                        json!({"sub": "u1", "realm_access": {"roles": ["from-userinfo"]}})
                    }
                    _ => json!({"error": "not found"}),
                };
                let body = body.to_string();
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
            }
        });
        Idp {
            issuer,
            jwks,
            fetches,
            task,
        }
    }

    struct Key {
        kid: String,
        encoding: EncodingKey,
        jwk: Value,
    }

    fn key(kid: &str) -> Key {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        Key {
            kid: kid.into(),
            encoding: EncodingKey::from_ed_pem(pair.serialize_pem().as_bytes()).unwrap(),
            jwk: json!({"kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA",
                        "kid": kid, "x": B64.encode(pair.public_key_raw())}),
        }
    }

    fn sign(key: &Key, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(key.kid.clone());
        jsonwebtoken::encode(&header, claims, &key.encoding).unwrap()
    }

    fn claims(issuer: &str, extra: Value) -> Value {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mut c = json!({"iss": issuer, "aud": "sluice", "sub": "u1", "iat": now,
                           "exp": now + 300, "jti": "j1"});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    }

    fn provider(issuer: &str, extra: &str) -> OidcProvider {
        let config: OidcProviderConfig = sluice_core::toml::from_str(&format!(
            "issuer = \"{issuer}\"\naudience = \"sluice\"\n{extra}"
        ))
        .unwrap();
        OidcProvider::new(config).unwrap()
    }

    #[tokio::test]
    async fn claims_paths_and_userinfo_fallback() {
        let idp = start().await;
        let k1 = key("k1");
        *idp.jwks.lock().unwrap() = json!({"keys": [k1.jwk]});
        let p = provider(
            &idp.issuer,
            "groups_claim = \"realm_access.roles\"\nidentity_claim = \"email\"",
        );
        let token = sign(
            &k1,
            &claims(
                &idp.issuer,
                json!({"email": "a@example.com",
                                                          "realm_access": {"roles": ["dba"]}}),
            ),
        );
        let id = p.authenticate(&token).await.unwrap().unwrap();
        assert_eq!(
            (id.subject.as_str(), id.groups.as_slice()),
            ("a@example.com", &["dba".to_string()][..])
        );
        assert_eq!(id.token_id, "j1");
        // No groups claim: userinfo supplies them.
        let token = sign(&k1, &claims(&idp.issuer, json!({"email": "b@example.com"})));
        let id = p.authenticate(&token).await.unwrap().unwrap();
        assert_eq!(id.groups, ["from-userinfo"]);
        // No identity claim: refused by name.
        let token = sign(&k1, &claims(&idp.issuer, json!({})));
        let err = p.authenticate(&token).await.unwrap_err().to_string();
        assert!(err.contains("\"email\" claim"), "{err}");
        // Another issuer's token is not this provider's business.
        let token = sign(&k1, &claims("https://elsewhere.example.com", json!({})));
        assert!(p.authenticate(&token).await.unwrap().is_none());
        idp.task.abort();
    }

    #[tokio::test]
    async fn unknown_kids_refetch_at_a_bounded_rate_and_expired_keys_fail_closed() {
        let idp = start().await;
        let k1 = key("k1");
        *idp.jwks.lock().unwrap() = json!({"keys": [k1.jwk]});
        let p = provider(&idp.issuer, "jwks_ttl = \"2s\"");
        let good = sign(&k1, &claims(&idp.issuer, json!({})));
        assert!(p.authenticate(&good).await.unwrap().is_some());
        assert_eq!(idp.fetches.load(Ordering::SeqCst), 1);
        // Made-up kids right after a fetch: no new fetch, a clear refusal.
        for i in 0..5 {
            let stranger = key(&format!("x{i}"));
            let err = p
                .authenticate(&sign(&stranger, &claims(&idp.issuer, json!({}))))
                .await
                .unwrap_err();
            assert!(err.to_string().contains("does not publish"), "{err}");
        }
        assert_eq!(idp.fetches.load(Ordering::SeqCst), 1);
        // The IdP goes away; cached keys work until jwks_ttl, then nothing does.
        idp.task.abort();
        assert!(p.authenticate(&good).await.unwrap().is_some());
        tokio::time::sleep(std::time::Duration::from_millis(3200)).await;
        let err = p.authenticate(&good).await.unwrap_err();
        assert!(matches!(err, AuthError::Unavailable(_)), "{err}");
        assert!(
            err.to_string().contains("no unexpired signing keys"),
            "{err}"
        );
    }
}

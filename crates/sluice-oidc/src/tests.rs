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
        /// The `issuer` the discovery document names (default: `issuer`).
        discovery_issuer: Arc<Mutex<String>>,
        jwks: Arc<Mutex<Value>>,
        fetches: Arc<AtomicUsize>,
        task: tokio::task::JoinHandle<()>,
    }

    async fn start() -> Idp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let jwks = Arc::new(Mutex::new(json!({"keys": []})));
        let fetches = Arc::new(AtomicUsize::new(0));
        let discovery_issuer = Arc::new(Mutex::new(issuer.clone()));
        let (j, f, iss) = (jwks.clone(), fetches.clone(), issuer.clone());
        let d = discovery_issuer.clone();
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
                        "issuer": d.lock().unwrap().clone(),
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
            discovery_issuer,
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

    fn now() -> f64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    }

    /// Claims without `aud` (and `extra` added).
    fn no_aud(issuer: &str, extra: Value) -> Value {
        let mut c = claims(issuer, extra);
        c.as_object_mut().unwrap().remove("aud");
        c
    }

    /// An Ed25519 IdP serving `k1`, and its key.
    async fn idp_with_key() -> (Idp, Key) {
        let idp = start().await;
        let k1 = key("k1");
        *idp.jwks.lock().unwrap() = json!({"keys": [k1.jwk]});
        (idp, k1)
    }

    async fn refusal(p: &OidcProvider, token: &str) -> String {
        match p.authenticate(token).await {
            Err(e) => e.to_string(),
            Ok(id) => panic!("accepted: {id:?}"),
        }
    }

    #[test]
    fn an_issuer_is_itself_with_or_without_one_trailing_slash() {
        let base = "https://TENANT.auth0.com";
        assert!(crate::provider::is_issuer(base, "https://TENANT.auth0.com"));
        assert!(crate::provider::is_issuer(
            base,
            "https://TENANT.auth0.com/"
        ));
        for other in [
            "https://TENANT.auth0.com//",
            "https://TENANT.auth0.com.evil/",
            "https://TENANT.auth0.com.evil",
            "https://TENANT.auth0.com/x",
            "https://tenant.auth0.com/",
            "https://TENANT.auth0.co",
            "https://TENANT.auth0.com /",
            "",
        ] {
            assert!(!crate::provider::is_issuer(base, other), "{other}");
        }
        assert!(!crate::provider::is_issuer("", "/"));
    }

    #[tokio::test]
    async fn the_issuer_matches_with_and_without_a_trailing_slash_and_nothing_else() {
        let (idp, k1) = idp_with_key().await;
        let base = idp.issuer.clone();
        // Auth0: discovery and tokens name the issuer with a slash.
        *idp.discovery_issuer.lock().unwrap() = format!("{base}/");
        for configured in [base.clone(), format!("{base}/")] {
            let p = provider(&configured, "");
            for iss in [base.clone(), format!("{base}/")] {
                let id = p
                    .authenticate(&sign(&k1, &claims(&iss, json!({}))))
                    .await
                    .unwrap_or_else(|e| panic!("config {configured}, iss {iss}: {e}"))
                    .unwrap();
                // One identity whichever form the token or the config uses.
                assert_eq!(id.issuer, base, "config {configured}, iss {iss}");
            }
            // Other issuers are not this provider's tokens at all…
            for iss in [
                format!("{base}//"),
                format!("{base}.evil/"),
                format!("{base}/evil"),
            ] {
                let token = sign(&k1, &claims(&iss, json!({})));
                assert!(p.authenticate(&token).await.unwrap().is_none(), "{iss}");
                // …and the signature check refuses them even if routed here.
                let (header, payload) = crate::provider::raw_parts(&token).unwrap();
                let err = p.verify(&token, &header, &payload).await.unwrap_err();
                assert!(
                    err.to_string().contains("token issuer is not"),
                    "{iss}: {err}"
                );
            }
        }
        idp.task.abort();
    }

    #[tokio::test]
    async fn discovery_names_the_issuer_with_at_most_one_trailing_slash() {
        let idp = start().await;
        let client = crate::http::HttpClient::new(None).unwrap();
        let base = idp.issuer.clone();
        for named in [base.clone(), format!("{base}/")] {
            *idp.discovery_issuer.lock().unwrap() = named.clone();
            for configured in [base.clone(), format!("{base}/")] {
                assert!(
                    crate::Discovery::fetch(&client, &configured).await.is_ok(),
                    "{named} for {configured}"
                );
            }
        }
        for named in [format!("{base}//"), format!("{base}.evil/")] {
            *idp.discovery_issuer.lock().unwrap() = named.clone();
            let err = crate::Discovery::fetch(&client, &base).await.unwrap_err();
            assert!(err.to_string().contains("discovery names issuer"), "{err}");
        }
        idp.task.abort();
    }

    #[tokio::test]
    async fn numeric_dates_may_have_fractions() {
        let (idp, k1) = idp_with_key().await;
        let p = provider(&idp.issuer, "");
        let t = now();
        let token = sign(
            &k1,
            &claims(
                &idp.issuer,
                json!({"iat": t - 0.5, "nbf": t - 1.25, "exp": t + 300.25}),
            ),
        );
        let id = p.authenticate(&token).await.unwrap().unwrap();
        // The session ends at the exact instant.
        let exp = id
            .expires_at
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!((exp - (t + 300.25)).abs() < 0.01, "{exp} vs {}", t + 300.25);
        // Expired (beyond the 30s skew), as a fraction.
        let token = sign(&k1, &claims(&idp.issuer, json!({"exp": t - 100.5})));
        assert_eq!(refusal(&p, &token).await, "token expired");
        // Issued in the future, as a fraction.
        let token = sign(&k1, &claims(&idp.issuer, json!({"iat": t + 100.5})));
        assert!(refusal(&p, &token).await.contains("issued in the future"));
        // Not NumericDates.
        for iat in [json!(-1.5), json!("1700000000"), json!(null)] {
            let token = sign(&k1, &claims(&idp.issuer, json!({ "iat": iat })));
            assert!(
                refusal(&p, &token).await.contains("iat is not a number"),
                "{iat}"
            );
        }
        for exp in [json!(-1.5), json!("1700000000"), json!(1e300)] {
            let token = sign(&k1, &claims(&idp.issuer, json!({ "exp": exp })));
            let err = refusal(&p, &token).await;
            assert!(
                err.contains("exp") || err.contains("malformed") || err.contains("expired"),
                "{exp}: {err}"
            );
        }
        idp.task.abort();
    }

    #[tokio::test]
    async fn a_token_without_aud_needs_an_accepted_client_id() {
        let (idp, k1) = idp_with_key().await;
        let iss = idp.issuer.clone();
        // Without the setting, aud is required, client_id or not.
        let strict = provider(&iss, "");
        let cognito = sign(
            &k1,
            &no_aud(&iss, json!({"client_id": "app1", "token_use": "access"})),
        );
        assert_eq!(refusal(&strict, &cognito).await, "token has no aud claim");
        // With it: a token without aud stands on its client_id.
        let p = provider(&iss, "accept_client_id = [\"app1\", \"app2\"]");
        assert!(p.authenticate(&cognito).await.unwrap().is_some());
        let other = sign(&k1, &no_aud(&iss, json!({"client_id": "app2"})));
        assert!(p.authenticate(&other).await.unwrap().is_some());
        for forged in [
            no_aud(&iss, json!({"client_id": "app3"})),
            no_aud(&iss, json!({"client_id": "APP1"})),
            no_aud(&iss, json!({"client_id": ["app1"]})),
            no_aud(&iss, json!({})),
        ] {
            let err = refusal(&p, &sign(&k1, &forged)).await;
            assert!(
                err.contains("client_id is not one accepted"),
                "{forged}: {err}"
            );
        }
        // A token WITH aud must match the audience, client_id or not.
        for aud in [
            json!("other"),
            json!(null),
            json!(5),
            json!([]),
            json!(["other", 5]),
        ] {
            let forged = claims(&iss, json!({"aud": aud, "client_id": "app1"}));
            let err = refusal(&p, &sign(&k1, &forged)).await;
            assert!(err.contains("aud"), "{forged}: {err}");
        }
        // The usual audience still works.
        let token = sign(&k1, &claims(&iss, json!({})));
        assert!(p.authenticate(&token).await.unwrap().is_some());
        idp.task.abort();
    }

    #[tokio::test]
    async fn a_string_groups_claim_is_one_group_unless_a_separator_is_set() {
        let (idp, k1) = idp_with_key().await;
        let iss = idp.issuer.clone();
        let token = sign(&k1, &claims(&iss, json!({"groups": "Domain Admins,ops"})));
        let id = provider(&iss, "")
            .authenticate(&token)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(id.groups, ["Domain Admins,ops"]);
        let p = provider(&iss, "groups_separator = \",\"");
        let id = p.authenticate(&token).await.unwrap().unwrap();
        assert_eq!(id.groups, ["Domain Admins", "ops"]);
        let token = sign(&k1, &claims(&iss, json!({"groups": ["Domain Admins,ops"]})));
        let id = p.authenticate(&token).await.unwrap().unwrap();
        assert_eq!(id.groups, ["Domain Admins,ops"]);
        idp.task.abort();
    }

    #[test]
    fn empty_separators_and_client_ids_are_configuration_errors() {
        for extra in [
            "groups_separator = \"\"",
            "accept_client_id = [\"app\", \" \"]",
        ] {
            let config: OidcProviderConfig = sluice_core::toml::from_str(&format!(
                "issuer = \"https://idp.example.com\"\naudience = \"sluice\"\n{extra}"
            ))
            .unwrap();
            assert!(OidcProvider::new(config).is_err(), "{extra}");
        }
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

use super::*;

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(*k, HeaderValue::from_str(v).unwrap());
    }
    h
}

#[test]
fn cookie_is_found_among_others() {
    let h = headers(&[("cookie", "a=1; __Host-sluice_console=abc ; b=2")]);
    assert_eq!(cookie_value(&h).as_deref(), Some("abc"));
    let h = headers(&[("cookie", "a=1"), ("cookie", "__Host-sluice_console=xyz")]);
    assert_eq!(cookie_value(&h).as_deref(), Some("xyz"));
    assert_eq!(
        cookie_value(&headers(&[("cookie", "sluice_console=abc")])),
        None
    );
    assert_eq!(
        cookie_value(&headers(&[("cookie", "__Host-sluice_console=")])),
        None
    );
}

#[test]
fn set_cookie_is_strict() {
    let v = set_cookie("id1", SystemTime::now() + Duration::from_secs(60)).unwrap();
    let v = v.to_str().unwrap();
    assert!(
        v.starts_with("__Host-sluice_console=id1; Path=/; Max-Age="),
        "{v}"
    );
    for attr in ["HttpOnly", "Secure", "SameSite=Strict"] {
        assert!(v.contains(attr), "{v}");
    }
    let age: u64 = v
        .split("Max-Age=")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!((55..=60).contains(&age), "{v}");
}

#[test]
fn origin_and_token_are_both_checked() {
    let good = [
        ("host", "127.0.0.1:8081"),
        ("origin", "https://127.0.0.1:8081"),
    ];
    let mut ok = good.to_vec();
    ok.push(("x-sluice-csrf", "tok"));
    assert!(check_csrf(&headers(&ok), "tok").is_ok());
    // Missing or wrong token.
    assert!(check_csrf(&headers(&good), "tok").is_err());
    let mut wrong = good.to_vec();
    wrong.push(("x-sluice-csrf", "tok2"));
    assert!(check_csrf(&headers(&wrong), "tok").is_err());
    // Right token from another origin (or plain http on the same host).
    for origin in ["https://evil.example", "http://127.0.0.1:8081", "null"] {
        let h = headers(&[
            ("host", "127.0.0.1:8081"),
            ("origin", origin),
            ("x-sluice-csrf", "tok"),
        ]);
        assert!(check_csrf(&h, "tok").is_err(), "{origin}");
    }
    // No Origin: a cross-site fetch metadata header still refuses.
    let h = headers(&[("sec-fetch-site", "cross-site"), ("x-sluice-csrf", "tok")]);
    assert!(check_csrf(&h, "tok").is_err());
    let h = headers(&[("x-sluice-csrf", "tok")]);
    assert!(check_csrf(&h, "tok").is_ok());
}

#[test]
fn random_ids_differ() {
    let a = random_hex().unwrap();
    assert_eq!(a.len(), 64);
    assert_ne!(a, random_hex().unwrap());
}

#[test]
fn signing_in_over_and_over_evicts_only_ones_own_sessions() {
    let who = |subject: &str| Identity {
        subject: subject.into(),
        groups: vec![],
        issuer: "sluice".into(),
        token_id: "t".into(),
        expires_at: SystemTime::now() + Duration::from_secs(60),
        connections: None,
    };
    let sessions = ConsoleSessions::default();
    let (dana, _) = sessions.create("dana-token".into(), &who("dana")).unwrap();
    let mut agent = Vec::new();
    for _ in 0..MAX_SESSIONS_PER_SUBJECT + 5 {
        agent.push(
            sessions
                .create("agent-token".into(), &who("agent"))
                .unwrap()
                .0,
        );
    }
    let entries = sessions.entries.locked();
    assert!(entries.contains_key(&dana));
    assert_eq!(
        entries.values().filter(|e| e.who.1 == "agent").count(),
        MAX_SESSIONS_PER_SUBJECT
    );
    assert!(!entries.contains_key(&agent[0]));
    assert!(entries.contains_key(agent.last().unwrap()));
}

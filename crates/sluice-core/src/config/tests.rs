use super::*;

const MINIMAL: &str = r#"
[gateway]
state_dir = "/tmp/x"

[listen]
postgres = "127.0.0.1:15432"

[[connections]]
name = "appdb"
kind = "postgres"
upstream = "127.0.0.1:5432"
database = "app"
user = "app"
password = { env = "APPDB_PASSWORD" }
allow_groups = ["agents"]
"#;

#[test]
fn minimal_config_parses() {
    let c = Config::from_toml_str(MINIMAL, "t.toml").unwrap();
    assert_eq!(c.connections[0].name, "appdb");
    // The kind's own keys are kept for its crate, secrets found by shape.
    assert_eq!(c.connections[0].settings["database"].as_str(), Some("app"));
    assert_eq!(
        c.connections[0].secret_references(),
        [Secret::Env("APPDB_PASSWORD".into())]
    );
    assert_eq!(c.auth.token_max_ttl.0, Duration::from_secs(8 * 3600));
    // Sessions run pinned unless the operator asks for the shared runtime.
    assert_eq!(c.gateway.session_scheduling, SessionScheduling::Pinned);
    let shared = MINIMAL.replace("[gateway]", "[gateway]\nsession_scheduling = \"shared\"");
    let c = Config::from_toml_str(&shared, "t.toml").unwrap();
    assert_eq!(c.gateway.session_scheduling, SessionScheduling::Shared);
}

/// A kind's validator as a protocol crate writes one: typed keys, the
/// error naming the key.
fn postgres_like() -> crate::gateway::ConnectionKinds {
    let mut kinds = crate::gateway::ConnectionKinds::default();
    kinds.add(
        ConnectionKind::Postgres,
        &["database", "user", "password"],
        std::sync::Arc::new(|c: &ConnectionConfig| {
            let s = c.settings_for(&["database", "user", "password"])?;
            s.require::<String>("database", "a postgres connection needs `database`")?;
            s.require::<Secret>("password", "a postgres connection needs `password`")?;
            Ok(())
        }),
    );
    kinds
}

fn kind_error(text: &str) -> String {
    let config = Config::from_toml_str(text, "t.toml").unwrap();
    postgres_like().check(&config).unwrap_err().to_string()
}

#[test]
fn inline_secret_is_refused_with_file_key_and_line() {
    let text = MINIMAL.replace("{ env = \"APPDB_PASSWORD\" }", "\"hunter2\"");
    let err = kind_error(&text);
    assert!(err.contains("t.toml:14: connections.0.password:"), "{err}");
    assert!(err.contains("inline secrets are not allowed"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
fn a_kinds_unknown_key_is_named_with_its_line() {
    let text = MINIMAL.replace("user = \"app\"\n", "user = \"app\"\nusr = \"x\"\n");
    let err = kind_error(&text);
    assert!(err.contains("t.toml:14: connections.0.usr:"), "{err}");
    assert!(
        err.contains("unknown key for a postgres connection"),
        "{err}"
    );
}

#[test]
fn unknown_key_is_named() {
    let text = format!("{MINIMAL}\n[gateway2]\nx = 1\n");
    let err = Config::from_toml_str(&text, "t.toml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("gateway2"), "{err}");
}

#[test]
fn missing_field_for_kind_names_the_connection() {
    let text = MINIMAL.replace("database = \"app\"\n", "");
    let err = kind_error(&text);
    assert!(err.contains("connections.0.database"), "{err}");
    assert!(err.contains("t.toml:8"), "{err}");
}

#[test]
fn bad_duration_is_explained() {
    let text = format!("{MINIMAL}\n[auth]\ntoken_max_ttl = \"forever\"\n");
    let err = Config::from_toml_str(&text, "t.toml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("auth.token_max_ttl"), "{err}");
    assert!(err.contains("invalid duration"), "{err}");
}

#[test]
fn locate_key_walks_array_tables() {
    let text = "[[connections]]\nname = \"a\"\n\n[[connections]]\nname = \"b\"\nkind = \"x\"\n";
    assert_eq!(locate_key(text, "connections.1.kind"), Some(6));
    assert_eq!(locate_key(text, "connections.0.name"), Some(2));
    assert_eq!(locate_key(text, "connections.1.missing"), Some(4));
}

#[test]
fn secret_resolution_never_shows_value() {
    let s = Secret::Env("SLUICE_TEST_SURELY_UNSET_VAR".into());
    let err = s.resolve().unwrap_err().to_string();
    assert!(err.contains("SLUICE_TEST_SURELY_UNSET_VAR"));
    assert_eq!(format!("{s:?}"), "Secret(env SLUICE_TEST_SURELY_UNSET_VAR)");
}

#[test]
fn one_oidc_table_or_several() {
    let one = format!(
        "{MINIMAL}\n[auth.oidc]\nissuer = \"https://idp.example.com\"\naudience = \"sluice\"\ngroups_claim = \"realm_access.roles\"\n"
    );
    let c = Config::from_toml_str(&one, "t.toml").unwrap();
    assert_eq!(c.auth.oidc.len(), 1);
    assert_eq!(c.auth.oidc[0].audience, vec!["sluice".to_string()]);
    assert_eq!(c.auth.oidc[0].groups_claim, "realm_access.roles");
    assert_eq!(c.auth.oidc[0].identity_claim, "sub");
    assert_eq!(
        c.auth.oidc[0].algorithms,
        ["RS256", "PS256", "ES256", "EdDSA"]
    );

    let many = format!(
        "{MINIMAL}\n[[auth.oidc]]\nissuer = \"https://a.example.com\"\naudience = [\"sluice\", \"api\"]\n\n[[auth.oidc]]\nissuer = \"http://127.0.0.1:9000\"\naudience = \"sluice\"\nidentity_claim = \"client_id\"\n\n[[auth.group_map]]\nidp_group = \"eng-*\"\ngroups = [\"agents\"]\nissuer = \"https://a.example.com\"\n"
    );
    let c = Config::from_toml_str(&many, "t.toml").unwrap();
    assert_eq!(c.auth.oidc.len(), 2);
    assert_eq!(c.auth.oidc[0].audience.len(), 2);
    assert_eq!(c.auth.group_map[0].groups, ["agents"]);
}

#[test]
fn oidc_mistakes_are_named() {
    let with = |extra: &str| {
        Config::from_toml_str(&format!("{MINIMAL}\n{extra}"), "t.toml")
            .unwrap_err()
            .to_string()
    };
    let err = with("[auth.oidc]\nissuer = \"http://idp.example.com\"\naudience = \"sluice\"\n");
    assert!(
        err.contains("auth.oidc.issuer") && err.contains("https://"),
        "{err}"
    );
    let err = with(
        "[auth.oidc]\nissuer = \"https://idp\"\naudience = \"sluice\"\nalgorithms = [\"HS256\"]\n",
    );
    assert!(
        err.contains("auth.oidc.algorithms") && err.contains("HS256"),
        "{err}"
    );
    let err = with(
        "[auth.oidc]\nissuer = \"https://idp\"\naudience = \"sluice\"\nalgorithms = [\"none\"]\n",
    );
    assert!(err.contains("\"none\" is not allowed"), "{err}");
    let err = with("[auth.oidc]\nissuer = \"https://idp\"\n");
    assert!(err.contains("audience"), "{err}");
    let err =
        with("[auth.oidc]\nissuer = \"https://idp\"\naudience = \"s\"\ngroups_claim = \"a..b\"\n");
    assert!(err.contains("auth.oidc.groups_claim"), "{err}");
    let err = with(
        "[[auth.group_map]]\nidp_group = \"x\"\ngroups = [\"a\"]\nissuer = \"https://nope\"\n",
    );
    assert!(err.contains("auth.group_map.0.issuer"), "{err}");
    let err = with("[auth.oidc]\nissuer = \"https://idp\"\naudience = \"s\"\nunknown = 1\n");
    assert!(err.contains("unknown"), "{err}");
}

#[test]
fn loopback_http_only() {
    assert!(is_loopback_http("http://127.0.0.1:3000"));
    assert!(is_loopback_http("http://localhost:3000/realms/x"));
    assert!(is_loopback_http("http://[::1]:8080"));
    assert!(!is_loopback_http("http://127.0.0.1.evil.com"));
    assert!(!is_loopback_http("http://localhost.evil.com/"));
    assert!(!is_loopback_http("https://127.0.0.1"));
    assert!(!is_loopback_http("http://10.0.0.1"));
}

// Each kind's own checks (postgres, ssh, http, kubernetes, mcp) are tested
// in the crate that serves it (`settings.rs` there).

#[test]
fn every_kind_is_registered_and_refuses_keys_it_does_not_take() {
    let kv = |extra: &str| {
        format!(
            "[[connections]]\nname = \"cache\"\nkind = \"kv\"\nupstream = \"127.0.0.1:7000\"\n{extra}\n"
        )
    };
    let mut kinds = crate::gateway::ConnectionKinds::default();
    kinds.add(
        ConnectionKind::of(crate::model::Protocol::new("kv")),
        &[],
        std::sync::Arc::new(|_: &ConnectionConfig| Ok(())),
    );
    let check = |text: &str| {
        let config = Config::from_toml_str(text, "t.toml").unwrap();
        kinds.check(&config).map_err(|e| e.to_string())
    };
    check(&kv("default_action = \"deny\"")).unwrap();
    // A misspelt core key is not silently a setting of the kind.
    let err = check(&kv("default_acton = \"deny\"")).unwrap_err();
    assert!(
        err.contains("t.toml:5: connections.0.default_acton"),
        "{err}"
    );
    // A built-in kind no crate of this assembly registered is refused.
    let err = check(MINIMAL).unwrap_err();
    assert!(
        err.contains("unknown connection kind \"postgres\""),
        "{err}"
    );
    assert!(err.contains("this gateway serves kv"), "{err}");
}

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
    assert_eq!(
        c.connections[0].password,
        Some(Secret::Env("APPDB_PASSWORD".into()))
    );
    assert_eq!(c.auth.token_max_ttl.0, Duration::from_secs(8 * 3600));
}

#[test]
fn inline_secret_is_refused_with_file_key_and_line() {
    let text = MINIMAL.replace("{ env = \"APPDB_PASSWORD\" }", "\"hunter2\"");
    let err = Config::from_toml_str(&text, "t.toml")
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("t.toml:14: connections.0.password:"),
        "{err}"
    );
    assert!(err.contains("inline secrets are not allowed"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
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
    let err = Config::from_toml_str(&text, "t.toml")
        .unwrap_err()
        .to_string();
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
fn ssh_connections_need_a_key_line_and_host_port() {
    let conn = |upstream: &str, host_key: &str| {
        format!(
            "[[connections]]\nname = \"web\"\nkind = \"ssh\"\nupstream = \"{upstream}\"\nuser = \"u\"\n\
             private_key = {{ file = \"/k\" }}\nhost_key = \"{host_key}\"\nallow_groups = [\"a\"]\n"
        )
    };
    let good = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ";
    Config::from_toml_str(&conn("10.0.0.1:22", good), "t.toml").unwrap();
    Config::from_toml_str(&conn("web1:22", &format!("web1 {good} comment")), "t.toml").unwrap();
    let e = Config::from_toml_str(&conn("10.0.0.1:22", "AAAA"), "t.toml").unwrap_err();
    assert!(e.to_string().contains("host_key"), "{e}");
    let e = Config::from_toml_str(&conn("10.0.0.1", good), "t.toml").unwrap_err();
    assert!(e.to_string().contains("upstream"), "{e}");
}

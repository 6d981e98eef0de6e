//! SIGHUP reloads the configuration without dropping live sessions: new rules
//! apply to them at once, and sessions of a removed connection end with a reason.

use sluice_e2e::raw::RawConn;
use sluice_e2e::{ok, Env};
use std::time::Duration;

const OTHER_CONNECTION: &str = r#"
[[connections]]
name = "otherdb"
kind = "postgres"
upstream = "{PG}"
database = "app"
user = "app"
password = { env = "APPDB_PASSWORD" }
allow_groups = ["agents"]
"#;

const NO_WRITES: &str = r#"
[[rules]]
name = "no-writes-after-reload"
match = { sql = ["write"] }
action = "deny"
message = "Writes are off while we investigate."
"#;

#[test]
fn sighup_applies_new_rules_to_live_sessions_and_ends_removed_connections() {
    let mut env = Env::builder().extra_toml(OTHER_CONNECTION).start();
    let token = env.agent_token();
    let mut stays = RawConn::login(env.addr(), "agent", "appdb", &token).unwrap();
    let mut goes = RawConn::login(env.addr(), "agent", "otherdb", &token).unwrap();
    let before = stays.query("update customers set name = name where id = 1");
    assert!(sluice_e2e::raw::errors(&before).is_empty(), "{before:?}");

    // A config that does not compile changes nothing.
    let line = env.reload_gateway(
        "[[rules]]\nname = \"broken\"\nmatch = { sql = [\"no-such-class\"] }\naction = \"deny\"\n",
    );
    assert!(line.contains("Configuration not reloaded"), "{line}");
    let still = goes.query("select 1");
    assert_eq!(
        sluice_e2e::raw::rows(&still),
        vec![vec![Some("1".to_string())]]
    );

    // otherdb removed, a deny rule added.
    let line = env.reload_gateway(NO_WRITES);
    assert!(
        line.contains("Configuration reloaded.") && line.contains("sessions_ended=1"),
        "{line}"
    );

    let closed = goes.read_to_close(Duration::from_secs(10));
    let errors = closed.errors();
    assert_eq!(errors.len(), 1, "{:?}", closed.messages);
    assert_eq!(errors[0].code(), "57P01", "{}", errors[0]);
    assert!(
        errors[0].message().contains("\"otherdb\" was removed"),
        "{}",
        errors[0]
    );

    // The session on appdb lives on, judged by the new rule.
    let after = stays.query("update customers set name = name where id = 1");
    let refused = sluice_e2e::raw::errors(&after);
    assert_eq!(refused.len(), 1, "{after:?}");
    assert_eq!(refused[0].code(), "42501");
    assert!(
        refused[0].message().contains("no-writes-after-reload"),
        "{}",
        refused[0]
    );
    let read = stays.query("select count(*) > 0 from customers");
    assert_eq!(
        sluice_e2e::raw::rows(&read),
        vec![vec![Some("t".to_string())]]
    );

    // New sessions see the new connection list.
    let refused = env.psql(&env.url("agent", &token, "otherdb"), &["-c", "select 1"]);
    assert!(!refused.status.success());
    assert!(
        sluice_e2e::stderr(&refused).contains("no connection named \"otherdb\""),
        "{}",
        sluice_e2e::stderr(&refused)
    );
    ok(&env.psql(&env.agent_url(), &["-c", "select 1"]));
    env.assert_gateway_alive();
}

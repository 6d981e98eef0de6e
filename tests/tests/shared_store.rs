//! Several gateway nodes on one PostgreSQL store: sessions, replay and verification seen
//! from either node; a node killed with a session open has it ended by the survivor and
//! rejoins; the store down fails sessions closed and service resumes; `sluice store
//! migrate` copies an embedded node's history, verified. The oracle (the target's statement
//! log against the store's records, read with psql) holds for every test.

// Tests fail by panicking, helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sluice_e2e::*;
use std::time::Duration;

fn sessions(out: std::process::Output) -> Vec<serde_json::Value> {
    let text = ok(&out);
    serde_json::from_str::<Vec<serde_json::Value>>(&text)
        .unwrap_or_else(|e| panic!("sessions list --json: {e}\n{text}"))
}

fn on_node<'a>(list: &'a [serde_json::Value], node: &str) -> Vec<&'a serde_json::Value> {
    list.iter().filter(|s| s["node"] == node).collect()
}

/// Waits until `reader`'s `sessions list` shows a session open on `node` that has run one
/// command (its record is in the store); returns its id.
fn running_on(reader: &OtherNode, node: &str) -> String {
    wait_until(
        Duration::from_secs(15),
        &format!("a running session on node {node}"),
        || {
            let list = sessions(reader.sluice(&["sessions", "list", "--json"]));
            on_node(&list, node)
                .into_iter()
                .find(|s| s["ended_at_ms"].is_null() && s["commands"] == 1)
                .map(|s| s["id"].as_str().unwrap().to_string())
        },
    )
}

#[test]
fn two_nodes_share_sessions_replay_and_verification_and_a_killed_node_is_ended_by_the_other() {
    let mut a = Env::quickstart().shared_store("a", false).start();
    let b = a.start_other_node("b");
    let token = a.agent_token();
    let url_a = a.url("agent-1", &token, "appdb");
    let url_b = b.url("agent-1", &token, "appdb");
    ok(&a.psql(&url_a, &["-c", "select count(*) from customers"]));
    assert!(ok(&a.psql(&url_b, &["-c", "select 42 as through_b"])).contains("42"));

    // Either node lists both nodes' sessions, and replays the other's.
    for out in [
        a.sluice(&["sessions", "list", "--json"]),
        b.sluice(&["sessions", "list", "--json"]),
    ] {
        let list = sessions(out);
        assert_eq!(on_node(&list, "a").len(), 1, "{list:?}");
        assert_eq!(on_node(&list, "b").len(), 1, "{list:?}");
    }
    let list = sessions(b.sluice(&["sessions", "list", "--json"]));
    let on_a = on_node(&list, "a")[0]["id"].as_str().unwrap().to_string();
    assert!(ok(&b.sluice(&["replay", &on_a])).contains("select count(*) from customers"));

    // Node a dies (SIGKILL) with a statement running: the statement's record was committed
    // before it was forwarded, and node b ends the session with the reason.
    let mut held = a
        .psql_command(&url_a, &["-c", "select pg_sleep(60) as held"])
        .spawn()
        .expect("psql");
    running_on(&b, "a");
    a.kill_gateway();
    let ended = wait_until(
        Duration::from_secs(20),
        "node b ending node a's session",
        || {
            let list = sessions(b.sluice(&["sessions", "list", "--json"]));
            let open_on_a = on_node(&list, "a")
                .into_iter()
                .any(|s| s["ended_at_ms"].is_null());
            (!open_on_a).then_some(list)
        },
    );
    let _ = held.kill();
    let _ = held.wait();
    let reasons: Vec<&str> = on_node(&ended, "a")
        .iter()
        .filter_map(|s| s["end_reason"].as_str())
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("gateway node a stopped") && r.contains("by node b")),
        "{reasons:?}"
    );
    let replay = ok(&b.sluice(&["replay", on_node(&ended, "a")[1]["id"].as_str().unwrap()]));
    assert!(replay.contains("pg_sleep(60)"), "{replay}");

    // Node a rejoins under its id and serves again.
    a.start_gateway();
    ok(&a.psql(&url_a, &["-c", "select 1 as back"]));
    let verified = ok(&b.sluice(&["audit", "verify"]));
    assert!(verified.contains("all chains intact"), "{verified}");

    // A record changed in the store is named by `audit verify` on either node.
    let tamper = "UPDATE sluice_records SET body = replace(body, 'select 42', 'select 43')
                  WHERE body LIKE '%select 42 as through_b%'";
    a.pg.psql("sluice_store", tamper).unwrap();
    let out = a.sluice(&["audit", "verify"]);
    let err = failed(&out);
    assert!(err.contains("broken chain") && err.contains('#'), "{err}");
    let undo = "UPDATE sluice_records SET body = replace(body, 'select 43', 'select 42')
                WHERE body LIKE '%select 43 as through_b%'";
    a.pg.psql("sluice_store", undo).unwrap();
}

/// The store on a server of its own, stopped: new sessions are refused with a message that
/// says why, nothing runs unjudged (the oracle), and service resumes when it returns.
#[test]
fn with_the_store_down_sessions_fail_closed_and_service_resumes() {
    let mut env = Env::quickstart().shared_store("solo", true).start();
    let url = env.agent_url();
    ok(&env.psql(&url, &["-c", "select 1 as before"]));
    env.store_pg.as_mut().unwrap().stop();
    let out = env.psql(&url, &["-c", "select 2 as during"]);
    let err = failed(&out);
    assert!(err.contains("audit store unavailable"), "{err}");
    env.assert_gateway_alive();
    let ready = env.sluice(&["sessions", "list"]);
    assert!(!ready.status.success());
    env.store_pg.as_mut().unwrap().start_again().unwrap();
    wait_until(Duration::from_secs(20), "sessions again", || {
        let out = env.psql(&url, &["-c", "select 3 as after"]);
        out.status.success().then_some(())
    });
    let texts: Vec<String> = env.oracle().judged.iter().map(|j| j.text.clone()).collect();
    assert!(
        texts.iter().any(|t| t.contains("before")) && texts.iter().any(|t| t.contains("after"))
    );
    assert!(!texts.iter().any(|t| t.contains("during")), "{texts:?}");
}

/// An embedded node's history moves into a PostgreSQL store, chain by chain; a second run
/// copies nothing twice, and the copy verifies and names a changed record.
#[test]
fn store_migrate_copies_an_embedded_history_and_the_copy_verifies() {
    let mut env = Env::quickstart().start();
    let url = env.agent_url();
    ok(&env.psql(&url, &["-c", "select count(*) from customers"]));
    ok(&env.psql(&url, &["-c", "select 7 as seven"]));
    env.wait_sessions_ended(2);
    env.stop_gateway();
    let store = SharedStore::create(&env.pg, "migrated");
    let config = std::fs::read_to_string(&env.config_path).unwrap().replacen(
        "[gateway]\n",
        &format!("[gateway]\n{}", store.gateway_toml()),
        1,
    );
    let shared = env.dir.path().join("shared.toml");
    std::fs::write(&shared, config).unwrap();
    let password = [(
        "SLUICE_STORE_PASSWORD".to_string(),
        env.pg.superuser_password.clone(),
    )];
    let out = ok(&sluice_cli(&shared, &password, &["store", "migrate"]));
    assert!(out.contains("2 sessions copied, 0 already there"), "{out}");
    let again = ok(&sluice_cli(&shared, &password, &["store", "migrate"]));
    assert!(
        again.contains("0 sessions copied, 2 already there"),
        "{again}"
    );
    let list = sessions(sluice_cli(
        &shared,
        &password,
        &["sessions", "list", "--json"],
    ));
    assert_eq!(list.len(), 2);
    assert!(list
        .iter()
        .all(|s| s["node"] == "migrated" && s["commands"] == 1));
    let verified = ok(&sluice_cli(&shared, &password, &["audit", "verify"]));
    assert!(
        verified.contains("2 sessions") && verified.contains("all chains intact"),
        "{verified}"
    );
    env.pg
        .psql(
            "sluice_store",
            "UPDATE sluice_records SET at_ms = at_ms + 1 WHERE body LIKE '%select 7 as seven%'",
        )
        .unwrap();
    let err = failed(&sluice_cli(&shared, &password, &["audit", "verify"]));
    assert!(err.contains("broken chain") && err.contains("#2"), "{err}");
    env.pg
        .psql(
            "sluice_store",
            "UPDATE sluice_records SET at_ms = at_ms - 1 WHERE body LIKE '%select 7 as seven%'",
        )
        .unwrap();
}

/// Waits for a psql child to exit; returns its stderr and how long it took.
fn exit_of(child: std::process::Child) -> (String, Duration) {
    let started = std::time::Instant::now();
    let out = wait_output(child, Duration::from_secs(20), "psql");
    (stderr(&out), started.elapsed())
}

/// A revocation, or an operator ending a session, through node b's API ends the session
/// running on node a within about a second, and node a refuses the revoked token after.
#[test]
fn a_revocation_or_a_kill_through_one_node_ends_the_session_on_the_other() {
    let a = Env::quickstart().shared_store("a", false).start();
    let b = a.start_other_node("b");
    let running = |url: &str| {
        a.psql_command(url, &["-c", "select pg_sleep(60) as held"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("psql")
    };

    let token = a.agent_token();
    let url = a.url("agent-1", &token, "appdb");
    let held = running(&url);
    running_on(&b, "a");
    ok(&b.sluice(&["token", "revoke", &token, "--reason", "leaked"]));
    let (err, took) = exit_of(held);
    assert!(err.contains("revoked"), "{err}");
    assert!(took < Duration::from_secs(3), "ended after {took:?}");
    let refused = failed(&a.psql(&url, &["-c", "select 1"]));
    assert!(refused.contains("revoked"), "{refused}");

    let token = a.agent_token();
    let url = a.url("agent-1", &token, "appdb");
    let held = running(&url);
    let id = running_on(&b, "a");
    ok(&b.sluice(&[
        "sessions", "kill", &id, "--reason", "runaway", "--token", &token,
    ]));
    let (err, took) = exit_of(held);
    assert!(err.contains("runaway"), "{err}");
    assert!(took < Duration::from_secs(3), "ended after {took:?}");
    // Someone else's session is not theirs to end, on any node.
    let other = a.token("agent-2", &["agents"], "10m");
    let held = running(&url);
    let id = running_on(&b, "a");
    let denied = failed(&b.sluice(&["sessions", "kill", &id, "--token", &other]));
    assert!(denied.contains("no live session"), "{denied}");
    ok(&b.sluice(&["sessions", "kill", &id, "--token", &token]));
    exit_of(held);
}

/// A customer write held on node a (the quickstart's review rule) is listed by node b's API,
/// approved through node b, and completes on node a's connection; the decision is in the
/// requester's chain. Node b refuses what node a would (the requester's own approval).
#[test]
fn a_statement_held_on_one_node_is_approved_through_the_other_and_completes() {
    let a = Env::quickstart().shared_store("a", false).start();
    let b = a.start_other_node("b");
    let url = a.url("agent-1", &a.agent_token(), "appdb");
    let dba = a.token("dana", &["dba"], "10m");
    let mut psql = a.psql_command(
        &url,
        &[
            "-c",
            "update customers set name = 'Approved Name' where id = 1 returning name",
        ],
    );
    let client =
        std::thread::spawn(move || run_with_timeout(&mut psql, None, Duration::from_secs(60)));
    let request = wait_until(
        Duration::from_secs(20),
        "the request listed by node b",
        || {
            let out = b.sluice(&["approvals", "list", "--json", "--token", &dba]);
            let list: Vec<serde_json::Value> = serde_json::from_str(&stdout(&out)).ok()?;
            list.into_iter().next()
        },
    );
    let id = request["id"].as_str().unwrap().to_string();
    assert_eq!(request["subject"], "agent-1");
    let own = a.token("agent-1", &["agents", "dba"], "10m");
    let refused = failed(&b.sluice(&["approvals", "approve", &id, "--token", &own]));
    assert!(refused.contains("own request"), "{refused}");
    assert_ne!(
        a.direct_sql("app", "select name from customers where id = 1")
            .trim(),
        "Approved Name"
    );

    ok(&b.sluice(&["approvals", "approve", &id, "--token", &dba]));
    let out = client.join().unwrap();
    assert!(ok(&out).contains("Approved Name"));
    assert_eq!(
        a.direct_sql("app", "select name from customers where id = 1")
            .trim(),
        "Approved Name"
    );
    let session = sessions(b.sluice(&["sessions", "list", "--json"]))
        .into_iter()
        .find(|s| s["node"] == "a" && s["commands"] == 1)
        .unwrap();
    let replay = ok(&b.sluice(&["replay", session["id"].as_str().unwrap()]));
    assert!(replay.contains("dana"), "{replay}");
}

/// Ended sessions' recordings are written to object storage (a real S3-compatible server);
/// `replay` on the other node reads the object back, and `audit verify` names an object
/// that is missing or altered.
#[test]
fn recordings_in_object_storage_are_read_back_and_checked() {
    let s3 = sluice_e2e::s3::S3Server::start();
    s3.create_bucket("sluice-recordings");
    let a = Env::quickstart()
        .shared_store("a", false)
        .recordings(&s3.endpoint())
        .start();
    let b = a.start_other_node("b");
    ok(&a.psql(&a.agent_url(), &["-c", "select 'kept in s3' as recorded"]));
    let id = a.wait_sessions_ended(1)[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let prefix = format!("e2e/sessions/{id}-");
    let key = sluice_e2e::http::wait_until_or(Duration::from_secs(20), || {
        s3.keys("sluice-recordings")
            .into_iter()
            .find(|k| k.starts_with(&prefix))
    });
    let key = key.unwrap_or_else(|| panic!("no recording {prefix}…; log:\n{}", a.gateway_log()));
    let object = stdout(&s3.run(&["get", "sluice-recordings", &key], None));
    assert!(
        object.contains("kept in s3") && object.lines().count() >= 3,
        "{object}"
    );
    let verified = ok(&b.sluice(&["audit", "verify"]));
    assert!(verified.contains("all chains intact"), "{verified}");

    // Replay reads the object: the store's copy of the statement changed, the replay not.
    let store_db = "sluice_store";
    let change = |from: &str, to: &str| {
        a.pg.psql(
            store_db,
            &format!("UPDATE sluice_records SET body = replace(body, '{from}', '{to}') WHERE session_id = '{id}'"),
        )
        .unwrap();
    };
    change("kept in s3", "kept in pg");
    assert!(ok(&b.sluice(&["replay", &id])).contains("kept in s3"));
    change("kept in pg", "kept in s3");

    // An altered object, then a missing one, is named by audit verify.
    let altered = object.replace("kept in s3", "kept in s4");
    ok(&s3.run(
        &["put", "sluice-recordings", &key],
        Some(altered.as_bytes()),
    ));
    let err = failed(&b.sluice(&["audit", "verify"]));
    assert!(err.contains(&id) && err.contains("altered"), "{err}");
    ok(&s3.run(&["delete", "sluice-recordings", &key], None));
    let err = failed(&a.sluice(&["audit", "verify"]));
    assert!(err.contains(&id) && err.contains("missing"), "{err}");
    ok(&s3.run(&["put", "sluice-recordings", &key], Some(object.as_bytes())));
    assert!(ok(&a.sluice(&["audit", "verify"])).contains("all chains intact"));
}

/// Node a killed (SIGKILL) under load from pgbench: every statement the target executed
/// through it has its record in the store (the oracle: the server's statement log against
/// the store's records, read with psql), node b ends all of a's sessions, and a rejoins.
#[test]
fn a_node_killed_under_load_loses_no_acknowledged_record() {
    let mut a = Env::quickstart().shared_store("a", false).start();
    let b = a.start_other_node("b");
    let script = a.dir.path().join("load.sql");
    std::fs::write(&script, "select count(*) from customers where id > 0;\n").unwrap();
    let mut bench = a.pg_tool("pgbench");
    bench
        .args(["-n", "-c", "4", "-T", "20", "-M", "extended", "-f"])
        .arg(&script)
        .arg(a.agent_url())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut bench = bench.spawn().expect("pgbench");
    wait_until(Duration::from_secs(20), "load on node a", || {
        let list = sessions(b.sluice(&["sessions", "list", "--json"]));
        let busy = on_node(&list, "a")
            .iter()
            .filter(|s| s["commands"].as_u64().unwrap_or(0) > 20)
            .count();
        (busy >= 4).then_some(())
    });
    a.kill_gateway();
    let _ = bench.wait();
    let ended = wait_until(
        Duration::from_secs(20),
        "node b ending a's sessions",
        || {
            let list = sessions(b.sluice(&["sessions", "list", "--json"]));
            let on_a = on_node(&list, "a").len();
            let open = on_node(&list, "a")
                .iter()
                .filter(|s| s["ended_at_ms"].is_null())
                .count();
            (on_a >= 4 && open == 0).then_some(on_a)
        },
    );
    assert!(ended >= 4);
    let report = a.assert_oracle();
    assert!(
        report.judged.len() > 80,
        "{} statements judged",
        report.judged.len()
    );
    a.start_gateway();
    ok(&a.psql(&a.agent_url(), &["-c", "select 1 as rejoined"]));
    assert!(ok(&b.sluice(&["audit", "verify"])).contains("all chains intact"));
}

/// A terminal session recorded on an SSH node is listed and replayed (as asciicast) by
/// another node of the store.
#[test]
fn a_terminal_session_recorded_on_one_node_replays_on_another() {
    sluice_e2e::sshd::ensure_test_user();
    let a = Env::quickstart().shared_store("a", false).start();
    let mut store = a.shared_store.clone().unwrap();
    store.node = "ssh-b".into();
    let b = sluice_e2e::sshd::SshEnv::start_on_store("", &store, &a.pg.superuser_password);
    let out = b.ssh(&b.agent_token(), &["-tt", "echo terminal-on-b"]);
    assert!(stdout(&out).contains("terminal-on-b"), "{out:?}");
    let id = wait_until(
        Duration::from_secs(20),
        "the ssh session on node a's list",
        || {
            let list = sessions(a.sluice(&["sessions", "list", "--json"]));
            on_node(&list, "ssh-b")
                .into_iter()
                .find(|s| !s["ended_at_ms"].is_null())
                .map(|s| s["id"].as_str().unwrap().to_string())
        },
    );
    let cast = ok(&a.sluice(&["replay", "--format", "asciicast", &id]));
    assert!(
        cast.lines().next().unwrap_or("").contains("\"version\":2"),
        "{cast}"
    );
    assert!(cast.contains("terminal-on-b"), "{cast}");
}

/// A hostile client speaking the raw protocol to a node of a shared store pipelines
/// allowed, refused and multi-statement queries in one write. What the target executed
/// (its own statement log) was judged and recorded in the store first (the oracle, read
/// with psql), and what was refused did not run (the target's own catalog).
#[test]
fn a_raw_pipelining_client_runs_nothing_unrecorded_through_a_node() {
    let a = Env::quickstart().shared_store("a", false).start();
    let token = a.agent_token();
    let mut conn = sluice_e2e::raw::RawConn::login(a.addr(), "agent-1", "appdb", &token)
        .unwrap_or_else(|e| panic!("login refused: {}", e.message()));
    let queries = [
        "select count(*) from customers",
        "create table sneaky (x int)",
        "select 2; drop table customers",
        "select 3",
    ];
    let pipelined: Vec<u8> = queries
        .iter()
        .flat_map(|q| sluice_e2e::raw::query_message(q))
        .collect();
    conn.send(&pipelined).unwrap();
    let mut answers = Vec::new();
    for _ in &queries {
        answers.extend(conn.read_until_ready());
    }
    assert!(
        sluice_e2e::raw::errors(&answers).len() >= 2,
        "the DDL and the drop are refused"
    );
    let catalog = a.direct_sql(
        "app",
        "select count(*) from pg_tables where tablename in ('sneaky', 'customers')",
    );
    assert_eq!(catalog.trim(), "1", "only customers exists");
    let report = a.assert_oracle();
    assert!(report.judged.len() >= 4, "{} judged", report.judged.len());
}

//! Identity against a real OpenID provider (npm oidc-provider on loopback):
//! client-credentials tokens through psql and the operator API, group
//! mapping (flat and nested claims), key rotation, forged and misdirected
//! tokens, the IdP going down, token expiry and revocation ending live
//! sessions, token exchange, and `sluice login` + `sluice connect`.

// Tests fail by panicking, helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sluice_e2e::oidc::{approve, curl, spawn_until_url, Idp};
use sluice_e2e::*;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A gateway that trusts `idp` (flat `groups` claim, `sluice-agents` → `agents`),
/// with the operator API on and `ops` as admins, and a second connection `otherdb`.
fn env_for(idp: &Idp, provider_extra: &str, group_map: &str) -> (Env, u16) {
    let api = sluice_sandbox::free_port();
    let env = Env::builder()
        .gateway_env("SLUICE_LISTEN__API", &format!("127.0.0.1:{api}"))
        .gateway_env("SLUICE_AUTH__ADMIN_GROUPS", "[\"ops\"]")
        .extra_toml(
            "[[connections]]\nname = \"otherdb\"\nkind = \"postgres\"\nupstream = \"{PG}\"\n\
             database = \"app\"\nuser = \"app\"\npassword = { env = \"APPDB_PASSWORD\" }\n\
             allow_groups = [\"agents\"]\n",
        )
        .extra_toml(&idp.toml(&format!("clock_skew = \"1s\"\n{provider_extra}")))
        .extra_toml(group_map)
        .start();
    (env, api)
}

const FLAT_MAP: &str = "[[auth.group_map]]\nidp_group = \"sluice-agents\"\ngroups = [\"agents\"]\n";

fn select_one(env: &Env, user: &str, token: &str, connection: &str) -> std::process::Output {
    env.psql(&env.url(user, token, connection), &["-w", "-c", "select 1"])
}

#[track_caller]
fn assert_psql_refused(env: &Env, token: &str, expected: &str) {
    let se = failed(&select_one(env, "agent", token, "appdb"));
    assert!(
        se.contains(expected),
        "expected {expected:?} in the refusal:\n{se}"
    );
}

/// Replaces the payload of a JWT, keeping its header and signature.
fn with_payload(token: &str, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let mut payload: serde_json::Value =
        serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();
    edit(&mut payload);
    format!(
        "{}.{}.{}",
        parts[0],
        B64.encode(serde_json::to_vec(&payload).unwrap()),
        parts[2]
    )
}

fn header_of(token: &str) -> serde_json::Value {
    serde_json::from_slice(&B64.decode(token.split('.').next().unwrap()).unwrap()).unwrap()
}

fn payload_of(token: &str) -> serde_json::Value {
    serde_json::from_slice(&B64.decode(token.split('.').nth(1).unwrap()).unwrap()).unwrap()
}

/// Signs `header`.`payload` with HS256 under `key`.
fn hs256(header: &serde_json::Value, payload: &serde_json::Value, key: &[u8]) -> String {
    let signing_input = format!(
        "{}.{}",
        B64.encode(serde_json::to_vec(header).unwrap()),
        B64.encode(serde_json::to_vec(payload).unwrap())
    );
    let mut mac = <Hmac<sha2_011::Sha256> as KeyInit>::new_from_slice(key).unwrap();
    mac.update(signing_input.as_bytes());
    format!(
        "{signing_input}.{}",
        B64.encode(mac.finalize().into_bytes())
    )
}

/// `curl` against the operator API with a bearer token; returns (status, body).
fn api(
    env: &Env,
    api: u16,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "20", "-o", "-", "-w", "\n%{http_code}"])
        .arg("--cacert")
        .arg(env.ca_path())
        .args(["-X", method, "-H"])
        .arg(format!("Authorization: Bearer {token}"));
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "--data", b]);
    }
    cmd.arg(format!("https://127.0.0.1:{api}{path}"));
    let out = ok(&run_with_timeout(&mut cmd, None, COMMAND_TIMEOUT));
    let (body, status) = out.trim_end().rsplit_once('\n').unwrap();
    (status.parse().unwrap(), body.to_string())
}

/// A psql running `select pg_sleep(60)` in the background.
fn long_psql(env: &Env, token: &str) -> Child {
    let mut cmd = env.psql_command(
        &env.url("agent", token, "appdb"),
        &["-w", "-c", "select pg_sleep(60)"],
    );
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Backends running the long statement (earlier ones may still sleep
/// upstream after their session ended).
fn sleeping(env: &Env) -> usize {
    env.direct_sql(
        "postgres",
        "select count(*) from pg_stat_activity where query = 'select pg_sleep(60)'",
    )
    .trim()
    .parse()
    .unwrap()
}

/// Starts the long psql and waits until its statement runs upstream.
fn running_psql(env: &Env, token: &str) -> Child {
    let before = sleeping(env);
    let child = long_psql(env, token);
    wait_until(Duration::from_secs(20), "pg_sleep running upstream", || {
        (sleeping(env) > before).then_some(())
    });
    child
}

/// Waits for a backgrounded psql to end; returns its stderr and how long it took.
fn ended_within(child: Child, limit: Duration) -> (String, Duration) {
    let start = Instant::now();
    let out = wait_output(child, limit + Duration::from_secs(5), "psql");
    let took = start.elapsed();
    assert!(
        !out.status.success(),
        "psql succeeded instead of being ended"
    );
    assert!(
        took <= limit,
        "the session took {took:?} to end (limit {limit:?})"
    );
    (stderr(&out), took)
}

#[test]
fn client_credentials_open_psql_and_the_api_and_exchange_narrows_to_one_connection() {
    let idp = Idp::start();
    let (env, api_port) = env_for(&idp, "", FLAT_MAP);
    let token = idp.client_token("agent", "urn:sluice");
    assert_eq!(ok(&select_one(&env, "agent", &token, "appdb")).trim(), "1");
    assert_eq!(
        ok(&select_one(&env, "agent", &token, "otherdb")).trim(),
        "1"
    );

    // The same token on the operator API (curl): the caller sees its own sessions.
    let (status, body) = api(&env, api_port, &token, "GET", "/api/v1/sessions", None);
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with('['), "{body}");

    // Exchange: a gateway token for appdb only, 5 minutes.
    let (status, body) = api(
        &env,
        api_port,
        &token,
        "POST",
        "/api/v1/token/exchange",
        Some(r#"{"connection": "appdb", "ttl": "5m"}"#),
    );
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        answer["issued_token_type"],
        "urn:ietf:params:oauth:token-type:jwt"
    );
    assert!(answer["expires_in"].as_u64().unwrap() <= 300);
    let narrowed = answer["access_token"].as_str().unwrap().to_string();
    let claims = payload_of(&narrowed);
    assert_eq!(claims["sub"], "agent");
    assert_eq!(claims["connections"], serde_json::json!(["appdb"]));
    assert_eq!(
        ok(&select_one(&env, "agent", &narrowed, "appdb")).trim(),
        "1"
    );
    let se = failed(&select_one(&env, "agent", &narrowed, "otherdb"));
    assert!(se.contains("exchanged for [\"appdb\"] only"), "{se}");

    // The CLI does the same; a narrowed token cannot be widened by exchanging it again.
    let out = env.sluice(&[
        "token",
        "exchange",
        "--connection",
        "appdb",
        "--ttl",
        "2m",
        "--token",
        &token,
    ]);
    let cli_narrowed = ok(&out).trim().to_string();
    assert_eq!(
        payload_of(&cli_narrowed)["connections"],
        serde_json::json!(["appdb"])
    );
    let out = env.sluice(&[
        "token",
        "exchange",
        "--connection",
        "otherdb",
        "--token",
        &narrowed,
    ]);
    let se = failed(&out);
    assert!(se.contains("narrowed to"), "{se}");

    // A client whose groups map to nothing is refused at the connection.
    let bare = idp.client_token("bare-agent", "urn:sluice");
    let se = failed(&select_one(&env, "bare-agent", &bare, "appdb"));
    assert!(se.contains("not in a group allowed"), "{se}");
}

#[test]
fn nested_groups_claim_is_mapped() {
    let idp = Idp::start();
    let (env, _) = env_for(
        &idp,
        "groups_claim = \"realm_access.roles\"\nuserinfo_fallback = false\n",
        "[[auth.group_map]]\nidp_group = \"db-readers\"\ngroups = [\"agents\"]\n",
    );
    let nested = idp.client_token("nested-agent", "urn:sluice");
    assert_eq!(
        ok(&select_one(&env, "nested-agent", &nested, "appdb")).trim(),
        "1"
    );
    // `agent` has only the flat claim, which this provider does not read.
    let flat = idp.client_token("agent", "urn:sluice");
    let se = failed(&select_one(&env, "agent", &flat, "appdb"));
    assert!(se.contains("not in a group allowed"), "{se}");
}

#[test]
fn forged_misdirected_and_expired_tokens_are_refused_clearly() {
    let idp = Idp::start();
    let other = Idp::start();
    let (env, _) = env_for(&idp, "", FLAT_MAP);
    let good = idp.client_token("agent", "urn:sluice");
    let short = idp.client_token("short-agent", "urn:sluice");
    let issued = Instant::now();
    assert_eq!(ok(&select_one(&env, "agent", &good, "appdb")).trim(), "1");

    // Forged: claims changed under the provider's signature.
    let forged = with_payload(&good, |p| {
        p["groups"] = serde_json::json!(["sluice-agents", "ops"])
    });
    assert_psql_refused(&env, &forged, "signature does not verify");
    // Wrong audience (a token for another resource server).
    assert_psql_refused(
        &env,
        &idp.client_token("agent", "urn:other"),
        "audience is not accepted",
    );
    // Wrong issuer: a real provider Sluice is not configured to trust.
    assert_psql_refused(
        &env,
        &other.client_token("agent", "urn:sluice"),
        "not issued by this gateway or by a configured identity provider",
    );
    // alg none.
    let mut header = header_of(&good);
    header["alg"] = "none".into();
    let parts: Vec<&str> = good.split('.').collect();
    let unsigned = format!(
        "{}.{}.",
        B64.encode(serde_json::to_vec(&header).unwrap()),
        parts[1]
    );
    assert_psql_refused(&env, &unsigned, "alg none");
    // HS256 keyed with the provider's public key (algorithm confusion).
    let mut header = header_of(&good);
    header["alg"] = "HS256".into();
    let confused = hs256(&header, &payload_of(&good), idp.public_pem().as_bytes());
    assert_psql_refused(&env, &confused, "shared-secret algorithm");
    // Expired (6 s tokens, 1 s skew).
    std::thread::sleep(Duration::from_secs(8).saturating_sub(issued.elapsed()));
    assert_psql_refused(&env, &short, "token expired");
    // None of these reached the upstream as a session.
    assert_eq!(env.sessions().len(), 1);
}

#[test]
fn signing_key_rotation_mid_run() {
    let idp = Idp::start();
    let (env, _) = env_for(&idp, "", FLAT_MAP);
    let before = idp.client_token("agent", "urn:sluice");
    assert_eq!(ok(&select_one(&env, "agent", &before, "appdb")).trim(), "1");
    idp.rotate();
    let after = idp.client_token("agent", "urn:sluice");
    assert_ne!(header_of(&before)["kid"], header_of(&after)["kid"]);
    // The unknown kid makes the gateway fetch the keys again (at most every 3 s).
    wait_until(
        Duration::from_secs(15),
        "a token signed with the new key accepted",
        || {
            select_one(&env, "agent", &after, "appdb")
                .status
                .success()
                .then_some(())
        },
    );
    // The old key is no longer published: its tokens are refused.
    assert_psql_refused(&env, &before, "does not publish");
}

#[test]
fn idp_down_with_and_without_cached_keys() {
    let mut idp = Idp::start();
    let (mut env, _) = env_for(&idp, "", FLAT_MAP);
    let token = idp.client_token("agent", "urn:sluice");
    assert_eq!(ok(&select_one(&env, "agent", &token, "appdb")).trim(), "1");
    idp.stop();
    // Cached keys (within jwks_ttl) keep working while the IdP is away.
    assert_eq!(ok(&select_one(&env, "agent", &token, "appdb")).trim(), "1");
    // A gateway that never fetched the keys cannot verify anything: denied.
    env.restart_gateway();
    assert_psql_refused(&env, &token, "no unexpired signing keys are cached");
    // Back up (a new key): new tokens work again.
    idp.start_again();
    let fresh = idp.client_token("agent", "urn:sluice");
    wait_until(Duration::from_secs(15), "the IdP is back", || {
        select_one(&env, "agent", &fresh, "appdb")
            .status
            .success()
            .then_some(())
    });
}

#[test]
fn an_idp_token_expiring_ends_the_live_psql_session() {
    let idp = Idp::start();
    let (env, _) = env_for(&idp, "", FLAT_MAP);
    let short = idp.client_token("short-agent", "urn:sluice");
    let child = long_psql(&env, &short);
    let (se, _) = ended_within(child, Duration::from_secs(15));
    assert!(se.contains("sluice: session ended: token expired"), "{se}");
    let sessions = env.wait_sessions_ended(1);
    assert_eq!(sessions[0]["end_reason"], "token expired");
}

#[test]
fn revoke_and_kill_end_live_psql_sessions_within_seconds() {
    let idp = Idp::start();
    let (mut env, api_port) = env_for(&idp, "", FLAT_MAP);
    let admin = env.token("oncall", &["ops"], "30m");

    // 1. `sluice token revoke TOKEN` (the holder revokes its own token).
    let token = idp.client_token("agent", "urn:sluice");
    let child = running_psql(&env, &token);
    let revoked_at = Instant::now();
    let out = env.sluice(&["token", "revoke", &token, "--reason", "leaked in a log"]);
    assert!(
        ok(&out).contains("1 live session(s) ended"),
        "{}",
        stdout(&out)
    );
    let (se, _) = ended_within(child, Duration::from_secs(5));
    // From starting the CLI (a process, TLS to the API) to psql having exited.
    eprintln!(
        "revocation: psql ended {:?} after `sluice token revoke` started",
        revoked_at.elapsed()
    );
    assert!(se.contains("token revoked"), "{se}");
    assert!(se.contains("leaked in a log"), "{se}");
    assert_psql_refused(&env, &token, "token has been revoked");
    // Still revoked after a restart.
    env.restart_gateway();
    assert_psql_refused(&env, &token, "token has been revoked");

    // 2. `sluice token revoke --id JTI` by an admin; a token exchanged from it dies too.
    let token = idp.client_token("agent", "urn:sluice");
    let jti = payload_of(&token)["jti"].as_str().unwrap().to_string();
    let out = env.sluice(&[
        "token",
        "exchange",
        "--connection",
        "appdb",
        "--token",
        &token,
    ]);
    let child_token = ok(&out).trim().to_string();
    let child = running_psql(&env, &child_token);
    // Not an admin and not the owner: refused.
    let bystander = env.token("someone", &["agents"], "10m");
    let se = failed(&env.sluice(&["token", "revoke", "--id", &jti, "--token", &bystander]));
    assert!(se.contains("admin_groups"), "{se}");
    let out = env.sluice(&["token", "revoke", "--id", &jti, "--token", &admin]);
    ok(&out);
    let (se, _) = ended_within(child, Duration::from_secs(5));
    assert!(se.contains("token revoked by oncall"), "{se}");
    assert_psql_refused(&env, &child_token, "token has been revoked");

    // 3. `sluice sessions kill ID` by an admin.
    let token = idp.client_token("agent", "urn:sluice");
    let child = running_psql(&env, &token);
    let (status, body) = api(&env, api_port, &admin, "GET", "/api/v1/sessions", None);
    assert_eq!(status, 200, "{body}");
    let live: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(live.len(), 1, "{body}");
    let id = live[0]["id"].as_str().unwrap().to_string();
    // Another agent does not see it and cannot end it.
    let (status, body) = api(&env, api_port, &bystander, "GET", "/api/v1/sessions", None);
    assert_eq!((status, body.as_str()), (200, "[]"));
    let se = failed(&env.sluice(&["sessions", "kill", &id, "--token", &bystander]));
    assert!(se.contains("no live session"), "{se}");
    let out = env.sluice(&[
        "sessions",
        "kill",
        &id,
        "--reason",
        "maintenance",
        "--token",
        &admin,
    ]);
    ok(&out);
    let (se, _) = ended_within(child, Duration::from_secs(5));
    assert!(se.contains("ended by oncall: maintenance"), "{se}");
    // Killing a session does not revoke the token.
    assert_eq!(ok(&select_one(&env, "agent", &token, "appdb")).trim(), "1");
}

#[test]
fn device_flow_login_then_connect_prints_working_settings() {
    let idp = Idp::start();
    let (env, _) = env_for(&idp, "", FLAT_MAP);
    let home = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(sluice_bin());
    cmd.args([
        "login",
        "--issuer",
        &idp.issuer(),
        "--client-id",
        "cli",
        "--resource",
        "urn:sluice",
    ])
    .env("XDG_CONFIG_HOME", home.path());
    let (child, url, _lines) = spawn_until_url(cmd);
    assert!(url.contains("user_code="), "{url}");
    approve(&url, "alice");
    let out = wait_output(child, Duration::from_secs(60), "sluice login");
    assert!(
        out.status.success(),
        "sluice login failed: {}",
        stderr(&out)
    );
    let stored = home.path().join("sluice").join("login.json");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&stored).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let mut cmd = Command::new(sluice_bin());
    cmd.args(["connect", "appdb", "--config"])
        .arg(&env.config_path)
        .env("XDG_CONFIG_HOME", home.path())
        .env_remove("SLUICE_TOKEN");
    let printed = ok(&run_with_timeout(&mut cmd, None, COMMAND_TIMEOUT));
    let url = printed
        .lines()
        .find(|l| l.starts_with("postgresql://"))
        .unwrap_or_else(|| panic!("no URL in:\n{printed}"));
    assert!(url.starts_with("postgresql://alice:"), "{url}");
    let out = env.psql(url, &["-w", "-c", "select current_user"]);
    assert_eq!(ok(&out).trim(), env.db.user);
    let sessions = env.sessions();
    assert_eq!(sessions.last().unwrap()["subject"], "alice");
}

#[test]
fn browser_login_with_pkce_on_a_loopback_redirect() {
    let idp = Idp::start();
    let home = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(sluice_bin());
    cmd.args([
        "login",
        "--browser",
        "--issuer",
        &idp.issuer(),
        "--client-id",
        "cli",
        "--resource",
        "urn:sluice",
    ])
    .env("XDG_CONFIG_HOME", home.path());
    let (child, url, _lines) = spawn_until_url(cmd);
    assert!(url.contains("code_challenge_method=S256"), "{url}");
    approve(&url, "alice");
    let out = wait_output(child, Duration::from_secs(60), "sluice login --browser");
    assert!(
        out.status.success(),
        "sluice login failed: {}",
        stderr(&out)
    );
    let stored: serde_json::Value = serde_json::from_slice(
        &std::fs::read(home.path().join("sluice").join("login.json")).unwrap(),
    )
    .unwrap();
    let token = stored["access_token"].as_str().unwrap();
    assert_eq!(payload_of(token)["sub"], "alice");
    assert_eq!(payload_of(token)["aud"], "sluice");
    let _ = curl(&[&format!(
        "{}/.well-known/openid-configuration",
        idp.issuer()
    )]);
}

/// The same subject name at the identity provider is someone else. The
/// gateway's own `agent` has a write held for a DBA; the provider's `agent`
/// (its access token, and the gateway token it exchanges) tries to list it,
/// read it and approve it through the operator API, and sees nothing of it.
/// The held statement never runs: the table, read directly, is unchanged.
#[test]
fn a_subject_at_another_issuer_is_not_the_requester() {
    const REVIEW: &str =
        "[[rules]]\nname = \"reviewed\"\nmatch = { sql = [\"write\"], tables = [\"customers\"] }\n\
                          action = \"review\"\napprovers = [\"dba\"]\ntimeout = \"60s\"\n";
    let idp = Idp::start();
    let (env, api_port) = env_for(&idp, "", &format!("{FLAT_MAP}\n{REVIEW}"));
    let name = |env: &Env| env.direct_sql("app", "select name from customers where id = 1");
    let before = name(&env);
    let own = env.token("agent", &["agents"], "10m");
    let mut psql = env.psql_command(
        &env.url("agent", &own, "appdb"),
        &[
            "-c",
            "update customers set name = 'Taken Over' where id = 1",
        ],
    );
    let held = std::thread::spawn(move || run_with_timeout(&mut psql, None, COMMAND_TIMEOUT));
    // The gateway's agent sees its own request.
    let id = wait_until(Duration::from_secs(20), "the held request", || {
        let (status, body) = api(&env, api_port, &own, "GET", "/api/v1/approvals", None);
        let list: Vec<serde_json::Value> = serde_json::from_str(&body).ok()?;
        (status == 200).then_some(())?;
        list.first()?["id"].as_str().map(String::from)
    });

    let idp_agent = idp.client_token("agent", "urn:sluice");
    let (status, body) = api(
        &env,
        api_port,
        &idp_agent,
        "POST",
        "/api/v1/token/exchange",
        Some(r#"{"connection": "appdb", "ttl": "5m"}"#),
    );
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    let exchanged = answer["access_token"].as_str().unwrap().to_string();
    for token in [&idp_agent, &exchanged] {
        let (status, body) = api(&env, api_port, token, "GET", "/api/v1/approvals", None);
        assert_eq!(status, 200, "{body}");
        assert!(
            !body.contains(&id) && !body.contains("Taken Over"),
            "{body}"
        );
        let (status, body) = api(
            &env,
            api_port,
            token,
            "GET",
            &format!("/api/v1/approvals/{id}"),
            None,
        );
        assert_ne!(status, 200, "{body}");
        assert!(!body.contains("Taken Over"), "{body}");
        let (status, body) = api(
            &env,
            api_port,
            token,
            "POST",
            &format!("/api/v1/approvals/{id}/approve"),
            Some("{}"),
        );
        assert_ne!(status, 200, "{body}");
    }
    assert_eq!(name(&env), before, "nothing ran");
    // A DBA denies it; the statement never runs.
    let dba = env.token("dana", &["dba"], "10m");
    let (status, body) = api(
        &env,
        api_port,
        &dba,
        "POST",
        &format!("/api/v1/approvals/{id}/deny"),
        Some(r#"{"reason": "not yours"}"#),
    );
    assert_eq!(status, 200, "{body}");
    let out = held.join().unwrap();
    assert!(!out.status.success());
    assert_eq!(name(&env), before, "the denied write never ran");
}

use super::*;
use crate::testing::MemoryStore;
use async_trait::async_trait;

/// Vouches for tokens `idp:<subject>:<group,group>`; refuses `idp:bad`.
struct FakeIdp;

#[async_trait]
impl Authenticator for FakeIdp {
    fn name(&self) -> &str {
        "https://idp.test"
    }

    async fn authenticate(&self, token: &str) -> Result<Option<Identity>, AuthError> {
        let Some(rest) = token.strip_prefix("idp:") else {
            return Ok(None);
        };
        if rest == "bad" {
            return Err(AuthError::Rejected(
                "token signature does not verify".into(),
            ));
        }
        let (subject, groups) = rest.split_once(':').unwrap_or((rest, ""));
        Ok(Some(Identity {
            subject: subject.into(),
            groups: groups
                .split(',')
                .filter(|g| !g.is_empty())
                .map(String::from)
                .collect(),
            issuer: "https://idp.test".into(),
            token_id: format!("jti-{subject}"),
            expires_at: SystemTime::now() + Duration::from_secs(600),
            connections: None,
        }))
    }
}

fn gateway(dir: &std::path::Path) -> Gateway {
    let text = format!(
        r#"
[gateway]
state_dir = {dir:?}

[[auth.oidc]]
issuer = "https://idp.test"
audience = "sluice"

[[auth.group_map]]
idp_group = "eng"
groups = ["agents"]

[[connections]]
name = "appdb"
kind = "postgres"
upstream = "127.0.0.1:5432"
database = "app"
user = "app"
password = {{ env = "X" }}
allow_groups = ["agents"]

[[connections]]
name = "otherdb"
kind = "postgres"
upstream = "127.0.0.1:5432"
database = "app"
user = "app"
password = {{ env = "X" }}
allow_groups = ["agents"]
"#,
        dir = dir.display().to_string()
    );
    let config = Config::from_toml_str(&text, "t.toml").unwrap();
    GatewayBuilder::new(config, Arc::new(MemoryStore::default()))
        .connection_kind(
            ConnectionKind::Postgres,
            &["database", "user", "password"],
            |_| Ok(()),
        )
        .authenticator(Arc::new(FakeIdp))
        .build()
        .unwrap()
}

fn creds(token: &str) -> Credentials {
    Credentials {
        user: "u".into(),
        token: token.into(),
    }
}

#[tokio::test]
async fn idp_identities_are_mapped_and_revocable() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path());
    let id = gw
        .authenticate(&creds("idp:alice:eng,marketing"))
        .await
        .unwrap();
    // Only mapped groups count.
    assert_eq!(id.groups, ["agents"]);
    assert_eq!(id.issuer, "https://idp.test");
    let err = gw
        .authenticate(&creds("idp:bad"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("signature"), "{err}");
    // Neither a gateway token nor any authenticator's.
    let err = gw
        .authenticate(&creds("garbage"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not issued by this gateway"), "{err}");

    assert_eq!(
        gw.revoke_token("jti-alice", None, "ops", None)
            .await
            .unwrap(),
        0
    );
    let err = gw.authenticate(&creds("idp:alice:eng")).await.unwrap_err();
    assert!(matches!(err, AuthError::Revoked));
    // Persistent: a new gateway on the same state_dir still refuses it.
    let again = gateway(dir.path());
    assert!(matches!(
        again.authenticate(&creds("idp:alice:eng")).await,
        Err(AuthError::Revoked)
    ));
}

#[tokio::test]
async fn exchanged_tokens_open_one_connection_and_die_with_their_parent() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path());
    let bob = gw.authenticate(&creds("idp:bob:eng")).await.unwrap();
    let issued = gw
        .exchange(&bob, "appdb", Duration::from_secs(300))
        .unwrap();
    let narrowed = gw.authenticate(&creds(&issued.token)).await.unwrap();
    assert_eq!(narrowed.subject, "bob");
    assert_eq!(narrowed.groups, ["agents"]);
    assert_eq!(
        narrowed.connections.as_deref(),
        Some(&["appdb".to_string()][..])
    );
    assert!(narrowed.expires_at <= bob.expires_at);

    let handle = gw
        .open_session(narrowed.clone(), "appdb", Protocol::Postgres, "127.0.0.1:1")
        .await
        .unwrap();
    let refused = gw
        .open_session(
            narrowed.clone(),
            "otherdb",
            Protocol::Postgres,
            "127.0.0.1:1",
        )
        .await
        .unwrap_err();
    assert!(
        refused.client_message().contains("exchanged for"),
        "{refused:?}"
    );
    // It cannot be widened by exchanging it again.
    assert!(matches!(
        gw.exchange(&narrowed, "otherdb", Duration::from_secs(60)),
        Err(ExchangeError::Forbidden(_))
    ));
    // Nor can someone outside allow_groups get one.
    let eve = gw.authenticate(&creds("idp:eve:marketing")).await.unwrap();
    assert!(matches!(
        gw.exchange(&eve, "appdb", Duration::from_secs(60)),
        Err(ExchangeError::Forbidden(_))
    ));
    assert!(matches!(
        gw.exchange(&bob, "nope", Duration::from_secs(60)),
        Err(ExchangeError::Invalid(_))
    ));

    // Revoking the parent ends the child's live session and refuses the child.
    let ended = gw
        .revoke_token(&bob.token_id, None, "ops", Some("leak".into()))
        .await
        .unwrap();
    assert_eq!(ended, 1);
    let reason = tokio::time::timeout(Duration::from_secs(1), handle.ended())
        .await
        .unwrap();
    assert_eq!(reason, "token revoked by ops: leak");
    assert!(matches!(
        gw.authenticate(&creds(&issued.token)).await,
        Err(AuthError::Revoked)
    ));
}

#[tokio::test]
async fn revoking_a_token_revokes_its_exchanges_at_any_depth() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path());
    let bob = gw.authenticate(&creds("idp:bob:eng")).await.unwrap();
    let child = gw
        .exchange(&bob, "appdb", Duration::from_secs(300))
        .unwrap();
    let child_id = gw.authenticate(&creds(&child.token)).await.unwrap();
    let grandchild = gw
        .exchange(&child_id, "appdb", Duration::from_secs(300))
        .unwrap();
    let grandchild_id = gw.authenticate(&creds(&grandchild.token)).await.unwrap();
    let great = gw
        .exchange(&grandchild_id, "appdb", Duration::from_secs(300))
        .unwrap();
    let great_id = gw.authenticate(&creds(&great.token)).await.unwrap();
    let handle = gw
        .open_session(great_id, "appdb", Protocol::Postgres, "127.0.0.1:1")
        .await
        .unwrap();

    gw.revoke_token(&bob.token_id, None, "ops", None)
        .await
        .unwrap();
    let reason = tokio::time::timeout(Duration::from_secs(1), handle.ended())
        .await
        .unwrap();
    assert_eq!(reason, "token revoked by ops");
    for token in [&child.token, &grandchild.token, &great.token] {
        assert!(matches!(
            gw.authenticate(&creds(token)).await,
            Err(AuthError::Revoked)
        ));
    }
    // The lineage is in the token: a restarted gateway refuses it too.
    let again = gateway(dir.path());
    assert!(matches!(
        again.authenticate(&creds(&great.token)).await,
        Err(AuthError::Revoked)
    ));

    // Revoking a middle link leaves its parent working.
    let carol = gw.authenticate(&creds("idp:carol:eng")).await.unwrap();
    let c1 = gw
        .exchange(&carol, "appdb", Duration::from_secs(300))
        .unwrap();
    let c1_id = gw.authenticate(&creds(&c1.token)).await.unwrap();
    let c2 = gw
        .exchange(&c1_id, "appdb", Duration::from_secs(300))
        .unwrap();
    gw.revoke_token(&c1.token_id, None, "ops", None)
        .await
        .unwrap();
    assert!(gw.authenticate(&creds("idp:carol:eng")).await.is_ok());
    assert!(matches!(
        gw.authenticate(&creds(&c2.token)).await,
        Err(AuthError::Revoked)
    ));
}

/// A scripted session: offers `tokens` in turn on connection `appdb`.
struct Scripted {
    tokens: Vec<&'static str>,
    after_refusal: AfterRefusal,
    refusals: Arc<std::sync::Mutex<Vec<Refusal>>>,
    ran_as: Arc<std::sync::Mutex<Option<String>>>,
}

#[async_trait]
impl Session for Scripted {
    async fn credentials(&mut self) -> Result<crate::SessionRequest, SessionError> {
        if self.tokens.is_empty() {
            return Err(SessionError::Client("no more attempts".into()));
        }
        Ok(crate::SessionRequest {
            credentials: creds(self.tokens.remove(0)),
            connection: "appdb".into(),
        })
    }

    async fn refuse(&mut self, refusal: Refusal) -> Result<AfterRefusal, SessionError> {
        self.refusals.lock().unwrap().push(refusal);
        Ok(self.after_refusal)
    }

    async fn run(self, handle: SessionHandle) -> Result<(), SessionError> {
        *self.ran_as.lock().unwrap() = Some(handle.info().identity.subject.clone());
        Ok(())
    }
}

fn scripted(tokens: &[&'static str], after_refusal: AfterRefusal) -> Scripted {
    Scripted {
        tokens: tokens.to_vec(),
        after_refusal,
        refusals: Arc::default(),
        ran_as: Arc::default(),
    }
}

#[tokio::test]
async fn serve_lets_a_protocol_retry_after_a_refusal_and_only_then() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path());
    // Like SSH: a refused attempt is told, and the next one is admitted.
    let session = scripted(&["idp:bad", "idp:ann:eng"], AfterRefusal::Retry);
    let (refusals, ran_as) = (session.refusals.clone(), session.ran_as.clone());
    gw.serve(session, Protocol::Postgres, "127.0.0.1:1")
        .await
        .unwrap();
    assert!(matches!(
        refusals.lock().unwrap().as_slice(),
        [Refusal::Authentication(_)]
    ));
    assert_eq!(ran_as.lock().unwrap().as_deref(), Some("ann"));
    // Like PostgreSQL: a refusal closes; the second token is never read.
    let session = scripted(&["idp:bad", "idp:ann:eng"], AfterRefusal::Close);
    let (refusals, ran_as) = (session.refusals.clone(), session.ran_as.clone());
    gw.serve(session, Protocol::Postgres, "127.0.0.1:1")
        .await
        .unwrap();
    assert_eq!(refusals.lock().unwrap().len(), 1);
    assert!(ran_as.lock().unwrap().is_none());
    // Retries end when the protocol has nothing more to offer.
    let session = scripted(&["idp:bad", "idp:bad"], AfterRefusal::Retry);
    let refusals = session.refusals.clone();
    assert!(gw
        .serve(session, Protocol::Postgres, "127.0.0.1:1")
        .await
        .is_err());
    assert_eq!(refusals.lock().unwrap().len(), 2);
}

//! What only the console reads (`/console/api/…`): past sessions with
//! filters, a session's timeline, a terminal recording as asciicast v2,
//! the audit status, and the connections with a client command.
//!
//! Who sees what follows the live-session rule of the API: members of
//! `auth.admin_groups` see every session; others see their own (same
//! subject and issuer), and an approver sees the sessions of the requests
//! they may decide. The audit status is for admins.

use super::session::Signed;
use crate::server::{is_requester, json, method_not_allowed, problem, truncate, visible_to, Body};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use sluice_core::audit::{AuditEvent, AuditRecord, SessionSummary};
use sluice_core::{Gateway, Identity};
use std::collections::HashMap;

/// Sessions a history query looks at, newest first.
const HISTORY_LIMIT: usize = 200;
/// Timeline entries sent for one session.
const TIMELINE_LIMIT: usize = 5_000;

pub(super) async fn handle(
    gateway: &Gateway,
    signed: &Signed,
    checkpoint: Option<&super::LatestCheckpoint>,
    req: Request<Incoming>,
) -> Response<Body> {
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return method_not_allowed("GET");
    }
    let path = req.uri().path().trim_end_matches('/');
    let query = parse_query(req.uri().query());
    let who = &signed.identity;
    match path {
        "/console/api/history" => history(gateway, who, &query).await,
        "/console/api/audit" => audit(gateway, who, checkpoint).await,
        "/console/api/connections" => connections(gateway, who, req.headers()),
        _ => {
            let Some(rest) = path.strip_prefix("/console/api/sessions/") else {
                return not_found(path);
            };
            match rest.split('/').collect::<Vec<_>>().as_slice() {
                [id, "timeline"] if !id.is_empty() => timeline(gateway, who, id).await,
                [id, "cast"] if !id.is_empty() => {
                    let command = query.get("command").and_then(|c| c.parse::<u64>().ok());
                    cast(gateway, who, id, command).await
                }
                _ => not_found(path),
            }
        }
    }
}

fn not_found(path: &str) -> Response<Body> {
    problem(
        StatusCode::NOT_FOUND,
        format!("no console route {}", truncate(path, 200)),
    )
}

/// `a=1&b=x%20y` (values percent-decoded; `+` is a space).
fn parse_query(query: Option<&str>) -> HashMap<String, String> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (
                crate::server::decode(k),
                crate::server::decode(&v.replace('+', " ")),
            )
        })
        .collect()
}

/// The identity a session was opened with (its first record).
fn opener(records: &[AuditRecord]) -> Option<Identity> {
    records.iter().find_map(|r| match r.event() {
        Ok(AuditEvent::SessionStart { identity, .. }) => Some(identity),
        _ => None,
    })
}

/// Whether `who` may read this session's records.
fn may_read(gateway: &Gateway, who: &Identity, session_id: &str, records: &[AuditRecord]) -> bool {
    if crate::identity::is_admin(gateway, who) {
        return true;
    }
    if opener(records).is_some_and(|o| o.subject == who.subject && o.issuer == who.issuer) {
        return true;
    }
    gateway
        .approvals()
        .list(false)
        .iter()
        .any(|r| r.session_id == session_id && !is_requester(r, who) && visible_to(r, who))
}

#[derive(Serialize)]
struct HistoryRow {
    #[serde(flatten)]
    summary: SessionSummary,
    live: bool,
    /// Set when the query asked for a decision filter.
    #[serde(skip_serializing_if = "Option::is_none")]
    decisions: Option<Decisions>,
}

#[derive(Serialize, Default, Clone, Copy)]
struct Decisions {
    denied: u64,
    held: u64,
    masked: u64,
}

fn decisions(records: &[AuditRecord]) -> Decisions {
    let mut d = Decisions::default();
    for r in records {
        match r.event() {
            Ok(AuditEvent::CommandDecided { verdict, .. })
                if verdict.action == sluice_core::Action::Deny =>
            {
                d.denied += 1;
            }
            Ok(AuditEvent::ApprovalRequested { .. }) => d.held += 1,
            Ok(AuditEvent::CommandFinished { outcome, .. }) => {
                d.masked += outcome.masked.values().sum::<u64>();
            }
            _ => {}
        }
    }
    d
}

async fn history(gateway: &Gateway, who: &Identity, q: &HashMap<String, String>) -> Response<Body> {
    let all = match gateway.store().sessions().await {
        Ok(all) => all,
        Err(e) => return problem(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    let admin = crate::identity::is_admin(gateway, who);
    let live: Vec<String> = gateway.live_sessions().ids();
    let text = |key: &str| q.get(key).map(|v| v.trim()).filter(|v| !v.is_empty());
    let number = |key: &str| text(key).and_then(|v| v.parse::<u64>().ok());
    let mut candidates: Vec<SessionSummary> = all
        .into_iter()
        .filter(|s| admin || (s.subject == who.subject && s.issuer == who.issuer))
        .filter(|s| text("subject").is_none_or(|v| s.subject.contains(v)))
        .filter(|s| text("connection").is_none_or(|v| s.connection == v))
        .filter(|s| text("protocol").is_none_or(|v| s.protocol == v))
        .filter(|s| number("since_ms").is_none_or(|t| s.ended_at_ms.unwrap_or(u64::MAX) >= t))
        .filter(|s| number("until_ms").is_none_or(|t| s.started_at_ms <= t))
        .filter(|s| match text("state") {
            Some("live") => live.contains(&s.id),
            Some("ended") => !live.contains(&s.id),
            _ => true,
        })
        .collect();
    candidates.sort_by_key(|s| std::cmp::Reverse(s.started_at_ms));
    candidates.truncate(HISTORY_LIMIT);
    let decision = text("decision");
    let mut rows = Vec::with_capacity(candidates.len());
    for summary in candidates {
        // Non-admins: the subject matched; the issuer must too.
        let need_records = !admin || decision.is_some();
        let records = if need_records {
            match gateway.store().session_records(&summary.id).await {
                Ok(r) => r,
                Err(_) => continue,
            }
        } else {
            Vec::new()
        };
        if !admin && opener(&records).is_none_or(|o| o.issuer != who.issuer) {
            continue;
        }
        let decisions = decision.map(|_| decisions(&records));
        let keep = match (decision, decisions) {
            (Some("denied"), Some(d)) => d.denied > 0,
            (Some("held"), Some(d)) => d.held > 0,
            (Some("masked"), Some(d)) => d.masked > 0,
            _ => true,
        };
        if keep {
            rows.push(HistoryRow {
                live: live.contains(&summary.id),
                summary,
                decisions,
            });
        }
    }
    json(StatusCode::OK, &rows)
}

#[derive(Serialize)]
struct TimelineEntry {
    seq: u64,
    at_ms: u64,
    /// The audit event; a stream batch is summarised (`bytes`, `chunks`)
    /// rather than sent, the player fetches it as asciicast.
    event: serde_json::Value,
}

async fn read_session(
    gateway: &Gateway,
    who: &Identity,
    id: &str,
) -> Result<Vec<AuditRecord>, Response<Body>> {
    let records = match gateway.store().session_records(id).await {
        Ok(r) => r,
        Err(sluice_core::StoreError::UnknownSession(_)) => Vec::new(),
        Err(e) => return Err(problem(StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
    };
    // Sessions the caller may not read do not exist for them.
    if records.is_empty() || !may_read(gateway, who, id, &records) {
        return Err(problem(
            StatusCode::NOT_FOUND,
            format!("no session {} that you may read", truncate(id, 80)),
        ));
    }
    Ok(records)
}

async fn timeline(gateway: &Gateway, who: &Identity, id: &str) -> Response<Body> {
    let records = match read_session(gateway, who, id).await {
        Ok(r) => r,
        Err(response) => return response,
    };
    let mut out = Vec::new();
    for r in records.iter().take(TIMELINE_LIMIT) {
        let event = match r.event() {
            Ok(AuditEvent::StreamOutput { command_id, chunks }) => serde_json::json!({
                "event": "stream_output",
                "command_id": command_id,
                "chunks": chunks.len(),
                "bytes": chunks.iter().map(|c| c.data.len()).sum::<usize>(),
            }),
            Ok(event) => serde_json::to_value(&event).unwrap_or_default(),
            Err(_) => serde_json::json!({ "event": "unreadable" }),
        };
        out.push(TimelineEntry {
            seq: r.seq,
            at_ms: r.at_ms,
            event,
        });
    }
    json(
        StatusCode::OK,
        &serde_json::json!({
            "session_id": id,
            "live": gateway.live_sessions().ids().iter().any(|l| l == id),
            "entries": out,
            "truncated": records.len() > TIMELINE_LIMIT,
        }),
    )
}

async fn cast(gateway: &Gateway, who: &Identity, id: &str, command: Option<u64>) -> Response<Body> {
    let records = match read_session(gateway, who, id).await {
        Ok(r) => r,
        Err(response) => return response,
    };
    match sluice_core::replay::asciicast(&records, command) {
        Ok(text) => {
            crate::server::respond(StatusCode::OK, "application/x-asciicast", text.into_bytes())
        }
        Err(e) => problem(StatusCode::NOT_FOUND, e),
    }
}

async fn audit(
    gateway: &Gateway,
    who: &Identity,
    checkpoint: Option<&super::LatestCheckpoint>,
) -> Response<Body> {
    if !crate::identity::is_admin(gateway, who) {
        return problem(
            StatusCode::FORBIDDEN,
            "the audit status is for members of auth.admin_groups",
        );
    }
    // The last signed tree head this process published, with whether its
    // signature verifies under the key it names.
    let checkpoint = checkpoint.and_then(|c| c.get()).map(|c| {
        serde_json::json!({
            "signature_valid": c.verify_signature(None).is_ok(),
            "checkpoint": c,
        })
    });
    match gateway.store().verify().await {
        Ok(report) => json(
            StatusCode::OK,
            &serde_json::json!({
                "intact": report.first_break.is_none(),
                "report": report,
                "latest_checkpoint": checkpoint,
            }),
        ),
        Err(e) => problem(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

#[derive(Serialize)]
struct ConnectionView {
    name: String,
    kind: String,
    /// Where clients connect (`host:port` of the matching listener), if it is enabled.
    address: Option<String>,
}

/// The connections the caller's groups may open, with the listener that
/// serves them; the page builds the client command.
fn connections(gateway: &Gateway, who: &Identity, headers: &hyper::HeaderMap) -> Response<Body> {
    let config = gateway.config();
    // A wildcard listener is reached at the host the browser used.
    let browser_host = headers
        .get(hyper::header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(|h| h.rsplit_once(':').map_or(h, |(host, _)| host).to_string())
        .unwrap_or_else(|| "localhost".into());
    let address = |addr: Option<std::net::SocketAddr>| {
        addr.map(|a| {
            if a.ip().is_unspecified() {
                format!("{browser_host}:{}", a.port())
            } else {
                a.to_string()
            }
        })
    };
    let list: Vec<ConnectionView> = config
        .connections
        .iter()
        .filter(|c| who.in_any_group(&c.allow_groups))
        .filter(|c| {
            who.connections
                .as_ref()
                .is_none_or(|allowed| allowed.contains(&c.name))
        })
        .map(|c| {
            let kind = c.kind.to_string();
            let listener = match kind.as_str() {
                "postgres" => config.listen.postgres,
                "ssh" => config.listen.ssh,
                "http" | "kubernetes" => config.listen.http,
                other => config.listen.protocols.get(other).copied(),
            };
            ConnectionView {
                name: c.name.clone(),
                kind,
                address: address(listener),
            }
        })
        .collect();
    json(StatusCode::OK, &list)
}

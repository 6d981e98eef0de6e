//! `GET /console/events`: server-sent events with the approval queue and
//! the live sessions the signed-in operator may see. The stream looks at
//! the queue a few times a second and sends a snapshot when it changed, so
//! a held command appears in an open page well within a second, and an
//! expiry (which happens by the clock, not by an event) too.

use super::session::Signed;
use super::Console;
use crate::server::{problem, Body};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Frame;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use serde::Serialize;
use sluice_core::approval::{ApprovalRequest, ApprovalState};
use sluice_core::audit::AuditEvent;
use sluice_core::session::LiveSessionInfo;
use sluice_core::sync::MutexExt;
use sluice_core::{Gateway, Identity};
use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, OwnedSemaphorePermit};

/// How often the stream looks at the queue.
const TICK: Duration = Duration::from_millis(200);
/// How often the stream re-checks the console session (expiry, revocation).
const RECHECK: Duration = Duration::from_secs(2);
/// A comment line keeps proxies and the browser from timing the stream out.
const HEARTBEAT: Duration = Duration::from_secs(15);
/// Decided requests shown below the pending ones.
const RECENT_DECIDED: usize = 20;

/// Where and by whom a request was made, read from its session's records.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct RequestContext {
    pub issuer: String,
    pub groups: Vec<String>,
    pub token_id: String,
    /// The tokens it was exchanged from, nearest first.
    pub lineage: Vec<String>,
    pub client_addr: String,
    pub protocol: String,
    /// The command's kind (`sql_simple`, `exec`, `kube_request` with verb,
    /// resource, namespace…), as judged.
    pub kind: Option<serde_json::Value>,
    /// Definitions the command refers to (a prepared statement's SQL…).
    pub command_context: Vec<String>,
    /// What the protocol's describer says about the command (for SQL: each
    /// statement's classes, tables and functions).
    pub analysis: Option<serde_json::Value>,
}

/// One request as the console shows it.
#[derive(Debug, Serialize)]
struct ApprovalView<'a> {
    #[serde(flatten)]
    request: &'a ApprovalRequest,
    /// The signed-in operator may approve or deny it (the same checks as
    /// `ApprovalService::decide`; the server checks again on the POST).
    can_decide: bool,
    context: Option<&'a RequestContext>,
}

#[derive(Serialize)]
struct Snapshot<'a> {
    approvals: Vec<ApprovalView<'a>>,
    sessions: Vec<LiveSessionInfo>,
}

/// Reads the requester's identity and the command from the session chain.
/// (The command itself is recorded once decided, after the approval, so
/// only the request carries its kind and context while pending.)
pub(crate) async fn request_context(
    gateway: &Gateway,
    describer: Option<&crate::CommandDescriber>,
    r: &ApprovalRequest,
) -> RequestContext {
    let mut ctx = RequestContext::default();
    if let Ok(records) = gateway.store().session_records(&r.session_id).await {
        read_context(&mut ctx, &records, r.command_id);
    }
    if ctx.kind.is_none() {
        ctx.kind = r.kind.as_ref().and_then(|k| serde_json::to_value(k).ok());
    }
    if ctx.command_context.is_empty() {
        ctx.command_context = r.context.clone();
    }
    if let Some(describe) = describer {
        ctx.analysis = describe(&ctx.protocol, &r.command);
    }
    ctx.lineage = gateway.token_lineage(&ctx.token_id);
    ctx
}

fn read_context(ctx: &mut RequestContext, records: &[sluice_core::AuditRecord], command_id: u64) {
    for record in records {
        match record.event() {
            Ok(AuditEvent::SessionStart {
                identity,
                protocol,
                client_addr,
                ..
            }) => {
                ctx.issuer = identity.issuer;
                ctx.groups = identity.groups;
                ctx.token_id = identity.token_id;
                ctx.client_addr = client_addr;
                ctx.protocol = protocol.to_string();
            }
            Ok(AuditEvent::CommandDecided {
                command_id: id,
                command,
                ..
            }) if id == command_id => {
                ctx.kind = serde_json::to_value(&command.kind).ok();
                ctx.command_context = command.context;
            }
            _ => {}
        }
    }
}

fn can_decide(r: &ApprovalRequest, who: &Identity) -> bool {
    let own = crate::server::is_requester(r, who);
    r.state == ApprovalState::Pending && !own && who.in_any_group(&r.approvers)
}

/// A body fed from a channel: one SSE chunk per message, ends when the
/// sender does.
struct EventBody {
    rx: mpsc::Receiver<Bytes>,
    _permit: OwnedSemaphorePermit,
    _slot: SubjectSlot,
}

type SubjectCounts = Arc<std::sync::Mutex<HashMap<(String, String), usize>>>;

/// One of a person's event streams; given back on drop.
struct SubjectSlot {
    counts: SubjectCounts,
    key: (String, String),
}

impl SubjectSlot {
    fn take(counts: &SubjectCounts, key: (String, String)) -> Option<SubjectSlot> {
        let mut map = counts.locked();
        let n = map.entry(key.clone()).or_insert(0);
        if *n >= super::MAX_EVENT_STREAMS_PER_SUBJECT {
            return None;
        }
        *n += 1;
        Some(SubjectSlot {
            counts: counts.clone(),
            key,
        })
    }
}

impl Drop for SubjectSlot {
    fn drop(&mut self) {
        let mut map = self.counts.locked();
        if let Some(n) = map.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

impl hyper::body::Body for EventBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
    }
}

fn event(name: &str, data: &str) -> Bytes {
    // serde_json output has no raw newlines, so one data line suffices.
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

pub(super) async fn stream(
    console: &Console,
    gateway: &Arc<Gateway>,
    signed: Signed,
) -> Response<Body> {
    let Some(slot) = SubjectSlot::take(
        &console.streams_by_subject,
        (
            signed.identity.issuer.clone(),
            signed.identity.subject.clone(),
        ),
    ) else {
        return problem(
            StatusCode::TOO_MANY_REQUESTS,
            "you have too many console pages open; close one and reload",
        );
    };
    let Ok(permit) = console.streams.clone().try_acquire_owned() else {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many console event streams are open; close a tab and retry",
        );
    };
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let gateway = gateway.clone();
    let sessions = console.sessions.clone();
    let describer = console.describer.clone();
    tokio::spawn(async move {
        let mut identity = signed.identity;
        let mut last = String::new();
        let mut contexts: HashMap<String, RequestContext> = HashMap::new();
        let mut checked = Instant::now();
        let mut beat = Instant::now();
        let _ = tx.send(Bytes::from_static(b"retry: 2000\n\n")).await;
        loop {
            if checked.elapsed() >= RECHECK {
                checked = Instant::now();
                match sessions.resolve_id(&gateway, &signed.id).await {
                    Ok(s) => identity = s.identity,
                    Err(detail) => {
                        let data = serde_json::json!({ "detail": detail }).to_string();
                        let _ = tx.send(event("signed_out", &data)).await;
                        return;
                    }
                }
            }
            let all = gateway.approvals().list(false);
            let mut visible: Vec<&ApprovalRequest> = all
                .iter()
                .filter(|r| crate::server::visible_to(r, &identity))
                .collect();
            let decided = visible
                .iter()
                .filter(|r| r.state != ApprovalState::Pending)
                .count();
            if decided > RECENT_DECIDED {
                let mut skip = decided - RECENT_DECIDED;
                // `list` is newest first: drop the oldest decided ones.
                visible.reverse();
                visible.retain(|r| {
                    if skip > 0 && r.state != ApprovalState::Pending {
                        skip -= 1;
                        false
                    } else {
                        true
                    }
                });
                visible.reverse();
            }
            for r in &visible {
                if !contexts.contains_key(&r.id) {
                    let ctx = request_context(&gateway, describer.as_ref(), r).await;
                    contexts.insert(r.id.clone(), ctx);
                }
            }
            contexts.retain(|id, _| visible.iter().any(|r| &r.id == id));
            let admin = crate::identity::is_admin(&gateway, &identity);
            let snapshot = Snapshot {
                approvals: visible
                    .iter()
                    .map(|r| {
                        let context = contexts.get(&r.id);
                        ApprovalView {
                            request: r,
                            can_decide: can_decide(r, &identity),
                            context,
                        }
                    })
                    .collect(),
                sessions: gateway
                    .live_sessions()
                    .list()
                    .into_iter()
                    .filter(|s| admin || crate::identity::owns(s, &identity))
                    .collect(),
            };
            let data = serde_json::to_string(&snapshot).unwrap_or_default();
            if data != last {
                let now_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0);
                let framed = format!("{{\"now_ms\":{now_ms},\"state\":{data}}}");
                if tx.send(event("state", &framed)).await.is_err() {
                    return;
                }
                last = data;
                beat = Instant::now();
            } else if beat.elapsed() >= HEARTBEAT {
                if tx
                    .send(Bytes::from_static(b": keep-alive\n\n"))
                    .await
                    .is_err()
                {
                    return;
                }
                beat = Instant::now();
            }
            tokio::select! {
                _ = tx.closed() => return,
                _ = tokio::time::sleep(TICK) => {}
            }
        }
    });
    let mut response = Response::new(
        EventBody {
            rx,
            _permit: permit,
            _slot: slot,
        }
        .boxed(),
    );
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests;

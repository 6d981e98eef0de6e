//! Just-in-time approval of single commands (`action = "review"`).
//!
//! The approval stage sits between the audit layer and the policy layer:
//! when the policy says *review*, it opens a request, tells the client, and
//! either holds the command until an approver decides (`hold`) or refuses it
//! now and lets the same subject re-send the same command once after approval
//! (`retry`). Requests and decisions are appended to the session's audit chain.
//! Anything that fails here denies (fail closed).

mod layer;
mod remote;

pub use layer::ApprovalLayer;
pub use remote::CONFIRM_TIMEOUT;

use crate::audit::{AuditEvent, Store};
use crate::config::{Config, HumanDuration};
use crate::model::{Action, Identity};
use crate::sync::{MutexExt, RwLockExt};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;

/// How long a review waits for an approver unless the rule says otherwise.
pub const DEFAULT_REVIEW_TIMEOUT: Duration = Duration::from_secs(600);
/// Reviews cannot wait longer than this (Teleport's access requests wait a week;
/// a held database statement should not).
pub const MAX_REVIEW_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReviewMode {
    /// The command waits on its connection until decided.
    #[default]
    Hold,
    /// The command is refused now; once approved, re-sending it runs it once.
    Retry,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalState {
    Pending,
    Approved,
    Denied,
    Expired,
    /// A retry-mode approval that has been used.
    Used,
}

impl std::fmt::Display for ApprovalState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ApprovalState::Pending => "pending",
            ApprovalState::Approved => "approved",
            ApprovalState::Denied => "denied",
            ApprovalState::Expired => "expired",
            ApprovalState::Used => "used",
        })
    }
}

/// One request for approval, as listed to approvers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRequest {
    pub id: String,
    pub session_id: String,
    pub command_id: u64,
    pub subject: String,
    /// The requester's issuer: `subject` is theirs at this issuer, and only
    /// that identity is the requester (the same subject at another identity
    /// provider is someone else).
    #[serde(default)]
    pub issuer: String,
    pub connection: String,
    /// The command as the client sent it.
    pub command: String,
    /// What kind of command it is (a query, an exec, an HTTP request…).
    #[serde(default)]
    pub kind: Option<crate::model::CommandKind>,
    /// What the protocol knows of it beyond its text, which the approval
    /// covers too: an HTTP body's excerpt and digest, a Kubernetes exec's
    /// pod and container, a prepared statement's definition.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub context: Vec<String>,
    pub rule: String,
    pub message: Option<String>,
    /// Groups whose members may decide.
    pub approvers: Vec<String>,
    pub mode: ReviewMode,
    pub requested_at_ms: u64,
    /// A pending request expires then; an approved retry request's grant too.
    pub expires_at_ms: u64,
    pub state: ApprovalState,
    pub decided_by: Option<String>,
    pub decided_at_ms: Option<u64>,
    pub reason: Option<String>,
}

impl ApprovalRequest {
    /// Who asked, as approvers read it: the subject, with its issuer when
    /// that is an identity provider (`alice (https://idp.example)`).
    pub fn requester(&self) -> String {
        if self.issuer.is_empty() || self.issuer == crate::token::GATEWAY_ISSUER {
            self.subject.clone()
        } else {
            format!("{} ({})", self.subject, self.issuer)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApprovalError {
    #[error("no approval request {0}")]
    NotFound(String),
    #[error("approval request {id} is already {state}")]
    NotPending { id: String, state: ApprovalState },
    #[error("approval request {0} is being decided by someone else")]
    BeingDecided(String),
    #[error("{0} cannot decide their own request")]
    SelfApproval(String),
    #[error("{subject} is not in an approver group of this request ({groups})")]
    NotAnApprover { subject: String, groups: String },
    #[error("a token narrowed to connections cannot decide approvals; use your own token")]
    NarrowedToken,
    #[error("the decision could not be recorded, so it was not applied: {0}")]
    Store(String),
}

/// Told about requests and decisions (webhooks, chat). Must not block.
pub trait ApprovalNotifier: Send + Sync + 'static {
    fn requested(&self, request: &ApprovalRequest);
    fn decided(&self, request: &ApprovalRequest);
}

/// A rule's review settings.
#[derive(Debug, Clone)]
pub struct ReviewSettings {
    pub approvers: Vec<String>,
    pub timeout: Duration,
    pub mode: ReviewMode,
}

impl ReviewSettings {
    /// Reads the review settings of every `action = "review"` rule.
    /// Errors name the rule's key, for `config check`.
    pub fn from_config(
        config: &Config,
    ) -> Result<HashMap<String, ReviewSettings>, (String, String)> {
        let mut out = HashMap::new();
        for (i, r) in config.rules.iter().enumerate() {
            if r.action != Action::Review {
                continue;
            }
            if r.approvers.is_empty() {
                return Err((
                    format!("rules.{i}.approvers"),
                    "a review rule needs approver groups; nobody could approve it".into(),
                ));
            }
            let mode = match r.mode.as_deref() {
                None | Some("hold") => ReviewMode::Hold,
                Some("retry") => ReviewMode::Retry,
                Some(other) => {
                    return Err((
                        format!("rules.{i}.mode"),
                        format!("{other:?} is not hold or retry"),
                    ))
                }
            };
            let timeout = r
                .timeout
                .map(|HumanDuration(d)| d)
                .unwrap_or(DEFAULT_REVIEW_TIMEOUT);
            if timeout.is_zero() || timeout > MAX_REVIEW_TIMEOUT {
                return Err((
                    format!("rules.{i}.timeout"),
                    format!(
                        "must be between 1s and {}",
                        humantime::format_duration(MAX_REVIEW_TIMEOUT)
                    ),
                ));
            }
            out.insert(
                r.name.clone(),
                ReviewSettings {
                    approvers: r.approvers.clone(),
                    timeout,
                    mode,
                },
            );
        }
        Ok(out)
    }
}

/// What a held command learns.
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    Approved {
        by: String,
    },
    Denied {
        by: String,
        reason: Option<String>,
    },
    /// The session ended (revoked, killed) before a decision.
    Withdrawn {
        reason: String,
    },
}

struct Entry {
    request: ApprovalRequest,
    /// Exact command identity for retry grants.
    fingerprint: String,
    waiter: Option<oneshot::Sender<Outcome>>,
    /// A decision is being recorded: nothing else may finish the request
    /// meanwhile (a second approver, its expiry), so the audit never holds
    /// two outcomes for one request.
    deciding: bool,
    /// The session ended while a decision was being recorded: the waiter
    /// is told this reason, whatever the decision.
    withdrawn: Option<String>,
}

/// A claim on a request being decided, released however the decision ends
/// (recorded, failed, or its future dropped: an approver's connection
/// closed mid-append).
struct Claim<'a> {
    service: &'a ApprovalService,
    id: &'a str,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if let Some(e) = self.service.entries.locked().get_mut(self.id) {
            e.deciding = false;
        }
    }
}

/// The approval queue of one gateway process.
pub struct ApprovalService {
    entries: Mutex<HashMap<String, Entry>>,
    store: Arc<dyn Store>,
    notifiers: Vec<Arc<dyn ApprovalNotifier>>,
    settings: std::sync::RwLock<Arc<HashMap<String, ReviewSettings>>>,
    /// How long finished requests stay listed; their decisions stay in the audit trail.
    finished_retention_ms: u64,
    /// Requests held on other nodes of a shared store.
    remote: remote::Remote,
}

/// Finished (denied, expired, used) requests are forgotten this long after
/// they finished, so a long-running gateway's queue does not grow without bound.
pub const FINISHED_RETENTION: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

impl std::fmt::Debug for ApprovalService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApprovalService").finish_non_exhaustive()
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A context line a protocol adds to a command whose request could not be
/// bound exactly (e.g. an HTTP body too large to digest before judging): a
/// retry grant is never given for it.
pub const UNBOUND_CONTEXT: &str = "unbound: ";

/// The exact request a retry grant is for: who (subject namespaced by its
/// issuer), where, the text as sent (only leading and trailing whitespace and
/// trailing `;` dropped: inner whitespace is not normalised, because a newline
/// ends an SQL `--` comment and spaces inside literals are data) and every context
/// line the protocol attached (a Kubernetes exec's target pod and container,
/// an HTTP request's body digest, a prepared statement's definition).
/// Anything else is a different request.
pub fn fingerprint(
    identity: &Identity,
    connection: &str,
    text: &str,
    context: &[String],
) -> String {
    let exact = text.trim().trim_end_matches(';').trim_end();
    let mut fp = format!(
        "{}\u{0}{}\u{0}{connection}\u{0}{exact}",
        identity.issuer, identity.subject,
    );
    for line in context {
        fp.push('\u{0}');
        fp.push_str(line);
    }
    fp
}

/// Who someone is across identity providers: the subject, with the issuer
/// when it is not the gateway itself (`alice` from one IdP is not `alice`
/// from another).
pub fn qualified_subject(identity: &Identity) -> String {
    if identity.issuer == crate::token::GATEWAY_ISSUER {
        identity.subject.clone()
    } else {
        format!("{} ({})", identity.subject, identity.issuer)
    }
}

impl ApprovalService {
    pub fn new(
        store: Arc<dyn Store>,
        settings: HashMap<String, ReviewSettings>,
        notifiers: Vec<Arc<dyn ApprovalNotifier>>,
    ) -> Self {
        ApprovalService {
            entries: Mutex::new(HashMap::new()),
            store,
            notifiers,
            settings: std::sync::RwLock::new(Arc::new(settings)),
            finished_retention_ms: FINISHED_RETENTION.as_millis() as u64,
            remote: remote::Remote::default(),
        }
    }

    /// Shares this node's requests with the other nodes of a shared store,
    /// and takes their decisions (see `remote.rs`).
    pub fn with_cluster(mut self, cluster: Arc<dyn crate::cluster::Cluster>) -> Self {
        self.remote = remote::Remote::new(Some(cluster));
        self
    }

    /// Another node's request, as it announced it (`Gateway::apply`).
    pub fn mirror(&self, request: ApprovalRequest) {
        if !self.entries.locked().contains_key(&request.id) {
            self.remote.mirror(request, self.finished_retention_ms);
        }
    }

    /// A decision made through another node for a request held here: the
    /// same checks and record as a decision made here.
    pub async fn decide_for_another_node(
        &self,
        id: &str,
        approver: &Identity,
        approve: bool,
        reason: Option<String>,
    ) {
        if !self.entries.locked().contains_key(id) {
            return;
        }
        if let Err(e) = self.decide(id, approver, approve, reason).await {
            tracing::warn!(message = "A decision made through another node was not applied.", id = %id, error = %e);
        }
    }

    /// Changes how long finished requests stay listed (default [`FINISHED_RETENTION`]).
    pub fn with_finished_retention(mut self, retention: std::time::Duration) -> Self {
        self.finished_retention_ms = retention.as_millis() as u64;
        self
    }

    pub fn settings(&self, rule: &str) -> Option<ReviewSettings> {
        self.settings.read_locked().get(rule).cloned()
    }

    /// Replaces the review rules' settings (configuration reload); requests
    /// already open keep the settings they were opened with.
    pub fn replace_settings(&self, settings: HashMap<String, ReviewSettings>) {
        *self.settings.write_locked() = Arc::new(settings);
    }

    /// The queue with requests whose time ran out marked expired, and requests
    /// finished longer ago than the retention forgotten.
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        let mut entries = self.entries.locked();
        let now = now_ms();
        for e in entries.values_mut() {
            let r = &mut e.request;
            if now >= r.expires_at_ms
                && !e.deciding
                && matches!(r.state, ApprovalState::Pending | ApprovalState::Approved)
            {
                r.state = ApprovalState::Expired;
                e.waiter = None;
            }
        }
        let retention = self.finished_retention_ms;
        entries.retain(|_, e| {
            let r = &e.request;
            let finished_at = r.decided_at_ms.unwrap_or(0).max(r.expires_at_ms.min(now));
            !matches!(
                r.state,
                ApprovalState::Denied | ApprovalState::Expired | ApprovalState::Used
            ) || now.saturating_sub(finished_at) < retention
        });
        entries
    }

    /// Requests, newest first (other nodes' too); `pending_only` hides decided ones.
    pub fn list(&self, pending_only: bool) -> Vec<ApprovalRequest> {
        let local: Vec<ApprovalRequest> = self.lock().values().map(|e| e.request.clone()).collect();
        let mut out: Vec<ApprovalRequest> = local
            .into_iter()
            .chain(self.remote.list())
            .filter(|r| !pending_only || r.state == ApprovalState::Pending)
            .collect();
        out.sort_by_key(|r| std::cmp::Reverse(r.requested_at_ms));
        out
    }

    pub fn get(&self, id: &str) -> Option<ApprovalRequest> {
        let local = self.lock().get(id).map(|e| e.request.clone());
        local.or_else(|| self.remote.get(id))
    }

    /// An approver decides. The decision is durable in the requester's
    /// session chain before it takes effect.
    pub async fn decide(
        &self,
        id: &str,
        approver: &Identity,
        approve: bool,
        reason: Option<String>,
    ) -> Result<ApprovalRequest, ApprovalError> {
        let local = self.claim(id, approver)?;
        let _claim = local.is_some().then_some(Claim { service: self, id });
        let Some(request) = local else {
            // Held on another node: the same checks here, then the owner's.
            let r = self
                .remote
                .get(id)
                .ok_or_else(|| ApprovalError::NotFound(id.to_string()))?;
            may_decide(&r, approver)?;
            return self.remote.decide(id, approver, approve, reason).await;
        };
        let state = if approve {
            ApprovalState::Approved
        } else {
            ApprovalState::Denied
        };
        let recorded = self
            .store
            .append(
                &request.session_id,
                AuditEvent::ApprovalDecided {
                    approval_id: id.to_string(),
                    state,
                    by: qualified_subject(approver),
                    reason: reason.clone(),
                },
            )
            .await;
        let decided = {
            let mut entries = self.lock();
            let e = entries
                .get_mut(id)
                .ok_or_else(|| ApprovalError::NotFound(id.to_string()))?;
            e.deciding = false;
            recorded.map_err(|e| ApprovalError::Store(e.to_string()))?;
            let now = now_ms();
            e.request.state = state;
            e.request.decided_by = Some(qualified_subject(approver));
            e.request.decided_at_ms = Some(now);
            e.request.reason = reason.clone();
            if e.request.mode == ReviewMode::Retry && approve {
                // The grant lasts as long as the request could have waited.
                let ttl = self
                    .settings(&e.request.rule)
                    .map(|s| s.timeout)
                    .unwrap_or(DEFAULT_REVIEW_TIMEOUT);
                e.request.expires_at_ms = now + ttl.as_millis() as u64;
            }
            if let Some(w) = e.waiter.take() {
                let _ = w.send(if let Some(reason) = e.withdrawn.take() {
                    Outcome::Withdrawn { reason }
                } else if approve {
                    Outcome::Approved {
                        by: qualified_subject(approver),
                    }
                } else {
                    Outcome::Denied {
                        by: qualified_subject(approver),
                        reason,
                    }
                });
            }
            e.request.clone()
        };
        tracing::info!(message = "Approval decided.", id = %id, state = %decided.state, by = %approver.subject);
        self.remote.announce(&decided);
        for n in &self.notifiers {
            n.decided(&decided);
        }
        Ok(decided)
    }

    /// Checks that `approver` may decide request `id` and claims it for
    /// them: until their decision is recorded, nobody else decides it and it
    /// does not expire. `None`: not held here.
    fn claim(
        &self,
        id: &str,
        approver: &Identity,
    ) -> Result<Option<ApprovalRequest>, ApprovalError> {
        let mut entries = self.lock();
        let Some(e) = entries.get_mut(id) else {
            return Ok(None);
        };
        may_decide(&e.request, approver)?;
        if e.deciding {
            return Err(ApprovalError::BeingDecided(id.to_string()));
        }
        e.deciding = true;
        Ok(Some(e.request.clone()))
    }

    /// Ends the pending requests of a session that ended (token revoked,
    /// session killed): a command held for approval must not run once its
    /// session is over, whoever approves it afterwards.
    pub fn withdraw_session(&self, session_id: &str, reason: &str) {
        let ids: Vec<String> = self
            .lock()
            .values()
            .filter(|e| e.request.session_id == session_id)
            .map(|e| e.request.id.clone())
            .collect();
        for id in ids {
            self.finish_unapproved(&id, reason, Some(reason));
        }
    }

    /// Opens a request (durably). Hold mode gets a receiver for the outcome.
    pub(crate) async fn open(
        &self,
        mut request: ApprovalRequest,
        fingerprint: String,
        hold: bool,
    ) -> Result<(ApprovalRequest, Option<oneshot::Receiver<Outcome>>), String> {
        self.store
            .append(
                &request.session_id,
                AuditEvent::ApprovalRequested {
                    approval_id: request.id.clone(),
                    command_id: request.command_id,
                    rule: request.rule.clone(),
                    approvers: request.approvers.clone(),
                    mode: request.mode,
                    expires_at_ms: request.expires_at_ms,
                    command: Some(crate::audit::bounds::held_command(&request)),
                },
            )
            .await
            .map_err(|e| e.to_string())?;
        request.state = ApprovalState::Pending;
        let (tx, rx) = if hold {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        self.lock().insert(
            request.id.clone(),
            Entry {
                request: request.clone(),
                fingerprint,
                waiter: tx,
                deciding: false,
                withdrawn: None,
            },
        );
        tracing::info!(message = "Approval requested.", id = %request.id, rule = %request.rule, subject = %request.subject, connection = %request.connection);
        self.remote.announce(&request);
        for n in &self.notifiers {
            n.requested(&request);
        }
        Ok((request, rx))
    }

    /// A held request timed out or was abandoned: record it and stop
    /// accepting decisions. `false` when a decision is being recorded for
    /// it (it is not expired: its waiter hears the decision shortly).
    pub(crate) fn expire_now(&self, id: &str, reason: &str) -> bool {
        self.finish_unapproved(id, reason, None)
    }

    /// Marks a pending request expired (recorded with `reason`), telling
    /// its waiter `withdrawn` when given; `false` if it is being decided.
    fn finish_unapproved(&self, id: &str, reason: &str, withdrawn: Option<&str>) -> bool {
        let expired = {
            let mut entries = self.lock();
            match entries.get_mut(id) {
                Some(e) if e.deciding => {
                    // The decision being recorded will tell the waiter.
                    if let Some(why) = withdrawn {
                        e.withdrawn = Some(why.to_string());
                    }
                    return false;
                }
                Some(e) if e.request.state == ApprovalState::Pending => {
                    e.request.state = ApprovalState::Expired;
                    if let (Some(w), Some(why)) = (e.waiter.take(), withdrawn) {
                        let _ = w.send(Outcome::Withdrawn {
                            reason: why.to_string(),
                        });
                    }
                    e.waiter = None;
                    Some(e.request.clone())
                }
                _ => None,
            }
        };
        if let Some(request) = expired {
            self.remote.announce(&request);
            self.store.append_background(
                &request.session_id,
                AuditEvent::ApprovalDecided {
                    approval_id: id.to_string(),
                    state: ApprovalState::Expired,
                    by: "sluice".into(),
                    reason: Some(reason.into()),
                },
            );
        }
        true
    }

    /// Retry mode: an approved, unused, unexpired grant for exactly this
    /// command is consumed (it runs once). Otherwise, a pending request for
    /// it is returned so the client is told the same id again.
    pub(crate) fn take_grant(&self, fingerprint: &str) -> Grant {
        let mut entries = self.lock();
        let mut pending = None;
        for e in entries.values_mut() {
            if e.fingerprint != fingerprint || e.request.mode != ReviewMode::Retry {
                continue;
            }
            match e.request.state {
                ApprovalState::Approved => {
                    e.request.state = ApprovalState::Used;
                    self.remote.announce(&e.request);
                    return Grant::Approved(e.request.clone());
                }
                ApprovalState::Pending => pending = Some(e.request.clone()),
                _ => {}
            }
        }
        match pending {
            Some(r) => Grant::Pending(r),
            None => Grant::None,
        }
    }
}

/// Whether `approver` may decide `r` (still pending, not their own, their
/// own token, an approver group of it).
fn may_decide(r: &ApprovalRequest, approver: &Identity) -> Result<(), ApprovalError> {
    if r.state != ApprovalState::Pending {
        return Err(ApprovalError::NotPending {
            id: r.id.clone(),
            state: r.state,
        });
    }
    if r.subject == approver.subject && r.issuer == approver.issuer {
        return Err(ApprovalError::SelfApproval(approver.subject.clone()));
    }
    // An exchanged token keeps its owner's groups but is made to be
    // handed to agents: it never carries the owner's approver role.
    if approver.connections.is_some() {
        return Err(ApprovalError::NarrowedToken);
    }
    if !approver.in_any_group(&r.approvers) {
        return Err(ApprovalError::NotAnApprover {
            subject: approver.subject.clone(),
            groups: r.approvers.join(", "),
        });
    }
    Ok(())
}

pub(crate) enum Grant {
    Approved(ApprovalRequest),
    Pending(ApprovalRequest),
    None,
}

#[cfg(test)]
mod tests;

//! Problems the gateway answers itself, and their default rendering as RFC
//! 9457 `application/problem+json`. Every field is built from fixed
//! sentences, rule names and rule messages: never upstream data or secrets.

use crate::flavor::Body;
use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use http_body_util::{BodyExt, Full};
use sluice_core::model::Denial;

pub const PROBLEM_JSON: &str = "application/problem+json";
/// `type` URIs are relative to this (documented in docs/http.md).
pub const PROBLEM_TYPE_BASE: &str = "https://sluice.dev/problems/";

/// What kind of problem, so a flavor can map it to its own error shapes
/// (a Kubernetes `Status` reason, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProblemKind {
    /// A rule (or the connection's default) denied the request.
    Denied,
    /// A review rule: an approval was requested or is pending; re-send later.
    ApprovalRequired,
    /// No, an invalid or an expired token.
    Unauthenticated,
    /// Authenticated, but not allowed to open the connection.
    Forbidden,
    /// Malformed request, or a path the gateway refuses to interpret.
    BadRequest,
    /// No connection by that name or host.
    NotFound,
    /// Request body over the limit.
    PayloadTooLarge,
    /// Too many or too large request headers.
    HeadersTooLarge,
    /// The upstream failed or answered something the gateway will not pass on.
    BadGateway,
    /// The upstream did not answer in time.
    GatewayTimeout,
    /// The gateway cannot serve now (store down, …).
    Unavailable,
    /// The request method or upgrade is not supported here.
    NotSupported,
    /// The session was ended (token expired, revoked, operator).
    SessionEnded,
}

impl ProblemKind {
    /// The slug in the problem's `type` URI.
    pub fn slug(self) -> &'static str {
        match self {
            ProblemKind::Denied => "denied",
            ProblemKind::ApprovalRequired => "approval-required",
            ProblemKind::Unauthenticated => "unauthenticated",
            ProblemKind::Forbidden => "forbidden",
            ProblemKind::BadRequest => "bad-request",
            ProblemKind::NotFound => "not-found",
            ProblemKind::PayloadTooLarge => "payload-too-large",
            ProblemKind::HeadersTooLarge => "headers-too-large",
            ProblemKind::BadGateway => "bad-gateway",
            ProblemKind::GatewayTimeout => "gateway-timeout",
            ProblemKind::Unavailable => "unavailable",
            ProblemKind::NotSupported => "not-supported",
            ProblemKind::SessionEnded => "session-ended",
        }
    }

    /// The HTTP status this kind is answered with.
    pub fn status(self) -> StatusCode {
        match self {
            ProblemKind::Denied | ProblemKind::Forbidden => StatusCode::FORBIDDEN,
            ProblemKind::ApprovalRequired => StatusCode::CONFLICT,
            ProblemKind::Unauthenticated | ProblemKind::SessionEnded => StatusCode::UNAUTHORIZED,
            ProblemKind::BadRequest => StatusCode::BAD_REQUEST,
            ProblemKind::NotFound => StatusCode::NOT_FOUND,
            ProblemKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProblemKind::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProblemKind::BadGateway => StatusCode::BAD_GATEWAY,
            ProblemKind::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProblemKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ProblemKind::NotSupported => StatusCode::NOT_IMPLEMENTED,
        }
    }
}

/// A problem answered by the gateway. Boxed (it travels in `Result`s on the
/// request path); its fields are read through `Deref`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem(Box<ProblemDetails>);

/// The fields of a [`Problem`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProblemDetails {
    pub kind: ProblemKind,
    pub status: StatusCode,
    /// One line: what happened.
    pub title: String,
    /// Details the caller can act on.
    pub detail: String,
    /// The rule that decided, for denials.
    pub rule: Option<String>,
    /// What the caller can do next.
    pub hint: Option<String>,
    /// The approval request id, for reviews.
    pub approval: Option<String>,
}

impl std::ops::Deref for Problem {
    type Target = ProblemDetails;
    fn deref(&self) -> &ProblemDetails {
        &self.0
    }
}

impl std::ops::DerefMut for Problem {
    fn deref_mut(&mut self) -> &mut ProblemDetails {
        &mut self.0
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.title,
            self.detail
        )
    }
}

impl Problem {
    pub fn new(kind: ProblemKind, detail: impl Into<String>) -> Self {
        let status = kind.status();
        Problem(Box::new(ProblemDetails {
            kind,
            status,
            title: status.canonical_reason().unwrap_or("Error").to_string(),
            detail: detail.into(),
            rule: None,
            hint: None,
            approval: None,
        }))
    }

    /// Answers with `status` instead of the kind's usual one.
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn with_title(mut self, title: impl Into<String>) -> Self {
        self.title = title.into();
        self
    }

    /// A pipeline refusal. A review that is pending or was just requested
    /// (retry mode) is `ApprovalRequired` (409, with the approval id); every
    /// other refusal is `Denied` (403).
    pub fn from_denial(denial: &Denial) -> Self {
        let approval = approval_id(&denial.message);
        let pending = approval.is_some()
            && (denial.message.contains(" requested: ")
                || denial.message.contains("still pending"));
        let kind = if pending {
            ProblemKind::ApprovalRequired
        } else {
            ProblemKind::Denied
        };
        let title = match (&denial.rule, pending) {
            (Some(rule), true) => format!("Approval required by rule {rule:?}"),
            (Some(rule), false) => format!("Denied by rule {rule:?}"),
            (None, _) => "Denied by the connection's default policy".to_string(),
        };
        Problem(Box::new(ProblemDetails {
            kind,
            status: kind.status(),
            title,
            detail: denial.message.clone(),
            rule: denial.rule.clone(),
            hint: denial.hint.clone(),
            approval,
        }))
    }
}

/// The approval id core names in review messages (`approval 1a2b3c4d5e6f …`).
fn approval_id(message: &str) -> Option<String> {
    message.split("approval ").skip(1).find_map(|rest| {
        let id: String = rest.chars().take_while(char::is_ascii_hexdigit).collect();
        (id.len() >= 8).then_some(id)
    })
}

/// `{"type", "title", "status", "detail", "rule"?, "hint"?, "approval"?}`.
pub fn problem_json(problem: &Problem) -> http::Response<Body> {
    let mut doc = serde_json::json!({
        "type": format!("{PROBLEM_TYPE_BASE}{}", problem.kind.slug()),
        "title": problem.title,
        "status": problem.status.as_u16(),
        "detail": problem.detail,
    });
    if let Some(map) = doc.as_object_mut() {
        for (key, value) in [
            ("rule", &problem.rule),
            ("hint", &problem.hint),
            ("approval", &problem.approval),
        ] {
            if let Some(v) = value {
                map.insert(key.to_string(), serde_json::Value::String(v.clone()));
            }
        }
    }
    let mut body = doc.to_string();
    body.push('\n');
    let mut response = http::Response::new(full(body));
    *response.status_mut() = problem.status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if problem.kind == ProblemKind::Unauthenticated || problem.kind == ProblemKind::SessionEnded {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"sluice\""),
        );
    }
    response
}

/// A complete body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn review_messages_carry_their_approval_id() {
        let d = Denial {
            rule: Some("reviewed".into()),
            message: "command denied by rule \"reviewed\": needs a look; approval 0123456789ab requested: an approver …".into(),
            hint: None,
        };
        let p = Problem::from_denial(&d);
        assert_eq!(p.kind, ProblemKind::ApprovalRequired);
        assert_eq!(p.approval.as_deref(), Some("0123456789ab"));
        let d = Denial {
            rule: Some("no-delete".into()),
            message: "command denied by rule \"no-delete\": deletes are not allowed".into(),
            hint: None,
        };
        let p = Problem::from_denial(&d);
        assert_eq!(p.kind, ProblemKind::Denied);
        assert_eq!(p.status, StatusCode::FORBIDDEN);
        assert!(p.approval.is_none());
    }
}

//! Problems rendered as a Kubernetes `Status`, the error object every
//! Kubernetes client decodes: kubectl prints `Error from server (Forbidden):
//! <message>`, so the message names the rule and says what to do next.

use http::{header, HeaderValue, StatusCode};
use sluice_http::problem::full;
use sluice_http::{Body, Problem, ProblemKind};

/// The `reason` and HTTP code a problem is answered with.
pub fn reason(problem: &Problem) -> (&'static str, StatusCode) {
    match problem.kind {
        // A review answered now (retry mode) reads as Forbidden: clients do not
        // retry it on their own, and kubectl prints the message with the id.
        ProblemKind::Denied | ProblemKind::Forbidden | ProblemKind::ApprovalRequired => {
            ("Forbidden", StatusCode::FORBIDDEN)
        }
        ProblemKind::Unauthenticated | ProblemKind::SessionEnded => {
            ("Unauthorized", StatusCode::UNAUTHORIZED)
        }
        ProblemKind::BadRequest | ProblemKind::HeadersTooLarge => ("BadRequest", problem.status),
        ProblemKind::NotFound => ("NotFound", StatusCode::NOT_FOUND),
        ProblemKind::PayloadTooLarge => ("RequestEntityTooLarge", problem.status),
        ProblemKind::GatewayTimeout => ("Timeout", problem.status),
        ProblemKind::Unavailable => ("ServiceUnavailable", problem.status),
        ProblemKind::NotSupported => ("MethodNotAllowed", problem.status),
        _ => ("InternalError", problem.status),
    }
}

/// The one-line message: what happened, then what to do next.
pub fn message(problem: &Problem) -> String {
    let mut m = String::from("sluice: ");
    if problem.detail.is_empty() {
        m.push_str(&problem.title);
    } else {
        m.push_str(&problem.detail);
    }
    if let Some(hint) = &problem.hint {
        if !m.ends_with(['.', '!', '?']) {
            m.push('.');
        }
        m.push(' ');
        m.push_str(hint);
    }
    m
}

/// The `Status` document.
pub fn status_json(problem: &Problem) -> serde_json::Value {
    let (reason, code) = reason(problem);
    let mut details = serde_json::Map::new();
    let mut causes = Vec::new();
    if let Some(rule) = &problem.rule {
        causes.push(serde_json::json!({"reason": "SluiceRule", "message": rule}));
    }
    if let Some(id) = &problem.approval {
        causes.push(serde_json::json!({"reason": "SluiceApproval", "message": id}));
    }
    if !causes.is_empty() {
        details.insert("causes".into(), serde_json::Value::Array(causes));
    }
    let mut doc = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message(problem),
        "reason": reason,
        "code": code.as_u16(),
    });
    if !details.is_empty() {
        if let Some(map) = doc.as_object_mut() {
            map.insert("details".into(), serde_json::Value::Object(details));
        }
    }
    doc
}

/// The HTTP response carrying the `Status`.
pub fn status_response(problem: &Problem) -> http::Response<Body> {
    let (_, code) = reason(problem);
    let mut body = status_json(problem).to_string();
    body.push('\n');
    let mut response = http::Response::new(full(body));
    *response.status_mut() = code;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if code == StatusCode::UNAUTHORIZED {
        h.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"sluice\""),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_and_codes() {
        for (kind, reason, code) in [
            (ProblemKind::Denied, "Forbidden", 403),
            (ProblemKind::ApprovalRequired, "Forbidden", 403),
            (ProblemKind::Unauthenticated, "Unauthorized", 401),
            (ProblemKind::SessionEnded, "Unauthorized", 401),
            (ProblemKind::BadRequest, "BadRequest", 400),
            (ProblemKind::NotFound, "NotFound", 404),
            (ProblemKind::PayloadTooLarge, "RequestEntityTooLarge", 413),
            (ProblemKind::BadGateway, "InternalError", 502),
            (ProblemKind::GatewayTimeout, "Timeout", 504),
            (ProblemKind::Unavailable, "ServiceUnavailable", 503),
        ] {
            let p = Problem::new(kind, "what happened").with_hint("What to do.");
            let doc = status_json(&p);
            assert_eq!(doc["kind"], "Status");
            assert_eq!(doc["reason"], reason, "{kind:?}");
            assert_eq!(doc["code"], code, "{kind:?}");
            assert_eq!(doc["message"], "sluice: what happened. What to do.");
            assert_eq!(status_response(&p).status().as_u16(), code);
        }
    }
}

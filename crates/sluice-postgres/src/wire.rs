//! Encoding the few messages the gateway writes itself, with pgwire's codecs.

use bytes::BytesMut;
use pgwire::messages::response::{ErrorResponse, NoticeResponse, ReadyForQuery, TransactionStatus};
use pgwire::messages::startup::{Authentication, BackendKeyData, SecretKey};
use pgwire::messages::Message;

/// SQLSTATE for a refused command (insufficient_privilege).
pub const SQLSTATE_DENIED: &str = "42501";
/// SQLSTATE for a bad token (invalid_password).
pub const SQLSTATE_BAD_TOKEN: &str = "28P01";
/// SQLSTATE for a refused connection (invalid_authorization_specification).
pub const SQLSTATE_NOT_AUTHORIZED: &str = "28000";
/// SQLSTATE for a protocol violation.
pub const SQLSTATE_PROTOCOL: &str = "08P01";
/// SQLSTATE when the upstream cannot be reached (connection_failure).
pub const SQLSTATE_UPSTREAM: &str = "08006";
/// SQLSTATE for the gateway shutting a session (admin_shutdown).
pub const SQLSTATE_SHUTDOWN: &str = "57P01";

pub fn put<M: Message>(m: &M, out: &mut BytesMut) {
    // Encoding our own well-formed messages only fails past pgwire's size
    // limits, which these small messages never reach.
    if let Err(e) = m.encode(out) {
        tracing::error!(message = "Could not encode a message for the client.", error = %e);
    }
}

/// An ErrorResponse; `fatal` ends the session.
pub fn error(
    out: &mut BytesMut,
    fatal: bool,
    code: &str,
    message: &str,
    detail: Option<&str>,
    hint: Option<&str>,
) {
    let severity = if fatal { "FATAL" } else { "ERROR" };
    let mut fields = vec![
        (b'S', severity.to_string()),
        (b'V', severity.to_string()),
        (b'C', code.to_string()),
        (b'M', message.to_string()),
    ];
    if let Some(d) = detail {
        fields.push((b'D', d.to_string()));
    }
    if let Some(h) = hint {
        fields.push((b'H', h.to_string()));
    }
    put(&ErrorResponse::new(fields), out);
}

pub fn ready(out: &mut BytesMut, status: u8) {
    let status = match status {
        b'T' => TransactionStatus::Transaction,
        b'E' => TransactionStatus::Error,
        _ => TransactionStatus::Idle,
    };
    put(&ReadyForQuery::new(status), out);
}

pub fn auth_ok(out: &mut BytesMut) {
    put(&Authentication::Ok, out);
}

pub fn ask_cleartext_password(out: &mut BytesMut) {
    put(&Authentication::CleartextPassword, out);
}

pub fn backend_key(out: &mut BytesMut, pid: i32, secret: i32) {
    put(&BackendKeyData::new(pid, SecretKey::I32(secret)), out);
}

/// A NoticeResponse: clients show it at once, whatever they are waiting for.
pub fn notice(out: &mut BytesMut, message: &str) {
    put(
        &NoticeResponse::new(vec![
            (b'S', "NOTICE".to_string()),
            (b'V', "NOTICE".to_string()),
            (b'C', "00000".to_string()),
            (b'M', message.to_string()),
        ]),
        out,
    );
}

//! A minimal PostgreSQL client for the gateway's own PostgreSQL listener.
//!
//! A `CONN.query` tool call is one extended-protocol statement (Parse,
//! Bind with text parameters, Describe, Execute, Sync) sent by a native
//! client of the gateway, on loopback, with the caller's token as the
//! password: the gateway's PostgreSQL relay judges, records, holds and
//! masks it exactly as it does for psql or psycopg. This module only
//! encodes requests and decodes what the gateway answered.

use bytes::{Buf, BufMut, BytesMut};
use postgres_protocol::message::frontend;
use postgres_protocol::IsNull;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Connecting and the startup exchange must finish within this time.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Rows returned to the agent; the rest are counted, not returned.
pub const MAX_ROWS: usize = 1000;
/// Bytes of row values returned to the agent; the rest are counted, not returned.
pub const MAX_RESULT_BYTES: usize = 4 * 1024 * 1024;
/// A backend message longer than this ends the call: one row this large
/// cannot be returned to an agent, and is never buffered whole.
const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;
/// Notices kept for the result (count and bytes); the rest are counted.
const MAX_NOTICES: usize = 100;
const MAX_NOTICE_BYTES: usize = 64 * 1024;

/// What went wrong, and on whose side.
#[derive(Debug, thiserror::Error)]
pub enum PgClientError {
    /// The gateway refused the statement or the server failed it: the
    /// message (and hint) is what a psql user would read.
    #[error("{0}")]
    Refused(String),
    /// The gateway could not be reached or broke the protocol.
    #[error("the gateway's PostgreSQL listener: {0}")]
    Transport(String),
}

impl From<std::io::Error> for PgClientError {
    fn from(e: std::io::Error) -> Self {
        PgClientError::Transport(e.to_string())
    }
}

/// One backend message: its tag and body.
struct Message {
    tag: u8,
    body: BytesMut,
}

/// A connection to the gateway's PostgreSQL listener, as one caller.
pub struct PgClient {
    stream: TcpStream,
    read: BytesMut,
}

impl std::fmt::Debug for PgClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgClient").finish_non_exhaustive()
    }
}

/// A statement's result as the agent receives it.
#[derive(Debug, Default)]
pub struct QueryResult {
    pub columns: Vec<(String, u32)>,
    pub rows: Vec<Vec<Value>>,
    /// Rows the server sent (including those not returned).
    pub row_count: u64,
    pub truncated: bool,
    pub command: Option<String>,
    pub notices: Vec<String>,
    /// Notices past the count or size kept.
    pub notices_dropped: u64,
}

impl QueryResult {
    pub fn to_json(&self) -> Value {
        let columns: Vec<Value> = self
            .columns
            .iter()
            .map(|(name, oid)| json!({ "name": name, "type": type_name(*oid) }))
            .collect();
        let mut doc = json!({
            "columns": columns,
            "rows": self.rows,
            "row_count": self.row_count,
        });
        if let Some(command) = &self.command {
            doc["command"] = json!(command);
        }
        if self.truncated {
            doc["truncated"] = json!(true);
            doc["note"] = json!(format!(
                "only the first {} rows ({} bytes at most) are returned; add a LIMIT or narrow the query",
                MAX_ROWS, MAX_RESULT_BYTES
            ));
        }
        if !self.notices.is_empty() {
            doc["notices"] = json!(self.notices);
        }
        if self.notices_dropped > 0 {
            doc["notices_dropped"] = json!(self.notices_dropped);
        }
        doc
    }
}

impl PgClient {
    /// Connects to `addr` and authenticates as the caller: `user` (the
    /// token's subject), `database` (the connection's name), the token as the
    /// cleartext password, exactly as psql would.
    pub async fn connect(
        addr: SocketAddr,
        user: &str,
        token: &str,
        connection: &str,
    ) -> Result<Self, PgClientError> {
        tokio::time::timeout(
            CONNECT_TIMEOUT,
            Self::connect_inner(addr, user, token, connection),
        )
        .await
        .map_err(|_| PgClientError::Transport("timed out connecting".into()))?
    }

    async fn connect_inner(
        addr: SocketAddr,
        user: &str,
        token: &str,
        connection: &str,
    ) -> Result<Self, PgClientError> {
        let stream = TcpStream::connect(addr).await?;
        let _ = stream.set_nodelay(true);
        let mut client = PgClient {
            stream,
            read: BytesMut::with_capacity(8192),
        };
        let mut out = BytesMut::new();
        frontend::startup_message(
            [
                ("user", user),
                ("database", connection),
                ("application_name", "sluice-mcp"),
                ("client_encoding", "UTF8"),
            ],
            &mut out,
        )?;
        client.send(&out).await?;
        loop {
            let m = client.next().await?;
            match m.tag {
                b'R' => {
                    let mut body = m.body;
                    if body.len() < 4 {
                        return Err(PgClientError::Transport(
                            "short authentication request".into(),
                        ));
                    }
                    match body.get_i32() {
                        0 => {}
                        3 => {
                            let mut out = BytesMut::new();
                            frontend::password_message(token.as_bytes(), &mut out)?;
                            client.send(&out).await?;
                        }
                        other => {
                            return Err(PgClientError::Transport(format!(
                            "the gateway asked for an unexpected authentication method ({other})"
                        )))
                        }
                    }
                }
                b'E' => return Err(PgClientError::Refused(error_text(&m.body))),
                b'Z' => return Ok(client),
                // ParameterStatus, BackendKeyData, notices.
                _ => {}
            }
        }
    }

    /// Runs one statement with text parameters (`None` is NULL). `on_notice`
    /// receives the gateway's notices as they arrive (approval holds).
    pub async fn query(
        &mut self,
        sql: &str,
        params: &[Option<String>],
        mut on_notice: impl FnMut(&str),
    ) -> Result<QueryResult, PgClientError> {
        let mut out = BytesMut::new();
        frontend::parse("", sql, std::iter::empty(), &mut out)?;
        frontend::bind(
            "",
            "",
            // No format codes: every parameter and result column is text.
            std::iter::empty(),
            params.iter(),
            |value, buf| match value {
                Some(text) => {
                    buf.put_slice(text.as_bytes());
                    Ok(IsNull::No)
                }
                None => Ok(IsNull::Yes),
            },
            std::iter::empty(),
            &mut out,
        )
        .map_err(|_| PgClientError::Transport("a parameter could not be encoded".into()))?;
        frontend::describe(b'P', "", &mut out)?;
        frontend::execute("", 0, &mut out)?;
        frontend::sync(&mut out);
        self.send(&out).await?;

        let mut result = QueryResult::default();
        let mut error = None;
        let mut bytes = 0usize;
        let mut notice_bytes = 0usize;
        loop {
            let m = self.next().await?;
            match m.tag {
                b'T' => result.columns = row_description(m.body)?,
                b'D' => {
                    result.row_count += 1;
                    if result.rows.len() >= MAX_ROWS || bytes + m.body.len() > MAX_RESULT_BYTES {
                        result.truncated = true;
                        continue;
                    }
                    bytes += m.body.len();
                    result.rows.push(data_row(m.body, &result.columns)?);
                }
                b'C' => result.command = Some(cstr(&m.body)),
                b'E' => error = Some(error_text(&m.body)),
                b'N' => {
                    let text = error_text(&m.body);
                    on_notice(&text);
                    notice_bytes += text.len();
                    if result.notices.len() < MAX_NOTICES && notice_bytes <= MAX_NOTICE_BYTES {
                        result.notices.push(text);
                    } else {
                        result.notices_dropped += 1;
                    }
                }
                b'G' => {
                    // COPY FROM STDIN: there is no data to send from a tool call.
                    let mut out = BytesMut::new();
                    frontend::copy_fail("COPY FROM STDIN is not available through MCP", &mut out)?;
                    self.send(&out).await?;
                }
                b'Z' => break,
                // ParseComplete, BindComplete, NoData, EmptyQueryResponse,
                // PortalSuspended, CopyOutResponse/CopyData/CopyDone, ParameterStatus.
                _ => {}
            }
        }
        match error {
            Some(e) => Err(PgClientError::Refused(e)),
            None => Ok(result),
        }
    }

    /// Ends the session politely (the gateway records its end either way).
    pub async fn close(mut self) {
        let mut out = BytesMut::new();
        frontend::terminate(&mut out);
        let _ = self.send(&out).await;
        let _ = self.stream.shutdown().await;
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), PgClientError> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    async fn next(&mut self) -> Result<Message, PgClientError> {
        loop {
            if self.read.len() >= 5 {
                let len =
                    u32::from_be_bytes([self.read[1], self.read[2], self.read[3], self.read[4]])
                        as usize;
                if len > MAX_MESSAGE_BYTES {
                    return Err(PgClientError::Refused(format!(
                        "sluice: a row or message of {len} bytes is larger than MCP returns ({} MiB); select fewer or shorter columns",
                        MAX_MESSAGE_BYTES >> 20
                    )));
                }
                if len < 4 {
                    return Err(PgClientError::Transport(format!(
                        "a message of {len} bytes"
                    )));
                }
                if self.read.len() > len {
                    let tag = self.read[0];
                    self.read.advance(5);
                    let body = self.read.split_to(len - 4);
                    return Ok(Message { tag, body });
                }
            }
            if self.stream.read_buf(&mut self.read).await? == 0 {
                return Err(PgClientError::Transport("the connection closed".into()));
            }
        }
    }
}

fn cstr(body: &[u8]) -> String {
    let end = body.iter().position(|b| *b == 0).unwrap_or(body.len());
    String::from_utf8_lossy(&body[..end]).into_owned()
}

/// ErrorResponse/NoticeResponse: the message, with the detail and hint when present.
pub(crate) fn error_text(body: &[u8]) -> String {
    let (mut message, mut detail, mut hint, mut code) = (None, None, None, None);
    let mut rest = body;
    while let Some((&kind, tail)) = rest.split_first() {
        if kind == 0 {
            break;
        }
        let end = tail.iter().position(|b| *b == 0).unwrap_or(tail.len());
        let value = String::from_utf8_lossy(&tail[..end]).into_owned();
        match kind {
            b'M' => message = Some(value),
            b'D' => detail = Some(value),
            b'H' => hint = Some(value),
            b'C' => code = Some(value),
            _ => {}
        }
        rest = tail.get(end + 1..).unwrap_or_default();
    }
    let mut text = message.unwrap_or_else(|| "(no message)".into());
    if let Some(d) = detail {
        text.push_str(&format!("\nDETAIL: {d}"));
    }
    if let Some(h) = hint {
        text.push_str(&format!("\nHINT: {h}"));
    }
    // 00000 is a notice's "successful completion": nothing to tell.
    if let Some(c) = code.filter(|c| c != "00000") {
        text.push_str(&format!("\nSQLSTATE: {c}"));
    }
    text
}

fn short(what: &str) -> PgClientError {
    PgClientError::Transport(format!("a short {what}"))
}

fn row_description(mut body: BytesMut) -> Result<Vec<(String, u32)>, PgClientError> {
    if body.len() < 2 {
        return Err(short("RowDescription"));
    }
    let count = body.get_i16().max(0) as usize;
    let mut columns = Vec::with_capacity(count.min(1600));
    for _ in 0..count {
        let end = body
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| short("RowDescription"))?;
        let name = String::from_utf8_lossy(&body[..end]).into_owned();
        body.advance(end + 1);
        if body.len() < 18 {
            return Err(short("RowDescription"));
        }
        let _table = body.get_u32();
        let _attr = body.get_i16();
        let oid = body.get_u32();
        body.advance(8);
        columns.push((name, oid));
    }
    Ok(columns)
}

fn data_row(mut body: BytesMut, columns: &[(String, u32)]) -> Result<Vec<Value>, PgClientError> {
    if body.len() < 2 {
        return Err(short("DataRow"));
    }
    let count = body.get_i16().max(0) as usize;
    let mut row = Vec::with_capacity(count.min(1600));
    for i in 0..count {
        if body.len() < 4 {
            return Err(short("DataRow"));
        }
        let len = body.get_i32();
        if len < 0 {
            row.push(Value::Null);
            continue;
        }
        let len = len as usize;
        if body.len() < len {
            return Err(short("DataRow"));
        }
        let raw = body.split_to(len);
        let text = String::from_utf8_lossy(&raw);
        let oid = columns.get(i).map(|c| c.1).unwrap_or(0);
        row.push(to_json(oid, &text));
    }
    Ok(row)
}

/// A text-format value as JSON: numbers, booleans and JSON documents keep
/// their type; everything else (numeric, dates, masked values that no longer
/// parse) is a string.
pub(crate) fn to_json(oid: u32, text: &str) -> Value {
    match oid {
        16 => match text {
            "t" => Value::Bool(true),
            "f" => Value::Bool(false),
            _ => Value::String(text.into()),
        },
        20 | 21 | 23 | 26 => text
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or_else(|_| Value::String(text.into())),
        700 | 701 => text
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(Value::from)
            .unwrap_or_else(|| Value::String(text.into())),
        114 | 3802 => serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.into())),
        _ => Value::String(text.into()),
    }
}

/// The PostgreSQL name of a built-in type, or `oid N` for others.
pub(crate) fn type_name(oid: u32) -> String {
    let name = match oid {
        16 => "bool",
        17 => "bytea",
        18 => "char",
        19 => "name",
        20 => "int8",
        21 => "int2",
        23 => "int4",
        25 => "text",
        26 => "oid",
        114 => "json",
        142 => "xml",
        700 => "float4",
        701 => "float8",
        705 => "unknown",
        790 => "money",
        869 => "inet",
        1000 => "bool[]",
        1005 => "int2[]",
        1007 => "int4[]",
        1009 => "text[]",
        1016 => "int8[]",
        1042 => "bpchar",
        1043 => "varchar",
        1082 => "date",
        1083 => "time",
        1114 => "timestamp",
        1184 => "timestamptz",
        1186 => "interval",
        1700 => "numeric",
        2249 => "record",
        2950 => "uuid",
        3802 => "jsonb",
        _ => return format!("oid {oid}"),
    };
    name.to_string()
}

//! The relay: client messages become commands in the core pipeline before
//! they are forwarded; upstream responses are matched to the commands that
//! caused them, pass the masking position, and are recorded as outcomes.
//!
//! All writes to the client happen in the response half, in upstream order,
//! so a refusal injected for a pipelined statement arrives exactly where the
//! server's answer would have.

use crate::catalog::{Catalog, TableInfo};
use crate::frame::{
    data_row_values, encode_data_row_refs, split_message, Reader, MAX_BACKEND_MESSAGE,
    MAX_FRONTEND_MESSAGE,
};
use crate::upstream::{error_fields, Upstream};
use crate::{wire, BoxedStream};
use bytes::BytesMut;
use sluice_core::masking::RowMasker;
use sluice_core::pipeline::SessionInfo;
use sluice_core::session::{OutcomeRecorder, SessionError, SessionHandle};
use sluice_core::{Column, Command, CommandKind, Decision, Denial, Outcome};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::mpsc;

/// Client bytes buffered while a command's decision is pending.
const PENDING_WHILE_DECIDING: usize = 1 << 20;
/// How long the response half gets to deliver a fatal error before the session is cut.
const FATAL_GRACE: std::time::Duration = std::time::Duration::from_secs(5);
/// Rows of each result kept for replay.
const SAMPLE_ROWS: usize = 20;
/// Characters of each sampled value kept for replay.
const SAMPLE_VALUE_CHARS: usize = 200;

/// What the response half expects from the upstream, in order.
enum Expect {
    Parse,
    Bind {
        portal: String,
        statement: String,
        formats: Vec<i16>,
    },
    Describe {
        statement: bool,
        name: String,
    },
    Close,
    Execute {
        command_id: u64,
        portal: String,
        started: Started,
    },
    Sync,
    /// A simple Query or FunctionCall: done at ReadyForQuery.
    Query {
        command_id: u64,
        started: Started,
    },
    /// A refused extended-protocol command: the error goes out in its place.
    Refused {
        command_id: u64,
        denial: Denial,
    },
    /// A refused simple Query/FunctionCall: error and ReadyForQuery.
    RefusedSimple {
        command_id: u64,
        denial: Denial,
    },
    /// End the session with this error.
    Fatal {
        code: &'static str,
        message: String,
    },
}

pub struct Relay {
    handle: SessionHandle,
    client: BoxedStream,
    client_buf: BytesMut,
    upstream: Upstream,
    catalog: Option<Arc<Catalog>>,
    cancel: Arc<tokio::sync::Notify>,
}

impl Relay {
    pub fn new(
        handle: SessionHandle,
        client: BoxedStream,
        client_buf: BytesMut,
        upstream: Upstream,
        catalog: Option<Arc<Catalog>>,
        cancel: Arc<tokio::sync::Notify>,
    ) -> Self {
        Relay {
            handle,
            client,
            client_buf,
            upstream,
            catalog,
            cancel,
        }
    }

    pub async fn run(self) -> Result<(), SessionError> {
        let Relay {
            handle,
            client,
            client_buf,
            upstream,
            catalog,
            cancel,
        } = self;
        let (client_r, client_w) = tokio::io::split(client);
        let (up_r, up_w) = tokio::io::split(upstream.stream);
        let (tx, rx) = mpsc::unbounded_channel();
        let mut requests = Requests {
            handle: &handle,
            client: client_r,
            buf: client_buf,
            upstream: up_w,
            expect: tx,
            statements: HashMap::new(),
            portals: HashMap::new(),
            discarding: false,
            fatal_queued: false,
            sql_prepared: SqlPrepared::default(),
            cancel,
        };
        let notices = handle.take_notices();
        let mut responses = Responses {
            notices,
            info: handle.info().clone(),
            masker: handle.masker().clone(),
            recorder: handle.recorder(),
            upstream: up_r,
            buf: upstream.pending,
            client: client_w,
            expect: rx,
            queue: VecDeque::new(),
            status: b'I',
            statement_columns: HashMap::new(),
            portal_columns: HashMap::new(),
            current: None,
            out: BytesMut::with_capacity(16 * 1024),
            catalog,
            tables: HashMap::new(),
            copy_refused: false,
        };
        let requests_done = async {
            let r = requests.run().await;
            if requests.fatal_queued {
                // Let the response half deliver the error in order; it ends the session.
                tokio::time::sleep(FATAL_GRACE).await;
            }
            r
        };
        let result = tokio::select! {
            r = requests_done => r,
            r = responses.run(&handle) => r,
        };
        match &result {
            Ok(reason) => handle.set_end_reason(reason.clone()),
            Err(e) => handle.set_end_reason(format!("error: {e}")),
        }
        result.map(|_| ())
    }
}

/// The client → upstream half.
struct Requests<'a> {
    handle: &'a SessionHandle,
    client: ReadHalf<BoxedStream>,
    buf: BytesMut,
    upstream: WriteHalf<BoxedStream>,
    expect: mpsc::UnboundedSender<Expect>,
    statements: HashMap<String, Arc<str>>,
    portals: HashMap<String, String>,
    /// After a refused extended-protocol command, the server would skip to Sync.
    discarding: bool,
    /// A fatal error for the client is queued; the response half sends it.
    fatal_queued: bool,
    /// SQL-level `PREPARE name AS …` definitions forwarded on this session.
    sql_prepared: SqlPrepared,
    /// Notified by a CancelRequest for this session.
    cancel: Arc<tokio::sync::Notify>,
}

/// Tracks SQL-level prepared statements so that `EXECUTE name` is judged by
/// what it runs. Only texts that can contain these keywords are parsed
/// (keywords cannot be split by comments or escapes, so the prefilter is exact).
#[derive(Default)]
struct SqlPrepared {
    definitions: HashMap<String, String>,
}

/// What a forwarded statement does to the session's prepared statements.
#[derive(Default)]
struct PreparedEffects {
    prepared: Vec<(String, String)>,
    deallocated: Vec<Option<String>>,
}

fn contains_keyword(sql: &str, word: &str) -> bool {
    sql.as_bytes()
        .windows(word.len())
        .any(|w| w.eq_ignore_ascii_case(word.as_bytes()))
}

impl SqlPrepared {
    fn context_for(&self, sql: &str) -> (Vec<String>, PreparedEffects) {
        let mut effects = PreparedEffects::default();
        if !(contains_keyword(sql, "prepare")
            || contains_keyword(sql, "execute")
            || contains_keyword(sql, "deallocate"))
        {
            return (Vec::new(), effects);
        }
        // Unparseable text is refused by the policy's own parse; nothing to track.
        let Ok(classified) = crate::policy::shared_classifier().classify(sql) else {
            return (Vec::new(), effects);
        };
        let mut context = Vec::new();
        let mut local: HashMap<&str, &str> = HashMap::new();
        for st in &classified.statements {
            if let Some((name, inner)) = &st.prepares {
                local.insert(name, inner);
                effects.prepared.push((name.clone(), inner.clone()));
            }
            if let Some(name) = &st.executes {
                let def = local
                    .get(name.as_str())
                    .copied()
                    .or_else(|| self.definitions.get(name).map(String::as_str));
                if let Some(def) = def {
                    context.push(crate::policy::prepared_context(name, def));
                }
            }
            if let Some(d) = &st.deallocates {
                effects.deallocated.push(d.clone());
            }
        }
        (context, effects)
    }

    fn apply(&mut self, effects: PreparedEffects) {
        for d in effects.deallocated {
            match d {
                Some(name) => {
                    self.definitions.remove(&name);
                }
                None => self.definitions.clear(),
            }
        }
        for (name, def) in effects.prepared {
            self.definitions.insert(name, def);
        }
    }
}

impl Requests<'_> {
    async fn run(&mut self) -> Result<String, SessionError> {
        let mut out = BytesMut::with_capacity(16 * 1024);
        loop {
            loop {
                let msg = match split_message(&mut self.buf, MAX_FRONTEND_MESSAGE) {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(e) => {
                        self.fatal(
                            wire::SQLSTATE_PROTOCOL,
                            format!("sluice: invalid message: {e}"),
                        );
                        return Err(SessionError::Client(e.to_string()));
                    }
                };
                match self.handle_message(msg, &mut out).await {
                    Ok(None) => {}
                    Ok(Some(reason)) => {
                        self.upstream.write_all(&out).await.map_err(upstream_err)?;
                        return Ok(reason);
                    }
                    Err(SessionError::Client(m)) => {
                        if !self.fatal_queued {
                            self.fatal(
                                wire::SQLSTATE_PROTOCOL,
                                format!("sluice: protocol violation: {m}"),
                            );
                        }
                        return Err(SessionError::Client(m));
                    }
                    Err(e) => return Err(e),
                }
            }
            if !out.is_empty() {
                self.upstream.write_all(&out).await.map_err(upstream_err)?;
                self.upstream.flush().await.map_err(upstream_err)?;
                out.clear();
            }
            if self.client.read_buf(&mut self.buf).await? == 0 {
                return Ok("client disconnected".into());
            }
        }
    }

    fn push(&self, e: Expect) {
        // The response half only goes away when the session is ending.
        let _ = self.expect.send(e);
    }

    fn fatal(&mut self, code: &'static str, message: String) {
        self.fatal_queued = true;
        self.push(Expect::Fatal { code, message });
    }

    /// Returns `Some(reason)` when the session should end after forwarding `out`.
    async fn handle_message(
        &mut self,
        msg: crate::frame::RawMessage,
        out: &mut BytesMut,
    ) -> Result<Option<String>, SessionError> {
        if self.discarding && msg.tag != b'S' {
            return Ok(None);
        }
        let mut r = Reader::new(msg.body());
        let malformed = |what: &str| SessionError::Client(format!("malformed {what} message"));
        match msg.tag {
            b'Q' => {
                let sql = r.cstr().ok_or_else(|| malformed("Query"))?;
                let (context, effects) = self.sql_prepared.context_for(&sql);
                let command = Command {
                    kind: CommandKind::SqlSimple,
                    text: sql,
                    context,
                };
                match self.decide(command).await? {
                    Decided::Forward(command_id) => {
                        self.sql_prepared.apply(effects);
                        self.push(Expect::Query {
                            command_id,
                            started: Started::now(command_id),
                        });
                        out.extend_from_slice(&msg.bytes);
                    }
                    Decided::Refuse(command_id, denial) => {
                        self.push(Expect::RefusedSimple { command_id, denial })
                    }
                }
            }
            b'P' => {
                let name = r.cstr().ok_or_else(|| malformed("Parse"))?;
                let sql = r.cstr().ok_or_else(|| malformed("Parse"))?;
                self.statements.insert(name, Arc::from(sql));
                self.push(Expect::Parse);
                out.extend_from_slice(&msg.bytes);
            }
            b'B' => {
                let portal = r.cstr().ok_or_else(|| malformed("Bind"))?;
                let statement = r.cstr().ok_or_else(|| malformed("Bind"))?;
                let formats = bind_result_formats(&mut r).ok_or_else(|| malformed("Bind"))?;
                self.portals.insert(portal.clone(), statement.clone());
                self.push(Expect::Bind {
                    portal,
                    statement,
                    formats,
                });
                out.extend_from_slice(&msg.bytes);
            }
            b'D' => {
                let kind = r.bytes(1).ok_or_else(|| malformed("Describe"))?[0];
                let name = r.cstr().ok_or_else(|| malformed("Describe"))?;
                self.push(Expect::Describe {
                    statement: kind == b'S',
                    name,
                });
                out.extend_from_slice(&msg.bytes);
            }
            b'C' => {
                let kind = r.bytes(1).ok_or_else(|| malformed("Close"))?[0];
                let name = r.cstr().ok_or_else(|| malformed("Close"))?;
                if kind == b'S' {
                    self.statements.remove(&name);
                } else {
                    self.portals.remove(&name);
                }
                self.push(Expect::Close);
                out.extend_from_slice(&msg.bytes);
            }
            b'E' => {
                let portal = r.cstr().ok_or_else(|| malformed("Execute"))?;
                let statement = self.portals.get(&portal).cloned();
                let sql = statement
                    .as_ref()
                    .and_then(|s| self.statements.get(s))
                    .map(|s| s.to_string());
                let command = Command {
                    kind: CommandKind::SqlExecute {
                        statement: statement.clone().unwrap_or_default(),
                        portal: portal.clone(),
                    },
                    // An Execute of a portal we never saw bound is still
                    // judged (as unknown text); the upstream will reject it.
                    text: sql.unwrap_or_default(),
                    context: vec![],
                };
                let (context, effects) = self.sql_prepared.context_for(&command.text);
                let command = Command { context, ..command };
                match self.decide(command).await? {
                    Decided::Forward(command_id) => {
                        self.sql_prepared.apply(effects);
                        self.push(Expect::Execute {
                            command_id,
                            portal,
                            started: Started::now(command_id),
                        });
                        out.extend_from_slice(&msg.bytes);
                    }
                    Decided::Refuse(command_id, denial) => {
                        self.push(Expect::Refused { command_id, denial });
                        self.discarding = true;
                    }
                }
            }
            b'S' => {
                self.discarding = false;
                self.push(Expect::Sync);
                out.extend_from_slice(&msg.bytes);
            }
            b'F' => {
                let oid = r.i32().ok_or_else(|| malformed("FunctionCall"))? as u32;
                let command = Command {
                    kind: CommandKind::FunctionCall { function_oid: oid },
                    text: format!("<fast-path function call, oid {oid}>"),
                    context: vec![],
                };
                match self.decide(command).await? {
                    Decided::Forward(command_id) => {
                        self.push(Expect::Query {
                            command_id,
                            started: Started::now(command_id),
                        });
                        out.extend_from_slice(&msg.bytes);
                    }
                    Decided::Refuse(command_id, denial) => {
                        self.push(Expect::RefusedSimple { command_id, denial })
                    }
                }
            }
            // Flush and COPY data/done/fail carry no command.
            b'H' | b'd' | b'c' | b'f' => out.extend_from_slice(&msg.bytes),
            b'X' => {
                out.extend_from_slice(&msg.bytes);
                return Ok(Some("client terminated".into()));
            }
            other => {
                // Unknown messages are never passed through.
                self.fatal(
                    wire::SQLSTATE_PROTOCOL,
                    format!("sluice: unsupported message type {:?}", other as char),
                );
                return Err(SessionError::Client(format!(
                    "unsupported message type {:?}",
                    other as char
                )));
            }
        }
        Ok(None)
    }

    /// Runs the pipeline for a command while watching the client: a client
    /// that leaves while its command waits (e.g. held for approval) takes the
    /// command with it, so it never runs.
    async fn decide(&mut self, command: Command) -> Result<Decided, SessionError> {
        let handle: &SessionHandle = self.handle;
        let decision = Self::decided(handle, command);
        tokio::pin!(decision);
        loop {
            // Bytes pipelined meanwhile stay buffered, up to a bound.
            let room = self.buf.len() < PENDING_WHILE_DECIDING;
            tokio::select! {
                biased;
                d = &mut decision => return Ok(d),
                _ = self.cancel.notified() => {
                    // A cancel while the command waits (for approval): it never runs.
                    return Ok(Decided::Refuse(
                        0,
                        Denial {
                            rule: None,
                            message: "canceled by the client while waiting for a decision; it was not run".into(),
                            hint: None,
                        },
                    ));
                }
                n = self.client.read_buf(&mut self.buf), if room => {
                    if n? == 0 {
                        return Err(SessionError::Client(
                            "client disconnected while a command was pending".into(),
                        ));
                    }
                }
            }
        }
    }

    async fn decided(handle: &SessionHandle, command: Command) -> Decided {
        match handle.decide(command).await {
            Ok(Decision::Forward { command_id }) => Decided::Forward(command_id),
            Ok(Decision::Refuse { command_id, denial }) => Decided::Refuse(command_id, denial),
            // Write-ahead audit failed: the command must not run.
            Err(e) => {
                tracing::error!(message = "Audit store failed; refusing the command.", error = %e);
                Decided::Refuse(0, Denial::unrecorded())
            }
        }
    }
}

enum Decided {
    Forward(u64),
    Refuse(u64, Denial),
}

pub(crate) fn bind_result_formats(r: &mut Reader<'_>) -> Option<Vec<i16>> {
    let n = r.i16()?;
    for _ in 0..n.max(0) {
        r.i16()?;
    }
    let params = r.i16()?;
    for _ in 0..params.max(0) {
        let len = r.i32()?;
        if len > 0 {
            r.bytes(len as usize)?;
        }
    }
    let n = r.i16()?;
    (0..n.max(0)).map(|_| r.i16()).collect()
}

fn upstream_err(e: std::io::Error) -> SessionError {
    SessionError::Upstream(e.to_string())
}

/// When a forwarded command left for the upstream, and its `upstream` span
/// (open until the command's response ends).
#[derive(Clone)]
struct Started {
    at: Instant,
    span: tracing::Span,
}

impl Started {
    fn now(command_id: u64) -> Self {
        Started {
            at: Instant::now(),
            span: tracing::info_span!("upstream", command_id, error = tracing::field::Empty),
        }
    }

    /// The span of the masking position over one result of this command.
    fn masking_span(&self) -> tracing::Span {
        tracing::info_span!(parent: &self.span, "masking", masked = tracing::field::Empty)
    }
}

/// A result being streamed to the client.
struct Current {
    command_id: u64,
    started: Started,
    /// Open while a masking plan rewrites this result (a child of the upstream span).
    masking: Option<tracing::Span>,
    columns: Option<Arc<Vec<Column>>>,
    plan: Option<Box<dyn RowMasker>>,
    outcome: Outcome,
}

/// The upstream → client half.
struct Responses {
    /// Pipeline messages for the client while a command is pending.
    notices: Option<mpsc::UnboundedReceiver<String>>,
    info: Arc<SessionInfo>,
    masker: Arc<dyn sluice_core::masking::ResponseMasker>,
    recorder: OutcomeRecorder,
    upstream: ReadHalf<BoxedStream>,
    buf: BytesMut,
    client: WriteHalf<BoxedStream>,
    expect: mpsc::UnboundedReceiver<Expect>,
    queue: VecDeque<Expect>,
    status: u8,
    statement_columns: HashMap<String, Arc<Vec<Column>>>,
    portal_columns: HashMap<String, Arc<Vec<Column>>>,
    current: Option<Current>,
    out: BytesMut,
    /// Where source-table names come from, when the masker needs them.
    catalog: Option<Arc<Catalog>>,
    /// Tables resolved on this session (the catalog caches across sessions).
    tables: HashMap<u32, Arc<TableInfo>>,
    /// A COPY TO STDOUT whose output is being withheld.
    copy_refused: bool,
}

impl Responses {
    async fn resolve_tables(&mut self, body: &[u8]) -> Result<(), crate::PgError> {
        let Some(catalog) = &self.catalog else {
            return Ok(());
        };
        let missing: Vec<u32> = row_description_oids(body)
            .into_iter()
            .filter(|o| !self.tables.contains_key(o))
            .collect();
        if !missing.is_empty() {
            let found = catalog.tables(&missing).await?;
            self.tables.extend(found);
        }
        Ok(())
    }

    async fn run(&mut self, handle: &SessionHandle) -> Result<String, SessionError> {
        let ended = handle.ended();
        tokio::pin!(ended);
        loop {
            tokio::select! {
                biased;
                reason = &mut ended => {
                    wire::error(&mut self.out, true, wire::SQLSTATE_SHUTDOWN, &format!("sluice: session ended: {reason}"), None, Some("Get a new token and reconnect."));
                    self.flush().await?;
                    return Ok(reason);
                }
                e = self.expect.recv() => match e {
                    Some(e) => self.queue.push_back(e),
                    None => return Ok("client side closed".into()),
                },
                Some(n) = recv_notice(&mut self.notices) => wire::notice(&mut self.out, &n),
                n = self.upstream.read_buf(&mut self.buf) => {
                    if n.map_err(upstream_err)? == 0 {
                        // Refusals still queued go out first, then why the session ends.
                        let _ = self.emit_ready_refusals();
                        wire::error(&mut self.out, true, wire::SQLSTATE_UPSTREAM, "sluice: the upstream closed the connection", None, None);
                        self.flush().await?;
                        return Ok("upstream closed".into());
                    }
                    // Expectations are queued before their message is sent
                    // upstream, so every answer's expectation is here now.
                    while let Ok(e) = self.expect.try_recv() {
                        self.queue.push_back(e);
                    }
                    loop {
                        let msg = match split_message(&mut self.buf, MAX_BACKEND_MESSAGE) {
                            Ok(Some(m)) => m,
                            Ok(None) => break,
                            Err(e) => {
                                wire::error(&mut self.out, true, wire::SQLSTATE_UPSTREAM, "sluice: the upstream sent an invalid message; the session was ended", None, None);
                                self.flush().await?;
                                return Err(SessionError::Upstream(e.to_string()));
                            }
                        };
                        if msg.tag == b'T' {
                            if let Err(e) = self.resolve_tables(msg.body()).await {
                                // Masking by table cannot be decided: fail closed.
                                tracing::error!(message = "Source tables of a result could not be resolved; ending the session.", error = %e);
                                wire::error(&mut self.out, true, wire::SQLSTATE_UPSTREAM, "sluice: the gateway could not decide how to mask this result; the session was ended", None, Some("Retry; tell the Sluice administrator if this persists."));
                                self.flush().await?;
                                return Err(SessionError::Upstream(e.to_string()));
                            }
                        }
                        self.on_message(msg);
                        if let Some(reason) = self.emit_ready_refusals() {
                            // A fatal error was queued: deliver it, then end.
                            self.flush().await?;
                            return Err(SessionError::Client(reason));
                        }
                        if self.out.len() >= 64 * 1024 {
                            self.flush().await?;
                        }
                    }
                }
            }
            if let Some(reason) = self.emit_ready_refusals() {
                self.flush().await?;
                return Err(SessionError::Client(reason));
            }
            if !self.out.is_empty() {
                self.flush().await?;
            }
        }
    }

    async fn flush(&mut self) -> Result<(), SessionError> {
        self.client.write_all(&self.out).await?;
        self.client.flush().await?;
        self.out.clear();
        Ok(())
    }

    /// Sends refusals that have reached the front of the queue. Returns a
    /// reason when a fatal error was sent and the session must end.
    fn emit_ready_refusals(&mut self) -> Option<String> {
        loop {
            match self.queue.front() {
                Some(Expect::Refused { .. }) => {
                    if let Some(Expect::Refused { command_id, denial }) = self.queue.pop_front() {
                        self.refuse(command_id, &denial);
                    }
                }
                Some(Expect::RefusedSimple { .. }) => {
                    if let Some(Expect::RefusedSimple { command_id, denial }) =
                        self.queue.pop_front()
                    {
                        self.refuse(command_id, &denial);
                        wire::ready(&mut self.out, self.status);
                    }
                }
                Some(Expect::Fatal { .. }) => {
                    if let Some(Expect::Fatal { code, message }) = self.queue.pop_front() {
                        wire::error(&mut self.out, true, code, &message, None, None);
                        return Some(message);
                    }
                }
                _ => return None,
            }
        }
    }

    fn refuse(&mut self, command_id: u64, denial: &Denial) {
        let message = format!("sluice: {}", denial.message);
        let detail = denial.rule.as_ref().map(|r| format!("rule: {r}"));
        wire::error(
            &mut self.out,
            false,
            wire::SQLSTATE_DENIED,
            &message,
            detail.as_deref(),
            denial.hint.as_deref(),
        );
        if command_id != 0 {
            self.recorder.finished(
                command_id,
                Outcome {
                    error: Some(message),
                    ..Outcome::default()
                },
            );
        }
    }

    fn begin(&mut self, command_id: u64, started: Started, columns: Option<Arc<Vec<Column>>>) {
        let plan = columns
            .as_ref()
            .and_then(|c| self.masker.plan(&self.info, c));
        let masking = plan.as_ref().map(|_| started.masking_span());
        let mut outcome = Outcome::default();
        if let Some(c) = &columns {
            outcome.columns = c.iter().map(|c| c.name.clone()).collect();
        }
        self.current = Some(Current {
            command_id,
            started,
            masking,
            columns,
            plan,
            outcome,
        });
    }

    /// Starts the result of the command at the queue front if none is open.
    fn ensure_current(&mut self) {
        if self.current.is_some() {
            return;
        }
        match self.queue.front() {
            Some(Expect::Execute {
                command_id,
                portal,
                started,
            }) => {
                let (id, st) = (*command_id, started.clone());
                let cols = self.portal_columns.get(portal).cloned();
                self.begin(id, st, cols);
            }
            Some(Expect::Query {
                command_id,
                started,
            }) => {
                let (id, st) = (*command_id, started.clone());
                self.begin(id, st, None);
            }
            _ => {}
        }
    }

    fn finish(&mut self) {
        if let Some(mut c) = self.current.take() {
            absorb_counts(&mut c);
            c.outcome.duration_us = c.started.at.elapsed().as_micros() as u64;
            if let Some(span) = &c.masking {
                span.record("masked", c.outcome.masked.values().sum::<u64>());
            }
            if let Some(e) = &c.outcome.error {
                c.started.span.record("error", e.as_str());
            }
            self.recorder.finished(c.command_id, c.outcome);
        }
    }

    fn on_message(&mut self, msg: crate::frame::RawMessage) {
        match msg.tag {
            b'T' => {
                let columns =
                    Arc::new(parse_row_description(msg.body(), &self.tables).unwrap_or_default());
                match self.queue.front() {
                    Some(Expect::Describe { statement, name }) => {
                        let target = if *statement {
                            &mut self.statement_columns
                        } else {
                            &mut self.portal_columns
                        };
                        target.insert(name.clone(), columns);
                        self.queue.pop_front();
                    }
                    Some(Expect::Query { .. }) => {
                        self.ensure_current();
                        if let Some(c) = self.current.as_mut() {
                            absorb_counts(c);
                            c.plan = self.masker.plan(&self.info, &columns);
                            if c.plan.is_some() && c.masking.is_none() {
                                c.masking = Some(c.started.masking_span());
                            }
                            c.outcome.columns = columns.iter().map(|c| c.name.clone()).collect();
                            c.columns = Some(columns);
                        }
                    }
                    _ => {}
                }
                self.out.extend_from_slice(&msg.bytes);
            }
            b'n' => {
                if let Some(Expect::Describe { statement, name }) = self.queue.front() {
                    if !*statement {
                        self.portal_columns.remove(name);
                    }
                    self.queue.pop_front();
                }
                self.out.extend_from_slice(&msg.bytes);
            }
            b'1' | b'3' => {
                if matches!(self.queue.front(), Some(Expect::Parse | Expect::Close)) {
                    self.queue.pop_front();
                }
                self.out.extend_from_slice(&msg.bytes);
            }
            b'2' => {
                if let Some(Expect::Bind { .. }) = self.queue.front() {
                    if let Some(Expect::Bind {
                        portal,
                        statement,
                        formats,
                    }) = self.queue.pop_front()
                    {
                        match self.statement_columns.get(&statement) {
                            Some(cols) => {
                                let bound = apply_formats(cols, &formats);
                                self.portal_columns.insert(portal, bound);
                            }
                            None => {
                                self.portal_columns.remove(&portal);
                            }
                        }
                    }
                }
                self.out.extend_from_slice(&msg.bytes);
            }
            b'D' => {
                self.ensure_current();
                match self.current.as_mut() {
                    Some(c) => {
                        c.outcome.rows += 1;
                        c.outcome.bytes += msg.bytes.len() as u64;
                        let want_sample = c.outcome.sample.len() < SAMPLE_ROWS;
                        if c.plan.is_none() && !want_sample {
                            if c.outcome.rows as usize > SAMPLE_ROWS {
                                c.outcome.truncated = true;
                            }
                            self.out.extend_from_slice(&msg.bytes);
                            return;
                        }
                        let Some(values) = data_row_values(msg.body()) else {
                            if c.plan.is_some() {
                                // A row the masking plan cannot read could carry
                                // anything: it must not reach the client unmasked.
                                tracing::warn!(message = "Ending a session: the upstream sent a malformed row while masking.", session = %self.info.id);
                                self.queue.push_front(Expect::Fatal {
                                    code: wire::SQLSTATE_PROTOCOL,
                                    message: "sluice: session ended: the upstream sent a malformed row that could not be masked".into(),
                                });
                                return;
                            }
                            // Nothing to mask: pass it and let the client's
                            // parser reject it.
                            self.out.extend_from_slice(&msg.bytes);
                            return;
                        };
                        if let Some(plan) = c.plan.as_mut() {
                            let changes = plan.mask_row_changes(&values);
                            if changes.is_empty() {
                                if want_sample {
                                    c.outcome.sample.push(sample_row(
                                        values.iter().copied(),
                                        c.columns.as_deref(),
                                    ));
                                }
                                self.out.extend_from_slice(&msg.bytes);
                                return;
                            }
                            let mut owned: Vec<Option<&[u8]>> = values.clone();
                            for (i, v) in &changes {
                                if let Some(slot) = owned.get_mut(*i) {
                                    *slot = v.as_deref();
                                }
                            }
                            if want_sample {
                                c.outcome
                                    .sample
                                    .push(sample_row(owned.iter().copied(), c.columns.as_deref()));
                            }
                            encode_data_row_refs(&owned, &mut self.out);
                        } else {
                            c.outcome
                                .sample
                                .push(sample_row(values.iter().copied(), c.columns.as_deref()));
                            self.out.extend_from_slice(&msg.bytes);
                        }
                    }
                    None => self.out.extend_from_slice(&msg.bytes),
                }
            }
            b'H' => {
                // COPY … TO STDOUT sends rows the gateway cannot split into
                // columns: with column rules in force it is refused (fail closed).
                if self.masker.has_column_rules(&self.info) {
                    self.copy_refused = true;
                    return;
                }
                self.out.extend_from_slice(&msg.bytes);
            }
            b'd' | b'c' if self.copy_refused => {}
            b'd' => {
                self.ensure_current();
                let masked = self.masker.mask_bytes(&self.info, msg.body());
                if let Some(c) = self.current.as_mut() {
                    c.outcome.bytes += msg.bytes.len() as u64;
                    if let Some((_, counts)) = &masked {
                        for (name, n) in counts.iter() {
                            *c.outcome.masked.entry(name.to_string()).or_default() += n;
                        }
                    }
                }
                match masked {
                    Some((bytes, _)) => {
                        self.out.extend_from_slice(b"d");
                        self.out
                            .extend_from_slice(&((bytes.len() + 4) as i32).to_be_bytes());
                        self.out.extend_from_slice(&bytes);
                    }
                    None => self.out.extend_from_slice(&msg.bytes),
                }
            }
            b'C' if self.copy_refused => {
                self.copy_refused = false;
                let message = "sluice: COPY TO STDOUT cannot be masked column by column on this connection, so its output was withheld";
                wire::error(
                    &mut self.out,
                    false,
                    wire::SQLSTATE_DENIED,
                    message,
                    None,
                    Some("Use SELECT: its columns are masked."),
                );
                self.ensure_current();
                if let Some(c) = self.current.as_mut() {
                    c.outcome.error = Some(message.to_string());
                }
                if matches!(self.queue.front(), Some(Expect::Execute { .. })) {
                    self.finish();
                    self.queue.pop_front();
                }
            }
            b'C' | b'I' | b's' => {
                let tag = match msg.tag {
                    b'C' => Reader::new(msg.body()).cstr().unwrap_or_default(),
                    b'I' => "EMPTY".to_string(),
                    _ => "SUSPENDED".to_string(),
                };
                self.ensure_current();
                if let Some(c) = self.current.as_mut() {
                    c.outcome.tag = Some(tag);
                }
                if matches!(self.queue.front(), Some(Expect::Execute { .. })) {
                    self.finish();
                    self.queue.pop_front();
                }
                self.out.extend_from_slice(&msg.bytes);
            }
            b'N' => match self.masked_fields(&msg) {
                Some(bytes) => self.out.extend_from_slice(&bytes),
                None => self.out.extend_from_slice(&msg.bytes),
            },
            b'E' => {
                // Values echoed in errors (`invalid input syntax …: "123-45-6789"`)
                // are masked like rows.
                let masked = self.masked_fields(&msg);
                let body: Vec<u8> = masked
                    .as_ref()
                    .map_or_else(|| msg.body().to_vec(), |b| b[5..].to_vec());
                let (code, message) = error_fields(&body);
                let text = format!("{code}: {message}");
                match self.queue.front() {
                    Some(Expect::Query { .. }) => {
                        self.ensure_current();
                        if let Some(c) = self.current.as_mut() {
                            c.outcome.error = Some(text);
                        }
                    }
                    Some(Expect::Sync) | None => {}
                    Some(_) => {
                        // Extended protocol: the server skips to Sync.
                        let mut first = true;
                        while let Some(front) = self.queue.front() {
                            if matches!(
                                front,
                                Expect::Sync | Expect::Query { .. } | Expect::Fatal { .. }
                            ) {
                                break;
                            }
                            if let Some(Expect::Execute {
                                command_id,
                                started,
                                ..
                            }) = self.queue.pop_front()
                            {
                                self.ensure_current_for(command_id, started);
                                if let Some(c) = self.current.as_mut() {
                                    c.outcome.error = Some(if first {
                                        text.clone()
                                    } else {
                                        "not executed: an earlier message in the same pipeline failed".into()
                                    });
                                }
                                first = false;
                                self.finish();
                            }
                        }
                    }
                }
                match masked {
                    Some(bytes) => self.out.extend_from_slice(&bytes),
                    None => self.out.extend_from_slice(&msg.bytes),
                }
            }
            b'Z' => {
                self.status = msg.body().first().copied().unwrap_or(b'I');
                while let Some(front) = self.queue.pop_front() {
                    match front {
                        Expect::Query {
                            command_id,
                            started,
                        } => {
                            self.ensure_current_for(command_id, started);
                            self.finish();
                            break;
                        }
                        Expect::Sync => break,
                        Expect::Execute {
                            command_id,
                            started,
                            ..
                        } => {
                            self.ensure_current_for(command_id, started);
                            self.finish();
                        }
                        // Refusals and fatal errors must still go out in order.
                        e @ (Expect::Refused { .. }
                        | Expect::RefusedSimple { .. }
                        | Expect::Fatal { .. }) => {
                            self.queue.push_front(e);
                            break;
                        }
                        _ => {}
                    }
                }
                self.out.extend_from_slice(&msg.bytes);
            }
            b'S' => {
                if let Some(why) = crate::hazard::parameter_status(msg.body())
                    .and_then(|(k, v)| crate::hazard::lexing_hazard(&k, &v))
                {
                    tracing::warn!(message = "Ending a session that switched to a setting the gateway cannot parse under.", reason = %why);
                    self.queue.push_front(Expect::Fatal {
                        code: wire::SQLSTATE_NOT_AUTHORIZED,
                        message: format!("sluice: session ended: {why}"),
                    });
                    return;
                }
                self.out.extend_from_slice(&msg.bytes);
            }
            _ => self.out.extend_from_slice(&msg.bytes),
        }
    }

    /// An ErrorResponse/NoticeResponse with its text fields masked, or `None`
    /// when nothing in it needed masking.
    fn masked_fields(&self, msg: &crate::frame::RawMessage) -> Option<BytesMut> {
        let mut r = Reader::new(msg.body());
        let mut fields: Vec<(u8, String)> = Vec::new();
        let mut changed = false;
        while let Some(kind) = r.bytes(1) {
            if kind[0] == 0 {
                break;
            }
            let value = r.cstr()?;
            // Severity, code and positions carry no data.
            let value = match kind[0] {
                b'S' | b'V' | b'C' | b'P' | b'p' | b'L' | b'R' | b'F' => value,
                _ => match self.masker.mask_text(&self.info, &value) {
                    Some((masked, _)) => {
                        changed = true;
                        masked
                    }
                    None => value,
                },
            };
            fields.push((kind[0], value));
        }
        if !changed {
            return None;
        }
        let mut out = BytesMut::new();
        let body_len: usize = fields.iter().map(|(_, v)| 1 + v.len() + 1).sum::<usize>() + 1;
        out.extend_from_slice(&[msg.tag]);
        out.extend_from_slice(&((body_len + 4) as i32).to_be_bytes());
        for (k, v) in fields {
            out.extend_from_slice(&[k]);
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(&[0]);
        }
        out.extend_from_slice(&[0]);
        Some(out)
    }

    fn ensure_current_for(&mut self, command_id: u64, started: Started) {
        if self.current.as_ref().map(|c| c.command_id) != Some(command_id) {
            self.finish();
            self.begin(command_id, started, None);
        }
    }
}

async fn recv_notice(notices: &mut Option<mpsc::UnboundedReceiver<String>>) -> Option<String> {
    match notices {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The distinct source-table OIDs of a RowDescription.
pub(crate) fn row_description_oids(body: &[u8]) -> Vec<u32> {
    let mut oids: Vec<u32> = parse_row_description(body, &HashMap::new())
        .unwrap_or_default()
        .iter()
        .map(|c| c.table_oid)
        .filter(|&o| o != 0)
        .collect();
    oids.sort_unstable();
    oids.dedup();
    oids
}

/// Moves a finished plan's masking counts into the command's outcome.
fn absorb_counts(c: &mut Current) {
    if let Some(plan) = &c.plan {
        for (name, n) in plan.counts().iter() {
            *c.outcome.masked.entry(name.to_string()).or_default() += n;
        }
    }
}

pub(crate) fn parse_row_description(
    body: &[u8],
    tables: &HashMap<u32, Arc<TableInfo>>,
) -> Option<Vec<Column>> {
    let mut r = Reader::new(body);
    let n = r.i16()?;
    let mut cols = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n.max(0) {
        let name = r.cstr()?;
        let table_oid = r.i32()? as u32;
        let column_number = r.i16()?;
        let type_oid = r.i32()? as u32;
        let _size = r.i16()?;
        let _modifier = r.i32()?;
        let format = r.i16()?;
        let table = tables.get(&table_oid);
        cols.push(Column {
            name,
            table_oid,
            column_number,
            type_oid,
            binary: format == 1,
            table: table.map(|t| format!("{}.{}", t.schema, t.name)),
            source_column: table.and_then(|t| t.columns.get(&column_number).cloned()),
        });
    }
    Some(cols)
}

/// A statement's columns with the result formats a Bind asked for (a
/// Describe of the statement always says text).
fn apply_formats(cols: &Arc<Vec<Column>>, formats: &[i16]) -> Arc<Vec<Column>> {
    if formats.is_empty() {
        return cols.clone();
    }
    Arc::new(
        cols.iter()
            .enumerate()
            .map(|(i, c)| {
                let f = if formats.len() == 1 {
                    formats[0]
                } else {
                    formats.get(i).copied().unwrap_or(0)
                };
                Column {
                    binary: f == 1,
                    ..c.clone()
                }
            })
            .collect(),
    )
}

fn sample_row<'v>(
    values: impl Iterator<Item = Option<&'v [u8]>>,
    columns: Option<&Vec<Column>>,
) -> Vec<Option<String>> {
    values
        .enumerate()
        .map(|(i, v)| {
            v.map(|b| {
                let binary = columns.and_then(|c| c.get(i)).is_some_and(|c| c.binary);
                let mut s = match std::str::from_utf8(b) {
                    Ok(s) if !binary => s.to_string(),
                    _ => format!(
                        "\\x{}",
                        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
                    ),
                };
                if s.chars().count() > SAMPLE_VALUE_CHARS {
                    s = s.chars().take(SAMPLE_VALUE_CHARS).collect::<String>() + "…";
                }
                s
            })
        })
        .collect()
}

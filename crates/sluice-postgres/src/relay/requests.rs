//! The client → upstream half: every message is read whole, statements and
//! portals go through the registry (so the upstream runs exactly the text a
//! command was judged on), Query and Execute are decided before a byte of
//! them is forwarded, and barriers hold the pipeline until the server has
//! answered a statement that changes session state.

use super::barrier::{self, Progress};
use super::gate::{self, GateHold};
use super::prepared::{PreparedEffects, SqlPrepared};
use super::registry::{NameError, Registry};
use super::tags::frontend as tag;
use super::{bind_result_formats, upstream_err, Expect, Started, Views};
use crate::catalog::Catalog;
use crate::frame::{
    split_message_charged, Charge, FrameError, RawMessage, Reader, MAX_FRONTEND_MESSAGE,
};
use crate::sql::lineage::{catalog_side_channel, side_channel, RuledColumns, SessionRules};
use crate::sql::{Classification, SqlClass};
use crate::{wire, BoxedStream};
use bytes::{BufMut, BytesMut};
use sluice_core::session::{SessionError, SessionHandle};
use sluice_core::sync::MutexExt;
use sluice_core::sync::QueueSender;
use sluice_core::{Action, Command, CommandKind, Decision, Denial};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{watch, Notify};

/// Client bytes buffered while a command's decision (or a barrier) is pending.
const PENDING_WHILE_DECIDING: usize = 1 << 20;

/// Statements whose judging generation is remembered (more: all forgotten,
/// and judged again at their next Bind).
const MAX_PARSED_GENERATIONS: usize = 4096;

/// A forwarded statement the pipeline waits on, and what it changes once done.
struct Barrier {
    seq: u64,
    /// Sent inside an extended-protocol batch: settled only by the next
    /// ReadyForQuery (see `Unsettled`).
    extended: bool,
    /// A Sync went out after it.
    synced: bool,
    effects: PreparedEffects,
    /// The statement changes the schema: cached catalog answers go.
    ddl: bool,
    /// It may define a view or routine (`StatementInfo::defines_code`).
    defines_code: bool,
}

impl Analysis {
    /// For what the gateway cannot read (a fast-path call): a barrier.
    fn opaque() -> Self {
        Analysis {
            classified: Vec::new(),
            ddl: false,
            defines_code: false,
            context: Vec::new(),
            lineage_text: None,
            effects: PreparedEffects::default(),
            barrier: true,
        }
    }
}

/// What the relay learns from a statement text before judging it.
struct Analysis {
    /// The statement's classification, and those of the prepared
    /// definitions it runs (for the catalog lookup).
    classified: Vec<Arc<Classification>>,
    ddl: bool,
    defines_code: bool,
    context: Vec<String>,
    /// What the statement's result columns derive from, when that is not
    /// its own text: the definition a lone SQL `EXECUTE name` runs.
    lineage_text: Option<Arc<str>>,
    effects: PreparedEffects,
    barrier: bool,
}

impl Analysis {
    /// The statements of the text and of the definitions it runs.
    fn statements(&self) -> impl Iterator<Item = &crate::sql::StatementInfo> {
        self.classified.iter().flat_map(|c| c.statements.iter())
    }

    /// Nothing known of the text: the pipeline refuses it on its own
    /// (unparseable, or too large to record).
    fn unjudged() -> Self {
        Analysis {
            classified: Vec::new(),
            ddl: false,
            defines_code: false,
            lineage_text: None,
            context: Vec::new(),
            effects: PreparedEffects::default(),
            barrier: false,
        }
    }
}

pub(super) struct Requests<'a> {
    handle: &'a SessionHandle,
    client: ReadHalf<BoxedStream>,
    buf: BytesMut,
    upstream: WriteHalf<BoxedStream>,
    expect: QueueSender<Expect>,
    registry: Registry,
    /// After a message the gateway answered with an error, the server would
    /// skip to Sync: so does the gateway.
    discarding: bool,
    /// A fatal error for the client is queued; the response half sends it.
    fatal_queued: bool,
    sql_prepared: SqlPrepared,
    /// Notified by a CancelRequest for this session.
    cancel: Arc<Notify>,
    progress: watch::Receiver<Progress>,
    /// Upstream statement names whose Parse the server did not carry out.
    failed_parses: Arc<Mutex<Vec<Arc<str>>>>,
    /// Forwarded commands so far.
    seq: u64,
    barrier: Option<Barrier>,
    /// Where views and user functions are looked up for the policy.
    resolver: Option<Arc<Catalog>>,
    /// This session's share of the gateway-wide budget for partial messages.
    charge: Charge,
    /// An extended-protocol barrier was answered, but the server reports
    /// changed settings only before its next ReadyForQuery.
    unsettled: Option<Unsettled>,
    /// A view or routine was defined in a transaction that may still be
    /// open: `Progress::ready` before it completed.
    uncommitted_code: Option<u64>,
    /// Shared with the response half, which forgets the caches again when
    /// that transaction ends.
    uncommitted: Arc<super::catalog_context::Uncommitted>,
    /// This session's name at the resolver's gate.
    gate_session: u64,
    /// The gate hold of the message being judged, taken by what forwards it.
    held: Option<GateHold>,
    /// The definitions generation each upstream statement was judged in
    /// where it was parsed.
    parsed_in: HashMap<Arc<str>, u64>,
    /// The definitions generation each portal was bound in: the server
    /// fixed its plan then.
    bound_in: HashMap<String, u64>,
    /// DDL was forwarded in a transaction that may still be open:
    /// `Progress::ready` then. Its COMMIT publishes it.
    ddl_in_transaction: Option<u64>,
    /// A Parse or Bind holding the gate went out with nothing after it
    /// that makes the server answer: a Flush is added.
    unanswered_hold: bool,
}

/// Nothing more is judged until the server's next ReadyForQuery: waited for
/// when a Sync is on its way, refused otherwise (the client holds its Sync
/// behind the statement; waiting would never end).
#[derive(Clone, Copy)]
struct Unsettled {
    ready_at: u64,
    synced: bool,
}

enum Decided {
    Forward(u64),
    Refuse(u64, Denial),
}

/// A statement's fate where it is parsed (`Requests::at_parse`).
enum AtParse {
    /// Forwarded; judged, and recorded, at each Execute.
    Pass,
    /// Judged (and recorded) by the full pipeline now.
    Judge,
    /// Refused by the gateway itself, for this reason.
    Refuse(&'static str),
}

/// Whether a transaction marked at `Progress::ready` `mark` may still be
/// open (no ReadyForQuery has reported none open since); forgets the mark
/// when it is over.
fn still_open(mark: &mut Option<u64>, last_idle: u64) -> bool {
    if mark.is_some_and(|m| last_idle > m) {
        *mark = None;
    }
    mark.is_some()
}

fn malformed(what: &str) -> SessionError {
    SessionError::Client(format!("malformed {what} message"))
}

/// Appends a message of type `tag` with `body`.
fn put_message(out: &mut BytesMut, tag: u8, body: &[&[u8]]) {
    let len: usize = body.iter().map(|b| b.len()).sum::<usize>() + 4;
    out.put_u8(tag);
    out.put_i32(len as i32);
    for b in body {
        out.extend_from_slice(b);
    }
}

/// The bytes after `n` NUL-terminated strings of a body (the rest of a
/// Parse or Bind after its names), or `None` if they are not there.
/// The context line binding an Execute to its Bind's parameters (see
/// `sluice_core::approval::fingerprint`): a digest of the parameter format
/// codes, values and result formats, so that a retry grant approved for
/// `… where id = $1` with one value does not run it with another. `None`
/// when the Bind has no parameters (the text is the whole command).
fn parameters_context(rest: &[u8]) -> Option<Arc<str>> {
    use sha2::Digest;
    let count = |at: usize| -> Option<usize> {
        let b = rest.get(at..at + 2)?;
        Some(i16::from_be_bytes([b[0], b[1]]).max(0) as usize)
    };
    let formats = count(0)?;
    let values = count(2 + 2 * formats)?;
    if values == 0 {
        return None;
    }
    let digest = sha2::Sha256::digest(rest);
    Some(Arc::from(format!(
        "bind parameters sha256:{} ({values} values)",
        sluice_core::audit::hex_lower(&digest)
    )))
}

fn after_cstrs(body: &[u8], n: usize) -> Option<&[u8]> {
    let mut rest = body;
    for _ in 0..n {
        let end = rest.iter().position(|&b| b == 0)?;
        rest = &rest[end + 1..];
    }
    Some(rest)
}

impl<'a> Requests<'a> {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        handle: &'a SessionHandle,
        client: ReadHalf<BoxedStream>,
        buf: BytesMut,
        upstream: WriteHalf<BoxedStream>,
        expect: QueueSender<Expect>,
        cancel: Arc<Notify>,
        progress: watch::Receiver<Progress>,
        failed_parses: Arc<Mutex<Vec<Arc<str>>>>,
        resolver: Option<Arc<Catalog>>,
        uncommitted: Arc<super::catalog_context::Uncommitted>,
    ) -> Self {
        Requests {
            handle,
            client,
            buf,
            upstream,
            expect,
            registry: Registry::default(),
            discarding: false,
            fatal_queued: false,
            sql_prepared: SqlPrepared::default(),
            cancel,
            progress,
            failed_parses,
            seq: 0,
            barrier: None,
            resolver,
            charge: Charge::gateway(),
            unsettled: None,
            uncommitted_code: None,
            uncommitted,
            gate_session: gate::new_session(),
            held: None,
            parsed_in: HashMap::new(),
            bound_in: HashMap::new(),
            ddl_in_transaction: None,
            unanswered_hold: false,
        }
    }

    pub(super) fn fatal_queued(&self) -> bool {
        self.fatal_queued
    }

    pub(super) async fn run(&mut self) -> Result<String, SessionError> {
        // Grown on demand: an idle session holds no output buffer.
        let mut out = BytesMut::new();
        loop {
            loop {
                let msg = match split_message_charged(
                    &mut self.buf,
                    MAX_FRONTEND_MESSAGE,
                    &mut self.charge,
                ) {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(e) => {
                        // Over the gateway's memory for partial messages:
                        // out of memory (53200), not a protocol error.
                        let code = match e {
                            FrameError::Budget { .. } => "53200",
                            _ => wire::SQLSTATE_PROTOCOL,
                        };
                        self.fatal(code, format!("sluice: invalid message: {e}"));
                        return Err(SessionError::client("reading a message", e));
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
            self.write_out(&mut out).await?;
            if sluice_core::io::read_buf_lean(&mut self.client, &mut self.buf).await? == 0 {
                return Ok("client disconnected".into());
            }
        }
    }

    async fn write_out(&mut self, out: &mut BytesMut) -> Result<(), SessionError> {
        if std::mem::take(&mut self.unanswered_hold) {
            // The server answers a Parse or Bind only at a Flush or Sync;
            // until then its gate hold would keep other sessions' changes
            // waiting on a client that may never send one.
            put_message(out, tag::FLUSH, &[]);
        }
        if !out.is_empty() {
            self.upstream.write_all(out).await.map_err(upstream_err)?;
            self.upstream.flush().await.map_err(upstream_err)?;
            super::release_spent(out);
        }
        Ok(())
    }

    fn push(&self, e: Expect) {
        self.expect.send(e);
    }

    fn fatal(&mut self, code: &'static str, message: String) {
        self.fatal_queued = true;
        self.push(Expect::Fatal { code, message });
    }

    /// Answers a message the gateway does not forward with the error the
    /// server would give, and skips to Sync as the server would.
    fn name_error(&mut self, e: NameError) {
        self.push(Expect::Error {
            code: e.sqlstate(),
            message: e.message(),
        });
        self.discarding = true;
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Returns `Some(reason)` when the session should end after forwarding `out`.
    async fn handle_message(
        &mut self,
        msg: RawMessage,
        out: &mut BytesMut,
    ) -> Result<Option<String>, SessionError> {
        if self.discarding && msg.tag != tag::SYNC {
            return Ok(None);
        }
        if self.barrier.is_some()
            && !matches!(
                msg.tag,
                tag::SYNC | tag::FLUSH | tag::COPY_DATA | tag::COPY_DONE | tag::COPY_FAIL
            )
        {
            // Nothing is judged or forwarded past a barrier until the server
            // has answered it. A COPY's data is part of the command (`…;
            // copy t from stdin` after DDL): the answer waits for it.
            self.write_out(out).await?;
            self.pass_barrier().await?;
        }
        self.forget_failed_parses();
        if matches!(msg.tag, tag::QUERY | tag::EXECUTE | tag::FUNCTION_CALL)
            && !self.settled(out).await?
        {
            self.refuse_unsettled(&msg).await?;
            return Ok(None);
        }
        match msg.tag {
            tag::QUERY => self.query(&msg, out).await?,
            tag::PARSE => self.parse(&msg, out).await?,
            tag::BIND => self.bind(&msg, out).await?,
            tag::DESCRIBE => self.describe(&msg, out)?,
            tag::CLOSE => self.close(&msg, out)?,
            tag::EXECUTE => self.execute(&msg, out).await?,
            tag::SYNC => {
                self.unanswered_hold = false;
                if !self.publish_at_sync().await {
                    let why = format!("sluice: {}", gate::WAITED_TOO_LONG);
                    self.fatal(wire::SQLSTATE_PROTOCOL, why.clone());
                    return Err(SessionError::Client(why));
                }
                if let Some(u) = self.unsettled.as_mut() {
                    u.synced = true;
                }
                if let Some(b) = self.barrier.as_mut() {
                    b.synced = true;
                }
                self.discarding = false;
                self.push(Expect::Sync);
                out.extend_from_slice(&msg.bytes);
            }
            tag::FUNCTION_CALL => self.function_call(&msg, out).await?,
            // Flush and COPY data/done/fail carry no command.
            tag::FLUSH | tag::COPY_DATA | tag::COPY_DONE | tag::COPY_FAIL => {
                if msg.tag == tag::FLUSH {
                    self.unanswered_hold = false;
                }
                out.extend_from_slice(&msg.bytes)
            }
            tag::TERMINATE => {
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

    fn forget_failed_parses(&mut self) {
        // Bookkeeping of what exists upstream is never skipped: a poisoned
        // lock still holds valid names.
        let mut failed = self.failed_parses.locked();
        for upstream in failed.drain(..) {
            self.registry.parse_failed(&upstream);
        }
    }

    fn analyse(&self, sql: &str) -> Analysis {
        // Refused unjudged by the audit stage; its parse tree alone would
        // be several times the text's size.
        if !sluice_core::audit::text_fits_a_record(sql) {
            return Analysis::unjudged();
        }
        match crate::policy::shared_classifier().classify(sql) {
            Ok(classified) => {
                let (context, effects) = self.sql_prepared.context_for(&classified, sql);
                let defined: usize = context.iter().map(String::len).sum();
                if sql.len().saturating_add(defined) > sluice_core::audit::MAX_COMMAND_RECORD {
                    // Kept for the audit stage, which refuses the command
                    // for its size and records the definitions' digest.
                    return Analysis {
                        context,
                        ..Analysis::unjudged()
                    };
                }
                let lineage_text = match (classified.statements.as_slice(), context.as_slice()) {
                    ([st], [definition]) if st.command == "EXECUTE" => {
                        definition.split_once('\0').map(|(_, def)| Arc::from(def))
                    }
                    _ => self
                        .sql_prepared
                        .fetched_cursor(&classified, sql)
                        .map(Arc::from),
                };
                let mut all = vec![classified.clone()];
                // A FETCH or MOVE runs its cursor's query now: the views and
                // routines it names are looked up (and held) with it.
                if context.is_empty() {
                    if let Some(text) = lineage_text.as_deref() {
                        if let Ok(c) = crate::policy::shared_classifier().classify(text) {
                            all.push(c);
                        }
                    }
                }
                for entry in &context {
                    if let Some((_, def)) = entry.split_once('\0') {
                        if let Ok(c) = crate::policy::shared_classifier().classify(def) {
                            all.push(c);
                        }
                    }
                }
                Analysis {
                    ddl: classified
                        .statements
                        .iter()
                        .any(|st| st.classes.contains(&SqlClass::Ddl)),
                    defines_code: classified.statements.iter().any(|st| st.defines_code),
                    classified: all,
                    lineage_text,
                    context,
                    effects,
                    barrier: barrier::is_barrier(&classified),
                }
            }
            // Text the parser rejects is refused by the policy's own parse.
            Err(_) => Analysis::unjudged(),
        }
    }

    async fn query(&mut self, msg: &RawMessage, out: &mut BytesMut) -> Result<(), SessionError> {
        let sql = Reader::new(msg.body())
            .cstr()
            .ok_or_else(|| malformed("Query"))?;
        let mut analysis = self.analyse(&sql);
        let text: Arc<str> = analysis
            .lineage_text
            .clone()
            .unwrap_or_else(|| Arc::from(sql.as_str()));
        let command = Command {
            kind: CommandKind::SqlSimple,
            text: sql,
            context: std::mem::take(&mut analysis.context),
        };
        let (decided, views) = self.judge_sql(command, &mut analysis).await?;
        let hold = self.held.take();
        match decided {
            Decided::Forward(command_id) => {
                self.registry.simple_query();
                let seq = self.next_seq();
                let hold = self.keep_hold(seq, hold);
                self.push(Expect::Query {
                    command_id,
                    started: Started::now(command_id, seq, text, views).holding(hold),
                });
                out.extend_from_slice(&msg.bytes);
                self.hold_after(seq, &analysis, out, false);
            }
            Decided::Refuse(command_id, denial) => {
                self.push(Expect::RefusedSimple { command_id, denial })
            }
        }
        Ok(())
    }

    /// Sets a barrier after the forwarded command `seq` when it needs one
    /// (or when it changes prepared statements: their effects wait for its
    /// success). `extended`: ask the server to answer now (Flush).
    fn hold_after(&mut self, seq: u64, analysis: &Analysis, out: &mut BytesMut, extended: bool) {
        if analysis.ddl {
            self.schema_changed();
            self.ddl_in_transaction = Some(self.progress.borrow().ready);
        }
        if analysis.defines_code {
            self.uncommitted.mark(seq);
        }
        if !analysis.barrier && analysis.effects.is_empty() {
            return;
        }
        if extended {
            put_message(out, tag::FLUSH, &[]);
        }
        self.barrier = Some(Barrier {
            seq,
            extended,
            synced: false,
            effects: analysis.effects.clone(),
            ddl: analysis.ddl,
            defines_code: analysis.defines_code,
        });
    }

    /// A schema change went through: cached catalog answers no longer hold.
    fn schema_changed(&self) {
        super::catalog_context::forget(self.resolver.as_deref());
    }

    /// Whether the server has reported the settings an extended-protocol
    /// barrier may have changed; waits for it when a Sync is on its way.
    async fn settled(&mut self, out: &mut BytesMut) -> Result<bool, SessionError> {
        let Some(u) = self.unsettled else {
            return Ok(true);
        };
        if self.progress.borrow().ready > u.ready_at {
            self.unsettled = None;
            return Ok(true);
        }
        if !u.synced {
            return Ok(false);
        }
        self.write_out(out).await?;
        self.wait_progress(|p| p.ready > u.ready_at).await?;
        self.unsettled = None;
        Ok(true)
    }

    /// Waits until the response half's progress satisfies `done`, keeping
    /// the client's pipelined bytes buffered (up to a bound) meanwhile.
    async fn wait_progress(
        &mut self,
        done: impl Fn(&Progress) -> bool,
    ) -> Result<Progress, SessionError> {
        loop {
            let p = *self.progress.borrow();
            if done(&p) {
                return Ok(p);
            }
            let room = self.buf.len() < PENDING_WHILE_DECIDING;
            tokio::select! {
                biased;
                changed = self.progress.changed() => {
                    if changed.is_err() {
                        return Err(SessionError::Upstream("the session ended while a statement was pending".into()));
                    }
                }
                n = self.client.read_buf(&mut self.buf), if room => {
                    if n? == 0 {
                        return Err(SessionError::Client(
                            "client disconnected while a statement was pending".into(),
                        ));
                    }
                }
            }
        }
    }

    /// Refuses a statement pipelined behind a settings change with no Sync
    /// between them: the gateway cannot know the settings it will run under.
    /// The refusal is recorded like any other.
    async fn refuse_unsettled(&mut self, msg: &RawMessage) -> Result<(), SessionError> {
        const WHY: &str = "a statement that can change session settings must be followed by Sync before more statements in the same pipeline; this one was not run";
        let command = self.unsettled_command(msg);
        let command_id = match self.refuse(command, "sluice:pipeline", WHY).await? {
            Decided::Refuse(id, _) => id,
            _ => 0,
        };
        let denial = Denial {
            rule: Some("sluice:pipeline".into()),
            message: WHY.into(),
            hint: Some(
                "Send Sync after the statement that changes settings, then send the rest.".into(),
            ),
        };
        let tag_byte = msg.tag;
        if tag_byte == tag::EXECUTE {
            self.push(Expect::Refused { command_id, denial });
            self.discarding = true;
        } else {
            self.push(Expect::RefusedSimple { command_id, denial });
        }
        Ok(())
    }

    /// The command a refused pipelined message would have run, for its record.
    fn unsettled_command(&self, msg: &RawMessage) -> Command {
        let name = Reader::new(msg.body()).cstr().unwrap_or_default();
        let (kind, text) = match msg.tag {
            tag::EXECUTE => match self.registry.portal(&name) {
                Ok(p) => (
                    CommandKind::SqlExecute {
                        statement: p.statement.clone(),
                        portal: name,
                    },
                    p.text.to_string(),
                ),
                Err(_) => (
                    CommandKind::SqlExecute {
                        statement: String::new(),
                        portal: name,
                    },
                    String::new(),
                ),
            },
            tag::FUNCTION_CALL => (
                CommandKind::FunctionCall {
                    function_oid: Reader::new(msg.body()).i32().unwrap_or(0) as u32,
                },
                "function call".to_string(),
            ),
            // A Query: its text.
            _ => (CommandKind::SqlSimple, name),
        };
        Command {
            kind,
            text,
            context: Vec::new(),
        }
    }

    /// Waits until the server has answered the barrier command, then applies
    /// what it changed if it succeeded.
    async fn pass_barrier(&mut self) -> Result<(), SessionError> {
        let Some(b) = self.barrier.take() else {
            return Ok(());
        };
        let p = self.wait_progress(|p| p.done >= b.seq).await?;
        if b.extended {
            // Every ReadyForQuery before the barrier's answer has arrived;
            // the next one follows it (and any new settings are reported
            // before it).
            self.unsettled = Some(Unsettled {
                ready_at: p.done_ready,
                synced: b.synced,
            });
        }
        if b.ddl {
            self.schema_changed();
        }
        if b.defines_code {
            if !b.extended {
                // A simple query's ReadyForQuery follows its completion.
                self.wait_progress(|q| q.ready > p.done_ready).await?;
            }
            self.uncommitted_code = Some(p.done_ready);
        }
        if p.ok {
            self.sql_prepared.apply(&b.effects);
            if b.effects.clears_all_statements() {
                self.registry.clear_statements();
            }
            if b.effects.discard_all {
                self.registry.clear_portals();
            }
        }
        Ok(())
    }

    async fn parse(&mut self, msg: &RawMessage, out: &mut BytesMut) -> Result<(), SessionError> {
        let body = msg.body();
        let mut r = Reader::new(body);
        let name = r.cstr().ok_or_else(|| malformed("Parse"))?;
        let sql = r.cstr().ok_or_else(|| malformed("Parse"))?;
        let text_bytes = after_cstrs(body, 1)
            .and_then(|t| t.split(|&b| b == 0).next())
            .ok_or_else(|| malformed("Parse"))?;
        let rest = after_cstrs(body, 2).ok_or_else(|| malformed("Parse"))?;
        let generation = self.definitions_generation();
        let refused = self.refused_at_parse(&name, &sql).await?;
        let hold = self.held.take();
        if refused {
            return Ok(());
        }
        match self.registry.parse(&name, &sql) {
            Ok(upstream) => {
                put_message(
                    out,
                    tag::PARSE,
                    &[upstream.as_bytes(), &[0], text_bytes, &[0], rest],
                );
                if self.parsed_in.len() >= MAX_PARSED_GENERATIONS {
                    self.parsed_in.clear();
                }
                self.parsed_in.insert(upstream.clone(), generation);
                self.unanswered_hold |= hold.is_some();
                self.push(Expect::Parse {
                    upstream,
                    gate: hold,
                });
            }
            Err(e) => self.name_error(e),
        }
        Ok(())
    }

    /// A statement the policy denies is refused where it is parsed: nothing
    /// of it reaches the server (its Execute would be refused anyway; what
    /// may run is judged again, and recorded, at each Execute).
    async fn refused_at_parse(&mut self, name: &str, sql: &str) -> Result<bool, SessionError> {
        let mut analysis = self.analyse(sql);
        let command = Command {
            kind: CommandKind::SqlExecute {
                statement: name.to_string(),
                portal: String::new(),
            },
            text: sql.to_string(),
            context: std::mem::take(&mut analysis.context),
        };
        // The same size check as `judge_sql`'s: names count too.
        let fits = sluice_core::audit::command_fits_a_record(&command);
        if fits && side_channel(sql, &self.rules(None)).is_ok() {
            match self.at_parse(&command, &analysis).await {
                AtParse::Pass => return Ok(false),
                AtParse::Judge => {}
                AtParse::Refuse(why) => {
                    self.refuse_in_batch(command, why).await?;
                    return Ok(true);
                }
            }
        }
        let (decided, _) = self.judge_sql(command, &mut analysis).await?;
        match decided {
            // The full pipeline disagreed (a rule changed meanwhile): the
            // Execute is judged again anyway.
            Decided::Forward(_) => Ok(false),
            Decided::Refuse(command_id, denial) => {
                self.push(Expect::Refused { command_id, denial });
                self.discarding = true;
                Ok(true)
            }
        }
    }

    /// What the policy and masking make of a statement where it is parsed,
    /// on what the routines it calls do (`judge_sql`'s checks, unrecorded):
    /// the server runs an IMMUTABLE routine with constant arguments when it
    /// plans the statement, at Bind, before any Execute is judged; what it
    /// raises reaches the client then, and what it calls runs.
    async fn at_parse(&mut self, command: &Command, analysis: &Analysis) -> AtParse {
        if self.catalog_behind(&analysis.classified) {
            return AtParse::Judge;
        }
        if !self.enter_gate(analysis, false).await {
            return AtParse::Refuse(gate::WAITED_TOO_LONG);
        }
        let mut probe = command.clone();
        let Ok(views) = self
            .add_catalog_context(&mut probe, &analysis.classified)
            .await
        else {
            return AtParse::Judge;
        };
        let cache = crate::policy::shared_classifier();
        let foldable = crate::sql::resolve::calls_foldable_routine(&probe.context);
        if crate::sql::resolve::routines_define_code(&probe.context, cache) {
            if foldable {
                // Run at Bind, it would publish code before any Execute is
                // judged or holds the gate for it.
                return AtParse::Refuse(
                    "a routine this statement calls changes the schema, and the server may run \
                     it when it plans the statement (at Bind), before it is judged: send it as \
                     a simple query",
                );
            }
            // Run at Bind, it may change the schema: what follows in its
            // transaction would be judged on a catalog that is behind.
            self.schema_changed();
            self.uncommitted_code = Some(self.progress.borrow().ready);
            self.uncommitted.mark(self.seq + 1);
        }
        if catalog_side_channel(&probe.context, &self.rules(Some(&views))).is_err() {
            return AtParse::Judge;
        }
        match self.handle.policy_action(probe) {
            Action::Allow => AtParse::Pass,
            Action::Deny => AtParse::Judge,
            Action::Review if foldable => AtParse::Refuse(
                "this statement needs a review, and an IMMUTABLE or STABLE routine it calls may run when \
                 the server plans it (at Bind), before the review: send it as a simple query",
            ),
            Action::Review => AtParse::Pass,
        }
    }

    /// The catalog definitions' generation (0 without a resolver).
    fn definitions_generation(&self) -> u64 {
        self.resolver
            .as_ref()
            .map_or(0, |c| c.definitions_generation())
    }

    /// Whether a Bind of `text` (statement `name`, upstream `upstream`) is
    /// refused: the server may analyse the statement again and plan it at
    /// Bind (running IMMUTABLE and STABLE routines), so a statement judged
    /// where it was parsed on definitions that changed since is judged
    /// again, and the gate is held until the server has bound it.
    async fn refused_at_bind(
        &mut self,
        name: &str,
        upstream: &Arc<str>,
        text: &str,
    ) -> Result<bool, SessionError> {
        if self.resolver.is_none() {
            return Ok(false);
        }
        let analysis = self.analyse(text);
        if !self.enter_gate(&analysis, false).await {
            self.held = None;
            let command = Command {
                kind: CommandKind::SqlExecute {
                    statement: name.to_string(),
                    portal: String::new(),
                },
                text: text.to_string(),
                context: Vec::new(),
            };
            self.refuse_in_batch(command, gate::WAITED_TOO_LONG).await?;
            return Ok(true);
        }
        let generation = self.definitions_generation();
        if self.parsed_in.get(upstream) == Some(&generation) {
            return Ok(false);
        }
        let hold = self.held.take();
        let refused = self.refused_at_parse(name, text).await?;
        self.held = self.held.take().or(hold);
        if !refused {
            self.parsed_in.insert(upstream.clone(), generation);
        }
        Ok(refused)
    }

    /// Whether definitions changed through the gateway since `portal` was
    /// bound: its plan, made then, may run what its Execute would not be
    /// judged on.
    fn rebound_needed(&self, portal: &str) -> bool {
        self.resolver.is_some()
            && self
                .bound_in
                .get(portal)
                .is_some_and(|&g| g != self.definitions_generation())
    }

    /// Refuses an extended-protocol message for the catalog's sake (see
    /// `resolve`), recorded; the rest of its batch is skipped, as the
    /// server skips after an error.
    async fn refuse_in_batch(&mut self, command: Command, why: &str) -> Result<(), SessionError> {
        if let Decided::Refuse(command_id, denial) =
            self.refuse(command, "sluice:catalog", why).await?
        {
            self.push(Expect::Refused { command_id, denial });
            self.discarding = true;
        }
        Ok(())
    }

    async fn bind(&mut self, msg: &RawMessage, out: &mut BytesMut) -> Result<(), SessionError> {
        let body = msg.body();
        let mut r = Reader::new(body);
        let portal = r.cstr().ok_or_else(|| malformed("Bind"))?;
        let statement = r.cstr().ok_or_else(|| malformed("Bind"))?;
        let formats = bind_result_formats(&mut r).ok_or_else(|| malformed("Bind"))?;
        let rest = after_cstrs(body, 2).ok_or_else(|| malformed("Bind"))?;
        let (upstream, text, described) = match self.registry.statement(&statement) {
            Some(st) => (st.upstream.clone(), st.text.clone(), st.described),
            // A statement prepared with SQL `PREPARE` may be bound too.
            None => match self.sql_prepared.definition(&statement) {
                Some(def) if !statement.is_empty() => {
                    (Arc::from(statement.as_str()), Arc::from(def), false)
                }
                _ => {
                    self.name_error(NameError::UnknownStatement(statement));
                    return Ok(());
                }
            },
        };
        if self.refused_at_bind(&statement, &upstream, &text).await? {
            self.held = None;
            return Ok(());
        }
        let gate = self.held.take();
        self.unanswered_hold |= gate.is_some();
        if self.bound_in.len() >= MAX_PARSED_GENERATIONS {
            self.bound_in.clear();
        }
        self.bound_in
            .insert(portal.clone(), self.definitions_generation());
        self.registry.bind(
            &portal,
            &statement,
            text,
            described,
            parameters_context(rest),
        );
        put_message(
            out,
            tag::BIND,
            &[portal.as_bytes(), &[0], upstream.as_bytes(), &[0], rest],
        );
        self.push(Expect::Bind {
            portal,
            statement: upstream,
            formats,
            gate,
        });
        Ok(())
    }

    fn describe(&mut self, msg: &RawMessage, out: &mut BytesMut) -> Result<(), SessionError> {
        let mut r = Reader::new(msg.body());
        let kind = r.bytes(1).ok_or_else(|| malformed("Describe"))?[0];
        let name = r.cstr().ok_or_else(|| malformed("Describe"))?;
        match kind {
            tag::KIND_STATEMENT => {
                let upstream = match self.registry.describe_statement(&name) {
                    Ok(u) => u,
                    Err(_) if self.sql_prepared.definition(&name).is_some() => {
                        Arc::from(name.as_str())
                    }
                    Err(e) => {
                        self.name_error(e);
                        return Ok(());
                    }
                };
                put_message(
                    out,
                    tag::DESCRIBE,
                    &[&[tag::KIND_STATEMENT], upstream.as_bytes(), &[0]],
                );
                self.push(Expect::Describe {
                    statement: true,
                    name: upstream,
                    injected: false,
                });
            }
            tag::KIND_PORTAL => {
                // A portal the gateway did not bind (a SQL cursor) may be
                // described; it cannot be executed (see `execute`).
                self.registry.describe_portal(&name);
                out.extend_from_slice(&msg.bytes);
                self.push(Expect::Describe {
                    statement: false,
                    name: Arc::from(name.as_str()),
                    injected: false,
                });
            }
            _ => return Err(malformed("Describe")),
        }
        Ok(())
    }

    fn close(&mut self, msg: &RawMessage, out: &mut BytesMut) -> Result<(), SessionError> {
        let mut r = Reader::new(msg.body());
        let kind = r.bytes(1).ok_or_else(|| malformed("Close"))?[0];
        let name = r.cstr().ok_or_else(|| malformed("Close"))?;
        match kind {
            tag::KIND_STATEMENT => match self.registry.close_statement(&name) {
                Some(upstream) => {
                    put_message(
                        out,
                        tag::CLOSE,
                        &[&[tag::KIND_STATEMENT], upstream.as_bytes(), &[0]],
                    );
                    self.push(Expect::Close);
                }
                None if self.sql_prepared.definition(&name).is_some() => {
                    self.sql_prepared.apply(&PreparedEffects::deallocate(&name));
                    out.extend_from_slice(&msg.bytes);
                    self.push(Expect::Close);
                }
                None => {
                    // Closing a statement that does not exist is not an error.
                    let mut reply = BytesMut::new();
                    put_message(&mut reply, super::tags::backend::CLOSE_COMPLETE, &[]);
                    self.push(Expect::Reply(reply));
                }
            },
            tag::KIND_PORTAL => {
                self.registry.close_portal(&name);
                out.extend_from_slice(&msg.bytes);
                self.push(Expect::Close);
            }
            _ => return Err(malformed("Close")),
        }
        Ok(())
    }

    async fn execute(&mut self, msg: &RawMessage, out: &mut BytesMut) -> Result<(), SessionError> {
        let portal_name = Reader::new(msg.body())
            .cstr()
            .ok_or_else(|| malformed("Execute"))?;
        let portal = match self.registry.portal(&portal_name) {
            Ok(p) => p.clone(),
            Err(e) => {
                self.name_error(e);
                return Ok(());
            }
        };
        if self.rebound_needed(&portal_name) {
            let command = self.unsettled_command(msg);
            let why = "the views or routines this statement uses changed after it was bound \
                       (the server planned it then, on what the gateway no longer sees): bind it \
                       again";
            return self.refuse_in_batch(command, why).await;
        }
        let mut analysis = self.analyse(&portal.text);
        let lineage_text = analysis.lineage_text.clone();
        let mut context = std::mem::take(&mut analysis.context);
        context.extend(portal.parameters.as_deref().map(str::to_string));
        let command = Command {
            kind: CommandKind::SqlExecute {
                statement: portal.statement.clone(),
                portal: portal_name.clone(),
            },
            text: portal.text.to_string(),
            context,
        };
        let (decided, views) = self.judge_sql(command, &mut analysis).await?;
        let hold = self.held.take();
        match decided {
            Decided::Forward(command_id) => {
                if !portal.described {
                    // No row leaves before its columns are known: ask the
                    // server (the answer is kept, not forwarded).
                    put_message(
                        out,
                        tag::DESCRIBE,
                        &[&[tag::KIND_PORTAL], portal_name.as_bytes(), &[0]],
                    );
                    self.push(Expect::Describe {
                        statement: false,
                        name: Arc::from(portal_name.as_str()),
                        injected: true,
                    });
                    self.registry.describe_portal(&portal_name);
                }
                let seq = self.next_seq();
                let hold = self.keep_hold(seq, hold);
                self.push(Expect::Execute {
                    command_id,
                    portal: portal_name,
                    started: Started::now(
                        command_id,
                        seq,
                        lineage_text.unwrap_or_else(|| portal.text.clone()),
                        views,
                    )
                    .holding(hold),
                });
                out.extend_from_slice(&msg.bytes);
                self.hold_after(seq, &analysis, out, true);
            }
            Decided::Refuse(command_id, denial) => {
                self.push(Expect::Refused { command_id, denial });
                self.discarding = true;
            }
        }
        Ok(())
    }

    async fn function_call(
        &mut self,
        msg: &RawMessage,
        out: &mut BytesMut,
    ) -> Result<(), SessionError> {
        let oid = Reader::new(msg.body())
            .i32()
            .ok_or_else(|| malformed("FunctionCall"))? as u32;
        let command = Command {
            kind: CommandKind::FunctionCall { function_oid: oid },
            text: format!("<fast-path function call, oid {oid}>"),
            context: vec![],
        };
        let decided = if RuledColumns::any(&self.rules(None)) {
            // Named by OID alone: what it reads cannot be followed.
            let why = "a fast-path function call names its function by OID alone, so the \
                       gateway cannot follow what it reads for masked columns; it is refused \
                       while column masking rules apply. Call the function in SQL instead";
            self.refuse(command, "sluice:masking", why).await?
        } else {
            self.decide(command).await?
        };
        match decided {
            Decided::Forward(command_id) => {
                let seq = self.next_seq();
                self.push(Expect::Query {
                    command_id,
                    started: Started::now(command_id, seq, Arc::from(""), Views::default()),
                });
                out.extend_from_slice(&msg.bytes);
                // A function may change anything: wait for its answer.
                self.hold_after(seq, &Analysis::opaque(), out, false);
            }
            Decided::Refuse(command_id, denial) => {
                self.push(Expect::RefusedSimple { command_id, denial })
            }
        }
        Ok(())
    }

    /// Judges a SQL command: a statement that would carry a masked column's
    /// values where masking cannot follow (a notification, another table,
    /// the planner's statistics) is refused by the masking stage; anything
    /// else goes through the pipeline.
    async fn judge_sql(
        &mut self,
        mut command: Command,
        analysis: &mut Analysis,
    ) -> Result<(Decided, Views), SessionError> {
        // Refused unjudged by the audit stage: nothing here reads it first.
        if !sluice_core::audit::command_fits_a_record(&command) {
            return Ok((self.decide(command).await?, Views::default()));
        }
        if self.catalog_behind(&analysis.classified) {
            let why = "a view or routine was defined in this transaction, which the gateway \
                       cannot see until it is committed (it reads the catalog on its own \
                       connection), so statements that use tables or functions cannot be \
                       judged until the transaction ends: commit the schema change first";
            let d = self.refuse(command, "sluice:catalog", why).await?;
            return Ok((d, Views::default()));
        }
        if !self.enter_gate(analysis, false).await {
            let d = self
                .refuse(command, "sluice:catalog", gate::WAITED_TOO_LONG)
                .await?;
            return Ok((d, Views::default()));
        }
        let views = match self
            .add_catalog_context(&mut command, &analysis.classified)
            .await
        {
            Ok(v) => v,
            Err(why) => {
                let d = self.refuse(command, "sluice:catalog", &why).await?;
                return Ok((d, Views::default()));
            }
        };
        // A user function may change the session (set_config); one named
        // like a built-in was not seen as user code in the text.
        analysis.barrier |= crate::sql::resolve::shadows_a_builtin(&command.context);
        if let Some(why) = self.routines_change_schema(&command, analysis) {
            let d = self.refuse(command, "sluice:catalog", why).await?;
            return Ok((d, views));
        }
        let rules = self.rules(Some(&views));
        let judged = side_channel(&command.text, &rules)
            .and_then(|()| catalog_side_channel(&command.context, &rules));
        if let Err(why) = judged {
            let d = self.refuse(command, "sluice:masking", &why).await?;
            return Ok((d, views));
        }
        let decided = self.decide(command).await?;
        Ok((self.publishing(decided, analysis).await?, views))
    }

    /// A forwarded command that may publish code holds the gate exclusively
    /// (see `gate`), taken once it is decided (a review does not keep other
    /// sessions out meanwhile).
    async fn publishing(
        &mut self,
        decided: Decided,
        analysis: &Analysis,
    ) -> Result<Decided, SessionError> {
        let Decided::Forward(command_id) = decided else {
            return Ok(decided);
        };
        if !self.publishes(analysis) {
            return Ok(decided);
        }
        // Given back before waiting: two sessions each holding it shared
        // while waiting to hold it exclusively would wait for each other.
        self.held = None;
        if self.enter_gate(analysis, true).await {
            return Ok(decided);
        }
        if Self::commits(analysis) {
            // Refused, the transaction would stay open with its change
            // (and its locks, which the statements holding the gate may
            // be waiting on): the session ends, and the change rolls back.
            let why = format!("sluice: {}", gate::WAITED_TOO_LONG);
            self.fatal(wire::SQLSTATE_PROTOCOL, why.clone());
            return Err(SessionError::Client(why));
        }
        Ok(Decided::Refuse(
            command_id,
            Denial {
                rule: Some("sluice:catalog".into()),
                message: gate::WAITED_TOO_LONG.into(),
                hint: None,
            },
        ))
    }

    /// Whether a message commits a transaction (COMMIT, END, COMMIT
    /// PREPARED).
    fn commits(analysis: &Analysis) -> bool {
        analysis
            .statements()
            .any(|s| s.classes.contains(&SqlClass::Tx) && s.command.starts_with("COMMIT"))
    }

    /// Whether a forwarded message may publish a schema change: DDL (code,
    /// or what attaches code to tables: triggers, defaults, constraints,
    /// policies), a routine that runs DDL, the COMMIT of a transaction that
    /// made one, or any `COMMIT PREPARED`.
    fn publishes(&mut self, analysis: &Analysis) -> bool {
        let last_idle = self.progress.borrow().last_idle;
        let changed = still_open(&mut self.ddl_in_transaction, last_idle)
            || still_open(&mut self.uncommitted_code, last_idle);
        analysis.ddl
            || analysis.defines_code
            || (Self::commits(analysis)
                && (changed
                    || analysis
                        .statements()
                        .any(|s| s.command.starts_with("COMMIT PREPARED"))))
    }

    /// Before a Sync commits what a forwarded change defined (an
    /// extended-protocol batch's implicit transaction), the session holds
    /// the gate exclusively again: its earlier hold may have stopped
    /// counting. `false`: it waited too long.
    async fn publish_at_sync(&mut self) -> bool {
        let Some((fresh, oldest)) = self.uncommitted.holds_age() else {
            return true;
        };
        if oldest > gate::WAIT * 3 {
            // A change that stays unpublished this long keeps others out
            // at every Sync: the session ends, and the change rolls back.
            return false;
        }
        if fresh {
            return true;
        }
        if self.resolver.is_none() {
            return true;
        }
        match gate::global()
            .enter(self.gate_session, true, gate::WAIT)
            .await
        {
            Some(hold) => {
                self.uncommitted.hold_until_ready(self.seq, hold);
                true
            }
            None => false,
        }
    }

    /// Enters the resolver's gate (see `gate`) for a message: exclusively
    /// when it is about to be forwarded and may publish a schema change
    /// (`publishing`), shared when it names tables or functions and is
    /// about to be judged. `false`: it waited too long.
    async fn enter_gate(&mut self, analysis: &Analysis, exclusive: bool) -> bool {
        if self.resolver.is_none() {
            return true;
        }
        let needed = exclusive
            || analysis
                .statements()
                .any(crate::sql::resolve::names_objects);
        let enough = match &self.held {
            Some(h) => h.is_exclusive() || !exclusive,
            None => !needed,
        };
        if enough {
            return true;
        }
        match gate::global()
            .enter(self.gate_session, exclusive, gate::WAIT)
            .await
        {
            Some(hold) => {
                self.held = Some(hold);
                true
            }
            None => false,
        }
    }

    /// Where a forwarded command's gate hold is kept: an exclusive one
    /// until the ReadyForQuery after it (its change is published then), a
    /// shared one with the command (returned) until it is finished.
    fn keep_hold(&self, seq: u64, hold: Option<GateHold>) -> Option<GateHold> {
        match hold {
            Some(h) if h.is_exclusive() => {
                self.uncommitted.hold_until_ready(seq, h);
                None
            }
            shared => shared,
        }
    }

    /// Whether a view or routine defined in a still-open transaction may
    /// change what these statements mean: the catalog connection cannot
    /// see it yet.
    fn catalog_behind(&mut self, classified: &[Arc<Classification>]) -> bool {
        let last_idle = self.progress.borrow().last_idle;
        if !still_open(&mut self.uncommitted_code, last_idle) {
            return false;
        }
        self.resolver.is_some()
            && classified
                .iter()
                .flat_map(|c| c.statements.iter())
                .any(crate::sql::resolve::names_objects)
    }

    /// A routine the command calls may change the schema when it runs (DDL
    /// in its body): treated as DDL in the text is (caches forgotten after
    /// it, the open transaction watched), and refused with later
    /// statements of the same message, which would be judged on the catalog
    /// as it was.
    fn routines_change_schema(
        &self,
        command: &Command,
        analysis: &mut Analysis,
    ) -> Option<&'static str> {
        let cache = crate::policy::shared_classifier();
        if !crate::sql::resolve::routines_define_code(&command.context, cache) {
            return None;
        }
        let attaches = analysis.classified.first().is_some_and(|c| {
            c.statements
                .iter()
                .any(|s| s.classes.contains(&SqlClass::Ddl))
        });
        if attaches {
            // A trigger, default or operator would run it later, from
            // statements that do not name it.
            return Some(
                "a routine this schema change attaches or calls changes the schema itself when \
                 it runs, and the server would run it from statements that do not name it, \
                 which the gateway cannot follow",
            );
        }
        analysis.ddl = true;
        analysis.defines_code = true;
        analysis.barrier = true;
        // Statements after the first that calls a routine.
        let later_names = analysis.classified.first().is_some_and(|c| {
            c.statements
                .iter()
                .skip_while(|s| s.functions.is_empty())
                .skip(1)
                .any(crate::sql::resolve::names_objects)
        });
        later_names.then_some(
            "a routine this message calls may change the schema, and the statements after it \
             would be judged on the catalog as it was: send them in a message of their own",
        )
    }

    /// The session's masking rules, as the lineage checks read them.
    fn rules<'v>(&'v self, views: Option<&'v Views>) -> SessionRules<'v> {
        SessionRules {
            masker: self.handle.masker().as_ref(),
            session: self.handle.info(),
            views: views.map(|v| &**v),
        }
    }

    /// Records `command` as refused by the gateway's own stage `rule`.
    async fn refuse(
        &mut self,
        command: Command,
        rule: &str,
        why: &str,
    ) -> Result<Decided, SessionError> {
        Ok(match self.handle.refuse(command, rule, why).await {
            Ok(Decision::Refuse { command_id, denial }) => Decided::Refuse(command_id, denial),
            Ok(Decision::Forward { .. }) | Err(_) => Decided::Refuse(0, Denial::unrecorded()),
        })
    }

    /// Adds what the catalog says about the views and user functions the
    /// statement names, so the policy judges what they do; returns the view
    /// definitions for masking's lineage. A lookup that fails means the
    /// statement cannot be judged.
    async fn add_catalog_context(
        &self,
        command: &mut Command,
        classified: &[Arc<Classification>],
    ) -> Result<Views, String> {
        let Some(catalog) = &self.resolver else {
            return Ok(Views::default());
        };
        let refs: Vec<&Classification> = classified.iter().map(|c| c.as_ref()).collect();
        match super::catalog_context::context(&self.handle.connection().name, catalog, &refs).await
        {
            Ok(entries) => {
                command.context.extend(entries.iter().cloned());
                Ok(super::catalog_context::views(&entries))
            }
            Err(e) => {
                tracing::warn!(message = "Catalog lookup failed; refusing the statement.", error = %e);
                Err("the gateway could not look up the views and functions this statement names, so it cannot be judged; retry".into())
            }
        }
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

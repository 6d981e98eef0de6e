//! The upstream → client half: answers are matched to what the request half
//! queued, in order; refusals and the gateway's own answers go out at their
//! place; every result is planned for masking before its first row leaves
//! (a row whose columns are unknown ends the session); outcomes are recorded
//! and barriers released as commands complete.

use super::barrier::Progress;
use super::tags::backend as tag;
use super::{
    apply_formats, parse_row_description, row_description_oids, upstream_err, Expect, Started,
};
use crate::catalog::{Catalog, TableInfo};
use crate::frame::{
    data_row_values, encode_data_row_refs, split_message, RawMessage, Reader, MAX_BACKEND_MESSAGE,
};
use crate::sql::lineage::{apply_lineage, references_ruled, RuledColumns, SessionRules};
use crate::upstream::error_fields;
use crate::{wire, BoxedStream};
use bytes::BytesMut;
use sluice_core::masking::RowMasker;
use sluice_core::pipeline::SessionInfo;
use sluice_core::session::{OutcomeRecorder, SessionError, SessionHandle};
use sluice_core::sync::MutexExt;
use sluice_core::sync::QueueReceiver;
use sluice_core::{Column, Denial, Outcome};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::watch;

/// Rows of each result kept for replay.
const SAMPLE_ROWS: usize = 20;
/// Characters of each sampled value kept for replay.
const SAMPLE_VALUE_CHARS: usize = 200;

/// A result being streamed to the client.
struct Current {
    command_id: u64,
    started: Started,
    /// Open while a masking plan rewrites this result (a child of the upstream span).
    masking: Option<tracing::Span>,
    columns: Option<Arc<Vec<Column>>>,
    plan: Option<Box<dyn RowMasker>>,
    outcome: Outcome,
    /// Why this result's rows are withheld (its masking cannot be planned):
    /// rows are dropped and an error takes the place of its completion.
    withheld: Option<String>,
}

pub(super) struct Responses {
    /// Pipeline messages for the client while a command is pending.
    notices: Option<QueueReceiver<String>>,
    info: Arc<SessionInfo>,
    masker: Arc<dyn sluice_core::masking::ResponseMasker>,
    recorder: OutcomeRecorder,
    upstream: ReadHalf<BoxedStream>,
    buf: BytesMut,
    client: WriteHalf<BoxedStream>,
    expect: QueueReceiver<Expect>,
    queue: VecDeque<Expect>,
    status: u8,
    /// Columns by upstream statement name.
    statement_columns: HashMap<Arc<str>, Arc<Vec<Column>>>,
    portal_columns: HashMap<String, Arc<Vec<Column>>>,
    current: Option<Current>,
    out: BytesMut,
    /// Where source-table names come from, when the masker needs them.
    catalog: Option<Arc<Catalog>>,
    /// Tables resolved on this session (the catalog caches across sessions).
    tables: HashMap<u32, Arc<TableInfo>>,
    /// A COPY TO STDOUT whose output is being withheld.
    copy_refused: bool,
    /// Tells the request half which forwarded commands are answered.
    progress: watch::Sender<Progress>,
    /// See `catalog_context::Uncommitted`.
    uncommitted: Arc<super::catalog_context::Uncommitted>,
    /// The server is skipping to a Sync the client has not sent yet (an
    /// extended-protocol error): what is queued meanwhile is skipped too.
    skipping: bool,
    /// Upstream statement names whose Parse the server did not carry out.
    failed_parses: Arc<Mutex<Vec<Arc<str>>>>,
}

impl Responses {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        handle: &SessionHandle,
        upstream: ReadHalf<BoxedStream>,
        buf: BytesMut,
        client: WriteHalf<BoxedStream>,
        expect: QueueReceiver<Expect>,
        catalog: Option<Arc<Catalog>>,
        progress: watch::Sender<Progress>,
        failed_parses: Arc<Mutex<Vec<Arc<str>>>>,
        uncommitted: Arc<super::catalog_context::Uncommitted>,
    ) -> Self {
        Responses {
            notices: handle.take_notices(),
            info: handle.info().clone(),
            masker: handle.masker().clone(),
            recorder: handle.recorder(),
            upstream,
            buf,
            client,
            expect,
            queue: VecDeque::new(),
            status: b'I',
            statement_columns: HashMap::new(),
            portal_columns: HashMap::new(),
            current: None,
            // Grown on demand: an idle session holds no output buffer.
            out: BytesMut::new(),
            catalog,
            tables: HashMap::new(),
            copy_refused: false,
            progress,
            failed_parses,
            uncommitted,
            skipping: false,
        }
    }

    /// Queues what the request half expects next. While the server skips to
    /// a Sync not yet sent, every message but Sync is ignored by the server:
    /// its expectation is settled at once (a barrier waiting on it must not
    /// wait for an answer that cannot come before the client's Sync).
    fn enqueue(&mut self, e: Expect) {
        if !self.skipping {
            self.queue.push_back(e);
            return;
        }
        match e {
            Expect::Sync => {
                self.skipping = false;
                self.queue.push_back(e);
            }
            e @ Expect::Fatal { .. } => self.queue.push_back(e),
            Expect::Execute {
                command_id,
                started,
                ..
            }
            | Expect::Query {
                command_id,
                started,
            } => {
                self.finish();
                self.begin(command_id, started, None);
                if let Some(c) = self.current.as_mut() {
                    c.outcome.error =
                        Some("not executed: an earlier message in the same pipeline failed".into());
                }
                self.finish();
            }
            Expect::Parse { upstream, .. } => self.failed_parses.locked().push(upstream),
            // Neither answered by the server nor by the gateway: skipped.
            _ => {}
        }
    }

    async fn resolve_tables(&mut self, body: &[u8]) -> Result<(), crate::PgError> {
        let Some(catalog) = &self.catalog else {
            return Ok(());
        };
        let missing: Vec<u32> = row_description_oids(body)
            .into_iter()
            .filter(|o| !self.tables.contains_key(o))
            .collect();
        if !missing.is_empty() {
            // Boxed for the same reason as the statement's catalog context:
            // a cache miss is rare and its future large.
            let found = Box::pin(catalog.tables(&missing)).await?;
            self.tables.extend(found);
        }
        Ok(())
    }

    pub(super) async fn run(&mut self, handle: &SessionHandle) -> Result<String, SessionError> {
        let ended = handle.ended();
        tokio::pin!(ended);
        loop {
            if self.queue.is_empty() {
                // Nothing awaited: an idle session holds no room for answers.
                self.queue.shrink_to(0);
            }
            tokio::select! {
                biased;
                reason = &mut ended => {
                    wire::error(&mut self.out, true, wire::SQLSTATE_SHUTDOWN, &format!("sluice: session ended: {reason}"), None, Some("Get a new token and reconnect."));
                    self.flush().await?;
                    return Ok(reason);
                }
                e = self.expect.recv() => match e {
                    Some(e) => self.enqueue(e),
                    None => return Ok("client side closed".into()),
                },
                Some(n) = recv_notice(&mut self.notices) => wire::notice(&mut self.out, &n),
                n = sluice_core::io::read_buf_lean(&mut self.upstream, &mut self.buf) => {
                    if n.map_err(upstream_err)? == 0 {
                        // Refusals still queued go out first, then why the session ends.
                        let _ = self.emit_ready_refusals();
                        wire::error(&mut self.out, true, wire::SQLSTATE_UPSTREAM, "sluice: the upstream closed the connection", None, None);
                        self.flush().await?;
                        return Ok("upstream closed".into());
                    }
                    // Expectations are queued before their message is sent
                    // upstream, so every answer's expectation is here now.
                    while let Some(e) = self.expect.try_recv() {
                        self.enqueue(e);
                    }
                    loop {
                        let msg = match split_message(&mut self.buf, MAX_BACKEND_MESSAGE) {
                            Ok(Some(m)) => m,
                            Ok(None) => break,
                            Err(e) => {
                                wire::error(&mut self.out, true, wire::SQLSTATE_UPSTREAM, "sluice: the upstream sent an invalid message; the session was ended", None, None);
                                self.flush().await?;
                                return Err(SessionError::upstream("reading a message", e));
                            }
                        };
                        if msg.tag == tag::ROW_DESCRIPTION {
                            if let Err(e) = self.resolve_tables(msg.body()).await {
                                // Masking by table cannot be decided: fail closed.
                                tracing::error!(message = "Source tables of a result could not be resolved; ending the session.", error = %e);
                                wire::error(&mut self.out, true, wire::SQLSTATE_UPSTREAM, "sluice: the gateway could not decide how to mask this result; the session was ended", None, Some("Retry; tell the Sluice administrator if this persists."));
                                self.flush().await?;
                                return Err(SessionError::upstream("resolving the source tables of a result", e));
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
        super::release_spent(&mut self.out);
        Ok(())
    }

    /// Sends what the gateway answers itself once it reaches the front of
    /// the queue (refusals, name errors, replies). Returns a reason when a
    /// fatal error was sent and the session must end.
    fn emit_ready_refusals(&mut self) -> Option<String> {
        loop {
            match self.queue.front() {
                Some(
                    Expect::Refused { .. }
                    | Expect::RefusedSimple { .. }
                    | Expect::Error { .. }
                    | Expect::Reply(_)
                    | Expect::Fatal { .. },
                ) => {}
                _ => return None,
            }
            match self.queue.pop_front() {
                Some(Expect::Refused { command_id, denial }) => self.refuse(command_id, &denial),
                Some(Expect::RefusedSimple { command_id, denial }) => {
                    self.refuse(command_id, &denial);
                    wire::ready(&mut self.out, self.status);
                }
                Some(Expect::Error { code, message }) => {
                    wire::error(&mut self.out, false, code, &message, None, None);
                }
                Some(Expect::Reply(bytes)) => self.out.extend_from_slice(&bytes),
                Some(Expect::Fatal { code, message }) => {
                    wire::error(&mut self.out, true, code, &message, None, None);
                    return Some(message);
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
        let (columns, withheld) = match columns {
            Some(c) => match self.follow_lineage(&started, c) {
                Ok(c) => (Some(c), None),
                Err(why) => (None, Some(why)),
            },
            None => (None, None),
        };
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
            withheld,
        });
    }

    /// The columns with computed ones labelled by the masked source column
    /// they derive from (column rules follow the data), or why the result
    /// cannot be masked and must be withheld.
    fn follow_lineage(
        &self,
        started: &Started,
        columns: Arc<Vec<Column>>,
    ) -> Result<Arc<Vec<Column>>, String> {
        let sql = &*started.text;
        let rules = SessionRules {
            masker: self.masker.as_ref(),
            session: &self.info,
            views: Some(&started.views),
        };
        if sql.is_empty() || !rules.any() {
            return Ok(columns);
        }
        let mut owned = columns.as_ref().clone();
        apply_lineage(sql, &mut owned, &rules)?;
        Ok(Arc::new(owned))
    }

    /// Whether errors and notices answering the command at the front may
    /// echo values of a masked column (their text is then withheld).
    fn echoes_ruled(&self) -> bool {
        let started = match self.queue.front() {
            Some(Expect::Query { started, .. } | Expect::Execute { started, .. }) => started,
            _ => return false,
        };
        let rules = SessionRules {
            masker: self.masker.as_ref(),
            session: &self.info,
            views: Some(&started.views),
        };
        references_ruled(&started.text, &rules)
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
            let (done, ok) = (c.started.seq, c.outcome.error.is_none());
            self.progress.send_modify(|p| {
                p.done = done;
                p.ok = ok;
                p.done_ready = p.ready;
            });
            self.recorder.finished(c.command_id, c.outcome);
        }
    }

    fn on_message(&mut self, msg: RawMessage) {
        match msg.tag {
            tag::ROW_DESCRIPTION => self.on_row_description(msg),
            tag::NO_DATA => {
                if let Some(Expect::Describe {
                    statement,
                    name,
                    injected,
                }) = self.queue.front()
                {
                    let injected = *injected;
                    if !*statement {
                        self.portal_columns.remove(&**name);
                    }
                    self.queue.pop_front();
                    if injected {
                        return;
                    }
                }
                self.out.extend_from_slice(&msg.bytes);
            }
            tag::PARSE_COMPLETE | tag::CLOSE_COMPLETE => {
                match self.queue.front() {
                    Some(Expect::Parse { upstream, .. }) => {
                        // Columns of an earlier statement of that name are stale.
                        self.statement_columns.remove(upstream);
                        self.queue.pop_front();
                    }
                    Some(Expect::Close) => {
                        self.queue.pop_front();
                    }
                    _ => {}
                }
                self.out.extend_from_slice(&msg.bytes);
            }
            tag::BIND_COMPLETE => {
                if let Some(Expect::Bind { .. }) = self.queue.front() {
                    if let Some(Expect::Bind {
                        portal,
                        statement,
                        formats,
                        ..
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
            tag::DATA_ROW => self.on_data_row(msg),
            tag::COPY_OUT | tag::COPY_BOTH => {
                // COPY … TO STDOUT sends rows the gateway cannot split into
                // columns: with column rules in force it is refused (fail closed).
                if self.masker.has_column_rules(&self.info) {
                    self.copy_refused = true;
                    return;
                }
                self.out.extend_from_slice(&msg.bytes);
            }
            tag::COPY_DATA | tag::COPY_DONE if self.copy_refused => {}
            tag::COPY_DATA => self.on_copy_data(msg),
            tag::COMMAND_COMPLETE if self.copy_refused => self.on_copy_refused(),
            tag::COMMAND_COMPLETE | tag::PORTAL_SUSPENDED
                if self.current.as_ref().is_some_and(|c| c.withheld.is_some()) =>
            {
                self.on_withheld()
            }
            tag::COMMAND_COMPLETE | tag::EMPTY_QUERY | tag::PORTAL_SUSPENDED => {
                let tag_text = match msg.tag {
                    tag::COMMAND_COMPLETE => Reader::new(msg.body()).cstr().unwrap_or_default(),
                    tag::EMPTY_QUERY => "EMPTY".to_string(),
                    _ => "SUSPENDED".to_string(),
                };
                self.ensure_current();
                if let Some(c) = self.current.as_mut() {
                    c.outcome.tag = Some(tag_text);
                }
                if matches!(self.queue.front(), Some(Expect::Execute { .. })) {
                    self.finish();
                    self.queue.pop_front();
                }
                self.out.extend_from_slice(&msg.bytes);
            }
            tag::NOTICE => match self.masked_fields(&msg) {
                Some(bytes) => self.out.extend_from_slice(&bytes),
                None => self.out.extend_from_slice(&msg.bytes),
            },
            tag::ERROR => self.on_error(msg),
            tag::NOTIFICATION => match self.masked_notification(&msg) {
                Some(bytes) => self.out.extend_from_slice(&bytes),
                None => self.out.extend_from_slice(&msg.bytes),
            },
            tag::FUNCTION_CALL_RESPONSE => match self.masked_function_result(&msg) {
                Some(bytes) => self.out.extend_from_slice(&bytes),
                None => self.out.extend_from_slice(&msg.bytes),
            },
            tag::READY_FOR_QUERY => self.on_ready(msg),
            tag::PARAMETER_STATUS => {
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

    fn on_row_description(&mut self, msg: RawMessage) {
        let columns = Arc::new(parse_row_description(msg.body(), &self.tables).unwrap_or_default());
        match self.queue.front() {
            Some(Expect::Describe {
                statement,
                name,
                injected,
            }) => {
                let injected = *injected;
                if *statement {
                    self.statement_columns.insert(name.clone(), columns);
                } else {
                    self.portal_columns.insert(name.to_string(), columns);
                }
                self.queue.pop_front();
                if injected {
                    // The gateway asked; the client did not.
                    return;
                }
            }
            Some(Expect::Query { started, .. }) => {
                let started = started.clone();
                let (columns, withheld) = match self.follow_lineage(&started, columns) {
                    Ok(c) => (c, None),
                    Err(why) => (Arc::new(Vec::new()), Some(why)),
                };
                self.ensure_current();
                if let Some(c) = self.current.as_mut() {
                    absorb_counts(c);
                    c.withheld = withheld;
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

    /// Ends the session: an upstream answer the gateway cannot judge or mask
    /// must not reach the client.
    fn end_unplanned(&mut self, why: &str) {
        tracing::warn!(message = "Ending a session: a result could not be planned for masking.", session = %self.info.id, reason = why);
        self.queue.push_front(Expect::Fatal {
            code: wire::SQLSTATE_PROTOCOL,
            message: format!("sluice: {why}; the session was ended"),
        });
    }

    fn on_data_row(&mut self, msg: RawMessage) {
        self.ensure_current();
        let Some(c) = self.current.as_mut() else {
            // A row outside any command the gateway forwarded.
            self.end_unplanned("the upstream sent a row no forwarded command asked for");
            return;
        };
        if c.withheld.is_some() {
            return;
        }
        if c.columns.is_none() {
            self.end_unplanned("the upstream sent rows whose columns the gateway did not know");
            return;
        }
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
                // A row the masking plan cannot read could carry anything.
                self.end_unplanned("the upstream sent a malformed row that could not be masked");
                return;
            }
            // Nothing to mask: pass it and let the client's parser reject it.
            self.out.extend_from_slice(&msg.bytes);
            return;
        };
        let Some(plan) = c.plan.as_mut() else {
            c.outcome
                .sample
                .push(sample_row(values.iter().copied(), c.columns.as_deref()));
            self.out.extend_from_slice(&msg.bytes);
            return;
        };
        let changes = plan.mask_row_changes(&values);
        if changes.is_empty() {
            if want_sample {
                c.outcome
                    .sample
                    .push(sample_row(values.iter().copied(), c.columns.as_deref()));
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
    }

    fn on_copy_data(&mut self, msg: RawMessage) {
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
                self.out.extend_from_slice(&[tag::COPY_DATA]);
                self.out
                    .extend_from_slice(&((bytes.len() + 4) as i32).to_be_bytes());
                self.out.extend_from_slice(&bytes);
            }
            None => self.out.extend_from_slice(&msg.bytes),
        }
    }

    fn on_copy_refused(&mut self) {
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

    /// The end of a result whose rows were withheld: an error in its place.
    fn on_withheld(&mut self) {
        let why = self
            .current
            .as_mut()
            .and_then(|c| c.withheld.take())
            .unwrap_or_default();
        let message = format!("sluice: the result was withheld: {why}");
        wire::error(
            &mut self.out,
            false,
            wire::SQLSTATE_DENIED,
            &message,
            Some("rule: sluice:masking"),
            Some("Select the masked columns directly (they are masked), or leave them out."),
        );
        if let Some(c) = self.current.as_mut() {
            c.outcome.error = Some(message);
        }
        if matches!(self.queue.front(), Some(Expect::Execute { .. })) {
            self.finish();
            self.queue.pop_front();
        }
    }

    fn on_error(&mut self, msg: RawMessage) {
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
            Some(_) => self.skip_to_sync(&text),
        }
        match masked {
            Some(bytes) => self.out.extend_from_slice(&bytes),
            None => self.out.extend_from_slice(&msg.bytes),
        }
    }

    /// An error in the extended protocol: the server skips every message up
    /// to Sync, so their expectations go (Parses among them created nothing,
    /// Executes did not run, the gateway's own answers are not sent).
    fn skip_to_sync(&mut self, text: &str) {
        let mut first = true;
        while let Some(front) = self.queue.front() {
            // A simple Query sent before Sync is skipped too: the server
            // ignores every message but Sync after an extended-protocol error.
            if matches!(front, Expect::Sync | Expect::Fatal { .. }) {
                break;
            }
            match self.queue.pop_front() {
                Some(
                    Expect::Execute {
                        command_id,
                        started,
                        ..
                    }
                    | Expect::Query {
                        command_id,
                        started,
                    },
                ) => {
                    self.ensure_current_for(command_id, started);
                    if let Some(c) = self.current.as_mut() {
                        c.outcome.error = Some(if first {
                            text.to_string()
                        } else {
                            "not executed: an earlier message in the same pipeline failed".into()
                        });
                    }
                    self.finish();
                    first = false;
                }
                Some(Expect::Parse { upstream, .. }) => {
                    self.failed_parses.locked().push(upstream);
                }
                _ => {}
            }
        }
        // No Sync queued yet: what arrives before it is skipped as well.
        if self.queue.is_empty() {
            self.skipping = true;
        }
    }

    fn on_ready(&mut self, msg: RawMessage) {
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
                // What the gateway answers itself must still go out in order.
                e @ (Expect::Refused { .. }
                | Expect::RefusedSimple { .. }
                | Expect::Error { .. }
                | Expect::Reply(_)
                | Expect::Fatal { .. }) => {
                    self.queue.push_front(e);
                    break;
                }
                _ => {}
            }
        }
        // Counted after the commands it completes (see `Progress`).
        let idle = self.status == b'I';
        let done = self.progress.borrow().done;
        if idle {
            self.uncommitted.ended(done);
        }
        // After the caches are forgotten: what waited for a publication
        // reads the catalog anew.
        self.uncommitted.ready(done);
        self.progress.send_modify(|p| {
            p.ready += 1;
            if idle {
                p.last_idle = p.ready;
            }
        });
        self.out.extend_from_slice(&msg.bytes);
    }

    /// A NotificationResponse whose payload went through the detectors
    /// (`pg_notify(ch, value)` carries data like a row), or `None` when
    /// nothing needed masking.
    fn masked_notification(&self, msg: &RawMessage) -> Option<BytesMut> {
        let mut r = Reader::new(msg.body());
        let pid = r.i32()?;
        let channel = r.cstr()?;
        let payload = r.cstr()?;
        let (masked, _) = self.masker.mask_text(&self.info, &payload)?;
        let mut out = BytesMut::new();
        let len = 4 + 4 + channel.len() + 1 + masked.len() + 1;
        out.extend_from_slice(&[tag::NOTIFICATION]);
        out.extend_from_slice(&(len as i32).to_be_bytes());
        out.extend_from_slice(&pid.to_be_bytes());
        out.extend_from_slice(channel.as_bytes());
        out.extend_from_slice(&[0]);
        out.extend_from_slice(masked.as_bytes());
        out.extend_from_slice(&[0]);
        Some(out)
    }

    /// A fast-path function's result through the detectors, like a value of
    /// a computed column, or `None` when nothing needed masking.
    fn masked_function_result(&self, msg: &RawMessage) -> Option<BytesMut> {
        let mut r = Reader::new(msg.body());
        let len = r.i32()?;
        if len < 0 {
            return None;
        }
        let value = r.bytes(len as usize)?;
        let (masked, _) = self.masker.mask_bytes(&self.info, value)?;
        let mut out = BytesMut::new();
        out.extend_from_slice(&[tag::FUNCTION_CALL_RESPONSE]);
        out.extend_from_slice(&((4 + 4 + masked.len()) as i32).to_be_bytes());
        out.extend_from_slice(&(masked.len() as i32).to_be_bytes());
        out.extend_from_slice(&masked);
        Some(out)
    }

    /// An ErrorResponse/NoticeResponse with its text fields masked, or `None`
    /// when nothing in it needed masking.
    fn masked_fields(&self, msg: &crate::frame::RawMessage) -> Option<BytesMut> {
        // A statement that reads a masked column can make the server echo
        // its values (`national_id::int`): such texts are withheld whole.
        let withhold = self.echoes_ruled();
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
                b'M' if withhold => {
                    changed = true;
                    "sluice: the server's message was withheld: this statement reads a masked \
                     column and the message could echo its values (the SQLSTATE is the server's)"
                        .to_string()
                }
                b'D' | b'H' | b'W' | b'q' if withhold => {
                    changed = true;
                    continue;
                }
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

async fn recv_notice(notices: &mut Option<QueueReceiver<String>>) -> Option<String> {
    match notices {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Moves a finished plan's masking counts into the command's outcome.
fn absorb_counts(c: &mut Current) {
    if let Some(plan) = &c.plan {
        for (name, n) in plan.counts().iter() {
            *c.outcome.masked.entry(name.to_string()).or_default() += n;
        }
    }
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
                    // Only the bytes that can show, and more than fit: the
                    // cut below then still adds its "…" to a longer value.
                    _ => format!(
                        "\\x{}",
                        sluice_core::audit::hex_lower(
                            &b[..b.len().min(SAMPLE_VALUE_CHARS / 2 + 1)]
                        )
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

#[cfg(test)]
mod tests {
    use super::*;

    fn binary_column() -> Column {
        Column {
            name: "b".into(),
            table_oid: 0,
            column_number: 0,
            type_oid: 17,
            binary: true,
            table: None,
            source_column: None,
        }
    }

    #[test]
    fn a_sampled_value_shows_its_start_and_says_when_it_was_cut() {
        let long = vec![0xabu8; 500];
        let exact = [0x01u8; (SAMPLE_VALUE_CHARS - 2) / 2];
        let cols = vec![binary_column(), binary_column(), binary_column()];
        let row = sample_row(
            [Some(&long[..]), Some(&exact[..]), Some(&b"\xff\x00"[..])].into_iter(),
            Some(&cols),
        );
        let cut = row[0].as_deref().unwrap_or_default();
        assert_eq!(
            cut,
            format!("\\x{}…", "ab".repeat((SAMPLE_VALUE_CHARS - 2) / 2))
        );
        // A value that just fits is shown whole, with no mark.
        assert_eq!(
            row[1].as_deref(),
            Some(format!("\\x{}", "01".repeat(exact.len())).as_str())
        );
        assert_eq!(row[2].as_deref(), Some("\\xff00"));
        // One byte more than fits is cut, and marked.
        let over = vec![0x01u8; exact.len() + 1];
        let row = sample_row([Some(&over[..])].into_iter(), Some(&cols));
        assert_eq!(
            row[0].as_deref(),
            Some(format!("\\x{}…", "01".repeat(exact.len())).as_str())
        );
        // Text that is not UTF-8 is shown as hex too; text is shown as is.
        let text = sample_row([Some(&b"\xc3("[..]), Some(&b"ok"[..])].into_iter(), None);
        assert_eq!(text, [Some("\\xc328".to_string()), Some("ok".to_string())]);
    }
}

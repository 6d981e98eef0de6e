//! The relay: client messages become commands in the core pipeline before
//! they are forwarded; upstream responses are matched to the commands that
//! caused them, pass the masking position, and are recorded as outcomes.
//!
//! - `requests`: the client → upstream half. It owns the lifecycle of every
//!   statement and portal (`registry`: gateway-chosen upstream names, the
//!   exact text each portal runs), judges each Query and Execute on that
//!   text, holds barriers (`barrier`) and tracks SQL `PREPARE` (`prepared`).
//! - `responses`: the upstream → client half. All writes to the client happen
//!   there, in upstream order, so a refusal injected for a pipelined message
//!   arrives exactly where the server's answer would have; no row leaves
//!   before its columns are known and planned for masking.
//! - `tags`: message type bytes per direction.

mod barrier;
mod catalog_context;
pub(crate) mod gate;
mod prepared;
mod registry;
mod requests;
mod responses;
mod tags;

use crate::catalog::{Catalog, TableInfo};
use crate::frame::Reader;
use crate::upstream::Upstream;
use crate::BoxedStream;
use bytes::BytesMut;
use sluice_core::session::{SessionError, SessionHandle};
use sluice_core::{Column, Denial};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;

/// How long the response half gets to deliver a fatal error before the session is cut.
const FATAL_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// What the response half expects from the upstream, in order.
enum Expect {
    /// A forwarded Parse creating `upstream`.
    Parse {
        upstream: Arc<str>,
        /// Held until the server has parsed it (see `gate`).
        #[allow(dead_code)]
        gate: Option<gate::GateHold>,
    },
    Bind {
        portal: String,
        /// The upstream statement name.
        statement: Arc<str>,
        formats: Vec<i16>,
        /// Held until the server has bound it (see `gate`).
        #[allow(dead_code)]
        gate: Option<gate::GateHold>,
    },
    Describe {
        statement: bool,
        /// The upstream name (statement) or the portal name.
        name: Arc<str>,
        /// Sent by the gateway to learn a result's columns: the answer is
        /// kept, not forwarded.
        injected: bool,
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
    /// An error the gateway answers for a message it did not forward (an
    /// unknown or duplicate name), as the server would have.
    Error {
        code: &'static str,
        message: String,
    },
    /// A message the gateway answers itself in its place (e.g. CloseComplete).
    Reply(BytesMut),
    /// End the session with this error.
    Fatal {
        code: &'static str,
        message: String,
    },
}

/// What cancels the session's running upstream command (a CancelRequest
/// to its backend).
#[derive(Clone)]
pub struct Canceller {
    pub target: crate::upstream::UpstreamTarget,
    pub pid: i32,
    pub secret: Vec<u8>,
}

pub struct Relay {
    canceller: Option<Canceller>,
    handle: SessionHandle,
    client: BoxedStream,
    client_buf: BytesMut,
    upstream: Upstream,
    catalog: Option<Arc<Catalog>>,
    resolver: Option<Arc<Catalog>>,
    cancel: Arc<tokio::sync::Notify>,
}

impl Relay {
    /// `catalog`: source-table names for masking, when the masker wants
    /// them; `resolver`: the views and functions statements name, for the
    /// policy (`None` judges statements on their text alone); `canceller`:
    /// cancels the session's upstream command (a schema change that
    /// outlasts its hold on the catalog gate).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        handle: SessionHandle,
        client: BoxedStream,
        client_buf: BytesMut,
        upstream: Upstream,
        catalog: Option<Arc<Catalog>>,
        resolver: Option<Arc<Catalog>>,
        cancel: Arc<tokio::sync::Notify>,
        canceller: Option<Canceller>,
    ) -> Self {
        Relay {
            canceller,
            handle,
            client,
            client_buf,
            upstream,
            catalog,
            resolver,
            cancel,
        }
    }

    pub async fn run(self) -> Result<(), SessionError> {
        let Relay {
            canceller,
            handle,
            client,
            client_buf,
            upstream,
            catalog,
            resolver,
            cancel,
        } = self;
        let (client_r, client_w) = tokio::io::split(client);
        let (up_r, up_w) = tokio::io::split(upstream.stream);
        let (tx, rx) = sluice_core::sync::queue();
        let (progress_tx, progress_rx) = watch::channel(barrier::Progress::default());
        let failed_parses = Arc::new(std::sync::Mutex::new(Vec::new()));
        let uncommitted = catalog_context::Uncommitted::new(resolver.clone(), canceller);
        let mut requests = requests::Requests::new(
            &handle,
            client_r,
            client_buf,
            up_w,
            tx,
            cancel,
            progress_rx,
            failed_parses.clone(),
            resolver,
            uncommitted.clone(),
        );
        let mut responses = responses::Responses::new(
            &handle,
            up_r,
            upstream.pending,
            client_w,
            rx,
            catalog,
            progress_tx,
            failed_parses,
            uncommitted,
        );
        let requests_done = async {
            let r = requests.run().await;
            if requests.fatal_queued() {
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

/// View definitions by the names statements write them with.
pub(crate) type Views = Arc<HashMap<String, Arc<str>>>;

/// When a forwarded command left for the upstream, its place among the
/// forwarded commands (for barriers), and its `upstream` span (open until
/// the command's response ends).
#[derive(Clone)]
struct Started {
    at: Instant,
    seq: u64,
    span: tracing::Span,
    /// The SQL the command runs (empty for a fast-path call): masking follows
    /// what its result columns derive from.
    text: Arc<str>,
    /// The views it reads, as the catalog defines them (lineage follows them).
    views: Views,
    /// Held until the command is finished (see `gate`).
    #[allow(dead_code)]
    gate: Option<Arc<gate::GateHold>>,
}

impl Started {
    fn now(command_id: u64, seq: u64, text: Arc<str>, views: Views) -> Self {
        Started {
            at: Instant::now(),
            seq,
            span: tracing::info_span!("upstream", command_id, error = tracing::field::Empty),
            text,
            views,
            gate: None,
        }
    }

    /// Holds `gate` until the command is finished.
    fn holding(mut self, gate: Option<gate::GateHold>) -> Self {
        self.gate = gate.map(Arc::new);
        self
    }

    /// The span of the masking position over one result of this command.
    fn masking_span(&self) -> tracing::Span {
        tracing::info_span!(parent: &self.span, "masking", masked = tracing::field::Empty)
    }
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

/// An output buffer that grew past this is given back once written, so a
/// session that sent one large result does not keep its size while idle.
const KEEP_OUTPUT_CAPACITY: usize = 16 * 1024;

/// Empties a written output buffer, releasing it when it grew large.
fn release_spent(out: &mut bytes::BytesMut) {
    if out.capacity() > KEEP_OUTPUT_CAPACITY {
        *out = bytes::BytesMut::new();
    } else {
        out.clear();
    }
}

fn upstream_err(e: std::io::Error) -> SessionError {
    SessionError::upstream("upstream i/o", e)
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

//! Frontend messages of the PostgreSQL extended query protocol, built byte by byte, and a
//! raw session that sends any sequence of them in one write and reads the backend's answer
//! without panicking (the protocol fuzzer needs to report, not abort).
//!
//! Login (startup, the token as the cleartext password) is [`RawConn::login`].

use std::io;
use std::time::{Duration, Instant};

use crate::raw::{message, query_message, Msg, RawConn};

/// Frontend message tags.
pub mod tag {
    /// Query.
    pub const QUERY: u8 = b'Q';
    /// Parse.
    pub const PARSE: u8 = b'P';
    /// Bind.
    pub const BIND: u8 = b'B';
    /// Describe.
    pub const DESCRIBE: u8 = b'D';
    /// Execute.
    pub const EXECUTE: u8 = b'E';
    /// Close.
    pub const CLOSE: u8 = b'C';
    /// Flush.
    pub const FLUSH: u8 = b'H';
    /// Sync.
    pub const SYNC: u8 = b'S';
}

fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

/// A frontend message, kept symbolic so a failing sequence can be printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frontend {
    /// Simple Query.
    Query(String),
    /// Parse: statement name, SQL, parameter type OIDs.
    Parse {
        /// Statement name (`""` is the unnamed statement).
        name: String,
        /// The SQL.
        sql: String,
        /// Parameter type OIDs (0: let the server infer).
        types: Vec<u32>,
    },
    /// Bind: portal, statement, text parameters (`None` is NULL), result format codes.
    Bind {
        /// Portal name.
        portal: String,
        /// Statement name.
        statement: String,
        /// Parameter values in text format.
        params: Vec<Option<String>>,
        /// Result column format codes (0 text, 1 binary; empty: all text).
        result_formats: Vec<i16>,
    },
    /// Describe a statement (`S`) or portal (`P`).
    Describe {
        /// `b'S'` or `b'P'`.
        kind: u8,
        /// Its name.
        name: String,
    },
    /// Execute a portal with a row limit (0: all).
    Execute {
        /// Portal name.
        portal: String,
        /// Maximum rows (0: no limit).
        max_rows: i32,
    },
    /// Close a statement (`S`) or portal (`P`).
    Close {
        /// `b'S'` or `b'P'`.
        kind: u8,
        /// Its name.
        name: String,
    },
    /// Flush.
    Flush,
    /// Sync.
    Sync,
}

impl Frontend {
    /// Parse.
    pub fn parse(name: &str, sql: &str) -> Self {
        Frontend::Parse {
            name: name.into(),
            sql: sql.into(),
            types: vec![],
        }
    }

    /// Bind with text parameters and text results.
    pub fn bind(portal: &str, statement: &str, params: &[&str]) -> Self {
        Frontend::Bind {
            portal: portal.into(),
            statement: statement.into(),
            params: params.iter().map(|p| Some(p.to_string())).collect(),
            result_formats: vec![],
        }
    }

    /// Execute with no row limit.
    pub fn execute(portal: &str) -> Self {
        Frontend::Execute {
            portal: portal.into(),
            max_rows: 0,
        }
    }

    /// Describe a statement.
    pub fn describe_statement(name: &str) -> Self {
        Frontend::Describe {
            kind: b'S',
            name: name.into(),
        }
    }

    /// Describe a portal.
    pub fn describe_portal(name: &str) -> Self {
        Frontend::Describe {
            kind: b'P',
            name: name.into(),
        }
    }

    /// Simple Query.
    pub fn query(sql: &str) -> Self {
        Frontend::Query(sql.into())
    }

    /// The wire bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        match self {
            Frontend::Query(sql) => query_message(sql),
            Frontend::Parse { name, sql, types } => {
                cstr(&mut b, name);
                cstr(&mut b, sql);
                b.extend_from_slice(&(types.len() as i16).to_be_bytes());
                for t in types {
                    b.extend_from_slice(&t.to_be_bytes());
                }
                message(tag::PARSE, &b)
            }
            Frontend::Bind {
                portal,
                statement,
                params,
                result_formats,
            } => {
                cstr(&mut b, portal);
                cstr(&mut b, statement);
                b.extend_from_slice(&0i16.to_be_bytes()); // all parameters in text
                b.extend_from_slice(&(params.len() as i16).to_be_bytes());
                for p in params {
                    match p {
                        Some(v) => {
                            b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                            b.extend_from_slice(v.as_bytes());
                        }
                        None => b.extend_from_slice(&(-1i32).to_be_bytes()),
                    }
                }
                b.extend_from_slice(&(result_formats.len() as i16).to_be_bytes());
                for f in result_formats {
                    b.extend_from_slice(&f.to_be_bytes());
                }
                message(tag::BIND, &b)
            }
            Frontend::Describe { kind, name } => {
                b.push(*kind);
                cstr(&mut b, name);
                message(tag::DESCRIBE, &b)
            }
            Frontend::Execute { portal, max_rows } => {
                cstr(&mut b, portal);
                b.extend_from_slice(&max_rows.to_be_bytes());
                message(tag::EXECUTE, &b)
            }
            Frontend::Close { kind, name } => {
                b.push(*kind);
                cstr(&mut b, name);
                message(tag::CLOSE, &b)
            }
            Frontend::Flush => message(tag::FLUSH, &[]),
            Frontend::Sync => message(tag::SYNC, &[]),
        }
    }

    /// How many ReadyForQuery the backend sends for this message (Query and Sync: one).
    pub fn readies(&self) -> usize {
        usize::from(matches!(self, Frontend::Query(_) | Frontend::Sync))
    }
}

/// All of `msgs` in one buffer (one write: the gateway sees them pipelined).
pub fn encode_all(msgs: &[Frontend]) -> Vec<u8> {
    msgs.iter().flat_map(Frontend::encode).collect()
}

/// How an exchange ended.
#[derive(Debug)]
pub enum Ended {
    /// Every expected ReadyForQuery arrived.
    Ready,
    /// The peer closed the connection (EOF or reset) first.
    Closed,
    /// Nothing more arrived within the timeout, with ReadyForQuery still missing.
    TimedOut,
}

/// What came back for a sequence.
#[derive(Debug)]
pub struct Answer {
    /// Backend messages, in order.
    pub messages: Vec<Msg>,
    /// How it ended.
    pub ended: Ended,
}

impl Answer {
    /// The ErrorResponses.
    pub fn errors(&self) -> Vec<crate::raw::ErrorFields> {
        crate::raw::errors(&self.messages)
    }

    /// The text values of the DataRows.
    pub fn rows(&self) -> Vec<Vec<Option<String>>> {
        crate::raw::rows(&self.messages)
    }

    /// Every DataRow body, raw (for searching binary and text values alike).
    pub fn data_bytes(&self) -> Vec<u8> {
        self.messages
            .iter()
            .filter(|m| m.tag != b'Z')
            .flat_map(|m| m.body.iter().copied())
            .collect()
    }

    /// The CommandComplete tags.
    pub fn tags(&self) -> Vec<String> {
        self.messages
            .iter()
            .filter(|m| m.tag == b'C')
            .map(|m| {
                String::from_utf8_lossy(m.body.strip_suffix(&[0]).unwrap_or(&m.body)).into_owned()
            })
            .collect()
    }
}

/// Sends `msgs` in one write and reads until as many ReadyForQuery as they ask for have
/// arrived (the peer closes, or `quiet` passes with nothing new arriving). Never panics.
pub fn exchange(conn: &mut RawConn, msgs: &[Frontend], quiet: Duration) -> Answer {
    let want: usize = msgs.iter().map(Frontend::readies).sum();
    if conn.send(&encode_all(msgs)).is_err() {
        return Answer {
            messages: vec![],
            ended: Ended::Closed,
        };
    }
    read_readies(conn, want, quiet)
}

/// Reads until `want` ReadyForQuery (see [`exchange`]).
pub fn read_readies(conn: &mut RawConn, want: usize, quiet: Duration) -> Answer {
    let mut messages = Vec::new();
    let mut seen = 0;
    conn.stream.set_read_timeout(Some(quiet)).ok();
    let mut last = Instant::now();
    let ended = loop {
        if seen >= want {
            break Ended::Ready;
        }
        match conn.read_msg() {
            Ok(Some(m)) => {
                if m.tag == b'Z' {
                    seen += 1;
                }
                messages.push(m);
                last = Instant::now();
            }
            Ok(None) => break Ended::Closed,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) && last.elapsed() >= quiet =>
            {
                break Ended::TimedOut
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break Ended::Closed,
        }
    };
    conn.stream
        .set_read_timeout(Some(crate::raw::IO_TIMEOUT))
        .ok();
    Answer { messages, ended }
}

//! A minimal synchronous PostgreSQL client for the soak and fault scripts:
//! startup, cleartext password (the gateway's token) and simple queries.
//! Threads and plain sockets keep a thousand sessions cheap on the client
//! side, where a thousand psql processes would dwarf the gateway being measured.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// How a query ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    /// CommandComplete then ReadyForQuery: the command ran and was acknowledged.
    Done(String),
    /// An ErrorResponse: (SQLSTATE, message).
    Error(String, String),
}

pub(crate) struct PgClient {
    stream: TcpStream,
}

fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// Fields of an ErrorResponse/NoticeResponse body: (SQLSTATE, message).
fn error_fields(body: &[u8]) -> (String, String) {
    let (mut code, mut msg) = (String::new(), String::new());
    for field in body.split(|&b| b == 0) {
        if let Some((&k, v)) = field.split_first() {
            let v = String::from_utf8_lossy(v).into_owned();
            match k {
                b'C' => code = v,
                b'M' => msg = v,
                _ => {}
            }
        }
    }
    (code, msg)
}

impl PgClient {
    /// Connects as `user` to database (connection) `db` with `password`.
    pub(crate) fn connect(
        addr: SocketAddr,
        user: &str,
        db: &str,
        password: &str,
        timeout: Duration,
    ) -> Result<PgClient> {
        let stream = TcpStream::connect_timeout(&addr, timeout)
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        let mut c = PgClient { stream };
        let mut body = Vec::new();
        body.extend_from_slice(&196608i32.to_be_bytes());
        for (k, v) in [("user", user), ("database", db)] {
            cstr(&mut body, k);
            cstr(&mut body, v);
        }
        body.push(0);
        let mut startup = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        startup.extend_from_slice(&body);
        c.stream.write_all(&startup)?;
        loop {
            let (tag, body) = c.read_message()?;
            match tag {
                b'R' => {
                    let code = body
                        .get(..4)
                        .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                    match code {
                        Some(0) => {}
                        Some(3) => {
                            let mut p = Vec::new();
                            cstr(&mut p, password);
                            c.stream.write_all(&message(b'p', &p))?;
                        }
                        other => bail!("unsupported authentication request {other:?}"),
                    }
                }
                b'E' => {
                    let (code, msg) = error_fields(&body);
                    bail!("refused at startup: {code} {msg}");
                }
                b'Z' => return Ok(c),
                _ => {}
            }
        }
    }

    fn read_message(&mut self) -> Result<(u8, Vec<u8>)> {
        let mut header = [0u8; 5];
        self.stream
            .read_exact(&mut header)
            .context("reading a message header")?;
        let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
        if !(4..=(64 << 20)).contains(&len) {
            bail!("bad message length {len}");
        }
        let mut body = vec![0u8; len as usize - 4];
        self.stream
            .read_exact(&mut body)
            .context("reading a message body")?;
        Ok((header[0], body))
    }

    /// Sends one simple query and reads to ReadyForQuery.
    pub(crate) fn query(&mut self, sql: &str) -> Result<Reply> {
        let mut body = Vec::new();
        cstr(&mut body, sql);
        self.stream.write_all(&message(b'Q', &body))?;
        let mut reply = None;
        loop {
            let (tag, body) = self.read_message()?;
            match tag {
                b'C' if reply.is_none() => {
                    reply = Some(Reply::Done(
                        String::from_utf8_lossy(body.strip_suffix(&[0]).unwrap_or(&body))
                            .into_owned(),
                    ));
                }
                b'E' => {
                    let (code, msg) = error_fields(&body);
                    reply = Some(Reply::Error(code, msg));
                }
                b'Z' => {
                    return reply.context("ReadyForQuery without a result");
                }
                _ => {}
            }
        }
    }

    /// Sends a query without waiting for its answer.
    pub(crate) fn send_query(&mut self, sql: &str) -> Result<()> {
        let mut body = Vec::new();
        cstr(&mut body, sql);
        self.stream.write_all(&message(b'Q', &body))?;
        Ok(())
    }

    /// Terminate, then close.
    pub(crate) fn close(mut self) {
        let _ = self.stream.write_all(&message(b'X', &[]));
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// Half-closes the sending side (the client will send nothing more).
    pub(crate) fn shutdown_write(&self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }
}

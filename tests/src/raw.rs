//! A minimal PostgreSQL wire-protocol client over a plain `std::net::TcpStream`, for tests
//! that must send what no well-behaved client would.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Default read/write timeout on raw sockets.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// One backend message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    /// The type byte.
    pub tag: u8,
    /// The body after the length.
    pub body: Vec<u8>,
}

impl Msg {
    /// The fields of an ErrorResponse / NoticeResponse.
    pub fn fields(&self) -> ErrorFields {
        ErrorFields::parse(&self.body)
    }
}

/// The fields of an ErrorResponse (`S`, `C`, `M`, …).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorFields(pub BTreeMap<char, String>);

impl ErrorFields {
    /// Parses an ErrorResponse body.
    pub fn parse(body: &[u8]) -> Self {
        let mut map = BTreeMap::new();
        let mut rest = body;
        while let Some((&kind, tail)) = rest.split_first() {
            if kind == 0 {
                break;
            }
            let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
            map.insert(
                kind as char,
                String::from_utf8_lossy(&tail[..end]).into_owned(),
            );
            rest = tail.get(end + 1..).unwrap_or_default();
        }
        ErrorFields(map)
    }

    /// SQLSTATE (`C`).
    pub fn code(&self) -> &str {
        self.0.get(&'C').map(String::as_str).unwrap_or_default()
    }

    /// Message (`M`).
    pub fn message(&self) -> &str {
        self.0.get(&'M').map(String::as_str).unwrap_or_default()
    }

    /// Severity (`S`).
    pub fn severity(&self) -> &str {
        self.0.get(&'S').map(String::as_str).unwrap_or_default()
    }
}

impl std::fmt::Display for ErrorFields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.severity(), self.code(), self.message())
    }
}

/// A startup packet (protocol 3.0) with these parameters.
pub fn startup_packet(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = 196608i32.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut out = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

/// A typed frontend message.
pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// A simple Query message.
pub fn query_message(sql: &str) -> Vec<u8> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    message(b'Q', &body)
}

/// One unnamed statement through the extended protocol, without parameters:
/// Parse, Bind, Execute and Sync.
pub fn extended_message(sql: &str) -> Vec<u8> {
    let mut parse = format!("\0{sql}\0").into_bytes();
    parse.extend_from_slice(&0i16.to_be_bytes());
    let mut bind = b"\0\0".to_vec();
    bind.extend_from_slice(&[0; 6]); // no formats, no parameters, no result formats
    let mut execute = b"\0".to_vec();
    execute.extend_from_slice(&0i32.to_be_bytes());
    let mut out = message(b'P', &parse);
    out.extend(message(b'B', &bind));
    out.extend(message(b'E', &execute));
    out.extend(message(b'S', &[]));
    out
}

/// A CancelRequest packet.
pub fn cancel_packet(pid: i32, secret: i32) -> Vec<u8> {
    let mut out = 16i32.to_be_bytes().to_vec();
    out.extend_from_slice(&80877102i32.to_be_bytes());
    out.extend_from_slice(&pid.to_be_bytes());
    out.extend_from_slice(&secret.to_be_bytes());
    out
}

/// Sends a CancelRequest on a new connection and waits for the gateway to close it.
pub fn send_cancel(addr: SocketAddr, pid: i32, secret: i32) {
    let mut conn = RawConn::connect(addr);
    conn.send(&cancel_packet(pid, secret))
        .expect("sending a CancelRequest");
    let closed = conn.read_to_close(Duration::from_secs(15));
    assert!(
        closed.bytes.is_empty(),
        "a CancelRequest gets no answer, got {:?}",
        closed.bytes
    );
}

/// The ErrorResponses among `msgs`.
pub fn errors(msgs: &[Msg]) -> Vec<ErrorFields> {
    msgs.iter()
        .filter(|m| m.tag == b'E')
        .map(Msg::fields)
        .collect()
}

/// The text values of the DataRows among `msgs` (NULL as `None`).
pub fn rows(msgs: &[Msg]) -> Vec<Vec<Option<String>>> {
    msgs.iter()
        .filter(|m| m.tag == b'D')
        .map(|m| {
            let b = &m.body;
            let n = i16::from_be_bytes([b[0], b[1]]);
            let mut at = 2;
            (0..n)
                .map(|_| {
                    let len = i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
                    at += 4;
                    (len >= 0).then(|| {
                        let v = String::from_utf8_lossy(&b[at..at + len as usize]).into_owned();
                        at += len as usize;
                        v
                    })
                })
                .collect()
        })
        .collect()
}

/// How a connection ended, as seen by [`RawConn::read_to_close`].
#[derive(Debug, Default)]
pub struct Closed {
    /// Every message that parsed before the end.
    pub messages: Vec<Msg>,
    /// The raw bytes received.
    pub bytes: Vec<u8>,
    /// Whether the end was an orderly EOF (false: reset or other error).
    pub eof: bool,
}

impl Closed {
    /// The ErrorResponses received.
    pub fn errors(&self) -> Vec<ErrorFields> {
        self.messages
            .iter()
            .filter(|m| m.tag == b'E')
            .map(Msg::fields)
            .collect()
    }
}

/// A raw client connection.
#[derive(Debug)]
pub struct RawConn {
    /// The socket.
    pub stream: TcpStream,
    /// The messages received during login (ParameterStatus, BackendKeyData, …).
    pub startup: Vec<Msg>,
    buf: Vec<u8>,
}

impl RawConn {
    /// Connects with [`IO_TIMEOUT`] read/write timeouts.
    pub fn connect(addr: SocketAddr) -> RawConn {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
            .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
        stream.set_read_timeout(Some(IO_TIMEOUT)).ok();
        stream.set_write_timeout(Some(IO_TIMEOUT)).ok();
        stream.set_nodelay(true).ok();
        RawConn {
            stream,
            startup: Vec::new(),
            buf: Vec::new(),
        }
    }

    /// Waits up to `timeout` for each read (a statement known to run long).
    pub fn set_read_timeout(&mut self, timeout: Duration) {
        self.stream.set_read_timeout(Some(timeout)).ok();
    }

    /// Writes bytes.
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Reads the next backend message; `Ok(None)` on EOF.
    pub fn read_msg(&mut self) -> io::Result<Option<Msg>> {
        loop {
            if self.buf.len() >= 5 {
                let len = i32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
                if len < 4 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("backend message length {len}"),
                    ));
                }
                let total = 1 + len as usize;
                if self.buf.len() >= total {
                    let msg: Vec<u8> = self.buf.drain(..total).collect();
                    return Ok(Some(Msg {
                        tag: msg[0],
                        body: msg[5..].to_vec(),
                    }));
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Ok(None);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads messages up to and including ReadyForQuery. Panics on EOF/timeout.
    #[track_caller]
    pub fn read_until_ready(&mut self) -> Vec<Msg> {
        let mut out = Vec::new();
        loop {
            match self.read_msg() {
                Ok(Some(m)) => {
                    let done = m.tag == b'Z';
                    out.push(m);
                    if done {
                        return out;
                    }
                }
                Ok(None) => panic!("connection closed before ReadyForQuery; got {out:?}"),
                Err(e) => panic!("reading until ReadyForQuery: {e}; got {out:?}"),
            }
        }
    }

    /// Sends a startup message (plaintext) and the token as the password. Returns the
    /// authenticated connection after ReadyForQuery, or the ErrorResponse that refused it.
    /// Panics if the gateway closes without an ErrorResponse or takes more than 15 s.
    pub fn login(
        addr: SocketAddr,
        user: &str,
        database: &str,
        token: &str,
    ) -> Result<RawConn, ErrorFields> {
        Self::login_within(addr, user, database, token, Duration::from_secs(15))
    }

    /// [`RawConn::login`] with a bound on the whole exchange.
    #[track_caller]
    pub fn login_within(
        addr: SocketAddr,
        user: &str,
        database: &str,
        token: &str,
        within: Duration,
    ) -> Result<RawConn, ErrorFields> {
        let deadline = Instant::now() + within;
        let mut conn = RawConn::connect(addr);
        conn.send(&startup_packet(&[("user", user), ("database", database)]))
            .expect("sending the startup message");
        let next = |conn: &mut RawConn, what: &str| -> Msg {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no answer to the login within {within:?} ({what})"
            );
            conn.stream.set_read_timeout(Some(left)).ok();
            match conn.read_msg() {
                Ok(Some(m)) => m,
                Ok(None) => panic!("the gateway closed the connection during login ({what})"),
                Err(e) => panic!("no answer to the login within {within:?} ({what}): {e}"),
            }
        };
        let first = next(&mut conn, "waiting for the authentication request");
        match first.tag {
            b'R' => assert_eq!(
                first.body,
                3i32.to_be_bytes(),
                "expected AuthenticationCleartextPassword"
            ),
            b'E' => return Err(first.fields()),
            other => panic!("unexpected first message {:?}", other as char),
        }
        let mut body = token.as_bytes().to_vec();
        body.push(0);
        conn.send(&message(b'p', &body))
            .expect("sending the password message");
        loop {
            let m = next(&mut conn, "waiting for ReadyForQuery after the password");
            match m.tag {
                b'E' => return Err(m.fields()),
                b'Z' => {
                    conn.startup.push(m);
                    conn.stream.set_read_timeout(Some(IO_TIMEOUT)).ok();
                    return Ok(conn);
                }
                _ => conn.startup.push(m),
            }
        }
    }

    /// The (process id, secret key) from BackendKeyData.
    pub fn backend_key(&self) -> Option<(i32, i32)> {
        let k = self.startup.iter().find(|m| m.tag == b'K')?;
        let b = &k.body;
        (b.len() == 8).then(|| {
            (
                i32::from_be_bytes([b[0], b[1], b[2], b[3]]),
                i32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            )
        })
    }

    /// Sends a simple query and returns the messages up to ReadyForQuery.
    #[track_caller]
    pub fn query(&mut self, sql: &str) -> Vec<Msg> {
        self.send(&query_message(sql)).expect("sending a query");
        self.read_until_ready()
    }

    /// Runs one statement through the extended protocol ([`extended_message`]) and returns
    /// everything up to ReadyForQuery.
    pub fn extended(&mut self, sql: &str) -> Vec<Msg> {
        self.send(&extended_message(sql))
            .expect("sending a statement");
        self.read_until_ready()
    }

    /// The errors [`Self::extended`] got back.
    pub fn extended_errors(&mut self, sql: &str) -> Vec<ErrorFields> {
        errors(&self.extended(sql))
    }

    /// Reads everything until the peer closes the connection (EOF or reset). Panics if it is
    /// still open after `within`.
    #[track_caller]
    pub fn read_to_close(&mut self, within: Duration) -> Closed {
        let deadline = Instant::now() + within;
        let mut closed = Closed {
            bytes: std::mem::take(&mut self.buf),
            ..Closed::default()
        };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "the gateway kept the connection open for more than {within:?} (received {} bytes: {:?})",
                closed.bytes.len(),
                String::from_utf8_lossy(&closed.bytes)
            );
            self.stream
                .set_read_timeout(Some(left.min(Duration::from_millis(250))))
                .ok();
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    closed.eof = true;
                    break;
                }
                Ok(n) => closed.bytes.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => break,
            }
        }
        closed.messages = parse_messages(&closed.bytes);
        closed
    }
}

/// Splits backend messages off `bytes`, stopping at the first one that does not parse.
pub fn parse_messages(bytes: &[u8]) -> Vec<Msg> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 5 {
        let len = i32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]);
        if len < 4 || rest.len() < 1 + len as usize {
            break;
        }
        out.push(Msg {
            tag: rest[0],
            body: rest[5..1 + len as usize].to_vec(),
        });
        rest = &rest[1 + len as usize..];
    }
    out
}

//! The gateway's own connection to the upstream PostgreSQL: transport (TLS per
//! `upstream_tls`), startup, and authentication with the gateway-held
//! credential (cleartext, md5, SCRAM-SHA-256 with the server's proof checked).

use crate::frame::{split_message, Reader, MAX_BACKEND_MESSAGE};
use crate::{BoxedStream, PgError};
use bytes::BytesMut;
use pgwire::messages::startup::{Password, SASLInitialResponse, SASLResponse, Startup};
use pgwire::messages::Message;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use sluice_core::config::{ConnectionConfig, UpstreamTls};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Startup parameters a client may pass through to the upstream. Anything
/// else (`options`, `search_path`, `replication`, …) is dropped: those change
/// how the upstream interprets commands behind the policy's back.
pub const FORWARDED_PARAMETERS: &[&str] = &[
    "application_name",
    "client_encoding",
    "DateStyle",
    "datestyle",
    "TimeZone",
    "timezone",
    "IntervalStyle",
    "extra_float_digits",
];

/// An authenticated upstream connection, ready for queries.
pub struct Upstream {
    pub stream: BoxedStream,
    /// Bytes read past the startup phase (belong to the relay).
    pub pending: BytesMut,
    /// ParameterStatus and NoticeResponse messages to replay to the client.
    pub greeting: BytesMut,
    pub backend_pid: i32,
    pub backend_secret: Vec<u8>,
}

/// Where and how to reach the upstream again (for CancelRequest).
#[derive(Debug, Clone)]
pub struct UpstreamTarget {
    pub addr: String,
    pub tls: UpstreamTls,
    pub tls_config: Option<Arc<rustls::ClientConfig>>,
}

impl UpstreamTarget {
    pub fn for_connection(conn: &ConnectionConfig) -> Result<Self, PgError> {
        let settings = settings(conn)?;
        let tls_config = sluice_core::tls::upstream_client_config(
            settings.upstream_tls,
            settings.upstream_ca.as_deref(),
        )
        .map_err(|e| PgError::Config(e.to_string()))?;
        Ok(UpstreamTarget {
            addr: conn.upstream.clone(),
            tls: settings.upstream_tls,
            tls_config,
        })
    }

    /// Opens the transport: TCP, then TLS as the mode asks.
    pub async fn open(&self) -> Result<BoxedStream, PgError> {
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.addr))
            .await
            .map_err(|_| PgError::Upstream(format!("connecting to {} timed out", self.addr)))?
            .map_err(|e| PgError::Upstream(format!("cannot connect to {}: {e}", self.addr)))?;
        tcp.set_nodelay(true)
            .map_err(|e| PgError::Upstream(e.to_string()))?;
        let Some(tls_config) = &self.tls_config else {
            return Ok(Box::new(tcp));
        };
        let mut tcp = tcp;
        // SSLRequest: length 8, code 80877103.
        tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
            .await
            .map_err(|e| PgError::Upstream(e.to_string()))?;
        let answer = tokio::time::timeout(CONNECT_TIMEOUT, tcp.read_u8())
            .await
            .map_err(|_| PgError::Upstream("no answer to SSLRequest".into()))?
            .map_err(|e| PgError::Upstream(e.to_string()))?;
        match answer {
            b'S' => {
                let host = self
                    .addr
                    .rsplit_once(':')
                    .map(|(h, _)| h.trim_matches(['[', ']']))
                    .unwrap_or(&self.addr)
                    .to_string();
                let name = rustls::pki_types::ServerName::try_from(host)
                    .map_err(|e| PgError::Config(format!("upstream host name: {e}")))?;
                let tls = tokio_rustls::TlsConnector::from(tls_config.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| PgError::Upstream(format!("TLS to upstream failed: {e}")))?;
                Ok(Box::new(tls))
            }
            b'N' if self.tls == UpstreamTls::Prefer => Ok(Box::new(tcp)),
            b'N' => Err(PgError::Upstream(
                "the upstream does not support TLS, and upstream_tls requires it".into(),
            )),
            other => Err(PgError::Upstream(format!(
                "unexpected answer {other:#x} to SSLRequest"
            ))),
        }
    }
}

/// The connection's settings (checked at start, so an error here is a
/// configuration the gateway was not meant to run).
fn settings(conn: &ConnectionConfig) -> Result<crate::PostgresSettings, PgError> {
    crate::PostgresSettings::of(conn)
        .map_err(|(key, message)| PgError::Config(format!("{key}: {message}")))
}

/// Connects and authenticates as the connection's gateway-held account.
pub async fn connect(
    conn: &ConnectionConfig,
    target: &UpstreamTarget,
    client_params: &BTreeMap<String, String>,
) -> Result<Upstream, PgError> {
    let settings = settings(conn)?;
    let user = settings.user.clone();
    let password = settings
        .password
        .resolve()
        .map_err(|e| PgError::Credential(e.to_string()))?;
    let mut stream = target.open().await?;
    let mut startup = Startup::new();
    startup.parameters.insert("user".into(), user.clone());
    startup
        .parameters
        .insert("database".into(), settings.database.clone());
    for (k, v) in client_params {
        if FORWARDED_PARAMETERS.contains(&k.as_str()) {
            startup.parameters.insert(k.clone(), v.clone());
        }
    }
    let mut out = BytesMut::new();
    encode(&startup, &mut out)?;
    send(&mut stream, &mut out).await?;

    // Becomes the relay's read buffer: small while idle (the startup
    // answers fit), it doubles as results need.
    let mut buf = BytesMut::with_capacity(2048);
    let mut scram: Option<ScramSha256> = None;
    let mut greeting = BytesMut::new();
    let mut backend_pid = 0;
    let mut backend_secret = Vec::new();
    let mut authenticated = false;
    loop {
        let msg = read_message(&mut stream, &mut buf).await?;
        let mut r = Reader::new(msg.body());
        match msg.tag {
            b'R' => {
                let code = r.i32().ok_or_else(malformed)?;
                match code {
                    0 => authenticated = true,
                    3 => encode(&Password::new(password.clone()), &mut out)?,
                    5 => {
                        let salt: [u8; 4] = r
                            .bytes(4)
                            .and_then(|s| s.try_into().ok())
                            .ok_or_else(malformed)?;
                        let hashed = postgres_protocol::authentication::md5_hash(
                            user.as_bytes(),
                            password.as_bytes(),
                            salt,
                        );
                        encode(&Password::new(hashed), &mut out)?;
                    }
                    10 => {
                        let mut mechanisms = Vec::new();
                        while let Some(m) = r.cstr() {
                            if m.is_empty() {
                                break;
                            }
                            mechanisms.push(m);
                        }
                        if !mechanisms.iter().any(|m| m == "SCRAM-SHA-256") {
                            return Err(PgError::Upstream(format!(
                                "upstream offers no supported SASL mechanism ({mechanisms:?})"
                            )));
                        }
                        let s =
                            ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
                        encode(
                            &SASLInitialResponse::new(
                                "SCRAM-SHA-256".into(),
                                Some(bytes::Bytes::copy_from_slice(s.message())),
                            ),
                            &mut out,
                        )?;
                        scram = Some(s);
                    }
                    11 => {
                        let s = scram.as_mut().ok_or_else(malformed)?;
                        s.update(&msg.body()[4..])
                            .map_err(|e| PgError::Upstream(format!("SCRAM: {e}")))?;
                        encode(
                            &SASLResponse::new(bytes::Bytes::copy_from_slice(s.message())),
                            &mut out,
                        )?;
                    }
                    12 => {
                        // The server proves it knows the verifier; a forged
                        // upstream fails here.
                        let s = scram.as_mut().ok_or_else(malformed)?;
                        s.finish(&msg.body()[4..]).map_err(|e| {
                            PgError::Upstream(format!("SCRAM server signature rejected: {e}"))
                        })?;
                    }
                    other => {
                        return Err(PgError::Upstream(format!(
                            "unsupported upstream authentication request {other}"
                        )))
                    }
                }
                if !out.is_empty() {
                    send(&mut stream, &mut out).await?;
                }
            }
            b'S' if authenticated => {
                // A role or database default (ALTER ROLE … SET) could start
                // the session in a setting the gateway cannot parse under.
                if let Some(why) = crate::hazard::parameter_status(msg.body())
                    .and_then(|(k, v)| crate::hazard::lexing_hazard(&k, &v))
                {
                    return Err(PgError::Upstream(format!(
                        "upstream session setting: {why}"
                    )));
                }
                greeting.extend_from_slice(&msg.bytes)
            }
            b'N' if authenticated => greeting.extend_from_slice(&msg.bytes),
            b'N' => {}
            b'K' if authenticated => {
                backend_pid = r.i32().ok_or_else(malformed)?;
                backend_secret = msg.body()[4..].to_vec();
            }
            b'v' => {}
            b'Z' if authenticated => {
                return Ok(Upstream {
                    stream,
                    pending: buf,
                    greeting,
                    backend_pid,
                    backend_secret,
                })
            }
            b'E' => {
                let (code, message) = error_fields(msg.body());
                return Err(if code.starts_with("28") {
                    PgError::UpstreamRefused(message)
                } else {
                    PgError::Upstream(format!("{code}: {message}"))
                });
            }
            other => {
                return Err(PgError::Upstream(format!(
                    "unexpected message {:?} during upstream startup",
                    other as char
                )))
            }
        }
    }
}

fn malformed() -> PgError {
    PgError::Upstream("malformed authentication message from upstream".into())
}

fn encode<M: Message>(m: &M, out: &mut BytesMut) -> Result<(), PgError> {
    m.encode(out).map_err(|e| PgError::Internal(e.to_string()))
}

async fn send(stream: &mut BoxedStream, out: &mut BytesMut) -> Result<(), PgError> {
    stream
        .write_all(out)
        .await
        .map_err(|e| PgError::Upstream(e.to_string()))?;
    stream
        .flush()
        .await
        .map_err(|e| PgError::Upstream(e.to_string()))?;
    out.clear();
    Ok(())
}

async fn read_message(
    stream: &mut BoxedStream,
    buf: &mut BytesMut,
) -> Result<crate::frame::RawMessage, PgError> {
    loop {
        if let Some(m) =
            split_message(buf, MAX_BACKEND_MESSAGE).map_err(|e| PgError::Upstream(e.to_string()))?
        {
            return Ok(m);
        }
        let n = tokio::time::timeout(CONNECT_TIMEOUT, stream.read_buf(buf))
            .await
            .map_err(|_| PgError::Upstream("upstream stalled during startup".into()))?
            .map_err(|e| PgError::Upstream(e.to_string()))?;
        if n == 0 {
            return Err(PgError::Upstream("upstream closed during startup".into()));
        }
    }
}

/// SQLSTATE and message of an ErrorResponse/NoticeResponse body.
pub fn error_fields(body: &[u8]) -> (String, String) {
    let mut r = Reader::new(body);
    let (mut code, mut message) = (String::new(), String::new());
    while let Some(kind) = r.bytes(1) {
        if kind[0] == 0 {
            break;
        }
        let Some(value) = r.cstr() else { break };
        match kind[0] {
            b'C' => code = value,
            b'M' => message = value,
            _ => {}
        }
    }
    (code, message)
}

/// Sends a CancelRequest for the upstream backend.
pub async fn cancel(target: &UpstreamTarget, pid: i32, secret: &[u8]) -> Result<(), PgError> {
    let mut stream = target.open().await?;
    let mut packet = Vec::with_capacity(12 + secret.len());
    packet.extend_from_slice(&((12 + secret.len()) as i32).to_be_bytes());
    packet.extend_from_slice(&80877102i32.to_be_bytes());
    packet.extend_from_slice(&pid.to_be_bytes());
    packet.extend_from_slice(secret);
    stream
        .write_all(&packet)
        .await
        .map_err(|e| PgError::Upstream(e.to_string()))?;
    let _ = stream.shutdown().await;
    Ok(())
}

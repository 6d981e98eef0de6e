//! One `kv` client session: the transport half of core's `Session` trait.
//! Core admits it (`Gateway::serve`: authentication, `allow_groups`, the
//! durable session start); this file only reads lines, asks
//! `SessionHandle::decide` about each, and relays what is allowed.

use crate::{KvOptions, MAX_LINE};
use async_trait::async_trait;
use sluice_core::model::{Credentials, Decision, Outcome};
use sluice_core::{
    AfterRefusal, Command, CommandKind, Refusal, Session, SessionError, SessionHandle,
    SessionRequest,
};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);

pub struct KvSession {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl KvSession {
    pub fn new(tcp: TcpStream) -> Self {
        let (read, write) = tcp.into_split();
        KvSession {
            reader: BufReader::new(read),
            writer: write,
        }
    }

    async fn reply(&mut self, line: &str) -> Result<(), SessionError> {
        // One line per answer: a newline inside would start a second one.
        let line = line.replace(['\r', '\n'], " ");
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .await?;
        Ok(())
    }
}

/// Reads one line (without its end), at most `MAX_LINE` bytes; `None` at end of stream.
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
) -> Result<Option<String>, String> {
    let mut buf = Vec::new();
    let n = (&mut *r)
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut buf)
        .await
        .map_err(|e| e.to_string())?;
    if n == 0 {
        return Ok(None);
    }
    if buf.len() > MAX_LINE {
        return Err(format!("a line is longer than {MAX_LINE} bytes"));
    }
    let text = String::from_utf8(buf).map_err(|_| "a line is not UTF-8".to_string())?;
    Ok(Some(text.trim_end_matches(['\r', '\n']).to_string()))
}

/// The line as the upstream reads it: words separated by single spaces.
/// What is judged, recorded and forwarded is this one text.
fn normalize(line: &str) -> String {
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[async_trait]
impl Session for KvSession {
    async fn credentials(&mut self) -> Result<SessionRequest, SessionError> {
        let line = read_line(&mut self.reader)
            .await
            .map_err(SessionError::Client)?
            .ok_or_else(|| SessionError::Client("closed before AUTH".into()))?;
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next(), words.next()) {
            (Some(auth), Some(connection), Some(token), None)
                if auth.eq_ignore_ascii_case("AUTH") =>
            {
                Ok(SessionRequest {
                    credentials: Credentials {
                        user: connection.to_string(),
                        token: token.to_string(),
                    },
                    connection: connection.to_string(),
                })
            }
            _ => Err(SessionError::Client(
                "the first line must be AUTH <connection> <token>".into(),
            )),
        }
    }

    async fn refuse(&mut self, refusal: Refusal) -> Result<AfterRefusal, SessionError> {
        self.reply(&format!("-ERR {}", refusal.client_message()))
            .await?;
        Ok(AfterRefusal::Close)
    }

    async fn run(mut self, handle: SessionHandle) -> Result<(), SessionError> {
        let mut upstream = match connect(&handle).await {
            Ok(up) => up,
            Err(why) => {
                self.reply(&format!("-ERR sluice: {why}")).await?;
                return Err(SessionError::Upstream(why));
            }
        };
        self.reply(&format!("+OK sluice session {}", handle.id()))
            .await?;
        let ended = handle.ended();
        tokio::pin!(ended);
        loop {
            let line = tokio::select! {
                reason = &mut ended => {
                    self.reply(&format!("-ERR sluice: session ended: {reason}")).await?;
                    return Ok(());
                }
                line = read_line(&mut self.reader) => line,
            };
            let line = match line {
                Ok(Some(line)) => normalize(&line),
                Ok(None) => return Ok(()),
                Err(why) => {
                    self.reply(&format!("-ERR sluice: {why}; the session was ended"))
                        .await?;
                    return Err(SessionError::Client(why));
                }
            };
            if line.is_empty() {
                continue;
            }
            self.command(&handle, &mut upstream, line).await?;
        }
    }
}

impl KvSession {
    /// Judges one command, relays it when allowed, records the outcome.
    async fn command(
        &mut self,
        handle: &SessionHandle,
        upstream: &mut Upstream,
        line: String,
    ) -> Result<(), SessionError> {
        let operation = line
            .split(' ')
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        let command = Command {
            kind: CommandKind::Other { operation },
            text: line.clone(),
            context: Vec::new(),
        };
        let command_id = match handle.decide(command).await {
            Ok(Decision::Forward { command_id }) => command_id,
            Ok(Decision::Refuse { denial, .. }) => {
                let rule = denial
                    .rule
                    .map(|r| format!(" (rule {r})"))
                    .unwrap_or_default();
                return self
                    .reply(&format!("-ERR sluice: denied{rule}: {}", denial.message))
                    .await;
            }
            Err(e) => {
                self.reply("-ERR sluice: the gateway cannot record this command right now, so it was not run").await?;
                return Err(e.into());
            }
        };
        let started = Instant::now();
        let answer = upstream
            .call(&line)
            .await
            .map(|reply| upstream.redact(reply));
        let mut outcome = Outcome {
            duration_us: started.elapsed().as_micros() as u64,
            ..Outcome::default()
        };
        let result = match answer {
            Ok(reply) => {
                // The status character is framing, the rest is data: mask the data.
                let (status, data) = reply.split_at(reply.chars().next().map_or(0, char::len_utf8));
                let reply = match handle.masker().mask_text(handle.info(), data) {
                    Some((masked, counts)) => {
                        outcome.masked = counts.iter().map(|(k, v)| (k.to_string(), v)).collect();
                        format!("{status}{masked}")
                    }
                    None => reply.clone(),
                };
                outcome.bytes = reply.len() as u64;
                outcome.tag = reply.split(' ').next().map(str::to_string);
                outcome.sample = vec![vec![Some(reply.clone())]];
                self.reply(&reply).await
            }
            Err(why) => {
                outcome.error = Some(why.clone());
                let _ = self
                    .reply(&format!("-ERR sluice: {why}; the session was ended"))
                    .await;
                Err(SessionError::Upstream(why))
            }
        };
        handle.recorder().finished(command_id, outcome);
        result
    }
}

/// The gateway's connection to the upstream, logged in with the gateway-held password.
struct Upstream {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    /// The gateway-held password: never relayed, even when the upstream echoes it.
    secret: Option<String>,
}

impl Upstream {
    /// The reply with the gateway-held password replaced wherever it appears.
    fn redact(&self, reply: String) -> String {
        match &self.secret {
            Some(secret) if reply.contains(secret.as_str()) => {
                reply.replace(secret.as_str(), "[redacted-credential]")
            }
            _ => reply,
        }
    }

    async fn call(&mut self, line: &str) -> Result<String, String> {
        let exchange = async {
            self.writer
                .write_all(format!("{line}\n").as_bytes())
                .await
                .map_err(|e| format!("the upstream connection failed: {e}"))?;
            read_line(&mut self.reader)
                .await?
                .ok_or_else(|| "the upstream closed the connection".to_string())
        };
        tokio::time::timeout(UPSTREAM_TIMEOUT, exchange)
            .await
            .map_err(|_| "the upstream did not answer in time".to_string())?
    }
}

async fn connect(handle: &SessionHandle) -> Result<Upstream, String> {
    let connection = handle.connection();
    let options = KvOptions::of(connection).map_err(|(_, why)| why)?;
    let tcp = tokio::time::timeout(UPSTREAM_TIMEOUT, TcpStream::connect(&connection.upstream))
        .await
        .map_err(|_| "the upstream did not accept the connection in time".to_string())?
        .map_err(|e| format!("cannot reach the upstream: {e}"))?;
    let (read, write) = tcp.into_split();
    let mut upstream = Upstream {
        reader: BufReader::new(read),
        writer: write,
        secret: None,
    };
    if let Some(secret) = options.password {
        let password = secret.resolve().map_err(|_| {
            "the gateway's credential for this connection is not readable".to_string()
        })?;
        // One word: a blank or a line end would make AUTH carry a second command.
        if password.is_empty()
            || password
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err("the gateway's credential for this connection is not usable".into());
        }
        upstream.secret = Some(password.clone());
        let reply = upstream.call(&format!("AUTH {password}")).await?;
        if !reply.starts_with("+OK") {
            // The upstream's words may repeat the password: never relay them.
            return Err("the upstream refused the gateway's credential".into());
        }
    }
    Ok(upstream)
}

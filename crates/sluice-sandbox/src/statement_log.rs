//! What the server executed, read from its own log: the ground truth an end-to-end test
//! compares the gateway's audit trail with.
//!
//! With [`crate::TempPostgresOptions::statement_log`] the server runs with
//! `log_statement = 'all'` and writes a JSON log (`jsonlog`, one object a line) through the
//! logging collector to `DATA/log/postgresql.json`. `log_statement` logs a simple Query once,
//! whole (`statement: TEXT`, even when it holds several statements), and an extended-protocol
//! Execute as `execute NAME[/PORTAL]: TEXT` (`execute fetch from …` when a portal is resumed),
//! and a fast-path call as `fastpath function call: "NAME" (OID N)`. An SQL-level `EXECUTE`
//! carries the text of its `PREPARE` in the detail (`prepare: TEXT`).

use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use crate::{io_err, random_hex, SandboxError, TempPostgres};

/// The `postgresql.conf` lines that turn the statement log on.
pub(crate) const STATEMENT_LOG_CONF: &str = "\
logging_collector = on\n\
log_destination = 'stderr,jsonlog'\n\
log_directory = 'log'\n\
log_filename = 'postgresql.log'\n\
log_rotation_age = 0\n\
log_rotation_size = 0\n\
log_statement = 'all'\n\
log_timezone = 'UTC'\n\
log_line_prefix = '%m [%p] %q%u@%d app=%a session=%c '\n";

/// The application name of the sandbox's own marker connection (see
/// [`TempPostgres::executed_statements`]); its statements are left out.
pub const MARKER_APPLICATION: &str = "sluice-sandbox-marker";

/// How the server received a logged statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatementKind {
    /// A simple-protocol Query (`statement: …`): one text, perhaps several statements.
    Simple,
    /// An extended-protocol Execute (`execute NAME[/PORTAL]: …`). The names are the
    /// server's (the gateway may choose its own): compare texts, never names.
    Execute {
        /// `NAME` or `NAME/PORTAL` as logged (`<unnamed>` for the unnamed statement).
        name: String,
        /// `execute fetch from …`: a suspended portal resumed.
        fetch: bool,
    },
    /// A fast-path FunctionCall (`text` is the function's name).
    FastPath {
        /// The function's OID.
        oid: u32,
    },
}

/// One statement the server logged as executed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedStatement {
    /// The log timestamp, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The role of the session.
    pub user: String,
    /// The database.
    pub database: String,
    /// The session's `application_name` (client-chosen: never trust it to tell sessions apart).
    pub application_name: String,
    /// The server's session id (`%c`: backend start time and pid, hex).
    pub session_id: String,
    /// How it arrived.
    pub kind: StatementKind,
    /// The statement text exactly as the server received it.
    pub text: String,
    /// For an SQL-level `EXECUTE`: the source text of the `PREPARE` (or protocol Parse)
    /// that created the statement it runs (the detail `prepare: …`).
    pub prepared: Option<String>,
}

impl TempPostgres {
    /// The JSON statement log (present only with `statement_log`).
    pub fn statement_log_path(&self) -> PathBuf {
        self.data_dir.join("log").join("postgresql.json")
    }

    /// Every statement the server logged as executed so far, in log order, except the
    /// sandbox's own marker queries. Needs `statement_log` (an error otherwise).
    ///
    /// The logging collector writes asynchronously, so this first runs a marker query on a
    /// fresh connection (Unix socket, superuser, trust) and waits until the marker is in the
    /// file: everything any backend logged before it is in the file too.
    pub fn executed_statements(&self) -> Result<Vec<LoggedStatement>, SandboxError> {
        if !self.statement_log {
            return Err(SandboxError::Environment(
                "the statement log is off: start the server with statement_log = true".into(),
            ));
        }
        let marker = format!("sluice-log-marker-{}", random_hex(8)?);
        self.marker_query(&format!("SELECT '{marker}'"))?;
        let path = self.statement_log_path();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = fs::read(&path)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            if text.contains(&marker) {
                return Ok(parse_statement_log(&text));
            }
            if Instant::now() > deadline {
                return Err(SandboxError::Environment(format!(
                    "the marker query never reached {} within 20 s",
                    path.display()
                )));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs one simple query as the superuser over the Unix socket (trust) with
    /// `application_name` [`MARKER_APPLICATION`], and waits for ReadyForQuery.
    fn marker_query(&self, sql: &str) -> Result<(), SandboxError> {
        let socket = self.data_dir.join(format!(".s.PGSQL.{}", self.port));
        let mut s = UnixStream::connect(&socket)
            .map_err(io_err(format!("connecting to {}", socket.display())))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(io_err("setting a socket timeout"))?;
        let mut body = 196608i32.to_be_bytes().to_vec();
        for (k, v) in [
            ("user", self.superuser.as_str()),
            ("database", "postgres"),
            ("application_name", MARKER_APPLICATION),
        ] {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut out = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        out.extend_from_slice(&body);
        out.push(b'Q');
        out.extend_from_slice(&((sql.len() + 5) as i32).to_be_bytes());
        out.extend_from_slice(sql.as_bytes());
        out.push(0);
        // The server reads the query after the login; sending both at once is fine.
        s.write_all(&out)
            .map_err(io_err("writing the marker query"))?;
        let mut seen_ready = 0;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        // Two ReadyForQuery: one after the login, one after the query.
        while seen_ready < 2 {
            while buf.len() >= 5 {
                let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]).max(4) as usize;
                if buf.len() < 1 + len {
                    break;
                }
                let msg: Vec<u8> = buf.drain(..1 + len).collect();
                match msg[0] {
                    b'Z' => seen_ready += 1,
                    b'E' => {
                        return Err(SandboxError::Environment(format!(
                            "the marker query failed: {}",
                            String::from_utf8_lossy(&msg[5..])
                        )))
                    }
                    _ => {}
                }
            }
            if seen_ready >= 2 {
                break;
            }
            let n = s
                .read(&mut chunk)
                .map_err(io_err("reading the marker query's answer"))?;
            if n == 0 {
                return Err(SandboxError::Environment(
                    "the server closed the marker connection".into(),
                ));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let _ = s.write_all(&[b'X', 0, 0, 0, 4]);
        Ok(())
    }
}

/// Parses a `jsonlog` file: the `log_statement` records (severity LOG), marker queries and
/// any incomplete last line left out.
pub fn parse_statement_log(text: &str) -> Vec<LoggedStatement> {
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter_map(|v| logged_statement(&v))
        .collect()
}

fn logged_statement(v: &serde_json::Value) -> Option<LoggedStatement> {
    let field = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or_default();
    if field("error_severity") != "LOG" {
        return None;
    }
    let application_name = field("application_name").to_string();
    if application_name == MARKER_APPLICATION {
        return None;
    }
    let message = field("message");
    let (kind, text) = if let Some(text) = message.strip_prefix("statement: ") {
        (StatementKind::Simple, text.to_string())
    } else if let Some(rest) = message.strip_prefix("execute ") {
        let (fetch, rest) = match rest.strip_prefix("fetch from ") {
            Some(r) => (true, r),
            None => (false, rest),
        };
        // The name is the server's; split at the first ": " (a name holding ": " makes the
        // text longer than what was judged, which fails the comparison: the safe side).
        let (name, text) = rest.split_once(": ")?;
        (
            StatementKind::Execute {
                name: name.to_string(),
                fetch,
            },
            text.to_string(),
        )
    } else if let Some(rest) = message.strip_prefix("fastpath function call: ") {
        // `"NAME" (OID N)`
        let (name, oid) = rest.rsplit_once(" (OID ")?;
        let oid = oid.strip_suffix(')')?.parse().ok()?;
        (
            StatementKind::FastPath { oid },
            name.trim_matches('"').to_string(),
        )
    } else {
        return None;
    };
    let prepared = field("detail")
        .strip_prefix("prepare: ")
        .map(str::to_string);
    Some(LoggedStatement {
        at_ms: parse_timestamp_ms(field("timestamp")).unwrap_or(0),
        user: field("user").to_string(),
        database: field("dbname").to_string(),
        application_name,
        session_id: field("session_id").to_string(),
        kind,
        text,
        prepared,
    })
}

/// `2026-12-05 11:44:33.123 UTC` → milliseconds since the epoch (the server logs in UTC).
fn parse_timestamp_ms(ts: &str) -> Option<u64> {
    let ts = ts.strip_suffix(" UTC")?;
    let (date, time) = ts.split_once(' ')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, ms) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|p| p.parse::<i64>());
    let (h, min, s) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    let ms: i64 = format!("{ms:0<3}").get(..3)?.parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(((days * 24 + h) * 60 + min) * 60_000 + s * 1000 + ms).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(parse_timestamp_ms("1970-01-01 00:00:01.5 UTC"), Some(1500));
        assert_eq!(
            parse_timestamp_ms("2026-12-05 11:44:33.123 UTC"),
            Some(1_796_471_073_123)
        );
        assert_eq!(parse_timestamp_ms("2026-12-05 11:44:33.123 CET"), None);
    }

    #[test]
    fn records() {
        let log = r#"{"timestamp":"2026-12-05 11:44:33.123 UTC","user":"app","dbname":"app","session_id":"a.1","error_severity":"LOG","message":"statement: select 1; select 2","application_name":"psql"}
{"timestamp":"2026-12-05 11:44:33.124 UTC","user":"app","dbname":"app","session_id":"a.1","error_severity":"LOG","message":"execute <unnamed>: select $1","detail":"parameters: $1 = '1'"}
{"timestamp":"2026-12-05 11:44:33.125 UTC","user":"app","dbname":"app","session_id":"a.1","error_severity":"LOG","message":"execute fetch from S_1/C_2: select a: b"}
{"timestamp":"2026-12-05 11:44:33.126 UTC","user":"app","dbname":"app","session_id":"a.1","error_severity":"LOG","message":"statement: EXECUTE s","detail":"prepare: PREPARE s AS select 1"}
{"timestamp":"2026-12-05 11:44:33.127 UTC","user":"app","dbname":"app","session_id":"a.1","error_severity":"LOG","message":"fastpath function call: \"lo_open\" (OID 952)"}
{"timestamp":"2026-12-05 11:44:33.128 UTC","user":"app","dbname":"app","session_id":"a.1","error_severity":"ERROR","message":"syntax error","statement":"selec 1"}
{"timestamp":"2026-12-05 11:44:33.129 UTC","user":"postgres","dbname":"postgres","session_id":"b.2","error_severity":"LOG","message":"statement: SELECT 'm'","application_name":"sluice-sandbox-marker"}
{"timestamp":"2026-12-05 11:44:33.130 UTC","error_severity":"LOG","message":"statement: torn"#;
        let s = parse_statement_log(log);
        let texts: Vec<_> = s.iter().map(|s| s.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                "select 1; select 2",
                "select $1",
                "select a: b",
                "EXECUTE s",
                "lo_open"
            ]
        );
        assert_eq!(s[0].kind, StatementKind::Simple);
        assert_eq!(
            s[2].kind,
            StatementKind::Execute {
                name: "S_1/C_2".into(),
                fetch: true
            }
        );
        assert_eq!(s[3].prepared.as_deref(), Some("PREPARE s AS select 1"));
        assert_eq!(s[1].prepared, None);
        assert_eq!(s[4].kind, StatementKind::FastPath { oid: 952 });
        assert_eq!(s[0].at_ms, 1_796_471_073_123);
    }
}

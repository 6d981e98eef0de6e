//! The protocol-neutral model every protocol crate translates to and from.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::SystemTime;

/// Which wire protocol a session speaks, named by the crate that implements
/// it. Open: the built-in four are constants, and a protocol crate names its
/// own with [`Protocol::new`] (lowercase letters, digits and `-`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Protocol(&'static str);

// Named like the enum variants they replace, so code using them keeps compiling.
#[allow(non_upper_case_globals)]
impl Protocol {
    pub const Postgres: Protocol = Protocol("postgres");
    pub const Ssh: Protocol = Protocol("ssh");
    pub const Http: Protocol = Protocol("http");
    pub const Kubernetes: Protocol = Protocol("kubernetes");

    /// A contributed protocol's name.
    pub const fn new(name: &'static str) -> Protocol {
        Protocol(name)
    }

    /// The protocol called `name` (as stored in audit records and configs).
    pub fn named(name: &str) -> Result<Protocol, String> {
        valid_name(name).map(Protocol)
    }

    pub fn as_str(self) -> &'static str {
        self.0
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl fmt::Debug for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl Serialize for Protocol {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0)
    }
}

impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Protocol::named(&name).map_err(serde::de::Error::custom)
    }
}

/// Checks a protocol or connection-kind name and returns it as a `'static`
/// string: the built-in names as they are, others interned once (names come
/// from configs and audit records, so there are few of them).
pub(crate) fn valid_name(name: &str) -> Result<&'static str, String> {
    const BUILT_IN: [&str; 4] = ["postgres", "ssh", "http", "kubernetes"];
    if let Some(known) = BUILT_IN.iter().find(|k| **k == name) {
        return Ok(known);
    }
    let well_formed = !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !well_formed {
        return Err(format!(
            "{name:?} is not a protocol name (lowercase letters, digits and '-', at most 32)"
        ));
    }
    static INTERNED: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashSet<&'static str>>,
    > = std::sync::OnceLock::new();
    let mut interned = crate::sync::MutexExt::locked(INTERNED.get_or_init(Default::default));
    if let Some(found) = interned.get(name) {
        return Ok(found);
    }
    let leaked: &'static str = Box::leak(name.to_string().into_boxed_str());
    interned.insert(leaked);
    Ok(leaked)
}

/// An authenticated caller: who they are, which groups they are in, and which
/// credential proved it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub subject: String,
    pub groups: Vec<String>,
    /// Who vouched for the identity (the gateway itself, or an IdP issuer).
    pub issuer: String,
    /// The token's unique id (`jti`), so that a revocation can find its sessions.
    pub token_id: String,
    /// When the credential stops being valid; sessions must not outlive it.
    #[serde(with = "unix_seconds")]
    pub expires_at: SystemTime,
    /// Connections the credential is narrowed to (an exchanged token); any
    /// connection its groups allow when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<Vec<String>>,
}

impl Identity {
    pub fn in_any_group(&self, groups: &[String]) -> bool {
        self.groups.iter().any(|g| groups.iter().any(|a| a == g))
    }

    /// Whether the credential may open `connection` at all (before allow_groups).
    pub fn may_open(&self, connection: &str) -> bool {
        self.connections
            .as_ref()
            .is_none_or(|c| c.iter().any(|n| n == connection))
    }
}

/// What a client presents to authenticate.
#[derive(Clone)]
pub struct Credentials {
    /// The user name the client sent (PostgreSQL `user`, SSH login, …).
    pub user: String,
    /// The token (carried in a password field, a bearer header, …).
    pub token: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// What kind of command a protocol hands to the pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum CommandKind {
    /// A SQL string sent with the simple query protocol (may hold several statements).
    SqlSimple,
    /// The execution of a prepared SQL statement (extended protocol).
    SqlExecute { statement: String, portal: String },
    /// A fast-path function call by object id (PostgreSQL `FunctionCall`).
    FunctionCall { function_oid: u32 },
    /// A shell command line (SSH exec).
    Exec,
    /// An HTTP request.
    HttpRequest { method: String, path: String },
    /// A Kubernetes API request: the HTTP request line and what it does
    /// (`verb` get, list, delete, exec…; `resource` as `pods`, `deployments.apps/scale`).
    KubeRequest {
        method: String,
        path: String,
        verb: String,
        resource: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        namespace: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    /// An interactive shell (SSH `shell` request), judged as a whole; what
    /// is typed into it is recorded, not judged line by line.
    Shell { pty: bool },
    /// A named subsystem (SSH `sftp`, …); `text` is the name.
    Subsystem { name: String },
    /// A forwarding request or channel: `port-forward` (local and dynamic),
    /// `remote-forward`, `agent-forward`, `x11`; `text` says where to.
    Forward { kind: String },
    /// A command of a contributed protocol (a protocol crate outside core):
    /// `operation` names what it does (e.g. `GET`, `DEL`); `text` is the whole command.
    Other { operation: String },
}

/// One command on a session: the unit that is judged, audited and answered.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Command {
    pub kind: CommandKind,
    /// The command as text (SQL, a shell line, `METHOD /path`), as the client sent it.
    pub text: String,
    /// Definitions the command refers to, as the protocol tracked them on the
    /// session (e.g. the SQL a `PREPARE` gave the name that `EXECUTE name` runs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub context: Vec<String>,
}

/// What the pipeline decided for a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Review,
    Deny,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Allow => "allow",
            Action::Review => "review",
            Action::Deny => "deny",
        })
    }
}

/// A decision with the rule that made it, so every denial can be explained.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub action: Action,
    /// The rule that decided; `None` for the connection's default.
    pub rule: Option<String>,
    /// The rule's message for the caller.
    pub message: Option<String>,
}

impl Verdict {
    pub fn allow_by_default() -> Self {
        Verdict {
            action: Action::Allow,
            rule: None,
            message: None,
        }
    }

    pub fn deny(rule: impl Into<String>, message: impl Into<String>) -> Self {
        Verdict {
            action: Action::Deny,
            rule: Some(rule.into()),
            message: Some(message.into()),
        }
    }
}

/// The pipeline's answer to a protocol: forward the command, or refuse it with a
/// denial the protocol renders in its own language.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Forward { command_id: u64 },
    Refuse { command_id: u64, denial: Denial },
}

/// A refusal as the client will read it. Built only from rule names and rule
/// messages, never from upstream data or credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Denial {
    pub rule: Option<String>,
    pub message: String,
    /// What the caller can do next (ask for approval, use another connection, …).
    pub hint: Option<String>,
}

impl Denial {
    /// The write-ahead audit record could not be written, so the command was
    /// not run (fail closed). Every protocol tells its client the same.
    pub fn unrecorded() -> Self {
        Denial {
            rule: None,
            message: "the gateway cannot record this command right now, so it was not run".into(),
            hint: Some("Retry later; tell the Sluice administrator if this persists.".into()),
        }
    }
}

/// A result column as the masking position sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    /// Source table OID (0 when the column is computed).
    pub table_oid: u32,
    pub column_number: i16,
    pub type_oid: u32,
    /// Whether values arrive in the binary format.
    pub binary: bool,
    /// `schema.table` of the source table, when the protocol resolved it
    /// (only done for maskers that ask, see `ResponseMasker::wants_table_names`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// The source column's name in that table (an alias in the query does not change it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_column: Option<String>,
}

/// How a command ended, for the audit record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub rows: u64,
    pub bytes: u64,
    /// Completion tag (`SELECT 1`, `INSERT 0 3`, exit status, HTTP status).
    pub tag: Option<String>,
    /// The error the client saw, already redacted.
    pub error: Option<String>,
    pub duration_us: u64,
    /// A bounded sample of what the client saw (rows as text), for replay.
    pub sample: Vec<Vec<Option<String>>>,
    pub columns: Vec<String>,
    /// True when `sample` holds fewer rows than were returned.
    pub truncated: bool,
    /// Values masked, by detector or column rule name.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub masked: std::collections::BTreeMap<String, u64>,
}

pub(crate) mod unix_seconds {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        let secs = t
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        s.serialize_u64(secs)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let secs = u64::deserialize(d)?;
        Ok(UNIX_EPOCH + Duration::from_secs(secs))
    }
}

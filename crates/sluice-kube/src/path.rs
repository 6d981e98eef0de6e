//! Kubernetes API request paths → what the request does.
//!
//! The parse follows the API server's own request-info rules (`/api/v1/…`,
//! `/apis/GROUP/VERSION/…`, `namespaces/NS/…`, the legacy `/watch/` prefix,
//! `?watch=` as the server reads it), so that the request the gateway judges
//! is the request the upstream serves. Where the upstream could read a path
//! differently from this parser, the path is refused instead: `.` and `..`
//! segments, empty segments, encoded slashes and backslashes, NUL, invalid
//! percent-escapes and invalid UTF-8. Matching is case-sensitive like the API
//! server (`/API/v1/pods` is not the pods API; it is a non-resource path).
//!
//! Pure and total: every input gives a value or an error, never a panic.

use std::fmt;

#[cfg(test)]
mod tests;

/// What the request does, in Kubernetes RBAC terms plus the connect verbs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    Patch,
    Delete,
    DeleteCollection,
    /// `pods/NAME/exec`
    Exec,
    /// `pods/NAME/attach`
    Attach,
    /// `pods/NAME/portforward`
    PortForward,
    /// `…/NAME/proxy[/…]` and the legacy `/proxy/` prefix
    Proxy,
    /// `pods/NAME/log`
    Log,
}

impl Verb {
    pub const ALL: [Verb; 13] = [
        Verb::Get,
        Verb::List,
        Verb::Watch,
        Verb::Create,
        Verb::Update,
        Verb::Patch,
        Verb::Delete,
        Verb::DeleteCollection,
        Verb::Exec,
        Verb::Attach,
        Verb::PortForward,
        Verb::Proxy,
        Verb::Log,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
            Verb::DeleteCollection => "deletecollection",
            Verb::Exec => "exec",
            Verb::Attach => "attach",
            Verb::PortForward => "portforward",
            Verb::Proxy => "proxy",
            Verb::Log => "log",
        }
    }

    /// The verb named `name` (case-insensitive).
    pub fn parse(name: &str) -> Option<Verb> {
        Verb::ALL
            .into_iter()
            .find(|v| v.name().eq_ignore_ascii_case(name))
    }

    /// Whether the request only reads (get, list, watch, log).
    pub fn is_read(self) -> bool {
        matches!(self, Verb::Get | Verb::List | Verb::Watch | Verb::Log)
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which part of the API a path addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// A resource (collection, object or subresource).
    Resource,
    /// API discovery: `/api`, `/api/v1`, `/apis`, `/apis/GROUP[/VERSION]`.
    Discovery,
    /// Anything else: `/version`, `/openapi/…`, `/healthz`, unknown paths.
    NonResource,
}

/// A parsed API request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiRequest {
    pub verb: Verb,
    pub scope: Scope,
    /// API group; empty for the core group (`/api/v1`).
    pub group: String,
    pub version: String,
    /// Plural resource name (`pods`); empty outside [`Scope::Resource`].
    pub resource: String,
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// The decoded path (no query).
    pub path: String,
    /// Objects a `fieldSelector` on `metadata.name` (`=` or `==`) narrows a
    /// request without a name to: a list, watch or deletecollection of them
    /// touches those objects, and `names` rules judge it so.
    pub selected_names: Vec<String>,
    /// Likewise for `metadata.namespace` on a request without a namespace.
    pub selected_namespaces: Vec<String>,
}

impl ApiRequest {
    /// `resource[.group][/subresource]`, the form the `resources` match key uses
    /// (`pods`, `pods/exec`, `deployments.apps`, `deployments.apps/scale`).
    pub fn resource_key(&self) -> String {
        let mut s = self.resource.clone();
        if !self.group.is_empty() {
            s.push('.');
            s.push_str(&self.group);
        }
        if let Some(sub) = &self.subresource {
            s.push('/');
            s.push_str(sub);
        }
        s
    }

    /// Whether the target is core `secrets` (compared case-insensitively, so
    /// a spelling the upstream would reject still counts).
    pub fn is_secrets(&self) -> bool {
        self.scope == Scope::Resource
            && self.group.is_empty()
            && self.resource.eq_ignore_ascii_case("secrets")
    }

    /// Whether the response carries credentials the gateway always masks:
    /// Secrets, and tokens minted by `serviceaccounts/NAME/token`.
    pub fn carries_credentials(&self) -> bool {
        self.is_secrets()
            || (self.scope == Scope::Resource
                && self.group.is_empty()
                && self.resource.eq_ignore_ascii_case("serviceaccounts")
                && self
                    .subresource
                    .as_deref()
                    .is_some_and(|s| s.eq_ignore_ascii_case("token")))
    }

    /// A short human description: `delete pods/web -n default`.
    pub fn describe(&self) -> String {
        match self.scope {
            Scope::Resource => {
                let mut s = format!("{} {}", self.verb, self.resource_key());
                if let Some(name) = &self.name {
                    // `pods/exec web` reads oddly; name the object first.
                    s = format!("{} {}", self.verb, self.resource);
                    if !self.group.is_empty() {
                        s.push('.');
                        s.push_str(&self.group);
                    }
                    s.push('/');
                    s.push_str(name);
                    // `exec pods/web`, not `exec pods/web/exec`.
                    if let Some(sub) = self.subresource.as_ref().filter(|s| *s != self.verb.name())
                    {
                        s.push('/');
                        s.push_str(sub);
                    }
                }
                match &self.namespace {
                    Some(ns) => s.push_str(&format!(" -n {ns}")),
                    None => s.push_str(" (cluster-wide)"),
                }
                s
            }
            Scope::Discovery | Scope::NonResource => format!("{} {}", self.verb, self.path),
        }
    }
}

/// Why a request line was refused. The message is safe to show the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PathError(pub String);

fn fail<T>(msg: impl Into<String>) -> Result<T, PathError> {
    Err(PathError(msg.into()))
}

/// Subresources of a namespace object itself (`namespaces/NS/status`).
const NAMESPACE_SUBRESOURCES: [&str; 2] = ["status", "finalize"];

/// Parses a request: `method` (`GET`, …) and `target`, the request-target as
/// sent (path and optional `?query`, not yet decoded).
pub fn parse(method: &str, target: &str) -> Result<ApiRequest, PathError> {
    let (raw_path, query) = match target.split_once('?') {
        Some((p, q)) => (p, q),
        None => (target, ""),
    };
    let segments = decode_path(raw_path)?;
    let path = format!("/{}", segments.join("/"));
    let base = base_verb(method)?;
    let watch_param = query_flag(query, "watch");

    // Outside resources a read is a `get` (as RBAC names non-resource reads).
    let mut req = ApiRequest {
        verb: base.verb(true, watch_param),
        scope: Scope::NonResource,
        group: String::new(),
        version: String::new(),
        resource: String::new(),
        subresource: None,
        namespace: None,
        name: None,
        path,
        selected_names: Vec::new(),
        selected_namespaces: Vec::new(),
    };
    for selector in query_values(query, "fieldSelector") {
        for (field, value) in field_equalities(&selector) {
            match field.as_str() {
                "metadata.name" => req.selected_names.push(value),
                "metadata.namespace" => req.selected_namespaces.push(value),
                _ => {}
            }
        }
    }
    let parts: Vec<&str> = segments.iter().map(String::as_str).collect();
    let rest: &[&str] = match parts.as_slice() {
        ["api"] => {
            req.scope = Scope::Discovery;
            return Ok(req);
        }
        ["api", version] => {
            req.scope = Scope::Discovery;
            req.version = version.to_string();
            return Ok(req);
        }
        ["api", version, rest @ ..] => {
            req.version = version.to_string();
            rest
        }
        ["apis"] => {
            req.scope = Scope::Discovery;
            return Ok(req);
        }
        ["apis", group] => {
            req.scope = Scope::Discovery;
            req.group = group.to_string();
            return Ok(req);
        }
        ["apis", group, version] => {
            req.scope = Scope::Discovery;
            req.group = group.to_string();
            req.version = version.to_string();
            return Ok(req);
        }
        ["apis", group, version, rest @ ..] => {
            req.group = group.to_string();
            req.version = version.to_string();
            rest
        }
        _ => return Ok(req),
    };
    req.scope = Scope::Resource;
    // The legacy verb prefixes: /api/v1/watch/… and /api/v1/proxy/….
    let (special, mut rest) = match rest {
        ["watch", tail @ ..] if !tail.is_empty() => (Some(Verb::Watch), tail),
        ["proxy", tail @ ..] if !tail.is_empty() => (Some(Verb::Proxy), tail),
        _ => (None, rest),
    };
    if let ["namespaces", ns, tail @ ..] = rest {
        req.namespace = Some(ns.to_string());
        if !tail.is_empty() && !NAMESPACE_SUBRESOURCES.contains(&tail[0]) {
            rest = tail;
        }
    }
    match rest {
        [resource] => req.resource = resource.to_string(),
        [resource, name] => {
            req.resource = resource.to_string();
            req.name = Some(name.to_string());
        }
        [resource, name, sub, ..] => {
            req.resource = resource.to_string();
            req.name = Some(name.to_string());
            // The legacy proxy prefix forwards the rest as a path, not a subresource.
            if special != Some(Verb::Proxy) {
                req.subresource = Some(sub.to_string());
            }
        }
        // `rest` is never empty: the match above requires a segment.
        [] => return fail("the request names no resource"),
    }
    req.verb = match special {
        Some(v) => v,
        None => match req.subresource.as_deref() {
            Some("exec") => Verb::Exec,
            Some("attach") => Verb::Attach,
            Some("portforward") => Verb::PortForward,
            Some("proxy") => Verb::Proxy,
            Some("log") if base == BaseVerb::Read => Verb::Log,
            _ => base.verb(req.name.is_some(), watch_param),
        },
    };
    Ok(req)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BaseVerb {
    Read,
    Create,
    Update,
    Patch,
    Delete,
}

impl BaseVerb {
    fn verb(self, named: bool, watch: bool) -> Verb {
        match self {
            // A watch with a name is still a watch: the stream may outlive a get.
            BaseVerb::Read if watch => Verb::Watch,
            BaseVerb::Read if named => Verb::Get,
            BaseVerb::Read => Verb::List,
            BaseVerb::Create => Verb::Create,
            BaseVerb::Update => Verb::Update,
            BaseVerb::Patch => Verb::Patch,
            BaseVerb::Delete if named => Verb::Delete,
            BaseVerb::Delete => Verb::DeleteCollection,
        }
    }
}

fn base_verb(method: &str) -> Result<BaseVerb, PathError> {
    Ok(match method {
        "GET" | "HEAD" => BaseVerb::Read,
        "POST" => BaseVerb::Create,
        "PUT" => BaseVerb::Update,
        "PATCH" => BaseVerb::Patch,
        "DELETE" => BaseVerb::Delete,
        other => {
            let shown: String = other.chars().take(16).collect();
            return fail(format!(
                "method {shown:?} is not used by the Kubernetes API"
            ));
        }
    })
}

/// Splits and percent-decodes a path, refusing anything the upstream could
/// read as a different path than this parser does.
fn decode_path(raw: &str) -> Result<Vec<String>, PathError> {
    let Some(rest) = raw.strip_prefix('/') else {
        return fail("the request path must start with /");
    };
    // The API server trims a trailing slash before it reads the path.
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for seg in rest.split('/') {
        if seg.is_empty() {
            return fail("the request path has an empty segment (//)");
        }
        let decoded = percent_decode(seg)?;
        if decoded == "." || decoded == ".." {
            return fail("the request path has a . or .. segment");
        }
        if decoded.contains(['/', '\\', '\0']) {
            return fail("the request path has an encoded /, \\ or NUL");
        }
        out.push(decoded);
    }
    Ok(out)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes `%XX` escapes; the result must be UTF-8.
fn percent_decode(s: &str) -> Result<String, PathError> {
    if !s.contains('%') {
        return Ok(s.to_string());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            match (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                }
                _ => return fail("the request has an invalid percent-escape"),
            }
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| PathError("the request path is not UTF-8".into()))
}

/// Decodes a query component the way Go's `url.ParseQuery` does (`+` is a space).
fn query_decode(s: &str) -> Option<String> {
    percent_decode(&s.replace('+', " ")).ok()
}

/// Every value of `key` in `query`, in order. Pairs the API server would drop
/// (a `;` in them, invalid escapes) are dropped here too.
pub fn query_values(query: &str, key: &str) -> Vec<String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty() && !pair.contains(';'))
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Some((query_decode(k)?, query_decode(v)?))
        })
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v)
        .collect()
}

/// The `field=value` and `field==value` terms of a field selector (as the
/// API server's `fields.ParseSelector` reads it: terms split on unescaped
/// `,`, key and value trimmed, `\` escapes removed from the value). `!=`
/// terms are left out: they do not narrow the request to one object.
pub fn field_equalities(selector: &str) -> Vec<(String, String)> {
    let mut terms = Vec::new();
    let mut term = String::new();
    let mut chars = selector.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                term.push(c);
                if let Some(n) = chars.next() {
                    term.push(n);
                }
            }
            ',' => terms.push(std::mem::take(&mut term)),
            _ => term.push(c),
        }
    }
    terms.push(term);
    let unescape = |v: &str| {
        let mut out = String::new();
        let mut it = v.chars();
        while let Some(c) = it.next() {
            if c == '\\' {
                if let Some(n) = it.next() {
                    out.push(n);
                }
            } else {
                out.push(c);
            }
        }
        out
    };
    terms
        .iter()
        .filter_map(|t| {
            if t.contains("!=") {
                return None;
            }
            let (k, v) = t.split_once("==").or_else(|| t.split_once('='))?;
            Some((k.trim().to_string(), unescape(v.trim())))
        })
        .collect()
}

/// A boolean query parameter as the API server converts it: present and not
/// `0`/`false` (first value wins) is true.
pub fn query_flag(query: &str, key: &str) -> bool {
    match query_values(query, key).first() {
        None => false,
        Some(v) => !(v == "0" || v.eq_ignore_ascii_case("false")),
    }
}

/// A request line as recorded (`METHOD target`) as the operator console
/// shows it to an approver: verb, resource, namespace, name and the short
/// description; or why it does not parse.
pub fn describe_request(text: &str) -> Option<serde_json::Value> {
    let (method, target) = text.split_once(' ')?;
    Some(match parse(method, target) {
        Ok(r) => serde_json::json!({
            "kube": {
                "verb": r.verb.name(),
                "resource": r.resource_key(),
                "namespace": r.namespace,
                "name": r.name,
                "description": r.describe(),
            }
        }),
        Err(e) => serde_json::json!({ "error": e.to_string() }),
    })
}

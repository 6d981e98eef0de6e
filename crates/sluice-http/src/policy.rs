//! The `http` match key:
//!
//! ```toml
//! match = { http = { methods = ["DELETE", "PUT"], paths = ["/admin/*", "/v1/users/*/keys"],
//!                    query = { dry_run = "false" } } }
//! ```
//!
//! Every given part must hold. Paths are the normalised path after the
//! `/<connection>` prefix (see `path.rs`: no dot segments, decoded), matched
//! case-insensitively with `*` (any run, `/` included) and `?`; a trailing
//! `/` on the request does not matter, and `/admin/*` also matches `/admin`.
//! `query` names parameters whose (decoded) value must match the glob. Servers
//! read a query differently (Go takes the first copy of a name and drops
//! pairs holding `;`; Rails, PHP and Express take the last; qs and old
//! parsers also split on `;`; PHP and Rails read `name[]` as `name`, PHP
//! reads `na.me`, `na me` and `na[me` as `na_me` and drops leading spaces,
//! ASP.NET ignores case; qs and PHP read the first 1000 pairs only), so:
//!
//! - a deny or review rule matches if any copy of the name, under any of
//!   these readings, has a matching value;
//! - an allow rule matches only if every reading gives the name, and only
//!   values that match: every copy matches, the name is present in a pair
//!   without `;`, and no other spelling of it (`name[]`, `NAME`, `na.me`,
//!   ` name`, `na[me`) is sent at all, and the query has at most 100 pairs
//!   (servers drop those past a limit; see [`HttpMatchKey::compile_for`]).

use percent_encoding::percent_decode_str;
use sluice_core::glob::Glob;
use sluice_core::model::Action;
use sluice_core::pipeline::policy::{CommandMatcher, MatchKey, Scratch};
use sluice_core::toml;
use sluice_core::{Command, CommandKind};
use std::sync::Arc;

/// Registers the `http` match key.
pub fn http_match_key() -> Arc<dyn MatchKey> {
    Arc::new(HttpMatchKey)
}

struct HttpMatchKey;

impl MatchKey for HttpMatchKey {
    fn keys(&self) -> &'static [&'static str] {
        &["http"]
    }

    fn compile(&self, values: &toml::Table) -> Result<Box<dyn CommandMatcher>, String> {
        self.compile_for(values, Action::Deny)
    }

    /// An allow rule's `query` must hold under every reading of the query a
    /// server may make (all copies, both `;` readings, other spellings of
    /// the name); a deny or review rule's holds if any copy matches.
    fn compile_for(
        &self,
        values: &toml::Table,
        action: Action,
    ) -> Result<Box<dyn CommandMatcher>, String> {
        let Some(value) = values.get("http") else {
            return Err("http: expected a table { methods, paths, query }".into());
        };
        let table = value.as_table().ok_or(
            "http: expected a table { methods = [..], paths = [..], query = { name = \"glob\" } }",
        )?;
        let mut matcher = HttpMatcher {
            allow: action == Action::Allow,
            ..HttpMatcher::default()
        };
        for (key, v) in table {
            match key.as_str() {
                "methods" => {
                    let list = strings("http.methods", v)?;
                    for m in &list {
                        if m.is_empty() || !m.chars().all(|c| c.is_ascii_alphabetic() || c == '*') {
                            return Err(format!("http.methods: {m:?} is not an HTTP method"));
                        }
                    }
                    matcher.methods = Some(list.iter().map(|m| Glob::new(m)).collect());
                }
                "paths" => {
                    let list = strings("http.paths", v)?;
                    for p in &list {
                        if !p.starts_with('/') && !p.starts_with('*') {
                            return Err(format!(
                                "http.paths: {p:?} must start with `/` (paths are relative to the connection: /v1/users/*)"
                            ));
                        }
                    }
                    matcher.paths = Some(list.iter().map(|p| Glob::new(p)).collect());
                }
                "query" => {
                    let q = v
                        .as_table()
                        .ok_or("http.query: expected a table { name = \"glob\" }")?;
                    if q.is_empty() {
                        return Err(
                            "http.query: an empty table matches nothing; remove the key instead"
                                .into(),
                        );
                    }
                    let mut params = Vec::new();
                    for (name, glob) in q {
                        let glob = glob
                            .as_str()
                            .ok_or_else(|| format!("http.query.{name}: expected a glob string"))?;
                        params.push((name.clone(), Glob::new(glob)));
                    }
                    matcher.query = Some(params);
                }
                other => {
                    return Err(format!(
                        "http: unknown key {other:?} (known: methods, paths, query)"
                    ))
                }
            }
        }
        if matcher.methods.is_none() && matcher.paths.is_none() && matcher.query.is_none() {
            return Err("http: give at least one of methods, paths, query".into());
        }
        Ok(Box::new(matcher))
    }
}

fn strings(key: &str, v: &toml::Value) -> Result<Vec<String>, String> {
    sluice_core::pipeline::policy::string_list(key, v)
}

#[derive(Default)]
struct HttpMatcher {
    methods: Option<Vec<Glob>>,
    paths: Option<Vec<Glob>>,
    query: Option<Vec<(String, Glob)>>,
    /// Compiled for an allow rule: the query must hold under every reading.
    allow: bool,
}

/// The parts of an HTTP command.
pub struct RequestParts<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
}

/// Reads an `HttpRequest` command; `None` for other kinds.
pub fn request_parts(command: &Command) -> Option<RequestParts<'_>> {
    let CommandKind::HttpRequest { method, path } = &command.kind else {
        return None;
    };
    // The text is `METHOD path[?query]`; the path may itself hold `?` once
    // decoded, so the query is what follows the known prefix.
    let prefix_len = method.len() + 1 + path.len();
    let query = command
        .text
        .get(prefix_len..)
        .and_then(|rest| rest.strip_prefix('?'));
    Some(RequestParts {
        method,
        path,
        query,
    })
}

/// Whether `path` matches `pattern` the way rules mean it (see the module docs).
pub fn path_matches(pattern: &Glob, path: &str) -> bool {
    let bare = if path.len() > 1 {
        path.trim_end_matches('/')
    } else {
        path
    };
    let bare = if bare.is_empty() { "/" } else { bare };
    pattern.matches(bare) || pattern.matches(&format!("{bare}/"))
}

/// Decoded `name=value` pairs of a query string (`+` is a space).
pub fn query_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    // Some servers also split on `;`: a rule sees every pair any of them reads.
    split_pairs(query, &['&', ';'])
}

/// Decoded `name=value` pairs, split on `separators`.
fn split_pairs<'a>(
    query: &'a str,
    separators: &'a [char],
) -> impl Iterator<Item = (String, String)> + 'a {
    query
        .split(separators)
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (query_decode(k), query_decode(v))
        })
}

fn query_decode(s: &str) -> String {
    percent_decode_str(&s.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

/// How many pairs (split on `&` and `;`, empty ones counted) a query may
/// hold for an allow rule's `query` to match: servers read only so many
/// (Express's qs `parameterLimit` and PHP's `max_input_vars` are 1000, and
/// drop the rest), so a name sent past the limit is unset upstream.
const MAX_ALLOW_PAIRS: usize = 100;

/// A parameter name as servers may read it, folded for comparison: leading
/// blanks dropped (PHP), the part before a closed `[…]` (PHP, Rails, qs),
/// an unclosed `[` as `_` and ` `, `.` as `_` (PHP), in lowercase (ASP.NET).
fn fold_name(s: &str) -> String {
    let s = s.trim_start();
    let base = match s.find('[') {
        Some(at) if s[at..].contains(']') => &s[..at],
        _ => s,
    };
    base.chars()
        .map(|c| match c {
            '.' | ' ' | '[' => '_',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

/// Whether `key` is `name` as some server reads it: itself, `name[…]`
/// (PHP, Rails, qs), another case (ASP.NET), or, for PHP, with leading
/// blanks, `.`/` ` for `_`, an unclosed `[` for `_` (`dry[run`).
fn spells(key: &str, name: &str) -> bool {
    key == name || fold_name(key) == fold_name(name)
}

/// An allow rule's query parameter: under every reading (split on `&` and
/// `;`, on `&` alone), every spelling of `name` is `name` itself with a
/// matching value, and some pair without `;` carries it (Go drops pairs
/// holding `;`, and reads only the first copy). A query of more than
/// [`MAX_ALLOW_PAIRS`] pairs holds nothing: a server may not read them all.
fn query_holds_everywhere(query: &str, name: &str, glob: &Glob) -> bool {
    if query.split(['&', ';']).count() > MAX_ALLOW_PAIRS {
        return false;
    }
    let mut carried = false;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        if !pair.contains(';') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            carried |= query_decode(k) == name && glob.matches(&query_decode(v));
        }
    }
    carried
        && [&['&', ';'][..], &['&'][..]].iter().all(|separators| {
            split_pairs(query, separators)
                .filter(|(k, _)| spells(k, name))
                .all(|(k, v)| k == name && glob.matches(&v))
        })
}

impl CommandMatcher for HttpMatcher {
    fn matches(&self, command: &Command, _scratch: &mut Scratch) -> Result<bool, String> {
        let Some(parts) = request_parts(command) else {
            return Ok(false);
        };
        if let Some(methods) = &self.methods {
            // HEAD is GET without the body (RFC 9110 9.3.2): a server runs
            // the same handler, so a rule on GET covers it too.
            let as_get = parts.method.eq_ignore_ascii_case("HEAD");
            if !methods
                .iter()
                .any(|m| m.matches(parts.method) || (as_get && m.matches("GET")))
            {
                return Ok(false);
            }
        }
        if let Some(paths) = &self.paths {
            if !paths.iter().any(|p| path_matches(p, parts.path)) {
                return Ok(false);
            }
        }
        if let (Some(params), true) = (&self.query, self.allow) {
            let query = parts.query.unwrap_or("");
            return Ok(params
                .iter()
                .all(|(name, glob)| query_holds_everywhere(query, name, glob)));
        }
        if let Some(params) = &self.query {
            let pairs: Vec<(String, String)> = query_pairs(parts.query.unwrap_or("")).collect();
            for (name, glob) in params {
                // `force[]=1` and `force[x]=1` are `force` to PHP, Rails and
                // qs-style parsers.
                let named = |k: &str| k == name || k.split('[').next() == Some(name.as_str());
                if !pairs.iter().any(|(k, v)| named(k) && glob.matches(v)) {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(method: &str, path: &str, query: Option<&str>) -> Command {
        Command {
            kind: CommandKind::HttpRequest {
                method: method.into(),
                path: path.into(),
            },
            text: match query {
                Some(q) => format!("{method} {path}?{q}"),
                None => format!("{method} {path}"),
            },
            context: Vec::new(),
        }
    }

    fn rule(text: &str) -> Box<dyn CommandMatcher> {
        let table: toml::Table = toml::from_str(text).unwrap();
        HttpMatchKey.compile(&table).unwrap()
    }

    fn hit(m: &dyn CommandMatcher, c: &Command) -> bool {
        m.matches(c, &mut Scratch::default()).unwrap()
    }

    #[test]
    fn methods_paths_and_query() {
        let m = rule(r#"http = { methods = ["DELETE", "put"], paths = ["/admin/*"] }"#);
        for (method, path, expected) in [
            ("DELETE", "/admin/users", true),
            ("delete", "/admin", true),
            ("PUT", "/admin/", true),
            ("DELETE", "/ADMIN/x", true),
            ("GET", "/admin/users", false),
            ("DELETE", "/administrators", false),
            ("DELETE", "/public/admin", false),
        ] {
            assert_eq!(
                hit(&*m, &command(method, path, None)),
                expected,
                "{method} {path}"
            );
        }
        let m = rule(r#"http = { paths = ["/v1/users"] }"#);
        assert!(hit(&*m, &command("GET", "/v1/users/", None)));
        assert!(!hit(&*m, &command("GET", "/v1/users/1", None)));

        let m = rule(r#"http = { query = { force = "true", scope = "all*" } }"#);
        assert!(hit(
            &*m,
            &command("POST", "/x", Some("scope=allusers&force=true"))
        ));
        assert!(hit(
            &*m,
            &command("POST", "/x", Some("force=false&force=true&scope=all"))
        ));
        assert!(hit(
            &*m,
            &command("POST", "/x", Some("%66orce=%74rue&scope=all"))
        ));
        assert!(!hit(&*m, &command("POST", "/x", Some("force=true"))));
        assert!(!hit(&*m, &command("POST", "/x", None)));
        // A `?` inside the (decoded) path is not the query.
        assert!(!hit(&*m, &command("POST", "/x?force=true&scope=all", None)));
    }

    #[test]
    fn head_is_judged_as_get_and_query_variants_are_read() {
        let m = rule(r#"http = { methods = ["GET"], paths = ["/secrets/*"] }"#);
        assert!(hit(&*m, &command("HEAD", "/secrets/a", None)));
        assert!(hit(&*m, &command("head", "/secrets/a", None)));
        assert!(!hit(&*m, &command("POST", "/secrets/a", None)));
        // A rule on HEAD alone is still about HEAD.
        let m = rule(r#"http = { methods = ["HEAD"] }"#);
        assert!(!hit(&*m, &command("GET", "/x", None)));

        let m = rule(r#"http = { query = { force = "true" } }"#);
        for q in [
            "force[]=true",
            "force[0]=true",
            "a=1;force=true",
            "force%5B%5D=true",
        ] {
            assert!(hit(&*m, &command("POST", "/x", Some(q))), "{q}");
        }
        assert!(!hit(&*m, &command("POST", "/x", Some("forced=true"))));
    }

    fn allow_rule(text: &str) -> Box<dyn CommandMatcher> {
        let table: toml::Table = toml::from_str(text).unwrap();
        HttpMatchKey.compile_for(&table, Action::Allow).unwrap()
    }

    #[test]
    fn allow_rules_hold_the_query_under_every_reading() {
        let rule_text =
            r#"http = { methods = ["POST"], paths = ["/deploy"], query = { dry_run = "true" } }"#;
        let allow = allow_rule(rule_text);
        let deny = rule(rule_text);
        for q in [
            "dry_run=true",
            "dry_run=true&x=1",
            "x=1&dry_run=true",
            "dry_run=true&dry_run=true",
            "dry_run=tru%65",
            "dry%5Frun=true",
        ] {
            assert!(hit(&*allow, &command("POST", "/deploy", Some(q))), "{q}");
            assert!(hit(&*deny, &command("POST", "/deploy", Some(q))), "{q}");
        }
        // Each is read by some server as something other than dry_run=true.
        for q in [
            "dry_run=false&dry_run=true", // Go reads the first
            "dry_run=true&dry_run=false", // Rails, PHP, Express read the last
            "x=1;dry_run=true",           // Go drops the pair
            "dry_run=true;x=1",           // `&` alone: the value is `true;x=1`
            "dry_run=true&x=1;dry_run=false",
            "dry_run[]=true",
            "dry_run=true&dry_run[]=false",
            "dry_run=true&DRY_RUN=false", // ASP.NET ignores case
            "dry_run=true&dry.run=false", // PHP reads `dry.run` as `dry_run`
            "dry_run=true&dry+run=false",
            "dry_run",
            "",
        ] {
            assert!(!hit(&*allow, &command("POST", "/deploy", Some(q))), "{q}");
        }
        assert!(!hit(&*allow, &command("POST", "/deploy", None)));
        // Deny rules keep "any copy matches", every reading included.
        for q in [
            "dry_run=false&dry_run=true",
            "x=1;dry_run=true",
            "dry_run[]=true",
        ] {
            assert!(hit(&*deny, &command("POST", "/deploy", Some(q))), "{q}");
        }
        // Methods and paths still decide for allow rules.
        assert!(!hit(
            &*allow,
            &command("GET", "/deploy", Some("dry_run=true"))
        ));
        assert!(!hit(
            &*allow,
            &command("POST", "/other", Some("dry_run=true"))
        ));
    }

    #[test]
    fn allow_rules_hold_the_query_as_php_and_qs_read_it() {
        let allow = allow_rule(r#"http = { methods = ["POST"], query = { dry_run = "true" } }"#);
        let many = |n: usize, sep: &str| {
            let pairs: Vec<String> = (0..n).map(|i| format!("p{i}=x")).collect();
            pairs.join(sep)
        };
        // Past qs's `parameterLimit` or PHP's `max_input_vars`, `dry_run` is
        // dropped: the default (a real run) happens.
        let past_limits = [
            format!("{}&dry_run=true", many(1001, "&")),
            format!("{}&dry_run=true", many(100, "&")),
            format!("{}dry_run=true", "&".repeat(1001)),
            format!("{};dry_run=true", many(100, ";")),
            format!("dry_run=true&{}", many(100, "&")),
        ];
        for q in &past_limits {
            assert!(
                !hit(&*allow, &command("POST", "/deploy", Some(q))),
                "{}",
                &q[..20]
            );
        }
        // PHP reads each second name as `dry_run`, and takes the last copy.
        for q in [
            "dry_run=true&dry[run=false",
            "dry_run=true&dry%5Brun=false",
            "dry_run=true&+dry_run=false",
            "dry_run=true&%20%20dry_run=false",
            "dry_run=true&+dry.run=false",
            "dry_run=true&+dry[run=false",
            "dry_run=true&DRY[RUN=false",
            "dry_run=true&+dry_run[]=false",
            "dry[run=true",
            "+dry_run=true",
        ] {
            assert!(!hit(&*allow, &command("POST", "/deploy", Some(q))), "{q}");
        }
        // Ordinary queries still pass, up to the limit.
        let at_limit = format!("{}&dry_run=true", many(99, "&"));
        for q in [
            "dry_run=true&page=2&sort=name",
            "dry_run=true&tags[]=a&tags[]=b",
            "dry_run=true&run=1&dry=1",
            "dry_run=true&dry_run_id=7&a.b=1",
            "dry_run=true&dry[run]=x",
            "dry_run=true&dry_run[=x",
            "dry_run=true&q=dry%5Brun",
            at_limit.as_str(),
        ] {
            assert!(hit(&*allow, &command("POST", "/deploy", Some(q))), "{q}");
        }
        // Deny rules are not limited: they match on any copy they see.
        let deny = rule(r#"http = { query = { dry_run = "false" } }"#);
        let q = format!("{}&dry_run=false", many(1001, "&"));
        assert!(hit(&*deny, &command("POST", "/deploy", Some(&q))));
    }

    #[test]
    fn bad_rules_are_refused() {
        for bad in [
            r#"http = ["GET"]"#,
            r#"http = { methods = [] }"#,
            r#"http = { paths = ["admin"] }"#,
            r#"http = { verbs = ["get"] }"#,
            r#"http = { methods = ["GE T"] }"#,
            r#"http = { query = {} }"#,
            r#"http = {}"#,
        ] {
            let table: toml::Table = toml::from_str(bad).unwrap();
            assert!(HttpMatchKey.compile(&table).is_err(), "{bad}");
        }
    }
}

//! Request paths, normalised once, so that policy and the upstream see the
//! same path and no spelling escapes a connection's prefix or a path rule.
//!
//! The raw path is percent-decoded into segments; empty segments (`//`) and
//! `.` are dropped. Refused with 400: `..` segments (in any spelling, e.g.
//! `%2e%2e`), encoded `/` or `\` (`%2F`, `%5C`), a literal `\`, `;` (path
//! parameters that servlet containers strip, so `/admin;x/` would reach
//! `/admin/`), NUL and control characters, malformed escapes and non-UTF-8.
//! The upstream gets the decoded segments re-encoded canonically, so what it
//! decodes is exactly what policy matched.

use percent_encoding::{percent_decode, utf8_percent_encode, AsciiSet, CONTROLS};
use unicode_normalization::UnicodeNormalization;

/// Longest request path accepted.
pub const MAX_PATH_LEN: usize = 8 * 1024;

/// Bytes percent-encoded when the normalised path goes upstream: everything
/// but RFC 3986 unreserved characters, sub-delims (less `;`), `:` and `@`.
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b';')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// A normalised path: decoded segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalPath {
    segments: Vec<String>,
}

impl NormalPath {
    /// Normalises a raw request path (as on the request line, without query).
    /// The error is a sentence for the client.
    pub fn parse(raw: &str) -> Result<NormalPath, String> {
        if raw.len() > MAX_PATH_LEN {
            return Err(format!(
                "the request path is longer than {MAX_PATH_LEN} bytes"
            ));
        }
        if !raw.starts_with('/') {
            return Err("the request target must be an absolute path (/connection/…)".into());
        }
        let mut segments = Vec::new();
        for raw_segment in raw.split('/') {
            let segment = decode_segment(raw_segment)?;
            match segment.as_str() {
                "" | "." => {}
                ".." => return Err(
                    "the request path contains a `..` segment; send the path without dot segments"
                        .into(),
                ),
                _ => segments.push(segment),
            }
        }
        Ok(NormalPath { segments })
    }

    pub fn segments(&self) -> &[String] {
        &self.segments
    }

    /// Splits off the first segment (the connection name) and returns the rest.
    pub fn split_first(&self) -> Option<(&str, NormalPath)> {
        let (first, rest) = self.segments.split_first()?;
        Some((
            first.as_str(),
            NormalPath {
                segments: rest.to_vec(),
            },
        ))
    }

    /// The decoded path policy sees: `/a/b` (`/` for no segments). A path
    /// the client sent with a trailing slash keeps it (`trailing`).
    pub fn decoded(&self, trailing: bool) -> String {
        join(self.segments.iter().map(String::as_str), trailing)
    }

    /// The canonical percent-encoded path for the upstream.
    pub fn encoded(&self, trailing: bool) -> String {
        join(
            self.segments
                .iter()
                .map(|s| utf8_percent_encode(s, SEGMENT).to_string()),
            trailing,
        )
    }
}

fn join<S: AsRef<str>>(segments: impl Iterator<Item = S>, trailing: bool) -> String {
    let mut out = String::new();
    let mut any = false;
    for s in segments {
        out.push('/');
        out.push_str(s.as_ref());
        any = true;
    }
    if !any || trailing {
        out.push('/');
    }
    out
}

/// Whether the raw path ends in `/` (kept, since `/items/` and `/items` can differ upstream).
pub fn has_trailing_slash(raw: &str) -> bool {
    raw.len() > 1 && raw.ends_with('/')
}

fn decode_segment(raw: &str) -> Result<String, String> {
    let bytes = raw.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or_else(malformed)?;
                let value = std::str::from_utf8(hex)
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(malformed)?;
                match value {
                    b'/' | b'\\' => {
                        return Err("the request path contains an encoded slash or backslash (%2F, %5C); these are refused because servers disagree on what they mean".into())
                    }
                    b';' => return Err(semicolon()),
                    v if v < 0x20 || v == 0x7f => return Err(control()),
                    _ => {}
                }
                i += 3;
            }
            b'\\' => return Err("the request path contains a backslash".into()),
            b';' => return Err(semicolon()),
            b if b < 0x20 || b == 0x7f => return Err(control()),
            _ => i += 1,
        }
    }
    let decoded = percent_decode(bytes)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| "the request path is not valid UTF-8 once percent-decoded".to_string())?;
    // A compatibility character (fullwidth `ａｄｍｉｎ`, `ﬁ`, a superscript)
    // is read as another character by a server that normalises paths, so
    // the rules would judge one path and the upstream serve another.
    if !unicode_normalization::is_nfkc_quick(decoded.chars())
        .eq(&unicode_normalization::IsNormalized::Yes)
        && decoded.nfkc().collect::<String>() != decoded
    {
        return Err("the request path contains characters that some servers read as other characters (fullwidth or compatibility forms); send the plain form".into());
    }
    Ok(decoded)
}

fn malformed() -> String {
    "the request path has a malformed percent-escape".into()
}

fn semicolon() -> String {
    "the request path contains `;` (path parameters are refused: some servers strip them, which would let a path escape a rule)".into()
}

fn control() -> String {
    "the request path contains a control character".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(raw: &str) -> Result<(String, String), String> {
        let p = NormalPath::parse(raw)?;
        let t = has_trailing_slash(raw);
        Ok((p.decoded(t), p.encoded(t)))
    }

    #[test]
    fn normalises_and_refuses_path_tricks() {
        let ok = |raw: &str, decoded: &str, encoded: &str| {
            assert_eq!(
                norm(raw),
                Ok((decoded.to_string(), encoded.to_string())),
                "{raw}"
            );
        };
        ok("/", "/", "/");
        ok("/crm/users", "/crm/users", "/crm/users");
        ok("//crm///users", "/crm/users", "/crm/users");
        ok("/crm/./users/.", "/crm/users", "/crm/users");
        ok("/crm/users/", "/crm/users/", "/crm/users/");
        ok("/crm/a%20b", "/crm/a b", "/crm/a%20b");
        ok("/crm/%61dmin", "/crm/admin", "/crm/admin");
        ok("/crm/%2e/x", "/crm/x", "/crm/x");
        ok("/crm/100%25", "/crm/100%", "/crm/100%25");
        ok("/crm/caf%C3%A9", "/crm/café", "/crm/caf%C3%A9");
        for bad in [
            "/crm/../admin",
            "/crm/%2e%2e/admin",
            "/crm/%2E%2E/admin",
            "/crm/.%2e/admin",
            "/crm/a%2Fb",
            "/crm/a%2fb",
            "/crm/a%5Cb",
            "/crm/a\\b",
            "/crm/admin;x/y",
            "/crm/admin%3bx/y",
            "/crm/a%00b",
            "/crm/a%0ab",
            "/crm/a%zz",
            "/crm/a%2",
            "/crm/%ff",
            "crm/x",
            "*",
        ] {
            assert!(norm(bad).is_err(), "{bad} was accepted: {:?}", norm(bad));
        }
    }

    #[test]
    fn splits_the_connection_name() {
        let p = NormalPath::parse("/crm/v1/users").unwrap();
        let (name, rest) = p.split_first().unwrap();
        assert_eq!(name, "crm");
        assert_eq!(rest.decoded(false), "/v1/users");
        let p = NormalPath::parse("/crm").unwrap();
        let (_, rest) = p.split_first().unwrap();
        assert_eq!(rest.decoded(false), "/");
        assert!(NormalPath::parse("/").unwrap().split_first().is_none());
    }

    #[test]
    fn compatibility_characters_are_refused_and_other_scripts_pass() {
        // Fullwidth "admin", raw and percent-encoded; a ligature.
        assert!(NormalPath::parse("/crm/\u{ff41}\u{ff44}\u{ff4d}\u{ff49}\u{ff4e}/x").is_err());
        assert!(NormalPath::parse("/crm/%EF%BD%81dmin").is_err());
        assert!(NormalPath::parse("/crm/\u{fb01}le").is_err());
        // Ordinary non-ASCII paths are ordinary work.
        for ok in [
            "/crm/caf%C3%A9",
            "/crm/\u{5ba2}\u{6237}",
            "/crm/stra%C3%9Fe",
            "/crm/%D0%BA%D0%BB%D0%B8%D0%B5%D0%BD%D1%82",
        ] {
            assert!(NormalPath::parse(ok).is_ok(), "{ok}");
        }
    }
}

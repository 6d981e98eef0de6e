//! Method and URL overrides: ways a client can make a lenient upstream (or a
//! framework in front of it) run another method or path than the request
//! line the gateway judged.
//!
//! - Headers (`X-HTTP-Method-Override`, `X-HTTP-Method`, `X-Method-Override`,
//!   `X-Original-URL`, `X-Rewrite-URL`, `X-Forwarded-Prefix`, …) are dropped
//!   before the request is judged or forwarded: the upstream runs the request
//!   line, which is what was judged. The test is by class (any `x-` header
//!   naming a method, an override, or an original/rewritten URL or path),
//!   not a list of known names.
//! - Query parameters (`_method=DELETE`, `_method[]=…`, `%5Fmethod`) are
//!   refused: dropping them would change the request the client meant; so
//!   are such fields in a body, whatever its media type (a form, an untyped
//!   body, a JSON object's top-level keys, multipart field names). The
//!   gateway reads a body's first 1 MiB before judging it; the rest of a
//!   longer `POST` body is checked as it streams upstream ([`scan`]).

pub mod scan;

use http::{HeaderMap, HeaderName};

/// Whether a request header can change the method or path an upstream runs.
pub fn is_override_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    let Some(rest) = n.strip_prefix("x-") else {
        return false;
    };
    // The gateway sets X-Forwarded-For/-Proto/-Host itself; every other
    // X-Forwarded-* (prefix, path, uri, method) rewrites the request.
    if rest.starts_with("forwarded-") {
        return true;
    }
    if rest.contains("method") || rest.contains("override") {
        return true;
    }
    let names_target = ["url", "uri", "path"].iter().any(|t| rest.contains(t));
    let rewrites = [
        "original", "orig-", "rewrite", "envoy", "real-", "proxy", "route",
    ]
    .iter()
    .any(|t| rest.contains(t));
    names_target && rewrites
}

/// Removes the override headers; returns their names (for the log).
pub fn strip_override_headers(headers: &mut HeaderMap) -> Vec<HeaderName> {
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|k| is_override_header(k.as_str()))
        .cloned()
        .collect();
    for n in &names {
        headers.remove(n);
    }
    names
}

/// Whether a parameter or field name asks for another method (`_method`,
/// `$method`, `_httpMethod`, anything naming a method override), after its
/// `[…]` suffix is ignored, in any case. A leading `.` counts as `_`: PHP
/// turns dots (and spaces) in field names into underscores, so Laravel and
/// Symfony read `.method` as `_method`.
pub fn is_override_name(name: &str) -> bool {
    let base = name.split('[').next().unwrap_or("").trim();
    let lower = base.to_ascii_lowercase();
    let bare: String = lower
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    let sigil = lower.starts_with(['_', '$', '.']);
    (sigil && (bare == "method" || bare == "httpmethod"))
        || (bare.contains("method") && bare.contains("override"))
}

/// The first query parameter that asks the upstream for another method
/// (see [`is_override_name`]), by its decoded name. Pairs are split on `&`
/// and `;` (some servers read both), names are percent-decoded.
pub fn method_override_param(query: &str) -> Option<String> {
    query
        .split(['&', ';'])
        .filter(|p| !p.is_empty())
        .map(|pair| pair.split_once('=').map_or(pair, |(k, _)| k))
        .map(|k| {
            percent_encoding::percent_decode_str(&k.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        })
        .find(|name| is_override_name(name))
}

/// The media type's essence, lowercase (`application/json`), or `""`.
fn essence(content_type: Option<&str>) -> String {
    content_type
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

fn is_json_type(essence: &str) -> bool {
    matches!(
        essence,
        "application/json" | "text/json" | "application/x-json"
    ) || essence.ends_with("+json")
}

/// Whether a body of this media type is one frameworks read override
/// fields from: a form (or no type at all: Rack reads an untyped POST body
/// as a form), multipart form data, or JSON (Laravel, Symfony). A POST body
/// of such a type longer than the gateway reads before judging is checked
/// as it streams upstream ([`scan::BodyScanner`]).
pub fn may_carry_override(content_type: Option<&str>) -> bool {
    let essence = essence(content_type);
    essence.is_empty()
        || essence == "application/x-www-form-urlencoded"
        || essence == "multipart/form-data"
        || is_json_type(&essence)
}

/// A method-override field in a request body, whatever its media type: a
/// form field (`_method=DELETE`, read as a form also without or under
/// another type), a top-level JSON key (`{"_method": "DELETE"}`, also in an
/// untyped body that is a JSON object), or a multipart field name (the
/// `name` parameter in any case, `name*=` too). `body` is the start of the
/// body the gateway read.
pub fn method_override_in_body(content_type: Option<&str>, body: &[u8]) -> Option<String> {
    let essence = essence(content_type);
    if essence.starts_with("multipart/") {
        return scan::multipart_override(body);
    }
    let text = String::from_utf8_lossy(body);
    if let Some(name) = json_override(body) {
        return Some(name);
    }
    if is_json_type(&essence) && serde_json::from_slice::<serde_json::Value>(body).is_ok() {
        // A JSON document is not read as a form: `&_method=` inside one of
        // its strings is data.
        return None;
    }
    method_override_param(&text)
}

/// A top-level key of a JSON object body naming a method override.
fn json_override(body: &[u8]) -> Option<String> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace())?;
    if *first != b'{' {
        return None;
    }
    let doc: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body).ok()?;
    doc.keys().find(|k| is_override_name(k)).cloned()
}

/// A multipart field whose name (`name=`, `NAME=`, `name*=utf-8''…`, quoted
/// or not) names a method override. Every `name` parameter in the body is
/// read, wherever it is: a part's headers cannot be told from its data
/// without trusting the boundary the upstream will use.
///
/// The reading the multipart scanner is tested against (tests only): it is
/// quadratic on `name`s nested in values (`name=name=…`), so the gateway
/// reads a body with [`scan::multipart_override`], which answers the same
/// in linear time.
#[cfg(test)]
fn multipart_override_reference(text: &str) -> Option<String> {
    let lower = text.to_ascii_lowercase();
    let bytes = lower.as_bytes();
    let mut from = 0;
    while let Some(at) = lower[from..].find("name") {
        let start = from + at;
        from = start + 4;
        // Not `filename=`: the parameter starts after `;` or blanks.
        if start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'-') {
            continue;
        }
        let mut rest = &text[start + 4..];
        let extended = rest.starts_with('*');
        rest = rest.trim_start_matches('*').trim_start();
        let Some(value) = rest.strip_prefix('=') else {
            continue;
        };
        let value = value.trim_start().trim_start_matches(['"', '\'']);
        // An extended value (`utf-8''%5Fmethod`) holds quotes of its own.
        let ends: &[char] = if extended {
            &['"', ';', '\r', '\n']
        } else {
            &['"', '\'', ';', '\r', '\n']
        };
        let end = value.find(ends).unwrap_or(value.len());
        let mut name = value[..end].trim().to_string();
        if extended {
            // RFC 5987: charset'language'percent-encoded.
            let encoded = name.rsplit('\'').next().unwrap_or("");
            name = percent_encoding::percent_decode_str(encoded)
                .decode_utf8_lossy()
                .into_owned();
        }
        if is_override_name(&name) {
            return Some(name);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn override_headers_by_class() {
        for h in [
            "X-HTTP-Method-Override",
            "X-HTTP-Method",
            "X-Method-Override",
            "x-original-method",
            "X-Original-URL",
            "X-Rewrite-URL",
            "X-Original-URI",
            "X-Forwarded-Prefix",
            "X-Forwarded-Path",
            "X-Envoy-Original-Path",
            "X-Override-URL",
            "X-Real-URI",
        ] {
            assert!(is_override_header(h), "{h}");
        }
        for h in [
            "X-Request-Id",
            "X-Api-Key",
            "Content-Type",
            "Accept",
            "X-Trace-Path-Count",
            "Method",
        ] {
            assert!(!is_override_header(h), "{h}");
        }
    }

    #[test]
    fn method_override_in_bodies() {
        let form = Some("application/x-www-form-urlencoded; charset=utf-8");
        assert!(method_override_in_body(form, b"a=1&_method=DELETE").is_some());
        assert!(method_override_in_body(form, b"name=x&method=card").is_none());
        let multi = Some("multipart/form-data; boundary=x");
        let body =
            b"--x\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--x--";
        assert!(method_override_in_body(multi, body).is_some());
        let body = b"--x\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\n_method\r\n--x--";
        assert!(method_override_in_body(multi, body).is_none());
    }

    #[test]
    fn method_overrides_in_any_media_type() {
        // Each asks a framework for DELETE.
        for (ctype, body) in [
            // Laravel and Symfony read `_method` from a JSON body.
            (Some("application/json"), &b"{\"_method\":\"DELETE\"}"[..]),
            (Some("application/json"), b" {\"a\": 1, \"_METHOD\": \"DELETE\"}"),
            (Some("application/vnd.api+json"), b"{\"\\u005fmethod\":\"DELETE\"}"),
            // Rack reads an untyped POST body as a form.
            (None, b"_method=DELETE"),
            (None, b"a=1&%5Fmethod=DELETE"),
            (Some(""), b"a=1;_method=DELETE"),
            (None, b"{\"_method\":\"DELETE\"}"),
            (Some("text/plain"), b"_method=DELETE"),
            (Some("text/plain"), b"{\"_method\":\"DELETE\"}"),
            (Some("APPLICATION/X-WWW-FORM-URLENCODED"), b"_method=DELETE"),
            // Invalid JSON may still be read as a form by a lenient parser.
            (Some("application/json"), b"{x&_method=DELETE"),
            // Multipart field names, in any case and spelling.
            (
                Some("multipart/form-data; boundary=x"),
                b"--x\r\ncontent-disposition: form-data; NAME=\"_method\"\r\n\r\nDELETE\r\n--x--",
            ),
            (
                Some("Multipart/Form-Data; boundary=x"),
                b"--x\r\nContent-Disposition: form-data;name=_method\r\n\r\nDELETE\r\n--x--",
            ),
            (
                Some("multipart/form-data; boundary=x"),
                b"--x\r\nContent-Disposition: form-data; Name = '_method'\r\n\r\nDELETE\r\n--x--",
            ),
            (
                Some("multipart/form-data; boundary=x"),
                b"--x\r\nContent-Disposition: form-data; name*=utf-8''%5Fmethod\r\n\r\nDELETE\r\n--x--",
            ),
        ] {
            assert!(
                method_override_in_body(ctype, body).is_some(),
                "{ctype:?} {}",
                String::from_utf8_lossy(body)
            );
        }
        // Ordinary bodies pass.
        for (ctype, body) in [
            (Some("application/json"), &b"{\"name\":\"x\",\"method\":\"card\"}"[..]),
            (Some("application/json"), b"{\"q\":\"a&_method=DELETE\"}"),
            (Some("application/json"), b"{\"nested\":{\"_method\":\"DELETE\"}}"),
            (Some("application/json"), b"[{\"_method\":\"DELETE\"}]"),
            (Some("application/json"), b"{\"payment_method\":\"card\"}"),
            (None, b"name=x&payment_method=card"),
            (Some("application/octet-stream"), b"\x00\x01binary"),
            (
                Some("multipart/form-data; boundary=x"),
                b"--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"_method\"\r\n\r\n_method=DELETE\r\n--x--",
            ),
        ] {
            assert!(
                method_override_in_body(ctype, body).is_none(),
                "{ctype:?} {}",
                String::from_utf8_lossy(body)
            );
        }
        assert!(may_carry_override(None));
        assert!(may_carry_override(Some("application/json; charset=utf-8")));
        assert!(may_carry_override(Some("multipart/form-data; boundary=x")));
        assert!(may_carry_override(Some(
            "application/x-www-form-urlencoded"
        )));
        assert!(!may_carry_override(Some("application/octet-stream")));
        assert!(!may_carry_override(Some("image/png")));
    }

    #[test]
    fn method_override_params() {
        for q in [
            "_method=DELETE",
            "a=1&_method=delete",
            "a=1;_method=PUT",
            "%5Fmethod=DELETE",
            "_method[]=DELETE",
            "_METHOD=DELETE",
            "$method=DELETE",
            "_httpMethod=DELETE",
            "x-http-method-override=DELETE",
            ".method=DELETE",
            "%2Emethod=DELETE",
            "+.method=DELETE",
        ] {
            assert!(method_override_param(q).is_some(), "{q}");
        }
        for q in ["method=card", "a=1", "methods=x", "", "payment_method=card"] {
            assert_eq!(method_override_param(q), None, "{q}");
        }
    }
}

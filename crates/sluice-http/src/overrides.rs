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
//!   are such fields in a form or multipart body.

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

/// The first query parameter that asks the upstream for another method
/// (`_method`, `$method`, `_httpMethod`, anything naming a method override),
/// by its decoded name. Pairs are split on `&` and `;` (some servers read
/// both), names are percent-decoded and their `[…]` suffix ignored.
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
        .find(|name| {
            let base = name.split('[').next().unwrap_or("").trim();
            let lower = base.to_ascii_lowercase();
            let bare: String = lower
                .chars()
                .filter(|c| c.is_ascii_alphanumeric())
                .collect();
            let sigil = lower.starts_with(['_', '$']);
            (sigil && (bare == "method" || bare == "httpmethod"))
                || (bare.contains("method") && bare.contains("override"))
        })
}

/// A method-override field in a request body frameworks read it from: a
/// form (`application/x-www-form-urlencoded`, Rails, Laravel, Symfony) or a
/// multipart form field. `body` is the start of the body the gateway read.
pub fn method_override_in_body(content_type: Option<&str>, body: &[u8]) -> Option<String> {
    let ctype = content_type?.to_ascii_lowercase();
    let text = String::from_utf8_lossy(body);
    if ctype.starts_with("application/x-www-form-urlencoded") {
        return method_override_param(&text);
    }
    if ctype.starts_with("multipart/form-data") {
        // Each part's `Content-Disposition: form-data; name="…"`.
        return text
            .split("name=")
            .skip(1)
            .filter_map(|rest| {
                let rest = rest.trim_start_matches(['"', '\'']);
                let end = rest
                    .find(['"', '\'', ';', '\r', '\n'])
                    .unwrap_or(rest.len());
                let name = &rest[..end];
                method_override_param(&format!("{name}=")).map(|_| name.to_string())
            })
            .next();
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
        assert!(method_override_in_body(Some("application/json"), b"{\"_method\": 1}").is_none());
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
        ] {
            assert!(method_override_param(q).is_some(), "{q}");
        }
        for q in ["method=card", "a=1", "methods=x", "", "payment_method=card"] {
            assert_eq!(method_override_param(q), None, "{q}");
        }
    }
}

//! The default response plan: masking chosen by content type.

use crate::flavor::{BodyPlan, MaskingContext, RequestHead, ResponsePlan};
use crate::problem::{Problem, ProblemKind};
use http::{header, Method, StatusCode};

/// Content types passed through even when masking is on: media whose bytes
/// are not text (a detector match inside them would corrupt them).
const BINARY_TYPES: &[&str] = &["image/", "audio/", "video/", "font/", "application/wasm"];

/// Content types that carry data the masker can neither read nor rewrite
/// (archives, compressed files, binary encodings of structured data): on a
/// connection with masking they are refused, never passed through unmasked.
const OPAQUE_TYPES: &[&str] = &[
    "application/zip",
    "application/gzip",
    "application/x-gzip",
    "application/x-tar",
    "application/x-bzip2",
    "application/x-xz",
    "application/x-7z-compressed",
    "application/x-rar-compressed",
    "application/zstd",
    "application/pdf",
    "application/grpc",
    "application/x-protobuf",
    "application/protobuf",
    "application/vnd.google.protobuf",
    "application/cbor",
    "application/msgpack",
    "application/x-msgpack",
    "application/vnd.apache.avro",
    "application/vnd.apache.parquet",
];

/// The essence of a `Content-Type` (`application/json`), lowercase.
pub fn content_type(response: &http::response::Parts) -> String {
    response
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default()
}

/// Whether a JSON document (`application/json`, `text/json`,
/// `application/x-json`, any `…/…+json`).
pub fn is_json(content_type: &str) -> bool {
    matches!(
        content_type,
        "application/json" | "text/json" | "application/x-json" | "text/x-json"
    ) || (content_type.contains('/') && content_type.ends_with("+json"))
}

/// Newline-delimited JSON types (NDJSON, JSON Lines, JSON streams).
pub fn is_json_lines(content_type: &str) -> bool {
    matches!(
        content_type,
        "application/x-ndjson"
            | "application/ndjson"
            | "application/jsonl"
            | "application/x-jsonlines"
            | "application/jsonlines"
            | "application/stream+json"
    )
}

/// Whether the response carries a body at all.
pub fn has_body(method: &Method, status: StatusCode) -> bool {
    !(method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED)
}

/// Masking off or no body: pass through. A compressed body that would need
/// masking is refused (the gateway asked for identity encoding). JSON
/// documents are masked as documents, media and archives pass through,
/// everything else (text, XML, form data, unlabelled bytes) goes through the
/// stream masker.
pub fn default_plan(
    head: &RequestHead<'_>,
    response: &http::response::Parts,
    masking: &MaskingContext<'_>,
) -> ResponsePlan {
    let ctype = content_type(response);
    let streaming = ctype == "text/event-stream";
    let masker = match masking.masker {
        Some(m) if has_body(head.method, response.status) => m,
        _ => return ResponsePlan::new(BodyPlan::PassThrough).streaming(streaming),
    };
    if BINARY_TYPES.iter().any(|b| ctype.starts_with(b)) {
        return ResponsePlan::new(BodyPlan::PassThrough);
    }
    if OPAQUE_TYPES.iter().any(|b| ctype.starts_with(b)) {
        return ResponsePlan::new(BodyPlan::Refuse(
            Problem::new(
                ProblemKind::BadGateway,
                format!(
                    "the upstream answered with {ctype:?}, which the gateway cannot read to mask; on this connection responses are masked, so it was not passed on"
                ),
            )
            .with_hint("Ask for a text or JSON representation, or ask a Sluice administrator for a connection without masking (or an exempt group)."),
        ));
    }
    if let Some(encoding) = encoded(response) {
        return ResponsePlan::new(BodyPlan::Refuse(
            Problem::new(
                ProblemKind::BadGateway,
                format!(
                    "the upstream sent a {encoding}-encoded body although the gateway asked for identity encoding; it must be masked, so it was not passed on"
                ),
            )
            .with_hint("Ask the upstream's owner to honour Accept-Encoding: identity, or request an uncompressed representation."),
        ));
    }
    if is_json(&ctype) {
        return ResponsePlan::new(BodyPlan::Json {
            key_paths: Vec::new(),
        });
    }
    if matches!(ctype.as_str(), "text/html" | "application/xhtml+xml") {
        if let Some(stream) = masker.stream() {
            let html = crate::body::HtmlText::new(stream);
            return ResponsePlan::new(BodyPlan::Transform(Box::new(html))).streaming(streaming);
        }
    }
    let delimiter = match ctype.as_str() {
        "text/csv" | "application/csv" => Some(b','),
        "text/tab-separated-values" => Some(b'\t'),
        _ => None,
    };
    if let Some(delimiter) = delimiter {
        // Tables: masked as result rows, so column rules apply by header.
        let csv = crate::body::CsvDocument::new(masker.clone(), delimiter, masking.max_buffer);
        return ResponsePlan::new(BodyPlan::Transform(Box::new(csv)));
    }
    if is_json_lines(&ctype) {
        // Each line a document: key-name column rules apply as to JSON.
        let masker = masker.clone();
        let lines = crate::body::JsonLines::new(
            move |doc| masker.mask_document(doc, &[]),
            masking.max_buffer,
            "line",
        );
        return ResponsePlan::new(BodyPlan::Transform(Box::new(lines))).streaming(true);
    }
    ResponsePlan::new(BodyPlan::Text).streaming(streaming)
}

/// The refusal of a partial response (`206`, or any `Content-Range`) on a
/// connection whose bodies are masked or redacted: a part of a body is
/// masked out of context (a CSV cut from its header, a value split across
/// two ranges), so only whole bodies are passed on.
pub fn partial_refusal(response: &http::response::Parts) -> Option<Problem> {
    let partial = response.status == StatusCode::PARTIAL_CONTENT
        || response.headers.contains_key(header::CONTENT_RANGE);
    partial.then(|| {
        Problem::new(
            ProblemKind::BadGateway,
            "sluice: the upstream answered with a part of a body (206 or Content-Range); responses on this connection are masked whole, so it was not passed on",
        )
        .with_hint("Request the whole resource, without Range.")
    })
}

/// The response's content coding, when it is not identity.
pub fn encoded(response: &http::response::Parts) -> Option<String> {
    let mut codings = Vec::new();
    for v in response.headers.get_all(header::CONTENT_ENCODING) {
        let text = v.to_str().unwrap_or("unreadable");
        for c in text.split(',') {
            let c = c.trim().to_ascii_lowercase();
            if !c.is_empty() && c != "identity" {
                codings.push(c);
            }
        }
    }
    (!codings.is_empty()).then(|| codings.join(", "))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use sluice_core::config::Config;

    pub(crate) fn email_engine() -> sluice_core::masking::MaskingEngine {
        sluice_core::masking::compile(
            &sluice_core::masking::MaskingConfig {
                detectors: vec!["email".into()],
                ..Default::default()
            },
            None,
        )
        .unwrap()
    }

    pub(crate) fn session_info() -> sluice_core::pipeline::SessionInfo {
        sluice_core::pipeline::SessionInfo {
            id: "s".into(),
            identity: sluice_core::Identity {
                subject: "a".into(),
                groups: vec![],
                issuer: "sluice".into(),
                token_id: "t".into(),
                expires_at: std::time::SystemTime::now(),
                connections: None,
            },
            connection: "crm".into(),
            protocol: sluice_core::Protocol::Http,
            client_addr: "127.0.0.1:1".into(),
        }
    }

    fn plan(ctype: &str, encoding: Option<&str>, masking: bool) -> BodyPlan {
        let config = Config::from_toml_str(
            "[[connections]]\nname = \"crm\"\nkind = \"http\"\nupstream = \"http://127.0.0.1:1\"\nallow_groups = [\"a\"]\n",
            "t.toml",
        )
        .unwrap();
        let connection = &config.connections[0];
        let mut builder = http::Response::builder().header(header::CONTENT_TYPE, ctype);
        if let Some(e) = encoding {
            builder = builder.header(header::CONTENT_ENCODING, e);
        }
        let (parts, ()) = builder.body(()).unwrap().into_parts();
        let method = Method::GET;
        let headers = http::HeaderMap::new();
        let head = RequestHead::new(&method, "/x", None, &headers, connection);
        let session = session_info();
        let masker = masking.then(|| {
            sluice_core::masking::SessionMasker::for_engine(email_engine(), session.clone())
        });
        let ctx = MaskingContext::new(masker.as_ref(), &session, 1 << 20);
        default_plan(&head, &parts, &ctx).body
    }

    #[test]
    fn partial_responses_are_refused() {
        let parts = |status: u16, range: Option<&str>| {
            let mut b = http::Response::builder().status(status);
            if let Some(r) = range {
                b = b.header(header::CONTENT_RANGE, r);
            }
            b.body(()).unwrap().into_parts().0
        };
        assert!(partial_refusal(&parts(200, None)).is_none());
        assert!(partial_refusal(&parts(206, None)).is_some());
        assert!(partial_refusal(&parts(206, Some("bytes 24-40/41"))).is_some());
        assert!(partial_refusal(&parts(200, Some("bytes 24-40/41"))).is_some());
    }

    #[test]
    fn plans_follow_the_content_type() {
        assert!(matches!(
            plan("application/json; charset=utf-8", None, true),
            BodyPlan::Json { .. }
        ));
        assert!(matches!(
            plan("application/problem+json", None, true),
            BodyPlan::Json { .. }
        ));
        assert!(matches!(
            plan("text/html", None, true),
            BodyPlan::Transform(_)
        ));
        assert!(matches!(plan("", None, true), BodyPlan::Text));
        assert!(matches!(
            plan("application/octet-stream", None, true),
            BodyPlan::Text
        ));
        assert!(matches!(
            plan("image/png", None, true),
            BodyPlan::PassThrough
        ));
        for opaque in [
            "application/zip",
            "application/x-protobuf",
            "application/grpc+proto",
            "application/gzip",
        ] {
            assert!(
                matches!(plan(opaque, None, true), BodyPlan::Refuse(_)),
                "{opaque}"
            );
            assert!(matches!(plan(opaque, None, false), BodyPlan::PassThrough));
        }
        for json in [
            "text/json",
            "application/x-json",
            "application/vnd.api+json",
        ] {
            assert!(
                matches!(plan(json, None, true), BodyPlan::Json { .. }),
                "{json}"
            );
        }
        assert!(matches!(
            plan("application/json", None, false),
            BodyPlan::PassThrough
        ));
        assert!(matches!(
            plan("application/json", Some("gzip"), true),
            BodyPlan::Refuse(_)
        ));
        assert!(matches!(
            plan("text/plain", Some("identity"), true),
            BodyPlan::Text
        ));
        assert!(matches!(
            plan("image/png", Some("gzip"), true),
            BodyPlan::PassThrough
        ));
    }
}

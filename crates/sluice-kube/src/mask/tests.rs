use super::*;
use serde_json::json;
use sluice_core::masking::{compile, MaskingConfig, MaskingEngine};

const PASSWORD_B64: &str = "czNjcjN0LVBhNTV3MHJkIQ==";
const PASSWORD: &str = "s3cr3t-Pa55w0rd!";

fn masker() -> SessionMasker {
    let session = sluice_core::pipeline::SessionInfo {
        id: "s".into(),
        identity: sluice_core::model::Identity {
            subject: "a".into(),
            groups: vec![],
            issuer: "sluice".into(),
            token_id: "t".into(),
            expires_at: std::time::SystemTime::now(),
            connections: None,
        },
        connection: "k8s".into(),
        protocol: sluice_core::Protocol::Kubernetes,
        client_addr: "127.0.0.1:1".into(),
    };
    SessionMasker::for_engine(engine(), session)
}

fn engine() -> MaskingEngine {
    let config = MaskingConfig {
        detectors: vec!["email".into()],
        ..Default::default()
    };
    compile(&config, None).unwrap()
}

fn secret() -> Value {
    let applied = json!({"kind": "Secret", "apiVersion": "v1",
        "metadata": {"name": "db"}, "stringData": {"password": PASSWORD}});
    json!({
        "kind": "Secret", "apiVersion": "v1",
        "metadata": {"name": "db", "namespace": "default",
            "annotations": {LAST_APPLIED: applied.to_string(), "team": "payments"}},
        "data": {"password": PASSWORD_B64, "username": "YXBw"},
        "stringData": {"token": PASSWORD},
        "type": "Opaque"
    })
}

fn no_secret_left(v: &Value) {
    let text = v.to_string();
    assert!(!text.contains(PASSWORD), "{text}");
    assert!(!text.contains(PASSWORD_B64), "{text}");
    assert!(!text.contains("YXBw"), "{text}");
}

#[test]
fn secret_object() {
    let mut doc = secret();
    let counts = DocMasker {
        secrets: true,
        masker: None,
    }
    .mask(&mut doc);
    no_secret_left(&doc);
    assert_eq!(doc["data"]["password"], PLACEHOLDER_B64);
    assert_eq!(doc["stringData"]["token"], PLACEHOLDER);
    assert_eq!(doc["metadata"]["annotations"]["team"], "payments");
    assert_eq!(doc["metadata"]["name"], "db");
    let applied: Value = serde_json::from_str(
        doc["metadata"]["annotations"][LAST_APPLIED]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(applied["stringData"]["password"], PLACEHOLDER);
    assert_eq!(counts.get(COUNT_NAME), 4);
}

#[test]
fn by_kind_outside_a_secrets_request() {
    let mut doc =
        json!({"kind": "List", "items": [secret(), {"kind": "ConfigMap", "data": {"a": "b"}}]});
    DocMasker {
        secrets: false,
        masker: None,
    }
    .mask(&mut doc);
    no_secret_left(&doc);
    assert_eq!(doc["items"][1]["data"]["a"], "b");
    let mut list = json!({"kind": "SecretList", "items": [{"metadata": {"name": "x"}, "data": {"k": PASSWORD_B64}}]});
    DocMasker {
        secrets: false,
        masker: None,
    }
    .mask(&mut list);
    no_secret_left(&list);
}

#[test]
fn unparseable_last_applied_is_replaced_whole() {
    let mut doc = secret();
    doc["metadata"]["annotations"][LAST_APPLIED] = json!(format!("{{not json {PASSWORD}"));
    DocMasker {
        secrets: true,
        masker: None,
    }
    .mask(&mut doc);
    no_secret_left(&doc);
    assert_eq!(doc["metadata"]["annotations"][LAST_APPLIED], PLACEHOLDER);
}

#[test]
fn odd_shapes_are_replaced_whole() {
    let mut doc = json!({"kind": "Secret", "data": [PASSWORD_B64], "stringData": PASSWORD});
    DocMasker {
        secrets: false,
        masker: None,
    }
    .mask(&mut doc);
    no_secret_left(&doc);
}

#[test]
fn status_in_a_secrets_request_is_kept() {
    let mut doc = json!({"kind": "Status", "status": "Failure", "message": "secrets \"x\" not found",
        "details": {"name": "x", "kind": "secrets"}, "code": 404});
    let before = doc.clone();
    DocMasker {
        secrets: true,
        masker: None,
    }
    .mask(&mut doc);
    assert_eq!(doc, before);
}

fn secret_table(object: Value) -> Value {
    json!({
        "kind": "Table", "apiVersion": "meta.k8s.io/v1",
        "columnDefinitions": [{"name": "Name"}, {"name": "Type"}, {"name": "Data"},
            {"name": "Age"}, {"name": "Preview"}],
        "rows": [{"cells": ["db", "Opaque", 2, "1d", PASSWORD], "object": object}]
    })
}

#[test]
fn table_rows() {
    let mut doc = secret_table(secret());
    DocMasker {
        secrets: true,
        masker: None,
    }
    .mask(&mut doc);
    no_secret_left(&doc);
    assert_eq!(
        doc["rows"][0]["cells"],
        json!(["db", "Opaque", 2, "1d", PLACEHOLDER])
    );
    // The row's object says Secret even when the request did not.
    let mut doc = secret_table(secret());
    DocMasker {
        secrets: false,
        masker: None,
    }
    .mask(&mut doc);
    no_secret_left(&doc);
    // Partial metadata still carries annotations.
    let partial =
        json!({"kind": "PartialObjectMetadata", "metadata": secret()["metadata"].clone()});
    let mut doc = secret_table(partial);
    DocMasker {
        secrets: true,
        masker: None,
    }
    .mask(&mut doc);
    no_secret_left(&doc);
}

#[test]
fn pod_tables_and_other_objects_untouched_without_detectors() {
    let mut doc = json!({"kind": "Table", "columnDefinitions": [{"name": "Name"}, {"name": "Status"}],
        "rows": [{"cells": ["web-1", "Running"], "object": {"kind": "PartialObjectMetadata"}}]});
    let before = doc.clone();
    let counts = DocMasker {
        secrets: false,
        masker: None,
    }
    .mask(&mut doc);
    assert_eq!(doc, before);
    assert!(counts.is_empty());
}

#[test]
fn detectors_on_other_resources() {
    let mut doc =
        json!({"kind": "ConfigMap", "data": {"ADMIN": "ops.lead@example.com", "LEVEL": "info"}});
    let counts = DocMasker {
        secrets: false,
        masker: Some(masker()),
    }
    .mask(&mut doc);
    assert!(!doc.to_string().contains("ops.lead@example.com"));
    assert_eq!(doc["data"]["LEVEL"], "info");
    assert_eq!(counts.get("email"), 1);
}

#[test]
fn document_transformer() {
    let body = serde_json::to_vec(&secret()).unwrap();
    let mut t = DocumentTransformer::new(
        DocMasker {
            secrets: true,
            masker: None,
        },
        1 << 20,
    );
    let mut out = Vec::new();
    for chunk in body.chunks(7) {
        out.extend(t.push(chunk).unwrap());
    }
    assert!(
        out.is_empty(),
        "nothing leaves before the document is whole"
    );
    out.extend(t.finish().unwrap());
    let doc: Value = serde_json::from_slice(&out).unwrap();
    no_secret_left(&doc);
    assert_eq!(t.counts().get(COUNT_NAME), 4);

    let mut small = DocumentTransformer::new(
        DocMasker {
            secrets: true,
            masker: None,
        },
        16,
    );
    assert!(small.push(&body).is_err());
    let mut bad = DocumentTransformer::new(
        DocMasker {
            secrets: true,
            masker: None,
        },
        1 << 20,
    );
    bad.push(format!("not json {PASSWORD}").as_bytes()).unwrap();
    let err = bad.finish().unwrap_err();
    assert!(!err.reason.contains(PASSWORD));
}

#[test]
fn watch_events_masked_one_by_one() {
    let e1 = json!({"type": "ADDED", "object": secret()}).to_string();
    let e2 = json!({"type": "MODIFIED", "object": secret_table(secret())}).to_string();
    let stream = format!("{e1}\n{e2}\n");
    for split in [1, 5, e1.len(), e1.len() + 1, stream.len()] {
        let mut t = WatchTransformer::new(
            DocMasker {
                secrets: true,
                masker: None,
            },
            1 << 20,
        );
        let mut out = Vec::new();
        let (a, b) = stream.as_bytes().split_at(split.min(stream.len()));
        let first = t.push(a).unwrap();
        if split > e1.len() {
            // The first event is released as soon as its line is complete.
            assert!(!first.is_empty());
        }
        out.extend(first);
        out.extend(t.push(b).unwrap());
        out.extend(t.finish().unwrap());
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        for line in lines {
            no_secret_left(&serde_json::from_str(line).unwrap());
        }
    }
}

/// The API server ends each event with a newline, but the stream is read
/// as JSON values: events back to back, or the last one unterminated.
#[test]
fn watch_events_need_no_newline() {
    let e1 = json!({"type": "ADDED", "object": secret()}).to_string();
    let e2 = json!({"type": "DELETED", "object": secret()}).to_string();
    let stream = format!("{e1}{e2}");
    for split in 0..=stream.len() {
        let mut t = WatchTransformer::new(
            DocMasker {
                secrets: true,
                masker: None,
            },
            1 << 20,
        );
        let (a, b) = stream.as_bytes().split_at(split);
        let mut out = t.push(a).unwrap();
        out.extend(t.push(b).unwrap());
        out.extend(t.finish().unwrap());
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        for line in lines {
            no_secret_left(&serde_json::from_str(line).unwrap());
        }
    }
}

#[test]
fn watch_refuses_what_it_cannot_mask() {
    let mut t = WatchTransformer::new(
        DocMasker {
            secrets: true,
            masker: None,
        },
        64,
    );
    assert!(t.push(&[b'x'; 100]).is_err(), "an event over the cap");
    let mut t = WatchTransformer::new(
        DocMasker {
            secrets: true,
            masker: None,
        },
        1 << 20,
    );
    assert!(t.push(b"garbage\n").is_err());
    let mut t = WatchTransformer::new(
        DocMasker {
            secrets: true,
            masker: None,
        },
        1 << 20,
    );
    t.push(b"{\"type\":\"ADDED\",\"object\":{\"kind\":\"Secret\",\"data\":{\"a\":\"czNj\"}}}")
        .unwrap();
    let out = t.finish().unwrap();
    assert!(!String::from_utf8_lossy(&out).contains("czNj"));
}

#[test]
fn minted_tokens() {
    let mut doc = json!({"kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"name": "default"}, "spec": {"audiences": ["https://kubernetes.default.svc"]},
        "status": {"token": "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln", "expirationTimestamp": "2026-01-01T01:00:00Z"}});
    let counts = DocMasker {
        secrets: false,
        masker: None,
    }
    .mask(&mut doc);
    assert_eq!(doc["status"]["token"], PLACEHOLDER);
    assert_eq!(doc["status"]["expirationTimestamp"], "2026-01-01T01:00:00Z");
    assert_eq!(counts.get(COUNT_NAME), 1);
}

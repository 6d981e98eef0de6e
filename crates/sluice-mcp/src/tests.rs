use crate::http_tool::HttpCall;
use crate::pg::{error_text, to_json, type_name};
use crate::stdio::sse_events;
use crate::tools::split_tool_name;
use serde_json::json;

#[test]
fn tool_names_split_at_the_last_dot() {
    let table = [
        ("appdb.query", Some(("appdb", "query"))),
        ("eu.appdb.query", Some(("eu.appdb", "query"))),
        ("query", None),
        (".query", None),
        ("appdb.", None),
    ];
    for (name, want) in table {
        assert_eq!(split_tool_name(name), want, "{name}");
    }
}

#[test]
fn text_values_keep_their_json_type() {
    let table = [
        (23, "42", json!(42)),
        (20, "-9000000000", json!(-9_000_000_000i64)),
        (16, "t", json!(true)),
        (16, "f", json!(false)),
        (701, "1.5", json!(1.5)),
        (701, "NaN", json!("NaN")),
        (1700, "12.30", json!("12.30")),
        (3802, r#"{"a": [1]}"#, json!({"a": [1]})),
        (114, "not json", json!("not json")),
        (25, "****@example.com", json!("****@example.com")),
        // A masked value that no longer parses as its type stays a string.
        (23, "[masked]", json!("[masked]")),
    ];
    for (oid, text, want) in table {
        assert_eq!(to_json(oid, text), want, "{oid} {text}");
    }
    assert_eq!(type_name(1043), "varchar");
    assert_eq!(type_name(424242), "oid 424242");
}

#[test]
fn error_text_carries_the_hint() {
    let mut body = Vec::new();
    for (k, v) in [
        (b'S', "ERROR"),
        (b'C', "42501"),
        (b'M', "denied by rule \"no-ddl\""),
        (b'H', "ask a DBA"),
    ] {
        body.push(k);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    assert_eq!(
        error_text(&body),
        "denied by rule \"no-ddl\"\nHINT: ask a DBA\nSQLSTATE: 42501"
    );
    // Garbage never panics.
    let _ = error_text(b"M");
    let _ = error_text(b"");
}

#[test]
fn sse_events_are_split_and_joined() {
    let events = sse_events(
        b"event: message\ndata: {\"a\":1}\n\n: keep-alive\n\nid: 2\ndata: {\"b\":\ndata: 2}\n\ndata: partial"
            .to_vec(),
    );
    assert_eq!(
        events,
        vec!["{\"a\":1}".to_string(), "{\"b\":\n2}".to_string()]
    );
}

#[test]
fn http_calls_stay_below_their_connection() {
    let args = |v: serde_json::Value| v.as_object().unwrap().clone();
    let call = HttpCall::from_arguments(&args(json!({
        "method": "post",
        "path": "/v1/customers",
        "query": { "q": "a b&c", "limit": "2" },
        "body": { "name": "x" }
    })))
    .unwrap();
    assert_eq!(call.method, http::Method::POST);
    assert_eq!(call.path_and_query, "/v1/customers?limit=2&q=a%20b%26c");
    assert_eq!(call.body, br#"{"name":"x"}"#);
    assert!(call
        .headers
        .iter()
        .any(|(n, v)| n == "content-type" && v == "application/json"));
    for bad in [
        json!({ "path": "v1" }),
        json!({ "path": "/../other/x" }),
        json!({ "path": "/a/./b" }),
        json!({ "path": "/a/%2E%2E/b" }),
        json!({ "path": "/a%2fb" }),
        json!({ "path": "/a\\b" }),
        json!({ "path": "/a?x=1" }),
        json!({ "path": "/a", "headers": { "Authorization": "Bearer x" } }),
        json!({ "path": "/a", "headers": { "Host": "evil" } }),
        json!({ "path": "/a", "method": "GET POST" }),
        json!({ "path": "/a", "surprise": 1 }),
    ] {
        assert!(
            HttpCall::from_arguments(&args(bad.clone())).is_err(),
            "{bad}"
        );
    }
}

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

#[test]
fn kubernetes_tools_build_the_paths_kubectl_would() {
    use crate::kube_tool::{call, Verb};
    let args = |v: serde_json::Value| v.as_object().unwrap().clone();
    let table = [
        (
            Verb::Get,
            json!({ "resource": "pods", "name": "web-1" }),
            "GET",
            "/api/v1/namespaces/default/pods/web-1",
        ),
        (
            Verb::List,
            json!({ "resource": "deployments", "namespace": "shop", "label_selector": "app=web,tier in (a b)" }),
            "GET",
            "/apis/apps/v1/namespaces/shop/deployments?labelSelector=app%3Dweb%2Ctier%20in%20%28a%20b%29",
        ),
        (
            Verb::List,
            json!({ "resource": "nodes" }),
            "GET",
            "/api/v1/nodes",
        ),
        (
            Verb::Logs,
            json!({ "name": "web-1", "container": "app", "tail_lines": 50 }),
            "GET",
            "/api/v1/namespaces/default/pods/web-1/log?container=app&tailLines=50",
        ),
        (
            Verb::Delete,
            json!({ "resource": "widgets", "name": "w", "api_version": "example.com/v1" }),
            "DELETE",
            "/apis/example.com/v1/namespaces/default/widgets/w",
        ),
        (
            Verb::Apply,
            json!({ "resource": "configmaps", "manifest": {
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": { "name": "cfg", "namespace": "shop" }, "data": { "a": "b" } } }),
            "PATCH",
            "/api/v1/namespaces/shop/configmaps/cfg?fieldManager=sluice-mcp",
        ),
    ];
    for (verb, a, method, path) in table {
        let c = call(verb, &args(a.clone())).unwrap_or_else(|e| panic!("{a}: {e}"));
        assert_eq!(c.method.as_str(), method, "{a}");
        assert_eq!(c.path_and_query, path, "{a}");
    }
    for (verb, bad) in [
        (
            Verb::Get,
            json!({ "resource": "pods", "name": "../secrets/x" }),
        ),
        (Verb::Get, json!({ "resource": "pods", "name": ".." })),
        (Verb::Get, json!({ "resource": "pods/exec", "name": "x" })),
        (
            Verb::Get,
            json!({ "resource": "pods", "name": "x", "namespace": "a/b" }),
        ),
        (Verb::Get, json!({ "resource": "widgets", "name": "x" })),
        (Verb::List, json!({ "resource": "pods", "name": "x" })),
        (Verb::Apply, json!({ "resource": "configmaps" })),
        (
            Verb::Apply,
            json!({ "resource": "configmaps", "manifest": { "kind": "ConfigMap" } }),
        ),
    ] {
        assert!(call(verb, &args(bad.clone())).is_err(), "{bad}");
    }
}

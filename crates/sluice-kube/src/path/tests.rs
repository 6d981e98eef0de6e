use super::*;

/// `(method, target, expected)` where expected is
/// `verb scope resource_key ns=… name=…` or `ERR`.
fn show(r: &Result<ApiRequest, PathError>) -> String {
    match r {
        Err(_) => "ERR".into(),
        Ok(r) => {
            let scope = match r.scope {
                Scope::Resource => "res",
                Scope::Discovery => "disc",
                Scope::NonResource => "nonres",
            };
            let mut s = format!("{} {scope}", r.verb);
            match r.scope {
                Scope::Resource => s.push_str(&format!(" {}", r.resource_key())),
                _ => s.push_str(&format!(" {}", r.path)),
            }
            if !r.version.is_empty() {
                s.push_str(&format!(" v={}", r.version));
            }
            if r.scope == Scope::Discovery && !r.group.is_empty() {
                s.push_str(&format!(" g={}", r.group));
            }
            if let Some(ns) = &r.namespace {
                s.push_str(&format!(" ns={ns}"));
            }
            if let Some(n) = &r.name {
                s.push_str(&format!(" name={n}"));
            }
            s
        }
    }
}

#[test]
fn table() {
    let cases: &[(&str, &str, &str)] = &[
        // Discovery and non-resource paths.
        ("GET", "/api", "get disc /api"),
        ("GET", "/api/", "get disc /api"),
        ("GET", "/api/v1", "get disc /api/v1 v=v1"),
        ("GET", "/apis", "get disc /apis"),
        ("GET", "/apis/apps", "get disc /apis/apps g=apps"),
        ("GET", "/apis/apps/v1", "get disc /apis/apps/v1 v=v1 g=apps"),
        ("GET", "/version", "get nonres /version"),
        ("GET", "/version?timeout=32s", "get nonres /version"),
        ("GET", "/openapi/v2", "get nonres /openapi/v2"),
        (
            "GET",
            "/openapi/v3/apis/apps/v1",
            "get nonres /openapi/v3/apis/apps/v1",
        ),
        ("GET", "/healthz", "get nonres /healthz"),
        ("GET", "/", "get nonres /"),
        ("POST", "/version", "create nonres /version"),
        // Core group, namespaced.
        (
            "GET",
            "/api/v1/namespaces/default/pods",
            "list res pods v=v1 ns=default",
        ),
        (
            "GET",
            "/api/v1/namespaces/default/pods?limit=500",
            "list res pods v=v1 ns=default",
        ),
        (
            "GET",
            "/api/v1/namespaces/default/pods/web-1",
            "get res pods v=v1 ns=default name=web-1",
        ),
        (
            "HEAD",
            "/api/v1/namespaces/default/pods/web-1",
            "get res pods v=v1 ns=default name=web-1",
        ),
        (
            "GET",
            "/api/v1/namespaces/default/pods/",
            "list res pods v=v1 ns=default",
        ),
        (
            "GET",
            "/api/v1/namespaces/default/secrets/db",
            "get res secrets v=v1 ns=default name=db",
        ),
        (
            "POST",
            "/api/v1/namespaces/default/pods",
            "create res pods v=v1 ns=default",
        ),
        (
            "PUT",
            "/api/v1/namespaces/default/pods/web-1",
            "update res pods v=v1 ns=default name=web-1",
        ),
        (
            "PATCH",
            "/api/v1/namespaces/default/pods/web-1",
            "patch res pods v=v1 ns=default name=web-1",
        ),
        (
            "DELETE",
            "/api/v1/namespaces/default/pods/web-1",
            "delete res pods v=v1 ns=default name=web-1",
        ),
        (
            "DELETE",
            "/api/v1/namespaces/default/pods",
            "deletecollection res pods v=v1 ns=default",
        ),
        (
            "DELETE",
            "/api/v1/namespaces/default/pods?labelSelector=app%3Dweb",
            "deletecollection res pods v=v1 ns=default",
        ),
        // Watch: query forms and the legacy prefix.
        (
            "GET",
            "/api/v1/namespaces/default/pods?watch=true",
            "watch res pods v=v1 ns=default",
        ),
        (
            "GET",
            "/api/v1/namespaces/default/pods?watch=1",
            "watch res pods v=v1 ns=default",
        ),
        (
            "GET",
            "/api/v1/namespaces/default/pods?watch=True&resourceVersion=5",
            "watch res pods v=v1 ns=default",
        ),
        (
            "GET",
            "/api/v1/namespaces/default/pods?watch=false",
            "list res pods v=v1 ns=default",
        ),
        (
            "GET",
            "/api/v1/namespaces/default/pods?watch=0",
            "list res pods v=v1 ns=default",
        ),
        (
            "GET",
            "/api/v1/namespaces/default/pods?watch=false&watch=true",
            "list res pods v=v1 ns=default",
        ),
        (
            "GET",
            "/api/v1/namespaces/default/pods?Watch=true",
            "list res pods v=v1 ns=default",
        ),
        (
            "GET",
            "/api/v1/namespaces/default/pods?wat%63h=1",
            "watch res pods v=v1 ns=default",
        ),
        (
            "GET",
            "/api/v1/namespaces/default/pods?watch=true;x=1",
            "list res pods v=v1 ns=default",
        ),
        (
            "GET",
            "/api/v1/namespaces/default/pods/web?watch=true",
            "watch res pods v=v1 ns=default name=web",
        ),
        (
            "GET",
            "/api/v1/watch/namespaces/default/pods",
            "watch res pods v=v1 ns=default",
        ),
        (
            "GET",
            "/api/v1/watch/namespaces/default/pods/web",
            "watch res pods v=v1 ns=default name=web",
        ),
        ("GET", "/api/v1/watch/secrets", "watch res secrets v=v1"),
        (
            "GET",
            "/apis/apps/v1/watch/namespaces/prod/deployments",
            "watch res deployments.apps v=v1 ns=prod",
        ),
        // Cluster-wide and cluster-scoped.
        ("GET", "/api/v1/secrets", "list res secrets v=v1"),
        (
            "GET",
            "/api/v1/nodes/node-1",
            "get res nodes v=v1 name=node-1",
        ),
        ("GET", "/api/v1/namespaces", "list res namespaces v=v1"),
        (
            "GET",
            "/api/v1/namespaces/prod",
            "get res namespaces v=v1 ns=prod name=prod",
        ),
        (
            "DELETE",
            "/api/v1/namespaces/prod",
            "delete res namespaces v=v1 ns=prod name=prod",
        ),
        (
            "PUT",
            "/api/v1/namespaces/prod/finalize",
            "update res namespaces/finalize v=v1 ns=prod name=prod",
        ),
        (
            "GET",
            "/api/v1/namespaces/prod/status",
            "get res namespaces/status v=v1 ns=prod name=prod",
        ),
        (
            "GET",
            "/apis/rbac.authorization.k8s.io/v1/clusterroles/admin",
            "get res clusterroles.rbac.authorization.k8s.io v=v1 name=admin",
        ),
        // Named groups.
        (
            "GET",
            "/apis/apps/v1/namespaces/prod/deployments",
            "list res deployments.apps v=v1 ns=prod",
        ),
        (
            "PATCH",
            "/apis/apps/v1/namespaces/prod/deployments/web/scale",
            "patch res deployments.apps/scale v=v1 ns=prod name=web",
        ),
        (
            "PUT",
            "/apis/apps/v1/namespaces/prod/deployments/web/status",
            "update res deployments.apps/status v=v1 ns=prod name=web",
        ),
        (
            "DELETE",
            "/apis/batch/v1/namespaces/prod/jobs",
            "deletecollection res jobs.batch v=v1 ns=prod",
        ),
        // Subresources and connect verbs.
        (
            "GET",
            "/api/v1/namespaces/default/pods/web/exec?command=ls&stdout=true",
            "exec res pods/exec v=v1 ns=default name=web",
        ),
        (
            "POST",
            "/api/v1/namespaces/default/pods/web/exec?command=ls",
            "exec res pods/exec v=v1 ns=default name=web",
        ),
        (
            "GET",
            "/api/v1/namespaces/default/pods/web/attach",
            "attach res pods/attach v=v1 ns=default name=web",
        ),
        (
            "GET",
            "/api/v1/namespaces/default/pods/web/portforward?ports=80",
            "portforward res pods/portforward v=v1 ns=default name=web",
        ),
        (
            "GET",
            "/api/v1/namespaces/default/pods/web/log?container=app",
            "log res pods/log v=v1 ns=default name=web",
        ),
        (
            "GET",
            "/api/v1/namespaces/default/pods/web/proxy/metrics",
            "proxy res pods/proxy v=v1 ns=default name=web",
        ),
        (
            "GET",
            "/api/v1/namespaces/default/services/web:80/proxy/",
            "proxy res services/proxy v=v1 ns=default name=web:80",
        ),
        (
            "GET",
            "/api/v1/proxy/namespaces/default/services/web/path",
            "proxy res services v=v1 ns=default name=web",
        ),
        (
            "POST",
            "/api/v1/namespaces/default/pods/web/eviction",
            "create res pods/eviction v=v1 ns=default name=web",
        ),
        (
            "POST",
            "/api/v1/namespaces/default/serviceaccounts/sa/token",
            "create res serviceaccounts/token v=v1 ns=default name=sa",
        ),
        (
            "GET",
            "/api/v1/namespaces/default/pods/web/ephemeralcontainers",
            "get res pods/ephemeralcontainers v=v1 ns=default name=web",
        ),
        // Path tricks: refused, or read exactly as the upstream reads them.
        ("GET", "/api/v1/namespaces/default/pods/../secrets", "ERR"),
        ("GET", "/api/v1/namespaces/default/pods/./web", "ERR"),
        (
            "GET",
            "/api/v1/namespaces/default/pods/%2e%2e/secrets",
            "ERR",
        ),
        ("GET", "/api/v1/namespaces/default/pods/%2E/x", "ERR"),
        ("GET", "/api/v1/namespaces/default%2Fsecrets", "ERR"),
        ("GET", "/api/v1/namespaces/default/pods%2fweb", "ERR"),
        ("GET", "/api/v1/namespaces/default/pods%5Cweb", "ERR"),
        ("GET", "/api/v1/namespaces/default/pods/web%00", "ERR"),
        ("GET", "/api/v1//namespaces/default/pods", "ERR"),
        ("GET", "//api/v1/namespaces/default/pods", "ERR"),
        ("GET", "/api/v1/namespaces/default/pods//", "ERR"),
        ("GET", "/api/v1/namespaces/default/pods/%zz", "ERR"),
        ("GET", "/api/v1/namespaces/default/pods/%", "ERR"),
        ("GET", "/api/v1/namespaces/default/pods/%ff", "ERR"),
        ("GET", "api/v1/pods", "ERR"),
        ("GET", "", "ERR"),
        ("OPTIONS", "/api/v1/pods", "ERR"),
        ("get", "/api/v1/pods", "ERR"),
        ("CONNECT", "/api/v1/pods", "ERR"),
        (
            "GET",
            "/api/v1/namespaces/def%61ult/secr%65ts/db",
            "get res secrets v=v1 ns=default name=db",
        ),
        (
            "GET",
            "/API/v1/namespaces/default/secrets",
            "get nonres /API/v1/namespaces/default/secrets",
        ),
        (
            "GET",
            "/api/v1/namespaces/default/Secrets",
            "list res Secrets v=v1 ns=default",
        ),
        ("GET", "/apis/apps", "get disc /apis/apps g=apps"),
        (
            "GET",
            "/api/v1/namespaces/default",
            "get res namespaces v=v1 ns=default name=default",
        ),
        ("GET", "/api/v1/watch", "list res watch v=v1"),
        (
            "GET",
            "/api/v1/namespaces/a%20b/pods",
            "list res pods v=v1 ns=a b",
        ),
        (
            "GET",
            "/api/v1/namespaces/default/pods/web+1",
            "get res pods v=v1 ns=default name=web+1",
        ),
    ];
    assert!(cases.len() >= 60, "{} cases", cases.len());
    for (method, target, expected) in cases {
        let got = show(&parse(method, target));
        assert_eq!(&got, expected, "{method} {target}");
    }
}

#[test]
fn secrets_and_keys() {
    let r = parse("GET", "/api/v1/namespaces/default/Secrets/x").unwrap();
    assert!(r.is_secrets());
    let r = parse("GET", "/apis/example.com/v1/namespaces/default/secrets/x").unwrap();
    assert!(!r.is_secrets());
    assert_eq!(r.resource_key(), "secrets.example.com");
    let r = parse("DELETE", "/api/v1/namespaces/default/pods/web").unwrap();
    assert_eq!(r.describe(), "delete pods/web -n default");
    let r = parse("GET", "/api/v1/secrets").unwrap();
    assert_eq!(r.describe(), "list secrets (cluster-wide)");
    let r = parse("PATCH", "/apis/apps/v1/namespaces/p/deployments/w/scale").unwrap();
    assert_eq!(r.describe(), "patch deployments.apps/w/scale -n p");
}

#[test]
fn query() {
    assert_eq!(
        query_values(
            "command=sh&command=-c&command=echo+hi%21&stdout=true",
            "command"
        ),
        vec!["sh", "-c", "echo hi!"]
    );
    assert_eq!(
        query_values("command=%zz&command=ok", "command"),
        vec!["ok"]
    );
    assert!(query_values("", "command").is_empty());
    assert!(query_flag("watch=", "watch"));
    assert!(query_flag("watch", "watch"));
    assert!(!query_flag("watch=FALSE", "watch"));
}

/// Arbitrary bytes never panic the parser.
#[test]
fn no_panics_on_noise() {
    let alphabet = [
        "/",
        "%",
        "2",
        "f",
        "F",
        "e",
        ".",
        "?",
        "&",
        "=",
        "api",
        "apis",
        "v1",
        "namespaces",
        "watch",
        "proxy",
        "pods",
        "x",
        "é",
        "%c3",
        "%a9",
        ";",
        "+",
        "\0",
    ];
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..20_000 {
        let mut s = String::new();
        for _ in 0..(seed % 14) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            s.push_str(alphabet[(seed % alphabet.len() as u64) as usize]);
        }
        for m in ["GET", "DELETE", "POST", "X"] {
            let _ = parse(m, &s);
        }
        let _ = query_values(&s, "command");
    }
}

/// Percent-encoding any characters of a path never changes what it is.
#[test]
fn encoding_does_not_change_the_request() {
    let paths = [
        "/api/v1/namespaces/prod/secrets/db",
        "/apis/apps/v1/namespaces/prod/deployments/web/scale",
        "/api/v1/watch/namespaces/kube-system/pods",
        "/api/v1/namespaces/prod/pods/web-1/exec",
        "/api/v1/nodes/node-1",
    ];
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    for path in paths {
        let plain = parse("GET", path).unwrap();
        for _ in 0..500 {
            let mut encoded = String::new();
            for c in path.chars() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                if c != '/' && seed.is_multiple_of(3) {
                    encoded.push_str(&format!("%{:02X}", c as u32));
                } else {
                    encoded.push(c);
                }
            }
            let got = parse("GET", &encoded).unwrap();
            assert_eq!(got.verb, plain.verb, "{encoded}");
            assert_eq!(got.resource_key(), plain.resource_key(), "{encoded}");
            assert_eq!(got.namespace, plain.namespace, "{encoded}");
            assert_eq!(got.name, plain.name, "{encoded}");
        }
    }
}

#[test]
fn describe_request_for_the_console() {
    let d = describe_request("DELETE /api/v1/namespaces/prod/pods/web-1").unwrap();
    assert_eq!(d["kube"]["verb"], "delete");
    assert_eq!(d["kube"]["resource"], "pods");
    assert_eq!(d["kube"]["namespace"], "prod");
    assert_eq!(d["kube"]["name"], "web-1");
    assert_eq!(d["kube"]["description"], "delete pods/web-1 -n prod");
    assert!(describe_request("no-space").is_none());
}

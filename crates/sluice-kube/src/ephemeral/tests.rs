use super::*;
use crate::flavor::KubeFlavor;
use crate::policy::kube_match_key;
use http::{HeaderMap, Method};
use sluice_core::config::ConnectionConfig;
use sluice_core::pipeline::policy::Scratch;
use sluice_core::toml;
use sluice_http::{Flavor, Problem, RequestBody, RequestHead};

const DEBUG: &str = "/api/v1/namespaces/kube-system/pods/coredns-x/ephemeralcontainers";

fn commands(method: &str, path: &str, body: Option<&str>) -> Result<Vec<Command>, Problem> {
    let conn: ConnectionConfig = toml::from_str(
        "name = \"k8s\"\nkind = \"kubernetes\"\nupstream = \"https://127.0.0.1:6443\"\n",
    )
    .unwrap();
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    let headers = HeaderMap::new();
    let head = RequestHead::new(&method, path, None, &headers, &conn);
    KubeFlavor::default()
        .commands_with_body(&head, body.map(|b| RequestBody::new(b.as_bytes(), true)))
}

fn hits(rule: &str, command: &Command) -> bool {
    let table: toml::Table = toml::from_str(&format!("kube = {rule}")).unwrap();
    kube_match_key()
        .compile(&table)
        .unwrap()
        .matches(command, &mut Scratch::default())
        .unwrap()
}

/// What kubectl 1.2x sends for
/// `kubectl debug -n kube-system coredns-x --image=busybox --target=coredns -- sh -c 'cat /proc/1/environ'`.
const KUBECTL_DEBUG: &str = r#"{"spec":{"ephemeralContainers":[{"name":"debugger-abcde","image":"busybox","command":["sh","-c","cat /proc/1/environ"],"resources":{},"terminationMessagePolicy":"File","imagePullPolicy":"Always","stdin":true,"tty":true,"targetContainerName":"coredns"}]}}"#;

#[test]
fn kubectl_debug_is_judged_as_an_exec_of_its_command() {
    for method in ["PATCH", "PUT", "POST"] {
        let got = commands(method, DEBUG, Some(KUBECTL_DEBUG)).unwrap();
        assert_eq!(got.len(), 2, "{method}: {got:?}");
        // The API request itself, as before.
        assert!(matches!(got[0].kind, CommandKind::KubeRequest { .. }));
        assert!(hits(
            r#"{ resources = ["pods/ephemeralcontainers"] }"#,
            &got[0]
        ));
        // And the exec of what the container runs.
        let exec = &got[1];
        assert_eq!(exec.kind, CommandKind::Exec);
        assert_eq!(exec.text, "sh -c 'cat /proc/1/environ'");
        assert!(
            exec.context.iter().any(|c| c.contains("coredns")),
            "{exec:?}"
        );
        for rule in [
            r#"{ verbs = ["exec", "attach"], namespaces = ["kube-system"] }"#,
            r#"{ resources = ["pods/exec"] }"#,
            r#"{ verbs = ["exec"], names = ["coredns-*"], commands = ["sh *"] }"#,
            r#"{ commands = ["*/proc/*"] }"#,
        ] {
            assert!(hits(rule, exec), "{method} {rule}");
        }
        assert!(!hits(r#"{ commands = ["ls *"] }"#, exec));
        assert!(!hits(
            r#"{ verbs = ["exec"], namespaces = ["default"] }"#,
            exec
        ));
    }
}

#[test]
fn every_shape_of_the_body_is_read() {
    let container = r#"{"name":"d","image":"busybox","command":["sh"],"args":["-c","id"]}"#;
    for body in [
        // Merge, strategic-merge and apply patches; a Pod (PUT).
        format!(r#"{{"spec":{{"ephemeralContainers":[{container}]}}}}"#),
        format!(
            r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"coredns-x"}},"spec":{{"containers":[{{"name":"c","image":"x","command":["ls"]}}],"ephemeralContainers":[{container}]}}}}"#
        ),
        // The pre-1.22 EphemeralContainers kind.
        format!(r#"{{"kind":"EphemeralContainers","ephemeralContainers":[{container}]}}"#),
        // JSON patches (kubectl's legacy fallback, and other paths).
        format!(r#"[{{"op":"add","path":"/ephemeralContainers/-","value":{container}}}]"#),
        format!(r#"[{{"op":"add","path":"/spec/ephemeralContainers/-","value":{container}}}]"#),
        format!(
            r#"[{{"op":"test","path":"/metadata/name","value":"x"}},{{"op":"add","path":"/spec/ephemeralContainers/0","value":{container}}}]"#
        ),
        format!(r#"[{{"op":"replace","path":"/spec/ephemeralContainers","value":[{container}]}}]"#),
        format!(
            r#"[{{"op":"add","path":"/spec","value":{{"ephemeralContainers":[{container}]}}}}]"#
        ),
    ] {
        let got = commands("PATCH", DEBUG, Some(&body)).unwrap_or_else(|e| panic!("{body}: {e:?}"));
        assert_eq!(got.len(), 2, "{body}");
        assert_eq!(got[1].text, "sh -c id", "{body}");
    }
    // Two new containers: two execs, each judged.
    let two = r#"{"spec":{"ephemeralContainers":[{"name":"a","command":["ls"]},{"name":"b","command":["sh"]}]}}"#;
    let got = commands("PATCH", DEBUG, Some(two)).unwrap();
    let texts: Vec<_> = got[1..].iter().map(|c| c.text.as_str()).collect();
    assert_eq!(texts, ["ls", "sh"]);
}

#[test]
fn what_cannot_be_judged_is_refused() {
    for body in [
        None,
        Some("spec:\n  ephemeralContainers:\n  - name: d\n    command: [sh]\n"),
        Some("not json"),
        Some("{}"),
        Some(r#"{"spec":{}}"#),
        Some("42"),
        // The image's entrypoint would run.
        Some(r#"{"spec":{"ephemeralContainers":[{"name":"d","image":"busybox"}]}}"#),
        Some(r#"{"spec":{"ephemeralContainers":[{"name":"d","args":["sh"]}]}}"#),
        // A case-insensitive decoder would read these keys.
        Some(
            r#"{"spec":{"ephemeralContainers":[{"name":"d","command":["ls"],"Command":["sh"]}]}}"#,
        ),
        Some(r#"{"spec":{"ephemeralContainers":[{"name":"d","COMMAND":["sh"]}]}}"#),
        Some(r#"{"spec":{"EphemeralContainers":[{"name":"d","command":["sh"]}]}}"#),
        // JSON patch operations that are not whole containers.
        Some(r#"[{"op":"add","path":"/spec/ephemeralContainers/0/command","value":["sh"]}]"#),
        Some(r#"[{"op":"copy","from":"/spec/containers/0","path":"/spec/ephemeralContainers/-"}]"#),
        Some(r#"[{"op":"move","from":"/spec/containers/0","path":"/spec/ephemeralContainers/-"}]"#),
        Some(r#"[{"op":"remove","path":"/spec/ephemeralContainers/0"}]"#),
        // Values the kubelet would put into the command, unseen here.
        Some(
            r#"{"spec":{"ephemeralContainers":[{"name":"d","command":["$(SHELL)"],"env":[{"name":"SHELL","valueFrom":{"configMapKeyRef":{"name":"c","key":"k"}}}]}]}}"#,
        ),
        Some(
            r#"{"spec":{"ephemeralContainers":[{"name":"d","command":["$(X)"],"envFrom":[{"configMapRef":{"name":"c"}}]}]}}"#,
        ),
        Some(
            r#"{"spec":{"ephemeralContainers":[{"name":"d","command":["ls","$(WEB_SERVICE_HOST)"]}]}}"#,
        ),
        Some(r#"{"spec":{"ephemeralContainers":[{"name":"d","command":"sh"}]}}"#),
    ] {
        let err = commands("PATCH", DEBUG, body).expect_err(&format!("{body:?}"));
        assert!(err.detail.contains("judged as an exec"), "{}", err.detail);
    }
    // Too large to have been read whole.
    let conn: ConnectionConfig = toml::from_str(
        "name = \"k8s\"\nkind = \"kubernetes\"\nupstream = \"https://127.0.0.1:6443\"\n",
    )
    .unwrap();
    let headers = HeaderMap::new();
    let head = RequestHead::new(&Method::PATCH, DEBUG, None, &headers, &conn);
    assert!(KubeFlavor::default()
        .commands_with_body(
            &head,
            Some(RequestBody::new(KUBECTL_DEBUG.as_bytes(), false))
        )
        .is_err());
}

#[test]
fn commands_are_expanded_as_the_kubelet_expands_them() {
    let run = |command: &str, env: &str| -> Result<String, String> {
        let body = format!(
            r#"{{"spec":{{"ephemeralContainers":[{{"name":"d","command":{command},"env":{env}}}]}}}}"#
        );
        commands("PATCH", DEBUG, Some(&body))
            .map(|c| c[1].text.clone())
            .map_err(|e| e.detail.clone())
    };
    let env = r#"[{"name":"A","value":"sh"},{"name":"B","value":"$(A) -c"}]"#;
    assert_eq!(run(r#"["$(A)","-c","id"]"#, env).unwrap(), "sh -c id");
    assert_eq!(run(r#"["$(B)"]"#, env).unwrap(), "'sh -c'");
    // `$$` is `$`; undefined names and shell substitutions are kept.
    assert_eq!(run(r#"["echo","$$(A)"]"#, env).unwrap(), "echo '$(A)'");
    assert_eq!(
        run(r#"["sh","-c","echo $(date) $HOME $"]"#, "[]").unwrap(),
        "sh -c 'echo $(date) $HOME $'"
    );
    assert_eq!(run(r#"["echo","$$HOME"]"#, "[]").unwrap(), "echo '$HOME'");
}

#[test]
fn other_requests_are_as_before() {
    // Reads of the subresource, and ordinary pod patches, are not execs.
    let got = commands("GET", DEBUG, None).unwrap();
    assert_eq!(got.len(), 1);
    assert!(matches!(got[0].kind, CommandKind::KubeRequest { .. }));
    let got = commands(
        "PATCH",
        "/api/v1/namespaces/default/pods/web",
        Some(r#"{"metadata":{"labels":{"a":"b"}},"spec":{"ephemeralContainers":[{"name":"d","command":["sh"]}]}}"#),
    )
    .unwrap();
    assert_eq!(got.len(), 1);
    assert!(!hits(r#"{ verbs = ["exec"] }"#, &got[0]));
    let got = commands("GET", "/api/v1/namespaces/default/pods/web", None).unwrap();
    assert_eq!(got.len(), 1);
    // Other resources' ephemeralcontainers are not pods'.
    let got = commands(
        "PATCH",
        "/apis/example.com/v1/namespaces/default/pods/web/ephemeralcontainers",
        Some("{}"),
    )
    .unwrap();
    assert_eq!(got.len(), 1);
}

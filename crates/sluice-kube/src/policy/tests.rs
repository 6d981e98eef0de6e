use super::*;

fn matcher(rule: &str) -> Box<dyn CommandMatcher> {
    let table: toml::Table = toml::from_str(&format!("kube = {rule}")).unwrap();
    kube_match_key().compile(&table).unwrap()
}

fn hit(rule: &str, method: &str, target: &str) -> bool {
    let req = parse(method, target).unwrap();
    let cmd = request_command(method, target, &req);
    matcher(rule)
        .matches(&cmd, &mut Scratch::default())
        .unwrap()
}

#[test]
fn table() {
    let ns = "/api/v1/namespaces";
    for (rule, method, target, expected) in [
        (
            r#"{ verbs = ["delete"] }"#,
            "DELETE",
            format!("{ns}/default/pods/web"),
            true,
        ),
        (
            r#"{ verbs = ["delete"] }"#,
            "DELETE",
            format!("{ns}/default/pods"),
            false,
        ),
        (
            r#"{ verbs = ["deletecollection"] }"#,
            "DELETE",
            format!("{ns}/default/pods"),
            true,
        ),
        (
            r#"{ verbs = ["DELETE"] }"#,
            "DELETE",
            format!("{ns}/default/pods/web"),
            true,
        ),
        (r#"{ verbs = ["*"] }"#, "GET", "/version".to_string(), true),
        (
            r#"{ verbs = ["watch"] }"#,
            "GET",
            format!("{ns}/default/pods?watch=1"),
            true,
        ),
        (
            r#"{ verbs = ["watch"] }"#,
            "GET",
            "/api/v1/watch/secrets".to_string(),
            true,
        ),
        (
            r#"{ resources = ["secrets"] }"#,
            "GET",
            format!("{ns}/default/secrets/db"),
            true,
        ),
        (
            r#"{ resources = ["secrets"] }"#,
            "GET",
            format!("{ns}/default/Secrets/db"),
            true,
        ),
        (
            r#"{ resources = ["secrets"] }"#,
            "GET",
            "/api/v1/secrets".to_string(),
            true,
        ),
        (
            r#"{ resources = ["secrets.core"] }"#,
            "GET",
            "/api/v1/secrets".to_string(),
            true,
        ),
        (
            r#"{ resources = ["secrets.core"] }"#,
            "GET",
            "/apis/x.io/v1/secrets".to_string(),
            false,
        ),
        (
            r#"{ resources = ["secrets"] }"#,
            "GET",
            "/apis/x.io/v1/secrets".to_string(),
            true,
        ),
        (
            r#"{ resources = ["pods"] }"#,
            "GET",
            format!("{ns}/default/pods/web/exec?command=ls"),
            false,
        ),
        (
            r#"{ resources = ["pods/exec"] }"#,
            "GET",
            format!("{ns}/default/pods/web/exec?command=ls"),
            true,
        ),
        (
            r#"{ resources = ["pods/*"] }"#,
            "GET",
            format!("{ns}/default/pods/web/log"),
            true,
        ),
        (
            r#"{ resources = ["*/exec"] }"#,
            "POST",
            format!("{ns}/default/pods/web/exec"),
            true,
        ),
        (
            r#"{ resources = ["*"] }"#,
            "POST",
            format!("{ns}/default/pods/web/exec"),
            true,
        ),
        (
            r#"{ resources = ["*"] }"#,
            "GET",
            "/version".to_string(),
            false,
        ),
        (
            r#"{ resources = ["deployments.apps"] }"#,
            "PATCH",
            "/apis/apps/v1/namespaces/p/deployments/w".to_string(),
            true,
        ),
        (
            r#"{ resources = ["deployments.apps"] }"#,
            "PATCH",
            "/apis/apps/v1/namespaces/p/deployments/w/scale".to_string(),
            false,
        ),
        (
            r#"{ resources = ["deployments.apps/scale"] }"#,
            "PATCH",
            "/apis/apps/v1/namespaces/p/deployments/w/scale".to_string(),
            true,
        ),
        (
            r#"{ resources = ["deployments.apps"] }"#,
            "PATCH",
            "/apis/extensions/v1beta1/namespaces/p/deployments/w".to_string(),
            false,
        ),
        (
            r#"{ resources = ["*.rbac.authorization.k8s.io"] }"#,
            "POST",
            "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings".to_string(),
            true,
        ),
        (
            r#"{ namespaces = ["prod"] }"#,
            "GET",
            format!("{ns}/prod/pods"),
            true,
        ),
        (
            r#"{ namespaces = ["prod"] }"#,
            "GET",
            format!("{ns}/PROD/pods"),
            true,
        ),
        (
            r#"{ namespaces = ["prod-*"] }"#,
            "GET",
            format!("{ns}/prod-eu/pods"),
            true,
        ),
        (
            r#"{ namespaces = ["prod"] }"#,
            "GET",
            format!("{ns}/dev/pods"),
            false,
        ),
        // Across all namespaces: only `*` (a rule for `dev` does not grant it).
        (
            r#"{ namespaces = ["dev"] }"#,
            "GET",
            "/api/v1/secrets".to_string(),
            false,
        ),
        (
            r#"{ namespaces = ["*"] }"#,
            "GET",
            "/api/v1/secrets".to_string(),
            true,
        ),
        (
            r#"{ namespaces = [""] }"#,
            "GET",
            "/api/v1/nodes".to_string(),
            true,
        ),
        (
            r#"{ names = ["web-*"] }"#,
            "DELETE",
            format!("{ns}/default/pods/web-1"),
            true,
        ),
        (
            r#"{ names = ["web-*"] }"#,
            "DELETE",
            format!("{ns}/default/pods"),
            false,
        ),
        (
            r#"{ verbs = ["delete"], resources = ["pods"], namespaces = ["prod"] }"#,
            "DELETE",
            format!("{ns}/prod/pods/x"),
            true,
        ),
        (
            r#"{ verbs = ["delete"], resources = ["pods"], namespaces = ["prod"] }"#,
            "DELETE",
            format!("{ns}/dev/pods/x"),
            false,
        ),
        (
            r#"{ verbs = ["get"], resources = ["pods"] }"#,
            "GET",
            format!("{ns}/default/pods/x/log"),
            false,
        ),
        (
            r#"{ verbs = ["log"] }"#,
            "GET",
            format!("{ns}/default/pods/x/log"),
            true,
        ),
    ] {
        assert_eq!(
            hit(rule, method, &target),
            expected,
            "{rule} {method} {target}"
        );
    }
}

#[test]
fn exec_command_carries_its_request() {
    let m = matcher(r#"{ verbs = ["exec"], namespaces = ["prod"] }"#);
    let cmd = Command {
        kind: CommandKind::Exec,
        text: "ls -la".into(),
        context: vec![format!(
            "{CONTEXT_PREFIX}GET /api/v1/namespaces/prod/pods/web/exec?command=ls"
        )],
    };
    assert!(m.matches(&cmd, &mut Scratch::default()).unwrap());
    let rm = matcher(r#"{ commands = ["rm *"], namespaces = ["prod"] }"#);
    let cmd_rm = Command {
        text: "rm -rf /tmp".into(),
        ..cmd.clone()
    };
    assert!(rm.matches(&cmd_rm, &mut Scratch::default()).unwrap());
    assert!(!rm.matches(&cmd, &mut Scratch::default()).unwrap());
    let req = parse("DELETE", "/api/v1/namespaces/prod/pods/x").unwrap();
    let delete = request_command("DELETE", "/api/v1/namespaces/prod/pods/x", &req);
    assert!(!rm.matches(&delete, &mut Scratch::default()).unwrap());
    let plain = Command {
        kind: CommandKind::Exec,
        text: "ls".into(),
        context: vec![],
    };
    assert!(!m.matches(&plain, &mut Scratch::default()).unwrap());
    let sql = Command {
        kind: CommandKind::SqlSimple,
        text: "select 1".into(),
        context: vec![],
    };
    assert!(!m.matches(&sql, &mut Scratch::default()).unwrap());
}

#[test]
fn unparseable_requests_fail_closed() {
    let m = matcher(r#"{ verbs = ["get"] }"#);
    let cmd = Command {
        kind: CommandKind::KubeRequest {
            method: "GET".into(),
            path: "/api/v1/namespaces/a/pods/../secrets".into(),
            verb: "get".into(),
            resource: "pods".into(),
            namespace: None,
            name: None,
        },
        text: String::new(),
        context: vec![],
    };
    assert!(m.matches(&cmd, &mut Scratch::default()).is_err());
}

#[test]
fn config_errors() {
    for (rule, needle) in [
        ("{ verbs = [\"destroy\"] }", "unknown verb"),
        ("{ verbz = [\"get\"] }", "unknown key"),
        ("{ }", "at least one"),
        ("{ verbs = [] }", "empty list"),
        ("{ verbs = [1] }", "list of strings"),
        ("\"get\"", "expected a table"),
        ("{ resources = [\"\"] }", "empty pattern"),
    ] {
        let table: toml::Table = toml::from_str(&format!("kube = {rule}")).unwrap();
        let err = kube_match_key().compile(&table).err().unwrap();
        assert!(err.contains(needle), "{rule}: {err}");
    }
}

#[test]
fn a_field_selector_on_the_name_touches_that_object() {
    let deny = r#"{ resources = ["secrets"], names = ["db-root"] }"#;
    let ns = "/api/v1/namespaces/prod/secrets";
    for target in [
        format!("{ns}?fieldSelector=metadata.name%3Ddb-root"),
        format!("{ns}?fieldSelector=metadata.name%3D%3Ddb-root&watch=1"),
        format!("{ns}?fieldSelector=type%3DOpaque,metadata.name%3D%20db-root"),
        "/api/v1/secrets?fieldSelector=metadata.name=db-root".to_string(),
        "/api/v1/watch/namespaces/prod/secrets?fieldSelector=metadata.name=db-root".to_string(),
    ] {
        assert!(hit(deny, "GET", &target), "{target}");
    }
    assert!(hit(
        deny,
        "DELETE",
        &format!("{ns}?fieldSelector=metadata.name=db-root")
    ));
    // Other objects, and `!=`, do not name it.
    assert!(!hit(
        deny,
        "GET",
        &format!("{ns}?fieldSelector=metadata.name=web")
    ));
    assert!(!hit(
        deny,
        "GET",
        &format!("{ns}?fieldSelector=metadata.name!=web")
    ));
    // Namespaces the same way, on a cluster-wide list.
    let deny_ns = r#"{ namespaces = ["kube-system"] }"#;
    assert!(hit(
        deny_ns,
        "GET",
        "/api/v1/pods?fieldSelector=metadata.namespace=kube-system"
    ));

    // An allow rule admits a selected list only when every selected object is within it.
    let allow = |target: &str| {
        let table: toml::Table =
            toml::from_str(r#"kube = { resources = ["configmaps"], names = ["app-*"] }"#).unwrap();
        let m = kube_match_key().compile_for(&table, Action::Allow).unwrap();
        let req = parse("GET", target).unwrap();
        m.matches(
            &request_command("GET", target, &req),
            &mut Scratch::default(),
        )
        .unwrap()
    };
    let cm = "/api/v1/namespaces/prod/configmaps";
    assert!(allow(&format!("{cm}/app-a")));
    assert!(allow(&format!("{cm}?fieldSelector=metadata.name=app-a")));
    assert!(!allow(cm));
    assert!(!allow(&format!(
        "{cm}?fieldSelector=metadata.name=app-a&fieldSelector=metadata.name=root"
    )));
}

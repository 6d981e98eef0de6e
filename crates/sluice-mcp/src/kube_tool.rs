//! The Kubernetes tools as requests to the gateway's HTTP listener.
//!
//! `CONN.get`, `list`, `logs`, `delete` and `apply` build the Kubernetes API
//! request kubectl would send (`/api/v1/namespaces/NS/pods/NAME`, …) and send
//! it through the HTTP listener like `CONN.request`: the Kubernetes flavor
//! reads the path back into verb, resource, namespace and name, judges it
//! with the `kube` rules, injects the cluster credential, masks Secrets and
//! records it. Building the path is all this module does; every segment is a
//! plain name, so the path the gateway reads is the one built here.

use crate::http_tool::{encode, HttpCall, HttpToolError};
use http::header::{self, HeaderValue};
use http::Method;
use serde_json::{Map, Value};

/// The Kubernetes tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Get,
    List,
    Logs,
    Delete,
    Apply,
    Exec,
}

/// Where a built-in resource lives: (API group, version, namespaced).
fn builtin(resource: &str) -> Option<(&'static str, &'static str, bool)> {
    Some(match resource {
        "pods"
        | "services"
        | "configmaps"
        | "secrets"
        | "serviceaccounts"
        | "persistentvolumeclaims"
        | "events"
        | "endpoints"
        | "replicationcontrollers"
        | "limitranges"
        | "resourcequotas" => ("", "v1", true),
        "namespaces" | "nodes" | "persistentvolumes" => ("", "v1", false),
        "deployments" | "statefulsets" | "daemonsets" | "replicasets" | "controllerrevisions" => {
            ("apps", "v1", true)
        }
        "jobs" | "cronjobs" => ("batch", "v1", true),
        "ingresses" | "networkpolicies" => ("networking.k8s.io", "v1", true),
        "ingressclasses" => ("networking.k8s.io", "v1", false),
        "roles" | "rolebindings" => ("rbac.authorization.k8s.io", "v1", true),
        "clusterroles" | "clusterrolebindings" => ("rbac.authorization.k8s.io", "v1", false),
        "poddisruptionbudgets" => ("policy", "v1", true),
        "horizontalpodautoscalers" => ("autoscaling", "v2", true),
        "storageclasses" => ("storage.k8s.io", "v1", false),
        "customresourcedefinitions" => ("apiextensions.k8s.io", "v1", false),
        _ => return None,
    })
}

fn invalid(m: impl Into<String>) -> HttpToolError {
    HttpToolError::Invalid(m.into())
}

fn string<'a>(args: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, HttpToolError> {
    match args.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(invalid(format!("argument {key:?} must be a string"))),
    }
}

/// A path segment: a Kubernetes name (letters, digits, `-`, `.`, `:`),
/// never `.` or `..`, so the gateway reads the path as it was built.
fn segment<'a>(what: &str, value: &'a str) -> Result<&'a str, HttpToolError> {
    let ok = !value.is_empty()
        && value != "."
        && value != ".."
        && value.len() <= 253
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':' | b'_'));
    if ok {
        Ok(value)
    } else {
        Err(invalid(format!(
            "{what} {value:?} is not a Kubernetes name"
        )))
    }
}

/// The arguments each verb takes.
pub fn allowed_arguments(verb: Verb) -> &'static [&'static str] {
    match verb {
        Verb::Get | Verb::Delete => &["resource", "name", "namespace", "api_version"],
        Verb::List => &[
            "resource",
            "namespace",
            "api_version",
            "label_selector",
            "field_selector",
            "limit",
        ],
        Verb::Logs => &["name", "namespace", "container", "tail_lines", "previous"],
        Verb::Apply => &["resource", "manifest", "namespace", "force"],
        Verb::Exec => &["name", "namespace", "container", "command"],
    }
}

/// The request a Kubernetes tool sends, below `/CONN`.
pub fn call(verb: Verb, args: &Map<String, Value>) -> Result<HttpCall, HttpToolError> {
    if let Some(extra) = args
        .keys()
        .find(|k| !allowed_arguments(verb).contains(&k.as_str()))
    {
        return Err(invalid(format!("unknown argument {extra:?}")));
    }
    let manifest = match (verb, args.get("manifest")) {
        (Verb::Apply, Some(Value::Object(m))) => Some(m),
        (Verb::Apply, _) => return Err(invalid("argument \"manifest\" (an object) is required")),
        _ => None,
    };
    let resource = match verb {
        Verb::Logs | Verb::Exec => "pods",
        _ => segment(
            "resource",
            string(args, "resource")?
                .ok_or_else(|| invalid("argument \"resource\" is required"))?,
        )?,
    };
    let manifest_str = |key: &str| -> Option<&str> {
        let m = manifest?;
        match key {
            "apiVersion" => m.get("apiVersion")?.as_str(),
            _ => m.get("metadata")?.get(key)?.as_str(),
        }
    };
    let api_version = string(args, "api_version")?.or_else(|| manifest_str("apiVersion"));
    let (group, version, namespaced) = match (api_version, builtin(resource)) {
        (Some(v), known) => {
            let (group, version) = match v.split_once('/') {
                Some((g, v)) => (segment("API group", g)?, segment("API version", v)?),
                None => ("", segment("API version", v)?),
            };
            (group, version, known.is_none_or(|k| k.2))
        }
        (None, Some(known)) => known,
        (None, None) => {
            return Err(invalid(format!(
            "resource {resource:?} is not built in: pass \"api_version\" (e.g. \"example.com/v1\")"
        )))
        }
    };
    let name = match verb {
        Verb::List => None,
        Verb::Apply => Some(
            string(args, "name")?
                .or_else(|| manifest_str("name"))
                .ok_or_else(|| invalid("the manifest has no metadata.name"))?,
        ),
        _ => Some(string(args, "name")?.ok_or_else(|| invalid("argument \"name\" is required"))?),
    };
    let namespace = string(args, "namespace")?
        .or_else(|| manifest_str("namespace"))
        .unwrap_or("default");
    let mut path = if group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    };
    if namespaced {
        path.push_str("/namespaces/");
        path.push_str(segment("namespace", namespace)?);
    }
    path.push('/');
    path.push_str(resource);
    if let Some(name) = name {
        path.push('/');
        path.push_str(segment("name", name)?);
    }
    let mut query: Vec<(&str, String)> = Vec::new();
    let text = |key: &str| -> Result<Option<String>, HttpToolError> {
        Ok(match args.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(Value::Bool(b)) => Some(b.to_string()),
            Some(_) => return Err(invalid(format!("argument {key:?} must be a string"))),
        })
    };
    let (method, mut headers, body) = match verb {
        Verb::Get => (Method::GET, Vec::new(), Vec::new()),
        Verb::Delete => (Method::DELETE, Vec::new(), Vec::new()),
        Verb::List => {
            for (arg, param) in [
                ("label_selector", "labelSelector"),
                ("field_selector", "fieldSelector"),
                ("limit", "limit"),
            ] {
                if let Some(v) = text(arg)? {
                    query.push((param, v));
                }
            }
            (Method::GET, Vec::new(), Vec::new())
        }
        Verb::Logs => {
            path.push_str("/log");
            for (arg, param) in [
                ("container", "container"),
                ("tail_lines", "tailLines"),
                ("previous", "previous"),
            ] {
                if let Some(v) = text(arg)? {
                    query.push((param, v));
                }
            }
            (Method::GET, Vec::new(), Vec::new())
        }
        Verb::Exec => {
            path.push_str("/exec");
            let argv = match args.get("command") {
                Some(Value::Array(words)) if !words.is_empty() => words
                    .iter()
                    .map(|w| w.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| invalid("argument \"command\" must be an array of strings"))?,
                _ => {
                    return Err(invalid(
                        "argument \"command\" (the program and its arguments, an array of strings) is required",
                    ))
                }
            };
            for word in argv {
                query.push(("command", word));
            }
            if let Some(c) = text("container")? {
                query.push(("container", c));
            }
            query.push(("stdout", "true".to_string()));
            query.push(("stderr", "true".to_string()));
            (Method::GET, Vec::new(), Vec::new())
        }
        Verb::Apply => {
            query.push(("fieldManager", "sluice-mcp".to_string()));
            if let Some(v) = text("force")? {
                query.push(("force", v));
            }
            let body = Value::Object(manifest.cloned().unwrap_or_default()).to_string();
            (
                Method::PATCH,
                // JSON is YAML: server-side apply reads the manifest as sent.
                vec![(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/apply-patch+yaml"),
                )],
                body.into_bytes(),
            )
        }
    };
    headers.push((header::ACCEPT, HeaderValue::from_static("application/json")));
    let mut sep = '?';
    for (k, v) in query {
        path.push(sep);
        path.push_str(k);
        path.push('=');
        path.push_str(&encode(&v));
        sep = '&';
    }
    Ok(HttpCall {
        method,
        path_and_query: path,
        headers,
        body,
    })
}

//! Ephemeral containers (`kubectl debug POD --image=IMG -- CMD`): a write
//! to `pods/NAME/ephemeralcontainers` starts a new container in the pod,
//! sharing its namespaces (`--target` its processes), running the command
//! its body names. That is an exec in all but name, so it is judged as one:
//! each new container is a command of kind `Exec` whose text is its argv
//! (`command` then `args`, shell-quoted, `$(VAR)` expanded as the kubelet
//! expands it) and whose API request is the pod's `exec` subresource, so
//! every rule on exec (`verbs = ["exec"]`, `resources = ["pods/exec"]`,
//! `commands`, the shell `command` key) applies.
//!
//! The body is read the way the API server may read it: a Pod (PUT), a
//! strategic-merge, merge or apply patch (`spec.ephemeralContainers`; the
//! pre-1.22 `EphemeralContainers` kind's top-level `ephemeralContainers`),
//! or a JSON patch adding containers. What cannot be judged is refused:
//! no body, a body over the digest limit, anything but JSON (YAML,
//! protobuf, CBOR), JSON patch operations other than adding or replacing
//! whole containers, a container without `command` (its image's entrypoint
//! would run: the gateway cannot know it), a key spelled in another case
//! beside or instead of its own (a case-insensitive decoder would read it),
//! and a `$(VAR)` the gateway cannot expand.
//!
//! A PUT names every ephemeral container of the pod, the running ones too:
//! all are judged. Creating a pod that runs a command (`kubectl debug
//! --copy-to`, `kubectl run`) is a `create pods` request, not judged as an
//! exec.

use crate::path::{parse, ApiRequest, Scope, Verb};
use crate::policy::CONTEXT_PREFIX;
use serde_json::{Map, Value};
use sluice_core::model::{Command, CommandKind};
use std::collections::HashMap;

/// Whether the request writes the `ephemeralcontainers` subresource of a pod.
pub fn is_ephemeral_write(method: &str, req: &ApiRequest) -> bool {
    req.scope == Scope::Resource
        && req.group.is_empty()
        && req.resource == "pods"
        && req.subresource.as_deref() == Some("ephemeralcontainers")
        && req.name.is_some()
        && matches!(method, "POST" | "PUT" | "PATCH")
}

/// A new ephemeral container, as far as policy is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewContainer {
    pub name: String,
    pub image: String,
    /// `targetContainerName`: whose processes it sees.
    pub target: Option<String>,
    /// What it runs: `command` then `args`, `$(VAR)` expanded.
    pub argv: Vec<String>,
}

/// The containers a write to `ephemeralcontainers` adds, read from its body
/// (`None`: no body); `complete` is false when only a prefix was read. An
/// `Err` says why the body cannot be judged.
pub fn new_containers(body: Option<(&[u8], bool)>) -> Result<Vec<NewContainer>, String> {
    let Some((bytes, complete)) = body else {
        return Err("the request has no body".into());
    };
    if !complete {
        return Err("the request body is too large to be read before judging".into());
    }
    let doc: Value = serde_json::from_slice(bytes).map_err(|_| {
        "the request body is not JSON (YAML, protobuf and CBOR bodies are not read)".to_string()
    })?;
    let mut found = Vec::new();
    match &doc {
        Value::Array(ops) => json_patch(ops, &mut found)?,
        Value::Object(obj) => from_object(obj, &mut found)?,
        _ => return Err("the request body is neither an object nor a JSON patch".into()),
    }
    if found.is_empty() {
        return Err("the request body names no ephemeral container".into());
    }
    found.iter().map(|c| container(c)).collect()
}

/// A key of `obj` as a case-sensitive decoder reads it; a key spelled in
/// another case (which a case-insensitive decoder would read) is refused.
fn field<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<Option<&'a Value>, String> {
    if let Some(other) = obj
        .keys()
        .find(|k| k.as_str() != key && k.eq_ignore_ascii_case(key))
    {
        return Err(format!("the key {other:?} may be read as {key:?}"));
    }
    Ok(obj.get(key))
}

/// `spec.ephemeralContainers` of a Pod or patch, and the top-level
/// `ephemeralContainers` of the pre-1.22 `EphemeralContainers` kind.
fn from_object<'a>(obj: &'a Map<String, Value>, found: &mut Vec<&'a Value>) -> Result<(), String> {
    if let Some(spec) = field(obj, "spec")? {
        let spec = spec.as_object().ok_or("spec is not an object")?;
        list(field(spec, "ephemeralContainers")?, found)?;
    }
    list(field(obj, "ephemeralContainers")?, found)
}

fn list<'a>(value: Option<&'a Value>, found: &mut Vec<&'a Value>) -> Result<(), String> {
    match value {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Array(items)) => {
            found.extend(items);
            Ok(())
        }
        Some(_) => Err("ephemeralContainers is not a list".into()),
    }
}

/// RFC 6902 operations: `add`/`replace` of whole containers, the list, the
/// spec or the object (and `test`); anything else cannot be judged.
fn json_patch<'a>(ops: &'a [Value], found: &mut Vec<&'a Value>) -> Result<(), String> {
    for op in ops {
        let op = op
            .as_object()
            .ok_or("a JSON patch operation is not an object")?;
        let kind = field(op, "op")?.and_then(Value::as_str).unwrap_or("");
        if kind == "test" {
            continue;
        }
        let path = field(op, "path")?.and_then(Value::as_str).unwrap_or("");
        if !matches!(kind, "add" | "replace") {
            return Err(format!(
                "the JSON patch operation {kind:?} on {path:?} cannot be judged"
            ));
        }
        let value = field(op, "value")?.ok_or("a JSON patch operation has no value")?;
        let rest = path.strip_prefix("/spec").unwrap_or(path);
        let rest_is_index = rest
            .strip_prefix("/ephemeralContainers/")
            .is_some_and(|i| i == "-" || (!i.is_empty() && i.bytes().all(|b| b.is_ascii_digit())));
        if rest_is_index {
            found.push(value);
        } else if rest == "/ephemeralContainers" {
            list(Some(value), found)?;
        } else if path == "/spec" {
            let spec = value.as_object().ok_or("spec is not an object")?;
            list(field(spec, "ephemeralContainers")?, found)?;
        } else if path.is_empty() {
            from_object(
                value.as_object().ok_or("the document is not an object")?,
                found,
            )?;
        } else {
            return Err(format!(
                "the JSON patch operation {kind:?} on {path:?} cannot be judged (only whole ephemeral containers can)"
            ));
        }
    }
    Ok(())
}

fn strings(value: Option<&Value>, key: &str) -> Result<Vec<String>, String> {
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("{key} holds a value that is not a string"))
            })
            .collect(),
        Some(_) => Err(format!("{key} is not a list of strings")),
    }
}

fn container(value: &Value) -> Result<NewContainer, String> {
    let obj = value
        .as_object()
        .ok_or("an ephemeral container is not an object")?;
    let text = |key: &str| -> Result<String, String> {
        Ok(field(obj, key)?
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string())
    };
    let name = text("name")?;
    let command = strings(field(obj, "command")?, "command")?;
    let args = strings(field(obj, "args")?, "args")?;
    if command.is_empty() {
        return Err(format!(
            "the ephemeral container {name:?} names no command, so its image's entrypoint would run, which the gateway cannot know"
        ));
    }
    let env = Environment::of(obj)?;
    let argv = command
        .iter()
        .chain(&args)
        .map(|a| env.expand(a))
        .collect::<Result<Vec<_>, _>>()?;
    let target = text("targetContainerName")?;
    Ok(NewContainer {
        name,
        image: text("image")?,
        target: (!target.is_empty()).then_some(target),
        argv,
    })
}

/// What the kubelet expands `$(VAR)` in a command with: the container's
/// `env` (in order, each value expanded by those before it), its `envFrom`
/// (names unknown here), and the pod's service links (`*_SERVICE_*`,
/// `*_PORT*`: values unknown here).
struct Environment {
    /// `None`: defined, value unknown (`valueFrom`, or built from one).
    vars: HashMap<String, Option<String>>,
    /// `envFrom` may define any name.
    open: bool,
}

impl Environment {
    fn of(obj: &Map<String, Value>) -> Result<Self, String> {
        let open = match field(obj, "envFrom")? {
            None | Some(Value::Null) => false,
            Some(Value::Array(a)) => !a.is_empty(),
            Some(_) => true,
        };
        let mut env = Environment {
            vars: HashMap::new(),
            open,
        };
        let entries = match field(obj, "env")? {
            None | Some(Value::Null) => return Ok(env),
            Some(Value::Array(a)) => a,
            Some(_) => return Err("env is not a list".into()),
        };
        for entry in entries {
            let entry = entry.as_object().ok_or("an env entry is not an object")?;
            let Some(name) = field(entry, "name")?.and_then(Value::as_str) else {
                continue;
            };
            let literal = if field(entry, "valueFrom")?.is_some_and(|v| !v.is_null()) {
                None
            } else {
                let raw = field(entry, "value")?.and_then(Value::as_str).unwrap_or("");
                env.expand(raw).ok()
            };
            env.vars.insert(name.to_string(), literal);
        }
        Ok(env)
    }

    /// Whether `name` may be defined with a value the gateway cannot see.
    fn unknown(&self, name: &str) -> bool {
        match self.vars.get(name) {
            Some(value) => value.is_none(),
            None => {
                let service_link = name
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
                    && (name.contains("_SERVICE_") || name.contains("_PORT"));
                self.open || service_link
            }
        }
    }

    /// Kubernetes' `expansion.Expand`: `$(NAME)` is replaced by its value
    /// when defined and kept when not, `$$` is `$`, any other `$` is kept.
    fn expand(&self, input: &str) -> Result<String, String> {
        let mut out = String::new();
        let mut rest = input;
        while let Some(at) = rest.find('$') {
            out.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            if after.is_empty() {
                out.push('$');
                rest = after;
                break;
            }
            if let Some(tail) = after.strip_prefix('$') {
                out.push('$');
                rest = tail;
            } else if let Some(inner) = after.strip_prefix('(') {
                match inner.find(')') {
                    Some(close) => {
                        let name = &inner[..close];
                        if self.unknown(name) {
                            return Err(format!(
                                "the command refers to $({name}), which the kubelet would expand from a value the gateway cannot see"
                            ));
                        }
                        match self.vars.get(name) {
                            Some(Some(value)) => out.push_str(value),
                            _ => {
                                out.push_str("$(");
                                out.push_str(name);
                                out.push(')');
                            }
                        }
                        rest = &inner[close + 1..];
                    }
                    None => {
                        out.push_str("$(");
                        rest = inner;
                    }
                }
            } else {
                // `$` and the next character are kept as they are.
                let next = after.chars().next().map_or(0, char::len_utf8);
                out.push('$');
                out.push_str(&after[..next]);
                rest = &after[next..];
            }
        }
        out.push_str(rest);
        Ok(out)
    }
}

/// The exec command a new ephemeral container is judged as: kind `Exec`,
/// its argv shell-quoted, and as its API request the pod's `exec`
/// subresource (so `kube` rules on exec see it), with the write that
/// creates it described. `None` if the request line cannot be turned into
/// that exec (refused by the caller).
pub fn exec_command(
    method: &str,
    target: &str,
    req: &ApiRequest,
    c: &NewContainer,
) -> Option<Command> {
    let (path, _) = target.split_once('?').unwrap_or((target, ""));
    let path = path.strip_suffix('/').unwrap_or(path);
    let (pod, _) = path.rsplit_once('/')?;
    let exec_target = format!("{pod}/exec");
    let exec = parse("POST", &exec_target).ok()?;
    if exec.verb != Verb::Exec || exec.namespace != req.namespace || exec.name != req.name {
        return None;
    }
    let mut what = format!(
        "debug {}: ephemeral container {:?} (image {:?}",
        exec.describe(),
        c.name,
        c.image
    );
    if let Some(t) = &c.target {
        what.push_str(&format!(", sharing the processes of {t:?}"));
    }
    what.push_str(&format!(") by {method} {target}"));
    Some(Command {
        kind: CommandKind::Exec,
        text: sluice_shell::quote_argv(&c.argv),
        context: vec![format!("{CONTEXT_PREFIX}POST {exec_target}"), what],
    })
}

#[cfg(test)]
mod tests;

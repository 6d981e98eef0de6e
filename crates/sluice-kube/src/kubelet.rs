//! Proxy subresources: `nodes/N/proxy/…` reaches the node's kubelet API,
//! `pods/P/proxy/…` and `services/S/proxy/…` reach a workload's own HTTP
//! API, and the legacy `/api/v1/proxy/…` prefix reaches either. Judging only
//! the `proxy` verb would let `nodes/N/proxy/run/NS/POD/C?cmd=rm -rf /`
//! past every exec rule, so:
//!
//! - a kubelet request is judged as what it does: `exec`, `run`, `attach`,
//!   `portForward` and `containerLogs` become the equivalent pod
//!   subresource request (an exec is an exec command, judged by the shell
//!   keys too); the kubelet's read-only status endpoints stay the `proxy`
//!   verb on the node; anything else on the kubelet is refused;
//! - a workload's HTTP API cannot be judged by Kubernetes rules (a `proxy`
//!   rule cannot tell `GET /healthz` from `POST /admin/drop`), so pod and
//!   service proxies, and the legacy prefix, are refused.

use crate::path::{parse, query_values, ApiRequest};

/// What a proxy request is judged as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proxied {
    /// A kubelet read-only endpoint: the `proxy` request on the node alone.
    KubeletRead,
    /// The equivalent API request (`METHOD`, target) of a kubelet
    /// exec/run/attach/portForward/containerLogs, judged besides the proxy
    /// request itself.
    Pod { method: String, target: String },
    /// Not served: the message says why (safe to show).
    Refused(String),
}

/// Kubelet endpoints that only report status (GET/HEAD).
const KUBELET_READS: [&str; 7] = [
    "healthz",
    "pods",
    "runningpods",
    "stats",
    "metrics",
    "spec",
    "configz",
];

/// Percent-encodes a path segment or query value (unreserved bytes kept).
fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What a `proxy`-verb request is judged as. `query` is the raw query.
pub fn judge_proxy(method: &str, req: &ApiRequest, query: &str) -> Proxied {
    let refuse = |m: &str| Proxied::Refused(m.to_string());
    if req.subresource.is_none() {
        return refuse(
            "the legacy /api/v1/proxy/ prefix is not relayed by Sluice; the request was not run",
        );
    }
    if !req.group.is_empty() || req.resource != "nodes" {
        return refuse(
            "proxying to a pod or service reaches the workload's own HTTP API, which Kubernetes rules cannot judge; the request was not run",
        );
    }
    let Some(node) = req.name.as_deref() else {
        return refuse("a node proxy request names no node; the request was not run");
    };
    // The path after `nodes/NODE/proxy`.
    let segments: Vec<&str> = req.path.split('/').filter(|s| !s.is_empty()).collect();
    let Some(at) = segments
        .windows(3)
        .position(|w| w[0] == "nodes" && w[1] == node && w[2] == "proxy")
    else {
        return refuse("the node proxy path could not be read; the request was not run");
    };
    let inner = &segments[at + 3..];
    let read = matches!(method, "GET" | "HEAD");
    let Some(first) = inner.first() else {
        return refuse("a node proxy request names no kubelet endpoint; the request was not run");
    };
    let lower = first.to_ascii_lowercase();
    // exec/NS/POD[/UID]/CONTAINER, run/…, attach/…; portForward/NS/POD[/UID].
    let (ns, pod, container) = match (lower.as_str(), &inner[1..]) {
        ("exec" | "run" | "attach" | "containerlogs", [ns, pod, c])
        | ("exec" | "run" | "attach", [ns, pod, _, c]) => (*ns, *pod, Some(*c)),
        ("portforward", [ns, pod] | [ns, pod, _]) => (*ns, *pod, None),
        ("exec" | "run" | "attach" | "containerlogs" | "portforward", _) => {
            return refuse(&format!(
                "the kubelet {first} path is not in a form Sluice reads; the request was not run"
            ))
        }
        (e, _) if read && KUBELET_READS.contains(&e) => return Proxied::KubeletRead,
        _ => {
            return refuse(&format!(
                "the kubelet endpoint {:?} is not relayed by Sluice (status reads: {}); the request was not run",
                first.chars().take(40).collect::<String>(),
                KUBELET_READS.join(", ")
            ))
        }
    };
    let base = format!("/api/v1/namespaces/{}/pods/{}", enc(ns), enc(pod));
    let mut params: Vec<String> = Vec::new();
    let (sub, method) = match lower.as_str() {
        "exec" => {
            for arg in query_values(query, "command") {
                params.push(format!("command={}", enc(&arg)));
            }
            ("exec", method)
        }
        "run" => {
            // The kubelet's run splits its `cmd` parameter on spaces.
            for value in query_values(query, "cmd").iter().take(1) {
                for arg in value.split(' ') {
                    params.push(format!("command={}", enc(arg)));
                }
            }
            ("exec", "POST")
        }
        "attach" => ("attach", method),
        "portforward" => ("portforward", method),
        _ => ("log", "GET"),
    };
    if params.is_empty() && sub == "exec" {
        return refuse("a kubelet exec or run names no command; the request was not run");
    }
    if let Some(c) = container {
        params.push(format!("container={}", enc(c)));
    }
    let target = if params.is_empty() {
        format!("{base}/{sub}")
    } else {
        format!("{base}/{sub}?{}", params.join("&"))
    };
    Proxied::Pod {
        method: method.to_string(),
        target,
    }
}

/// The pod request a kubelet request stands for, parsed (for the frame hook).
pub fn inner_request(method: &str, req: &ApiRequest, query: &str) -> Option<ApiRequest> {
    match judge_proxy(method, req, query) {
        Proxied::Pod { method, target } => parse(&method, &target).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judge(method: &str, target: &str) -> Proxied {
        let req = parse(method, target).unwrap();
        let query = target.split_once('?').map_or("", |(_, q)| q);
        judge_proxy(method, &req, query)
    }

    #[test]
    fn kubelet_requests_are_judged_as_the_pod_request_they_are() {
        assert_eq!(
            judge(
                "POST",
                "/api/v1/nodes/n1/proxy/run/kube-system/etcd/etcd?cmd=rm%20-rf%20/var"
            ),
            Proxied::Pod {
                method: "POST".into(),
                target: "/api/v1/namespaces/kube-system/pods/etcd/exec?command=rm&command=-rf&command=%2Fvar&container=etcd".into()
            }
        );
        assert_eq!(
            judge(
                "GET",
                "/api/v1/nodes/n1:10250/proxy/exec/default/web/uid-1/app?command=ls&command=/"
            ),
            Proxied::Pod {
                method: "GET".into(),
                target:
                    "/api/v1/namespaces/default/pods/web/exec?command=ls&command=%2F&container=app"
                        .into()
            }
        );
        assert!(matches!(
            judge("GET", "/api/v1/nodes/n1/proxy/portForward/default/web"),
            Proxied::Pod { target, .. } if target == "/api/v1/namespaces/default/pods/web/portforward"
        ));
        assert!(matches!(
            judge("GET", "/api/v1/nodes/n1/proxy/containerLogs/default/web/app"),
            Proxied::Pod { target, .. } if target == "/api/v1/namespaces/default/pods/web/log?container=app"
        ));
        assert_eq!(
            judge("GET", "/api/v1/nodes/n1/proxy/stats/summary"),
            Proxied::KubeletRead
        );
        assert_eq!(
            judge("GET", "/api/v1/nodes/n1/proxy/healthz"),
            Proxied::KubeletRead
        );
        for refused in [
            ("POST", "/api/v1/nodes/n1/proxy/checkpoint/default/web/app"),
            ("GET", "/api/v1/nodes/n1/proxy/cri/exec/abc"),
            ("GET", "/api/v1/nodes/n1/proxy/logs/"),
            ("GET", "/api/v1/nodes/n1/proxy/debug/pprof/profile"),
            ("POST", "/api/v1/nodes/n1/proxy/pods"),
            ("POST", "/api/v1/nodes/n1/proxy/exec/default/web/app"),
            ("POST", "/api/v1/nodes/n1/proxy/run/default/web"),
            ("GET", "/api/v1/namespaces/default/pods/web/proxy/admin"),
            ("GET", "/api/v1/namespaces/default/services/web:80/proxy/"),
            ("GET", "/api/v1/proxy/nodes/n1/run/default/web/app"),
            ("GET", "/api/v1/proxy/namespaces/default/services/web/path"),
        ] {
            assert!(
                matches!(judge(refused.0, refused.1), Proxied::Refused(_)),
                "{refused:?}"
            );
        }
    }
}

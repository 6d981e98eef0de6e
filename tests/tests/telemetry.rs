//! OTLP export: with `[telemetry] otlp_endpoint` set, the gateway's spans,
//! metrics and audit-event logs reach a real OTLP receiver, over HTTP
//! (protobuf bodies) and over gRPC (the collector services), and the
//! receiver decodes them: span names and nesting, metric names, attributes and
//! values, log bodies and attributes. Never a secret.

// Tests fail by panicking, helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use opentelemetry_proto::tonic::collector::logs::v1::{
    logs_service_server::{LogsService, LogsServiceServer},
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    metrics_service_server::{MetricsService, MetricsServiceServer},
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    trace_service_server::{TraceService, TraceServiceServer},
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use prost::Message;
use sluice_e2e::*;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a receiver decoded, over every request it got.
#[derive(Default)]
struct Collected {
    /// (path or gRPC service, content type) of each request.
    requests: Vec<(String, String)>,
    services: Vec<String>,
    /// `service.instance.id` of the span resources: the gateway node's id.
    instances: Vec<String>,
    /// name, span id, parent span id, attributes.
    spans: Vec<Span>,
    /// metric name → data points (attributes, value; histograms: count).
    metrics: HashMap<String, Vec<Point>>,
    /// body, attributes.
    logs: Vec<(String, HashMap<String, String>)>,
    raw: Vec<u8>,
}

#[derive(Clone, Debug)]
struct Span {
    name: String,
    id: Vec<u8>,
    parent: Vec<u8>,
    attrs: HashMap<String, String>,
}

type Shared = Arc<Mutex<Collected>>;

/// A metric data point: its attributes and value (histograms: the count).
type Point = (HashMap<String, String>, f64);

fn value(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attrs(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), value(&kv.value)))
        .collect()
}

impl Collected {
    fn traces(&mut self, req: ExportTraceServiceRequest) {
        for rs in req.resource_spans {
            if let Some(r) = &rs.resource {
                let attrs = attrs(&r.attributes);
                self.services.extend(attrs.get("service.name").cloned());
                self.instances
                    .extend(attrs.get("service.instance.id").cloned());
            }
            for ss in rs.scope_spans {
                for s in ss.spans {
                    self.spans.push(Span {
                        name: s.name.clone(),
                        id: s.span_id.clone(),
                        parent: s.parent_span_id.clone(),
                        attrs: attrs(&s.attributes),
                    });
                }
            }
        }
    }

    fn metrics(&mut self, req: ExportMetricsServiceRequest) {
        for rm in req.resource_metrics {
            for sm in rm.scope_metrics {
                for m in sm.metrics {
                    let points: Vec<Point> = match m.data {
                        Some(metric::Data::Sum(s)) => s
                            .data_points
                            .iter()
                            .map(|p| {
                                let v = match p.value {
                                    Some(number_data_point::Value::AsInt(i)) => i as f64,
                                    Some(number_data_point::Value::AsDouble(d)) => d,
                                    None => f64::NAN,
                                };
                                (attrs(&p.attributes), v)
                            })
                            .collect(),
                        Some(metric::Data::Histogram(h)) => h
                            .data_points
                            .iter()
                            .map(|p| (attrs(&p.attributes), p.count as f64))
                            .collect(),
                        _ => Vec::new(),
                    };
                    // Cumulative temporality: the latest export holds the totals.
                    self.metrics.insert(m.name.clone(), points);
                }
            }
        }
    }

    fn logs(&mut self, req: ExportLogsServiceRequest) {
        for rl in req.resource_logs {
            for sl in rl.scope_logs {
                for l in sl.log_records {
                    self.logs.push((value(&l.body), attrs(&l.attributes)));
                }
            }
        }
    }

    fn metric_sum(&self, name: &str, filter: &[(&str, &str)]) -> Option<f64> {
        let points = self.metrics.get(name)?;
        Some(
            points
                .iter()
                .filter(|(a, _)| {
                    filter
                        .iter()
                        .all(|(k, v)| a.get(*k).map(String::as_str) == Some(*v))
                })
                .map(|(_, v)| v)
                .sum(),
        )
    }

    fn span(&self, name: &str) -> Option<&Span> {
        self.spans.iter().find(|s| s.name == name)
    }
}

/// An OTLP/HTTP receiver: decodes each POST by its path and answers 200.
fn http_receiver() -> (u16, Shared) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let shared = Shared::default();
    let out = shared.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let path = line
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_string();
            let (mut length, mut content_type) = (0usize, String::new());
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
                let lower = h.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                if let Some(v) = lower.strip_prefix("content-type:") {
                    content_type = v.trim().to_string();
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let mut c = out.lock().unwrap();
            c.raw.extend_from_slice(&body);
            c.requests.push((path.clone(), content_type));
            let decoded = match path.as_str() {
                "/v1/traces" => ExportTraceServiceRequest::decode(&body[..])
                    .map(|r| c.traces(r))
                    .is_ok(),
                "/v1/metrics" => ExportMetricsServiceRequest::decode(&body[..])
                    .map(|r| c.metrics(r))
                    .is_ok(),
                "/v1/logs" => ExportLogsServiceRequest::decode(&body[..])
                    .map(|r| c.logs(r))
                    .is_ok(),
                _ => false,
            };
            drop(c);
            let status = if decoded { "200 OK" } else { "400 Bad Request" };
            let _ = stream.write_all(
                format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                )
                .as_bytes(),
            );
        }
    });
    (port, shared)
}

/// The OTLP collector's gRPC services, decoding into `Collected`.
#[derive(Clone)]
struct Grpc(Shared);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut c = self.0.lock().unwrap();
        c.requests.push(("grpc:traces".into(), String::new()));
        let request = request.into_inner();
        c.raw.extend(request.encode_to_vec());
        c.traces(request);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let mut c = self.0.lock().unwrap();
        c.requests.push(("grpc:metrics".into(), String::new()));
        let request = request.into_inner();
        c.raw.extend(request.encode_to_vec());
        c.metrics(request);
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl LogsService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        let mut c = self.0.lock().unwrap();
        c.requests.push(("grpc:logs".into(), String::new()));
        let request = request.into_inner();
        c.raw.extend(request.encode_to_vec());
        c.logs(request);
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

fn grpc_receiver() -> (u16, Shared) {
    let shared = Shared::default();
    let svc = Grpc(shared.clone());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let incoming = async_stream(listener);
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(svc.clone()))
                .add_service(MetricsServiceServer::new(svc.clone()))
                .add_service(LogsServiceServer::new(svc))
                .serve_with_incoming(incoming)
                .await
                .unwrap();
        });
    });
    (port, shared)
}

/// Accepted connections as the stream tonic serves.
fn async_stream(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |l| async move {
        let next = l.accept().await.map(|(s, _)| s);
        Some((next, l))
    })
}

const CONFIG: &str = r#"
[[rules]]
name = "no-ddl"
match = { sql = ["ddl"] }
action = "deny"
message = "Schema changes go through migrations."

[[rules]]
name = "quick-review"
match = { sql = ["write"], tables = ["orders"] }
action = "review"
approvers = ["dba"]
timeout = "1s"

[masking]
detectors = ["email"]
"#;

/// Drives one gateway through allowed, denied, held (expiring), masked and
/// unauthenticated traffic, stops it cleanly (flushing every exporter) and
/// returns what the receiver decoded.
fn exercise(port: u16, protocol: &str, shared: &Shared) -> Env {
    let mut env = Env::builder()
        .extra_toml(&format!(
            "[telemetry]\notlp_endpoint = \"http://127.0.0.1:{port}\"\notlp_protocol = \"{protocol}\"\nservice_name = \"sluice-e2e\"\nexport_interval = \"1s\"\n{CONFIG}"
        ))
        .start();
    let url = env.agent_url();
    ok(&env.psql(&url, &["-c", "select 42"]));
    ok(&env.psql(
        &url,
        &["-c", "select email from customers order by id limit 2"],
    ));
    failed(&env.psql(&url, &["-c", "create table t_otel (id int)"]));
    failed(&env.psql(&url, &["-c", "delete from orders where id = -1"]));
    let bad = env.url("agent-1", "not-a-token", "appdb");
    failed(&env.psql(&bad, &["-c", "select 1"]));
    // Sessions end, and their gauges go back down, before the final export.
    env.wait_sessions_ended(4);
    // A metric export happens every second while running: see one arrive live.
    wait_until(Duration::from_secs(20), "a live metrics export", || {
        shared
            .lock()
            .unwrap()
            .metrics
            .contains_key("sluice.commands")
            .then_some(())
    });
    // A clean stop flushes the batch exporters and the last metric collection.
    env.stop_gateway();
    wait_until(Duration::from_secs(20), "spans and logs", || {
        let c = shared.lock().unwrap();
        (c.span("upstream").is_some()
            && c.span("approval_wait").is_some()
            && c.logs.iter().any(|(b, _)| b == "session_end"))
        .then_some(())
    });
    env
}

fn check(env: &Env, c: &Collected) {
    // Resource.
    assert!(
        c.services.iter().all(|s| s == "sluice-e2e"),
        "{:?}",
        c.services
    );
    assert!(!c.services.is_empty());
    // The node id (the host name by default) is on every exported span.
    assert!(
        !c.instances.is_empty() && c.instances.iter().all(|i| !i.is_empty()),
        "{:?}",
        c.instances
    );

    // Traces: session → command → policy; upstream and masking under the session.
    let session = c.span("session").expect("a session span");
    assert_eq!(session.attrs["connection"], "appdb");
    assert_eq!(session.attrs["subject"], "agent-1");
    let commands: Vec<&Span> = c.spans.iter().filter(|s| s.name == "command").collect();
    assert!(commands.len() >= 4, "command spans: {}", commands.len());
    let ddl = commands
        .iter()
        .find(|s| s.attrs.get("rule").map(String::as_str) == Some("no-ddl"))
        .expect("the denied command's span names its rule");
    assert_eq!(ddl.attrs["verdict"], "deny");
    let policy = c
        .spans
        .iter()
        .find(|s| s.name == "policy" && s.parent == ddl.id)
        .expect("a policy span inside the command span");
    assert_eq!(policy.attrs["command_id"], ddl.attrs["command_id"]);
    let wait = c.span("approval_wait").expect("an approval wait span");
    assert_eq!(wait.attrs["rule"], "quick-review");
    assert_eq!(wait.attrs["result"], "expired");
    let sessions: Vec<&Vec<u8>> = c
        .spans
        .iter()
        .filter(|s| s.name == "session")
        .map(|s| &s.id)
        .collect();
    let upstream = c.span("upstream").expect("an upstream span");
    assert!(
        sessions.contains(&&upstream.parent),
        "upstream under a session"
    );
    let masking = c
        .spans
        .iter()
        .find(|s| s.name == "masking" && s.attrs.get("masked").map(String::as_str) == Some("2"))
        .expect("a masking span with the two emails");
    assert!(
        c.spans
            .iter()
            .any(|s| s.name == "upstream" && s.id == masking.parent),
        "masking under the upstream call"
    );

    // Metrics, by name, attributes and value.
    let allow = c
        .metric_sum(
            "sluice.commands",
            &[("verdict", "allow"), ("rule", "default")],
        )
        .expect("sluice.commands exported");
    assert!(allow >= 2.0, "allowed commands: {allow}");
    assert_eq!(
        c.metric_sum(
            "sluice.commands",
            &[("verdict", "deny"), ("rule", "no-ddl")]
        ),
        Some(1.0)
    );
    assert_eq!(
        c.metric_sum("sluice.commands", &[("rule", "quick-review")]),
        Some(1.0)
    );
    assert_eq!(
        c.metric_sum("sluice.masked.values", &[("detector", "email")]),
        Some(2.0)
    );
    assert_eq!(
        c.metric_sum(
            "sluice.sessions.active",
            &[("protocol", "postgres"), ("connection", "appdb")]
        ),
        Some(0.0),
        "every session ended: the up-down counter is back at zero"
    );
    let latency = c
        .metric_sum("sluice.upstream.duration", &[("connection", "appdb")])
        .expect("upstream latency histogram");
    assert!(latency >= 2.0, "histogram count {latency}");
    assert_eq!(
        c.metric_sum("sluice.approval.wait", &[("result", "expired")]),
        Some(1.0)
    );
    // libpq (sslmode=prefer) tries again without TLS after a refusal: 1 or 2.
    let failures = c
        .metric_sum(
            "sluice.authentication.failures",
            &[("protocol", "postgres")],
        )
        .expect("authentication failures exported");
    assert!((1.0..=2.0).contains(&failures), "{failures}");

    // Audit events as logs: one per record, with identity, session and verdict.
    let decided: Vec<&HashMap<String, String>> = c
        .logs
        .iter()
        .filter(|(b, _)| b == "command_decided")
        .map(|(_, a)| a)
        .collect();
    assert!(
        decided.len() >= 4,
        "command_decided logs: {}",
        decided.len()
    );
    let denied = decided
        .iter()
        .find(|a| a.get("rule").map(String::as_str) == Some("no-ddl"))
        .expect("the denial as a log record");
    assert_eq!(denied["verdict"], "deny");
    assert_eq!(denied["subject"], "agent-1");
    assert_eq!(denied["connection"], "appdb");
    assert!(!denied["session.id"].is_empty());
    assert!(c.logs.iter().any(|(b, _)| b == "session_start"));
    assert!(c.logs.iter().any(|(b, _)| b == "approval_requested"));
    // As many decision logs as the store has decisions.
    let stored: usize = env
        .sqlite("select count(*) from events where kind = 'command_decided'")
        .trim()
        .parse()
        .unwrap();
    assert_eq!(decided.len(), stored);

    // Never a secret: not the token, not the upstream password, not the SQL.
    let token = env.agent_token();
    assert!(!c.raw.is_empty());
    for secret in [token.as_str(), "create table t_otel"] {
        assert!(
            !contains_bytes(&c.raw, secret.as_bytes()),
            "{secret:?} exported"
        );
    }
}

#[test]
fn spans_metrics_and_audit_logs_are_exported_over_otlp_http() {
    let (port, shared) = http_receiver();
    let env = exercise(port, "http/protobuf", &shared);
    let c = shared.lock().unwrap();
    for (path, content_type) in &c.requests {
        assert!(
            ["/v1/traces", "/v1/metrics", "/v1/logs"].contains(&path.as_str()),
            "{path}"
        );
        assert_eq!(content_type, "application/x-protobuf");
    }
    check(&env, &c);
}

#[test]
fn spans_metrics_and_audit_logs_are_exported_over_otlp_grpc() {
    let (port, shared) = grpc_receiver();
    let env = exercise(port, "grpc", &shared);
    let c = shared.lock().unwrap();
    for signal in ["grpc:traces", "grpc:metrics", "grpc:logs"] {
        assert!(
            c.requests.iter().any(|(p, _)| p == signal),
            "{signal} received"
        );
    }
    check(&env, &c);
}

//! The Kubernetes flavor of the HTTP proxy: what a request is (verb,
//! resource, namespace; the command of an exec), how a refusal reads
//! (`Status`), which credential goes upstream (`token` or a client
//! certificate) and how responses are masked (Secrets always, detectors when
//! configured; watch streams per event).

use crate::ephemeral::{self, is_ephemeral_write, new_containers};
use crate::kubelet::{inner_request, judge_proxy, Proxied};
use crate::mask::{DocMasker, DocumentTransformer, WatchTransformer};
use crate::path::{parse, query_values, ApiRequest, Scope, Verb};
use crate::policy::{request_command, CONTEXT_PREFIX};
use crate::settings::settings;
use crate::status::status_response;
use http::{header, HeaderMap, HeaderValue};
use sluice_core::config::ConnectionConfig;
use sluice_core::masking::{MaskCounts, SessionMasker, StreamMasker};
use sluice_core::model::{Command, CommandKind, Protocol};
use sluice_core::sync::MutexExt;
use sluice_http::inject::{default_credentials, resolve, Injected};
use sluice_http::masking::{
    content_type, default_plan, encoded, has_body, is_json, partial_refusal,
};
use sluice_http::{
    Body, BodyPlan, Direction, Flavor, Frame, FrameHook, MaskingContext, Problem, ProblemKind,
    RequestBody, RequestHead, ResponsePlan,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a refused WebSocket exec is remembered for kubectl's SPDY retry.
const REMEMBER_REFUSAL: Duration = Duration::from_secs(60);
/// At most this many remembered refusals (oldest dropped first).
const MAX_REMEMBERED: usize = 256;

/// The Kubernetes API flavor. Register it for `ConnectionKind::Kubernetes`.
#[derive(Default)]
pub struct KubeFlavor {
    /// Recent refusals of WebSocket exec/attach requests by request target.
    /// kubectl retries a refused WebSocket exec over SPDY (which the gateway
    /// does not relay); the retry is answered with the same refusal, without
    /// judging (and possibly holding for approval) the same command twice.
    /// Keyed by target only (the flavor does not see who asks): another
    /// caller's SPDY request for the same target may read this refusal's
    /// rule and message, but is refused either way, as SPDY is never relayed.
    refused: Mutex<HashMap<String, (Instant, Problem)>>,
}

impl std::fmt::Debug for KubeFlavor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KubeFlavor")
    }
}

/// The flavor, ready for a `FlavorRegistry`.
pub fn kube_flavor() -> Arc<dyn Flavor> {
    Arc::new(KubeFlavor::default())
}

fn target(head: &RequestHead<'_>) -> String {
    match head.query {
        Some(q) if !q.is_empty() => format!("{}?{q}", head.path),
        _ => head.path.to_string(),
    }
}

fn is_spdy(head: &RequestHead<'_>) -> bool {
    head.upgrade.is_some_and(|u| u.starts_with("spdy"))
}

fn parse_head(head: &RequestHead<'_>) -> Result<ApiRequest, Problem> {
    parse(head.method.as_str(), &target(head)).map_err(|e| {
        Problem::new(
            ProblemKind::BadRequest,
            format!("{e}; the request was not run"),
        )
        .with_hint("Send the API path in its plain form, as kubectl does.")
    })
}

/// The command an exec request runs: kind `Exec`, its argv shell-quoted as
/// text (so shell match keys judge it), and its API request as context (so
/// `kube` keys judge it too, in the same rule).
pub fn exec_command(method: &str, target: &str, req: &ApiRequest) -> Command {
    let (_, query) = target.split_once('?').unwrap_or((target, ""));
    let argv = query_values(query, "command");
    let mut context = vec![format!("{CONTEXT_PREFIX}{method} {target}")];
    let container = query_values(query, "container");
    let mut where_ = req.describe();
    if let Some(c) = container.first() {
        where_.push_str(&format!(" -c {c}"));
    }
    context.push(where_);
    Command {
        kind: CommandKind::Exec,
        text: sluice_shell::quote_argv(&argv),
        context,
    }
}

impl KubeFlavor {
    fn remember(&self, key: String, problem: &Problem) {
        let mut map = self.refused.locked();
        let now = Instant::now();
        map.retain(|_, (at, _)| now.duration_since(*at) < REMEMBER_REFUSAL);
        while map.len() >= MAX_REMEMBERED {
            let oldest = map
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => map.remove(&k),
                None => break,
            };
        }
        map.insert(key, (now, problem.clone()));
    }

    fn recalled(&self, key: &str) -> Option<Problem> {
        let map = self.refused.locked();
        map.get(key)
            .filter(|(at, _)| at.elapsed() < REMEMBER_REFUSAL)
            .map(|(_, p)| p.clone())
    }

    fn spdy_refusal(&self, head: &RequestHead<'_>) -> Problem {
        self.recalled(&target(head)).unwrap_or_else(|| {
            Problem::new(
                ProblemKind::NotSupported,
                "Sluice relays exec, attach and port-forward over WebSocket only; this client used SPDY",
            )
            .with_hint("Use kubectl 1.30 or newer (WebSocket is its default), and do not set KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false.")
        })
    }
}

impl Flavor for KubeFlavor {
    fn protocol(&self) -> Protocol {
        Protocol::Kubernetes
    }

    fn commands(&self, head: &RequestHead<'_>) -> Result<Vec<Command>, Problem> {
        if is_spdy(head) {
            return Err(self.spdy_refusal(head));
        }
        let req = parse_head(head)?;
        let method = head.method.as_str();
        let target = target(head);
        if req.verb == Verb::Exec {
            let argv = query_values(target.split_once('?').map_or("", |(_, q)| q), "command");
            if argv.is_empty() {
                return Err(Problem::new(
                    ProblemKind::BadRequest,
                    "an exec request names no command; the request was not run",
                )
                .with_hint("kubectl exec POD -- COMMAND [ARGS…]"));
            }
            return Ok(vec![exec_command(method, &target, &req)]);
        }
        let outer = request_command(method, &target, &req);
        if req.verb == Verb::Proxy {
            let query = target.split_once('?').map_or("", |(_, q)| q);
            return match judge_proxy(method, &req, query) {
                Proxied::KubeletRead => Ok(vec![outer]),
                Proxied::Refused(why) => Err(Problem::new(ProblemKind::Forbidden, why)
                    .with_hint("Use the API's own pod subresources (kubectl exec, logs, port-forward), or ask an administrator for an http connection to the service.")),
                Proxied::Pod {
                    method: inner_method,
                    target: inner_target,
                } => {
                    let inner = parse(&inner_method, &inner_target).map_err(|e| {
                        Problem::new(
                            ProblemKind::BadRequest,
                            format!("{e}; the request was not run"),
                        )
                    })?;
                    let via = format!("via {}", req.describe());
                    let mut command = if inner.verb == Verb::Exec {
                        exec_command(&inner_method, &inner_target, &inner)
                    } else {
                        request_command(&inner_method, &inner_target, &inner)
                    };
                    command.context.push(via);
                    Ok(vec![outer, command])
                }
            };
        }
        Ok(vec![outer])
    }

    /// A write to `pods/NAME/ephemeralcontainers` (`kubectl debug`) starts
    /// a container running the command its body names: besides its API
    /// request, each new container is judged as an exec of that command
    /// (see [`crate::ephemeral`]). A body that cannot be judged is refused.
    fn commands_with_body(
        &self,
        head: &RequestHead<'_>,
        body: Option<RequestBody<'_>>,
    ) -> Result<Vec<Command>, Problem> {
        let method = head.method.as_str();
        let req = match parse_head(head) {
            Ok(req) if !is_spdy(head) && is_ephemeral_write(method, &req) => req,
            _ => return self.commands(head),
        };
        let target = target(head);
        let refuse = |why: String| {
            Problem::new(
                ProblemKind::BadRequest,
                format!("sluice: an ephemeral container runs a command in the pod and is judged as an exec, but this request cannot be judged: {why}; the request was not run"),
            )
            .with_hint("Name the command in JSON: kubectl debug POD --image=IMAGE -it -- COMMAND [ARGS…] (without --arguments-only).")
        };
        let containers = new_containers(body.map(|b| (b.bytes, b.complete))).map_err(refuse)?;
        let mut commands = vec![request_command(method, &target, &req)];
        for c in &containers {
            let command = ephemeral::exec_command(method, &target, &req, c)
                .ok_or_else(|| refuse("its path does not name a pod".into()))?;
            commands.push(command);
        }
        Ok(commands)
    }

    /// The API server honours no method-override field.
    fn method_overrides(&self) -> bool {
        false
    }

    fn render(&self, head: Option<&RequestHead<'_>>, problem: &Problem) -> http::Response<Body> {
        if let Some(head) = head {
            if is_spdy(head) {
                if let Some(earlier) = self.recalled(&target(head)) {
                    return status_response(&earlier);
                }
            } else if head.upgrade == Some("websocket")
                && matches!(
                    problem.kind,
                    ProblemKind::Denied | ProblemKind::ApprovalRequired
                )
            {
                self.remember(target(head), problem);
            }
            if head.method == http::Method::HEAD {
                // A HEAD response has no body (over HTTP/2 a body is a protocol error).
                let (parts, _) = status_response(problem).into_parts();
                return http::Response::from_parts(parts, sluice_http::problem::full(""));
            }
        }
        status_response(problem)
    }

    fn credentials(&self, connection: &ConnectionConfig) -> Result<Injected, Problem> {
        let mut injected = default_credentials(connection)?;
        let settings = settings(connection).map_err(|e| {
            Problem::new(
                ProblemKind::Unavailable,
                format!("the connection is misconfigured: {e}; ask a Sluice administrator"),
            )
        })?;
        if let Some(secret) = &settings.token {
            let token = resolve(secret, "token")?;
            injected.header(
                header::AUTHORIZATION,
                &format!("Bearer {}", token.trim()),
                &[token.trim()],
            )?;
        }
        if let Some(key) = &settings.client_key {
            // Never sent as a header, but never to be echoed back either.
            injected.secret(&resolve(key, "client_key")?);
        }
        Ok(injected)
    }

    fn upstream_tls(
        &self,
        connection: &ConnectionConfig,
    ) -> Result<Option<Arc<rustls::ClientConfig>>, String> {
        let base = sluice_http::upstream::default_tls(connection)?;
        let settings = settings(connection)?;
        match (&settings.client_cert, &settings.client_key, base) {
            (None, None, base) => Ok(base),
            (Some(_), Some(_), None) => Err("client_cert needs an https:// upstream".into()),
            (Some(cert), Some(key), Some(base)) => {
                let certified = crate::tls::certified_key(
                    &cert.resolve().map_err(|e| format!("client_cert: {e}"))?,
                    &key.resolve().map_err(|e| format!("client_key: {e}"))?,
                )?;
                let mut config = (*base).clone();
                config.client_auth_cert_resolver = Arc::new(crate::tls::ClientCert(certified));
                Ok(Some(Arc::new(config)))
            }
            _ => Err("client_cert and client_key go together".into()),
        }
    }

    fn prepare_upstream(
        &self,
        head: &RequestHead<'_>,
        headers: &mut HeaderMap,
    ) -> Result<(), Problem> {
        // Impersonation would let a caller act as anyone the gateway's own
        // credential may impersonate: never pass it on.
        let impersonation: Vec<_> = headers
            .keys()
            .filter(|k| k.as_str().starts_with("impersonate-"))
            .cloned()
            .collect();
        for name in impersonation {
            headers.remove(name);
        }
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        // Responses are masked whole: a range could cut a value in two.
        headers.remove(header::RANGE);
        headers.remove(header::IF_RANGE);
        let api_object = parse_head(head).is_ok_and(|r| {
            r.scope == Scope::Resource
                && !matches!(
                    r.verb,
                    Verb::Log | Verb::Proxy | Verb::Exec | Verb::Attach | Verb::PortForward
                )
        });
        if head.upgrade.is_none() && api_object {
            // API objects are masked as JSON: YAML, protobuf and CBOR are not
            // asked for (a YAML reader reads JSON). Logs and proxied services
            // keep the client's Accept.
            let wanted = headers
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let json: Vec<&str> = wanted
                .split(',')
                .map(str::trim)
                .filter(|m| {
                    let essence = m.split(';').next().unwrap_or("").trim();
                    essence.eq_ignore_ascii_case("application/json")
                })
                .collect();
            let accept = if json.is_empty() {
                "application/json".to_string()
            } else {
                json.join(",")
            };
            if let Ok(v) = HeaderValue::from_str(&accept) {
                headers.insert(header::ACCEPT, v);
            }
        }
        Ok(())
    }

    fn response_plan(
        &self,
        head: &RequestHead<'_>,
        response: &http::response::Parts,
        masking: &MaskingContext<'_>,
    ) -> ResponsePlan {
        let Ok(req) = parse_head(head) else {
            return default_plan(head, response, masking);
        };
        let full_type = response
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let essence = content_type(response);
        // The API server labels a JSON watch plain `application/json`
        // (`;stream=watch` only with other encodings): the request says it.
        let watch =
            is_json(&essence) && (req.verb == Verb::Watch || full_type.contains("stream=watch"));
        let follow =
            req.verb == Verb::Log && crate::path::query_flag(head.query.unwrap_or(""), "follow");
        let streaming = watch || follow;
        let secrets = req.is_secrets();
        let credentials = req.carries_credentials();
        if !has_body(head.method, response.status) {
            return ResponsePlan::new(BodyPlan::PassThrough);
        }
        if let Some(problem) = partial_refusal(response) {
            return ResponsePlan::new(BodyPlan::Refuse(problem));
        }
        if !credentials && masking.masker.is_none() {
            return ResponsePlan::new(BodyPlan::PassThrough).streaming(streaming);
        }
        if let Some(encoding) = encoded(response) {
            return ResponsePlan::new(BodyPlan::Refuse(Problem::new(
                ProblemKind::BadGateway,
                format!("the API server sent a {encoding}-encoded response although the gateway asked for identity encoding; it must be masked, so it was not passed on"),
            )));
        }
        if is_json(&essence) {
            let masker = DocMasker {
                secrets,
                masker: masking.masker.cloned(),
            };
            let body = if watch {
                BodyPlan::Transform(Box::new(WatchTransformer::new(masker, masking.max_buffer)))
            } else {
                BodyPlan::Transform(Box::new(DocumentTransformer::new(
                    masker,
                    masking.max_buffer,
                )))
            };
            return ResponsePlan::new(body).streaming(watch);
        }
        if essence.contains("protobuf") || essence.contains("cbor") {
            // Binary encodings the detectors cannot read. Resource requests ask
            // for JSON (prepare_upstream), so a binary answer to one is refused;
            // elsewhere (the OpenAPI schema) it is passed on untouched.
            if req.scope != Scope::Resource {
                return ResponsePlan::new(BodyPlan::PassThrough);
            }
            return ResponsePlan::new(BodyPlan::Refuse(Problem::new(
                ProblemKind::BadGateway,
                format!("the API server answered with {essence:?} although the gateway asked for JSON; it must be masked, so it was not passed on"),
            )));
        }
        if credentials {
            return ResponsePlan::new(BodyPlan::Refuse(Problem::new(
                ProblemKind::BadGateway,
                format!("the API server answered a Secret or token request with {essence:?}, which the gateway cannot mask, so it was not passed on"),
            ).with_hint("Ask for JSON (kubectl does by default).")));
        }
        default_plan(head, response, masking).streaming(streaming)
    }

    /// WebSocket for exec, attach and port-forward only (directly or through
    /// the kubelet proxy): a watch or a log over WebSocket would carry
    /// objects and lines in frames no hook masks (Secrets among them).
    fn allow_upgrade(&self, head: &RequestHead<'_>) -> bool {
        head.upgrade == Some("websocket")
            && streamed_request(head)
                .is_some_and(|r| matches!(r.verb, Verb::Exec | Verb::Attach | Verb::PortForward))
    }

    fn upgrade_refusal(&self, head: &RequestHead<'_>) -> Problem {
        if is_spdy(head) {
            return self.spdy_refusal(head);
        }
        Problem::new(
            ProblemKind::NotSupported,
            "sluice: Kubernetes requests are upgraded (WebSocket) only for exec, attach and port-forward; the request was not run",
        )
        .with_hint("Watch and follow logs over plain HTTP (kubectl get -w, kubectl logs -f do).")
    }

    fn frame_hook(
        &self,
        head: &RequestHead<'_>,
        masking: &MaskingContext<'_>,
    ) -> Option<Box<dyn FrameHook>> {
        let req = streamed_request(head)?;
        if !matches!(req.verb, Verb::Exec | Verb::Attach) {
            return None;
        }
        let query = head.query.unwrap_or("");
        let interactive =
            crate::path::query_flag(query, "tty") || crate::path::query_flag(query, "stdin");
        let masker = masking.masker.cloned();
        // Without a terminal or input, output is not awaited keystroke by
        // keystroke: mask it as streams, so a value split across frames is
        // seen whole.
        let streams = match (&masker, interactive) {
            (Some(m), false) => Some([m.stream(), m.stream()]),
            _ => None,
        };
        Some(Box::new(ExecFrames {
            masker,
            streams,
            counts: MaskCounts::default(),
        }))
    }

    /// Exec and attach streams (`channel.k8s.io`): the first byte of a binary
    /// frame names the stream — 0 stdin, 1 stdout, 2 stderr, 3 the status.
    fn recorded_stream(
        &self,
        _direction: Direction,
        frame: &Frame,
    ) -> Option<(&'static str, std::ops::Range<usize>)> {
        if frame.opcode != 2 || frame.payload.len() < 2 {
            return None;
        }
        let stream = match frame.payload[0] {
            0 => "stdin",
            1 => "stdout",
            2 | 3 => "stderr",
            _ => return None,
        };
        Some((stream, 1..frame.payload.len()))
    }
}

/// The API request whose stream an upgrade carries: the request itself, or
/// the pod request a kubelet proxy request stands for.
fn streamed_request(head: &RequestHead<'_>) -> Option<ApiRequest> {
    let req = parse_head(head).ok()?;
    if req.verb == Verb::Proxy {
        return inner_request(head.method.as_str(), &req, head.query.unwrap_or(""));
    }
    Some(req)
}

/// Exec and attach output (`channel.k8s.io`: the first byte of a binary
/// frame is the stream, 1 stdout and 2 stderr) through the masker. A
/// non-interactive exec masks stdout and stderr as streams: each frame
/// releases the complete lines it holds, so a value split across frames is
/// held until its line ends, and what is held goes out before the status
/// frame (channel 3) or the close. An interactive one (tty or stdin) is
/// masked frame by frame, so prompts are not held.
struct ExecFrames {
    masker: Option<SessionMasker>,
    streams: Option<[Option<StreamMasker>; 2]>,
    counts: MaskCounts,
}

impl ExecFrames {
    /// Masks one output frame's data through its channel's stream.
    fn stream_frame(&mut self, channel: u8, frame: &mut Frame) -> bool {
        let Some(Some(stream)) = self
            .streams
            .as_mut()
            .and_then(|s| s.get_mut(usize::from(channel) - 1))
        else {
            return false;
        };
        let mut out = stream.push(&frame.payload[1..]);
        out.extend(stream.flush_lines());
        self.counts.merge(&stream.take_counts());
        let mut payload = Vec::with_capacity(out.len() + 1);
        payload.push(channel);
        payload.extend_from_slice(&out);
        frame.payload = payload;
        true
    }
}

impl FrameHook for ExecFrames {
    fn before(&mut self, direction: Direction, frame: &Frame) -> Vec<Frame> {
        let ends = frame.opcode == 8 || (frame.opcode == 2 && frame.payload.first() == Some(&3));
        if direction != Direction::UpstreamToClient || !ends {
            return Vec::new();
        }
        let Some(streams) = self.streams.as_mut() else {
            return Vec::new();
        };
        let mut early = Vec::new();
        for (channel, stream) in [1u8, 2].into_iter().zip(streams.iter_mut()) {
            let Some(stream) = stream else { continue };
            let rest = stream.flush();
            self.counts.merge(&stream.take_counts());
            if !rest.is_empty() {
                let mut payload = vec![channel];
                payload.extend_from_slice(&rest);
                early.push(Frame {
                    fin: true,
                    opcode: 2,
                    payload,
                });
            }
        }
        early
    }

    fn frame(&mut self, direction: Direction, frame: &mut Frame) -> Result<(), String> {
        if self.masker.is_none() || direction != Direction::UpstreamToClient {
            return Ok(());
        }
        match frame.opcode {
            2 => {}
            // The base64 channel protocols carry output in text frames the
            // detectors cannot read: with masking on they are not relayed.
            1 => return Err("text-framed (base64) exec output cannot be masked".into()),
            _ => return Ok(()),
        }
        let channel = match frame.payload.first() {
            Some(&c @ (1 | 2)) => c,
            _ => return Ok(()),
        };
        if self.stream_frame(channel, frame) {
            return Ok(());
        }
        let Some(masker) = &self.masker else {
            return Ok(());
        };
        if let Some((m, counts)) = masker.mask_bytes(&frame.payload[1..]) {
            let mut payload = Vec::with_capacity(m.len() + 1);
            payload.push(frame.payload[0]);
            payload.extend_from_slice(&m);
            frame.payload = payload;
            self.counts.merge(&counts);
        }
        Ok(())
    }

    fn counts(&self) -> MaskCounts {
        self.counts.clone()
    }
}

#[cfg(test)]
mod tests;

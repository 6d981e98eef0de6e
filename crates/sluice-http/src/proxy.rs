//! One client connection's requests: authenticate, route, decide, forward
//! with the injected credential, mask, record.
//!
//! **Sessions.** A session is one client connection + one token + one
//! Sluice connection: the first request opens it (an `HttpSession` admitted
//! by `Gateway::serve`, see `session.rs`), every request on it is a command
//! (re-admitted by `Gateway::readmit`), and it ends when the client connection
//! closes (its handle drops) or when core ends it (token expiry, revocation,
//! an operator): then further requests on it get 401 with the reason and
//! the client connection is closed once in-flight requests finish.

use crate::body::{self, BodyStats, CountingBody, Redactor, TextMasking};
use crate::flavor::{Body, BodyPlan, BodyTransformer, Flavor, MaskingContext, RequestHead};
use crate::overrides::scan::{BodyScanner, Found};
use crate::path::{has_trailing_slash, NormalPath};
use crate::problem::{full, Problem, ProblemKind};
use crate::server::{empty, render_default, Shared};
use crate::session::{refusal_problem, HttpSession, Live, SessionKey, Sessions};
use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use sha2::{Digest, Sha256};
use sluice_core::masking::SessionMasker;
use sluice_core::model::{Decision, Identity, Outcome};
use sluice_core::session::OutcomeRecorder;
use sluice_core::sync::MutexExt;
use sluice_core::{Credentials, Refusal, RequestOpening, SessionHandle, SessionRequest};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// A streaming response's held-back bytes are released after this much upstream silence.
const STREAM_IDLE_FLUSH: Duration = Duration::from_millis(50);

/// The client's request body while the gateway has not passed it on.
type Unread = Arc<Mutex<Option<Incoming>>>;

/// One client connection.
pub(crate) struct ClientConn {
    shared: Arc<Shared>,
    peer: SocketAddr,
    sessions: Sessions,
    /// Sessions core ended, with the reason told to later requests.
    ended: Mutex<HashMap<SessionKey, String>>,
    watchers: Mutex<Vec<tokio::task::AbortHandle>>,
    ended_notify: Arc<Notify>,
    /// Requests being answered, and when the last one started or ended
    /// (the idle timeout closes a connection with neither for a while).
    in_flight: std::sync::atomic::AtomicUsize,
    last_active: Mutex<Instant>,
}

impl Drop for ClientConn {
    fn drop(&mut self) {
        {
            let w = self.watchers.locked();
            for h in w.iter() {
                h.abort();
            }
        }
    }
}

/// A problem, and the flavor (and head) to render it with.
struct Refused {
    problem: Problem,
    flavor: Option<Arc<dyn Flavor>>,
}

impl From<Problem> for Refused {
    fn from(problem: Problem) -> Self {
        Refused {
            problem,
            flavor: None,
        }
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) and proxy headers a client must not
/// pass to the upstream; `Authorization` carries the Sluice token.
const STRIPPED_REQUEST: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "authorization",
    "host",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-real-ip",
];

const STRIPPED_RESPONSE: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes the listed headers and any named in `Connection`.
fn strip_hop_by_hop(headers: &mut HeaderMap, list: &[&str]) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in list {
        headers.remove(*n);
    }
}

/// The protocol a request asks to upgrade to (lowercase), HTTP/1.1 only.
fn upgrade_protocol(parts: &http::request::Parts) -> Option<String> {
    if parts.version != Version::HTTP_11 {
        return None;
    }
    let connection_upgrade = parts
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if !connection_upgrade {
        return None;
    }
    parts
        .headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase())
}

fn token_key(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl ClientConn {
    pub fn new(shared: Arc<Shared>, peer: SocketAddr) -> Self {
        ClientConn {
            shared,
            peer,
            sessions: Sessions::default(),
            ended: Mutex::default(),
            watchers: Mutex::default(),
            ended_notify: Arc::new(Notify::new()),
            in_flight: Default::default(),
            last_active: Mutex::new(Instant::now()),
        }
    }

    /// How long no request has been in flight (zero while one is).
    pub fn idle_for(&self) -> Duration {
        if self.in_flight.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            return Duration::ZERO;
        }
        self.last_active.locked().elapsed()
    }

    fn activity(&self, delta: isize) {
        use std::sync::atomic::Ordering::SeqCst;
        if delta > 0 {
            self.in_flight.fetch_add(1, SeqCst);
        } else {
            self.in_flight.fetch_sub(1, SeqCst);
        }
        *self.last_active.locked() = Instant::now();
    }

    pub fn ended_notify(&self) -> Arc<Notify> {
        self.ended_notify.clone()
    }

    /// Serves one request; every failure becomes a problem response. Boxed
    /// here so that its `Send`-ness is checked where the types are concrete.
    pub fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response<Body>> + Send + 'static>> {
        Box::pin(async move {
            // A guard, so that a request whose future is dropped (an HTTP/2
            // stream reset mid-request) still counts as finished.
            let _in_flight = InFlight::enter(self.clone());
            self.clone().answer(req).await
        })
    }

    async fn answer(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        {
            let method = req.method().clone();
            let path = req.uri().path().to_string();
            let (parts, body) = req.into_parts();
            let unread: Unread = Arc::new(Mutex::new(Some(body)));
            let response = match self
                .proxy(Request::from_parts(parts, ()), unread.clone())
                .await
            {
                Ok(r) => r,
                Err(Refused { problem, flavor }) => {
                    if problem.status.is_server_error() {
                        tracing::warn!(message = "HTTP request failed.", client = %self.peer, %method, path = %truncate(&path, 200), status = problem.status.as_u16(), detail = %problem.detail);
                    } else {
                        tracing::info!(message = "HTTP request refused.", client = %self.peer, %method, path = %truncate(&path, 200), status = problem.status.as_u16(), detail = %problem.detail);
                    }
                    match flavor {
                        Some(f) => f.render(None, &problem),
                        None => render_default(&problem),
                    }
                }
            };
            // A request body the gateway did not read (a refusal, a body over
            // the limit) is dropped only after the response is sent: HTTP/2
            // then resets the stream with NO_ERROR, which clients accept,
            // instead of CANCEL, which they report as a failure.
            // A response to HEAD has no body (over HTTP/2 one is a protocol
            // error): problems the gateway writes itself are cut to their head.
            let response = if method == http::Method::HEAD {
                let (parts, _) = response.into_parts();
                Response::from_parts(parts, empty())
            } else {
                response
            };
            let held = unread.locked().take();
            match held {
                Some(body) => {
                    let (parts, inner) = response.into_parts();
                    Response::from_parts(parts, body::Holding::new(inner, body).boxed())
                }
                None => response,
            }
        }
    }

    /// Core's admission for this request's token. Every request goes through
    /// it, keep-alive and HTTP/2 alike: nothing about a token is cached on the
    /// client connection, so a revoked or expired token is refused on the
    /// very next request.
    async fn identity(&self, token: &str) -> Result<Identity, Problem> {
        self
            .shared
            .gateway
            .authenticate(&Credentials {
                user: String::new(),
                token: token.to_string(),
            })
            .await
            .map_err(|e| {
                // The connection (and so HTTP vs Kubernetes) is not known before the token is.
                sluice_core::metrics::session_refused(
                    sluice_core::Protocol::Http,
                    &Refusal::Authentication(e.to_string()),
                );
                Problem::new(
                    ProblemKind::Unauthenticated,
                    format!("sluice: authentication failed: {e}"),
                )
                .with_hint("Send a valid Sluice token as Authorization: Bearer <token> (sluice token issue, or your identity provider's access token).")
            })
    }

    async fn session(
        &self,
        token: &str,
        connection: &sluice_core::config::ConnectionConfig,
        flavor: &Arc<dyn Flavor>,
    ) -> Result<Arc<Live>, Problem> {
        let key: SessionKey = (token_key(token), connection.name.clone());
        let cached = self.sessions.locked().get(&key).cloned();
        if let Some(live) = cached {
            // Core decides, on every request, whether the session still admits this token.
            let credentials = SessionRequest::bearer(token, &connection.name).credentials;
            return match self
                .shared
                .gateway
                .readmit(&live.handle, &credentials)
                .await
            {
                Ok(()) => Ok(live),
                Err(refusal) => Err(match live.handle.end_reason_now() {
                    Some(reason) => session_ended(&reason),
                    None => refusal_problem(&refusal),
                }),
            };
        }
        let ended = self.ended.locked().get(&key).cloned();
        if let Some(reason) = ended {
            // Authenticate first, so that ended sessions are not probed anonymously.
            self.identity(token).await?;
            return Err(session_ended(&reason));
        }
        self.open(key, token, connection, flavor).await
    }

    /// Opens the session through core's admission (`Gateway::serve`, as
    /// every protocol's); its task lives as long as this client connection.
    async fn open(
        &self,
        key: SessionKey,
        token: &str,
        connection: &sluice_core::config::ConnectionConfig,
        flavor: &Arc<dyn Flavor>,
    ) -> Result<Arc<Live>, Problem> {
        let (opening, answer) =
            RequestOpening::new(SessionRequest::bearer(token, &connection.name));
        let session = HttpSession {
            opening,
            key,
            connection: connection.clone(),
            flavor: flavor.clone(),
            shared: self.shared.clone(),
            sessions: self.sessions.clone(),
            ended_notify: self.ended_notify.clone(),
        };
        let gateway = self.shared.gateway.clone();
        let (protocol, peer) = (flavor.protocol(), self.peer.to_string());
        let task = tokio::spawn(async move {
            if let Err(e) = gateway.serve(session, protocol, &peer).await {
                tracing::warn!(message = "An HTTP session failed.", client = %peer, error = %e);
            }
        });
        {
            // Tasks of refused or unused sessions end on their own.
            let mut watchers = self.watchers.locked();
            watchers.retain(|w| !w.is_finished());
            watchers.push(task.abort_handle());
        }
        answer.await.map_err(|_| {
            Problem::new(
                ProblemKind::Unavailable,
                "sluice: the session could not be opened; retry",
            )
        })?
    }

    /// Forgets a session core ended, so later requests get its reason.
    fn retire(&self, key: &SessionKey, reason: String) {
        self.sessions.locked().remove(key);
        {
            let mut m = self.ended.locked();
            m.insert(key.clone(), reason);
        }
    }

    /// One request: admitted on its session, judged, sent upstream with the
    /// injected credential, answered (masked, redacted, recorded).
    async fn proxy(&self, req: Request<()>, unread: Unread) -> Result<Response<Body>, Refused> {
        let started = Instant::now();
        let (mut parts, ()) = req.into_parts();
        let limits = self.shared.limits.clone();
        let client = self.client_request(&mut parts)?;
        let route = self.route(parts.uri.path(), client.client_host.as_deref())?;
        let config = self.shared.gateway.config();
        let (connection, flavor) = self.target(&config, &route.name, &client.token).await?;
        let key: SessionKey = (token_key(&client.token), connection.name.clone());
        let live = self
            .live_session(&key, &client.token, connection, &flavor)
            .await
            .map_err(|problem| Refused {
                problem,
                flavor: Some(flavor.clone()),
            })?;

        let decoded_path = route.rest.decoded(route.trailing);
        let encoded_path = route.rest.encoded(route.trailing);
        let query = parts.uri.query().map(str::to_string);
        let head = RequestHead::new(
            &parts.method,
            &decoded_path,
            query.as_deref(),
            &client.headers,
            connection,
        )
        .with_version(parts.version)
        .with_upgrade(client.upgrade.as_deref());
        let render = |problem: Problem| -> Response<Body> { flavor.render(Some(&head), &problem) };
        if let Some(problem) = refused_before_judging(&head, flavor.as_ref(), &limits) {
            return Ok(render(problem));
        }
        // The gateway's one masker, as every protocol uses it.
        let masker = SessionMasker::active(live.handle.masker(), live.handle.info());
        let masking_engine = masker.as_ref();
        let ctx = MaskingContext::new(masking_engine, live.handle.info(), limits.max_masked_body);
        let frame_hook = match upgrade_hook(&head, flavor.as_ref(), &ctx) {
            Ok(hook) => hook,
            Err(problem) => return Ok(render(problem)),
        };
        let timeout = live.upstream.timeout.unwrap_or(limits.default_timeout);
        let (forwarded, body_start) =
            match judge(&head, flavor.as_ref(), &live, &unread, timeout, started).await {
                Ok(judged) => judged,
                Err(problem) => return Ok(render(problem)),
            };
        let (body_prefix, body_scan) = body_start.map_or((None, None), |b| (Some(b.bytes), b.scan));

        let client_upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
        let outgoing = Outgoing {
            head: &head,
            flavor: &flavor,
            live: &live,
            client: &client,
            encoded_path: &encoded_path,
            masking: masking_engine.is_some(),
            body_prefix,
            body_scan,
            unread: &unread,
            timeout,
        };
        let response = match self
            .send_upstream(outgoing, &key, &forwarded, started)
            .await
        {
            Ok(response) => response,
            Err(problem) => return Ok(render(problem)),
        };
        if client.upgrade.is_some() && response.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(problem) = extension_negotiated(response.headers()) {
                let recorder = live.handle.recorder();
                finish_all(
                    &recorder,
                    &forwarded,
                    refused_outcome(&problem.detail, started),
                );
                return Ok(render(problem));
            }
            let hook = self.recording_hook(frame_hook, &flavor, &live, &forwarded);
            return Ok(self.relay_upgrade(
                response,
                client_upgrade,
                hook,
                live.clone(),
                forwarded,
                started,
            ));
        }
        let answer = Answer {
            head: &head,
            flavor: &flavor,
            masking_engine,
            by_host: route.by_host,
            forwarded,
            started,
            timeout,
        };
        answer.respond(response, live, &limits, &render).await
    }

    /// The connection `name` names and its flavor; an unknown name is told
    /// only to an authenticated caller.
    async fn target<'c>(
        &self,
        config: &'c sluice_core::Config,
        name: &str,
        token: &str,
    ) -> Result<(&'c sluice_core::config::ConnectionConfig, Arc<dyn Flavor>), Refused> {
        let found = config
            .connection(name)
            .and_then(|c| Some((c, self.shared.flavors.get(c.kind)?.clone())));
        match found {
            Some(target) => Ok(target),
            None => {
                // Authenticate first, so that names are not probed anonymously.
                self.identity(token).await?;
                Err(Problem::new(
                    ProblemKind::NotFound,
                    format!("sluice: no HTTP connection named {name:?} is available to you"),
                )
                .into())
            }
        }
    }

    /// The request's session, unless core has ended it.
    async fn live_session(
        &self,
        key: &SessionKey,
        token: &str,
        connection: &sluice_core::config::ConnectionConfig,
        flavor: &Arc<dyn Flavor>,
    ) -> Result<Arc<Live>, Problem> {
        let live = self.session(token, connection, flavor).await?;
        match live.ended_reason() {
            Some(reason) => {
                self.retire(key, reason.clone());
                Err(session_ended(&reason))
            }
            None => Ok(live),
        }
    }

    /// Sends the judged request upstream; a failure, or the session ending
    /// meanwhile, records the commands as not completed and is the problem.
    async fn send_upstream(
        &self,
        out: Outgoing<'_>,
        key: &SessionKey,
        forwarded: &[u64],
        started: Instant,
    ) -> Result<Response<Incoming>, Problem> {
        let recorder = out.live.handle.recorder();
        let not_sent = |problem: Problem| {
            finish_all(
                &recorder,
                forwarded,
                refused_outcome(&problem.detail, started),
            );
            problem
        };
        let upgrade = out.client.upgrade.as_deref();
        let mut up_headers = self.upstream_headers(
            &out.client.headers,
            upgrade,
            out.live,
            out.client.client_host.as_deref(),
            out.masking,
        );
        out.flavor
            .prepare_upstream(out.head, &mut up_headers)
            .map_err(not_sent)?;
        let uri = out
            .live
            .upstream
            .uri(out.encoded_path, out.head.query)
            .map_err(|e| {
                not_sent(Problem::new(
                    ProblemKind::BadRequest,
                    format!("sluice: the upstream request could not be formed: {e}"),
                ))
            })?;
        let limits = &self.shared.limits;
        // An upgrade sends no body; the client's stays held until the answer.
        let held = upgrade
            .is_none()
            .then(|| out.unread.locked().take())
            .flatten();
        // The length the upstream is told frames the body it receives.
        let declared = up_headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let up_body: Body = match held {
            Some(body) => body::Capped::new(body, limits.max_request_body, out.unread.clone())
                .with_prefix(out.body_prefix)
                .with_scan(out.body_scan, declared)
                .boxed(),
            None => empty(),
        };
        let mut up_req = Request::new(up_body);
        *up_req.method_mut() = out.head.method.clone();
        *up_req.uri_mut() = uri;
        *up_req.version_mut() = Version::HTTP_11;
        *up_req.headers_mut() = up_headers;
        let client = out.live.upstream.client(upgrade.is_some());
        let sent = tokio::select! {
            r = tokio::time::timeout(out.timeout, client.request(up_req)) => r,
            reason = out.live.ended() => {
                self.retire(key, reason.clone());
                return Err(not_sent(session_ended(&reason)));
            }
        };
        match sent {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => match source_of::<body::OverrideInBody>(&e) {
                // Stopped mid-upload: the upstream, which dispatches a
                // request once its body is whole, never had it.
                Some(found) => {
                    let problem = override_refusal(&found.name, out.head.method);
                    tracing::info!(message = "A method-override field was found in a request body as it streamed; the upload was stopped.", connection = %out.head.connection.name, field = %truncate(&found.name, 40), at = found.at);
                    finish_all(
                        &recorder,
                        forwarded,
                        refused_outcome(
                            &format!(
                                "{} (found as the body streamed upstream; the upload was stopped after {} bytes, before the request was whole)",
                                problem.detail, found.at
                            ),
                            started,
                        ),
                    );
                    Err(problem)
                }
                None => Err(not_sent(upstream_failure(
                    Some(e),
                    &out.head.connection.name,
                    out.timeout,
                    limits.max_request_body,
                ))),
            },
            Err(_) => Err(not_sent(upstream_failure(
                None,
                &out.head.connection.name,
                out.timeout,
                limits.max_request_body,
            ))),
        }
    }

    /// What the gateway keeps of the client's request head: the token (taken
    /// out, never forwarded), the upgrade asked for, the host the client
    /// asked for (HTTP/2's :authority, else Host), and the headers cleaned of
    /// hop-by-hop and method/URL-override headers (the upstream runs the
    /// request line the gateway judges).
    fn client_request(&self, parts: &mut http::request::Parts) -> Result<ClientRequest, Problem> {
        let token = sluice_core::token::bearer_from_header(
            parts.headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()),
        )
        .map_err(|e| {
            Problem::new(ProblemKind::Unauthenticated, format!("sluice: {e}"))
                .with_hint("Send your Sluice token as Authorization: Bearer <token> (sluice token issue, or your identity provider's access token).")
        })?
        .to_string();
        parts.headers.remove(header::AUTHORIZATION);
        let upgrade = upgrade_protocol(parts);
        let client_host = parts
            .uri
            .authority()
            .map(|a| a.as_str().to_string())
            .or_else(|| {
                parts
                    .headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_string)
            });
        let mut headers = std::mem::take(&mut parts.headers);
        strip_hop_by_hop(&mut headers, STRIPPED_REQUEST);
        let dropped = crate::overrides::strip_override_headers(&mut headers);
        if !dropped.is_empty() {
            tracing::info!(message = "Method/URL override headers dropped.", client = %self.peer, headers = ?dropped);
        }
        Ok(ClientRequest {
            token,
            upgrade,
            client_host,
            headers,
        })
    }

    /// Which connection a request is for: a configured host, else the first
    /// path segment; and the (normalised) path after it.
    fn route(&self, raw_path: &str, client_host: Option<&str>) -> Result<Route, Problem> {
        let normal = NormalPath::parse(raw_path)
            .map_err(|e| Problem::new(ProblemKind::BadRequest, format!("sluice: {e}")))?;
        let trailing = has_trailing_slash(raw_path);
        let host_name = client_host
            .map(|h| {
                h.rsplit_once(':')
                    .filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit()))
                    .map_or(h, |(n, _)| n)
            })
            .map(|h| {
                h.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_ascii_lowercase()
            });
        let by_host = host_name
            .as_deref()
            .and_then(|h| self.shared.route_host(h))
            .map(str::to_string);
        let (name, rest) = match by_host.clone() {
            Some(name) => (name, normal),
            None => {
                let (first, rest) = normal.split_first().ok_or_else(|| {
                    Problem::new(
                        ProblemKind::NotFound,
                        "sluice: name a connection in the path: https://gateway/<connection>/…",
                    )
                })?;
                (first.to_string(), rest)
            }
        };
        Ok(Route {
            name,
            rest,
            trailing,
            by_host: by_host.is_some(),
        })
    }

    /// The upstream request's headers: the client's (already cleaned), the
    /// upgrade, Host, the X-Forwarded-* set, the injected credential, and
    /// identity encoding when the body must be read (masking or echoes).
    fn upstream_headers(
        &self,
        headers: &HeaderMap,
        upgrade: Option<&str>,
        live: &Live,
        client_host: Option<&str>,
        masking: bool,
    ) -> HeaderMap {
        let mut up_headers = headers.clone();
        if let Some(proto) = upgrade {
            up_headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            if let Ok(v) = HeaderValue::from_str(proto) {
                up_headers.insert(header::UPGRADE, v);
            }
            // Every relayed frame is decoded and re-encoded (to mask and
            // record it): compressed frames (`permessage-deflate`) would be
            // read as their compressed bytes, so no extension is offered.
            up_headers.remove("sec-websocket-extensions");
        }
        if let Ok(v) = HeaderValue::from_str(live.upstream.authority.as_str()) {
            up_headers.insert(header::HOST, v);
        }
        if let Ok(v) = HeaderValue::from_str(&self.peer.ip().to_string()) {
            up_headers.insert("x-forwarded-for", v);
        }
        up_headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        if let Some(v) = client_host.and_then(|h| HeaderValue::from_str(h).ok()) {
            up_headers.insert("x-forwarded-host", v);
        }
        for (n, v) in live.injected.headers() {
            up_headers.insert(n.clone(), v.clone());
        }
        if masking || !live.injected.secrets().is_empty() {
            // Compressed bodies cannot be masked or searched for echoes.
            up_headers.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
            // Nor can a part of a body: a range may cut a CSV from its
            // header or a value in two. Whole bodies only.
            up_headers.remove(header::RANGE);
            up_headers.remove(header::IF_RANGE);
        }
        up_headers
    }

    /// The flavor's frame hook, with the session recording behind it.
    fn recording_hook(
        &self,
        inner: Option<Box<dyn crate::FrameHook>>,
        flavor: &Arc<dyn Flavor>,
        live: &Live,
        commands: &[u64],
    ) -> Option<Box<dyn crate::FrameHook>> {
        let Some(&command_id) = commands.first() else {
            return inner;
        };
        let recorder = sluice_core::audit::StreamRecorder::new(
            self.shared.gateway.store().clone(),
            live.handle.id(),
            command_id,
        )
        .with_limit(UPGRADE_RECORD_LIMIT);
        Some(Box::new(crate::ws::RecordingHook {
            inner,
            recorder,
            flavor: flavor.clone(),
        }))
    }

    fn relay_upgrade(
        &self,
        response: Response<Incoming>,
        client_upgrade: Option<hyper::upgrade::OnUpgrade>,
        hook: Option<Box<dyn crate::FrameHook>>,
        live: Arc<Live>,
        commands: Vec<u64>,
        started: Instant,
    ) -> Response<Body> {
        let (mut rparts, rbody) = response.into_parts();
        let mut upstream_response = Response::from_parts(rparts.clone(), rbody);
        let upstream_upgrade = hyper::upgrade::on(&mut upstream_response);
        // Keep Connection/Upgrade on a 101: they are the switch itself.
        for n in [
            "keep-alive",
            "proxy-connection",
            "te",
            "trailer",
            "transfer-encoding",
        ] {
            rparts.headers.remove(n);
        }
        let recorder = live.handle.recorder();
        tokio::spawn(async move {
            let (client, upstream) = match (client_upgrade, upstream_upgrade.await) {
                (Some(c), Ok(u)) => match c.await {
                    Ok(c) => (c, u),
                    Err(e) => {
                        finish_all(
                            &recorder,
                            &commands,
                            refused_outcome(&format!("client upgrade failed: {e}"), started),
                        );
                        return;
                    }
                },
                _ => {
                    finish_all(
                        &recorder,
                        &commands,
                        refused_outcome("the upgrade did not complete", started),
                    );
                    return;
                }
            };
            let stats = crate::ws::relay(
                hyper_util::rt::TokioIo::new(client),
                hyper_util::rt::TokioIo::new(upstream),
                hook,
                live.ended(),
            )
            .await;
            let outcome = Outcome {
                rows: stats.client_frames + stats.upstream_frames,
                bytes: stats.client_bytes + stats.upstream_bytes,
                tag: Some(format!(
                    "HTTP 101 upgraded: {} frames / {} bytes from the client, {} frames / {} bytes from the upstream",
                    stats.client_frames, stats.client_bytes, stats.upstream_frames, stats.upstream_bytes
                )),
                error: stats.error.clone(),
                duration_us: started.elapsed().as_micros() as u64,
                masked: stats.masked.iter().map(|(k, v)| (k.to_string(), v)).collect(),
                ..Default::default()
            };
            finish_all(&recorder, &commands, outcome);
            drop(live);
        });
        Response::from_parts(rparts, empty())
    }
}

/// The client's request head as the gateway keeps it (see `client_request`).
struct ClientRequest {
    token: String,
    upgrade: Option<String>,
    client_host: Option<String>,
    headers: HeaderMap,
}

/// Where a request goes (see `route`).
struct Route {
    name: String,
    rest: NormalPath,
    trailing: bool,
    /// Routed by a configured host (the path keeps its first segment).
    by_host: bool,
}

/// A judged request on its way upstream.
struct Outgoing<'a> {
    head: &'a RequestHead<'a>,
    flavor: &'a Arc<dyn Flavor>,
    live: &'a Arc<Live>,
    client: &'a ClientRequest,
    encoded_path: &'a str,
    /// Whether the gateway masks answers (compressed bodies are declined).
    masking: bool,
    /// The body's start, read before judging, sent first.
    body_prefix: Option<Bytes>,
    /// Checks the rest for method-override fields as it streams.
    body_scan: Option<BodyScanner>,
    unread: &'a Unread,
    timeout: Duration,
}

/// What answering the upstream's response needs.
struct Answer<'a> {
    head: &'a RequestHead<'a>,
    flavor: &'a Arc<dyn Flavor>,
    masking_engine: Option<&'a SessionMasker>,
    by_host: bool,
    forwarded: Vec<u64>,
    started: Instant,
    timeout: Duration,
}

impl Answer<'_> {
    /// The response to the client: redirects kept on the gateway, headers
    /// and body redacted of the injected credential and masked, outcomes
    /// recorded when the body ends.
    async fn respond(
        self,
        response: Response<Incoming>,
        live: Arc<Live>,
        limits: &crate::Limits,
        render: &(dyn Fn(Problem) -> Response<Body> + Sync),
    ) -> Result<Response<Body>, Refused> {
        let head = self.head;
        let (mut rparts, rbody) = response.into_parts();
        // A redirect into the upstream is turned into one through the gateway
        // (as nginx's proxy_redirect does), so clients stay on Sluice.
        let prefix = if self.by_host {
            String::new()
        } else {
            format!("/{}", head.connection.name)
        };
        let (header_redactions, header_masked) =
            response_headers(&mut rparts, &live, &prefix, self.masking_engine);
        let ctx = MaskingContext::new(
            self.masking_engine,
            live.handle.info(),
            limits.max_masked_body,
        );
        let mut plan = self.flavor.response_plan(head, &rparts, &ctx);
        if self.masking_engine.is_some() || !live.injected.secrets().is_empty() {
            if let Some(problem) = crate::masking::partial_refusal(&rparts) {
                plan.body = BodyPlan::Refuse(problem);
            }
        }
        // An injected credential echoed in a compressed body could not be
        // found: such a body is refused like one that needs masking.
        if !live.injected.secrets().is_empty()
            && crate::masking::has_body(head.method, rparts.status)
        {
            if let Some(encoding) = crate::masking::encoded(&rparts) {
                if !matches!(plan.body, BodyPlan::Refuse(_)) {
                    plan.body = BodyPlan::Refuse(Problem::new(
                        ProblemKind::BadGateway,
                        format!("sluice: the upstream sent a {encoding}-encoded body although the gateway asked for identity encoding; it could not be checked for the connection's credential, so it was not passed on"),
                    ));
                }
            }
        }
        let status = rparts.status;
        let finish = Finisher {
            recorder: live.handle.recorder(),
            commands: self.forwarded,
            status,
            started: self.started,
            header_redactions,
            header_masked,
        };
        let upstream_body: Body = rbody.map_err(|e| Box::new(e) as crate::BoxError).boxed();
        // No body (HEAD, 204, 304): nothing to redact, and the length header
        // describes the representation, so it stays.
        let redactor = if crate::masking::has_body(head.method, status) {
            live.redactor.clone()
        } else {
            None
        };
        respond_body(
            plan,
            rparts,
            upstream_body,
            redactor,
            finish,
            self.masking_engine,
            live,
            limits,
            self.timeout,
            render,
        )
        .await
    }
}

/// What is refused before anything is judged: an upgrade the connection does
/// not allow, a declared body over the limit, a method-override parameter.
fn refused_before_judging(
    head: &RequestHead<'_>,
    flavor: &dyn Flavor,
    limits: &crate::Limits,
) -> Option<Problem> {
    if head.upgrade.is_some() && !flavor.allow_upgrade(head) {
        return Some(flavor.upgrade_refusal(head));
    }
    let declared = head
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limits.max_request_body) {
        return Some(too_large(limits.max_request_body));
    }
    let name = head
        .query
        .and_then(crate::overrides::method_override_param)?;
    Some(
        Problem::new(
            ProblemKind::BadRequest,
            format!(
                "sluice: the query parameter {:?} asks the upstream to run another method than {}; the request was not sent",
                truncate(&name, 40),
                head.method
            ),
        )
        .with_hint("Send the request with the method itself instead of a method-override parameter."),
    )
}

/// The flavor's frame hook for an upgrade (`None` without one). Fails
/// closed: when the session masks responses and no hook understands the
/// upgraded stream, its frames would go out unmasked, so it is refused.
fn upgrade_hook(
    head: &RequestHead<'_>,
    flavor: &dyn Flavor,
    masking: &MaskingContext<'_>,
) -> Result<Option<Box<dyn crate::FrameHook>>, Problem> {
    if head.upgrade.is_none() {
        return Ok(None);
    }
    let hook = flavor.frame_hook(head, masking);
    if hook.is_none() && masking.masker.is_some() {
        return Err(Problem::new(
            ProblemKind::NotSupported,
            "sluice: responses on this connection are masked, and this upgraded connection's frames cannot be; the upgrade was refused and nothing was sent upstream",
        )
        .with_hint("Make the request without upgrading, or ask a Sluice administrator for a connection without masking."));
    }
    Ok(hook)
}

/// A WebSocket extension the upstream negotiated although the gateway
/// offered none (`permessage-deflate` frames could not be read to mask or
/// record): the switch is refused.
fn extension_negotiated(headers: &HeaderMap) -> Option<Problem> {
    let named = headers.get("sec-websocket-extensions")?;
    let named = named.to_str().unwrap_or("unreadable");
    Some(Problem::new(
        ProblemKind::BadGateway,
        format!(
            "sluice: the upstream switched protocols with the WebSocket extension {:?}, which the gateway did not offer and cannot inspect; the connection was not relayed",
            truncate(named, 80)
        ),
    ))
}

/// Turns the request into commands and decides them all (every one must be
/// forwarded). The body's start is read first, so that the command (and an
/// approval of it) is bound to the body's digest, not only to the request
/// line; a body over the digest limit streams, marked unbound. Returns the
/// forwarded command ids and the body's start already read.
async fn judge(
    head: &RequestHead<'_>,
    flavor: &dyn Flavor,
    live: &Live,
    unread: &Unread,
    timeout: Duration,
    started: Instant,
) -> Result<(Vec<u64>, Option<BodyStart>), Problem> {
    let body = match head.upgrade {
        None => {
            read_body_start(
                unread,
                head.headers,
                head.method,
                flavor.method_overrides(),
                timeout,
            )
            .await?
        }
        Some(_) => None,
    };
    let mut commands = flavor.commands_with_body(
        head,
        body.as_ref()
            .map(|b| crate::RequestBody::new(&b.bytes, b.complete)),
    )?;
    if commands.is_empty() {
        return Err(Problem::new(
            ProblemKind::BadRequest,
            "sluice: the request could not be turned into a command",
        ));
    }
    if let Some(b) = &body {
        let line = body::body_context(&b.bytes, b.complete);
        for command in &mut commands {
            command.context.push(line.clone());
        }
    }
    let forwarded = decide_all(&live.handle, commands, started).await?;
    Ok((forwarded, body))
}

/// The start of a request body, read before the request is judged.
struct BodyStart {
    /// Up to the digest limit (and a little past it when not `complete`).
    bytes: Bytes,
    /// Whether `bytes` is the whole body.
    complete: bool,
    /// For the rest of a longer POST body of a type that may carry a
    /// method override: the scanner that checks it as it streams (it has
    /// read `bytes`).
    scan: Option<BodyScanner>,
}

/// The response body by its plan: refused, passed through, masked as a
/// document, transformed (documents whole, streams as they come), or
/// streamed through the text masker; echoed credentials redacted throughout.
#[allow(clippy::too_many_arguments)]
async fn respond_body(
    plan: crate::flavor::ResponsePlan,
    mut rparts: http::response::Parts,
    upstream_body: Body,
    redactor: Option<Redactor>,
    finish: Finisher,
    masking_engine: Option<&SessionMasker>,
    live: Arc<Live>,
    limits: &crate::Limits,
    timeout: Duration,
    render: &(dyn Fn(Problem) -> Response<Body> + Sync),
) -> Result<Response<Body>, Refused> {
    match plan.body {
        BodyPlan::Refuse(problem) => {
            finish.failed(problem.detail.clone(), problem.status);
            Ok(render(problem))
        }
        BodyPlan::PassThrough if redactor.is_none() => {
            let body = CountingBody::new(upstream_body, move |stats| finish.done(stats, None));
            Ok(Response::from_parts(rparts, body.boxed()))
        }
        BodyPlan::Json { key_paths } => {
            let Some(masker) = masking_engine else {
                // Nothing to mask but echoes: stream it.
                return Ok(stream_response(
                    rparts,
                    upstream_body,
                    None,
                    redactor,
                    false,
                    finish,
                    live,
                ));
            };
            let (bytes, mut stats) =
                match read_document(upstream_body, limits.max_masked_body, timeout, redactor).await
                {
                    Ok(read) => read,
                    Err(e) => {
                        let problem = masking_failed(&e);
                        finish.failed(e, problem.status);
                        return Ok(render(problem));
                    }
                };
            match body::mask_json_document(masker, &key_paths, &bytes) {
                Ok((out, counts)) => {
                    stats.masked.merge(&counts);
                    stats.saw(&out);
                    rparts.headers.remove(header::CONTENT_LENGTH);
                    finish.done(stats, None);
                    Ok(Response::from_parts(rparts, full(out)))
                }
                Err(e) => {
                    let problem = masking_failed(&e.reason);
                    finish.failed(e.reason, problem.status);
                    Ok(render(problem))
                }
            }
        }
        BodyPlan::Transform(mut transformer) if !plan.streaming => {
            // A document transformer: run it to the end before answering,
            // so that a failure is a clear 502, never a partial body.
            let (bytes, mut stats) =
                match read_document(upstream_body, limits.max_masked_body, timeout, redactor).await
                {
                    Ok(read) => read,
                    Err(e) => {
                        let problem = masking_failed(&e);
                        finish.failed(e, problem.status);
                        return Ok(render(problem));
                    }
                };
            let out = transformer.push(&bytes).and_then(|mut out| {
                out.extend(transformer.finish()?);
                Ok(out)
            });
            match out {
                Ok(out) => {
                    stats.masked.merge(&transformer.counts());
                    stats.saw(&out);
                    rparts.headers.remove(header::CONTENT_LENGTH);
                    finish.done(stats, None);
                    Ok(Response::from_parts(rparts, full(out)))
                }
                Err(e) => {
                    let problem = masking_failed(&e.reason);
                    finish.failed(e.reason, problem.status);
                    Ok(render(problem))
                }
            }
        }
        BodyPlan::Transform(transformer) => Ok(stream_response(
            rparts,
            upstream_body,
            Some(transformer),
            redactor,
            true,
            finish,
            live,
        )),
        BodyPlan::Text => {
            let transformer: Option<Box<dyn BodyTransformer>> = masking_engine
                .and_then(SessionMasker::stream)
                .map(|s| Box::new(TextMasking(s)) as Box<dyn BodyTransformer>);
            small_or_streamed(
                rparts,
                upstream_body,
                transformer,
                redactor,
                plan.streaming,
                finish,
                live,
                timeout,
            )
            .await
            .or_else(|p| Ok(render(p)))
        }
        // Pass-through with echoes to redact.
        _ => small_or_streamed(
            rparts,
            upstream_body,
            None,
            redactor,
            plan.streaming,
            finish,
            live,
            timeout,
        )
        .await
        .or_else(|p| Ok(render(p))),
    }
}

/// One request being answered on a client connection (see `idle_for`).
struct InFlight(Arc<ClientConn>);

impl InFlight {
    fn enter(conn: Arc<ClientConn>) -> Self {
        conn.activity(1);
        InFlight(conn)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.activity(-1);
    }
}

/// Reads the start of the request body (up to the digest limit) before the
/// request is judged: its digest binds the command, the flavor may judge
/// what it says, and (where the flavor's upstream may honour them) a method
/// override hidden in it is refused. The body is put back for forwarding.
/// `None`: no body.
async fn read_body_start(
    unread: &Unread,
    headers: &HeaderMap,
    method: &http::Method,
    check_overrides: bool,
    timeout: Duration,
) -> Result<Option<BodyStart>, Problem> {
    let taken = unread.locked().take();
    let Some(mut incoming) = taken else {
        return Ok(None);
    };
    let mut result = Ok(None);
    if !http_body::Body::is_end_stream(&incoming) {
        let read =
            tokio::time::timeout(timeout, body::read_start(&mut incoming, body::DIGEST_LIMIT))
                .await;
        let ctype = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        result = match read {
            Ok(Ok((bytes, complete))) => {
                body_override(check_overrides, method, ctype, &bytes, complete).map(|scan| {
                    Some(BodyStart {
                        bytes,
                        complete,
                        scan,
                    })
                })
            }
            Ok(Err(_)) => Err(Problem::new(
                ProblemKind::BadRequest,
                "sluice: the request body could not be read; the request was not sent",
            )),
            Err(_) => Err(Problem::new(
                ProblemKind::BadRequest,
                "sluice: the request body did not arrive in time; the request was not sent",
            )),
        };
    }
    // Kept until the response is sent (see `handle`).
    *unread.locked() = Some(incoming);
    result
}

/// A method override in the body's start (any media type) is refused, as
/// the upstream could run another method than the one judged. The rest of
/// a longer POST body (frameworks honour body overrides on POST) of a type
/// that may carry one is checked as it streams upstream: returns the
/// scanner for it, which has read the start (and refuses what it found
/// there: a field cut at the start's end, a top-level JSON key of a body
/// too long to parse whole).
fn body_override(
    check: bool,
    method: &http::Method,
    ctype: Option<&str>,
    bytes: &[u8],
    complete: bool,
) -> Result<Option<BodyScanner>, Problem> {
    if !check {
        return Ok(None);
    }
    if let Some(name) = crate::overrides::method_override_in_body(ctype, bytes) {
        return Err(override_refusal(&name, method));
    }
    if complete || *method != http::Method::POST {
        return Ok(None);
    }
    let Some(mut scan) = BodyScanner::for_type(ctype) else {
        return Ok(None);
    };
    match scan.push(bytes) {
        Some((Found(name), _)) => Err(override_refusal(&name, method)),
        None => Ok(Some(scan)),
    }
}

/// The refusal of a body field asking for another method (found before
/// judging, or as the body streamed upstream).
fn override_refusal(name: &str, method: &http::Method) -> Problem {
    Problem::new(
        ProblemKind::BadRequest,
        format!(
            "sluice: the body field {:?} asks the upstream to run another method than {method}; the request was not sent",
            truncate(name, 40),
        ),
    )
    .with_hint("Send the request with the method itself instead of a method-override field.")
}

/// Decides every command of a request; all must be forwarded. A refusal or
/// a store failure records the others as not sent and becomes the problem.
async fn decide_all(
    handle: &SessionHandle,
    commands: Vec<sluice_core::Command>,
    started: Instant,
) -> Result<Vec<u64>, Problem> {
    let recorder = handle.recorder();
    let mut forwarded = Vec::new();
    for command in commands {
        match handle.decide(command).await {
            Ok(Decision::Forward { command_id }) => forwarded.push(command_id),
            Ok(Decision::Refuse { command_id, denial }) => {
                let problem = Problem::from_denial(&denial);
                let not_sent = refused_outcome("not sent: a related command was refused", started);
                finish_all(&recorder, &forwarded, not_sent);
                recorder.finished(
                    command_id,
                    refused_outcome(
                        &format!("{} {}", problem.status.as_u16(), problem.detail),
                        started,
                    ),
                );
                return Err(problem);
            }
            Err(e) => {
                tracing::error!(message = "The audit store refused a command; failing closed.", error = %e);
                finish_all(
                    &recorder,
                    &forwarded,
                    refused_outcome("not sent: the audit store failed", started),
                );
                return Err(Problem::new(
                    ProblemKind::Unavailable,
                    "sluice: the gateway could not record this request, so it was not sent; try again later",
                ));
            }
        }
    }
    Ok(forwarded)
}

/// The problem for an upstream exchange that failed (`None`: it timed out).
fn upstream_failure(
    failed: Option<hyper_util::client::legacy::Error>,
    connection: &str,
    timeout: Duration,
    max_request_body: u64,
) -> Problem {
    match failed {
        Some(e) if source_is::<body::TooLarge>(&e) => too_large(max_request_body),
        Some(e) => {
            tracing::warn!(message = "The upstream request failed.", %connection, error = %error_chain(&e));
            Problem::new(
                ProblemKind::BadGateway,
                format!("sluice: the upstream of {connection:?} could not be reached or failed to answer"),
            )
        }
        None => Problem::new(
            ProblemKind::GatewayTimeout,
            format!(
                "sluice: the upstream of {connection:?} did not answer within {}",
                humantime_short(timeout)
            ),
        ),
    }
}

/// Response headers whose values are structure, not data: never masked.
const STRUCTURAL_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "content-encoding",
    "content-range",
    "transfer-encoding",
    "date",
    "etag",
    "last-modified",
    "expires",
    "age",
    "cache-control",
    "vary",
    "accept-ranges",
    "location",
    "set-cookie",
    "server",
    "connection",
    "upgrade",
    "sec-websocket-accept",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
];

/// Response headers as the client gets them: hop-by-hop headers and the
/// upstream's reason phrase dropped (it can echo the injected credential),
/// redirects into the upstream rewritten through the gateway (`prefix`),
/// echoed credentials redacted, and data-carrying values
/// (`Content-Disposition`, `X-*`, …) through the masker. Returns how many
/// values were redacted and what was masked.
fn response_headers(
    rparts: &mut http::response::Parts,
    live: &Live,
    prefix: &str,
    masker: Option<&SessionMasker>,
) -> (u64, sluice_core::masking::MaskCounts) {
    strip_hop_by_hop(&mut rparts.headers, STRIPPED_RESPONSE);
    rparts.extensions.remove::<hyper::ext::ReasonPhrase>();
    if let Some(location) = rparts
        .headers
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| live.upstream.gateway_location(v, prefix))
        .and_then(|v| HeaderValue::from_str(&v).ok())
    {
        rparts.headers.insert(header::LOCATION, location);
    }
    let mut redactions = 0u64;
    if let Some(template) = &live.redactor {
        for value in rparts.headers.values_mut() {
            if let Some(redacted) = body::redact_text(template, value.as_bytes()) {
                redactions += 1;
                *value = HeaderValue::from_bytes(&redacted)
                    .unwrap_or_else(|_| HeaderValue::from_static("[redacted-credential]"));
            }
        }
    }
    let mut masked = sluice_core::masking::MaskCounts::default();
    if let Some(masker) = masker {
        for (name, value) in rparts.headers.iter_mut() {
            if STRUCTURAL_HEADERS.contains(&name.as_str()) {
                continue;
            }
            let text = String::from_utf8_lossy(value.as_bytes()).into_owned();
            if let Some((out, counts)) = masker.mask_text(&text) {
                *value = HeaderValue::from_str(&out)
                    .unwrap_or_else(|_| HeaderValue::from_static("[masked]"));
                masked.merge(&counts);
            }
        }
    }
    (redactions, masked)
}

/// How much of an upgraded connection's traffic (WebSocket, exec) is kept in
/// the recording; the rest is counted.
const UPGRADE_RECORD_LIMIT: u64 = 1024 * 1024;

fn too_large(max: u64) -> Problem {
    Problem::new(
        ProblemKind::PayloadTooLarge,
        format!("sluice: the request body is larger than the gateway's limit of {max} bytes"),
    )
}

fn masking_failed(reason: &str) -> Problem {
    Problem::new(
        ProblemKind::BadGateway,
        format!(
            "sluice: the response must be masked but could not be: {reason}; it was not passed on"
        ),
    )
    .with_hint("Request a smaller response (paging, filters), or ask a Sluice administrator.")
}

/// Reads a whole body, refusing more than `cap` bytes. (A loop rather than
/// `Limited::collect`, whose error conversion defeats the `Send` check.)
/// Reads a whole response body (up to `cap`) and redacts injected
/// credentials the upstream echoed in it.
async fn read_document(
    body: Body,
    cap: usize,
    timeout: Duration,
    redactor: Option<Redactor>,
) -> Result<(Vec<u8>, BodyStats), String> {
    let bytes = read_capped(body, cap, timeout).await?;
    let mut stats = BodyStats::default();
    let bytes = match redactor {
        Some(mut r) => {
            let out = r.redact_all(&bytes);
            stats.masked.add("injected_credential", r.redacted);
            out
        }
        None => bytes.to_vec(),
    };
    Ok((bytes, stats))
}

async fn read_capped(mut body: Body, cap: usize, timeout: Duration) -> Result<Bytes, String> {
    let read = async {
        let mut buf = bytes::BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| "the upstream body failed".to_string())?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > cap {
                    return Err(format!(
                        "the body is larger than the {cap}-byte masking buffer"
                    ));
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(buf.freeze())
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| "the upstream body did not arrive in time".to_string())?
}

fn source_is<E: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    source_of::<E>(e).is_some()
}

/// The error of type `E` in `e`'s chain of sources.
fn source_of<'e, E: std::error::Error + 'static>(
    e: &'e (dyn std::error::Error + 'static),
) -> Option<&'e E> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(found) = err.downcast_ref::<E>() {
            return Some(found);
        }
        cur = err.source();
    }
    None
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        out.push_str(": ");
        out.push_str(&err.to_string());
        cur = err.source();
    }
    out
}

fn humantime_short(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn refused_outcome(error: &str, started: Instant) -> Outcome {
    Outcome {
        error: Some(error.to_string()),
        duration_us: started.elapsed().as_micros() as u64,
        ..Default::default()
    }
}

fn finish_all(recorder: &OutcomeRecorder, commands: &[u64], outcome: Outcome) {
    for id in commands {
        recorder.finished(*id, outcome.clone());
    }
}

/// Records a forwarded request's outcome once its response body is done.
struct Finisher {
    recorder: OutcomeRecorder,
    commands: Vec<u64>,
    status: StatusCode,
    started: Instant,
    header_redactions: u64,
    /// Values masked in response headers.
    header_masked: sluice_core::masking::MaskCounts,
}

impl Finisher {
    /// Records a response the gateway answered itself (`status`) instead of
    /// passing the upstream's body on.
    fn failed(self, error: String, status: StatusCode) {
        self.done(
            BodyStats {
                error: Some(error),
                ..Default::default()
            },
            Some(status),
        );
    }

    fn done(self, mut stats: BodyStats, answered: Option<StatusCode>) {
        let status = answered.unwrap_or(self.status);
        if self.header_redactions > 0 {
            stats
                .masked
                .add("injected_credential", self.header_redactions);
        }
        stats.masked.merge(&self.header_masked);
        let sample = if stats.sample.is_empty() {
            Vec::new()
        } else {
            vec![vec![Some(
                String::from_utf8_lossy(&stats.sample).into_owned(),
            )]]
        };
        let outcome = Outcome {
            rows: 0,
            bytes: stats.bytes,
            tag: Some(match answered {
                Some(s) => format!(
                    "HTTP {} (upstream {}, refused by the gateway)",
                    s.as_u16(),
                    self.status.as_u16()
                ),
                None => format!("HTTP {}", status.as_u16()),
            }),
            error: stats.error,
            duration_us: self.started.elapsed().as_micros() as u64,
            columns: if sample.is_empty() {
                Vec::new()
            } else {
                vec!["body".into()]
            },
            sample,
            truncated: stats.truncated,
            masked: stats
                .masked
                .iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        };
        finish_all(&self.recorder, &self.commands, outcome);
    }
}

/// Bodies up to this size (by `Content-Length`) are read whole and rewritten
/// inline, without a relay task: the common small API response.
const SMALL_BODY: u64 = 64 * 1024;

/// A small body with a known length is rewritten in one go; anything else
/// is streamed (see [`stream_response`]).
#[allow(clippy::too_many_arguments)]
async fn small_or_streamed(
    mut parts: http::response::Parts,
    upstream: Body,
    mut transformer: Option<Box<dyn BodyTransformer>>,
    redactor: Option<Redactor>,
    streaming: bool,
    finish: Finisher,
    live: Arc<Live>,
    timeout: Duration,
) -> Result<Response<Body>, Problem> {
    let small = !streaming
        && parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n <= SMALL_BODY);
    if !small {
        return Ok(stream_response(
            parts,
            upstream,
            transformer,
            redactor,
            streaming,
            finish,
            live,
        ));
    }
    let (mut out, mut stats) =
        match read_document(upstream, SMALL_BODY as usize, timeout, redactor).await {
            Ok(read) => read,
            Err(e) => {
                finish.failed(e.clone(), StatusCode::BAD_GATEWAY);
                return Err(Problem::new(
                    ProblemKind::BadGateway,
                    format!("sluice: the upstream's response could not be read: {e}"),
                ));
            }
        };
    if let Some(t) = transformer.as_mut() {
        let pushed = t.push(&out).and_then(|mut o| {
            o.extend(t.finish()?);
            Ok(o)
        });
        out = match pushed {
            Ok(o) => o,
            Err(e) => {
                finish.failed(e.reason.clone(), StatusCode::BAD_GATEWAY);
                return Err(masking_failed(&e.reason));
            }
        };
        stats.masked.merge(&t.counts());
    }
    stats.saw(&out);
    parts.headers.remove(header::CONTENT_LENGTH);
    finish.done(stats, None);
    Ok(Response::from_parts(parts, full(out)))
}

/// Streams the body through the redactor and transformer in a task, with
/// bounded buffering (a channel of a few chunks gives back-pressure).
fn stream_response(
    mut parts: http::response::Parts,
    mut upstream: Body,
    mut transformer: Option<Box<dyn BodyTransformer>>,
    mut redactor: Option<Redactor>,
    streaming: bool,
    finish: Finisher,
    live: Arc<Live>,
) -> Response<Body> {
    if transformer.is_some() || redactor.is_some() {
        parts.headers.remove(header::CONTENT_LENGTH);
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, crate::BoxError>>(4);
    tokio::spawn(async move {
        let mut stats = BodyStats::default();
        let mut redacted = 0u64;
        let result: Result<(), String> = async {
            loop {
                let next = if streaming {
                    tokio::select! {
                        f = upstream.frame() => Some(f),
                        _ = tokio::time::sleep(STREAM_IDLE_FLUSH) => None,
                        reason = live.ended() => return Err(format!("session ended: {reason}")),
                    }
                } else {
                    tokio::select! {
                        f = upstream.frame() => Some(f),
                        reason = live.ended() => return Err(format!("session ended: {reason}")),
                    }
                };
                let out = match next {
                    // Upstream idle: release what the masker holds.
                    None => {
                        let held = match redactor.as_mut() {
                            Some(r) => r.flush(),
                            None => Vec::new(),
                        };
                        match transformer.as_mut() {
                            Some(t) => {
                                let mut out = t.push(&held).map_err(|e| e.reason)?;
                                out.extend(t.flush().map_err(|e| e.reason)?);
                                out
                            }
                            None => held,
                        }
                    }
                    Some(None) => {
                        let mut out = match redactor.as_mut() {
                            Some(r) => r.finish(),
                            None => Vec::new(),
                        };
                        if let Some(t) = transformer.as_mut() {
                            let mut tail = t.push(&out).map_err(|e| e.reason)?;
                            tail.extend(t.finish().map_err(|e| e.reason)?);
                            out = tail;
                        }
                        send(&tx, &mut stats, out).await?;
                        return Ok(());
                    }
                    Some(Some(Err(e))) => return Err(format!("upstream body failed: {e}")),
                    Some(Some(Ok(frame))) => {
                        let Ok(data) = frame.into_data() else {
                            continue;
                        };
                        let data = match redactor.as_mut() {
                            Some(r) => r.push(&data),
                            None => data.to_vec(),
                        };
                        match transformer.as_mut() {
                            Some(t) => t.push(&data).map_err(|e| e.reason)?,
                            None => data,
                        }
                    }
                };
                send(&tx, &mut stats, out).await?;
            }
        }
        .await;
        if let Some(r) = &redactor {
            redacted = r.redacted;
        }
        if let Err(e) = &result {
            // Cut the response short: the client sees an incomplete body, never unmasked bytes.
            let _ = tx.send(Err(e.clone().into())).await;
            stats.error = Some(e.clone());
        }
        if let Some(t) = &transformer {
            stats.masked.merge(&t.counts());
        }
        if redacted > 0 {
            stats.masked.add("injected_credential", redacted);
        }
        finish.done(stats, None);
    });
    Response::from_parts(parts, ChannelBody { rx }.boxed())
}

async fn send(
    tx: &tokio::sync::mpsc::Sender<Result<Bytes, crate::BoxError>>,
    stats: &mut BodyStats,
    out: Vec<u8>,
) -> Result<(), String> {
    if out.is_empty() {
        return Ok(());
    }
    stats.saw(&out);
    tx.send(Ok(Bytes::from(out)))
        .await
        .map_err(|_| "the client went away before the body ended".to_string())
}

struct ChannelBody {
    rx: tokio::sync::mpsc::Receiver<Result<Bytes, crate::BoxError>>,
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = crate::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, crate::BoxError>>> {
        self.rx
            .poll_recv(cx)
            .map(|o| o.map(|r| r.map(http_body::Frame::data)))
    }
}

/// The answer to a request on a session core has ended.
fn session_ended(reason: &str) -> Problem {
    Problem::new(
        ProblemKind::SessionEnded,
        format!("sluice: the session was ended: {reason}"),
    )
    .with_hint("Open a new connection with a valid token.")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flavor::FrameHook;
    use sluice_core::config::Config;

    /// A flavor with no frame hook (as Kubernetes port-forward).
    struct NoHook;
    impl Flavor for NoHook {
        fn commands(&self, head: &RequestHead<'_>) -> Result<Vec<sluice_core::Command>, Problem> {
            Ok(vec![crate::http_command(head)])
        }
    }

    fn hook_for(
        flavor: &dyn Flavor,
        upgrade: Option<&str>,
        masking: bool,
    ) -> Result<bool, Problem> {
        let config = Config::from_toml_str(
            "[[connections]]\nname = \"crm\"\nkind = \"http\"\nupstream = \"http://127.0.0.1:1\"\nallow_groups = [\"a\"]\n",
            "t.toml",
        )
        .unwrap();
        let (method, headers) = (http::Method::GET, HeaderMap::new());
        let head = RequestHead::new(&method, "/ws", None, &headers, &config.connections[0])
            .with_upgrade(upgrade);
        let session = crate::masking::tests::session_info();
        let engine = crate::masking::tests::email_engine();
        let masker = masking.then(|| SessionMasker::for_engine(engine, session.clone()));
        let ctx = MaskingContext::new(masker.as_ref(), &session, 1 << 20);
        upgrade_hook(&head, flavor, &ctx).map(|h: Option<Box<dyn FrameHook>>| h.is_some())
    }

    #[test]
    fn an_upgrade_no_hook_can_mask_is_refused_when_masking_is_on() {
        let ws = Some("websocket");
        let refused = hook_for(&NoHook, ws, true).unwrap_err();
        assert!(refused.detail.contains("masked"), "{}", refused.detail);
        assert!(!hook_for(&NoHook, ws, false).unwrap());
        assert!(hook_for(&crate::HttpFlavor, ws, true).unwrap());
        assert!(!hook_for(&NoHook, None, true).unwrap());
    }

    #[test]
    fn a_negotiated_websocket_extension_is_refused() {
        let mut headers = HeaderMap::new();
        assert!(extension_negotiated(&headers).is_none());
        headers.insert(
            "sec-websocket-extensions",
            HeaderValue::from_static("permessage-deflate"),
        );
        let problem = extension_negotiated(&headers).unwrap();
        assert_eq!(problem.status, StatusCode::BAD_GATEWAY);
        assert!(problem.detail.contains("permessage-deflate"));
    }
}

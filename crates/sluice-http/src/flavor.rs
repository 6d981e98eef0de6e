//! The extension point through which a connection kind customises the proxy.
//!
//! The proxy (routing, authentication, sessions, the pipeline, credential
//! injection, upstream calls, limits, masking and recording) is the same for
//! every HTTP-shaped connection kind. A [`Flavor`] supplies what differs:
//! which commands a request is, how a refusal reads in the client's language,
//! how a response body is masked, and how an upgraded connection's frames are
//! inspected. Every method but [`Flavor::commands`] has a default, so a flavor
//! overrides only what it needs (pingora's `ProxyHttp` hooks are the model).
//!
//! **Stability.** The Kubernetes gateway builds on this trait: extend it with
//! new methods that have defaults; do not change existing signatures.

use crate::problem::Problem;
use bytes::Bytes;
use http::{HeaderMap, Method, Version};
use sluice_core::config::{ConnectionConfig, ConnectionKind};
use sluice_core::masking::{JsonPath, MaskCounts, SessionMasker};
use sluice_core::model::{Command, Protocol};
use sluice_core::pipeline::SessionInfo;
use std::sync::Arc;

/// The body type of every response the gateway writes.
pub type Body = http_body_util::combinators::BoxBody<Bytes, BoxError>;
/// Errors carried by response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Which flavor serves which connection kind (the launcher registers
/// `Http` → [`crate::HttpFlavor`] and `Kubernetes` → the kube crate's).
/// A connection whose kind has no flavor here is not served by the listener.
#[derive(Clone, Default)]
pub struct FlavorRegistry {
    flavors: Vec<(ConnectionKind, Arc<dyn Flavor>)>,
}

impl FlavorRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves connections of `kind` with `flavor` (replacing an earlier one).
    pub fn insert(&mut self, kind: ConnectionKind, flavor: Arc<dyn Flavor>) {
        self.flavors.retain(|(k, _)| *k != kind);
        self.flavors.push((kind, flavor));
    }

    /// Builder form of [`FlavorRegistry::insert`].
    pub fn with(mut self, kind: ConnectionKind, flavor: Arc<dyn Flavor>) -> Self {
        self.insert(kind, flavor);
        self
    }

    pub fn get(&self, kind: ConnectionKind) -> Option<&Arc<dyn Flavor>> {
        self.flavors
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, f)| f)
    }

    /// The kinds served.
    pub fn kinds(&self) -> Vec<ConnectionKind> {
        self.flavors.iter().map(|(k, _)| *k).collect()
    }
}

impl std::fmt::Debug for FlavorRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.kinds()).finish()
    }
}

/// A request as a flavor sees it: routed, authenticated, its path normalised.
#[derive(Debug)]
#[non_exhaustive]
pub struct RequestHead<'a> {
    pub method: &'a Method,
    /// The normalised path after the `/<connection>` prefix (percent-decoded
    /// where that is unambiguous, no dot segments, no empty segments); it
    /// always starts with `/`. This is what policy sees and what goes upstream.
    pub path: &'a str,
    /// The raw query string (without `?`), as the client sent it.
    pub query: Option<&'a str>,
    /// The client's headers (the gateway's `Authorization` already removed).
    pub headers: &'a HeaderMap,
    pub version: Version,
    /// The protocol named in `Upgrade` (lowercase, e.g. `websocket`), when the
    /// client asks to switch protocols.
    pub upgrade: Option<&'a str>,
    pub connection: &'a ConnectionConfig,
}

impl<'a> RequestHead<'a> {
    /// A head for tests and for flavors that classify requests themselves.
    pub fn new(
        method: &'a Method,
        path: &'a str,
        query: Option<&'a str>,
        headers: &'a HeaderMap,
        connection: &'a ConnectionConfig,
    ) -> Self {
        RequestHead {
            method,
            path,
            query,
            headers,
            version: Version::HTTP_11,
            upgrade: None,
            connection,
        }
    }

    /// Sets the upgrade protocol (lowercase).
    pub fn with_upgrade(mut self, upgrade: Option<&'a str>) -> Self {
        self.upgrade = upgrade;
        self
    }

    /// Sets the client's HTTP version.
    pub fn with_version(mut self, version: Version) -> Self {
        self.version = version;
        self
    }
}

/// The start of a request body, read before the request is judged (up to
/// [`crate::body::DIGEST_LIMIT`]; the rest streams upstream after the
/// decision).
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct RequestBody<'a> {
    /// The bytes read (at least the digest limit when not `complete`).
    pub bytes: &'a [u8],
    /// Whether `bytes` is the whole body.
    pub complete: bool,
}

impl<'a> RequestBody<'a> {
    pub fn new(bytes: &'a [u8], complete: bool) -> Self {
        RequestBody { bytes, complete }
    }
}

/// What the response path may use to mask a body.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct MaskingContext<'a> {
    /// The gateway's masker (`GatewayBuilder::masker`, the same one every
    /// protocol uses) bound to this session; `None` when nothing may be
    /// masked on it (no `[masking]`, or the caller is exempt).
    pub masker: Option<&'a SessionMasker>,
    pub session: &'a SessionInfo,
    /// The most a body may be buffered for masking (see [`crate::Limits`]);
    /// a larger body that needs buffering is refused, never sent unmasked.
    pub max_buffer: usize,
}

impl<'a> MaskingContext<'a> {
    pub fn new(
        masker: Option<&'a SessionMasker>,
        session: &'a SessionInfo,
        max_buffer: usize,
    ) -> Self {
        MaskingContext {
            masker,
            session,
            max_buffer,
        }
    }
}

/// How a response body reaches the client.
#[non_exhaustive]
pub enum BodyPlan {
    /// Untouched (apart from redaction of echoed injected credentials).
    PassThrough,
    /// Buffered up to the cap, parsed as JSON, masked by the detectors and
    /// these key paths (whole values), re-serialised. Unparseable JSON or a
    /// body over the cap is refused.
    Json { key_paths: Vec<JsonPath> },
    /// Streamed through the detectors' stream masker (bounded hold-back).
    Text,
    /// A flavor's own transformer (e.g. Kubernetes Secret masking in JSON,
    /// YAML and Table form, or watch events line by line).
    Transform(Box<dyn BodyTransformer>),
    /// The body must not reach the client (e.g. a compressed body that would
    /// need masking); the response is replaced by this problem.
    Refuse(Problem),
}

impl std::fmt::Debug for BodyPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyPlan::PassThrough => f.write_str("PassThrough"),
            BodyPlan::Json { key_paths } => f
                .debug_struct("Json")
                .field("key_paths", key_paths)
                .finish(),
            BodyPlan::Text => f.write_str("Text"),
            BodyPlan::Transform(_) => f.write_str("Transform(..)"),
            BodyPlan::Refuse(p) => f.debug_tuple("Refuse").field(p).finish(),
        }
    }
}

/// The response path's plan for one response.
#[derive(Debug)]
#[non_exhaustive]
pub struct ResponsePlan {
    pub body: BodyPlan,
    /// The body is a long-lived stream read as it arrives (Kubernetes watch,
    /// server-sent events): bytes a masker holds back are released when the
    /// upstream pauses briefly, instead of waiting for more.
    pub streaming: bool,
}

impl ResponsePlan {
    pub fn new(body: BodyPlan) -> Self {
        ResponsePlan {
            body,
            streaming: false,
        }
    }

    /// Marks the body as a long-lived stream (see [`ResponsePlan::streaming`]).
    pub fn streaming(mut self, streaming: bool) -> Self {
        self.streaming = streaming;
        self
    }
}

/// A flavor's body rewriter, fed the upstream body chunk by chunk. It may
/// hold bytes back (to see a whole document), but must bound what it holds
/// (`MaskingContext::max_buffer`) and fail rather than release unmasked data.
pub trait BodyTransformer: Send {
    /// Takes the next chunk; returns what can be sent now (possibly nothing).
    fn push(&mut self, chunk: &[u8]) -> Result<Vec<u8>, TransformError>;
    /// Called when the upstream pauses on a streaming response; returns held
    /// bytes that may be released now. Default: nothing.
    fn flush(&mut self) -> Result<Vec<u8>, TransformError> {
        Ok(Vec::new())
    }
    /// The body ended; returns the rest.
    fn finish(&mut self) -> Result<Vec<u8>, TransformError>;
    /// Values masked so far, by detector or rule, for the audit record.
    fn counts(&self) -> MaskCounts;
}

/// Why a body could not be transformed. Before the first byte was sent it
/// becomes a 502 problem naming `reason`; after, the response is cut short.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason}")]
pub struct TransformError {
    /// Safe to show the client: no body content, no credentials.
    pub reason: String,
}

impl TransformError {
    pub fn new(reason: impl Into<String>) -> Self {
        TransformError {
            reason: reason.into(),
        }
    }
}

/// Which way a frame of an upgraded connection travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ClientToUpstream,
    UpstreamToClient,
}

/// One WebSocket frame, with its payload unmasked (RFC 6455 client masking
/// is removed before a hook sees it and reapplied after).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    /// 0 continuation, 1 text, 2 binary, 8 close, 9 ping, 10 pong.
    pub opcode: u8,
    pub payload: Vec<u8>,
}

/// Inspects (and may rewrite) the frames of an upgraded WebSocket connection,
/// e.g. to mask exec output or record stdin. The proxy itself counts frames
/// and bytes for the audit record.
pub trait FrameHook: Send {
    /// Sees each frame before it is forwarded; may change its payload. An
    /// `Err` ends the connection (both sides get a close frame, 1008) and
    /// its reason is recorded.
    fn frame(&mut self, direction: Direction, frame: &mut Frame) -> Result<(), String>;
    /// Frames to send before `frame` (which `frame` then sees): e.g. the
    /// held tail of a stream, released before the frame that ends it.
    fn before(&mut self, direction: Direction, frame: &Frame) -> Vec<Frame> {
        let _ = (direction, frame);
        Vec::new()
    }
    /// The connection ended; values masked, for the audit record.
    fn counts(&self) -> MaskCounts {
        MaskCounts::default()
    }
}

/// What a connection kind contributes to the HTTP proxy. Every method but
/// [`Flavor::commands`] has a default, the plain-HTTP behaviour.
pub trait Flavor: Send + Sync + 'static {
    /// The protocol sessions of this flavor are recorded under.
    fn protocol(&self) -> Protocol {
        Protocol::Http
    }

    /// The commands this request is, to be decided by the pipeline. All must
    /// be forwarded for the request to go upstream (e.g. a Kubernetes exec is
    /// its API request and the command it runs). `Err` refuses the request
    /// with that problem (e.g. an API path that cannot be parsed).
    fn commands(&self, head: &RequestHead<'_>) -> Result<Vec<Command>, Problem>;

    /// The commands this request is, when what it does depends on its body
    /// (a Kubernetes ephemeral container runs the command its body names).
    /// `body` is the start of the body (`None`: the request has none, or is
    /// an upgrade). Default: [`Flavor::commands`].
    fn commands_with_body(
        &self,
        head: &RequestHead<'_>,
        body: Option<RequestBody<'_>>,
    ) -> Result<Vec<Command>, Problem> {
        let _ = body;
        self.commands(head)
    }

    /// Whether the upstream may be a framework that honours method-override
    /// fields in request bodies (`_method=DELETE`): if so, such fields are
    /// refused in the start of any body the gateway reads before judging,
    /// and the rest of a longer POST body of a type that may carry one is
    /// checked as it streams (the upload is stopped at one). Default: yes.
    /// (The Kubernetes API server honours none.)
    fn method_overrides(&self) -> bool {
        true
    }

    /// Renders a problem the gateway answers itself (a denial, a bad request,
    /// an upstream failure) in the client's language. Default: RFC 9457
    /// `application/problem+json`. `head` is `None` before routing.
    fn render(&self, head: Option<&RequestHead<'_>>, problem: &Problem) -> http::Response<Body> {
        let _ = head;
        crate::problem::problem_json(problem)
    }

    /// The headers injected into every upstream request on a session, with
    /// their values resolved once per session. Default: `headers`, `bearer`,
    /// `basic` of the connection (see [`crate::inject::default_credentials`]).
    fn credentials(
        &self,
        connection: &ConnectionConfig,
    ) -> Result<crate::inject::Injected, Problem> {
        crate::inject::default_credentials(connection)
    }

    /// The TLS client configuration of the upstream leg (`None`: plain
    /// HTTP). Default: `upstream_tls` with `ca` / `upstream_ca` (see
    /// [`crate::upstream::default_tls`]). Kubernetes adds its client certificate.
    fn upstream_tls(
        &self,
        connection: &ConnectionConfig,
    ) -> Result<Option<Arc<rustls::ClientConfig>>, String> {
        crate::upstream::default_tls(connection)
    }

    /// Last changes to the upstream request's headers, after injection and
    /// hop-by-hop hygiene (e.g. dropping impersonation headers). `Err`
    /// refuses the request.
    fn prepare_upstream(
        &self,
        head: &RequestHead<'_>,
        headers: &mut HeaderMap,
    ) -> Result<(), Problem> {
        let _ = (head, headers);
        Ok(())
    }

    /// How the response body is masked. Default: by content type (see
    /// [`crate::masking::default_plan`]).
    fn response_plan(
        &self,
        head: &RequestHead<'_>,
        response: &http::response::Parts,
        masking: &MaskingContext<'_>,
    ) -> ResponsePlan {
        crate::masking::default_plan(head, response, masking)
    }

    /// Whether an upgrade to `head.upgrade` is relayed. Default: WebSocket only.
    fn allow_upgrade(&self, head: &RequestHead<'_>) -> bool {
        head.upgrade == Some("websocket")
    }

    /// The refusal of an upgrade [`Flavor::allow_upgrade`] declined.
    /// Default: the protocol is not supported on this connection.
    fn upgrade_refusal(&self, head: &RequestHead<'_>) -> Problem {
        let upgrade = head.upgrade.unwrap_or("");
        Problem::new(
            crate::problem::ProblemKind::NotSupported,
            format!("sluice: upgrading to {upgrade:?} is not supported on this connection"),
        )
    }

    /// A hook that sees the frames of an upgraded WebSocket connection.
    /// Default: none (frames and bytes are still counted and recorded).
    /// When the session masks responses, an upgrade without a hook is
    /// refused: its frames would reach the client unmasked.
    fn frame_hook(
        &self,
        head: &RequestHead<'_>,
        masking: &MaskingContext<'_>,
    ) -> Option<Box<dyn FrameHook>> {
        let _ = (head, masking);
        None
    }

    /// Which recorded stream a WebSocket data frame belongs to, and the part
    /// of its payload to record (after the hook has masked it: what the
    /// client saw, or what it sent). Default: text and binary data frames,
    /// as `stdout` (from the upstream) and `stdin` (from the client).
    fn recorded_stream(
        &self,
        direction: Direction,
        frame: &Frame,
    ) -> Option<(&'static str, std::ops::Range<usize>)> {
        if !matches!(frame.opcode, 0..=2) {
            return None;
        }
        let stream = match direction {
            Direction::UpstreamToClient => "stdout",
            Direction::ClientToUpstream => "stdin",
        };
        Some((stream, 0..frame.payload.len()))
    }
}

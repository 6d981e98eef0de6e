//! The upstream leg: TLS per connection and a pooled HTTP/1.1 + HTTP/2 client.
//!
//! ALPN is the proxy's business (h2 and http/1.1 on the pooled client,
//! http/1.1 for upgrades): flavors return TLS configs without it.

use crate::settings::HttpSettings;
use sluice_core::config::{ConnectionConfig, Secret, UpstreamTls};
use sluice_core::pinned::PerThread;
use std::path::PathBuf;
use std::sync::Arc;

/// The default TLS client config of an HTTP connection.
///
/// The URL's scheme decides whether TLS is used. For `https://` upstreams,
/// `upstream_tls` reads: `prefer` (the default) and `verify-full` verify the
/// chain and the name, `verify-ca` the chain only, `require` encrypts without
/// verifying (an explicit opt-out), `disable` is a configuration error. The
/// roots are `ca` (a PEM bundle by reference) or `upstream_ca` (a path), else
/// the Mozilla roots.
pub fn default_tls(
    connection: &ConnectionConfig,
) -> Result<Option<Arc<rustls::ClientConfig>>, String> {
    if !connection.upstream.starts_with("https://") {
        return Ok(None);
    }
    let settings =
        HttpSettings::of(connection).map_err(|(key, message)| format!("{key}: {message}"))?;
    let mode = match settings.upstream_tls {
        UpstreamTls::Disable => {
            return Err("upstream_tls = \"disable\" contradicts an https:// upstream".into())
        }
        UpstreamTls::Prefer | UpstreamTls::VerifyFull => UpstreamTls::VerifyFull,
        other => other,
    };
    let ca = ca_path(&connection.name, &settings)?;
    let config = sluice_core::tls::upstream_client_config(mode, ca.as_deref())
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "no TLS configuration for an https:// upstream".to_string())?;
    Ok(Some(config))
}

/// `ca = { file }` is read in place; `ca = { env }` holds the PEM itself and
/// is written next to the generated listener certificate (a CA bundle is
/// public) so that core's verifier can load it.
fn ca_path(connection: &str, settings: &HttpSettings) -> Result<Option<PathBuf>, String> {
    match (&settings.ca, &settings.upstream_ca) {
        (Some(Secret::File(path)), _) => Ok(Some(path.clone())),
        (Some(secret @ Secret::Env(_)), _) => {
            let pem = secret.resolve().map_err(|e| format!("ca: {e}"))?;
            // Its own directory: write_private makes the parent 0700.
            let path = std::env::temp_dir()
                .join(format!("sluice-ca-{}", std::process::id()))
                .join(format!("{connection}.pem"));
            sluice_core::fsutil::write_private(&path, pem.as_bytes())
                .map_err(|e| format!("ca: cannot stage the CA bundle: {e}"))?;
            Ok(Some(path))
        }
        (None, Some(path)) => Ok(Some(path.clone())),
        (None, None) => Ok(None),
    }
}

/// TCP (Nagle off, [`CONNECT_TIMEOUT`]), then TLS for `https://` URLs.
pub type Connector =
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;
pub(crate) type Client = hyper_util::client::legacy::Client<Connector, crate::flavor::Body>;

/// A pooled client over `connector`, its idle connections closed after 60 s.
pub fn pooled_client<B>(connector: Connector) -> hyper_util::client::legacy::Client<Connector, B>
where
    B: http_body::Body + Send,
    B::Data: Send,
{
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .timer(hyper_util::rt::TokioTimer::new())
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .pool_idle_timeout(std::time::Duration::from_secs(60))
        .build(connector)
}

/// A connector over `tls` (ALPN cleared: the connector offers its own),
/// HTTP/2 by ALPN too when `http2`. Without `tls`, one with no roots: only
/// `http://` URLs can use it.
pub fn connector(tls: Option<&rustls::ClientConfig>, http2: bool) -> Connector {
    let mut config = match tls {
        Some(t) => t.clone(),
        None => {
            sluice_core::tls::install_crypto_provider();
            rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        }
    };
    config.alpn_protocols.clear();
    let mut tcp = hyper_util::client::legacy::connect::HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1();
    if http2 {
        builder.enable_http2().wrap_connector(tcp)
    } else {
        builder.wrap_connector(tcp)
    }
}

/// How long connecting to an upstream may take.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// One connection's upstream: where it is and the clients that reach it.
pub(crate) struct Upstream {
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
    /// The URL's path without a trailing `/` (empty for none).
    pub base_path: String,
    /// The pooled client (HTTP/2 when the upstream offers it by ALPN) and
    /// the HTTP/1.1 one for upgrades: one pair for the gateway, or one per
    /// pinned session thread, whose requests then stay on it.
    clients: PerThread<[Client; 2]>,
    /// The connection's `timeout` for one exchange, when it sets one.
    pub timeout: Option<std::time::Duration>,
}

impl Upstream {
    pub fn new(
        connection: &ConnectionConfig,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Upstream, String> {
        let uri: http::Uri = connection
            .upstream
            .parse()
            .map_err(|e| format!("upstream {:?} is not a URL: {e}", connection.upstream))?;
        let scheme = uri.scheme().cloned().ok_or("upstream URL without scheme")?;
        let authority = uri
            .authority()
            .cloned()
            .ok_or("upstream URL without host")?;
        if uri.query().is_some() {
            return Err("an upstream URL cannot have a query".into());
        }
        let base_path = uri.path().trim_end_matches('/').to_string();
        if tls.is_none() && scheme == http::uri::Scheme::HTTPS {
            return Err("an https:// upstream needs a TLS configuration".into());
        }
        let pooled = connector(tls.as_deref(), true);
        let h1 = connector(tls.as_deref(), false);
        Ok(Upstream {
            scheme,
            authority,
            base_path,
            clients: PerThread::new(move || {
                [pooled_client(pooled.clone()), pooled_client(h1.clone())]
            }),
            timeout: HttpSettings::of(connection)
                .map_err(|(key, message)| format!("{key}: {message}"))?
                .timeout
                .map(|t| t.0),
        })
    }

    /// The pooled client (HTTP/2 when the upstream offers it by ALPN), or
    /// with `upgrade` the HTTP/1.1-only one (WebSocket is relayed over
    /// HTTP/1.1).
    pub fn client(&self, upgrade: bool) -> Client {
        let [pooled, upgrades] = self.clients.get();
        if upgrade {
            upgrades
        } else {
            pooled
        }
    }

    /// A `Location` pointing into the upstream (absolute, or absolute-path
    /// under the base path), rewritten to the same place through the
    /// gateway: `prefix` (`/<connection>`, or empty for host routing) + the
    /// rest. `None` when it points elsewhere.
    pub fn gateway_location(&self, location: &str, prefix: &str) -> Option<String> {
        let origin = format!("{}://{}", self.scheme, self.authority);
        let rest = match location.strip_prefix(&origin) {
            Some(rest) if rest.is_empty() || rest.starts_with(['/', '?']) => rest,
            Some(_) => return None,
            None if location.starts_with('/') && !location.starts_with("//") => location,
            None => return None,
        };
        let rest = if self.base_path.is_empty() {
            rest
        } else {
            let after = rest.strip_prefix(self.base_path.as_str())?;
            if !(after.is_empty() || after.starts_with(['/', '?'])) {
                return None;
            }
            after
        };
        let rest = if rest.is_empty() || rest.starts_with('?') {
            format!("/{rest}")
        } else {
            rest.to_string()
        };
        Some(format!("{prefix}{rest}"))
    }

    /// The upstream URI for a normalised, encoded path and the raw query.
    pub fn uri(&self, encoded_path: &str, query: Option<&str>) -> Result<http::Uri, String> {
        let mut pq = format!("{}{encoded_path}", self.base_path);
        if let Some(q) = query {
            pq.push('?');
            pq.push_str(q);
        }
        http::Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(url: &str) -> Upstream {
        let config = sluice_core::Config::from_toml_str(
            &format!("[[connections]]\nname = \"crm\"\nkind = \"http\"\nupstream = \"{url}\"\nupstream_tls = \"require\"\nallow_groups = [\"a\"]\n"),
            "t.toml",
        )
        .unwrap();
        let c = &config.connections[0];
        Upstream::new(c, default_tls(c).unwrap()).unwrap()
    }

    /// An HTTP/1.1 upstream that answers every request with an empty 200
    /// naming the connection it came on (`x-conn`, numbered from 0), and
    /// keeps connections open.
    fn numbering_upstream() -> String {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for (n, stream) in listener.incoming().flatten().enumerate() {
                std::thread::spawn(move || {
                    let mut writer = stream.try_clone().unwrap();
                    let ok = format!("HTTP/1.1 200 OK\r\nx-conn: {n}\r\ncontent-length: 0\r\n\r\n");
                    for line in BufReader::new(stream).lines() {
                        match line {
                            Ok(l) if l.is_empty() => {
                                if writer.write_all(ok.as_bytes()).is_err() {
                                    return;
                                }
                            }
                            Ok(_) => {}
                            Err(_) => return,
                        }
                    }
                });
            }
        });
        url
    }

    /// The connections (by `x-conn`) that served `times` requests sent from
    /// a task on `runtime`.
    fn served(u: &Arc<Upstream>, runtime: &tokio::runtime::Handle, times: usize) -> Vec<String> {
        let (tx, rx) = std::sync::mpsc::channel();
        let u = u.clone();
        runtime.spawn(async move {
            let mut conns = Vec::new();
            for _ in 0..times {
                let req = http::Request::get(u.uri("/", None).unwrap())
                    .body(crate::server::empty())
                    .unwrap();
                let response = u.client(false).request(req).await.unwrap();
                conns.push(response.headers()["x-conn"].to_str().unwrap().to_owned());
                http_body_util::BodyExt::collect(response.into_body())
                    .await
                    .unwrap();
                // Let the connection go back to its pool before the next.
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            let _ = tx.send(conns);
        });
        rx.recv().unwrap()
    }

    #[test]
    fn pinned_threads_pool_their_own_upstream_connections() {
        let url = numbering_upstream();
        let u = Arc::new(upstream(&url));
        let shared = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let pinned = sluice_core::pinned::PinnedRuntimes::start(2).unwrap();
        let (first, _held) = pinned.least_busy().unwrap();
        let (second, _held_too) = pinned.least_busy().unwrap();
        // The shared runtime stays up with its idle connection pooled: a
        // shared pool would hand that connection to the pinned threads.
        let on_shared = served(&u, shared.handle(), 2);
        let on_pinned = [served(&u, first, 2), served(&u, second, 2)];
        for conn in on_pinned.concat() {
            assert!(
                !on_shared.contains(&conn),
                "{on_pinned:?} reused {on_shared:?}"
            );
        }
        assert!(
            on_pinned[0].iter().all(|c| !on_pinned[1].contains(c)),
            "{on_pinned:?}"
        );
        assert_eq!(on_pinned[0][0], on_pinned[0][1], "a thread reuses its pool");
        // A reload's new upstream never reuses the old one's pools.
        let reloaded = Arc::new(upstream(&url));
        let after = served(&reloaded, first, 1);
        assert!(!on_pinned[0].contains(&after[0]), "{after:?}");
        pinned.shutdown();
    }

    #[test]
    fn redirects_into_the_upstream_stay_on_the_gateway() {
        let u = upstream("https://crm.internal:8443/api");
        let loc = |l: &str| u.gateway_location(l, "/crm");
        assert_eq!(
            loc("https://crm.internal:8443/api/v1/x?a=1").as_deref(),
            Some("/crm/v1/x?a=1")
        );
        assert_eq!(
            loc("https://crm.internal:8443/api").as_deref(),
            Some("/crm/")
        );
        assert_eq!(loc("/api/login").as_deref(), Some("/crm/login"));
        assert_eq!(loc("/apiary"), None);
        assert_eq!(loc("/other"), None);
        assert_eq!(loc("https://crm.internal:8443.evil.com/api/x"), None);
        assert_eq!(loc("https://elsewhere.example/api/x"), None);
        assert_eq!(loc("//crm.internal:8443/api/x"), None);
        let u = upstream("http://127.0.0.1:9000");
        assert_eq!(u.gateway_location("/login", "").as_deref(), Some("/login"));
        assert_eq!(
            u.gateway_location("http://127.0.0.1:9000/a", "/billing")
                .as_deref(),
            Some("/billing/a")
        );
    }
}

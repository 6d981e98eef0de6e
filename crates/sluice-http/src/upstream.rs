//! The upstream leg: TLS per connection and a pooled HTTP/1.1 + HTTP/2 client.

use sluice_core::config::{ConnectionConfig, Secret, UpstreamTls};
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
    let mode = match connection.upstream_tls {
        UpstreamTls::Disable => {
            return Err("upstream_tls = \"disable\" contradicts an https:// upstream".into())
        }
        UpstreamTls::Prefer | UpstreamTls::VerifyFull => UpstreamTls::VerifyFull,
        other => other,
    };
    let ca = ca_path(connection)?;
    let config = sluice_core::tls::upstream_client_config(mode, ca.as_deref())
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "no TLS configuration for an https:// upstream".to_string())?;
    let mut config = (*config).clone();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(Arc::new(config)))
}

/// `ca = { file }` is read in place; `ca = { env }` holds the PEM itself and
/// is written next to the generated listener certificate (a CA bundle is
/// public) so that core's verifier can load it.
fn ca_path(connection: &ConnectionConfig) -> Result<Option<PathBuf>, String> {
    match (&connection.ca, &connection.upstream_ca) {
        (Some(Secret::File(path)), _) => Ok(Some(path.clone())),
        (Some(secret @ Secret::Env(_)), _) => {
            let pem = secret.resolve().map_err(|e| format!("ca: {e}"))?;
            // Its own directory: write_private makes the parent 0700.
            let path = std::env::temp_dir()
                .join(format!("sluice-ca-{}", std::process::id()))
                .join(format!("{}.pem", connection.name));
            sluice_core::fsutil::write_private(&path, pem.as_bytes())
                .map_err(|e| format!("ca: cannot stage the CA bundle: {e}"))?;
            Ok(Some(path))
        }
        (None, Some(path)) => Ok(Some(path.clone())),
        (None, None) => Ok(None),
    }
}

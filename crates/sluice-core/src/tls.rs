//! TLS for listeners (configured certificate, or a generated CA + leaf in
//! `state_dir`) and for the gateway's own connections to upstreams.

use crate::config::{Config, UpstreamTls};
use crate::sync::MutexExt;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
#[error("tls: {path}: {reason}")]
pub struct TlsError {
    pub path: PathBuf,
    pub reason: String,
}

fn tls_err(path: &Path, reason: impl ToString) -> TlsError {
    TlsError {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Installs the process-wide rustls crypto provider (aws-lc-rs). Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Opens a TCP connection to `addr` (Nagle off) and a TLS session over it as
/// `server_name`, within `timeout`: the gateway's own clients of its
/// listeners (the operator CLI, the MCP front end). The error says which
/// step failed, never with secrets.
pub async fn connect(
    addr: impl tokio::net::ToSocketAddrs,
    connector: &tokio_rustls::TlsConnector,
    server_name: ServerName<'static>,
    timeout: std::time::Duration,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    tokio::time::timeout(timeout, async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        connector
            .connect(server_name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))
    })
    .await
    .map_err(|_| "timed out connecting".to_string())?
}

/// Where the generated listener certificate lives.
pub fn generated_paths(state_dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let dir = state_dir.join("tls");
    (
        dir.join("ca.crt"),
        dir.join("server.crt"),
        dir.join("server.key"),
    )
}

/// The listener's TLS config: `[tls]` when set, else a CA and leaf certificate
/// generated once into `state_dir/tls` (clients trust `ca.crt`).
pub fn server_config(config: &Config, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, TlsError> {
    install_crypto_provider();
    // Listeners start concurrently (some in their own tasks): one generates
    // while the others wait, then read the finished pair, never a key from
    // one generation and a certificate from another.
    static GENERATING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _generating = crate::sync::MutexExt::locked(&GENERATING);
    let (cert_path, key_path) = match &config.tls {
        Some(t) => (t.cert.clone(), t.key.clone()),
        None => {
            let (ca, cert, key) = generated_paths(&config.gateway.state_dir);
            if !cert.exists() || !key.exists() {
                generate(&ca, &cert, &key)?;
            }
            (cert, key)
        }
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .map_err(|e| tls_err(&cert_path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| tls_err(&cert_path, e))?;
    if certs.is_empty() {
        return Err(tls_err(&cert_path, "no certificate found"));
    }
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| tls_err(&key_path, e))?;
    let mut sc = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| tls_err(&cert_path, e))?;
    sc.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(sc))
}

fn generate(ca_path: &Path, cert_path: &Path, key_path: &Path) -> Result<(), TlsError> {
    let e = |r: rcgen::Error| tls_err(cert_path, r);
    let ca_key = rcgen::KeyPair::generate().map_err(e)?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Sluice local CA");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(e)?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().map_err(e)?;
    let mut leaf = rcgen::CertificateParams::new(vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ])
    .map_err(e)?;
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, "sluice gateway");
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).map_err(e)?;
    let chain = format!("{}{}", leaf_cert.pem(), ca_cert.pem());
    crate::fsutil::write_private(key_path, leaf_key.serialize_pem().as_bytes())
        .map_err(|err| tls_err(key_path, err))?;
    std::fs::write(cert_path, chain).map_err(|err| tls_err(cert_path, err))?;
    std::fs::write(ca_path, ca_cert.pem()).map_err(|err| tls_err(ca_path, err))?;
    tracing::info!(message = "Generated a listener certificate; clients can trust its CA.", ca = %ca_path.display());
    Ok(())
}

/// The gateway's TLS client config for an upstream, per libpq-style mode.
/// `None` for `disable`.
///
/// Built once per mode and CA file and shared: a config (trust anchors,
/// verifier, resumption cache) is about 14 KB, and protocols ask for one per
/// session. A CA file that is replaced or rewritten (another inode, length or
/// modification time) is read again, as it was when every session read it.
pub fn upstream_client_config(
    mode: UpstreamTls,
    ca: Option<&Path>,
) -> Result<Option<Arc<ClientConfig>>, TlsError> {
    type Key = (UpstreamTls, Option<PathBuf>);
    type Built = (Option<FileStamp>, Option<Arc<ClientConfig>>);
    /// More distinct configs than any deployment has: past it, start over.
    const MAX_CONFIGS: usize = 64;
    static CONFIGS: std::sync::OnceLock<std::sync::Mutex<HashMap<Key, Built>>> =
        std::sync::OnceLock::new();
    let stamp = match ca {
        Some(path) => Some(FileStamp::of(path).map_err(|e| tls_err(path, e))?),
        None => None,
    };
    let key = (mode, ca.map(Path::to_path_buf));
    let configs = CONFIGS.get_or_init(Default::default);
    if let Some((built_stamp, config)) = configs.locked().get(&key) {
        if *built_stamp == stamp {
            return Ok(config.clone());
        }
    }
    let config = build_upstream_client_config(mode, ca)?;
    let mut configs = configs.locked();
    if configs.len() >= MAX_CONFIGS {
        configs.clear();
    }
    configs.insert(key, (stamp, config.clone()));
    Ok(config)
}

/// What tells a CA file's versions apart without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    inode: u64,
    len: u64,
    modified: Option<std::time::SystemTime>,
}

impl FileStamp {
    fn of(path: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path)?;
        Ok(FileStamp {
            inode: meta.ino(),
            len: meta.len(),
            modified: meta.modified().ok(),
        })
    }
}

fn build_upstream_client_config(
    mode: UpstreamTls,
    ca: Option<&Path>,
) -> Result<Option<Arc<ClientConfig>>, TlsError> {
    install_crypto_provider();
    // The CA file's certificates: trust anchors, and also accepted as the
    // server's own certificate (a self-signed server certificate used as its
    // own root, which libpq accepts and webpki alone does not).
    let mut pinned = Vec::new();
    let mut roots = RootCertStore::empty();
    match ca {
        Some(path) => {
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| tls_err(path, e))? {
                let cert = cert.map_err(|e| tls_err(path, e))?;
                // A self-signed leaf may not be a valid anchor; it is still pinned.
                let _ = roots.add(cert.clone());
                pinned.push(cert);
            }
            if pinned.is_empty() {
                return Err(tls_err(path, "no certificate found"));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let config = match mode {
        UpstreamTls::Disable => return Ok(None),
        // libpq semantics: encrypted, but the certificate is not checked.
        UpstreamTls::Prefer | UpstreamTls::Require => ClientConfig::builder()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification::new()))
            .with_no_client_auth(),
        UpstreamTls::VerifyCa | UpstreamTls::VerifyFull => {
            let inner = rustls::client::WebPkiServerVerifier::builder(Arc::new(roots))
                .build()
                .map_err(|e| tls_err(ca.unwrap_or(Path::new("system roots")), e))?;
            ClientConfig::builder()
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(UpstreamVerifier {
                    inner,
                    pinned,
                    check_name: mode == UpstreamTls::VerifyFull,
                }))
                .with_no_client_auth()
        }
    };
    Ok(Some(Arc::new(config)))
}

/// `require`/`prefer`: encryption without authentication of the server, as libpq does.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl NoVerification {
    fn new() -> Self {
        NoVerification(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
    }
}

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca` / `verify-full`: the chain must lead to a configured CA (or be
/// a pinned certificate from the CA file); `verify-full` also checks the name.
#[derive(Debug)]
struct UpstreamVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    pinned: Vec<CertificateDer<'static>>,
    check_name: bool,
}

impl ServerCertVerifier for UpstreamVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let name_error = |e: &rustls::Error| {
            matches!(
                e,
                rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidForName
                        | rustls::CertificateError::NotValidForNameContext { .. }
                )
            )
        };
        match self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Ok(v) => Ok(v),
            Err(e) if !self.check_name && name_error(&e) => Ok(ServerCertVerified::assertion()),
            Err(_)
                if self
                    .pinned
                    .iter()
                    .any(|p| p.as_ref() == end_entity.as_ref()) =>
            {
                if !self.check_name {
                    return Ok(ServerCertVerified::assertion());
                }
                let cert = webpki::EndEntityCert::try_from(end_entity).map_err(|_| {
                    rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
                })?;
                cert.verify_is_valid_for_subject_name(server_name)
                    .map(|_| ServerCertVerified::assertion())
                    .map_err(|_| {
                        rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)
                    })
            }
            Err(e) => Err(e),
        }
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(m, c, d)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed_pem(name: &str) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn upstream_configs_are_shared_until_the_ca_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, self_signed_pem("db.example")).unwrap();
        let config = |mode| upstream_client_config(mode, Some(&ca)).unwrap().unwrap();
        let first = config(UpstreamTls::VerifyFull);
        assert!(Arc::ptr_eq(&first, &config(UpstreamTls::VerifyFull)));
        // Another mode is another verifier.
        assert!(!Arc::ptr_eq(&first, &config(UpstreamTls::VerifyCa)));
        assert!(upstream_client_config(UpstreamTls::Disable, Some(&ca))
            .unwrap()
            .is_none());

        // A replaced CA file (a new inode, as an atomic rename makes) is read again.
        let next = dir.path().join("next.pem");
        std::fs::write(&next, self_signed_pem("other.example")).unwrap();
        std::fs::rename(&next, &ca).unwrap();
        let second = config(UpstreamTls::VerifyFull);
        assert!(!Arc::ptr_eq(&first, &second));
        assert!(Arc::ptr_eq(&second, &config(UpstreamTls::VerifyFull)));

        // A CA file that is gone or empty is an error, as before, and not served from the cache.
        std::fs::write(&ca, "").unwrap();
        assert!(upstream_client_config(UpstreamTls::VerifyFull, Some(&ca)).is_err());
        std::fs::remove_file(&ca).unwrap();
        assert!(upstream_client_config(UpstreamTls::VerifyFull, Some(&ca)).is_err());
    }
}

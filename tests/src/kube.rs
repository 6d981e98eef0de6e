//! Kubernetes harness: the stand-in API server (`py/kube_apiserver.py`, on TLS, checking its
//! own bearer token), the real `sluice` binary with a `kubernetes` connection in front of it,
//! and real `kubectl` with a generated kubeconfig (`server: https://127.0.0.1:PORT/k8s`,
//! `token: TOKEN`, the gateway's generated CA).
//!
//! Each test builds its own [`KubeEnv`]; dropping it stops the gateway and the API server.

use crate::{
    issue_token, ok, py_dir, run_with_timeout, sluice_bin, sluice_cli, wait_until, COMMAND_TIMEOUT,
};
use sluice_sandbox::free_port;
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;
use tempfile::TempDir;

/// The credential only the gateway holds; the API server accepts nothing else.
pub const UPSTREAM_TOKEN: &str = "upstream-sa-token-7f3d9c2b1a";
/// The stand-in's Secret value (`db-credentials`, key `password`), plain and base64.
pub const SECRET_VALUE: &str = "s3cr3t-Pa55w0rd!";
pub const SECRET_VALUE_B64: &str = "czNjcjN0LVBhNTV3MHJkIQ==";
/// The other key of that Secret (`username` = `app`), base64.
pub const SECRET_USER_B64: &str = "YXBw";

/// What to start: extra gateway config (rules, masking), gateway environment.
#[derive(Debug, Default, Clone)]
pub struct KubeEnvBuilder {
    extra_toml: Vec<String>,
    gateway_env: Vec<(String, String)>,
    api_listener: bool,
    watch_seconds: Option<f64>,
    client_cert: bool,
}

impl KubeEnvBuilder {
    /// Appends TOML to the gateway config (after the `k8s` connection).
    pub fn extra_toml(mut self, toml: &str) -> Self {
        self.extra_toml.push(toml.to_string());
        self
    }

    /// Sets an environment variable for the gateway and the CLI.
    pub fn gateway_env(mut self, key: &str, value: &str) -> Self {
        self.gateway_env.push((key.to_string(), value.to_string()));
        self
    }

    /// Also starts the operator API (for `sluice approvals`).
    pub fn api_listener(mut self) -> Self {
        self.api_listener = true;
        self
    }

    /// How long the stand-in keeps a watch stream open after its events (default 0.5 s).
    pub fn watch_seconds(mut self, seconds: f64) -> Self {
        self.watch_seconds = Some(seconds);
        self
    }

    /// The gateway authenticates upstream with a client certificate (`client_cert` /
    /// `client_key`) instead of a token; the API server then requires that certificate.
    pub fn client_cert(mut self) -> Self {
        self.client_cert = true;
        self
    }

    pub fn start(self) -> KubeEnv {
        let dir = tempfile::Builder::new()
            .prefix("sluice-kube-e2e-")
            .tempdir()
            .expect("creating the test temp dir");
        let client = self.client_cert.then(|| client_certificate(&dir));
        let (apiserver, api_port, api_ca, request_log) = start_apiserver(
            &dir,
            self.watch_seconds.unwrap_or(0.5),
            client.as_ref().map(|c| c.0.clone()),
        );
        let credential = match &client {
            Some((_, cert, key)) => format!(
                "client_cert = {{ file = {:?} }}\nclient_key = {{ file = {:?} }}",
                cert.display().to_string(),
                key.display().to_string()
            ),
            None => "token = { env = \"K8S_TOKEN\" }".to_string(),
        };
        let state_dir = dir.path().join("state");
        let port = free_port();
        let api = self.api_listener.then(free_port);
        let config = format!(
            "[gateway]\n\
             state_dir = {state:?}\n\
             \n\
             [listen]\n\
             http = \"127.0.0.1:{port}\"\n\
             {api}\n\
             \n\
             [[connections]]\n\
             name = \"k8s\"\n\
             kind = \"kubernetes\"\n\
             upstream = \"https://127.0.0.1:{api_port}\"\n\
             {credential}\n\
             ca = {{ file = {ca:?} }}\n\
             allow_groups = [\"agents\", \"dba\", \"batch\"]\n\
             \n\
             {extra}\n",
            state = state_dir.display().to_string(),
            api = api
                .map(|p| format!("api = \"127.0.0.1:{p}\""))
                .unwrap_or_default(),
            ca = api_ca.display().to_string(),
            extra = self.extra_toml.join("\n"),
        );
        let config_path = dir.path().join("sluice.toml");
        fs::write(&config_path, config).expect("writing the gateway config");
        let mut gateway_env = vec![
            ("K8S_TOKEN".to_string(), UPSTREAM_TOKEN.to_string()),
            ("NO_COLOR".to_string(), "1".to_string()),
            ("SLUICE_LOG".to_string(), "info".to_string()),
        ];
        gateway_env.extend(self.gateway_env);
        let log_path = dir.path().join("gateway.log");
        let log = fs::File::create(&log_path).expect("creating the gateway log");
        let gateway = Command::new(sluice_bin())
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .envs(gateway_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning the log handle"))
            .stderr(log)
            .spawn()
            .expect("spawning sluice serve");
        let mut env = KubeEnv {
            gateway: Some(gateway),
            apiserver: Some(apiserver),
            port,
            config_path,
            state_dir,
            log_path,
            request_log,
            gateway_env,
            dir,
        };
        env.wait_ready();
        env
    }
}

/// Generates the stand-in's certificate (a CA and a leaf for 127.0.0.1, as core generates
/// the gateway's) and starts it; returns it, its port, its CA file and its request log.
fn start_apiserver(
    dir: &TempDir,
    watch_seconds: f64,
    client_ca: Option<PathBuf>,
) -> (Child, u16, PathBuf, PathBuf) {
    let mut config = sluice_core::Config::default();
    config.gateway.state_dir = dir.path().join("apiserver");
    sluice_core::tls::server_config(&config, &[]).expect("generating the API server certificate");
    let (ca, cert, key) = sluice_core::tls::generated_paths(&config.gateway.state_dir);
    let request_log = dir.path().join("apiserver-requests.jsonl");
    let mut cmd = Command::new("python3");
    if let Some(ca) = &client_ca {
        cmd.arg(py_dir().join("kube_apiserver.py"))
            .arg("--client-ca")
            .arg(ca);
    } else {
        cmd.arg(py_dir().join("kube_apiserver.py"));
    }
    let mut child = cmd
        .arg("--cert")
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .args(["--token-env", "STANDIN_TOKEN", "--log"])
        .arg(&request_log)
        .env("STANDIN_TOKEN", UPSTREAM_TOKEN)
        // Watch streams end soon, so `kubectl get -w` returns.
        .env("KUBE_STANDIN_WATCH_SECONDS", watch_seconds.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting python3 kube_apiserver.py");
    let stdout = child.stdout.take().expect("the API server's stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("reading the API server's port");
    let port: u16 = line
        .trim()
        .strip_prefix("LISTENING ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("the stand-in API server did not start: {line:?}"));
    (child, port, ca, request_log)
}

/// A client CA and a certificate for CN `sluice-gateway` signed by it (openssl CLI);
/// returns the CA, the certificate and the key.
fn client_certificate(dir: &TempDir) -> (PathBuf, PathBuf, PathBuf) {
    let d = dir.path().join("client-pki");
    fs::create_dir_all(&d).expect("creating the client PKI dir");
    let p = |name: &str| d.join(name);
    fs::write(p("ext"), "extendedKeyUsage=clientAuth\n").expect("writing ext");
    let steps: [&[&str]; 3] = [
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=test client CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
        ],
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "client.key",
            "-out",
            "client.csr",
            "-subj",
            "/CN=sluice-gateway",
        ],
        &[
            "x509",
            "-req",
            "-in",
            "client.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "client.crt",
            "-days",
            "2",
            "-extfile",
            "ext",
        ],
    ];
    for args in steps {
        let out = run_with_timeout(
            Command::new("openssl").args(args).current_dir(&d),
            None,
            COMMAND_TIMEOUT,
        );
        ok(&out);
    }
    (p("ca.crt"), p("client.crt"), p("client.key"))
}

/// The stand-in API server, the gateway in front of it, and a temp dir.
pub struct KubeEnv {
    gateway: Option<Child>,
    apiserver: Option<Child>,
    /// The gateway's HTTP listener port on 127.0.0.1.
    pub port: u16,
    pub config_path: PathBuf,
    pub state_dir: PathBuf,
    log_path: PathBuf,
    request_log: PathBuf,
    gateway_env: Vec<(String, String)>,
    pub dir: TempDir,
}

impl std::fmt::Debug for KubeEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeEnv").field("port", &self.port).finish()
    }
}

impl Drop for KubeEnv {
    fn drop(&mut self) {
        for child in [self.gateway.take(), self.apiserver.take()]
            .into_iter()
            .flatten()
        {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl KubeEnv {
    /// The default: no rules, no masking configuration.
    pub fn start() -> KubeEnv {
        KubeEnvBuilder::default().start()
    }

    pub fn builder() -> KubeEnvBuilder {
        KubeEnvBuilder::default()
    }

    fn wait_ready(&mut self) {
        let ca = self.state_dir.join("tls").join("ca.crt");
        let port = self.port;
        let mut gateway = self.gateway.take().expect("the gateway process");
        wait_until(
            Duration::from_secs(30),
            "the gateway's HTTP listener",
            || {
                if let Ok(Some(status)) = gateway.try_wait() {
                    panic!(
                        "sluice serve exited ({status}); log:\n{}",
                        self.gateway_log()
                    );
                }
                (ca.is_file() && TcpStream::connect(("127.0.0.1", port)).is_ok()).then_some(())
            },
        );
        self.gateway = Some(gateway);
    }

    /// Everything the gateway logged so far.
    pub fn gateway_log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The requests the API server received: method, path, authorization, accept, upgrade.
    pub fn upstream_requests(&self) -> Vec<serde_json::Value> {
        fs::read_to_string(&self.request_log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Runs `sluice ARGS… --config FILE` with the gateway's environment.
    pub fn sluice(&self, args: &[&str]) -> Output {
        sluice_cli(&self.config_path, &self.gateway_env, args)
    }

    /// A gateway token for `subject` in `groups`, valid 10 minutes.
    pub fn token(&self, subject: &str, groups: &[&str]) -> String {
        issue_token(|a| self.sluice(a), subject, groups, "10m")
    }

    /// Writes a kubeconfig for `token` (namespace `default`) and returns its path.
    pub fn kubeconfig(&self, token: &str) -> PathBuf {
        let ca = self.state_dir.join("tls").join("ca.crt");
        let path = self.dir.path().join(format!(
            "kubeconfig-{}",
            &token[token.len().saturating_sub(8)..]
        ));
        let text = format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: sluice\n  cluster:\n    server: https://127.0.0.1:{port}/k8s\n    certificate-authority: {ca}\n\
             users:\n\
             - name: agent\n  user:\n    token: {token}\n\
             contexts:\n\
             - name: sluice\n  context:\n    cluster: sluice\n    user: agent\n    namespace: default\n\
             current-context: sluice\n",
            port = self.port,
            ca = ca.display(),
        );
        fs::write(&path, text).expect("writing the kubeconfig");
        path
    }

    /// A `kubectl --kubeconfig … ARGS` command with a private HOME (discovery cache).
    pub fn kubectl_command(&self, token: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig")
            .arg(self.kubeconfig(token))
            .args(args)
            .env_remove("KUBECONFIG")
            .env("HOME", self.dir.path())
            .env("NO_COLOR", "1");
        cmd
    }

    /// Runs kubectl to completion.
    pub fn kubectl(&self, token: &str, args: &[&str]) -> Output {
        run_with_timeout(
            &mut self.kubectl_command(token, args),
            None,
            COMMAND_TIMEOUT,
        )
    }

    /// `sluice replay SESSION_ID`.
    pub fn replay(&self, session_id: &str) -> String {
        ok(&self.sluice(&["replay", session_id]))
    }

    /// `sluice sessions list --json`.
    pub fn sessions(&self) -> Vec<serde_json::Value> {
        let out = self.sluice(&["sessions", "list", "--json"]);
        serde_json::from_str(&ok(&out)).expect("sessions list --json")
    }
}

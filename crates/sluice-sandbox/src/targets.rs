//! The demo's other targets, so a newcomer sees every protocol behind the
//! gateway: an OpenSSH server run unprivileged on a loopback port (it only
//! logs in its own account, with a key the gateway holds) and a small HTTP
//! API serving the demo customers as JSON. Both stop when dropped.

use crate::demo::customers;
use crate::{
    chown_to, command_error, free_port, io_err, is_root, random_hex, run, user_exists,
    wait_for_port, SandboxError,
};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use std::{fs, thread};

/// The account the demo sshd logs in when the demo runs as root (sshd
/// itself then runs as this account too, unprivileged).
pub const DEMO_SSH_ACCOUNT: &str = "sluice-demo";

/// A throwaway sshd for the demo. Dropping it stops the server.
#[derive(Debug)]
pub struct DemoSshd {
    child: Child,
    addr: SocketAddr,
    /// The account it logs in.
    pub user: String,
    /// The host's public key line (`ssh-ed25519 AAAA…`), for `host_key`.
    pub host_key: String,
    /// The private key the gateway logs in with.
    pub gateway_key: PathBuf,
}

impl DemoSshd {
    /// Starts sshd under `dir` (keys, config, authorized key) on a free port.
    pub fn start(dir: &Path) -> Result<DemoSshd, SandboxError> {
        let sshd = Path::new("/usr/sbin/sshd");
        if !sshd.exists() {
            return Err(SandboxError::Environment(
                "no /usr/sbin/sshd (install openssh-server; cargo xtask setup does)".into(),
            ));
        }
        let account = login_account()?;
        fs::create_dir_all(dir).map_err(io_err("creating the demo sshd directory"))?;
        let host = dir.join("host_key");
        let client = dir.join("gateway_key");
        for key in [&host, &client] {
            let _ = fs::remove_file(key);
            let _ = fs::remove_file(key.with_extension("pub"));
            let mut keygen = Command::new("ssh-keygen");
            keygen
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "sluice-demo", "-f"])
                .arg(key);
            run(&mut keygen, "ssh-keygen")?;
        }
        let read_pub = |key: &Path| {
            fs::read_to_string(key.with_extension("pub"))
                .map_err(io_err("reading a generated public key"))
        };
        let host_key = read_pub(&host)?.trim().to_string();
        let authorized = dir.join("authorized_keys");
        fs::write(&authorized, read_pub(&client)?).map_err(io_err("writing authorized_keys"))?;
        let port = free_port();
        let config = dir.join("sshd_config");
        fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nPidFile {}\n\
                 AuthorizedKeysFile {}\nStrictModes no\nUsePAM no\nPubkeyAuthentication yes\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 AllowTcpForwarding no\nX11Forwarding no\nSubsystem sftp internal-sftp\n",
                host.display(),
                dir.join("sshd.pid").display(),
                authorized.display(),
            ),
        )
        .map_err(io_err("writing sshd_config"))?;
        let runs_as = is_root().then_some(DEMO_SSH_ACCOUNT);
        // sshd reads its host key and config as the account it runs as; the
        // gateway's private key stays with us.
        for path in [&host, &config, &authorized] {
            chown_to(runs_as, path)?;
        }
        let log = fs::File::create(dir.join("sshd.log")).map_err(io_err("creating sshd.log"))?;
        // The child is sshd itself (not runuser), so that stopping it stops sshd.
        let mut command = Command::new(sshd);
        if let Some(account) = runs_as {
            use std::os::unix::process::CommandExt;
            let (uid, gid) = (id_of(account, "-u")?, id_of(account, "-g")?);
            command.uid(uid).gid(gid);
        }
        let child = command
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(io_err("starting sshd"))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let server = DemoSshd {
            child,
            addr,
            user: account,
            host_key,
            gateway_key: client,
        };
        if let Err(e) = wait_for_port(addr, Duration::from_secs(10)) {
            let log = fs::read_to_string(dir.join("sshd.log")).unwrap_or_default();
            drop(server);
            return Err(SandboxError::Environment(format!(
                "sshd did not start ({e}): {log}"
            )));
        }
        Ok(server)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for DemoSshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `id -u ACCOUNT` or `id -g ACCOUNT`.
fn id_of(account: &str, flag: &str) -> Result<u32, SandboxError> {
    let out = Command::new("id")
        .args([flag, account])
        .output()
        .map_err(io_err("running id"))?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|_| command_error("id", &out))
}

/// The account sshd logs in: ourselves, or (as root) a dedicated account,
/// created if needed, that can log in with a key and has no password.
fn login_account() -> Result<String, SandboxError> {
    if !is_root() {
        let out = Command::new("id")
            .arg("-un")
            .output()
            .map_err(io_err("running id -un"))?;
        return Ok(String::from_utf8_lossy(&out.stdout).trim().to_string());
    }
    if !user_exists(DEMO_SSH_ACCOUNT) {
        let out = Command::new("useradd")
            .args(["--create-home", "--shell", "/bin/bash", DEMO_SSH_ACCOUNT])
            .stdin(Stdio::null())
            .output()
            .map_err(io_err("running useradd"))?;
        if !out.status.success() && !user_exists(DEMO_SSH_ACCOUNT) {
            return Err(command_error("useradd sluice-demo", &out));
        }
    }
    // A new account is locked ("!"); "*" allows key logins and no password.
    let mut unlock = Command::new("usermod");
    unlock.args(["-p", "*", DEMO_SSH_ACCOUNT]);
    run(&mut unlock, "usermod -p '*'")?;
    Ok(DEMO_SSH_ACCOUNT.to_string())
}

/// A small HTTP API for the demo: `GET /customers`, `GET /customers/ID`
/// (names, emails, card numbers: something to mask), `DELETE /customers/ID`
/// and `POST /refunds`. Every request needs the bearer token the gateway
/// holds. Dropping it stops accepting connections.
#[derive(Debug)]
pub struct DemoApi {
    addr: SocketAddr,
    /// The credential the gateway holds (`bearer = { env = … }`).
    pub token: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl DemoApi {
    pub fn start() -> Result<DemoApi, SandboxError> {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(io_err("binding the demo API"))?;
        let addr = listener
            .local_addr()
            .map_err(io_err("reading its address"))?;
        let token = random_hex(16)?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (expected, stopped) = (format!("Bearer {token}"), stop.clone());
        thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let expected = expected.clone();
                thread::spawn(move || {
                    let _ = serve(stream, &expected);
                });
            }
        });
        Ok(DemoApi { addr, token, stop })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for DemoApi {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

/// The longest request head or body the demo API reads.
const MAX_REQUEST: usize = 64 * 1024;

/// One request per connection (`Connection: close`).
fn serve(stream: TcpStream, expected_auth: &str) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
    );
    let (mut length, mut authorized, mut head) = (0usize, false, line.len());
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" || header == "\n" {
            break;
        }
        head += header.len();
        if head > MAX_REQUEST {
            return respond(
                stream,
                431,
                &serde_json::json!({"error": "headers too large"}),
            );
        }
        if let Some((name, value)) = header.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse().unwrap_or(usize::MAX);
            } else if name.eq_ignore_ascii_case("authorization") {
                authorized = value == expected_auth;
            }
        }
    }
    if length > MAX_REQUEST {
        return respond(stream, 413, &serde_json::json!({"error": "body too large"}));
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    if !authorized {
        return respond(
            stream,
            401,
            &serde_json::json!({"error": "missing or wrong bearer token"}),
        );
    }
    let (status, doc) = route(&method, path.split('?').next().unwrap_or(""), &body);
    respond(stream, status, &doc)
}

fn route(method: &str, path: &str, body: &[u8]) -> (u16, serde_json::Value) {
    use serde_json::json;
    let all = customers();
    let customer = |i: usize, c: &crate::demo::Customer| json!({"id": i + 1, "name": c.name, "email": c.email, "card_number": c.card_number});
    let id = path
        .strip_prefix("/customers/")
        .and_then(|id| id.parse::<usize>().ok())
        .filter(|id| (1..=all.len()).contains(id));
    match (method, path, id) {
        ("GET", "/customers", _) => (
            200,
            json!(all
                .iter()
                .enumerate()
                .take(10)
                .map(|(i, c)| customer(i, c))
                .collect::<Vec<_>>()),
        ),
        ("GET", _, Some(id)) => (200, customer(id - 1, &all[id - 1])),
        ("DELETE", _, Some(id)) => (200, json!({"deleted": id})),
        ("POST", "/refunds", _) => match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(refund) => (201, json!({"refund": refund, "state": "issued"})),
            Err(_) => (400, json!({"error": "send a JSON body"})),
        },
        _ => (404, json!({"error": format!("no route {method} {path}")})),
    }
}

fn respond(mut stream: TcpStream, status: u16, doc: &serde_json::Value) -> std::io::Result<()> {
    let body = doc.to_string();
    let reason = match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        413 => "Payload Too Large",
        _ => "Request Header Fields Too Large",
    };
    write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

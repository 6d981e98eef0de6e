//! An S3-compatible server for the tests: moto's server (PyPI `moto[server]`), on a free port,
//! stopped on drop. Objects are read and changed with boto3 (`tests/py/s3.py`), not the gateway.

use crate::{py_dir, run_with_timeout, stdout, wait_until};
use sluice_sandbox::free_port;
use std::net::TcpStream;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

pub struct S3Server {
    child: Child,
    port: u16,
}

impl S3Server {
    pub fn start() -> S3Server {
        let port = free_port();
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting moto's S3 server (pip install 'moto[server]')");
        let server = S3Server { child, port };
        wait_until(Duration::from_secs(30), "moto's S3 server", || {
            TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
        });
        server
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Runs `tests/py/s3.py` against this server; `input` is the object body for `put`.
    pub fn run(&self, args: &[&str], input: Option<&[u8]>) -> Output {
        let mut cmd = Command::new("python3");
        cmd.arg(py_dir().join("s3.py"))
            .arg(self.endpoint())
            .args(args);
        run_with_timeout(&mut cmd, input, Duration::from_secs(30))
    }

    pub fn create_bucket(&self, bucket: &str) {
        crate::ok(&self.run(&["mkbucket", bucket], None));
    }

    /// The keys in `bucket`.
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        stdout(&self.run(&["list", bucket], None))
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

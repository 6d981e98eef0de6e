//! A throwaway S3-compatible server: moto's (PyPI `moto[server]`), in
//! memory, on a free port on 127.0.0.1, stopped on drop. Buckets are made
//! with boto3 (installed with moto), not with the code under test.

use crate::{free_port, run, wait_for_port, SandboxError};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct TempS3 {
    child: Child,
    /// The TCP port on 127.0.0.1.
    pub port: u16,
}

impl TempS3 {
    pub fn start() -> Result<TempS3, SandboxError> {
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
            .map_err(|source| SandboxError::Io {
                context: "starting moto's S3 server (pip install 'moto[server]')".into(),
                source,
            })?;
        let server = TempS3 { child, port };
        wait_for_port(
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            Duration::from_secs(30),
        )?;
        Ok(server)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates `bucket` (any credentials: moto does not check them).
    pub fn create_bucket(&self, bucket: &str) -> Result<(), SandboxError> {
        let script = format!(
            "import boto3; boto3.client('s3', endpoint_url='{}', region_name='us-east-1', \
             aws_access_key_id='testing', aws_secret_access_key='testing')\
             .create_bucket(Bucket='{bucket}')",
            self.endpoint()
        );
        run(
            Command::new("python3").args(["-c", &script]),
            "creating a bucket",
        )
        .map(|_| ())
    }
}

impl Drop for TempS3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! An S3-compatible server for the tests: moto's server (PyPI `moto[server]`), on a free port,
//! stopped on drop. Objects are read and changed with boto3 (`tests/py/s3.py`), not the gateway.

use crate::{py_dir, run_with_timeout, stdout};
use sluice_sandbox::TempS3;
use std::process::{Command, Output};
use std::time::Duration;

pub struct S3Server {
    server: TempS3,
}

impl S3Server {
    pub fn start() -> S3Server {
        S3Server {
            server: TempS3::start().unwrap_or_else(|e| panic!("{e}")),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        self.server.endpoint()
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
        self.server
            .create_bucket(bucket)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// The keys in `bucket`.
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        stdout(&self.run(&["list", bucket], None))
            .lines()
            .map(str::to_string)
            .collect()
    }
}

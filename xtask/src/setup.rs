//! `cargo xtask setup`: installs what the project needs on Debian 12, idempotently.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Result};
use sluice_sandbox::{is_root, PgBinaries};

use crate::{command_exists, run_inherit, succeeds};

/// A Debian package and how to tell it is already there.
struct Requirement {
    package: &'static str,
    present: fn() -> bool,
}

fn dpkg_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|out| {
            out.status.success() && String::from_utf8_lossy(&out.stdout).ends_with(" installed")
        })
        .unwrap_or(false)
}

const REQUIREMENTS: &[Requirement] = &[
    Requirement {
        // Resolved to `postgresql-15` when the archive has it, else `postgresql`.
        package: "postgresql-15",
        present: || PgBinaries::find().is_ok() || dpkg_installed("postgresql-15"),
    },
    Requirement {
        package: "postgresql-client",
        present: || command_exists("psql") || dpkg_installed("postgresql-client"),
    },
    Requirement {
        package: "pgbouncer",
        present: || {
            command_exists("pgbouncer")
                || Path::new("/usr/sbin/pgbouncer").exists()
                || dpkg_installed("pgbouncer")
        },
    },
    Requirement {
        package: "libclang-dev",
        present: || dpkg_installed("libclang-dev"),
    },
    Requirement {
        package: "clang",
        present: || command_exists("clang") || dpkg_installed("clang"),
    },
    Requirement {
        package: "openssh-server",
        present: || Path::new("/usr/sbin/sshd").exists() || dpkg_installed("openssh-server"),
    },
    Requirement {
        package: "openssh-client",
        present: || command_exists("ssh") || dpkg_installed("openssh-client"),
    },
    // The gateway's allocator (jemalloc, through tikv-jemalloc-sys) is built
    // with its own configure script and make.
    Requirement {
        package: "make",
        present: || command_exists("make"),
    },
    Requirement {
        package: "sqlite3",
        present: || command_exists("sqlite3"),
    },
    Requirement {
        package: "curl",
        present: || command_exists("curl"),
    },
    Requirement {
        package: "tmux",
        present: || command_exists("tmux"),
    },
    // The shell differential test compares the parser with what bash execs under strace.
    Requirement {
        package: "strace",
        present: || command_exists("strace"),
    },
    Requirement {
        package: "openssl",
        present: || command_exists("openssl"),
    },
    Requirement {
        package: "python3",
        present: || command_exists("python3"),
    },
    // The OpenID provider of the identity tests (npm oidc-provider) runs on Node.js.
    Requirement {
        package: "nodejs",
        present: || command_exists("node"),
    },
    Requirement {
        package: "npm",
        present: || command_exists("npm"),
    },
    Requirement {
        // The HTTP gateway's e2e tests use Python requests as a client.
        package: "python3-requests",
        present: || succeeds(Command::new("python3").args(["-c", "import requests"])),
    },
    // The Kubernetes e2e tests drive a real kubectl (≥ 1.30: exec over WebSocket); the
    // machine image ships one. Debian 12's kubernetes-client (1.20) is too old.
    Requirement {
        package: "kubectl",
        present: || command_exists("kubectl"),
    },
    // The console's browser tests drive Debian's Chromium with Playwright
    // (`executable_path`); Playwright never downloads a browser here.
    Requirement {
        package: "chromium",
        present: || {
            Path::new("/usr/bin/chromium").exists()
                || Path::new("/usr/bin/chromium-browser").exists()
        },
    },
];

/// Installs missing Debian packages with apt-get (as root; otherwise prints the command and
/// fails), then the Python packages of the tests and cargo-nextest.
pub(crate) fn setup() -> Result<()> {
    let mut apt = Apt::default();
    let missing: Vec<&str> = REQUIREMENTS
        .iter()
        .filter(|r| !(r.present)())
        .map(|r| r.package)
        .collect();
    if missing.is_empty() {
        eprintln!("setup: system packages present");
    } else {
        apt.install(&missing)?;
    }

    // psycopg for the driver tests; Playwright (the Python package only, no
    // browser download) for the console's browser tests; mcp, the official
    // MCP SDK, for the MCP tests (tests/py/mcp_client.py); moto's S3 server
    // (and boto3, with it) for recordings in object storage (tests/src/s3.rs).
    for (module, package) in [
        ("psycopg", "psycopg[binary]"),
        ("playwright", "playwright"),
        ("mcp", "mcp>=2.3,<3"),
        ("moto.server", "moto[server]"),
    ] {
        if python_has(module) {
            eprintln!("setup: python3 {module} present");
            continue;
        }
        if !succeeds(Command::new("python3").args(["-m", "pip", "--version"])) {
            apt.install(&["python3-pip"])?;
        }
        eprintln!("setup: installing {package} for python3");
        let pip = || {
            let mut cmd = Command::new("python3");
            cmd.args(["-m", "pip", "install", "--quiet", package]);
            cmd
        };
        if run_inherit(&mut pip()).is_err() {
            // Debian's system Python is "externally managed" (PEP 668).
            eprintln!("setup: retrying with --break-system-packages");
            run_inherit(pip().arg("--break-system-packages"))?;
        }
        if !python_has(module) {
            bail!("{module} still cannot be imported by python3");
        }
    }

    oidc_provider_deps()?;

    if succeeds(crate::cargo().args(["nextest", "--version"])) {
        eprintln!("setup: cargo-nextest present");
    } else {
        eprintln!("setup: installing cargo-nextest");
        run_inherit(crate::cargo().args(["install", "cargo-nextest", "--locked"]))?;
    }
    Ok(())
}

/// `npm ci` in tests/oidc (the OpenID provider of the identity tests), from
/// the committed lockfile, when its node_modules is missing or older than it.
fn oidc_provider_deps() -> Result<()> {
    let dir = crate::workspace_root().join("tests").join("oidc");
    let installed = dir.join("node_modules").join(".package-lock.json");
    let lock = dir.join("package-lock.json");
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if modified(&installed).is_some() && modified(&installed) >= modified(&lock) {
        eprintln!("setup: tests/oidc npm packages present");
        return Ok(());
    }
    eprintln!("setup: installing tests/oidc npm packages (npm ci)");
    run_inherit(
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir),
    )
}

/// cargo-deny for `cargo xtask deny` and `cargo xtask test` (≈2 min to build once).
pub(crate) fn ensure_cargo_deny() -> Result<()> {
    if succeeds(crate::cargo().args(["deny", "--version"])) {
        return Ok(());
    }
    eprintln!("setup: installing cargo-deny");
    run_inherit(crate::cargo().args(["install", "cargo-deny", "--locked"]))
}

fn python_has(module: &str) -> bool {
    succeeds(Command::new("python3").args(["-c", &format!("import {module}")]))
}

#[derive(Default)]
struct Apt {
    updated: bool,
}

impl Apt {
    fn install(&mut self, packages: &[&str]) -> Result<()> {
        if !is_root() {
            bail!(
                "missing Debian packages: {}; install them as root with:\n  \
                 sudo apt-get update && sudo apt-get install -y {}",
                packages.join(" "),
                packages.join(" ")
            );
        }
        if !self.updated {
            run_inherit(Command::new("apt-get").arg("update"))?;
            self.updated = true;
        }
        let packages: Vec<&str> = packages
            .iter()
            .map(|&p| {
                if p == "postgresql-15" && !package_available(p) {
                    "postgresql"
                } else {
                    p
                }
            })
            .collect();
        eprintln!("setup: installing {}", packages.join(" "));
        run_inherit(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "--no-install-recommends"])
                .args(&packages),
        )
    }
}

/// Whether the apt archive has a candidate version of `package`.
fn package_available(package: &str) -> bool {
    Command::new("apt-cache")
        .args(["policy", package])
        .output()
        .map(|out| {
            let text = String::from_utf8_lossy(&out.stdout);
            text.lines()
                .any(|l| l.trim().starts_with("Candidate:") && !l.contains("(none)"))
        })
        .unwrap_or(false)
}

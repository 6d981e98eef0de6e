//! Project tasks: `cargo xtask setup | demo | test | lint | bench`.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};

mod bench;
mod faults;
mod fuzz;
mod interrupt;
mod pgwire;
mod setup;
mod shell_diff;
mod soak;

const USAGE: &str = "\
usage: cargo xtask <task> [args]

tasks:
  setup                 install what the project needs (Debian 12), idempotently
  demo [ARGS...]        setup, then `cargo run --release -p sluice -- demo ARGS...`
  test [ARGS...]        setup, build everything, then `cargo nextest run --workspace` (ARGS passed on)
  lint                  cargo fmt --check and cargo clippy -D warnings on the workspace
  bench [--seconds N] [--clients 1,4,16] [--modes simple,extended,prepared]
                        pgbench -S: direct PostgreSQL vs PgBouncer vs Sluice, side by side;
        [--ssh-mib N] [--only ssh]
                        scp direct vs Sluice vs ProxyJump, added exec round trip
  fuzz [--seconds N] [--target T]...
                        every cargo-fuzz target N seconds each (nightly), pass/fail per target
  fuzz --pg-protocol SECONDS [--pg-seed N]
                        the PostgreSQL protocol fuzzer (raw messages through the gateway,
                        checked by the server's statement log) for SECONDS
  soak [--sessions 1000] [--minutes 3]
                        concurrent sessions through the gateway: RSS and fds over time,
                        memory per idle session, audit count = commands sent
  faults [--scenario S]...
                        kill -9 mid-load, full state disk, upstream restart, stalls and
                        half-open connections: pass/fail per scenario
  deny                  cargo deny check bans licenses sources
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<()> {
    let Some((task, rest)) = args.split_first() else {
        eprint!("{USAGE}");
        bail!("no task given");
    };
    match task.as_str() {
        "setup" => setup::setup(),
        "demo" => {
            setup::setup()?;
            let mut cmd = cargo();
            cmd.args(["run", "--release", "-p", "sluice", "--", "demo"])
                .args(rest);
            run_inherit(&mut cmd)
        }
        "test" => {
            setup::setup()?;
            // Supply chain first: seconds, and a banned licence or source fails early.
            deny()?;
            run_inherit(cargo().args(["build", "--workspace", "--all-targets"]))?;
            run_inherit(
                cargo()
                    .args(["nextest", "run", "--workspace", "--no-fail-fast"])
                    .args(rest),
            )
        }
        "lint" => {
            run_inherit(cargo().args(["fmt", "--all", "--check"]))?;
            run_inherit(cargo().args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]))
        }
        "bench" => {
            interrupt::install();
            bench::bench(rest)
        }
        "fuzz" => {
            fuzz::fuzz(rest)?;
            shell_diff::after_fuzz(rest)
        }
        "soak" => soak::soak(rest),
        "faults" => faults::faults(rest),
        "deny" => deny(),
        "help" | "-h" | "--help" => {
            print!("{USAGE}");
            Ok(())
        }
        other => {
            eprint!("{USAGE}");
            bail!("unknown task `{other}`")
        }
    }
}

/// `cargo deny check bans licenses sources` with the repo's deny.toml. The
/// advisories check needs the RustSec database, which cannot be downloaded on
/// these machines; run `cargo deny check advisories` where it can.
fn deny() -> Result<()> {
    setup::ensure_cargo_deny()?;
    run_inherit(cargo().args(["deny", "check", "bans", "licenses", "sources"]))
}

/// The workspace root (the parent of this crate's directory).
pub(crate) fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// The cargo that runs us (`$CARGO`), in the workspace root.
pub(crate) fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

pub(crate) fn describe(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// Runs `cmd` with inherited stdio, printing it first; fails on a non-zero exit.
pub(crate) fn run_inherit(cmd: &mut Command) -> Result<()> {
    let line = describe(cmd);
    eprintln!("+ {line}");
    let status = cmd
        .status()
        .with_context(|| format!("could not run `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Whether `program` is found by the shell (`command -v`).
pub(crate) fn command_exists(program: impl AsRef<OsStr>) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg("command -v \"$1\" >/dev/null 2>&1")
        .arg("sh")
        .arg(program)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Runs `cmd` quietly; true if it exits 0.
pub(crate) fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

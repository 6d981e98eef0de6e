//! `cargo xtask fuzz`: runs every cargo-fuzz target in `fuzz/` for N seconds
//! each, from its committed seeds (`fuzz/seeds/TARGET`) plus the corpus grown
//! by earlier runs (`fuzz/corpus/TARGET`, not committed), and prints pass/fail
//! per target. A crash leaves its input in `fuzz/artifacts/TARGET/`; fix the
//! code, then keep the input as a regression unit test in the crate.
//!
//! `--pg-protocol SECONDS` runs the PostgreSQL protocol fuzzer instead (the
//! e2e test `pg_fuzz`: raw frontend messages against the real gateway and a
//! real PostgreSQL, checked by the statement-log oracle), for that long;
//! `--target` alongside it runs those cargo-fuzz targets too.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};

use crate::{describe, run_inherit, succeeds, workspace_root};

/// Every target: `fuzz/fuzz_targets/NAME.rs`, seeds in `fuzz/seeds/NAME/`.
///
/// A new parser adds its target here, a `[[bin]]` in fuzz/Cargo.toml and seeds.
pub(crate) const TARGETS: &[&str] = &[
    "pg_frontend",
    "pg_backend",
    "pg_startup",
    "sql_classify",
    "mask_stream",
    "mask_json",
    "token_verify",
    "config_load",
    "shell_command",
    "kube_path",
    "http_path",
];

const USAGE: &str = "usage: cargo xtask fuzz [--seconds N] [--target T]... [--sanitizer none|address] [--build-only]
       cargo xtask fuzz --pg-protocol SECONDS [--pg-seed N] [--target T]...";

struct Options {
    seconds: u64,
    targets: Vec<String>,
    sanitizer: String,
    build_only: bool,
    pg_protocol: Option<u64>,
    pg_seed: Option<u64>,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut o = Options {
        seconds: 60,
        targets: Vec::new(),
        // The workspace forbids unsafe code and the C dependencies are not
        // instrumented by RUSTFLAGS, so AddressSanitizer would mostly cost
        // speed; `--sanitizer address` is there for unsafe dependencies.
        sanitizer: "none".into(),
        build_only: false,
        pg_protocol: None,
        pg_seed: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (key, inline) = match a.split_once('=') {
            Some((k, v)) => (k, Some(v.to_string())),
            None => (a.as_str(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| anyhow!("{key} needs a value\n{USAGE}"))
        };
        match key {
            "--seconds" => o.seconds = value()?.parse().context("--seconds: not a number")?,
            "--target" => o.targets.push(value()?),
            "--sanitizer" => o.sanitizer = value()?,
            "--build-only" => o.build_only = true,
            "--pg-protocol" => {
                o.pg_protocol = Some(value()?.parse().context("--pg-protocol: not a number")?)
            }
            "--pg-seed" => o.pg_seed = Some(value()?.parse().context("--pg-seed: not a number")?),
            "-h" | "--help" => {
                println!("{USAGE}\ntargets: {}", TARGETS.join(", "));
                std::process::exit(0);
            }
            other => bail!("unknown option `{other}`\n{USAGE}"),
        }
    }
    for t in &o.targets {
        if !TARGETS.contains(&t.as_str()) {
            bail!("unknown target `{t}` (targets: {})", TARGETS.join(", "));
        }
    }
    if o.targets.is_empty() && o.pg_protocol.is_none() {
        o.targets = TARGETS.iter().map(|t| t.to_string()).collect();
    }
    if o.pg_protocol == Some(0) {
        bail!("--pg-protocol must be at least 1");
    }
    if o.seconds == 0 {
        bail!("--seconds must be at least 1");
    }
    Ok(o)
}

fn nightly() -> Command {
    let mut c = Command::new("cargo");
    c.arg("+nightly").current_dir(workspace_root());
    c
}

/// cargo-fuzz and a nightly toolchain (libFuzzer instrumentation needs nightly flags).
pub(crate) fn ensure_tools() -> Result<()> {
    if !succeeds(nightly().arg("--version")) {
        bail!(
            "cargo-fuzz needs a nightly toolchain: `rustup toolchain install nightly --profile minimal`"
        );
    }
    if !succeeds(Command::new("cargo").args(["fuzz", "--version"])) {
        eprintln!("fuzz: installing cargo-fuzz");
        run_inherit(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    Ok(())
}

/// The PostgreSQL protocol fuzzer: builds the gateway, then runs the `pg_fuzz`
/// e2e test for `seconds` (it prints its seed; a failure, the seed, case and
/// message sequence).
fn pg_protocol(seconds: u64, seed: Option<u64>) -> Result<()> {
    run_inherit(crate::cargo().args(["build", "-p", "sluice"]))?;
    let mut cmd = crate::cargo();
    cmd.args([
        "nextest",
        "run",
        "-p",
        "sluice-e2e",
        "--test",
        "pg_fuzz",
        "--no-capture",
    ])
    .env("SLUICE_PG_FUZZ_SECONDS", seconds.to_string());
    if let Some(seed) = seed {
        cmd.env("SLUICE_PG_FUZZ_SEED", seed.to_string());
    }
    run_inherit(&mut cmd)
}

pub(crate) fn fuzz(args: &[String]) -> Result<()> {
    let o = parse(args)?;
    if let Some(seconds) = o.pg_protocol {
        pg_protocol(seconds, o.pg_seed)?;
        if o.targets.is_empty() {
            return Ok(());
        }
    }
    ensure_tools()?;
    let root = workspace_root();
    let build_flags = ["--sanitizer", o.sanitizer.as_str(), "--debug-assertions"];
    run_inherit(nightly().args(["fuzz", "build"]).args(build_flags))?;
    if o.build_only {
        return Ok(());
    }
    let mut results = Vec::new();
    for target in &o.targets {
        let corpus = root.join("fuzz/corpus").join(target);
        let seeds = root.join("fuzz/seeds").join(target);
        fs::create_dir_all(&corpus)?;
        let log = root.join("fuzz/artifacts").join(format!("{target}.log"));
        fs::create_dir_all(log.parent().unwrap_or(Path::new(".")))?;
        let mut cmd = nightly();
        cmd.args(["fuzz", "run"])
            .args(build_flags)
            .arg(target)
            .arg(&corpus);
        if seeds.is_dir() {
            cmd.arg(&seeds);
        }
        cmd.arg("--")
            .arg(format!("-max_total_time={}", o.seconds))
            // A single input taking 10 s is a hang.
            .arg("-timeout=10")
            .arg("-rss_limit_mb=2048")
            .arg("-max_len=65536")
            .arg("-print_final_stats=1")
            .stdin(Stdio::null())
            .stdout(fs::File::create(&log)?)
            .stderr(fs::File::create(log.with_extension("err"))?);
        eprintln!("+ {}", describe(&cmd));
        let started = Instant::now();
        let status = cmd.status().context("running cargo fuzz")?;
        let stderr = fs::read_to_string(log.with_extension("err")).unwrap_or_default();
        let runs = stderr
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|| "?".into());
        let ok = status.success();
        if !ok {
            let tail: Vec<&str> = stderr.lines().rev().take(40).collect();
            eprintln!(
                "fuzz: {target} FAILED; last lines of {}:\n{}",
                log.with_extension("err").display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        results.push((target.clone(), started.elapsed().as_secs(), runs, ok));
    }
    println!();
    println!(
        "{:<14} {:>8} {:>12}  result",
        "target", "seconds", "executions"
    );
    for (t, s, runs, ok) in &results {
        println!(
            "{t:<14} {s:>8} {runs:>12}  {}",
            if *ok {
                "pass"
            } else {
                "FAIL (crash kept in fuzz/artifacts)"
            }
        );
    }
    let failed = results.iter().filter(|r| !r.3).count();
    println!("{} passed, {} failed", results.len() - failed, failed);
    if failed > 0 {
        bail!("{failed} fuzz target(s) found a crash");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_has_a_source_and_seeds() {
        let root = workspace_root();
        let manifest = fs::read_to_string(root.join("fuzz/Cargo.toml")).unwrap_or_default();
        for t in TARGETS {
            assert!(
                root.join(format!("fuzz/fuzz_targets/{t}.rs")).is_file(),
                "{t}: no source"
            );
            assert!(
                manifest.contains(&format!("name = \"{t}\"")),
                "{t}: no [[bin]]"
            );
            let seeds = fs::read_dir(root.join("fuzz/seeds").join(t))
                .map(|d| d.count())
                .unwrap_or(0);
            assert!(seeds > 0, "{t}: no seeds");
        }
    }

    #[test]
    fn options() {
        let o = parse(&[
            "--seconds".into(),
            "5".into(),
            "--target=sql_classify".into(),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((o.seconds, o.targets.len()), (5, 1));
        assert!(parse(&["--target".into(), "nope".into()]).is_err());
        let o = parse(&["--pg-protocol".into(), "3600".into()]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((o.pg_protocol, o.targets.len()), (Some(3600), 0));
        assert!(parse(&["--pg-protocol=0".into()]).is_err());
    }
}

//! The shell differential test (`crates/sluice-shell/src/differential.rs`)
//! run longer after `cargo xtask fuzz`: generated command lines, what bash
//! executes under strace against what the parser says will run. The normal
//! test suite runs it for 20 s; here it runs as long as one fuzz target
//! (`--seconds`, 60 by default), when the `shell_command` target is selected
//! (or no `--target` is given).

use anyhow::Result;

use crate::{cargo, run_inherit};

pub(crate) fn after_fuzz(args: &[String]) -> Result<()> {
    let mut seconds: u64 = 60;
    let mut targets: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (key, inline) = match a.split_once('=') {
            Some((k, v)) => (k, Some(v.to_string())),
            None => (a.as_str(), None),
        };
        let mut value = || inline.clone().or_else(|| it.next().cloned());
        match key {
            "--seconds" => {
                if let Some(s) = value().and_then(|v| v.parse().ok()) {
                    seconds = s;
                }
            }
            "--target" => targets.extend(value()),
            "--sanitizer" => {
                value();
            }
            "--build-only" => return Ok(()),
            _ => {}
        }
    }
    if !targets.is_empty() && !targets.iter().any(|t| t == "shell_command") {
        return Ok(());
    }
    eprintln!("fuzz: shell differential against bash for {seconds} s");
    run_inherit(
        cargo()
            .args([
                "test",
                "-p",
                "sluice-shell",
                "--lib",
                "differential",
                "--",
                "--nocapture",
            ])
            .env("SLUICE_SHELL_DIFF_SECONDS", seconds.to_string()),
    )
}

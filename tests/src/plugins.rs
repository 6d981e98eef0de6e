//! Run-time plugins for the tests, built by the test itself: the C sources in
//! `tests/plugins/` compiled with `cc` against the ABI header the
//! `sluice-plugin` crate ships, and small Rust plugins compiled with `rustc`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Compiles `tests/plugins/NAME.c` into `dir/libNAME.so` and returns its path.
pub fn c_plugin(dir: &Path, name: &str) -> PathBuf {
    let root = workspace();
    let source = root.join("tests/plugins").join(format!("{name}.c"));
    let out = dir.join(format!("lib{name}.so"));
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let result = crate::run_with_timeout(
        Command::new(&cc)
            .args([
                "-std=c11", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-I",
            ])
            .arg(root.join("crates/sluice-plugin/include"))
            .arg("-o")
            .arg(&out)
            .arg(&source),
        None,
        Duration::from_secs(60),
    );
    crate::ok(&result);
    out
}

/// Compiles `tests/plugins/NAME.rs` (no dependencies) into a `cdylib` at
/// `dir/libNAME.so` and returns its path.
pub fn rust_plugin(dir: &Path, name: &str) -> PathBuf {
    let source = workspace().join("tests/plugins").join(format!("{name}.rs"));
    let out = dir.join(format!("lib{name}.so"));
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let result = crate::run_with_timeout(
        Command::new(&rustc)
            .args(["--edition", "2021", "--crate-type", "cdylib", "-o"])
            .arg(&out)
            .arg(&source),
        None,
        Duration::from_secs(120),
    );
    crate::ok(&result);
    out
}

/// Builds the workspace `cdylib` package `package` with cargo (a no-op when it
/// is up to date) and returns the path of its library.
pub fn workspace_cdylib(package: &str) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let result = crate::run_with_timeout(
        Command::new(&cargo)
            .args(["build", "--quiet", "-p", package])
            .current_dir(workspace())
            .env("CARGO_TARGET_DIR", crate::target_dir()),
        None,
        Duration::from_secs(900),
    );
    crate::ok(&result);
    let lib = crate::target_dir()
        .join("debug")
        .join(format!("lib{}.so", package.replace('-', "_")));
    assert!(lib.exists(), "cargo built no {}", lib.display());
    lib
}

//! Ctrl-C during `cargo xtask bench`.
//!
//! The services a task starts are stopped by their guards' `Drop`, and some
//! of them outlive a killed parent: PostgreSQL started by `pg_ctl` runs in
//! its own session. So the first Ctrl-C only raises a flag; the bench's loops
//! call [`check`] and unwind through their guards from there. The clients
//! in the terminal's process group (pgbench, wrk, scp) get the signal too
//! and end at once. A second Ctrl-C exits without cleaning up.

use anyhow::{bail, Result};
use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Takes over Ctrl-C for the rest of the process.
pub(crate) fn install() {
    let installed = ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\ninterrupted: stopping what was started (Ctrl-C again to quit at once)");
    });
    if let Err(e) = installed {
        eprintln!("xtask: Ctrl-C will not clean up ({e})");
    }
}

/// An error once Ctrl-C was pressed, so that `?` unwinds to the guards.
pub(crate) fn check() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

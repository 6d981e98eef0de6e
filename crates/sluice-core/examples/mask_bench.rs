//! Scan rate of the default detector set on realistic row text, one core.
//! Run by `cargo xtask bench`.

use sluice_core::masking::{compile, MaskingConfig};
use std::time::Instant;

fn main() {
    let config: MaskingConfig = match toml::from_str("detectors = [\"default\"]") {
        Ok(c) => c,
        Err(e) => return eprintln!("config: {e}"),
    };
    let engine = match compile(&config, Some(b"bench-hmac-key-0123456789")) {
        Ok(e) => e,
        Err(e) => return eprintln!("compile: {e}"),
    };
    // Rows as a client would see them: some sensitive, most not.
    let mut text = String::new();
    let mut n = 0u64;
    while text.len() < 16 << 20 {
        n += 1;
        if n.is_multiple_of(4) {
            text.push_str(&format!(
                "{n}|Customer {n}|customer{n}@example.com|4111 1111 1111 1111|+1 202-555-0{:03}|ordered {} items\n",
                n % 999,
                n % 13
            ));
        } else {
            text.push_str(&format!(
                "{n}|order {n}|shipped|warehouse {}|2026-11-{:02}|total {}.{:02} EUR|status delivered\n",
                n % 17,
                1 + n % 28,
                n % 900,
                n % 100
            ));
        }
    }
    let start = Instant::now();
    let (out, counts) = engine.mask_text(&text);
    let secs = start.elapsed().as_secs_f64();
    println!(
        "Masking scan (default detectors, realistic rows, one core): {:.0} MB/s over {} MB, {} values masked{}",
        text.len() as f64 / secs / 1e6,
        text.len() >> 20,
        counts.total(),
        if out.len() == text.len() { " (no change?)" } else { "" }
    );
}

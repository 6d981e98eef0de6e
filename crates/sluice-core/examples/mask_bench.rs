//! Scan rate of the default detector set on realistic row text, one core.
//! Run by `cargo xtask bench`. Besides the realistic mix (one row in four
//! carries an email, a card and a phone number), it prints the two regimes
//! that make it up: the automaton's pass over text without secrets, and the
//! work per masked value on rows that all carry them.

use sluice_core::masking::{compile, MaskingConfig, MaskingEngine};
use std::time::Instant;

/// Scans per regime; the fastest is reported.
const ROUNDS: usize = 5;

fn main() {
    let config: MaskingConfig = match toml::from_str("detectors = [\"default\"]") {
        Ok(c) => c,
        Err(e) => return eprintln!("config: {e}"),
    };
    let engine = match compile(&config, Some(b"bench-hmac-key-0123456789")) {
        Ok(e) => e,
        Err(e) => return eprintln!("compile: {e}"),
    };
    for (label, secret_every) in [
        ("realistic rows", Some(4)),
        ("rows without secrets", None),
        ("rows all with secrets", Some(1)),
    ] {
        scan(&engine, label, &rows(secret_every), secret_every == Some(1));
    }
    fields(&engine);
}

/// The masked select's cost without the wire: `cargo xtask bench`'s
/// `customers_bench` rows, each text field masked on its own as the
/// PostgreSQL relay masks a row (the column-ruled `national_id` aside).
fn fields(engine: &MaskingEngine) {
    let rows: Vec<[String; 6]> = (1..=10_000u64)
        .map(|g| {
            [
                g.to_string(),
                format!("Customer {g}"),
                format!("customer{g}@example.com"),
                "4111 1111 1111 1111".to_string(),
                format!("+1 202-555-0{:03}", 100 + g % 99),
                format!("Ordered {g} items, shipped to warehouse {}", g % 17),
            ]
        })
        .collect();
    let bytes: usize = rows.iter().flatten().map(String::len).sum();
    let (mut best, mut masked) = (f64::INFINITY, 0);
    for _ in 0..ROUNDS {
        let mut counts = sluice_core::masking::MaskCounts::default();
        let start = Instant::now();
        for row in &rows {
            for value in row {
                std::hint::black_box(engine.mask_bytes_counted(value.as_bytes(), &mut counts));
            }
        }
        best = best.min(start.elapsed().as_secs_f64());
        masked = counts.total();
    }
    println!(
        "Masking fields (default detectors, the masked select's 10,000 rows field by field, one core, best of {ROUNDS}): {:.0} ns per row, {:.0} MB/s, {masked} values masked",
        best * 1e9 / rows.len() as f64,
        bytes as f64 / best / 1e6,
    );
}

/// 16 MiB of rows; every `secret_every`-th row carries secrets.
fn rows(secret_every: Option<u64>) -> String {
    let mut text = String::new();
    let mut n = 0u64;
    while text.len() < 16 << 20 {
        n += 1;
        if secret_every.is_some_and(|every| n.is_multiple_of(every)) {
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
    text
}

/// Scans `text` [`ROUNDS`] times and reports the fastest round (this VM's
/// neighbours slow some rounds down; none speeds one up); `per_value`:
/// also the scan's time over the values masked (the bytes between them
/// included), telling on rows where about 60 % of the bytes are secrets.
fn scan(engine: &MaskingEngine, label: &str, text: &str, per_value: bool) {
    let (mut best, mut out_len, mut masked) = (f64::INFINITY, 0, 0);
    for _ in 0..ROUNDS {
        let start = Instant::now();
        let (out, counts) = engine.mask_text(text);
        best = best.min(start.elapsed().as_secs_f64());
        (out_len, masked) = (out.len(), counts.total());
    }
    let per_value = if per_value && masked > 0 {
        format!(", {:.0} ns per masked value", best * 1e9 / masked as f64)
    } else {
        String::new()
    };
    println!(
        "Masking scan (default detectors, {label}, one core, best of {ROUNDS}): {:.0} MB/s over {} MB, {masked} values masked{per_value}{}",
        text.len() as f64 / best / 1e6,
        text.len() >> 20,
        if masked > 0 && out_len == text.len() { " (no change?)" } else { "" }
    );
}

//! The JSON masker and JSON path parser: any document and any path text.
//! Masking keeps the document valid JSON, and a second pass finds nothing new
//! for the path rules (masked values are final).
#![no_main]

use sluice_core::masking::{compile, JsonMasker, JsonPath, MaskingConfig, MaskingEngine};
use std::sync::OnceLock;

fn engine() -> &'static MaskingEngine {
    static E: OnceLock<MaskingEngine> = OnceLock::new();
    E.get_or_init(|| {
        let config: MaskingConfig =
            sluice_core::toml::from_str(r#"detectors = ["default"]"#).unwrap();
        compile(&config, None).unwrap()
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // Up to the first newline: a JSON path; the rest: the document.
    let (path, doc) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&data[..0], data),
    };
    let mut paths = vec![
        JsonPath::parse("$..password").unwrap(),
        JsonPath::parse("$.items[*].ssn").unwrap(),
    ];
    if let Ok(p) = JsonPath::parse(&String::from_utf8_lossy(path)) {
        let _ = p.to_string();
        paths.push(p);
    }
    let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(doc) else {
        return;
    };
    engine().mask_json(&mut value, &paths);
    let text = serde_json::to_string(&value).unwrap();
    let _: serde_json::Value = serde_json::from_str(&text).unwrap();
});

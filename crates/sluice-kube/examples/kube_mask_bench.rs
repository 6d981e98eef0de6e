//! Throughput of Kubernetes response masking, one core: a 5,000-Secret list
//! (JSON document), the same as a Table, and a watch stream of the same
//! Secrets as events, each with and without the default detectors.
//! Run with `cargo run --release -p sluice-kube --example kube_mask_bench`.

use serde_json::json;
use sluice_core::masking::{compile, EngineMasker, MaskingConfig, ResponseMasker, SessionMasker};
use sluice_http::BodyTransformer;
use sluice_kube::mask::{DocMasker, DocumentTransformer, WatchTransformer};
use std::time::Instant;

fn secret(i: usize) -> serde_json::Value {
    json!({
        "metadata": {"name": format!("app-{i}"), "namespace": "default",
            "uid": format!("6b1f7c1e-0000-4000-8000-{i:012}"), "resourceVersion": "100",
            "labels": {"app": "web", "tier": "backend"},
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration":
                json!({"kind": "Secret", "stringData": {"password": format!("pw-{i}")}}).to_string()}},
        "data": {"username": "YXBw", "password": "czNjcjN0LVBhNTV3MHJkIQ==", "url": "cG9zdGdyZXM6Ly9kYg=="},
        "type": "Opaque"
    })
}

fn run(name: &str, body: &[u8], mut t: Box<dyn BodyTransformer>, chunk: usize) {
    let start = Instant::now();
    let mut out = 0usize;
    for c in body.chunks(chunk) {
        out += t.push(c).map(|o| o.len()).unwrap_or(0);
    }
    out += t.finish().map(|o| o.len()).unwrap_or(0);
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{name:<44} {:>7.1} MB in {:>6.1} ms = {:>6.1} MB/s (out {:.1} MB, masked {})",
        body.len() as f64 / 1e6,
        secs * 1e3,
        body.len() as f64 / 1e6 / secs,
        out as f64 / 1e6,
        t.counts().total()
    );
}

fn main() {
    let config: MaskingConfig = match toml::from_str("detectors = [\"default\"]") {
        Ok(c) => c,
        Err(e) => return eprintln!("config: {e}"),
    };
    let engine = match compile(&config, Some(b"bench-hmac-key-0123456789")) {
        Ok(e) => e,
        Err(e) => return eprintln!("compile: {e}"),
    };
    let items: Vec<_> = (0..5000).map(secret).collect();
    let list = serde_json::to_vec(&json!({"kind": "SecretList", "apiVersion": "v1",
        "metadata": {}, "items": items}))
    .unwrap_or_default();
    let table = serde_json::to_vec(&json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1",
        "columnDefinitions": [{"name": "Name"}, {"name": "Type"}, {"name": "Data"}, {"name": "Age"}],
        "rows": items.iter().map(|o| json!({"cells": [o["metadata"]["name"], "Opaque", 3, "1d"], "object": o})).collect::<Vec<_>>()}))
    .unwrap_or_default();
    let mut watch = Vec::new();
    for o in &items {
        let mut o = o.clone();
        o["kind"] = json!("Secret");
        watch.extend(
            serde_json::to_vec(&json!({"type": "MODIFIED", "object": o})).unwrap_or_default(),
        );
        watch.push(b'\n');
    }
    let cap = 64 << 20;
    let session = std::sync::Arc::new(sluice_core::pipeline::SessionInfo {
        id: "bench".into(),
        identity: sluice_core::Identity {
            subject: "bench".into(),
            groups: vec![],
            issuer: "sluice".into(),
            token_id: "t".into(),
            expires_at: std::time::SystemTime::now(),
            connections: None,
        },
        connection: "k8s".into(),
        protocol: sluice_core::Protocol::Kubernetes,
        client_addr: "127.0.0.1:1".into(),
    });
    let masker: std::sync::Arc<dyn ResponseMasker> = std::sync::Arc::new(EngineMasker::new(engine));
    for (label, masker) in [
        ("secrets only", None),
        (
            "secrets + default detectors",
            SessionMasker::active(&masker, &session),
        ),
    ] {
        let m = DocMasker {
            secrets: true,
            masker,
        };
        run(
            &format!("SecretList document, {label}"),
            &list,
            Box::new(DocumentTransformer::new(m.clone(), cap)),
            16 << 10,
        );
        run(
            &format!("Secret Table document, {label}"),
            &table,
            Box::new(DocumentTransformer::new(m.clone(), cap)),
            16 << 10,
        );
        run(
            &format!("watch stream (5,000 events), {label}"),
            &watch,
            Box::new(WatchTransformer::new(m, cap)),
            16 << 10,
        );
    }
}

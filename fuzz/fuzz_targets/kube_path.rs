//! The Kubernetes API path parser: any method and request target give a
//! request (verb, resource, namespace, name) or a refusal, never a panic.
#![no_main]

const METHODS: [&str; 6] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"];

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((first, rest)) = data.split_first() else {
        return;
    };
    let method = METHODS[usize::from(*first) % METHODS.len()];
    let target = String::from_utf8_lossy(rest);
    if let Ok(request) = sluice_kube::path::parse(method, &target) {
        let _ = request.describe();
        let _ = request.resource_key();
    }
});

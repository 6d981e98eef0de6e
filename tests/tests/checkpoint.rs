//! Tamper evidence against the host: a signed checkpoint taken earlier
//! (`sluice audit checkpoint`) catches what the per-session chains cannot —
//! a session rewritten with its chain recomputed, a session deleted whole,
//! a journal cut short — and the gateway publishes checkpoints itself.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use sluice_core::audit::chain_hash;
use sluice_e2e::*;
use std::collections::HashMap;
use std::path::Path;

/// Rewrites the journal as someone with write access to `state_dir` would:
/// lines edited or dropped, every session chain recomputed, the index
/// dropped so that it is rebuilt from the forged journal.
fn forge(state_dir: &Path, original: &str, edit: impl Fn(&str) -> Option<String>) {
    let mut heads: HashMap<String, (u64, String)> = HashMap::new();
    let mut out = String::new();
    for line in original.lines() {
        let f: Vec<&str> = line.splitn(7, '\t').collect();
        let Some(body) = edit(line).map(|l| l.splitn(7, '\t').nth(6).unwrap().to_string()) else {
            continue;
        };
        let session = f[0].to_string();
        let (last, prev) = heads.get(&session).cloned().unwrap_or((0, "0".repeat(64)));
        let seq = last + 1;
        let at_ms: u64 = f[2].parse().unwrap();
        let hash = chain_hash(&prev, &session, seq, at_ms, &body);
        out.push_str(&format!(
            "{session}\t{seq}\t{at_ms}\t{prev}\t{hash}\t{}\t{body}\n",
            f[5]
        ));
        heads.insert(session, (seq, hash));
    }
    std::fs::write(state_dir.join("journal.log"), out).unwrap();
    for f in ["sluice.db", "sluice.db-wal", "sluice.db-shm"] {
        let _ = std::fs::remove_file(state_dir.join(f));
    }
}

#[test]
fn a_checkpoint_catches_rewritten_deleted_and_truncated_sessions() {
    let mut env = Env::builder().log_level("info,sluice::audit=info").start();
    let token = env.token("agent-1", &["agents"], "10m");
    for sql in ["select 42", "select 'second session'"] {
        let out = env.psql(&env.url("agent-1", &token, "appdb"), &["-c", sql]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    }
    let sessions = env.wait_sessions_ended(2);
    let first = sessions[0]["id"].as_str().unwrap().to_string();

    // Taken now, kept off the box.
    let cp_path = env.dir.path().join("checkpoint.json");
    let cp = ok(&env.sluice(&["audit", "checkpoint"]));
    std::fs::write(&cp_path, &cp).unwrap();
    let cp_arg = cp_path.to_str().unwrap();
    let verified = ok(&env.sluice(&["audit", "verify", "--checkpoint", cp_arg]));
    assert!(
        verified.contains("consistent with the checkpoint"),
        "{verified}"
    );

    // The gateway publishes signed checkpoints too (here: on shutdown).
    env.stop_gateway();
    assert!(
        env.gateway_log().contains("audit_checkpoint"),
        "{}",
        env.gateway_log()
    );
    let journal = env.state_dir.join("journal.log");
    let original = std::fs::read_to_string(&journal).unwrap();

    // 1. A record rewritten, its session's chain and head recomputed.
    forge(&env.state_dir, &original, |l| {
        Some(l.replace("select 42", "select 43"))
    });
    assert!(std::fs::read_to_string(&journal)
        .unwrap()
        .contains("select 43"));
    ok(&env.sluice(&["audit", "verify"])); // the per-session chains cannot tell
    let e = failed(&env.sluice(&["audit", "verify", "--checkpoint", cp_arg]));
    assert!(e.contains("do not reproduce the checkpoint's root"), "{e}");

    // 2. A whole session deleted.
    forge(&env.state_dir, &original, |l| {
        (!l.starts_with(&format!("{first}\t"))).then(|| l.to_string())
    });
    ok(&env.sluice(&["audit", "verify"]));
    let e = failed(&env.sluice(&["audit", "verify", "--checkpoint", cp_arg]));
    assert!(e.contains("records were removed"), "{e}");

    // 3. The journal cut short.
    let kept: Vec<&str> = original.lines().collect();
    let kept = kept[..kept.len() - 3].join("\n") + "\n";
    forge(&env.state_dir, &kept, |l| Some(l.to_string()));
    let e = failed(&env.sluice(&["audit", "verify", "--checkpoint", cp_arg]));
    assert!(e.contains("records were removed"), "{e}");

    // Restored, it verifies again; a checkpoint file edited to match a
    // forged log fails its signature.
    forge(&env.state_dir, &original, |l| Some(l.to_string()));
    let verified = ok(&env.sluice(&["audit", "verify", "--checkpoint", cp_arg]));
    assert!(
        verified.contains("consistent with the checkpoint"),
        "{verified}"
    );
    let mut edited: serde_json::Value = serde_json::from_str(&cp).unwrap();
    edited["size"] = serde_json::json!(edited["size"].as_u64().unwrap() - 1);
    std::fs::write(&cp_path, edited.to_string()).unwrap();
    let e = failed(&env.sluice(&["audit", "verify", "--checkpoint", cp_arg]));
    assert!(e.contains("signature"), "{e}");
}

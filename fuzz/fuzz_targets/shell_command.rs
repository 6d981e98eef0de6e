//! The shell command-line parser policy judges SSH exec and kubectl exec by:
//! any line gives its invocations or a reason it cannot be judged, never a
//! panic; and an invocation, quoted back as argv, reads as the same program.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let line = String::from_utf8_lossy(data);
    let Ok(invocations) = sluice_shell::analyze(&line) else {
        return;
    };
    for inv in invocations {
        let mut argv = vec![inv.path.clone().unwrap_or_else(|| inv.program.clone())];
        argv.extend(inv.args.iter().cloned());
        let quoted = sluice_shell::quote_argv(&argv);
        if let Ok(again) = sluice_shell::analyze(&quoted) {
            assert!(
                again.iter().any(|a| a.program == inv.program),
                "{quoted:?} no longer runs {:?}",
                inv.program
            );
        }
    }
});

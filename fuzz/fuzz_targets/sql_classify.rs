//! The SQL classifier on PostgreSQL's own parser: any text is classified or
//! refused with an error (the gateway then denies it), never a panic or a hang.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let sql = String::from_utf8_lossy(data);
    if let Ok(c) = sluice_postgres::sql::classify(&sql) {
        // Classifying the same text again gives the same answer (the cache relies on it).
        let again = sluice_postgres::sql::classify(&sql).map(|c| format!("{c:?}"));
        assert_eq!(again.ok(), Some(format!("{c:?}")));
    }
});

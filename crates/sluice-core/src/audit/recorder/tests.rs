use super::*;
use crate::testing::MemoryStore;

fn streams(store: &MemoryStore) -> Vec<(String, String)> {
    let events = store.events.lock().unwrap();
    let mut out: Vec<(String, String)> = Vec::new();
    for (_, e) in events.iter() {
        if let AuditEvent::StreamOutput { chunks, .. } = e {
            for c in chunks {
                match out.last_mut() {
                    Some((s, d)) if *s == c.stream => d.push_str(&c.data),
                    _ => out.push((c.stream.clone(), c.data.clone())),
                }
            }
        }
    }
    out
}

#[test]
fn recorder_keeps_split_characters_whole_and_batches() {
    let store = Arc::new(MemoryStore::default());
    {
        let mut r = StreamRecorder::new(store.clone(), "s", 7);
        r.resize(80, 24);
        let euro = "a€b".as_bytes();
        r.record("stdout", &euro[..2]);
        r.record("stdout", &euro[2..]);
        r.record("stderr", b"oops");
    }
    assert_eq!(
        streams(&store),
        [
            ("stdout".to_string(), "a€b".to_string()),
            ("stderr".to_string(), "oops".to_string())
        ]
    );
    let events = store.events.lock().unwrap();
    assert!(matches!(
        events[0].1,
        AuditEvent::WindowResized { cols: 80, .. }
    ));
    // One batch for all three chunks.
    assert_eq!(events.len(), 2);
}

#[test]
fn recorder_limit_counts_what_it_skips() {
    let store = Arc::new(MemoryStore::default());
    let mut r = StreamRecorder::new(store.clone(), "s", 1).with_limit(4);
    r.record("stdout", b"abcdef");
    assert_eq!(r.skipped(), 2);
}

/// The regression: output followed by silence was only written when the
/// next output arrived (or the channel ended).
#[tokio::test]
async fn an_idle_stream_is_written_within_the_batch_age() {
    let store = Arc::new(MemoryStore::default());
    let mut r = StreamRecorder::new(store.clone(), "s", 1);
    r.record("stdout", b"marker\n");
    assert!(streams(&store).is_empty());
    tokio::time::sleep(StreamRecorder::BATCH_AGE + Duration::from_millis(150)).await;
    assert_eq!(
        streams(&store),
        [("stdout".to_string(), "marker\n".to_string())]
    );
    // The next batch gets its own timer.
    r.record("stdout", b"second\n");
    tokio::time::sleep(StreamRecorder::BATCH_AGE + Duration::from_millis(150)).await;
    assert_eq!(store.events.lock().unwrap().len(), 2);
    drop(r);
    assert_eq!(store.events.lock().unwrap().len(), 2);
}

#[test]
fn echoed_input_is_text_and_unechoed_input_is_hidden() {
    let store = Arc::new(MemoryStore::default());
    {
        let mut r = StreamRecorder::new(store.clone(), "s", 1);
        r.record("stdout", b"$ ");
        // Typed with echo on: each key comes back.
        r.record_input(b"l");
        r.record("stdout", b"l");
        r.record_input(b"s\r");
        r.record("stdout", b"s\r\nfile\r\n[sudo] password for a: ");
        // Echo off: the password does not come back; the next line does.
        r.record_input(b"hunter2");
        r.record_input(b"\r");
        r.record("stdout", b"\r\nSorry, try again.\r\n$ ");
        r.record_input(b"exit\r");
        r.record("stdout", b"exit\r\n");
    }
    let got = streams(&store);
    let typed: String = got
        .iter()
        .filter(|(s, _)| s == STDIN)
        .map(|(_, d)| d.as_str())
        .collect();
    assert_eq!(typed, "ls\rexit\r");
    let hidden: Vec<&str> = got
        .iter()
        .filter(|(s, _)| s == STDIN_HIDDEN)
        .map(|(_, d)| d.as_str())
        .collect();
    assert_eq!(hidden, ["•••••••\r"]);
    assert!(!format!("{got:?}").contains("hunter2"));
}

#[test]
fn echo_classification() {
    // Whole echo, in pieces, with escape sequences around it.
    assert_eq!(classify(b"ls\r", b"ls\r\nout"), [(3, true)]);
    assert_eq!(classify(b"ls\r", b"l"), [(1, true)]);
    assert_eq!(classify(b"ab", b"\x1b[?25la\x1b[0mb"), [(2, true)]);
    // A long line wrapped by the line editor at the margin.
    assert_eq!(classify(b"echo got\r", b"echo \r got\r\n"), [(9, true)]);
    assert_eq!(classify(b"echo got\r", b"echo g\rgot\r\n"), [(9, true)]);
    assert_eq!(classify(b"echo got\r", b"echo g\r"), [(6, true)]);
    // A redraw repeats only what was echoed: it does not echo the rest.
    assert_eq!(classify(b"ab\r", b"a\rx\r\n"), []);
    // Typed ahead: the echo comes after other output.
    assert_eq!(classify(b"id\r", b"Last login\r\n$ id\r\n"), [(3, true)]);
    // No echo: undecided until a later line is echoed (or the wait ends).
    assert_eq!(classify(b"secret\r", b"\r\n"), []);
    assert_eq!(
        classify(b"secret\rexit\r", b"\r\nok\r\n$ exit\r\n"),
        [(7, false), (12, true)]
    );
    // An answer that merely starts like the password is not its echo.
    assert_eq!(classify(b"Welcome1\r", b"\r\nWelcome to"), []);
    // Control keys alone are recorded as typed; an answer of only cursor
    // movements decides nothing.
    assert_eq!(classify(b"\x1b[A", b"\x1b[K"), [(3, true)]);
    assert_eq!(classify(b"pw", b"\x1b[K"), []);
    assert_eq!(hidden("pä\r".as_bytes()), "••\r");
}

/// Input the terminal never answers is recorded as hidden after a while,
/// not held until the channel ends.
#[tokio::test]
async fn unanswered_input_is_recorded_as_hidden() {
    let store = Arc::new(MemoryStore::default());
    let mut r = StreamRecorder::new(store.clone(), "s", 1);
    r.record_input(b"pw");
    tokio::time::sleep(StreamRecorder::ECHO_WAIT + Duration::from_millis(150)).await;
    assert_eq!(
        streams(&store),
        [(STDIN_HIDDEN.to_string(), "••".to_string())]
    );
    drop(r);
}

#[test]
fn utf8_prefix() {
    assert_eq!(utf8_complete_prefix(b"abc"), 3);
    assert_eq!(utf8_complete_prefix(&"€".as_bytes()[..2]), 0);
    assert_eq!(utf8_complete_prefix("a€".as_bytes()), 4);
    assert_eq!(utf8_complete_prefix(b"\xff"), 1);
}

#[test]
fn a_flood_of_unanswered_input_is_recorded_without_waiting_for_an_echo() {
    let store = Arc::new(MemoryStore::default());
    let mut r = StreamRecorder::new(store.clone(), "s", 1);
    let chunk = vec![b'x'; 400 << 10];
    for _ in 0..3 {
        r.record_input(&chunk);
    }
    // Written before any echo wait or drop: the first MiB and more, hidden.
    let written = streams(&store);
    let hidden: usize = written
        .iter()
        .filter(|(stream, _)| stream == STDIN_HIDDEN)
        .map(|(_, text)| text.chars().count())
        .sum();
    assert!(hidden >= 1 << 20, "{hidden}");
    drop(r);
    let all: usize = streams(&store)
        .iter()
        .map(|(_, text)| text.chars().count())
        .sum();
    assert_eq!(all, 3 * chunk.len(), "every byte typed is recorded once");
}

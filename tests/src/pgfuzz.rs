//! A PostgreSQL protocol fuzzer against the gateway: seeded, deterministic per seed.
//!
//! Each case is a fresh agent connection sending a few batches of raw frontend messages in
//! one write each — Parse/Bind/Describe/Execute/Close/Flush/Sync/Query interleaved, statement
//! and portal names reused, errors mid-batch, row limits (portals suspended and resumed),
//! SQL PREPARE/EXECUTE/DEALLOCATE, cursors, settings changes and pipelined simple queries —
//! drawn from the quickstart's world (rules and masking of `examples/quickstart.toml`).
//!
//! Each write ends with a sentinel query (`select 'fuzz-sentinel-…'`), so the end of the
//! answer is known without modelling the server.
//!
//! Checked, case by case: no demo email, card number or national id reaches the client in
//! clear; the gateway answers every Sync/Query or closes (never hangs) and its process lives.
//! Checked every few cases and at the end: the oracle ([`crate::oracle`]) — the server ran
//! nothing that Sluice did not judge and forward with that text, nothing refused — and the
//! demo tables still hold their rows.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use std::io;

use crate::pgwire::{encode_all, Answer, Ended, Frontend};
use crate::raw::RawConn;
use crate::{contains_bytes, Env};

/// A small deterministic generator (SplitMix64).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }

    /// One of `items`.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Statements for Parse and Query: reads of sensitive columns, refused writes and DDL,
/// bounded writes, errors, settings changes, prepared statements and cursors. None writes
/// `customers` (a review rule would hold it for an approver) and none adds rows.
pub const STATEMENTS: &[&str] = &[
    "select email, card_number, national_id from customers order by id limit 3",
    "select id, name, email from customers where id = $1",
    "select card_number from customers where id = $1::int",
    "select national_id as n, email as e from customers order by id desc limit 2",
    "select c.email, o.amount from customers c join orders o on o.customer_id = c.id limit 4",
    "select count(*), max(amount) from orders",
    "select 1",
    "select $1::text",
    "select id, status from orders where id = $1",
    "update orders set status = status where id = 1",
    "delete from orders",
    "delete from orders where true",
    "truncate orders",
    "update orders set status = 'x'",
    "drop table orders",
    "create table fuzz_t (a int)",
    "select 1/0",
    "selec 1",
    "select * from no_such_table",
    "select card_number::int from customers where id = 1",
    "set standard_conforming_strings = off",
    "update pg_settings set setting = 'off' where name = 'standard_conforming_strings'",
    "select set_config('standard_conforming_strings', 'off', false)",
    "set search_path = public",
    "reset all",
    "discard all",
    "select '\\'\n'; delete from orders; --'",
    "prepare s1 as select email, card_number from customers limit 2",
    "prepare s1 as delete from orders",
    "execute s1",
    "deallocate s1",
    "deallocate all",
    "begin",
    "commit",
    "rollback",
    "declare c1 cursor for select national_id, card_number from customers",
    "fetch 2 from c1",
    "close c1",
    "copy (select email, card_number from customers limit 2) to stdout",
    "select pg_sleep(0.01)",
];

const NAMES: &[&str] = &["", "", "s1", "s2", "S_1", "sluice_s1"];
const PORTALS: &[&str] = &["", "", "p1", "c1"];

fn statement(rng: &mut Rng) -> String {
    let first = rng.pick(STATEMENTS).to_string();
    if rng.chance(15) {
        // Several statements in one text (simple protocol only; Parse refuses them).
        format!("{first}; {}", rng.pick(STATEMENTS))
    } else {
        first
    }
}

fn message(rng: &mut Rng) -> Frontend {
    match rng.below(16) {
        0..=2 => Frontend::Parse {
            name: rng.pick(NAMES).to_string(),
            sql: rng.pick(STATEMENTS).to_string(),
            types: vec![],
        },
        3..=5 => {
            let params = match rng.below(3) {
                0 => vec![],
                1 => vec![Some("1".to_string())],
                _ => vec![None],
            };
            let result_formats = match rng.below(4) {
                0 => vec![1],
                1 => vec![0, 1],
                _ => vec![],
            };
            Frontend::Bind {
                portal: rng.pick(PORTALS).to_string(),
                statement: rng.pick(NAMES).to_string(),
                params,
                result_formats,
            }
        }
        6 => Frontend::Describe {
            kind: if rng.chance(50) { b'S' } else { b'P' },
            name: if rng.chance(50) {
                rng.pick(NAMES).to_string()
            } else {
                rng.pick(PORTALS).to_string()
            },
        },
        7..=9 => Frontend::Execute {
            portal: rng.pick(PORTALS).to_string(),
            max_rows: *rng.pick(&[0, 0, 1, 2]),
        },
        10 => Frontend::Close {
            kind: if rng.chance(50) { b'S' } else { b'P' },
            name: if rng.chance(50) {
                rng.pick(NAMES).to_string()
            } else {
                rng.pick(PORTALS).to_string()
            },
        },
        11 => Frontend::Flush,
        12 => Frontend::Sync,
        _ => Frontend::Query(statement(rng)),
    }
}

/// One batch: messages sent in one write. One with any extended-protocol message ends in
/// Sync (after an error the server skips everything, Query included, up to a Sync).
fn batch(rng: &mut Rng) -> Vec<Frontend> {
    let mut out = Vec::new();
    if rng.chance(40) {
        // The common well-formed shape, so deeper states are reached.
        let name = rng.pick(NAMES).to_string();
        let portal = rng.pick(PORTALS).to_string();
        let sql = *rng.pick(STATEMENTS);
        out.push(Frontend::parse(&name, sql));
        if rng.chance(50) {
            out.push(Frontend::describe_statement(&name));
        }
        out.push(Frontend::Bind {
            portal: portal.clone(),
            statement: name,
            params: if rng.chance(50) {
                vec![Some("1".into())]
            } else {
                vec![]
            },
            result_formats: if rng.chance(25) { vec![1] } else { vec![] },
        });
        if rng.chance(30) {
            out.push(Frontend::describe_portal(&portal));
        }
        out.push(Frontend::Execute {
            portal,
            max_rows: *rng.pick(&[0, 0, 0, 1]),
        });
    }
    for _ in 0..rng.below(8) {
        out.push(message(rng));
    }
    let extended = out.iter().any(|m| !matches!(m, Frontend::Query(_)));
    if extended && out.last() != Some(&Frontend::Sync) {
        out.push(Frontend::Sync);
    }
    if out.is_empty() {
        out.push(Frontend::Query(statement(rng)));
    }
    out
}

/// A case: 1–4 batches on one connection.
pub fn case(seed: u64, index: u64) -> Vec<Vec<Frontend>> {
    let mut rng = Rng::new(seed ^ index.wrapping_mul(0x2545_f491_4f6c_dd1d));
    (0..1 + rng.below(4)).map(|_| batch(&mut rng)).collect()
}

/// Renders a case for a failure message.
pub fn render(batches: &[Vec<Frontend>]) -> String {
    let mut s = String::new();
    for (i, b) in batches.iter().enumerate() {
        let _ = writeln!(s, "  write {}:", i + 1);
        for m in b {
            let _ = writeln!(s, "    {m:?}");
        }
    }
    s
}

/// The fuzzer's settings.
#[derive(Debug, Clone)]
pub struct FuzzOptions {
    /// The base seed (each case derives its own from it and its index).
    pub seed: u64,
    /// How long to run.
    pub duration: Duration,
    /// Run only this case (to replay a failure).
    pub only_case: Option<u64>,
    /// How long a batch may go without an answer before it counts as a hang.
    pub quiet: Duration,
    /// Oracle check every this many cases.
    pub check_every: u64,
}

/// What a run did.
#[derive(Debug, Default)]
pub struct FuzzReport {
    /// Cases run.
    pub cases: u64,
    /// Batches sent.
    pub batches: u64,
    /// Failures, each with its seed, case and message sequence.
    pub failures: Vec<String>,
}

/// Sends `batch` and, in the same write, a sentinel query; reads until the sentinel's
/// ReadyForQuery (its row, or the error of an aborted transaction, then `Z`), the peer
/// closes, or `quiet` passes without a message (a hang), then drains what is left.
fn exchange_batch(
    conn: &mut RawConn,
    batch: &[Frontend],
    sentinel: &str,
    quiet: Duration,
) -> Answer {
    let mut msgs = batch.to_vec();
    msgs.push(Frontend::Query(format!("select '{sentinel}'")));
    if conn.send(&encode_all(&msgs)).is_err() {
        return Answer {
            messages: vec![],
            ended: Ended::Closed,
        };
    }
    conn.stream.set_read_timeout(Some(quiet)).ok();
    let mut messages = Vec::new();
    let mut answered = false;
    let ended = loop {
        match conn.read_msg() {
            Ok(Some(m)) => {
                let done = answered && m.tag == b'Z';
                if contains_bytes(&m.body, sentinel.as_bytes())
                    || (m.tag == b'E' && m.fields().code() == "25P02")
                {
                    answered = true;
                }
                messages.push(m);
                if done {
                    break Ended::Ready;
                }
            }
            Ok(None) => break Ended::Closed,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                break Ended::TimedOut
            }
            Err(_) => break Ended::Closed,
        }
    };
    if matches!(ended, Ended::Ready) {
        // An aborted transaction's error may have come from an earlier query: take the rest.
        conn.stream
            .set_read_timeout(Some(Duration::from_millis(30)))
            .ok();
        while let Ok(Some(m)) = conn.read_msg() {
            messages.push(m);
        }
    }
    conn.stream
        .set_read_timeout(Some(crate::raw::IO_TIMEOUT))
        .ok();
    Answer { messages, ended }
}

fn leaked(answer: &Answer, sensitive: &[String]) -> Option<String> {
    let bytes = answer.data_bytes();
    sensitive
        .iter()
        .find(|v| contains_bytes(&bytes, v.as_bytes()))
        .cloned()
}

/// Runs the fuzzer against `env` (a quickstart environment) until the time is up or a
/// failure is found.
pub fn run(env: &mut Env, o: &FuzzOptions) -> FuzzReport {
    let sensitive = sluice_sandbox::demo_sensitive_values();
    // A fresh token every few minutes: a long run outlives any one token.
    let mut token = env.agent_token();
    let mut token_at = Instant::now();
    let started = Instant::now();
    let mut report = FuzzReport::default();
    let mut pending: Vec<(u64, Vec<Vec<Frontend>>)> = Vec::new();
    let mut index = o.only_case.unwrap_or(0);
    let fail = |report: &mut FuzzReport, index: u64, what: String, batches: &[Vec<Frontend>]| {
        report.failures.push(format!(
            "seed {} case {index}: {what}\nreplay: SLUICE_PG_FUZZ_SEED={} SLUICE_PG_FUZZ_CASE={index}\n{}",
            o.seed,
            o.seed,
            render(batches)
        ));
    };
    loop {
        let batches = case(o.seed, index);
        if token_at.elapsed() > std::time::Duration::from_secs(300) {
            token = env.agent_token();
            token_at = Instant::now();
        }
        let mut conn = match RawConn::login(env.addr(), "agent-1", "appdb", &token) {
            Ok(c) => c,
            Err(e) => {
                fail(&mut report, index, format!("login refused: {e}"), &batches);
                break;
            }
        };
        for (n, b) in batches.iter().enumerate() {
            report.batches += 1;
            let sentinel = format!("fuzz-sentinel-{index}-{n}");
            let answer = exchange_batch(&mut conn, b, &sentinel, o.quiet);
            if let Some(v) = leaked(&answer, &sensitive) {
                fail(
                    &mut report,
                    index,
                    format!("{v:?} reached the client in clear: {:?}", answer.messages),
                    &batches,
                );
            }
            match answer.ended {
                Ended::Ready => {}
                Ended::Closed => break,
                Ended::TimedOut => {
                    fail(
                        &mut report,
                        index,
                        format!(
                            "no answer to the sentinel query within {:?} (hang); got {:?}",
                            o.quiet, answer.messages
                        ),
                        &batches,
                    );
                    break;
                }
            }
        }
        drop(conn);
        if !env.gateway_alive() {
            fail(
                &mut report,
                index,
                format!("the gateway process died; log:\n{}", env.gateway_log()),
                &batches,
            );
        }
        report.cases += 1;
        pending.push((index, batches));
        let done = o.only_case.is_some() || started.elapsed() >= o.duration;
        if done || !report.failures.is_empty() || report.cases % o.check_every == 0 {
            check(env, o, &mut pending, &mut report);
        }
        if done || !report.failures.is_empty() {
            break;
        }
        index += 1;
    }
    report
}

/// The oracle over the cases since the last check; a violation names the cases whose
/// messages hold the text at fault (or all of them).
fn check(
    env: &Env,
    o: &FuzzOptions,
    pending: &mut Vec<(u64, Vec<Vec<Frontend>>)>,
    report: &mut FuzzReport,
) {
    let oracle = env.oracle();
    let counts = env.direct_sql(
        "app",
        "select (select count(*) from orders) || ' ' || (select count(*) from customers) \
         || ' ' || (to_regclass('public.fuzz_t') is null)",
    );
    let mut problems: Vec<String> = oracle.violations.iter().map(|v| v.to_string()).collect();
    if counts.trim() != "100 50 true" {
        problems.push(format!(
            "the demo data changed (orders, customers, no fuzz_t): {}",
            counts.trim()
        ));
    }
    if !problems.is_empty() {
        let suspects: Vec<&(u64, Vec<Vec<Frontend>>)> = pending
            .iter()
            .filter(|(_, batches)| {
                let text = render(batches);
                oracle
                    .violations
                    .iter()
                    .any(|v| text.contains(&format!("{:?}", v.text)))
            })
            .collect();
        let shown: Vec<&(u64, Vec<Vec<Frontend>>)> = if suspects.is_empty() {
            pending.iter().collect()
        } else {
            suspects
        };
        let mut msg = format!(
            "seed {}: oracle violations after cases {}..={}:\n{}\ncases that may have caused them:\n",
            o.seed,
            pending.first().map(|p| p.0).unwrap_or(0),
            pending.last().map(|p| p.0).unwrap_or(0),
            problems.join("\n")
        );
        for (i, b) in shown {
            let _ = write!(
                msg,
                "case {i} (replay: SLUICE_PG_FUZZ_SEED={} SLUICE_PG_FUZZ_CASE={i}):\n{}",
                o.seed,
                render(b)
            );
        }
        report.failures.push(msg);
    }
    pending.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases_are_deterministic_per_seed() {
        assert_eq!(case(7, 3), case(7, 3));
        assert_ne!(case(7, 3), case(8, 3));
        for i in 0..200 {
            for b in case(1, i) {
                let extended = b.iter().any(|m| !matches!(m, Frontend::Query(_)));
                assert!(!b.is_empty() && (!extended || b.last() == Some(&Frontend::Sync)));
            }
        }
    }
}

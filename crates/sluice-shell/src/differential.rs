//! The differential test of shell parsing: for generated command lines
//! (compound forms, quoting, substitutions, wrappers and launchers around
//! harmless programs), every program bash actually `execve`s must be one the
//! parser named, or run beneath a part the parser said may run anything, or
//! the parser must have refused the line.
//!
//! bash runs under `strace -f` in a throwaway directory with a minimal
//! environment. `SLUICE_SHELL_DIFF_SECONDS` bounds the run (20 s by default;
//! `cargo xtask fuzz --target shell_differential` runs it longer) and
//! `SLUICE_SHELL_DIFF_SEED` replays a failing seed.

use super::analyze;
use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::time::{Duration, Instant};

/// xorshift64*: enough randomness for a grammar, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

/// Harmless programs, in the spellings a line can give them.
const PROGRAMS: &[&str] = &[
    "true", "false", "echo", "printf", "id", "uname", "date", "basename", "dirname", "seq", "expr",
    "sleep", "tr", "head", "wc", "cat", "od", "sort", "uniq", "cut", "tee", "touch", "mkdir", "ls",
    "stat", "nproc", "hostname", "whoami", "pwd", "logname", "tty", "yes",
];

fn program(r: &mut Rng) -> String {
    let p = r.pick(PROGRAMS);
    let args = match p {
        "basename" | "dirname" => " /a/b",
        "seq" | "expr" => " 1",
        "sleep" => " 0",
        "tr" => " a b </dev/null",
        "head" => " -c0 /dev/null",
        "wc" | "cat" | "od" | "sort" | "uniq" | "tee" => " </dev/null",
        "cut" => " -c1 </dev/null",
        "touch" => " f",
        "mkdir" => " -p d",
        "yes" => " | head -n1",
        "printf" => " '%s\\n' x",
        "echo" => " hi",
        _ => "",
    };
    let spelled = match r.below(10) {
        0 => format!("'{p}'"),
        1 => format!("\"{p}\""),
        2 => format!("\\{p}"),
        3 => format!("{}''{}", &p[..1], &p[1..]),
        4 => format!("/usr/bin/{p}"),
        5 => format!("/usr/bin/../bin/{p}"),
        6 => {
            let hex: String = p.bytes().map(|b| format!("\\x{b:02x}")).collect();
            format!("$'{hex}'")
        }
        _ => p.to_string(),
    };
    format!("{spelled}{args}")
}

/// Single-quotes `s` for the shell.
fn q(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// A command line of up to `depth` nested forms.
fn command(r: &mut Rng, depth: usize) -> String {
    if depth == 0 {
        return program(r);
    }
    let d = depth - 1;
    match r.below(62) {
        0 => format!("{}; {}", command(r, d), command(r, d)),
        1 => format!("{} && {}", command(r, d), command(r, d)),
        2 => format!("{} || {}", command(r, d), command(r, d)),
        3 => format!("{} | {}", command(r, d), command(r, d)),
        4 => format!("({})", command(r, d)),
        5 => format!("{{ {}; }}", command(r, d)),
        6 => format!(
            "if {}; then {}; else {}; fi",
            command(r, d),
            command(r, d),
            command(r, d)
        ),
        7 => format!("while false; do {}; done; {}", command(r, d), command(r, d)),
        8 => format!("for x in 1 2; do {}; done", command(r, d)),
        9 => format!("set -- 1; for x do {}; done", command(r, d)),
        10 => format!("set -- 1; for x\ndo {}\ndone", command(r, d)),
        11 => format!("echo $({})", command(r, d)),
        12 => format!("echo \"`{}`\"", program(r)),
        13 => format!("cat <({})", command(r, d)),
        14 => format!("echo ${{UNSET:-$({})}}", command(r, d)),
        15 => format!("x=$({}); echo \"$x\"", command(r, d)),
        16 => format!("cat <<EOF\n$({})\nEOF\n", command(r, d)),
        17 => format!("{} 2>/dev/null", command(r, d)),
        18 => format!("! {}", command(r, d)),
        19 => format!("{} & wait", command(r, d)),
        20 => format!("until true; do {}; done; {}", command(r, d), command(r, d)),
        21 => format!("[[ -n $({}) ]]", command(r, d)),
        22 => format!("case x in x) {};; esac", command(r, d)),
        23 => format!("f() {{ {}; }}; f", command(r, d)),
        24 => format!("echo $((1 + $({})))", command(r, d)),
        25 => format!("A=1 {}", command(r, 0)),
        26 => format!("env {}", command(r, 0)),
        27 => format!("env -i PATH=/usr/bin:/bin {}", command(r, 0)),
        28 => format!("nice -n 5 {}", command(r, 0)),
        29 => format!("timeout 5 {}", command(r, 0)),
        30 => format!("stdbuf -o0 {}", command(r, 0)),
        31 => format!("sh -c {}", q(&command(r, d))),
        32 => format!("bash -c {}", q(&command(r, d))),
        33 => format!("xargs {} </dev/null", r.pick(&["", "-r", "-0"])),
        34 => format!(
            "find . -maxdepth 0 -exec {} \\;",
            program(r).replace(['<', '|'], "")
        ),
        35 => format!(
            "{} {} {}",
            r.pick(&[
                "prlimit --nofile=64",
                "chrt -o 0",
                "taskset -c 0",
                "ionice -c 3",
                "setpriv --nnp",
                "flock lock",
                "setsid -w",
                "command",
                "exec",
                "time",
                "nohup",
                "unshare -U",
                "strace -o /dev/null",
                "env -u X",
            ]),
            command(r, 0),
            // Options of the inner program that a wrapper also has.
            r.pick(&["", "", "-c true", "-p 1", "-S true", "--pid 1", "-e true", "-- true"])
        ),
        36 => format!("script -qc {} /dev/null", q(&command(r, d))),
        37 => format!("flock -c {} lock", q(&command(r, d))),
        38 => format!(
            "awk {}",
            q(&format!("BEGIN{{system(\"{}\")}}", PROGRAMS[r.below(8)]))
        ),
        39 => format!(
            "echo x | sed -n {}",
            q(&format!("1e {}", PROGRAMS[r.below(8)]))
        ),
        40 => format!("awk 'BEGIN{{print 1}}'; {}", command(r, d)),
        41 => format!("echo ${{x:-a}} ${{#x}}; {}", command(r, d)),
        42 => format!("a[$({})]=1", command(r, d)),
        44 => format!("echo hi >$({}) 2>/dev/null; true", command(r, d)),
        45 => format!("cat <<<\"$({})\"", command(r, d)),
        46 => format!("echo hi > >({})", command(r, d)),
        47 => format!("cat <<'EOF'\n$({})\nEOF\n{}", command(r, d), command(r, d)),
        48 => format!("cat <<-EOF\n\t`{}`\n\tEOF\n", program(r)),
        49 => format!("{} |& {}", command(r, d), command(r, d)),
        50 => format!("{} &>/dev/null", command(r, d)),
        51 => format!("exec 3>&1; {}", command(r, d)),
        52 => format!("x=1 y=$({}) {}", command(r, d), command(r, 0)),
        53 => format!(
            "bash -c \"{}\"",
            command(r, 0).replace(['"', '\\', '$', '`'], "")
        ),
        54 => format!("bash -o errexit -c {} arg0", q(&command(r, d))),
        55 => format!(
            "env -S {}",
            q(&command(r, 0).replace(['<', '|', '\'', '"', '\\', '$'], ""))
        ),
        56 => format!("nice -10 {}", command(r, 0)),
        57 => format!(
            "printf 'a\\n' | xargs -n1 {}",
            program(r).replace(['<', '|'], "")
        ),
        58 => format!(
            "printf 'a\\n' | xargs -I{{}} {} {{}}",
            program(r).replace(['<', '|'], "")
        ),
        59 => format!(
            "find . -maxdepth 0 -execdir {} \\; -o -print",
            program(r).replace(['<', '|'], "")
        ),
        60 => format!("echo x # $({})\n{}", command(r, d), command(r, d)),
        61 => format!("timeout -s KILL 5 {}", command(r, 0)),
        _ => format!("{}\n{}", command(r, d), command(r, d)),
    }
}

/// Inserts backslash-newline at random points: bash deletes it before it
/// splits words (except in single quotes, comments and quoted here-document
/// bodies), so the parser must see the same joined line bash does.
fn with_continuations(r: &mut Rng, line: &str) -> String {
    let chars: Vec<char> = line.chars().collect();
    let mut at: Vec<usize> = (0..1 + r.below(3))
        .map(|_| r.below(chars.len() + 1))
        .collect();
    at.sort_unstable();
    let mut out = String::new();
    for (i, c) in chars.iter().enumerate() {
        for _ in at.iter().filter(|&&a| a == i) {
            out.push_str("\\\n");
        }
        out.push(*c);
    }
    for _ in at.iter().filter(|&&a| a == chars.len()) {
        out.push_str("\\\n");
    }
    out
}

/// What bash executed: (program base name, the programs exec'd above it).
fn executed(line: &str, dir: &std::path::Path) -> Result<Vec<(String, Vec<String>)>, String> {
    // Outside the line's directory, where `>$(ls)` could overwrite it.
    let trace_dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let trace = trace_dir.path().join("trace");
    let status = Command::new("strace")
        .args(["-f", "-qq", "-o"])
        .arg(&trace)
        .args([
            "-e",
            "trace=execve,execveat,clone,clone3,fork,vfork",
            "bash",
            "-c",
            line,
        ])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("SHELL", "/bin/sh")
        .env("HOME", dir)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("strace: {e} (install it: cargo xtask setup)"))?;
    let _ = status;
    let text = std::fs::read_to_string(&trace).map_err(|e| format!("trace: {e}"))?;
    parse_trace(&text)
}

/// Reads `strace -f -o` output (each line prefixed with its pid).
fn parse_trace(text: &str) -> Result<Vec<(String, Vec<String>)>, String> {
    // Pass 1: parents (child → (parent, line of the clone call)).
    let mut parent: HashMap<u32, (u32, usize)> = HashMap::new();
    let mut clone_start: HashMap<u32, usize> = HashMap::new();
    let lines: Vec<(u32, &str)> = text
        .lines()
        .filter_map(|l| {
            let (pid, rest) = l.trim_start().split_once(' ')?;
            Some((pid.parse().ok()?, rest.trim_start()))
        })
        .collect();
    for (n, (pid, rest)) in lines.iter().enumerate() {
        let is_clone = ["clone(", "clone3(", "fork(", "vfork("]
            .iter()
            .any(|c| rest.starts_with(c));
        if is_clone {
            clone_start.insert(*pid, n);
        }
        let resumed = [
            "<... clone resumed>",
            "<... clone3 resumed>",
            "<... fork resumed>",
            "<... vfork resumed>",
        ]
        .iter()
        .any(|c| rest.starts_with(c));
        if is_clone || resumed {
            if let Some(child) = rest
                .rsplit_once("= ")
                .and_then(|(_, v)| v.trim().parse::<u32>().ok())
            {
                let at = clone_start.get(pid).copied().unwrap_or(n);
                parent.insert(child, (*pid, at));
            }
        }
    }
    // Pass 2: successful execs in order, per pid.
    let mut execs: HashMap<u32, Vec<(usize, String)>> = HashMap::new();
    let mut pending: HashMap<u32, String> = HashMap::new();
    let path_of = |rest: &str| -> Option<String> {
        let start = rest.find('"')? + 1;
        let end = start + rest[start..].find('"')?;
        let path = &rest[start..end];
        Some(path.rsplit('/').next().unwrap_or(path).to_string())
    };
    for (n, (pid, rest)) in lines.iter().enumerate() {
        if rest.starts_with("execve(") || rest.starts_with("execveat(") {
            let Some(prog) = path_of(rest) else { continue };
            if rest.ends_with("<unfinished ...>") {
                pending.insert(*pid, prog);
            } else if rest.contains(") = 0") {
                execs.entry(*pid).or_default().push((n, prog));
            }
        } else if rest.starts_with("<... execve resumed>")
            || rest.starts_with("<... execveat resumed>")
        {
            if let Some(prog) = pending.remove(pid) {
                if rest.contains(") = 0") || rest.trim_end().ends_with("= 0") {
                    execs.entry(*pid).or_default().push((n, prog));
                }
            }
        }
    }
    // The root is bash itself: its first exec is not the line's.
    let root = lines.first().map(|(p, _)| *p).ok_or("empty trace")?;
    fn lineage(
        pid: u32,
        before: usize,
        root: u32,
        parent: &HashMap<u32, (u32, usize)>,
        execs: &HashMap<u32, Vec<(usize, String)>>,
        depth: usize,
    ) -> Vec<String> {
        let mut out = match parent.get(&pid) {
            Some((p, at)) if depth < 64 => lineage(*p, *at, root, parent, execs, depth + 1),
            _ => Vec::new(),
        };
        let own = execs.get(&pid).map(Vec::as_slice).unwrap_or_default();
        let skip = usize::from(pid == root);
        out.extend(
            own.iter()
                .skip(skip)
                .filter(|(n, _)| *n < before)
                .map(|(_, p)| p.clone()),
        );
        out
    }
    let mut result = Vec::new();
    for (pid, list) in &execs {
        let skip = usize::from(*pid == root);
        for (n, prog) in list.iter().skip(skip) {
            result.push((prog.clone(), lineage(*pid, *n, root, &parent, &execs, 0)));
        }
    }
    Ok(result)
}

/// Shells exec'd for `sh -c`, `script -c`, `flock -c`, awk's `system`: what
/// they run is checked; the shell itself is how the line runs it.
const TRANSPARENT: &[&str] = &["sh", "dash", "bash"];

/// One line: `Err` describes a program bash ran that the parser missed.
fn check(line: &str, dir: &std::path::Path) -> Result<bool, String> {
    let Ok(parts) = analyze(line) else {
        return Ok(false);
    };
    let named: HashSet<&str> = parts.iter().map(|p| p.program.as_str()).collect();
    let anything: HashSet<&str> = parts
        .iter()
        .filter(|p| p.runs_anything)
        .map(|p| p.program.as_str())
        .collect();
    for (prog, above) in executed(line, dir)? {
        if named.contains(prog.as_str()) || TRANSPARENT.contains(&prog.as_str()) {
            continue;
        }
        if above.iter().any(|a| anything.contains(a.as_str())) {
            continue;
        }
        return Err(format!(
            "bash ran {prog:?} (under {above:?}); the parser named {parts:?}"
        ));
    }
    Ok(true)
}

fn strace_works() -> bool {
    Command::new("strace")
        .args(["-qq", "-o", "/dev/null", "-e", "trace=execve", "true"])
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn every_program_bash_runs_is_named_by_the_parser() {
    assert!(
        strace_works(),
        "the shell differential test needs strace with ptrace permitted (cargo xtask setup installs it)"
    );
    let seconds: u64 = std::env::var("SLUICE_SHELL_DIFF_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("SLUICE_SHELL_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
                | 1
        });
    let mut r = Rng(seed);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let (mut lines, mut judged) = (0usize, 0usize);
    let mut failures = Vec::new();
    while Instant::now() < deadline {
        let dir = tempfile::tempdir().unwrap();
        let depth = 1 + r.below(3);
        let mut line = command(&mut r, depth);
        if r.below(3) == 0 {
            line = with_continuations(&mut r, &line);
        }
        lines += 1;
        match check(&line, dir.path()) {
            Ok(true) => judged += 1,
            Ok(false) => {}
            Err(e) => failures.push(format!("{line:?}: {e}")),
        }
        if failures.len() >= 5 {
            break;
        }
    }
    eprintln!("shell differential: seed {seed}, {lines} lines, {judged} judged");
    assert!(
        failures.is_empty(),
        "seed {seed} (replay with SLUICE_SHELL_DIFF_SEED={seed}):\n{}",
        failures.join("\n")
    );
    assert!(
        lines < 20 || judged * 3 >= lines,
        "only {judged} of {lines} lines were judged: the grammar mostly produces refused lines"
    );
}

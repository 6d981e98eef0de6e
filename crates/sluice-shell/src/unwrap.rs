//! Programs that run other programs, and programs whose effect cannot be
//! judged from the command line.

use super::launch;
use super::parse::{arithmetic_has_names, parse_at, Word, MAX_DEPTH};
use super::{quote_argv, Invocation, Unjudgeable};

/// Shells: `-c SCRIPT` is parsed and judged; otherwise they read commands
/// from a file (judged as the shell) or from standard input (refused).
const SHELLS: &[&str] = &[
    "sh", "bash", "rbash", "zsh", "dash", "ksh", "ksh93", "mksh", "pdksh", "ash", "yash", "posh",
    "hush", "fish", "tcsh", "csh",
];

/// Names of standard input as a script operand.
const STDIN_PATHS: &[&str] = &["-", "/dev/stdin", "/dev/fd/0", "/proc/self/fd/0"];

/// Built-ins that run text as code or change what a later name runs.
const CODE_BUILTINS: &[&str] = &[
    "eval", "source", ".", "alias", "trap", "fc", "enable", "compgen", "complete", "bind",
];

fn err<T>(why: impl Into<String>) -> Result<T, Unjudgeable> {
    Err(Unjudgeable::new(why))
}

pub(crate) fn analyze_into(
    line: &str,
    depth: usize,
    out: &mut Vec<Invocation>,
) -> Result<(), Unjudgeable> {
    for cmd in parse_at(line, depth)? {
        let idx = out.len();
        judge(&cmd.words, depth, out)?;
        // `PAGER=… man x`, `LD_PRELOAD=… ls`, `GIT_SSH_COMMAND=… git fetch`:
        // the command runs what the variable names.
        if let Some(a) = cmd
            .assignments
            .iter()
            .find(|a| launch::assigned_name(&a.text).is_some_and(launch::code_env))
        {
            code_assignment(&a.text, idx, out);
        }
        if !cmd.writes.is_empty() {
            if out.len() == idx {
                // `> f`, `X=1 > f`: no program runs, but the file is opened
                // (created or truncated). The part has no program name.
                out.push(Invocation {
                    program: String::new(),
                    path: None,
                    args: Vec::new(),
                    runs_anything: false,
                    writes: Vec::new(),
                });
            }
            // A wrapper's redirections are the wrapped program's too (it
            // inherits the descriptors).
            for inv in &mut out[idx..] {
                inv.writes.extend(cmd.writes.iter().cloned());
            }
        }
    }
    Ok(())
}

/// Marks the part at `idx` (or, for a bare assignment, a new part named by
/// the assignment) as running anything.
fn code_assignment(text: &str, idx: usize, out: &mut Vec<Invocation>) {
    match out.get_mut(idx) {
        Some(inv) => inv.runs_anything = true,
        None => out.push(Invocation {
            program: text.split('=').next().unwrap_or_default().to_string() + "=",
            path: None,
            args: vec![text.to_string()],
            runs_anything: true,
            writes: Vec::new(),
        }),
    }
}

/// Whether words a wrapper or builtin takes as `NAME=value` set a variable
/// that makes a later program run code.
fn sets_code_env(words: &[Word]) -> bool {
    words
        .iter()
        .any(|w| launch::assigned_name(&w.text).is_some_and(launch::code_env))
}

fn texts(words: &[Word]) -> Vec<String> {
    words.iter().map(|w| w.text.clone()).collect()
}

/// Splits `/usr/bin/rm` into (`rm`, Some(`/usr/bin/rm`)).
fn normalise(text: &str) -> (String, Option<String>) {
    match text.rfind('/') {
        Some(i) => (text[i + 1..].to_string(), Some(text.to_string())),
        None => (text.to_string(), None),
    }
}

pub(super) fn judge(
    words: &[Word],
    depth: usize,
    out: &mut Vec<Invocation>,
) -> Result<(), Unjudgeable> {
    if depth > MAX_DEPTH {
        return err("commands are nested too deeply");
    }
    let Some(first) = words.first() else {
        return Ok(());
    };
    // `[` and `[[` have no closing bracket: not a pattern.
    let glob = first.glob && !matches!(first.text.as_str(), "[" | "[[");
    if first.dynamic || glob {
        return err(format!(
            "the program name {:?} is only known when the command runs",
            first.text
        ));
    }
    let (program, path) = normalise(&first.text);
    let args = &words[1..];
    let idx = out.len();
    out.push(Invocation {
        program: program.clone(),
        path,
        args: texts(args),
        runs_anything: false,
        writes: Vec::new(),
    });
    let name = program.as_str();
    if CODE_BUILTINS.contains(&name) {
        return err(format!(
            "`{name}` runs text or changes names in ways the gateway cannot judge"
        ));
    }
    if name == "hash" && hash_binds(args) {
        return err(
            "`hash -p` makes a later name run another program, which the gateway cannot judge",
        );
    }
    names_are_plain(name, args)?;
    if matches!(
        name,
        "export" | "declare" | "typeset" | "local" | "readonly"
    ) && sets_code_env(args)
    {
        out[idx].runs_anything = true;
    }
    if SHELLS.contains(&name) {
        return shell(name, args, depth, idx, out);
    }
    if is_interpreter(name) {
        out[idx].runs_anything = interpreter(name, args)?;
        return Ok(());
    }
    match name {
        "busybox" => match args.first() {
            // `busybox -$X rm …` with an empty X runs rm.
            Some(a) if a.splits || a.glob => fixed_words(name, &args[..1]),
            Some(a) if !a.text.starts_with('-') => judge(args, depth + 1, out),
            _ => Ok(()),
        },
        "env" => env(args, depth, idx, out),
        "sudo" => sudo(args, depth, idx, out),
        "doas" => {
            let (i, seen) = options(
                name,
                args,
                &Spec {
                    flags: "nsL",
                    with_arg: "uC",
                    ..Spec::default()
                },
            )?;
            if seen.contains(&'s') && i >= args.len() {
                return err("`doas -s` starts a shell that reads commands from standard input");
            }
            judge(&args[i..], depth + 1, out)
        }
        "su" | "runuser" => su(name, args, depth, out),
        "nice" => {
            let (i, _) = options(
                name,
                args,
                &Spec {
                    with_arg: "n",
                    long_with_arg: &["--adjustment"],
                    numeric: true,
                    ..Spec::default()
                },
            )?;
            judge(&args[i..], depth + 1, out)
        }
        "nohup" | "builtin" => judge(args, depth + 1, out),
        "setsid" => {
            let (i, _) = options(
                name,
                args,
                &Spec {
                    flags: "cfw",
                    long_flags: &["--ctty", "--fork", "--wait"],
                    ..Spec::default()
                },
            )?;
            judge(&args[i..], depth + 1, out)
        }
        "time" => {
            let (i, _) = options(
                name,
                args,
                &Spec {
                    flags: "pvaq",
                    with_arg: "fo",
                    long_flags: &["--append", "--verbose", "--portability", "--quiet"],
                    long_with_arg: &["--format", "--output"],
                    ..Spec::default()
                },
            )?;
            judge(&args[i..], depth + 1, out)
        }
        "timeout" => {
            let (i, _) = options(
                name,
                args,
                &Spec {
                    flags: "v",
                    with_arg: "sk",
                    long_flags: &["--preserve-status", "--foreground", "--verbose"],
                    long_with_arg: &["--signal", "--kill-after"],
                    ..Spec::default()
                },
            )?;
            // The duration, then the command.
            fixed_operand(name, args, i)?;
            judge(args.get(i + 1..).unwrap_or_default(), depth + 1, out)
        }
        "stdbuf" => {
            let (i, _) = options(
                name,
                args,
                &Spec {
                    with_arg: "ioe",
                    long_with_arg: &["--input", "--output", "--error"],
                    ..Spec::default()
                },
            )?;
            judge(&args[i..], depth + 1, out)
        }
        "ionice" => {
            let (i, seen) = options(
                name,
                args,
                &Spec {
                    flags: "t",
                    with_arg: "cnpPu",
                    long_flags: &["--ignore"],
                    long_with_arg: &["--class", "--classdata", "--pid", "--pgid", "--uid"],
                    ..Spec::default()
                },
            )?;
            if seen.iter().any(|c| "pPu".contains(*c)) {
                return Ok(());
            }
            judge(&args[i..], depth + 1, out)
        }
        "chroot" => {
            let (i, _) = options(
                name,
                args,
                &Spec {
                    long_flags: &["--skip-chdir"],
                    long_with_arg: &["--userspec", "--groups"],
                    ..Spec::default()
                },
            )?;
            if args.len() <= i + 1 {
                return err("`chroot` without a command starts a shell that reads standard input");
            }
            fixed_operand(name, args, i)?;
            judge(&args[i + 1..], depth + 1, out)
        }
        "taskset" => {
            let (i, seen) = options(
                name,
                args,
                &Spec {
                    flags: "acp",
                    long_flags: &["--all-tasks", "--cpu-list", "--pid"],
                    ..Spec::default()
                },
            )?;
            if seen.contains(&'p') {
                return Ok(());
            }
            fixed_operand(name, args, i)?;
            judge(args.get(i + 1..).unwrap_or_default(), depth + 1, out)
        }
        "flock" => {
            let (i, seen) = options(
                name,
                args,
                &Spec {
                    flags: "sxnuoFv",
                    with_arg: "wEc",
                    long_flags: &[
                        "--shared",
                        "--exclusive",
                        "--nonblock",
                        "--nb",
                        "--unlock",
                        "--close",
                        "--no-fork",
                        "--verbose",
                    ],
                    long_with_arg: &["--timeout", "--wait", "--conflict-exit-code", "--command"],
                    ..Spec::default()
                },
            )?;
            // Only among flock's own options: `flock F cmd -c x` is cmd's -c
            // (found by the differential test).
            if let Some(script) = value_of(&args[..i], 'c', "--command") {
                return script_text(&script, depth, out);
            }
            let _ = seen;
            fixed_operand(name, args, i)?;
            judge(args.get(i + 1..).unwrap_or_default(), depth + 1, out)
        }
        "watch" => {
            let (i, seen) = options(
                name,
                args,
                &Spec {
                    flags: "bcdegtpxwr",
                    with_arg: "nq",
                    long_flags: &[
                        "--beep",
                        "--color",
                        "--no-color",
                        "--differences",
                        "--chgexit",
                        "--errexit",
                        "--no-title",
                        "--precise",
                        "--exec",
                        "--no-wrap",
                        "--no-rerun",
                    ],
                    long_with_arg: &["--interval", "--equexit"],
                    ..Spec::default()
                },
            )?;
            let rest = &args[i..];
            if seen.contains(&'x') || args.iter().any(|a| a.text == "--exec") {
                return judge(rest, depth + 1, out);
            }
            // watch runs its arguments joined with spaces through `sh -c`.
            script_words(rest, depth, out)
        }
        "xargs" => xargs(args, depth, out),
        "exec" => {
            let (i, _) = options(
                name,
                args,
                &Spec {
                    flags: "cl",
                    with_arg: "a",
                    ..Spec::default()
                },
            )?;
            judge(&args[i..], depth + 1, out)
        }
        "command" => {
            let (i, seen) = options(
                name,
                args,
                &Spec {
                    flags: "pvV",
                    ..Spec::default()
                },
            )?;
            if seen.contains(&'v') || seen.contains(&'V') {
                // Only looks the name up.
                return Ok(());
            }
            judge(&args[i..], depth + 1, out)
        }
        "find" => find(args, depth, out),
        _ => launch::judge_launcher(name, args, depth, idx, out).unwrap_or(Ok(())),
    }
}

/// Option grammar of one wrapper.
#[derive(Default)]
pub(super) struct Spec {
    /// Short options without an argument.
    pub flags: &'static str,
    /// Short options with an argument (attached or the next word).
    pub with_arg: &'static str,
    /// Short options with an optional argument, attached only (`-m/proc/1/ns/mnt`).
    pub optional_attached: &'static str,
    pub long_flags: &'static [&'static str],
    pub long_with_arg: &'static [&'static str],
    /// `-10` style numeric options (nice).
    pub numeric: bool,
}

/// Walks leading options; returns the index of the first operand and the
/// short options seen. An unknown option refuses: guessing whether it takes
/// an argument would let `wrapper --unknown rm …` hide the program.
pub(super) fn options(
    program: &str,
    args: &[Word],
    spec: &Spec,
) -> Result<(usize, Vec<char>), Unjudgeable> {
    let (i, seen) = walk_options(program, args, spec)?;
    fixed_words(program, &args[..i.min(args.len())])?;
    Ok((i, seen))
}

/// Words a wrapper reads before the program it runs (options, their
/// values, operands such as a duration) must stay the words they are: an
/// unquoted expansion may split into several words or vanish, and a
/// pattern may match several names, so what looks like a value can become
/// options or the program (`timeout -s$X 5 ls` with `X='KILL 1 rm -rf /'`).
pub(super) fn fixed_words(program: &str, words: &[Word]) -> Result<(), Unjudgeable> {
    match words.iter().find(|w| w.splits || w.glob) {
        Some(w) => err(format!(
            "{:?}, an argument of `{program}` before the program it runs, holds an unquoted expansion or pattern: bash may split it into several words, which could name another program (quote it, as in \"$X\")",
            w.text
        )),
        None => Ok(()),
    }
}

/// The operand at `i` that a wrapper reads before the program (timeout's
/// duration, chroot's directory, flock's file, taskset's mask).
fn fixed_operand(program: &str, args: &[Word], i: usize) -> Result<(), Unjudgeable> {
    fixed_words(program, args.get(i..=i).unwrap_or_default())
}

fn walk_options(
    program: &str,
    args: &[Word],
    spec: &Spec,
) -> Result<(usize, Vec<char>), Unjudgeable> {
    let mut seen = Vec::new();
    let mut i = 0;
    while let Some(w) = args.get(i) {
        let t = w.text.as_str();
        // A value computed from its first character may be an option or
        // not (`timeout `echo -v` 5 rm`, `xargs timeout`).
        if w.computed_at == Some(0) {
            return err(format!(
                "an argument of `{program}` is only known when the command runs"
            ));
        }
        if t == "--" {
            return Ok((i + 1, seen));
        }
        if !t.starts_with('-') || t == "-" {
            return Ok((i, seen));
        }
        if let Some(long) = t.strip_prefix("--") {
            let name = format!("--{}", long.split('=').next().unwrap_or_default());
            if spec.long_flags.contains(&name.as_str()) {
                i += 1;
                continue;
            }
            if spec.long_with_arg.contains(&name.as_str()) {
                i += if long.contains('=') { 1 } else { 2 };
                continue;
            }
            return err(format!(
                "`{program}` option {name} is not known to the gateway"
            ));
        }
        if spec.numeric && t[1..].chars().all(|c| c.is_ascii_digit()) {
            i += 1;
            continue;
        }
        let cluster: Vec<char> = t[1..].chars().collect();
        let mut j = 0;
        let mut consumed_next = false;
        while j < cluster.len() {
            let c = cluster[j];
            seen.push(c);
            if spec.flags.contains(c) {
                j += 1;
            } else if spec.optional_attached.contains(c) {
                break;
            } else if spec.with_arg.contains(c) {
                if j + 1 == cluster.len() {
                    consumed_next = true;
                }
                break;
            } else {
                return err(format!(
                    "`{program}` option -{c} is not known to the gateway"
                ));
            }
        }
        i += if consumed_next { 2 } else { 1 };
    }
    if i > args.len() {
        // The last option wants an argument that is not there (found by the
        // shell_command fuzz target: callers slice `args[i..]`).
        return err(format!("`{program}`'s last option is missing its argument"));
    }
    Ok((i, seen))
}

/// The value of `-c VALUE`/`-cVALUE`/`--long=VALUE`/`--long VALUE`, if present.
pub(super) fn value_of(args: &[Word], short: char, long: &str) -> Option<String> {
    let mut it = args.iter().peekable();
    while let Some(w) = it.next() {
        let t = &w.text;
        if t == "--" {
            return None;
        }
        if let Some(v) = t.strip_prefix(&format!("{long}=")) {
            return Some(v.to_string());
        }
        if t == long {
            return it.next().map(|w| w.text.clone());
        }
        if t.starts_with('-') && !t.starts_with("--") {
            if let Some(pos) = t[1..].find(short) {
                let rest = &t[1 + pos + short.len_utf8()..];
                return if rest.is_empty() {
                    it.next().map(|w| w.text.clone())
                } else {
                    Some(rest.to_string())
                };
            }
        }
    }
    None
}

/// A script given as one argument (`sh -c`, `su -c`, `flock -c`).
pub(super) fn script_text(
    script: &str,
    depth: usize,
    out: &mut Vec<Invocation>,
) -> Result<(), Unjudgeable> {
    analyze_into(script, depth + 1, out)
}

/// Words a program joins with spaces and runs through `sh -c` (watch).
fn script_words(
    words: &[Word],
    depth: usize,
    out: &mut Vec<Invocation>,
) -> Result<(), Unjudgeable> {
    if words.iter().any(|w| w.dynamic) {
        return err("a script assembled at run time cannot be judged");
    }
    let joined: Vec<&str> = words.iter().map(|w| w.text.as_str()).collect();
    script_text(&joined.join(" "), depth, out)
}

fn shell(
    name: &str,
    args: &[Word],
    depth: usize,
    idx: usize,
    out: &mut Vec<Invocation>,
) -> Result<(), Unjudgeable> {
    let mut i = 0;
    let mut c_flag = false;
    let mut s_flag = false;
    while let Some(w) = args.get(i) {
        let t = w.text.as_str();
        if w.dynamic && i == 0 {
            return err(format!(
                "the options of `{name}` are only known when the command runs"
            ));
        }
        if t == "--" || t == "-" {
            i += 1;
            break;
        }
        if let Some(long) = t.strip_prefix("--") {
            let opt = long.split('=').next().unwrap_or_default();
            match opt {
                "login" | "norc" | "noprofile" | "posix" | "restricted" | "verbose"
                | "noediting" | "debugger" | "no-config" | "private" | "interactive" => {}
                "rcfile" | "init-file" if !long.contains('=') => i += 1,
                "rcfile" | "init-file" => {}
                "command" => {
                    // fish --command=SCRIPT / --command SCRIPT
                    c_flag = true;
                    if let Some(v) = long.strip_prefix("command=") {
                        return script_text(v, depth, out);
                    }
                }
                _ => {
                    return err(format!(
                        "`{name}` option --{opt} is not known to the gateway"
                    ))
                }
            }
            i += 1;
            if c_flag {
                break;
            }
            continue;
        }
        if (t.starts_with('-') || t.starts_with('+')) && t.len() > 1 {
            let takes_next = t[1..].chars().any(|c| c == 'o' || c == 'O');
            for c in t[1..].chars() {
                match c {
                    'c' => c_flag = true,
                    's' | 'i' => s_flag = true,
                    _ => {}
                }
            }
            i += if takes_next { 2 } else { 1 };
            continue;
        }
        break;
    }
    let operand = args.get(i);
    if c_flag {
        let Some(script) = operand else {
            return err(format!("`{name} -c` without a script"));
        };
        if script.dynamic {
            return err(format!(
                "the script given to `{name} -c` is only known when the command runs"
            ));
        }
        return script_text(&script.text, depth, out);
    }
    match operand {
        Some(file) if !s_flag && !file.dynamic && !STDIN_PATHS.contains(&file.text.as_str()) => {
            // A script file: its text is not on the line, so it may run anything.
            out[idx].runs_anything = true;
            Ok(())
        }
        _ => err(format!(
            "`{name}` would read commands from standard input (a pipe, a here-document or the session), which cannot be judged"
        )),
    }
}

fn is_interpreter(name: &str) -> bool {
    name.starts_with("python")
        || name.starts_with("lua")
        || matches!(
            name,
            "perl" | "ruby" | "node" | "nodejs" | "php" | "tclsh" | "pypy" | "pypy3" | "irb"
        )
}

/// Script interpreters read their program from a file, an option, or stdin.
/// Stdin is refused; program text or a file may run anything (`Ok(true)`);
/// only asking for the version or help runs nothing (`Ok(false)`).
fn interpreter(name: &str, args: &[Word]) -> Result<bool, Unjudgeable> {
    if !args.is_empty()
        && args
            .iter()
            .all(|w| matches!(w.text.as_str(), "-V" | "-v" | "--version" | "-h" | "--help"))
    {
        return Ok(false);
    }
    let code_flags: &[&str] = match name {
        n if n.starts_with("python") || n.starts_with("pypy") => &["-c", "-m"],
        "perl" => &["-e", "-E"],
        "node" | "nodejs" => &["-e", "-p", "--eval", "--print"],
        "php" => &["-r"],
        _ => &["-e"],
    };
    let with_arg: &[&str] = match name {
        n if n.starts_with("python") || n.starts_with("pypy") => &["-W", "-X", "-Q"],
        "perl" => &["-I", "-M", "-m"],
        "node" | "nodejs" => &["-r", "--require", "--import"],
        _ => &[],
    };
    let mut i = 0;
    while let Some(w) = args.get(i) {
        let t = w.text.as_str();
        if code_flags
            .iter()
            .any(|f| t == *f || (t.starts_with(f) && !f.starts_with("--")))
        {
            return Ok(true);
        }
        // Clustered perl flags such as -pe / -ne carry code.
        if name == "perl" && t.starts_with('-') && !t.starts_with("--") && t.contains('e') {
            return Ok(true);
        }
        if t == "--" {
            i += 1;
            break;
        }
        if with_arg.contains(&t) {
            i += 2;
            continue;
        }
        if t.starts_with('-') && t != "-" {
            i += 1;
            continue;
        }
        break;
    }
    match args.get(i) {
        Some(file) if !file.dynamic && !STDIN_PATHS.contains(&file.text.as_str()) => Ok(true),
        _ => err(format!(
            "`{name}` would read its program from standard input, which cannot be judged"
        )),
    }
}

fn env(
    args: &[Word],
    depth: usize,
    idx: usize,
    out: &mut Vec<Invocation>,
) -> Result<(), Unjudgeable> {
    let (i, _) = options(
        "env",
        args,
        &Spec {
            flags: "i0v",
            with_arg: "uCS",
            long_flags: &["--ignore-environment", "--null", "--debug"],
            long_with_arg: &["--unset", "--chdir", "--split-string"],
            ..Spec::default()
        },
    )?;
    // Only among env's own options: `env cmd -S x` is cmd's -S.
    if let Some(split) = value_of(&args[..i], 'S', "--split-string") {
        // `env -S 'cmd args'` splits the string itself: judge it as a command
        // line, the words after it appended as they are. Those are quoted
        // back as fixed text, so one known only at run time (`r$X`,
        // `/usr/bin/[r]m`) would be judged as the wrong name.
        if args.iter().any(|w| w.dynamic || w.glob) {
            return err("`env -S` runs a command assembled from its arguments, and some are only known when the command runs");
        }
        let rest = quote_argv(&texts(&args[i..]));
        return script_text(&format!("{split} {rest}"), depth, out);
    }
    let (i, _) = options(
        "env",
        args,
        &Spec {
            flags: "i0v",
            with_arg: "uC",
            long_flags: &["--ignore-environment", "--null", "--debug"],
            long_with_arg: &["--unset", "--chdir"],
            ..Spec::default()
        },
    )?;
    let j = skip_assignments(args, i);
    fixed_assignments("env", &args[i..j])?;
    if sets_code_env(&args[i..j]) {
        code_assignment("env", idx, out);
    }
    judge(&args[j..], depth + 1, out)
}

/// `NAME=value` words a wrapper (env, sudo) sets in the environment before
/// the program: skipped, so the program after them is what gets judged.
fn skip_assignments(args: &[Word], mut i: usize) -> usize {
    while args.get(i).is_some_and(|w| {
        w.text
            .split_once('=')
            .is_some_and(|(n, _)| !n.is_empty() && !n.contains('/'))
    }) {
        i += 1;
    }
    i
}

/// `NAME=value` words of env or sudo: each must stay one word, and its
/// name must be known (`"$N=1"` with `N=-S…` is an option).
fn fixed_assignments(program: &str, words: &[Word]) -> Result<(), Unjudgeable> {
    fixed_words(program, words)?;
    let computed_name = |w: &Word| {
        let eq = w.text.find('=').unwrap_or(w.text.len());
        w.computed_at.is_some_and(|c| c <= eq)
    };
    if let Some(w) = words.iter().find(|w| computed_name(w)) {
        return err(format!(
            "{:?}, an argument of `{program}` before the program it runs, has a name only known when the command runs",
            w.text
        ));
    }
    Ok(())
}

fn sudo(
    args: &[Word],
    depth: usize,
    idx: usize,
    out: &mut Vec<Invocation>,
) -> Result<(), Unjudgeable> {
    let (i, seen) = options(
        "sudo",
        args,
        &Spec {
            flags: "AbBEeHKkNlnPSsiVv",
            with_arg: "CDghpRrtTUu",
            long_flags: &[
                "--askpass",
                "--background",
                "--bell",
                "--preserve-env",
                "--edit",
                "--set-home",
                "--remove-timestamp",
                "--reset-timestamp",
                "--list",
                "--non-interactive",
                "--preserve-groups",
                "--stdin",
                "--shell",
                "--login",
                "--validate",
                "--version",
                "--help",
            ],
            long_with_arg: &[
                "--user",
                "--group",
                "--host",
                "--prompt",
                "--chroot",
                "--chdir",
                "--role",
                "--type",
                "--command-timeout",
                "--other-user",
                "--close-from",
            ],
            ..Spec::default()
        },
    )?;
    let long = |l: &str| args[..i].iter().any(|w| w.text == l);
    if seen.contains(&'e') || long("--edit") {
        // sudoedit runs an editor, and editors run commands (`:!cmd`).
        out[idx].runs_anything = true;
        return Ok(());
    }
    if seen.contains(&'l') || long("--list") {
        // Listing: no command runs.
        return Ok(());
    }
    let shell = seen.contains(&'s') || seen.contains(&'i') || long("--shell") || long("--login");
    // `sudo FOO=1 rm …` sets FOO and runs rm (found by the shell_command fuzz target).
    let j = skip_assignments(args, i);
    fixed_assignments("sudo", &args[i..j])?;
    if sets_code_env(&args[i..j]) {
        out[idx].runs_anything = true;
    }
    let i = j;
    if shell && i >= args.len() {
        return err("`sudo -s`/`sudo -i` starts a shell that reads commands from standard input");
    }
    if shell {
        return sudo_shell(&args[i..], depth, out);
    }
    judge(&args[i..], depth + 1, out)
}

/// `sudo -s`/`-i` with a command runs `$SHELL -c` on its arguments joined
/// with spaces, every character but letters, digits, `_`, `-` and `$`
/// escaped with a backslash (sudo's parse_args.c): that script is judged,
/// so `sudo -s 'r$1m'` is a program computed at run time.
fn sudo_shell(words: &[Word], depth: usize, out: &mut Vec<Invocation>) -> Result<(), Unjudgeable> {
    if words.iter().any(|w| w.dynamic) {
        return err("`sudo -s`/`sudo -i` reads its arguments as a script, and some are only known when the command runs");
    }
    let escaped: Vec<String> = words
        .iter()
        .map(|w| {
            w.text
                .chars()
                .flat_map(|c| {
                    let plain = c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '$');
                    (!plain).then_some('\\').into_iter().chain([c])
                })
                .collect()
        })
        .collect();
    script_text(&escaped.join(" "), depth, out)
}

fn su(
    name: &str,
    args: &[Word],
    depth: usize,
    out: &mut Vec<Invocation>,
) -> Result<(), Unjudgeable> {
    for (short, long) in [('c', "--command"), ('C', "--session-command")] {
        if let Some(script) = value_of(args, short, long) {
            return script_text(&script, depth, out);
        }
    }
    if let Some(v) = args
        .iter()
        .find_map(|w| w.text.strip_prefix("--session-command="))
    {
        return script_text(v, depth, out);
    }
    err(format!(
        "`{name}` without -c starts a shell that reads commands from standard input"
    ))
}

fn xargs(args: &[Word], depth: usize, out: &mut Vec<Invocation>) -> Result<(), Unjudgeable> {
    let mut i = 0;
    // The replace string (`-I STR`, `-i[STR]`, `--replace[=STR]`).
    let mut replace: Option<String> = None;
    let takes_arg = "adEILnPs";
    while let Some(w) = args.get(i) {
        let t = w.text.as_str();
        if t == "--" {
            i += 1;
            break;
        }
        if !t.starts_with('-') || t == "-" {
            break;
        }
        if let Some(long) = t.strip_prefix("--") {
            let opt = long.split('=').next().unwrap_or_default();
            match opt {
                "null" | "no-run-if-empty" | "verbose" | "exit" | "interactive" | "open-tty"
                | "show-limits" => i += 1,
                "replace" => {
                    replace = Some(long.strip_prefix("replace=").unwrap_or("{}").into());
                    i += 1;
                }
                "arg-file" | "delimiter" | "eof" | "max-lines" | "max-args" | "max-procs"
                | "max-chars" | "process-slot-var" => i += if long.contains('=') { 1 } else { 2 },
                _ => {
                    return err(format!(
                        "`xargs` option --{opt} is not known to the gateway"
                    ))
                }
            }
            continue;
        }
        let first = t[1..].chars().next().unwrap_or_default();
        match first {
            // Optional arguments, attached only.
            'e' | 'l' => i += 1,
            'i' => {
                replace = Some(if t.len() > 2 { &t[2..] } else { "{}" }.into());
                i += 1;
            }
            c if takes_arg.contains(c) => {
                if c == 'I' {
                    let value = if t.len() > 2 {
                        Some(&t[2..])
                    } else {
                        args.get(i + 1).map(|w| w.text.as_str())
                    };
                    replace = value.map(str::to_string);
                }
                i += if t.len() > 2 { 1 } else { 2 };
            }
            _ => {
                for c in t[1..].chars() {
                    if !"0prtxo".contains(c) {
                        return err(format!("`xargs` option -{c} is not known to the gateway"));
                    }
                }
                i += 1;
            }
        }
    }
    fixed_words("xargs", &args[..i.min(args.len())])?;
    let rest = args.get(i..).unwrap_or_default();
    // Without a command, xargs runs `echo` (found by the differential test).
    let mut words = if rest.is_empty() {
        vec![Word {
            text: "echo".into(),
            ..Word::default()
        }]
    } else {
        rest.to_vec()
    };
    match replace {
        Some(r) if r.is_empty() => return err("`xargs` with an empty replace string"),
        // Each word holding the replace string gets a line of standard input.
        Some(r) => words = run_time_values(&words, &r),
        // The arguments xargs appends come from standard input.
        None => words.push(Word {
            text: "{stdin}".into(),
            dynamic: true,
            computed_at: Some(0),
            ..Word::default()
        }),
    }
    judge(&words, depth + 1, out)
}

fn find(args: &[Word], depth: usize, out: &mut Vec<Invocation>) -> Result<(), Unjudgeable> {
    let mut i = 0;
    while i < args.len() {
        let t = args[i].text.as_str();
        if matches!(t, "-exec" | "-execdir" | "-ok" | "-okdir") {
            let start = i + 1;
            // `+` ends the command only right after a `{}`.
            let end = (start..args.len())
                .find(|&k| args[k].text == ";" || (args[k].text == "+" && args[k - 1].text == "{}"))
                .ok_or_else(|| Unjudgeable::new(format!("`find {t}` is not terminated")))?;
            // find puts the file's path wherever `{}` occurs.
            judge(&run_time_values(&args[start..end], "{}"), depth + 1, out)?;
            i = end + 1;
        } else {
            find_word_is_fixed(&args[i], i.checked_sub(1).map(|k| &args[k]))?;
            i += 1;
        }
    }
    Ok(())
}

/// find's predicates whose next word is their value, not a predicate.
const FIND_WITH_VALUE: &[&str] = &[
    "-name",
    "-iname",
    "-path",
    "-ipath",
    "-wholename",
    "-iwholename",
    "-lname",
    "-ilname",
    "-regex",
    "-iregex",
    "-regextype",
    "-type",
    "-xtype",
    "-user",
    "-group",
    "-uid",
    "-gid",
    "-perm",
    "-size",
    "-mtime",
    "-mmin",
    "-atime",
    "-amin",
    "-ctime",
    "-cmin",
    "-newer",
    "-anewer",
    "-cnewer",
    "-samefile",
    "-inum",
    "-links",
    "-used",
    "-maxdepth",
    "-mindepth",
    "-fstype",
    "-context",
    "-printf",
    "-fprint",
    "-fprint0",
    "-fls",
];

/// The words that make find run a program.
const FIND_RUNS: &[&str] = &["-exec", "-execdir", "-ok", "-okdir"];

/// A word of find outside its `-exec` commands must not become `-exec` when
/// it runs: an unquoted expansion may split into `-exec rm … ;`, a pattern
/// may match files so named, and a quoted value starting as `-exec` might
/// be it (`find "$X" rm ';'`) unless it is a predicate's value.
fn find_word_is_fixed(w: &Word, prev: Option<&Word>) -> Result<(), Unjudgeable> {
    let refuse = || {
        err(format!(
            "{:?}, an argument of `find`, is only known when the command runs and may make find run a program (`-exec`); quote it, or write it out",
            w.text
        ))
    };
    if w.splits {
        return refuse();
    }
    if w.glob && FIND_RUNS.iter().any(|r| glob_may_match(&w.text, r)) {
        return refuse();
    }
    if let Some(at) = w.computed_at {
        let literal = &w.text[..at];
        let value = prev.is_some_and(|p| !p.dynamic && FIND_WITH_VALUE.contains(&p.text.as_str()));
        if !value && FIND_RUNS.iter().any(|r| r.starts_with(literal)) {
            return refuse();
        }
    }
    Ok(())
}

/// Whether a shell pattern may match `name`; a bracket expression counts
/// as any one character (so this may say yes where bash would not).
fn glob_may_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    fn at(p: &[char], n: &[char]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some('*') => (0..=n.len()).any(|k| at(&p[1..], &n[k..])),
            Some('?') => !n.is_empty() && at(&p[1..], &n[1..]),
            Some('[') => match p.iter().skip(2).position(|&c| c == ']') {
                Some(end) => !n.is_empty() && at(&p[end + 3..], &n[1..]),
                None => n.first() == Some(&'[') && at(&p[1..], &n[1..]),
            },
            Some(c) => n.first() == Some(c) && at(&p[1..], &n[1..]),
        }
    }
    at(&p, &n)
}

/// `words` with each occurrence of `placeholder` (xargs' replace string,
/// find's `{}`) a value known only at run time, written `{}`: a program
/// named by it is refused, an argument holding it is a run-time value.
fn run_time_values(words: &[Word], placeholder: &str) -> Vec<Word> {
    words
        .iter()
        .map(|w| match w.text.find(placeholder) {
            None => w.clone(),
            Some(at) => {
                // The text before `at` is unchanged, so `at` still points at it.
                Word {
                    text: w.text.replace(placeholder, "{}"),
                    dynamic: true,
                    computed_at: Some(w.computed_at.map_or(at, |c| c.min(at))),
                    ..w.clone()
                }
            }
        })
        .collect()
}

/// `hash -p PATH NAME` makes NAME run PATH; a computed word may be `-p`.
fn hash_binds(args: &[Word]) -> bool {
    let (_, seen) = builtin_words(args, "p");
    seen.contains(&'p') || args.iter().any(|w| w.dynamic)
}

/// The words of a builtin after its options: each with the option whose
/// value it is (`None` for an operand), and the options seen. A word
/// computed at run time in option position counts as an operand.
fn builtin_words<'a>(
    args: &'a [Word],
    with_arg: &str,
) -> (Vec<(Option<char>, &'a Word)>, Vec<char>) {
    let (mut words, mut seen) = (Vec::new(), Vec::new());
    let mut it = args.iter();
    let mut in_options = true;
    while let Some(w) = it.next() {
        let t = w.text.as_str();
        if !in_options || w.dynamic || !t.starts_with('-') || t == "-" {
            in_options = false;
            words.push((None, w));
            continue;
        }
        if t == "--" {
            in_options = false;
            continue;
        }
        for (k, c) in t[1..].char_indices() {
            seen.push(c);
            if with_arg.contains(c) {
                if k + 1 + c.len_utf8() == t.len() {
                    if let Some(v) = it.next() {
                        words.push((Some(c), v));
                    }
                } else {
                    // An attached value (`-aNAME`): the word holds it.
                    words.push((Some(c), w));
                }
                break;
            }
        }
    }
    (words, seen)
}

/// A subscript that is not a number (`a[i]`, `a[$(cmd)]`): bash evaluates it.
fn computed_subscript(text: &str) -> bool {
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        let Some(close) = after.find(']') else {
            return true;
        };
        let index = &after[..close];
        if !(index == "@" || index == "*" || index.chars().all(|c| c.is_ascii_digit())) {
            return true;
        }
        rest = &after[close + 1..];
    }
    false
}

/// Bash builtins that take variable names or arithmetic evaluate what they
/// are given: a name `a[$(cmd)]` runs `cmd`, and a name whose value is such
/// text does too (`[[ $n -gt 1 ]]`, `read "$v"`, `printf -v "$v"`). Those
/// whose names or numbers the gateway cannot see are refused.
fn names_are_plain(name: &str, args: &[Word]) -> Result<(), Unjudgeable> {
    let refuse = |what: &str| {
        err(format!(
            "`{name}` evaluates {what} as code when the command runs; write literal names and numbers"
        ))
    };
    let unsafe_name = |w: &Word| w.dynamic || computed_subscript(&w.text);
    match name {
        "let"
            if args
                .iter()
                .any(|w| w.dynamic || arithmetic_has_names(&w.text)) =>
        {
            return refuse("arithmetic with variables");
        }
        "[[" | "test" | "[" => {
            for (k, w) in args.iter().enumerate() {
                if w.quoted {
                    continue;
                }
                let operand = |j: Option<usize>| j.and_then(|j| args.get(j));
                if name == "[["
                    && matches!(
                        w.text.as_str(),
                        "-eq" | "-ne" | "-lt" | "-le" | "-gt" | "-ge"
                    )
                {
                    for o in [operand(k.checked_sub(1)), operand(Some(k + 1))]
                        .into_iter()
                        .flatten()
                    {
                        if o.dynamic || arithmetic_has_names(&o.text) {
                            return refuse("an arithmetic comparison of variables");
                        }
                    }
                }
                if w.text == "-v" && operand(Some(k + 1)).is_some_and(unsafe_name) {
                    return refuse("a computed variable name");
                }
            }
        }
        "printf" => {
            let mut it = args.iter();
            while let Some(w) = it.next() {
                if w.text == "-v" && it.next().is_some_and(unsafe_name) {
                    return refuse("a computed variable name");
                }
                if w.text.starts_with("-v") && w.text.len() > 2 && computed_subscript(&w.text) {
                    return refuse("a computed variable name");
                }
            }
        }
        "declare" | "typeset" | "local" | "export" | "readonly" => {
            for w in args {
                let t = w.text.as_str();
                if t.starts_with('-') || t.starts_with('+') {
                    if t[1..].contains('i') {
                        return refuse("assignments to integer variables");
                    }
                    // A name reference's target is evaluated as a name (with
                    // its subscript) at each use, and a later assignment or
                    // `for` loop may retarget it: `-n` with names is refused.
                    let nameref = t.starts_with('-') && t[1..].contains('n');
                    if nameref
                        && name != "export"
                        && args.iter().any(|a| !a.text.starts_with(['-', '+']))
                    {
                        return refuse("a name reference");
                    }
                    continue;
                }
                let (n, v) = t.split_once('=').unwrap_or((t, ""));
                if w.dynamic || computed_subscript(n) || v.starts_with('(') {
                    return refuse("a computed variable name or array");
                }
            }
        }
        "mapfile" | "readarray" if args.iter().any(|w| w.text.starts_with("-C")) => {
            return refuse("a callback");
        }
        _ => {}
    }
    // Builtins whose operands (or an option's value) are variable names.
    let (with_arg, name_option): (&str, Option<char>) = match name {
        "read" => ("adinNptu", Some('a')),
        "mapfile" | "readarray" => ("dnOsuCc", None),
        "wait" => ("p", Some('p')),
        "getopts" | "unset" => ("", None),
        _ => return Ok(()),
    };
    let (words, seen) = builtin_words(args, with_arg);
    if name == "unset" && seen.contains(&'f') {
        // Function names are not evaluated.
        return Ok(());
    }
    let mut positional = 0;
    for (option, w) in words {
        let names = match option {
            Some(o) => name_option == Some(o),
            None => {
                positional += 1;
                match name {
                    // The optstring comes first, the name second.
                    "getopts" => positional == 2,
                    // Operands are process and job ids.
                    "wait" => false,
                    _ => true,
                }
            }
        };
        if names && unsafe_name(w) {
            return refuse("a computed variable name");
        }
    }
    Ok(())
}

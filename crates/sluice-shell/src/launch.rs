//! The catalogue of programs that can run other programs or open a shell
//! (GTFOBins' "shell" and "command" capabilities are the reference).
//!
//! Where the inner command can be read exactly from the arguments
//! (`unshare --user CMD`, `strace -f -o x CMD`, `script -qc 'CMD' f`) it is
//! judged like any other program of the line. Where it cannot (`awk` program
//! text calling `system`, `sed` with `e`, `vim`, `git -c core.pager=…`, a
//! launcher with an option the gateway does not know, a launcher without a
//! command, which starts a shell) the part is marked
//! [`Invocation::runs_anything`](super::Invocation::runs_anything): every
//! deny or review rule on `program`/`command` matches it, and only an allow
//! rule naming the program and its arguments admits it.

use super::parse::Word;
use super::unwrap::{judge, options, script_text, Spec};
use super::{Invocation, Unjudgeable};

/// Programs that may run anything whatever their arguments: editors and
/// pagers (`!cmd`, `:!cmd`), debuggers, interpreters of program text,
/// build tools, terminal multiplexers, schedulers, container runners.
const ALWAYS: &[&str] = &[
    // Editors and pagers with a shell escape.
    "vi",
    "vim",
    "nvim",
    "view",
    "rvim",
    "rview",
    "vimdiff",
    "gvim",
    "ex",
    "ed",
    "red",
    "emacs",
    "emacsclient",
    "nano",
    "pico",
    "joe",
    "jed",
    "mcedit",
    "mc",
    "less",
    "more",
    "most",
    "pg",
    "man",
    "pager",
    "sensible-pager",
    "editor",
    "sensible-editor",
    "info",
    "pinfo",
    "w3m",
    "lynx",
    "links",
    "elinks",
    "sudoedit",
    "visudo",
    "vipw",
    "vigr",
    "edquota",
    "vipe",
    // Debuggers, tracers and loaders that run code they are given.
    "gdb",
    "lldb",
    "valgrind",
    "perf",
    "ld.so",
    "catchsegv",
    "rr",
    // Program text in any form.
    "expect",
    "unbuffer",
    "wish",
    "deno",
    "bun",
    "julia",
    "R",
    "Rscript",
    "guile",
    "racket",
    "sbcl",
    "clisp",
    "ghci",
    "ocaml",
    "erl",
    "escript",
    "elixir",
    "iex",
    "scala",
    "groovy",
    "jshell",
    "jrunscript",
    "jjs",
    "java",
    "dotnet",
    "pwsh",
    "powershell",
    "dc",
    "gnuplot",
    "octave",
    "octave-cli",
    "bpftrace",
    // Build tools: they run what a file says.
    "make",
    "gmake",
    "bmake",
    "pmake",
    "ninja",
    "cmake",
    "scons",
    "ant",
    "mvn",
    "gradle",
    "rake",
    "npm",
    "npx",
    "yarn",
    "pnpm",
    // Shells by another name, and launchers whose grammar is not modelled.
    "tmux",
    "screen",
    "byobu",
    "capsh",
    "firejail",
    "systemd-run",
    "run0",
    "machinectl",
    "systemd-nspawn",
    "bwrap",
    "proot",
    "fakeroot",
    "fakechroot",
    "faketime",
    "runcon",
    "chpst",
    "numactl",
    "cgexec",
    "sg",
    "newgrp",
    "sshpass",
    "dbus-run-session",
    "dbus-launch",
    "xvfb-run",
    "torsocks",
    "tsocks",
    "parallel",
    "sem",
    "rlwrap",
    "entr",
    "pee",
    "chronic",
    "ifne",
    "eatmydata",
    "daemonize",
    "start-stop-daemon",
    "run-parts",
    "lxc-attach",
    "lxc-execute",
    "crictl",
    "ctr",
    "nerdctl",
    "at",
    "batch",
    "socat",
    "ssh",
    "sftp",
    "ftp",
    "telnet",
    "mail",
    "mailx",
    "psql",
    "mysql",
    "mariadb",
    "sqlite3",
    "pkexec",
    "scriptreplay",
    "busybox-shell",
    "ansible",
    "ansible-playbook",
    "pdsh",
    "clush",
    "su-exec",
    "gosu",
    "setuidgid",
    "softlimit",
    "envdir",
    "envuidgid",
    "nsjail",
    "minijail0",
    "bash-static",
];

/// Environment variables that make the programs reading them run code:
/// loaders, shells' startup files and hooks, pagers, editors, askpass and
/// transport commands, interpreters' start-up options, search paths.
const CODE_ENV: &[&str] = &[
    "PATH",
    "ENV",
    "BASH_ENV",
    "SHELL",
    "SHELLOPTS",
    "BASHOPTS",
    "PS0",
    "PS1",
    "PS2",
    "PS4",
    "PROMPT_COMMAND",
    "CDPATH",
    "PAGER",
    "MANPAGER",
    "MANOPT",
    "SYSTEMD_PAGER",
    "SYSTEMD_EDITOR",
    "EDITOR",
    "VISUAL",
    "BROWSER",
    "SSH_ASKPASS",
    "SUDO_ASKPASS",
    "SUDO_EDITOR",
    "TAR_OPTIONS",
    "RSYNC_RSH",
    "RSYNC_CONNECT_PROG",
    "GCONV_PATH",
    "TMUX",
    "ZDOTDIR",
    "HISTFILE",
    "INPUTRC",
    "MAKEFLAGS",
    "GNUMAKEFLAGS",
    "MFLAGS",
    "PHPRC",
    "AWKPATH",
    "AWKLIBPATH",
    "HOME",
];

/// Prefixes of such variables (`LD_PRELOAD`, `GIT_SSH_COMMAND`, exported
/// shell functions `BASH_FUNC_name%%`, …).
const CODE_ENV_PREFIXES: &[&str] = &[
    "LD_",
    "DYLD_",
    "GIT_",
    "BASH_FUNC_",
    "LESS",
    "PERL",
    "PYTHON",
    "RUBY",
    "NODE_",
    "LUA_",
    "JAVA_TOOL",
    "_JAVA_",
    "JDK_JAVA",
    "NPM_CONFIG",
    "PIP_",
    "SSH_",
    "SUDO_",
];

/// `NAME` of an assignment that can make a later program run other code.
pub(super) fn code_env(name: &str) -> bool {
    CODE_ENV.contains(&name) || CODE_ENV_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// The name of a `NAME=value` word, if it is one.
pub(super) fn assigned_name(text: &str) -> Option<&str> {
    let (name, _) = text.split_once('=')?;
    let name = name.trim_end_matches('+');
    let name = name.split('[').next().unwrap_or(name);
    (!name.is_empty() && !name.contains('/')).then_some(name)
}

fn opaque(out: &mut [Invocation], idx: usize) -> Result<(), Unjudgeable> {
    if let Some(inv) = out.get_mut(idx) {
        inv.runs_anything = true;
    }
    Ok(())
}

/// Judges a launcher: options per `spec`, then `skip` operands, then the
/// command. An option it does not know, or no command where the launcher
/// would start a shell (`empty_shell`), makes the part run anything.
#[allow(clippy::too_many_arguments)]
fn launcher(
    name: &str,
    args: &[Word],
    spec: &Spec,
    skip: usize,
    empty_shell: bool,
    depth: usize,
    idx: usize,
    out: &mut Vec<Invocation>,
) -> Result<(), Unjudgeable> {
    let Ok((i, _)) = options(name, args, spec) else {
        return opaque(out, idx);
    };
    match args.get(i + skip..) {
        Some(rest) if !rest.is_empty() => judge(rest, depth + 1, out),
        _ if empty_shell => opaque(out, idx),
        _ => Ok(()),
    }
}

/// Whether the catalogue knows `name`; if so, judges what it runs.
pub(super) fn judge_launcher(
    name: &str,
    args: &[Word],
    depth: usize,
    idx: usize,
    out: &mut Vec<Invocation>,
) -> Option<Result<(), Unjudgeable>> {
    if ALWAYS.contains(&name) || name.starts_with("ld-linux") || name.starts_with("proxychains") {
        return Some(opaque(out, idx));
    }
    let texts: Vec<&str> = args.iter().map(|w| w.text.as_str()).collect();
    let any = |f: &dyn Fn(&str) -> bool| texts.iter().any(|t| f(t));
    let r = match name {
        "unshare" => launcher(
            name,
            args,
            &Spec {
                flags: "muinpUCTfrc",
                with_arg: "RwSG",
                long_flags: &[
                    "--mount",
                    "--uts",
                    "--ipc",
                    "--net",
                    "--pid",
                    "--user",
                    "--cgroup",
                    "--time",
                    "--fork",
                    "--kill-child",
                    "--mount-proc",
                    "--map-root-user",
                    "--map-current-user",
                    "--map-auto",
                    "--keep-caps",
                ],
                long_with_arg: &[
                    "--propagation",
                    "--setgroups",
                    "--root",
                    "--wd",
                    "--setuid",
                    "--setgid",
                    "--map-user",
                    "--map-group",
                    "--map-users",
                    "--map-groups",
                    "--monotonic",
                    "--boottime",
                ],
                ..Spec::default()
            },
            0,
            true,
            depth,
            idx,
            out,
        ),
        "nsenter" => launcher(
            name,
            args,
            &Spec {
                flags: "aFZ",
                with_arg: "tSG",
                optional_attached: "muinpUCTrw",
                long_flags: &[
                    "--all",
                    "--mount",
                    "--uts",
                    "--ipc",
                    "--net",
                    "--pid",
                    "--user",
                    "--cgroup",
                    "--time",
                    "--root",
                    "--wd",
                    "--no-fork",
                    "--preserve-credentials",
                    "--follow-context",
                ],
                long_with_arg: &["--target", "--setuid", "--setgid"],
                ..Spec::default()
            },
            0,
            true,
            depth,
            idx,
            out,
        ),
        "prlimit" => {
            let spec = Spec {
                with_arg: "po",
                optional_attached: "cdefilmnqrstuvxy",
                long_flags: &[
                    "--noheadings",
                    "--raw",
                    "--verbose",
                    "--core",
                    "--data",
                    "--nice",
                    "--fsize",
                    "--sigpending",
                    "--memlock",
                    "--rss",
                    "--nofile",
                    "--msgqueue",
                    "--rtprio",
                    "--stack",
                    "--cpu",
                    "--nproc",
                    "--as",
                    "--locks",
                    "--rttime",
                ],
                long_with_arg: &["--pid", "--output"],
                ..Spec::default()
            };
            match options(name, args, &spec) {
                Err(_) => opaque(out, idx),
                // `--pid`: limits of a running process, nothing runs. Only
                // prlimit's own options count (`prlimit CMD -p` is CMD's).
                Ok((i, seen))
                    if seen.contains(&'p')
                        || args[..i].iter().any(|w| w.text.starts_with("--pid")) =>
                {
                    Ok(())
                }
                Ok((i, _)) => judge(&args[i..], depth + 1, out),
            }
        }
        "setpriv" => launcher(
            name,
            args,
            &Spec {
                flags: "d",
                long_flags: &[
                    "--dump",
                    "--nnp",
                    "--no-new-privs",
                    "--keep-groups",
                    "--clear-groups",
                    "--init-groups",
                    "--reset-env",
                ],
                long_with_arg: &[
                    "--inh-caps",
                    "--ambient-caps",
                    "--bounding-set",
                    "--ruid",
                    "--euid",
                    "--rgid",
                    "--egid",
                    "--reuid",
                    "--regid",
                    "--groups",
                    "--securebits",
                    "--pdeathsig",
                    "--selinux-label",
                    "--apparmor-profile",
                    "--landlock-access",
                    "--landlock-rule",
                    "--seccomp-filter",
                ],
                ..Spec::default()
            },
            0,
            false,
            depth,
            idx,
            out,
        ),
        "chrt" => {
            let spec = Spec {
                flags: "bdfiorRavmp",
                with_arg: "TPD",
                long_flags: &[
                    "--batch",
                    "--deadline",
                    "--fifo",
                    "--idle",
                    "--other",
                    "--rr",
                    "--reset-on-fork",
                    "--all-tasks",
                    "--verbose",
                    "--max",
                    "--pid",
                ],
                long_with_arg: &["--sched-runtime", "--sched-period", "--sched-deadline"],
                ..Spec::default()
            };
            match options(name, args, &spec) {
                Err(_) => opaque(out, idx),
                Ok((_, seen)) if seen.contains(&'p') || seen.contains(&'m') => Ok(()),
                Ok((i, _))
                    if args[..i]
                        .iter()
                        .any(|w| w.text == "--pid" || w.text == "--max") =>
                {
                    Ok(())
                }
                Ok((i, _)) => match args.get(i) {
                    // The priority, then the command.
                    Some(p) if !p.dynamic && p.text.chars().all(|c| c.is_ascii_digit()) => {
                        judge(args.get(i + 1..).unwrap_or_default(), depth + 1, out)
                    }
                    _ => opaque(out, idx),
                },
            }
        }
        "strace" | "ltrace" => {
            let spec = if name == "strace" {
                Spec {
                    flags: "AcCdDfFhikqrtTvVwxyzZn",
                    with_arg: "abeEIoOpPsSuUX",
                    long_flags: &[
                        "--follow-forks",
                        "--output-separately",
                        "--summary-only",
                        "--summary",
                        "--seccomp-bpf",
                        "--no-abbrev",
                        "--verbose",
                        "--raw",
                        "--quiet",
                        "--timestamps",
                        "--relative-timestamps",
                        "--syscall-times",
                        "--instruction-pointer",
                        "--stack-trace",
                        "--decode-fds",
                        "--decode-pids",
                        "--daemonize",
                        "--debug",
                        "--version",
                        "--help",
                        "--summary-wall-clock",
                        "--always-show-pid",
                        "--absolute-timestamps",
                        "--strings-in-hex",
                    ],
                    long_with_arg: &[
                        "--output",
                        "--trace",
                        "--signal",
                        "--status",
                        "--string-limit",
                        "--attach",
                        "--user",
                        "--env",
                        "--columns",
                        "--trace-path",
                        "--summary-sort-by",
                        "--detach-on",
                        "--const-print-style",
                        "--inject",
                        "--fault",
                        "--filter",
                    ],
                    ..Spec::default()
                }
            } else {
                Spec {
                    flags: "bcCfhiLrStTVw",
                    with_arg: "aAeEFlnopsuDx",
                    long_flags: &["--demangle", "--no-signals", "--help", "--version"],
                    long_with_arg: &["--align", "--indent", "--output", "--library", "--config"],
                    ..Spec::default()
                }
            };
            match options(name, args, &spec) {
                Err(_) => opaque(out, idx),
                Ok((i, _)) => judge(args.get(i..).unwrap_or_default(), depth + 1, out),
            }
        }
        "script" => {
            let spec = Spec {
                flags: "aefqhVk",
                with_arg: "cEBIOTmo",
                optional_attached: "t",
                long_flags: &[
                    "--append",
                    "--return",
                    "--flush",
                    "--force",
                    "--quiet",
                    "--timing",
                    "--logging-format",
                    "--help",
                    "--version",
                ],
                long_with_arg: &[
                    "--command",
                    "--echo",
                    "--log-io",
                    "--log-in",
                    "--log-out",
                    "--log-timing",
                    "--output-limit",
                ],
                ..Spec::default()
            };
            if options(name, args, &spec).is_err() {
                return Some(opaque(out, idx));
            }
            match super::unwrap::value_of(args, 'c', "--command") {
                // `script -c CMD` runs CMD with `$SHELL -c`.
                Some(cmd) => script_text(&cmd, depth, out),
                // Without -c, an interactive shell on the session's input.
                None if any(&|t| t == "-h" || t == "-V" || t == "--help" || t == "--version") => {
                    Ok(())
                }
                None => opaque(out, idx),
            }
        }
        "awk" | "gawk" | "mawk" | "nawk" | "original-awk" | "busybox-awk" => awk(args, idx, out),
        "sed" | "gsed" => sed(args, idx, out),
        "git" => git(args, idx, out),
        "tar" | "gtar" | "bsdtar" => {
            let first_bundle = args
                .first()
                .is_some_and(|w| !w.text.starts_with('-') && w.text.contains(['I', 'F']));
            let bad = first_bundle
                || any(&|t| {
                    [
                        "--to-command",
                        "--checkpoint-action",
                        "--use-compress-program",
                        "--info-script",
                        "--new-volume-script",
                        "--rsh-command",
                        "--rmt-command",
                        "--compress-program",
                    ]
                    .iter()
                    .any(|o| t.starts_with(o))
                        || (t.starts_with('-') && !t.starts_with("--") && t.contains(['I', 'F']))
                });
            if bad {
                opaque(out, idx)
            } else {
                Ok(())
            }
        }
        "rsync" => {
            if any(&|t| {
                t.starts_with("--rsh")
                    || t.starts_with("--rsync-path")
                    || t.starts_with("--config")
                    || (t.starts_with('-') && !t.starts_with("--") && t.contains('e'))
            }) {
                opaque(out, idx)
            } else {
                Ok(())
            }
        }
        "scp" => {
            if any(&|t| {
                t.starts_with('-') && !t.starts_with("--") && t.contains(['S', 'o', 'F', 'J'])
            }) {
                opaque(out, idx)
            } else {
                Ok(())
            }
        }
        "zip" => {
            if any(&|t| t.contains("TT") || t.starts_with("--unzip-command")) {
                opaque(out, idx)
            } else {
                Ok(())
            }
        }
        "nc" | "ncat" | "netcat" | "nc.traditional" | "nc.openbsd" => {
            if any(&|t| {
                (t.starts_with('-') && !t.starts_with("--") && t.contains(['e', 'c']))
                    || t.starts_with("--exec")
                    || t.starts_with("--sh-exec")
                    || t.starts_with("--lua-exec")
            }) {
                opaque(out, idx)
            } else {
                Ok(())
            }
        }
        "crontab" => {
            if texts
                .iter()
                .all(|t| *t == "-l" || *t == "-u" || !t.starts_with('-'))
                && texts.contains(&"-l")
            {
                Ok(())
            } else {
                opaque(out, idx)
            }
        }
        "systemctl" => {
            if any(&|t| t == "edit") {
                opaque(out, idx)
            } else {
                Ok(())
            }
        }
        "apt" | "apt-get" | "aptitude" | "dpkg" | "yum" | "dnf" | "zypper" | "pip" | "pip3"
        | "gem" | "cpan" | "cpanm" => {
            // Options that name hooks, and installs (maintainer scripts,
            // setup.py, extensions) run code from what they install.
            if any(&|t| {
                t.starts_with("-o")
                    || t.starts_with("--option")
                    || t.starts_with("-c")
                    || t.starts_with("--config")
                    || matches!(
                        t,
                        "install"
                            | "reinstall"
                            | "upgrade"
                            | "dist-upgrade"
                            | "full-upgrade"
                            | "remove"
                            | "purge"
                            | "autoremove"
                            | "-i"
                            | "--install"
                            | "-r"
                            | "--remove"
                            | "-P"
                            | "--purge"
                            | "--configure"
                            | "localinstall"
                            | "download"
                            | "wheel"
                            | "edit-sources"
                    )
            }) {
                opaque(out, idx)
            } else {
                Ok(())
            }
        }
        "docker" | "podman" => {
            if any(&|t| {
                matches!(
                    t,
                    "run"
                        | "exec"
                        | "create"
                        | "compose"
                        | "build"
                        | "buildx"
                        | "container"
                        | "attach"
                        | "plugin"
                )
            }) {
                opaque(out, idx)
            } else {
                Ok(())
            }
        }
        "kubectl" | "oc" => {
            if any(&|t| {
                matches!(
                    t,
                    "exec" | "run" | "debug" | "attach" | "edit" | "plugin" | "cp"
                ) || t.starts_with("--exec")
            }) {
                opaque(out, idx)
            } else {
                Ok(())
            }
        }
        "ip" => {
            if any(&|t| t == "exec" || t == "-b" || t == "-batch" || t == "-force") {
                opaque(out, idx)
            } else {
                Ok(())
            }
        }
        _ => return None,
    };
    Some(r)
}

/// awk runs commands through `system()`, `print | "cmd"`, `"cmd" | getline`
/// and gawk's coprocesses and extensions; program text without any of those
/// runs nothing. Program files (`-f`) are not read: they may run anything.
fn awk(args: &[Word], idx: usize, out: &mut [Invocation]) -> Result<(), Unjudgeable> {
    let mut i = 0;
    let mut program: Option<&Word> = None;
    while let Some(w) = args.get(i) {
        let t = w.text.as_str();
        if t == "--" {
            i += 1;
            break;
        }
        if !t.starts_with('-') || t == "-" {
            break;
        }
        match t {
            "-F" | "-v" | "--assign" | "--field-separator" => i += 2,
            "-e" | "--source" => {
                if args
                    .get(i + 1)
                    .is_none_or(|w| awk_runs(&w.text) || w.dynamic)
                {
                    return opaque(out, idx);
                }
                program = args.get(i + 1);
                i += 2;
            }
            "--posix"
            | "--traditional"
            | "--sandbox"
            | "-S"
            | "--re-interval"
            | "-P"
            | "-c"
            | "-r"
            | "-b"
            | "--characters-as-bytes"
            | "-N"
            | "--use-lc-numeric"
            | "-s"
            | "--no-optimize"
            | "-O"
            | "--optimize"
            | "--lint"
            | "-t"
            | "--lint-old" => i += 1,
            _ if t.starts_with("-F") || t.starts_with("-v") || t.starts_with("--assign=") => i += 1,
            _ if t.starts_with("--field-separator=") => i += 1,
            // -f/-E/-i/-l (program files, includes, extensions) and anything else.
            _ => return opaque(out, idx),
        }
    }
    if program.is_some() {
        return Ok(());
    }
    match args.get(i) {
        Some(w) if !w.dynamic && !awk_runs(&w.text) => Ok(()),
        None => Ok(()),
        _ => opaque(out, idx),
    }
}

fn awk_runs(text: &str) -> bool {
    // A backslash-newline continues an awk line between tokens
    // (`system\<newline>("…")`; found by the differential test).
    let code = awk_code(text).replace("\\\n", " ");
    let t = code.replace("||", "");
    // `@name` is gawk's indirect call (`f = "system"; @f("…")`), `@load`
    // and `@include` read code from files.
    let indirect = t
        .split('@')
        .skip(1)
        .any(|after| after.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_'));
    // Outside strings and regular expressions, `|` is only ever a pipe to
    // or from a command (awk has no bitwise or).
    let calls_system = t.match_indices("system").any(|(i, _)| {
        let before = t[..i].chars().next_back();
        let after = t[i + "system".len()..].trim_start();
        !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') && after.starts_with('(')
    });
    t.contains('|') || calls_system || indirect
}

/// An awk program with its string and regular-expression literals blanked
/// (a `/` after an operand divides; elsewhere it opens a regex), so that
/// what is left is code. An unterminated literal keeps the rest as code.
fn awk_code(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut prev: Option<char> = None;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let literal_end = match c {
            '"' => closing(&chars, i, '"'),
            '/' if !prev.is_some_and(|p| p.is_ascii_alphanumeric() || "_)]$".contains(p)) => {
                closing(&chars, i, '/')
            }
            _ => None,
        };
        match literal_end {
            Some(end) => {
                out.push(' ');
                prev = Some('"');
                i = end + 1;
            }
            None => {
                out.push(c);
                if !c.is_whitespace() {
                    prev = Some(c);
                }
                i += 1;
            }
        }
    }
    out
}

/// The index of the unescaped `quote` closing the literal opened at `start`.
fn closing(chars: &[char], start: usize, quote: char) -> Option<usize> {
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 2,
            c if c == quote => return Some(i),
            '\n' if quote == '/' => return None,
            _ => i += 1,
        }
    }
    None
}

/// GNU sed runs commands with the `e` command and the `e` flag of `s`;
/// a script is read command by command and anything not understood, or
/// a script file, may run anything.
fn sed(args: &[Word], idx: usize, out: &mut [Invocation]) -> Result<(), Unjudgeable> {
    let mut i = 0;
    let mut scripts: Vec<&Word> = Vec::new();
    let mut sandbox = false;
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
            let name = long.split('=').next().unwrap_or_default();
            match name {
                "expression" => {
                    if let Some(v) = long.strip_prefix("expression=") {
                        // Not a Word: judge the text directly.
                        if sed_runs(v) {
                            return opaque(out, idx);
                        }
                        i += 1;
                    } else {
                        match args.get(i + 1) {
                            Some(w) => scripts.push(w),
                            None => return opaque(out, idx),
                        }
                        i += 2;
                    }
                }
                "sandbox" => {
                    sandbox = true;
                    i += 1;
                }
                "quiet" | "silent" | "debug" | "posix" | "regexp-extended" | "separate"
                | "unbuffered" | "null-data" | "zero-terminated" | "follow-symlinks"
                | "in-place" | "binary" | "help" | "version" => i += 1,
                "line-length" if long.contains('=') => i += 1,
                "line-length" => i += 2,
                _ => return opaque(out, idx),
            }
            continue;
        }
        // A cluster of short options; -e/-l take the rest or the next word,
        // -i/-E/-n/-r/-s/-u/-z are flags (-i's suffix is attached).
        let chars: Vec<char> = t[1..].chars().collect();
        let mut j = 0;
        let mut next = 1;
        while j < chars.len() {
            match chars[j] {
                'n' | 'r' | 'E' | 's' | 'u' | 'z' | 'b' => j += 1,
                'i' => break,
                'e' | 'l' => {
                    let rest: String = chars[j + 1..].iter().collect();
                    if chars[j] == 'e' {
                        if rest.is_empty() {
                            match args.get(i + 1) {
                                Some(w) => scripts.push(w),
                                None => return opaque(out, idx),
                            }
                        } else if sed_runs(&rest) {
                            return opaque(out, idx);
                        }
                    }
                    if rest.is_empty() {
                        next = 2;
                    }
                    break;
                }
                // -f script files and anything unknown.
                _ => return opaque(out, idx),
            }
        }
        i += next;
    }
    if scripts.is_empty() {
        match args.get(i) {
            Some(w) => scripts.push(w),
            None => return Ok(()),
        }
    }
    if sandbox {
        return Ok(());
    }
    if scripts.iter().any(|w| w.dynamic || sed_runs(&w.text)) {
        return opaque(out, idx);
    }
    Ok(())
}

/// Whether a sed script can run a command (or cannot be read).
fn sed_runs(script: &str) -> bool {
    let s: Vec<char> = script.chars().collect();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < s.len() && (s[*i].is_whitespace() || s[*i] == ';') {
            *i += 1;
        }
    };
    // Reads a delimited part (`/re/`, `\cREc`), returning false if unterminated.
    let delimited = |i: &mut usize, d: char| -> bool {
        while *i < s.len() {
            match s[*i] {
                '\\' => *i += 2,
                '\n' if d != '\n' => return false,
                c if c == d => {
                    *i += 1;
                    return true;
                }
                _ => *i += 1,
            }
        }
        false
    };
    loop {
        skip_ws(&mut i);
        if i >= s.len() {
            return false;
        }
        // Addresses: numbers, $, /re/, \cREc, with `,`, `~`, `+`, `!`, I/M flags.
        loop {
            match s.get(i) {
                Some(c) if c.is_ascii_digit() || matches!(c, '$' | ',' | '~' | '+' | ' ') => i += 1,
                Some('/') => {
                    i += 1;
                    if !delimited(&mut i, '/') {
                        return true;
                    }
                    while matches!(s.get(i), Some('I' | 'M')) {
                        i += 1;
                    }
                }
                Some('\\') => {
                    let Some(&d) = s.get(i + 1) else { return true };
                    i += 2;
                    if !delimited(&mut i, d) {
                        return true;
                    }
                    while matches!(s.get(i), Some('I' | 'M')) {
                        i += 1;
                    }
                }
                Some('!') => i += 1,
                _ => break,
            }
        }
        let Some(&c) = s.get(i) else { return false };
        i += 1;
        match c {
            'e' => return true,
            's' => {
                let Some(&d) = s.get(i) else { return true };
                if d == '\n' || d == '\\' {
                    return true;
                }
                i += 1;
                if !delimited(&mut i, d) || !delimited(&mut i, d) {
                    return true;
                }
                // Flags up to the end of the command.
                while let Some(&f) = s.get(i) {
                    match f {
                        'e' => return true,
                        'w' => {
                            // `w FILE` takes the rest of the line.
                            while i < s.len() && s[i] != '\n' {
                                i += 1;
                            }
                        }
                        'g' | 'p' | 'i' | 'I' | 'm' | 'M' => i += 1,
                        d if d.is_ascii_digit() => i += 1,
                        ';' | '\n' | '}' | ' ' | '\t' => break,
                        _ => return true,
                    }
                }
            }
            'y' => {
                let Some(&d) = s.get(i) else { return true };
                i += 1;
                if !delimited(&mut i, d) || !delimited(&mut i, d) {
                    return true;
                }
            }
            // Text and file names take the rest of the line.
            'a' | 'i' | 'c' | 'r' | 'R' | 'w' | 'W' | ':' | 'b' | 't' | 'T' => {
                if matches!(c, 'b' | 't' | 'T') {
                    // A label ends at `;` or a newline.
                    while i < s.len() && s[i] != '\n' && s[i] != ';' && s[i] != '}' {
                        i += 1;
                    }
                } else {
                    while i < s.len() && s[i] != '\n' {
                        if s[i] == '\\' {
                            i += 1;
                        }
                        i += 1;
                    }
                }
            }
            'q' | 'Q' | 'l' | 'L' => {
                // An optional exit code / line length.
                while s.get(i).is_some_and(|c| c.is_ascii_digit() || *c == ' ') {
                    i += 1;
                }
            }
            '{' | '}' | '=' | 'd' | 'D' | 'g' | 'G' | 'h' | 'H' | 'n' | 'N' | 'p' | 'P' | 'x'
            | 'z' | 'F' | 'v' => {}
            '#' => {
                while i < s.len() && s[i] != '\n' {
                    i += 1;
                }
            }
            _ => return true,
        }
    }
}

/// git subcommands that run no hook, editor, pager of their choosing,
/// alias or external helper beyond what the repository's configuration
/// names; anything else (and `-c`, `--config-env`, `--exec-path`, `-p`, an
/// alias) may run anything.
const GIT_PLAIN: &[&str] = &[
    "log",
    "show",
    "diff",
    "status",
    "branch",
    "tag",
    "remote",
    "rev-parse",
    "rev-list",
    "ls-files",
    "ls-tree",
    "ls-remote",
    "cat-file",
    "describe",
    "shortlog",
    "blame",
    "annotate",
    "reflog",
    "fetch",
    "stash",
    "version",
    "count-objects",
    "fsck",
    "whatchanged",
    "name-rev",
    "for-each-ref",
    "show-ref",
    "check-ignore",
    "check-attr",
    "grep",
    "init",
    "add",
    "restore",
    "reset",
    "rm",
    "mv",
    "clean",
    "diff-tree",
    "diff-files",
    "diff-index",
    "merge-base",
    "show-branch",
    "verify-commit",
    "verify-tag",
    "archive",
    "bundle",
    "notes",
    "cherry",
    "range-diff",
    "format-patch",
    "apply",
    "worktree",
    "sparse-checkout",
    "maintenance",
    "config",
];

fn git(args: &[Word], idx: usize, out: &mut [Invocation]) -> Result<(), Unjudgeable> {
    let mut i = 0;
    while let Some(w) = args.get(i) {
        let t = w.text.as_str();
        match t {
            "-C" | "--git-dir" | "--work-tree" | "--namespace" => i += 2,
            "--no-pager"
            | "-P"
            | "--bare"
            | "--no-replace-objects"
            | "--literal-pathspecs"
            | "--glob-pathspecs"
            | "--noglob-pathspecs"
            | "--icase-pathspecs"
            | "--no-optional-locks"
            | "--version"
            | "--help"
            | "-v"
            | "-h" => i += 1,
            _ if t.starts_with("--git-dir=")
                || t.starts_with("--work-tree=")
                || t.starts_with("--namespace=") =>
            {
                i += 1
            }
            // -c, --config-env, --exec-path, -p/--paginate and anything else.
            _ if t.starts_with('-') => return opaque(out, idx),
            _ => break,
        }
    }
    let Some(sub) = args.get(i) else {
        return Ok(());
    };
    if sub.dynamic || !GIT_PLAIN.contains(&sub.text.as_str()) {
        return opaque(out, idx);
    }
    let rest: Vec<&str> = args[i + 1..].iter().map(|w| w.text.as_str()).collect();
    let risky = rest.iter().any(|t| {
        t.starts_with("--upload-pack")
            || t.starts_with("--receive-pack")
            || t.starts_with("--exec")
            || t.starts_with("--open-files-in-pager")
            || t.starts_with("-O")
            || t.starts_with("--ext-diff")
            || t.starts_with("--textconv")
            || t.starts_with("--config")
            || t.starts_with("--edit")
            || (*t == "-u" && sub.text == "ls-remote")
    });
    // Forms that open an editor or an interactive patch loop.
    let editor = match sub.text.as_str() {
        "add" | "stash" | "reset" | "restore" | "clean" | "apply" => rest
            .iter()
            .any(|t| matches!(*t, "-e" | "-i" | "-p" | "--interactive" | "--patch")),
        "tag" => rest
            .iter()
            .any(|t| matches!(*t, "-a" | "-s" | "-u" | "-e" | "--annotate" | "--sign")),
        "notes" => !matches!(rest.first(), None | Some(&"list") | Some(&"show")),
        _ => false,
    };
    let config_sets = sub.text == "config"
        && !rest.iter().any(|t| {
            matches!(
                *t,
                "--get" | "--get-all" | "--get-regexp" | "-l" | "--list" | "--show-origin"
            )
        });
    let worktree_add = sub.text == "worktree" && rest.first() == Some(&"add");
    if risky || editor || config_sets || worktree_add {
        return opaque(out, idx);
    }
    Ok(())
}

//! Shell command lines as policy sees them: every program a line would run.
//!
//! SSH `exec` requests and `kubectl exec` argv (shell-quoted with
//! [`quote_argv`]) arrive as `CommandKind::Exec` text. [`analyze`] parses the
//! text as a POSIX shell would ([`parse`]): words, quoting and escapes,
//! `;`, `&&`, `||`, `|`, `&`, newlines, subshells and groups, redirections,
//! here-documents, `$(…)`, backticks and process substitutions (their
//! commands run too, so they are judged too). Then it unwraps programs that
//! run other programs (`bash -c`, `env`, `sudo`, `nice`, `timeout`, `xargs`,
//! `find -exec`, …) and names each program by its base name (`/bin/rm` is
//! `rm`). The result is a list of [`Invocation`]s; the `command` and
//! `program` match keys ([`shell_match_key`]) judge each one, and the rules
//! engine gives each its own verdict (a compound command is as strict as its
//! strictest part).
//!
//! **What cannot be judged is refused.** [`analyze`] returns [`Unjudgeable`]
//! for a line whose meaning depends on run time or on syntax this parser does
//! not model: unbalanced quotes, `case`, function definitions, brace
//! expansion, arithmetic commands; a program name that is computed (`$X`,
//! `$(…)`, globs); `eval`, `source`/`.`, `alias`, `trap`; a shell or script
//! interpreter that would read its program from standard input (`… | sh`,
//! `base64 -d | bash`, `bash -s`, `sh <<EOF`, a bare `python3`); a wrapper
//! with options it does not know. The matcher turns that into an error, and
//! the policy stage fails closed: the command is denied
//! (`sluice:policy-error`) whenever a rule using `command` or `program`
//! applies to the session. Where no such rule applies, the connection does
//! not restrict commands, so there is nothing to protect by refusing them.
//!
//! Arguments computed at run time (`rm -rf $DIR`) are kept as their source
//! text: a pattern ending in `*` (`rm -rf *`) still matches them, a pattern
//! naming a literal path does not. Write rules on programs and option
//! prefixes, not on exact paths.

mod launch;
mod matcher;
mod parse;
mod unwrap;

#[cfg(test)]
mod differential;
#[cfg(test)]
mod tests;

pub use matcher::shell_match_key;
pub use parse::{parse, SimpleCommand, Word, MAX_LINE};

/// One program a command line would run, as rules match it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// The program's base name (`/usr/bin/rm` → `rm`).
    pub program: String,
    /// The program as written, when it had a directory (`/usr/bin/rm`).
    pub path: Option<String>,
    /// The arguments after quote removal.
    pub args: Vec<String>,
    /// The program can run other programs (or open a shell) and what it
    /// runs could not be extracted from the line: `awk 'BEGIN{system(…)}'`,
    /// `vim`, `script` without `-c`, `python3 x.py`. Every deny or review
    /// rule on `program`/`command` matches such a part; only an allow rule
    /// whose `command` pattern matches it (program *and* arguments) admits it.
    pub runs_anything: bool,
    /// Files this program's redirections open for writing (`> f`, `>> f`,
    /// `>| f`, `<> f`, `&> f`, `2> f`, `>&f`), including those of a group
    /// or wrapper around it; not descriptor duplications (`2>&1`) nor
    /// `/dev/null`. An allow rule admits a part that writes only through a
    /// `writes` pattern matching every target.
    pub writes: Vec<WriteTarget>,
}

/// A file a redirection opens for writing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteTarget {
    /// The target as written, quotes removed: `~/.ssh/rc`, `/tmp/out`,
    /// `out.txt` (relative to the working directory when it runs). An
    /// unquoted leading `~` is kept as `~`; a quoted one, which bash leaves
    /// alone, is written `./~`.
    pub target: String,
    /// The target is computed when the command runs (`$X`, `$(…)`, a glob,
    /// `~+`, `~-`): `target` is its source text. It never satisfies an
    /// allow rule and matches every deny or review `writes` pattern.
    pub computed: bool,
}

impl Invocation {
    /// `program arg1 arg2 …`, what `command` patterns match.
    pub fn text(&self) -> String {
        let mut s = self.program.clone();
        for a in &self.args {
            s.push(' ');
            s.push_str(a);
        }
        s
    }
}

/// Why a command line cannot be judged (and so is refused).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the gateway cannot judge this command line: {reason}")]
pub struct Unjudgeable {
    pub reason: String,
}

impl Unjudgeable {
    pub fn new(reason: impl Into<String>) -> Self {
        Unjudgeable {
            reason: reason.into(),
        }
    }
}

/// Whether `program`, as written, names no directory or one of `dirs`
/// (`ls`, `/usr/bin/ls`; not `/tmp/x/ls` or `./ls`): trust in a program's
/// name holds only where it cannot be a file an agent placed.
pub fn written_in(program: &str, dirs: &[&str]) -> bool {
    program
        .rsplit_once('/')
        .is_none_or(|(dir, _)| dirs.contains(&dir))
}

/// Every program `line` would run, wrappers unwrapped.
pub fn analyze(line: &str) -> Result<Vec<Invocation>, Unjudgeable> {
    let mut out = Vec::new();
    unwrap::analyze_into(line, 0, &mut out)?;
    Ok(out)
}

/// Words the shell reads as syntax in command position.
const RESERVED_WORDS: &[&str] = &[
    "!", "{", "}", "[[", "]]", "case", "coproc", "do", "done", "elif", "else", "esac", "fi", "for",
    "function", "if", "in", "select", "then", "time", "until", "while",
];

/// Quotes an argv for a POSIX shell, so that [`analyze`] (and `sh -c`) sees
/// exactly these words: `["sh", "-c", "rm -rf /"]` → `sh -c 'rm -rf /'`.
pub fn quote_argv<S: AsRef<str>>(argv: &[S]) -> String {
    let mut out = String::new();
    for (i, a) in argv.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let a = a.as_ref();
        // A first word with `=` would read as an assignment, and a reserved
        // word (`do`, `if`, `{`, …) as syntax, not the program: quote them.
        if i == 0 && (a.contains('=') || RESERVED_WORDS.contains(&a)) {
            out.push_str(&format!("'{}'", a.replace('\'', "'\\''")));
        } else {
            out.push_str(&quote_word(a));
        }
    }
    out
}

/// One word, quoted only when it needs to be.
pub fn quote_word(w: &str) -> String {
    let safe = !w.is_empty()
        && w.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c));
    if safe {
        return w.to_string();
    }
    format!("'{}'", w.replace('\'', "'\\''"))
}

//! A POSIX shell command-line parser that keeps only what policy needs: the
//! simple commands a line would run, with quotes removed and the parts the
//! shell computes at run time marked as such.
//!
//! It is deliberately not an interpreter: nothing is expanded. A command
//! substitution, process substitution, backtick or here-document with
//! expansions is parsed recursively and its commands are added to the list
//! (they run too). Syntax it does not model (`case`, function definitions,
//! arithmetic commands, brace expansion) is an error, so the caller refuses
//! the line instead of guessing.

use super::{Unjudgeable, WriteTarget};

/// Nesting bound for substitutions and `sh -c` scripts inside each other.
pub(crate) const MAX_DEPTH: usize = 16;
/// Longest command line judged (a longer one is refused, not truncated).
pub const MAX_LINE: usize = 256 * 1024;

/// One word after quote removal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Word {
    /// The word as the program would receive it; parts computed at run time
    /// (`$VAR`, `$(…)`) are kept as their source text.
    pub text: String,
    /// Contains an expansion whose value is only known at run time.
    pub dynamic: bool,
    /// Contains an unquoted glob character (`*`, `?`, `[`).
    pub glob: bool,
    /// Contains an unquoted expansion (`$X`, `${X}`, `$(…)`, backticks,
    /// `$((…))`): bash splits its value into several words, or drops the
    /// word when the value is empty, so this may not stay one word.
    pub splits: bool,
    /// Some part was quoted or escaped (so it is not a reserved word).
    pub quoted: bool,
    /// Where in `text` the first quoted or escaped part starts: a `NAME=`
    /// before it makes an assignment, one inside it does not (`'A=b'` runs a
    /// program named `A=b`).
    pub quoted_at: Option<usize>,
    /// Where in `text` the first part computed at run time starts: at 0,
    /// nothing about the value is known, not even that it is not an option.
    pub computed_at: Option<usize>,
}

/// A simple command: what one fork/exec would run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimpleCommand {
    /// `NAME=value` words before the program.
    pub assignments: Vec<Word>,
    /// The program and its arguments.
    pub words: Vec<Word>,
    /// Standard input comes from a redirection or here-document.
    pub stdin_redirected: bool,
    /// Files opened for writing by a redirection of this command, or of a
    /// group (`{ …; }`, `( … )`, `if`, `while`, `until`, `for`) it is in.
    /// A command with no words and no assignments but a write (`> f`) is
    /// kept for its write.
    pub writes: Vec<WriteTarget>,
}

/// What one redirection does.
struct Redirect {
    /// It feeds standard input.
    stdin: bool,
    /// The file it opens for writing, if it writes one.
    write: Option<WriteTarget>,
}

/// Parses a command line into the simple commands it would run, in order
/// of appearance (substitutions before the command that uses them).
pub fn parse(line: &str) -> Result<Vec<SimpleCommand>, Unjudgeable> {
    parse_at(line, 0)
}

pub(crate) fn parse_at(line: &str, depth: usize) -> Result<Vec<SimpleCommand>, Unjudgeable> {
    if line.len() > MAX_LINE {
        return Err(Unjudgeable::new(format!(
            "the command line is longer than {MAX_LINE} bytes"
        )));
    }
    if depth > MAX_DEPTH {
        return Err(Unjudgeable::new("commands are nested too deeply"));
    }
    let mut p = Parser::new(line, depth);
    p.sequence(Close::Eof)?;
    Ok(p.out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Close {
    Eof,
    Paren,
}

/// How a word is read: in `[[ … ]]` there is no brace expansion and
/// `@(a|b)` is one word; the right of `=~` also keeps `(…)` and `|`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WordMode {
    Plain,
    Cond,
    Regex,
}

struct PendingHeredoc {
    delimiter: String,
    strip_tabs: bool,
    expand: bool,
}

struct Parser {
    /// The text read so far, line continuations removed where bash removes
    /// them: slices of it are what every construct sees.
    s: Vec<char>,
    /// The text not yet read, as written, and the read position in it.
    rest: Vec<char>,
    r: usize,
    depth: usize,
    /// Inside double quotes or a here-document body, where `'` is literal.
    in_dq: bool,
    out: Vec<SimpleCommand>,
    heredocs: Vec<PendingHeredoc>,
    /// Where in `out` each open compound command (`{`, `if`, `while`,
    /// `until`, `for`) began: a redirection after its closing word applies
    /// to every command from there.
    groups: Vec<usize>,
}

fn err<T>(why: impl Into<String>) -> Result<T, Unjudgeable> {
    Err(Unjudgeable::new(why))
}

fn is_blank(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// Characters that end an unquoted word.
fn is_meta(c: char) -> bool {
    matches!(
        c,
        ' ' | '\t' | '\n' | ';' | '&' | '|' | '(' | ')' | '<' | '>'
    )
}

const RESERVED_SKIPPED: &[&str] = &[
    "!", "{", "}", "if", "then", "elif", "else", "fi", "while", "until", "do", "done",
];

impl Parser {
    fn new(text: &str, depth: usize) -> Self {
        Parser {
            s: Vec::new(),
            rest: text.chars().collect(),
            r: 0,
            depth,
            in_dq: false,
            out: Vec::new(),
            heredocs: Vec::new(),
            groups: Vec::new(),
        }
    }

    /// Where the cursor is in the text read so far.
    fn pos(&self) -> usize {
        self.s.len()
    }

    fn continuation_at(&self, k: usize) -> bool {
        self.rest.get(k) == Some(&'\\') && self.rest.get(k + 1) == Some(&'\n')
    }

    /// Bash deletes backslash-newline before it splits words, so it is
    /// deleted here, once, for every construct that reads with `peek`,
    /// `peek_at` and `bump`. Where bash keeps it (single quotes, `$'…'`,
    /// comments, quoted here-document bodies, the character after an
    /// escaping backslash) the text is read with `peek_raw` and `bump_raw`.
    fn join(&mut self) {
        while self.continuation_at(self.r) {
            self.r += 2;
        }
    }

    fn peek(&mut self) -> Option<char> {
        self.join();
        self.rest.get(self.r).copied()
    }

    fn peek_raw(&self) -> Option<char> {
        self.rest.get(self.r).copied()
    }

    /// The `n`th character after the cursor, continuations skipped.
    fn peek_at(&self, n: usize) -> Option<char> {
        let mut k = self.r;
        for step in 0..=n {
            while self.continuation_at(k) {
                k += 2;
            }
            if step < n {
                k += 1;
            }
        }
        self.rest.get(k).copied()
    }

    fn bump(&mut self) {
        self.join();
        self.bump_raw();
    }

    fn bump_raw(&mut self) {
        if let Some(&c) = self.rest.get(self.r) {
            self.s.push(c);
            self.r += 1;
        }
    }

    fn advance(&mut self, n: usize) {
        for _ in 0..n {
            self.bump();
        }
    }

    fn skip_blanks(&mut self) {
        while self.peek().is_some_and(is_blank) {
            self.bump();
        }
    }

    /// A comment runs to the end of the line: a backslash does not continue it.
    fn skip_comment(&mut self) {
        while self.peek_raw().is_some_and(|c| c != '\n') {
            self.bump_raw();
        }
    }

    /// A list of pipelines and and-or lists, up to `close`.
    fn sequence(&mut self, close: Close) -> Result<(), Unjudgeable> {
        loop {
            self.skip_blanks();
            let Some(c) = self.peek() else {
                if !self.heredocs.is_empty() {
                    return err("a here-document is not terminated");
                }
                return match close {
                    Close::Eof => Ok(()),
                    Close::Paren => err("unbalanced parentheses: a `(` or `$(` is not closed"),
                };
            };
            match c {
                '#' => self.skip_comment(),
                '\n' => {
                    self.bump();
                    self.read_heredocs()?;
                }
                ';' => {
                    if self.peek_at(1) == Some(';') {
                        return err("`;;` outside a case statement");
                    }
                    self.bump();
                }
                '&' if self.peek_at(1) == Some('>') => self.command()?,
                '&' => {
                    self.advance(if self.peek_at(1) == Some('&') { 2 } else { 1 });
                }
                '|' => {
                    self.advance(if matches!(self.peek_at(1), Some('|') | Some('&')) {
                        2
                    } else {
                        1
                    });
                }
                '(' => {
                    if self.peek_at(1) == Some('(') {
                        return err("arithmetic commands `(( … ))` are not supported");
                    }
                    let start = self.out.len();
                    self.bump();
                    self.sequence(Close::Paren)?;
                    self.group_redirections(start)?;
                }
                ')' => {
                    if close == Close::Paren {
                        self.bump();
                        return Ok(());
                    }
                    return err("unbalanced parentheses: an unexpected `)`");
                }
                _ => self.command()?,
            }
        }
    }

    /// One simple command: words and redirections up to an operator.
    fn command(&mut self) -> Result<(), Unjudgeable> {
        let start = self.out.len();
        let (words, stdin_redirected, writes) = self.command_words()?;
        // The start of the widest group this command's leading words close.
        let mut closes: Option<usize> = None;
        let mut assignments = Vec::new();
        let mut rest = words.into_iter().peekable();
        let mut kept = Vec::new();
        // Leading reserved words and assignments.
        while let Some(w) = rest.peek() {
            if !w.quoted && RESERVED_SKIPPED.contains(&w.text.as_str()) {
                match w.text.as_str() {
                    "{" | "if" | "while" | "until" => self.groups.push(start),
                    // A closing word without its opener is a syntax error
                    // in bash; its redirections then cover everything.
                    "}" | "fi" | "done" => closes = Some(self.groups.pop().unwrap_or(0)),
                    _ => {}
                }
                rest.next();
                continue;
            }
            if !w.quoted && matches!(w.text.as_str(), "case" | "esac") {
                return err("`case` statements are not supported");
            }
            if !w.quoted && matches!(w.text.as_str(), "function" | "coproc" | "select") {
                return err(format!("`{}` is not supported", w.text));
            }
            if !w.quoted && w.text == "for" {
                // `for NAME [in WORDS…]`: the words are data; the body follows
                // `do`, after a separator or, in the form without `in`
                // (`for NAME do …`), as the third word.
                self.groups.push(start);
                rest.next();
                let tail: Vec<Word> = rest.collect();
                let body = match tail.get(1) {
                    Some(d) if !d.quoted && d.text == "do" => tail[2..].to_vec(),
                    _ => Vec::new(),
                };
                rest = body.into_iter().peekable();
                continue;
            }
            if is_assignment(w) {
                if let Some(w) = rest.next() {
                    assignments.push(w);
                }
                continue;
            }
            break;
        }
        kept.extend(rest);
        if let Some(from) = closes {
            if kept.is_empty() && assignments.is_empty() {
                // `} > f`, `done > f`, `fi > f`: the group's redirections.
                return self.group_writes(from, writes);
            }
        }
        if !kept.is_empty() || !assignments.is_empty() || !writes.is_empty() {
            self.out.push(SimpleCommand {
                assignments,
                words: kept,
                stdin_redirected,
                writes,
            });
        }
        Ok(())
    }

    /// Redirections right after a subshell's `)`: they apply to every
    /// command inside it.
    fn group_redirections(&mut self, from: usize) -> Result<(), Unjudgeable> {
        let mut writes = Vec::new();
        loop {
            self.skip_blanks();
            if matches!(self.peek(), Some('<' | '>')) && self.peek_at(1) == Some('(') {
                return err("a process substitution after `)`");
            }
            match self.redirection()? {
                Some(r) => writes.extend(r.write),
                None => break,
            }
        }
        self.group_writes(from, writes)
    }

    /// Adds a group's write redirections to each command from `from`; a
    /// group with no command still opens the file (kept as a command with
    /// no words).
    fn group_writes(&mut self, from: usize, writes: Vec<WriteTarget>) -> Result<(), Unjudgeable> {
        if writes.is_empty() {
            return Ok(());
        }
        let from = from.min(self.out.len());
        if from == self.out.len() {
            self.out.push(SimpleCommand {
                writes,
                ..SimpleCommand::default()
            });
            return Ok(());
        }
        for cmd in &mut self.out[from..] {
            cmd.writes.extend(writes.iter().cloned());
        }
        Ok(())
    }

    /// The words of one simple command, and whether stdin is redirected.
    /// Substitutions inside the words are added to `out` as they are
    /// parsed, so they come before this command (they run first).
    #[allow(clippy::type_complexity)]
    fn command_words(&mut self) -> Result<(Vec<Word>, bool, Vec<WriteTarget>), Unjudgeable> {
        let mut words: Vec<Word> = Vec::new();
        let mut stdin_redirected = false;
        let mut writes = Vec::new();
        let mut closed_conditional = false;
        loop {
            self.skip_blanks();
            let Some(c) = self.peek() else { break };
            match c {
                '\n' | ';' | '|' | ')' => break,
                '&' if self.peek_at(1) != Some('>') => break,
                '(' => {
                    return err(if words.is_empty() {
                        "unexpected `(`"
                    } else {
                        "function definitions are not supported"
                    })
                }
                // A `#` starting a word starts a comment.
                '#' => {
                    self.skip_comment();
                    break;
                }
                _ => {}
            }
            // `<(…)` and `>(…)` are words (process substitution), not redirections.
            let process = (c == '<' || c == '>') && self.peek_at(1) == Some('(');
            if !process {
                if let Some(r) = self.redirection()? {
                    stdin_redirected |= r.stdin;
                    writes.extend(r.write);
                    continue;
                }
            }
            if closed_conditional {
                return err("a word after `]]`");
            }
            let from = self.pos();
            let w = self.word(WordMode::Plain)?;
            // `{NAME[…]}>…`: bash reads an array element as the descriptor
            // variable and evaluates its subscript as arithmetic.
            if self.redirects_at(0) {
                let raw: String = self.s[from..].iter().collect();
                if raw.len() > 2 && raw.starts_with('{') && raw.ends_with('}') && raw.contains('[')
                {
                    return err(format!(
                        "`{raw}` before a redirection names an array element whose subscript is evaluated as code when the command runs"
                    ));
                }
            }
            let opens = !w.quoted && w.text == "[[";
            words.push(w);
            // `[[` is syntax only where a command starts (after reserved words).
            if opens
                && words[..words.len() - 1]
                    .iter()
                    .all(|w| !w.quoted && RESERVED_SKIPPED.contains(&w.text.as_str()))
            {
                self.conditional(&mut words)?;
                closed_conditional = true;
            }
        }
        Ok((words, stdin_redirected, writes))
    }

    /// The inside of `[[ … ]]` up to and including `]]`, as one command:
    /// `&&`, `||`, `(`, `)`, `<` and `>` are its operators, newlines are
    /// blanks, and the right of `=~` is a regular expression.
    fn conditional(&mut self, words: &mut Vec<Word>) -> Result<(), Unjudgeable> {
        let op = |text: &str| Word {
            text: text.to_string(),
            ..Word::default()
        };
        loop {
            while self.peek().is_some_and(|c| is_blank(c) || c == '\n') {
                if self.peek() == Some('\n') && !self.heredocs.is_empty() {
                    return err("a here-document inside `[[ … ]]`");
                }
                self.bump();
            }
            let regex = words.last().is_some_and(|w| !w.quoted && w.text == "=~");
            let two = (self.peek(), self.peek_at(1));
            match two {
                (None, _) => return err("a `[[` is not closed by `]]`"),
                (Some('#'), _) => return err("a comment inside `[[ … ]]`"),
                _ if regex => words.push(self.cond_word(WordMode::Regex)?),
                (Some('&'), Some('&')) | (Some('|'), Some('|')) => {
                    words.push(op(if two.0 == Some('&') { "&&" } else { "||" }));
                    self.advance(2);
                }
                // `<(…)` and `>(…)` are process substitutions, read as words.
                (Some(c @ ('(' | ')' | '<' | '>')), n)
                    if !(matches!(c, '<' | '>') && n == Some('(')) =>
                {
                    words.push(op(&c.to_string()));
                    self.bump();
                }
                (Some(c @ (';' | '&' | '|')), _) => return err(format!("`{c}` inside `[[ … ]]`")),
                _ => {
                    let w = self.cond_word(WordMode::Cond)?;
                    let end = !w.quoted && w.text == "]]";
                    words.push(w);
                    if end {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// A word of `[[ … ]]`; one that reads nothing is an operator the
    /// grammar does not know there.
    fn cond_word(&mut self, mode: WordMode) -> Result<Word, Unjudgeable> {
        let at = self.r;
        let w = self.word(mode)?;
        if self.r == at {
            return err("unexpected syntax inside `[[ … ]]`");
        }
        Ok(w)
    }

    /// A redirection at the cursor, if any.
    fn redirection(&mut self) -> Result<Option<Redirect>, Unjudgeable> {
        // `{NAME}>…`: bash opens a new descriptor and stores its number in
        // NAME; the word is part of the redirection, not a program.
        let named = self.named_descriptor();
        let mut digits = String::new();
        if named == 0 {
            while let Some(c) = self.peek_at(digits.len()).filter(char::is_ascii_digit) {
                digits.push(c);
            }
        }
        let fd: Option<u32> = if digits.is_empty() {
            None
        } else {
            digits.parse().ok()
        };
        let n = named + digits.len();
        let by_number = named == 0;
        let (op, len): (&str, usize) =
            match (self.peek_at(n), self.peek_at(n + 1), self.peek_at(n + 2)) {
                (Some('&'), Some('>'), Some('>')) if fd.is_none() => ("&>>", 3),
                (Some('&'), Some('>'), _) if fd.is_none() => ("&>", 2),
                (Some('<'), Some('<'), Some('<')) => ("<<<", 3),
                (Some('<'), Some('<'), Some('-')) => ("<<-", 3),
                (Some('<'), Some('<'), _) => ("<<", 2),
                (Some('<'), Some('>'), _) => ("<>", 2),
                (Some('<'), Some('&'), _) => ("<&", 2),
                (Some('<'), _, _) => ("<", 1),
                (Some('>'), Some('>'), _) => (">>", 2),
                (Some('>'), Some('|'), _) => (">|", 2),
                (Some('>'), Some('&'), _) => (">&", 2),
                (Some('>'), _, _) => (">", 1),
                _ => return Ok(None),
            };
        self.advance(n + len);
        self.skip_blanks();
        match self.peek() {
            None => return err(format!("a `{op}` redirection has no target")),
            Some(c) if is_meta(c) && !(c == '<' || c == '>') => {
                return err(format!("a `{op}` redirection has no target"))
            }
            _ => {}
        }
        let target = self.word(WordMode::Plain)?;
        let stdin = matches!(op, "<" | "<<" | "<<-" | "<<<" | "<>" | "<&")
            && by_number
            && fd.unwrap_or(0) == 0;
        if op == "<<" || op == "<<-" {
            self.heredocs.push(PendingHeredoc {
                delimiter: target.text.clone(),
                strip_tabs: op == "<<-",
                expand: !target.quoted,
            });
        }
        let write = match op {
            ">" | ">>" | ">|" | "<>" | "&>" | "&>>" => write_target(&target),
            // `>&2`, `2>&1`, `>&-`, `3>&1-` duplicate or close a descriptor;
            // `>&file` writes stdout and stderr to the file, as `&>` does.
            // (A computed target keeps its `$`, so it is never a number.)
            ">&" if is_descriptor(&target.text) => None,
            ">&" => write_target(&target),
            _ => None,
        };
        Ok(Some(Redirect { stdin, write }))
    }

    /// The length of a `{NAME}` at the cursor that bash reads as the
    /// descriptor of a redirection: unquoted, a valid name, and followed at
    /// once by `<` or `>` (not a process substitution `<(…)`). 0 if none.
    fn named_descriptor(&self) -> usize {
        if self.peek_at(0) != Some('{') {
            return 0;
        }
        let mut k = 1;
        while self
            .peek_at(k)
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            k += 1;
        }
        let name_ok = k > 1 && !self.peek_at(1).is_some_and(|c| c.is_ascii_digit());
        if name_ok && self.peek_at(k) == Some('}') && self.redirects_at(k + 1) {
            return k + 1;
        }
        0
    }

    /// A redirection operator (not a process substitution) `n` characters
    /// after the cursor.
    fn redirects_at(&self, n: usize) -> bool {
        matches!(self.peek_at(n), Some('<' | '>')) && self.peek_at(n + 1) != Some('(')
    }

    /// Reads the bodies of pending here-documents after a newline.
    fn read_heredocs(&mut self) -> Result<(), Unjudgeable> {
        let pending = std::mem::take(&mut self.heredocs);
        for h in pending {
            let mut body = String::new();
            loop {
                if self.peek_raw().is_none() {
                    return err(format!(
                        "the here-document ending with {:?} is not terminated",
                        h.delimiter
                    ));
                }
                let mut line = self.heredoc_line(h.expand);
                if h.strip_tabs {
                    line = line.trim_start_matches('\t').to_string();
                }
                if line == h.delimiter {
                    break;
                }
                body.push_str(&line);
                body.push('\n');
            }
            if h.expand {
                // An unquoted delimiter: `$(…)` and backticks in the body run.
                let mut sub = Parser::new(&body, self.depth + 1);
                sub.expansions_in_text()?;
                self.out.extend(sub.out);
            }
        }
        Ok(())
    }

    /// One line of a here-document body. Under an unquoted delimiter bash
    /// removes backslash-newline (an escaped backslash stays), so the lines
    /// and the delimiter match are those of the joined text.
    fn heredoc_line(&mut self, join: bool) -> String {
        let start = self.pos();
        loop {
            match self.peek_raw() {
                None => break,
                Some('\n') => {
                    self.bump_raw();
                    return self.s[start..self.pos() - 1].iter().collect();
                }
                Some('\\') if join => {
                    if self.continuation_at(self.r) {
                        self.r += 2;
                    } else {
                        self.bump_raw();
                        self.bump_raw();
                    }
                }
                Some(_) => self.bump_raw(),
            }
        }
        self.s[start..].iter().collect()
    }

    /// Scans text with double-quote rules (a here-document body) for substitutions.
    fn expansions_in_text(&mut self) -> Result<(), Unjudgeable> {
        let mut w = Word::default();
        self.in_dq = true;
        while let Some(c) = self.peek() {
            match c {
                '\\' => {
                    self.bump();
                    self.bump_raw();
                }
                '$' => self.dollar(&mut w)?,
                '`' => self.backtick(&mut w)?,
                _ => self.bump(),
            }
        }
        Ok(())
    }

    /// One word, with quote removal; substitutions inside it are parsed.
    fn word(&mut self, mode: WordMode) -> Result<Word, Unjudgeable> {
        let mut w = Word::default();
        let start = self.pos();
        let mut brace_open = false;
        let mut brace_list = false;
        // Depth of `(…)` kept inside the word (`=~` groups, `@(a|b)`).
        let mut parens = 0usize;
        while let Some(c) = self.peek() {
            if (c == '<' || c == '>') && self.peek_at(1) == Some('(') {
                // Process substitution: its commands run.
                let from = self.pos();
                self.advance(2);
                self.nested(Close::Paren)?;
                w.computed_at = w.computed_at.or(Some(w.text.len()));
                w.text.extend(&self.s[from..]);
                w.dynamic = true;
                continue;
            }
            if mode != WordMode::Plain && self.grouped(c, mode, start, &mut parens) {
                w.text.push(c);
                self.bump();
                continue;
            }
            if is_meta(c) {
                break;
            }
            let quote = |w: &mut Word| {
                w.quoted_at = w.quoted_at.or(Some(w.text.len()));
                w.quoted = true;
            };
            match c {
                '\'' => {
                    quote(&mut w);
                    self.bump();
                    self.single_quoted(&mut w)?;
                }
                '"' => {
                    quote(&mut w);
                    self.bump();
                    self.double_quoted(&mut w)?;
                }
                '\\' => {
                    quote(&mut w);
                    self.bump();
                    if let Some(ch) = self.peek_raw() {
                        w.text.push(ch);
                        self.bump_raw();
                    }
                }
                '$' => match self.peek_at(1) {
                    Some('\'') => {
                        quote(&mut w);
                        self.advance(2);
                        self.ansi_c(&mut w)?;
                    }
                    Some('"') => {
                        quote(&mut w);
                        self.advance(2);
                        self.double_quoted(&mut w)?;
                    }
                    _ => self.dollar(&mut w)?,
                },
                '`' => self.backtick(&mut w)?,
                '*' | '?' | '[' => {
                    w.glob = true;
                    w.text.push(c);
                    self.bump();
                }
                // `[[ … ]]` does no brace expansion (`=~ a{1,2}`).
                '{' if mode == WordMode::Plain => {
                    brace_open = true;
                    w.text.push(c);
                    self.bump();
                }
                ',' if brace_open => {
                    brace_list = true;
                    w.text.push(c);
                    self.bump();
                }
                '.' if brace_open && self.peek_at(1) == Some('.') => {
                    brace_list = true;
                    w.text.push(c);
                    self.bump();
                }
                '}' if brace_open && brace_list => {
                    return err(format!(
                        "brace expansion ({}}}) is not supported",
                        self.s[start..].iter().collect::<String>()
                    ));
                }
                _ => {
                    w.text.push(c);
                    self.bump();
                }
            }
        }
        Ok(w)
    }

    /// Whether `c` belongs to the word as part of a group bash reads whole
    /// in `[[ … ]]`: the regular expression after `=~` keeps `|` and
    /// `(…)` (blanks and operators inside included), a pattern `@(a|b)`
    /// (also `?*+!`) its group.
    fn grouped(&self, c: char, mode: WordMode, start: usize, parens: &mut usize) -> bool {
        let extglob = self.pos() > start && self.s.last().is_some_and(|p| "?*+@!".contains(*p));
        match c {
            '(' if mode == WordMode::Regex || extglob || *parens > 0 => {
                *parens += 1;
                true
            }
            ')' if *parens > 0 => {
                *parens -= 1;
                true
            }
            '|' => mode == WordMode::Regex || *parens > 0,
            c => *parens > 0 && is_meta(c),
        }
    }

    /// The inside of `'…'` after its opening quote: kept as written.
    fn single_quoted(&mut self, w: &mut Word) -> Result<(), Unjudgeable> {
        loop {
            match self.peek_raw() {
                None => return err("unbalanced quotes: a `'` is not closed"),
                Some('\'') => {
                    self.bump_raw();
                    return Ok(());
                }
                Some(ch) => {
                    w.text.push(ch);
                    self.bump_raw();
                }
            }
        }
    }

    fn double_quoted(&mut self, w: &mut Word) -> Result<(), Unjudgeable> {
        let outer = std::mem::replace(&mut self.in_dq, true);
        let r = self.double_quoted_body(w);
        self.in_dq = outer;
        r
    }

    fn double_quoted_body(&mut self, w: &mut Word) -> Result<(), Unjudgeable> {
        loop {
            match self.peek() {
                None => return err("unbalanced quotes: a `\"` is not closed"),
                Some('"') => {
                    self.bump();
                    return Ok(());
                }
                Some('\\') => {
                    self.bump();
                    match self.peek_raw() {
                        Some(ch @ ('$' | '`' | '"' | '\\')) => {
                            w.text.push(ch);
                            self.bump_raw();
                        }
                        Some(ch) => {
                            w.text.push('\\');
                            w.text.push(ch);
                            self.bump_raw();
                        }
                        None => return err("unbalanced quotes: a `\"` is not closed"),
                    }
                }
                Some('$') => self.dollar(w)?,
                Some('`') => self.backtick(w)?,
                Some(ch) => {
                    w.text.push(ch);
                    self.bump();
                }
            }
        }
    }

    /// `$'…'` (bash ANSI-C quoting), decoded.
    fn ansi_c(&mut self, w: &mut Word) -> Result<(), Unjudgeable> {
        loop {
            let Some(c) = self.peek_raw() else {
                return err("unbalanced quotes: a `$'` is not closed");
            };
            self.bump_raw();
            match c {
                '\'' => return Ok(()),
                '\\' => {
                    let Some(e) = self.peek_raw() else {
                        return err("unbalanced quotes: a `$'` is not closed");
                    };
                    self.bump_raw();
                    let push = |w: &mut Word, v: u32| -> Result<(), Unjudgeable> {
                        match char::from_u32(v) {
                            Some(ch) => {
                                w.text.push(ch);
                                Ok(())
                            }
                            None => err("an invalid character escape in `$'…'`"),
                        }
                    };
                    match e {
                        'a' => w.text.push('\x07'),
                        'b' => w.text.push('\x08'),
                        'e' | 'E' => w.text.push('\x1b'),
                        'f' => w.text.push('\x0c'),
                        'n' => w.text.push('\n'),
                        'r' => w.text.push('\r'),
                        't' => w.text.push('\t'),
                        'v' => w.text.push('\x0b'),
                        '\\' | '\'' | '"' | '?' => w.text.push(e),
                        'c' => {
                            let Some(x) = self.peek_raw() else {
                                return err("an incomplete `\\c` escape in `$'…'`");
                            };
                            self.bump_raw();
                            push(w, (x as u32) & 0x1f)?;
                        }
                        '0'..='7' => {
                            let mut v = e.to_digit(8).unwrap_or(0);
                            for _ in 0..2 {
                                match self.peek_raw().and_then(|d| d.to_digit(8)) {
                                    Some(d) => {
                                        v = v * 8 + d;
                                        self.bump_raw();
                                    }
                                    None => break,
                                }
                            }
                            push(w, v & 0xff)?;
                        }
                        'x' | 'u' | 'U' => {
                            let max = match e {
                                'x' => 2,
                                'u' => 4,
                                _ => 8,
                            };
                            let mut v = 0u32;
                            let mut n = 0;
                            while n < max {
                                match self.peek_raw().and_then(|d| d.to_digit(16)) {
                                    Some(d) => {
                                        v = v.saturating_mul(16).saturating_add(d);
                                        self.bump_raw();
                                        n += 1;
                                    }
                                    None => break,
                                }
                            }
                            if n == 0 {
                                w.text.push('\\');
                                w.text.push(e);
                            } else {
                                push(w, v)?;
                            }
                        }
                        other => {
                            w.text.push('\\');
                            w.text.push(other);
                        }
                    }
                }
                other => w.text.push(other),
            }
        }
    }

    /// `$…` at the cursor: parameters, `${…}`, `$(…)`, `$((…))`.
    fn dollar(&mut self, w: &mut Word) -> Result<(), Unjudgeable> {
        let from = self.pos();
        let unquoted = !self.in_dq;
        match self.peek_at(1) {
            Some('(') if self.peek_at(2) == Some('(') => {
                // Arithmetic: its value is computed; a substitution inside would run.
                self.advance(3);
                let body_start = self.pos();
                let mut depth = 2usize;
                while depth > 0 {
                    match self.peek() {
                        None => return err("unbalanced parentheses in `$(( … ))`"),
                        Some('(') => depth += 1,
                        Some(')') => depth -= 1,
                        Some('`') => return err("command substitution inside `$(( … ))`"),
                        Some('$') if self.peek_at(1) == Some('(') => {
                            return err("command substitution inside `$(( … ))`")
                        }
                        _ => {}
                    }
                    self.bump();
                }
                let body: String = self.s[body_start..self.pos().saturating_sub(2)]
                    .iter()
                    .collect();
                literal_arithmetic(&body, "$(( … ))")?;
            }
            Some('[') => {
                // `$[ … ]`, bash's old arithmetic expansion.
                self.advance(2);
                let body_start = self.pos();
                let mut depth = 1usize;
                while depth > 0 {
                    match self.peek() {
                        None => return err("unbalanced brackets in `$[ … ]`"),
                        Some('[') => depth += 1,
                        Some(']') => depth -= 1,
                        _ => {}
                    }
                    self.bump();
                }
                let body: String = self.s[body_start..self.pos() - 1].iter().collect();
                literal_arithmetic(&body, "$[ … ]")?;
            }
            Some('(') => {
                self.advance(2);
                self.nested(Close::Paren)?;
            }
            Some('{') => {
                self.advance(2);
                self.parameter_expansion()?;
            }
            Some(c) if c.is_ascii_alphabetic() || c == '_' => {
                self.bump();
                while self
                    .peek()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                {
                    self.bump();
                }
            }
            Some(c) if c.is_ascii_digit() || "@*#?-$!".contains(c) => self.advance(2),
            _ => {
                // A lone `$` is literal.
                w.text.push('$');
                self.bump();
                return Ok(());
            }
        }
        w.computed_at = w.computed_at.or(Some(w.text.len()));
        w.text.extend(&self.s[from..]);
        w.dynamic = true;
        w.splits |= unquoted;
        Ok(())
    }

    /// The inside of `${…}` up to its `}`; substitutions in it are parsed.
    /// Within double quotes (and here-document bodies) a `'` is literal, so
    /// a `$(…)` between two of them runs.
    fn parameter_expansion(&mut self) -> Result<(), Unjudgeable> {
        let mut scratch = Word::default();
        let start = self.pos();
        loop {
            match self.peek() {
                None => return err("unbalanced braces: a `${` is not closed"),
                Some('}') => {
                    let body: String = self.s[start..].iter().collect();
                    self.bump();
                    return parameter_is_plain(&body);
                }
                Some('\\') => {
                    self.bump();
                    self.bump_raw();
                }
                Some('\'') if !self.in_dq => {
                    self.bump();
                    self.single_quoted(&mut scratch)
                        .map_err(|_| Unjudgeable::new("unbalanced quotes inside `${…}`"))?;
                }
                Some('"') => {
                    self.bump();
                    self.double_quoted(&mut scratch)?;
                }
                Some('$') => self.dollar(&mut scratch)?,
                Some('`') => self.backtick(&mut scratch)?,
                Some(_) => self.bump(),
            }
        }
    }

    /// Parses a nested list up to its `)`, adding its commands.
    fn nested(&mut self, close: Close) -> Result<(), Unjudgeable> {
        if self.depth + 1 > MAX_DEPTH {
            return err("commands are nested too deeply");
        }
        self.depth += 1;
        let saved = std::mem::take(&mut self.heredocs);
        let groups = std::mem::take(&mut self.groups);
        let dq = std::mem::replace(&mut self.in_dq, false);
        let r = self.sequence(close);
        self.in_dq = dq;
        self.groups = groups;
        self.heredocs = saved;
        self.depth -= 1;
        r
    }

    /// A backtick command substitution: its text (unescaped) parsed as a
    /// line. Bash removes backslash-newline all through the body, quotes
    /// included, so `peek` reads it.
    fn backtick(&mut self, w: &mut Word) -> Result<(), Unjudgeable> {
        let from = self.pos();
        let unquoted = !self.in_dq;
        self.bump();
        let mut inner = String::new();
        loop {
            match self.peek() {
                None => return err("unbalanced backticks: a ` is not closed"),
                Some('`') => {
                    self.bump();
                    break;
                }
                Some('\\') => {
                    self.bump();
                    match self.peek_raw() {
                        Some(c @ ('\\' | '`' | '$')) => inner.push(c),
                        Some(c) => {
                            inner.push('\\');
                            inner.push(c);
                        }
                        None => return err("unbalanced backticks: a ` is not closed"),
                    }
                    self.bump_raw();
                }
                Some(c) => {
                    inner.push(c);
                    self.bump();
                }
            }
        }
        let commands = parse_at(&inner, self.depth + 1)?;
        self.out.extend(commands);
        w.computed_at = w.computed_at.or(Some(w.text.len()));
        w.text.extend(&self.s[from..]);
        w.dynamic = true;
        w.splits |= unquoted;
        Ok(())
    }
}

/// `1`, `2`, `-`, `1-`: the target of a descriptor duplication.
fn is_descriptor(text: &str) -> bool {
    let digits = text.strip_suffix('-').unwrap_or(text);
    text == "-" || (!digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()))
}

/// Targets that are not files: writing to them changes nothing on the host
/// (the session's own output, the terminal, the bit bucket).
const NOT_FILES: &[&str] = &[
    "/dev/null",
    "/dev/stdout",
    "/dev/stderr",
    "/dev/fd/1",
    "/dev/fd/2",
    "/dev/tty",
];

/// The file a write redirection opens, as written: an unquoted leading `~`
/// is kept (`~/.ssh/rc`, `~root/x`), a quoted one names a directory `~` in
/// the working directory (`./~/x`). A target bash computes when the command
/// runs (`$X`, `$(…)`, a glob, `~+`, `~-`) is marked computed.
fn write_target(w: &Word) -> Option<WriteTarget> {
    let leading_unquoted = w.quoted_at != Some(0);
    let computed = w.dynamic
        || w.glob
        || (leading_unquoted
            && ["~+", "~-"].iter().any(|p| {
                w.text
                    .strip_prefix(p)
                    .is_some_and(|r| r.is_empty() || r.starts_with('/'))
            }));
    if !computed && NOT_FILES.contains(&w.text.as_str()) {
        return None;
    }
    let target = if !leading_unquoted && w.text.starts_with('~') {
        format!("./{}", w.text)
    } else {
        w.text.clone()
    };
    Some(WriteTarget { target, computed })
}

/// `NAME=…` with an unquoted, valid name.
fn is_assignment(w: &Word) -> bool {
    let Some(eq) = w.text.find('=') else {
        return false;
    };
    if w.quoted_at.is_some_and(|q| q <= eq) {
        return false;
    }
    let name = w.text[..eq].trim_end_matches('+');
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Arithmetic whose value the gateway can see: numbers and operators only.
/// A name in arithmetic is evaluated as an expression itself, and a value
/// such as `a[$(cmd)]` runs `cmd`, so names are refused.
fn literal_arithmetic(body: &str, what: &str) -> Result<(), Unjudgeable> {
    if arithmetic_has_names(body) {
        return err(format!(
            "`{what}` with variables: their values are evaluated as code when the command runs (write the numbers, or run the arithmetic in a script the rules name)"
        ));
    }
    Ok(())
}

/// Whether arithmetic text names a variable (or expands one with `$`).
pub(crate) fn arithmetic_has_names(body: &str) -> bool {
    let mut prev: Option<char> = None;
    for c in body.chars() {
        if c == '$' || c == '`' || c == '[' || c == '\'' || c == '"' {
            return true;
        }
        // A letter starting a token (not `0x1f`, `16#ff`, `1e3`-like digits).
        if (c.is_ascii_alphabetic() || c == '_')
            && !prev.is_some_and(|p| p.is_ascii_alphanumeric() || p == '#' || p == '_')
        {
            return true;
        }
        prev = Some(c);
    }
    false
}

/// `${…}` forms that evaluate a value as code are refused: subscripts that
/// are not numbers (`${a[i]}` evaluates `i`), substring offsets with names
/// (`${x:i}`), indirection (`${!x}`) and prompt expansion (`${x@P}`).
fn parameter_is_plain(body: &str) -> Result<(), Unjudgeable> {
    let refuse = |why: &str| {
        err(format!(
            "`${{{body}}}`: {why} is evaluated as code when the command runs"
        ))
    };
    let mut rest = body;
    if let Some(r) = rest.strip_prefix('#') {
        if !r.is_empty() {
            rest = r;
        }
    }
    if let Some(r) = rest.strip_prefix('!') {
        // `${!prefix*}`, `${!prefix@}` and `${!a[@]}` list names; anything
        // else is indirection.
        let lists =
            r.ends_with('*') || r.ends_with('@') || r.ends_with("[@]") || r.ends_with("[*]");
        if !lists {
            return refuse("an indirect name");
        }
        return Ok(());
    }
    let name_len = rest
        .char_indices()
        .find(|(i, c)| {
            !(c.is_ascii_alphanumeric() || *c == '_' || (*i == 0 && "@*#?-$!".contains(*c)))
        })
        .map(|(i, _)| i)
        .unwrap_or(rest.len());
    let mut after = &rest[name_len..];
    if let Some(sub) = after.strip_prefix('[') {
        let Some(end) = sub.find(']') else {
            return refuse("a subscript");
        };
        let index = &sub[..end];
        let plain = index == "@"
            || index == "*"
            || (!index.is_empty() && index.chars().all(|c| c.is_ascii_digit() || c == '-'));
        if !plain {
            return refuse("a subscript");
        }
        after = &sub[end + 1..];
    }
    if let Some(op) = after.strip_prefix(':') {
        if !op.starts_with(['-', '=', '?', '+']) && arithmetic_has_names(op) {
            return refuse("a substring offset");
        }
    }
    if after.starts_with("@P") {
        return refuse("a prompt expansion");
    }
    Ok(())
}

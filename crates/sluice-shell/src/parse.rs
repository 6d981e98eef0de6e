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

use super::Unjudgeable;

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
    /// Some part was quoted or escaped (so it is not a reserved word).
    pub quoted: bool,
    /// Where in `text` the first quoted or escaped part starts: a `NAME=`
    /// before it makes an assignment, one inside it does not (`'A=b'` runs a
    /// program named `A=b`).
    pub quoted_at: Option<usize>,
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
    let mut p = Parser {
        s: line.chars().collect(),
        i: 0,
        depth,
        out: Vec::new(),
        heredocs: Vec::new(),
    };
    p.sequence(Close::Eof)?;
    Ok(p.out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Close {
    Eof,
    Paren,
}

struct PendingHeredoc {
    delimiter: String,
    strip_tabs: bool,
    expand: bool,
}

struct Parser {
    s: Vec<char>,
    i: usize,
    depth: usize,
    out: Vec<SimpleCommand>,
    heredocs: Vec<PendingHeredoc>,
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
    fn peek(&self) -> Option<char> {
        self.s.get(self.i).copied()
    }

    fn peek_at(&self, n: usize) -> Option<char> {
        self.s.get(self.i + n).copied()
    }

    fn skip_blanks(&mut self) {
        loop {
            match self.peek() {
                Some(c) if is_blank(c) => self.i += 1,
                // A line continuation is removed before tokenising.
                Some('\\') if self.peek_at(1) == Some('\n') => self.i += 2,
                _ => return,
            }
        }
    }

    fn skip_comment(&mut self) {
        while let Some(c) = self.peek() {
            if c == '\n' {
                return;
            }
            self.i += 1;
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
                    self.i += 1;
                    self.read_heredocs()?;
                }
                ';' => {
                    if self.peek_at(1) == Some(';') {
                        return err("`;;` outside a case statement");
                    }
                    self.i += 1;
                }
                '&' if self.peek_at(1) == Some('>') => self.command()?,
                '&' => {
                    self.i += if self.peek_at(1) == Some('&') { 2 } else { 1 };
                }
                '|' => {
                    self.i += if matches!(self.peek_at(1), Some('|') | Some('&')) {
                        2
                    } else {
                        1
                    };
                }
                '(' => {
                    if self.peek_at(1) == Some('(') {
                        return err("arithmetic commands `(( … ))` are not supported");
                    }
                    self.i += 1;
                    self.sequence(Close::Paren)?;
                }
                ')' => {
                    if close == Close::Paren {
                        self.i += 1;
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
        let mut words: Vec<Word> = Vec::new();
        let mut stdin_redirected = false;
        // Substitutions inside the words are added to `out` as they are
        // parsed, so they come before this command (they run first).
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
            if (c == '<' || c == '>') && self.peek_at(1) == Some('(') {
                words.push(self.word()?);
                continue;
            }
            if let Some(stdin) = self.redirection()? {
                stdin_redirected |= stdin;
                continue;
            }
            words.push(self.word()?);
        }
        let mut assignments = Vec::new();
        let mut rest = words.into_iter().peekable();
        let mut kept = Vec::new();
        // Leading reserved words and assignments.
        while let Some(w) = rest.peek() {
            if !w.quoted && RESERVED_SKIPPED.contains(&w.text.as_str()) {
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
        if !kept.is_empty() || !assignments.is_empty() {
            self.out.push(SimpleCommand {
                assignments,
                words: kept,
                stdin_redirected,
            });
        }
        Ok(())
    }

    /// A redirection at the cursor, if any; `Some(true)` when it feeds stdin.
    fn redirection(&mut self) -> Result<Option<bool>, Unjudgeable> {
        let start = self.i;
        let mut j = self.i;
        while self.s.get(j).is_some_and(|c| c.is_ascii_digit()) {
            j += 1;
        }
        let fd: Option<u32> = if j > start {
            self.s[start..j].iter().collect::<String>().parse().ok()
        } else {
            None
        };
        let op_start = j;
        let at = |k: usize| self.s.get(op_start + k).copied();
        let (op, len): (&str, usize) = match (at(0), at(1), at(2)) {
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
        self.i = op_start + len;
        self.skip_blanks();
        match self.peek() {
            None => return err(format!("a `{op}` redirection has no target")),
            Some(c) if is_meta(c) && !(c == '<' || c == '>') => {
                return err(format!("a `{op}` redirection has no target"))
            }
            _ => {}
        }
        let target = self.word()?;
        let stdin = matches!(op, "<" | "<<" | "<<-" | "<<<" | "<>" | "<&") && fd.unwrap_or(0) == 0;
        if op == "<<" || op == "<<-" {
            self.heredocs.push(PendingHeredoc {
                delimiter: target.text.clone(),
                strip_tabs: op == "<<-",
                expand: !target.quoted,
            });
        }
        Ok(Some(stdin))
    }

    /// Reads the bodies of pending here-documents after a newline.
    fn read_heredocs(&mut self) -> Result<(), Unjudgeable> {
        let pending = std::mem::take(&mut self.heredocs);
        for h in pending {
            let mut body = String::new();
            loop {
                if self.i >= self.s.len() {
                    return err(format!(
                        "the here-document ending with {:?} is not terminated",
                        h.delimiter
                    ));
                }
                let start = self.i;
                while self.i < self.s.len() && self.s[self.i] != '\n' {
                    self.i += 1;
                }
                let mut line: String = self.s[start..self.i].iter().collect();
                if self.i < self.s.len() {
                    self.i += 1;
                }
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
                let mut sub = Parser {
                    s: body.chars().collect(),
                    i: 0,
                    depth: self.depth + 1,
                    out: Vec::new(),
                    heredocs: Vec::new(),
                };
                sub.expansions_in_text()?;
                self.out.extend(sub.out);
            }
        }
        Ok(())
    }

    /// Scans text with double-quote rules (a here-document body) for substitutions.
    fn expansions_in_text(&mut self) -> Result<(), Unjudgeable> {
        let mut w = Word::default();
        while let Some(c) = self.peek() {
            match c {
                '\\' => {
                    self.i += 1;
                    if self.peek().is_some() {
                        self.i += 1;
                    }
                }
                '$' => self.dollar(&mut w)?,
                '`' => self.backtick(&mut w)?,
                _ => self.i += 1,
            }
        }
        Ok(())
    }

    /// One word, with quote removal; substitutions inside it are parsed.
    fn word(&mut self) -> Result<Word, Unjudgeable> {
        let mut w = Word::default();
        let start = self.i;
        let mut brace_open = false;
        let mut brace_list = false;
        while let Some(c) = self.peek() {
            if (c == '<' || c == '>') && self.peek_at(1) == Some('(') {
                // Process substitution: its commands run.
                let from = self.i;
                self.i += 2;
                self.nested(Close::Paren)?;
                w.text.extend(&self.s[from..self.i]);
                w.dynamic = true;
                continue;
            }
            if is_meta(c) {
                break;
            }
            match c {
                '\'' => {
                    w.quoted_at = w.quoted_at.or(Some(w.text.len()));
                    w.quoted = true;
                    self.i += 1;
                    loop {
                        match self.peek() {
                            None => return err("unbalanced quotes: a `'` is not closed"),
                            Some('\'') => {
                                self.i += 1;
                                break;
                            }
                            Some(ch) => {
                                w.text.push(ch);
                                self.i += 1;
                            }
                        }
                    }
                }
                '"' => {
                    w.quoted_at = w.quoted_at.or(Some(w.text.len()));
                    w.quoted = true;
                    self.i += 1;
                    self.double_quoted(&mut w)?;
                }
                '\\' => {
                    w.quoted_at = w.quoted_at.or(Some(w.text.len()));
                    w.quoted = true;
                    self.i += 1;
                    match self.peek() {
                        Some('\n') => self.i += 1,
                        Some(ch) => {
                            w.text.push(ch);
                            self.i += 1;
                        }
                        None => {}
                    }
                }
                '$' => {
                    if self.peek_at(1) == Some('\'') {
                        w.quoted_at = w.quoted_at.or(Some(w.text.len()));
                        w.quoted = true;
                        self.i += 2;
                        self.ansi_c(&mut w)?;
                    } else if self.peek_at(1) == Some('"') {
                        w.quoted_at = w.quoted_at.or(Some(w.text.len()));
                        w.quoted = true;
                        self.i += 2;
                        self.double_quoted(&mut w)?;
                    } else {
                        self.dollar(&mut w)?;
                    }
                }
                '`' => self.backtick(&mut w)?,
                '*' | '?' | '[' => {
                    w.glob = true;
                    w.text.push(c);
                    self.i += 1;
                }
                '{' => {
                    brace_open = true;
                    w.text.push(c);
                    self.i += 1;
                }
                ',' if brace_open => {
                    brace_list = true;
                    w.text.push(c);
                    self.i += 1;
                }
                '.' if brace_open && self.peek_at(1) == Some('.') => {
                    brace_list = true;
                    w.text.push(c);
                    self.i += 1;
                }
                '}' if brace_open && brace_list => {
                    return err(format!(
                        "brace expansion ({}) is not supported",
                        self.s[start..=self.i].iter().collect::<String>()
                    ));
                }
                _ => {
                    w.text.push(c);
                    self.i += 1;
                }
            }
        }
        Ok(w)
    }

    fn double_quoted(&mut self, w: &mut Word) -> Result<(), Unjudgeable> {
        loop {
            match self.peek() {
                None => return err("unbalanced quotes: a `\"` is not closed"),
                Some('"') => {
                    self.i += 1;
                    return Ok(());
                }
                Some('\\') => {
                    self.i += 1;
                    match self.peek() {
                        Some('\n') => self.i += 1,
                        Some(ch @ ('$' | '`' | '"' | '\\')) => {
                            w.text.push(ch);
                            self.i += 1;
                        }
                        Some(ch) => {
                            w.text.push('\\');
                            w.text.push(ch);
                            self.i += 1;
                        }
                        None => return err("unbalanced quotes: a `\"` is not closed"),
                    }
                }
                Some('$') => self.dollar(w)?,
                Some('`') => self.backtick(w)?,
                Some(ch) => {
                    w.text.push(ch);
                    self.i += 1;
                }
            }
        }
    }

    /// `$'…'` (bash ANSI-C quoting), decoded.
    fn ansi_c(&mut self, w: &mut Word) -> Result<(), Unjudgeable> {
        loop {
            let Some(c) = self.peek() else {
                return err("unbalanced quotes: a `$'` is not closed");
            };
            self.i += 1;
            match c {
                '\'' => return Ok(()),
                '\\' => {
                    let Some(e) = self.peek() else {
                        return err("unbalanced quotes: a `$'` is not closed");
                    };
                    self.i += 1;
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
                            let Some(x) = self.peek() else {
                                return err("an incomplete `\\c` escape in `$'…'`");
                            };
                            self.i += 1;
                            push(w, (x as u32) & 0x1f)?;
                        }
                        '0'..='7' => {
                            let mut v = e.to_digit(8).unwrap_or(0);
                            for _ in 0..2 {
                                match self.peek().and_then(|d| d.to_digit(8)) {
                                    Some(d) => {
                                        v = v * 8 + d;
                                        self.i += 1;
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
                                match self.peek().and_then(|d| d.to_digit(16)) {
                                    Some(d) => {
                                        v = v.saturating_mul(16).saturating_add(d);
                                        self.i += 1;
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
        let from = self.i;
        match self.peek_at(1) {
            Some('(') if self.peek_at(2) == Some('(') => {
                // Arithmetic: its value is computed; a substitution inside would run.
                self.i += 3;
                let body_start = self.i;
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
                    self.i += 1;
                }
                let body: String = self.s[body_start..self.i.saturating_sub(2)]
                    .iter()
                    .collect();
                literal_arithmetic(&body, "$(( … ))")?;
            }
            Some('[') => {
                // `$[ … ]`, bash's old arithmetic expansion.
                self.i += 2;
                let body_start = self.i;
                let mut depth = 1usize;
                while depth > 0 {
                    match self.peek() {
                        None => return err("unbalanced brackets in `$[ … ]`"),
                        Some('[') => depth += 1,
                        Some(']') => depth -= 1,
                        _ => {}
                    }
                    self.i += 1;
                }
                let body: String = self.s[body_start..self.i - 1].iter().collect();
                literal_arithmetic(&body, "$[ … ]")?;
            }
            Some('(') => {
                self.i += 2;
                self.nested(Close::Paren)?;
            }
            Some('{') => {
                self.i += 2;
                self.parameter_expansion()?;
            }
            Some(c) if c.is_ascii_alphabetic() || c == '_' => {
                self.i += 1;
                while self
                    .peek()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                {
                    self.i += 1;
                }
            }
            Some(c) if c.is_ascii_digit() || "@*#?-$!".contains(c) => self.i += 2,
            _ => {
                // A lone `$` is literal.
                w.text.push('$');
                self.i += 1;
                return Ok(());
            }
        }
        w.text.extend(&self.s[from..self.i]);
        w.dynamic = true;
        Ok(())
    }

    /// The inside of `${…}` up to its `}`; substitutions in it are parsed.
    fn parameter_expansion(&mut self) -> Result<(), Unjudgeable> {
        let mut scratch = Word::default();
        let start = self.i;
        loop {
            match self.peek() {
                None => return err("unbalanced braces: a `${` is not closed"),
                Some('}') => {
                    let body: String = self.s[start..self.i].iter().collect();
                    self.i += 1;
                    return parameter_is_plain(&body);
                }
                Some('\\') => {
                    self.i += 2;
                }
                Some('\'') => {
                    self.i += 1;
                    while self.peek().is_some_and(|c| c != '\'') {
                        self.i += 1;
                    }
                    if self.peek().is_none() {
                        return err("unbalanced quotes inside `${…}`");
                    }
                    self.i += 1;
                }
                Some('"') => {
                    self.i += 1;
                    self.double_quoted(&mut scratch)?;
                }
                Some('$') => self.dollar(&mut scratch)?,
                Some('`') => self.backtick(&mut scratch)?,
                Some(_) => self.i += 1,
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
        let r = self.sequence(close);
        self.heredocs = saved;
        self.depth -= 1;
        r
    }

    /// A backtick command substitution: its text (unescaped) parsed as a line.
    fn backtick(&mut self, w: &mut Word) -> Result<(), Unjudgeable> {
        let from = self.i;
        self.i += 1;
        let mut inner = String::new();
        loop {
            match self.peek() {
                None => return err("unbalanced backticks: a ` is not closed"),
                Some('`') => {
                    self.i += 1;
                    break;
                }
                Some('\\') => {
                    self.i += 1;
                    match self.peek() {
                        Some(c @ ('\\' | '`' | '$')) => {
                            inner.push(c);
                            self.i += 1;
                        }
                        Some(c) => {
                            inner.push('\\');
                            inner.push(c);
                            self.i += 1;
                        }
                        None => return err("unbalanced backticks: a ` is not closed"),
                    }
                }
                Some(c) => {
                    inner.push(c);
                    self.i += 1;
                }
            }
        }
        let commands = parse_at(&inner, self.depth + 1)?;
        self.out.extend(commands);
        w.text.extend(&self.s[from..self.i]);
        w.dynamic = true;
        Ok(())
    }
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

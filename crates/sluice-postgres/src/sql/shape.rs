//! A statement's shape: its text with every constant replaced by a marker
//! of the constant's kind. Simple-protocol clients send the same statement
//! with different constants inline (`… WHERE aid = 48213`), so the text
//! cache never hits; the shape caches let them share one classification
//! ([`super::ClassifierCache`]) and one column lineage (`super::lineage`,
//! for masking).
//!
//! Why that is sound, by construction rather than by a list of safe cases:
//!
//! - The shape comes from PostgreSQL's own scanner (libpg_query's, the one
//!   the parser uses), and keeps every byte outside the constants verbatim:
//!   keywords, names, operators, parameters, comments and whitespace. Two
//!   texts of one shape are the same token stream but for the constants'
//!   values, and PostgreSQL's grammar reads token kinds, so they parse to
//!   the same tree but for what the parser made of those values.
//! - A classification is reused only if every constant of the text sits
//!   where the tree has an `A_Const` node, the one place the grammar put
//!   its value (a constant the grammar consumed in any other way, such as
//!   `COPY … FROM 'file'` or an option's value, has no `A_Const` at its
//!   start: such texts are classified every time). A number right after a
//!   `-` counts if the `A_Const` sits at the `-`: the grammar folds `- 5`
//!   into one constant placed there, and only rules that begin with a `-`
//!   (a negation, a signed number) place a node at one.
//! - The walk sees a constant's value only through one accessor that
//!   records the read, as it records reading the statement's text (which
//!   holds the values: PREPARE's body, a PL/pgSQL function's). A result
//!   that read either is not reused: `SET standard_conforming_strings =
//!   'off'` never gets the classification of `= 'on'`. (The lineage walk
//!   has no such accessor: it never reads a value.)

use pg_query::protobuf::Token;

/// A text's shape, and where its constants start.
#[derive(Debug)]
pub(super) struct Shape {
    /// The text with each constant replaced by `\0` and a letter for its
    /// kind; no query text contains `\0` (the protocol ends strings with it).
    pub(super) key: String,
    /// The constants' start offsets, ascending, each with that of a `-`
    /// token right before it.
    pub(super) constants_at: Vec<(i32, Option<i32>)>,
}

impl Shape {
    /// The shape of `sql`; `None` when the scanner rejects it, reports a
    /// constant this module does not recognise, or finds a `U&''` string
    /// (the parser, not the scanner, decodes its escapes, and can reject
    /// one text of a shape that another passed).
    pub(super) fn of(sql: &str) -> Option<Shape> {
        // Text of whitespace alone has no tokens, and pg_query hands a null
        // token list to `slice::from_raw_parts` then (an abort in a debug
        // build). Anything else yields a token or a scan error.
        if sql
            .bytes()
            .all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c))
        {
            return None;
        }
        let tokens = pg_query::scan_tokens(sql).ok()?;
        let mut key = String::with_capacity(sql.len());
        let mut constants_at = Vec::new();
        let mut at = 0;
        let mut minus = None;
        for token in &tokens {
            let Some(kind) = constant_kind(token.token) else {
                minus = (token.token == Token::Ascii45 as i32).then_some(token.start);
                continue;
            };
            let after_minus = minus.take();
            if kind == 'u' {
                return None;
            }
            let start = usize::try_from(token.start).ok()?;
            let end = usize::try_from(token.end).ok()?;
            if start < at || !looks_like(kind, sql.get(start..end)?) {
                return None;
            }
            key.push_str(sql.get(at..start)?);
            key.push('\0');
            key.push(kind);
            constants_at.push((token.start, after_minus));
            at = end;
        }
        key.push_str(sql.get(at..)?);
        Some(Shape { key, constants_at })
    }

    /// Whether a classification of a text of this shape holds for every
    /// text of it: it read no value, and every constant is an `A_Const`.
    pub(super) fn shared_by(&self, constants_in_tree: &[i32], read_values: bool) -> bool {
        !read_values
            && self.constants_at.iter().all(|(at, minus)| {
                std::iter::once(at)
                    .chain(minus)
                    .any(|at| constants_in_tree.binary_search(at).is_ok())
            })
    }
}

/// The marker letter of a constant token, `None` for other tokens.
fn constant_kind(token: i32) -> Option<char> {
    match Token::try_from(token).ok()? {
        Token::Sconst => Some('s'),
        Token::Usconst => Some('u'),
        Token::Bconst => Some('b'),
        Token::Xconst => Some('x'),
        Token::Iconst => Some('i'),
        Token::Fconst => Some('f'),
        _ => None,
    }
}

/// A check on the scanner's boundaries, which the shape relies on: a
/// quoted constant ends with its quote (`'` or a dollar tag's `$`), a
/// number is made of number characters.
fn looks_like(kind: char, text: &str) -> bool {
    match kind {
        'i' | 'f' => {
            !text.is_empty()
                && text
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-'))
        }
        's' => text.len() >= 2 && (text.ends_with('\'') || text.ends_with('$')),
        _ => text.len() >= 3 && text.ends_with('\''),
    }
}

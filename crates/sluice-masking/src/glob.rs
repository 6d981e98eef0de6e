//! Glob patterns for match keys: `*` (any run) and `?` (one character),
//! compared case-insensitively, with no other syntax to get wrong.

/// A compiled, lowercased glob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    pattern: Vec<char>,
}

impl Glob {
    pub fn new(pattern: &str) -> Self {
        Glob {
            pattern: pattern.to_lowercase().chars().collect(),
        }
    }

    pub fn as_string(&self) -> String {
        self.pattern.iter().collect()
    }

    pub fn matches(&self, text: &str) -> bool {
        // Names are nearly always ASCII: compare bytes without allocating.
        if text.is_ascii() && self.pattern.iter().all(char::is_ascii) {
            return wildcard(&self.pattern, text.as_bytes(), |pc, tb| {
                *pc == '?' || *pc == (tb.to_ascii_lowercase() as char)
            });
        }
        let text: Vec<char> = text.to_lowercase().chars().collect();
        wildcard(&self.pattern, &text, |pc, tc| *pc == '?' || pc == tc)
    }
}

/// Iterative wildcard matching with one backtrack point: linear-ish, no recursion.
fn wildcard<T>(p: &[char], t: &[T], eq: impl Fn(&char, &T) -> bool) -> bool {
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] != '*' && eq(&p[pi], &t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::Glob;

    #[test]
    fn table() {
        for (pattern, text, expected) in [
            ("users", "users", true),
            ("users", "USERS", true),
            ("public.*", "public.users", true),
            ("*.users", "audit.users", true),
            ("pg_*", "pg_read_file", true),
            ("pg_*", "lo_import", false),
            ("*", "", true),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("*x*y*", "axbyc", true),
            ("*x*y", "axbyc", false),
            ("rm -rf *", "rm -rf /", true),
        ] {
            assert_eq!(
                Glob::new(pattern).matches(text),
                expected,
                "{pattern} ~ {text}"
            );
        }
    }
}

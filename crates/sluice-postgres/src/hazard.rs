//! Session settings under which the gateway's SQL parser (UTF-8, standard
//! strings) would split statements differently from the server: client
//! encodings whose multibyte characters can end in a backslash or quote byte,
//! and `standard_conforming_strings = off`. A session that reaches one is ended.

/// Client-only encodings whose trailing bytes can be `\` or `'` (PostgreSQL
/// accepts several spellings of each).
const UNSAFE_ENCODINGS: &[&str] = &[
    "sjis",
    "shiftjis",
    "mskanji",
    "shiftjis2004",
    "big5",
    "gbk",
    "cp936",
    "gb18030",
    "uhc",
    "cp949",
    "johab",
    "win932",
    "win936",
    "win949",
    "win950",
    "cp932",
    "cp950",
];

fn normalise(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// Why `name = value` makes SQL ambiguous to the gateway, if it does.
pub fn lexing_hazard(name: &str, value: &str) -> Option<String> {
    match normalise(name).as_str() {
        "clientencoding" if UNSAFE_ENCODINGS.contains(&normalise(value).as_str()) => Some(format!(
            "client_encoding {value} can hide quotes inside multibyte characters; use UTF8"
        )),
        "standardconformingstrings"
            if matches!(normalise(value).as_str(), "off" | "false" | "no" | "0") =>
        {
            Some("standard_conforming_strings = off changes where string literals end".into())
        }
        _ => None,
    }
}

/// The (name, value) of a ParameterStatus body.
pub fn parameter_status(body: &[u8]) -> Option<(String, String)> {
    let mut r = crate::frame::Reader::new(body);
    Some((r.cstr()?, r.cstr()?))
}

#[cfg(test)]
mod tests {
    use super::lexing_hazard;

    #[test]
    fn table() {
        for (name, value, hazard) in [
            ("client_encoding", "UTF8", false),
            ("client_encoding", "SQL_ASCII", false),
            ("client_encoding", "LATIN1", false),
            ("client_encoding", "SJIS", true),
            ("CLIENT_ENCODING", "Shift_JIS", true),
            ("client_encoding", "big5", true),
            ("client_encoding", "GB18030", true),
            ("standard_conforming_strings", "on", false),
            ("standard_conforming_strings", "off", true),
            ("application_name", "sjis", false),
        ] {
            assert_eq!(
                lexing_hazard(name, value).is_some(),
                hazard,
                "{name}={value}"
            );
        }
    }
}

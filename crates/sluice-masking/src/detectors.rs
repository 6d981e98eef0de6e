//! Built-in detectors: the regular expressions that propose candidates (all of
//! them compiled into the engine's one automaton) and the validation a
//! candidate must pass before it is masked.
//!
//! Patterns are written with Unicode mode on (so they only match valid UTF-8)
//! but with ASCII classes and the ASCII word boundary `(?-u:\b)`, which the
//! lazy DFA handles on any input; a Unicode `\b` would make it give up on
//! non-ASCII text.

use std::net::Ipv6Addr;
use std::str::FromStr;

/// A built-in detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Builtin {
    PrivateKey,
    Jwt,
    UrlPassword,
    AwsAccessKey,
    AwsSecretKey,
    GithubToken,
    GitlabToken,
    SlackToken,
    Email,
    Iban,
    CreditCard,
    UsSsn,
    Phone,
    Ipv6,
    Ipv4,
}

/// What `partial` keeps of a match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Partial {
    /// The last 4 letters or digits; separators stay in place.
    LastFour,
    /// The domain of an email address.
    EmailDomain,
    /// The first few characters, then `…`.
    Prefix,
}

/// A validated match: `start..end` is consumed from the text, and only
/// `secret_start..secret_end` (inside it) is rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hit {
    pub start: usize,
    pub end: usize,
    pub secret_start: usize,
    pub secret_end: usize,
    /// Not a validated match: the rest of a window the scan stopped judging
    /// (see `find_hit`); always fully redacted, whatever the style.
    pub unjudged: bool,
}

impl Hit {
    pub(crate) fn whole(start: usize, end: usize) -> Self {
        Hit {
            start,
            end,
            secret_start: start,
            secret_end: end,
            unjudged: false,
        }
    }
}

/// In priority order: at equal spans an earlier detector wins.
pub(crate) const ALL: [Builtin; 15] = [
    Builtin::PrivateKey,
    Builtin::Jwt,
    Builtin::UrlPassword,
    Builtin::AwsAccessKey,
    Builtin::AwsSecretKey,
    Builtin::GithubToken,
    Builtin::GitlabToken,
    Builtin::SlackToken,
    Builtin::Email,
    Builtin::Iban,
    Builtin::CreditCard,
    Builtin::UsSsn,
    Builtin::Phone,
    Builtin::Ipv6,
    Builtin::Ipv4,
];

/// Non-ASCII letters for emails (internationalised addresses), as code point
/// ranges rather than `\p{L}`: far fewer automaton states, and the same for
/// the purpose of not cutting a name in two. Latin-1 and general
/// punctuation (« » “ ” — …), CJK punctuation and emoji are left out so they
/// are not swallowed.
macro_rules! intl {
    () => {
        r"\x{C0}-\x{1FFF}\x{2070}-\x{2FFF}\x{3040}-\x{1EFFF}\x{20000}-\x{10FFFF}"
    };
}

const EMAIL: &str = concat!(
    r"[A-Za-z0-9._%+\-",
    intl!(),
    r"]+@[A-Za-z0-9\-",
    intl!(),
    r"]+(?:\.[A-Za-z0-9\-",
    intl!(),
    r"]+)*\.(?:[A-Za-z]{2,}|[",
    intl!(),
    r"]{2,})"
);

const CARD: &str = r"(?-u:\b)[0-9](?:[ -]?[0-9]){12,18}(?-u:\b)";

const SSN_DASH: &str = r"(?-u:\b)[0-9]{3}-[0-9]{2}-[0-9]{4}(?-u:\b)";
const SSN_SPACE: &str = r"(?-u:\b)[0-9]{3} [0-9]{2} [0-9]{4}(?-u:\b)";

/// `+44 20 7946 0958`, `+1 (415) 555-2671`, `+14155552671`.
const PHONE_INTL: &str = r"\+[1-9][0-9]{0,2}(?:[ .-]?(?:\([0-9]{1,4}\)|[0-9]{1,5})){1,6}(?-u:\b)";
/// `415-555-2671`, `1 415 555 2671`: a separator is required (a bare
/// 10-digit number is more often an id than a phone number).
const PHONE_NANP: &str =
    r"(?-u:\b)(?:1[ .-]?)?[2-9][0-9]{2}[ .-][2-9][0-9]{2}[ .-][0-9]{4}(?-u:\b)";
/// `(415) 555-2671`.
const PHONE_NANP_PAREN: &str =
    r"(?:(?-u:\b)1[ .-]?)?\([2-9][0-9]{2}\)[ .-]?[2-9][0-9]{2}[ .-]?[0-9]{4}(?-u:\b)";
/// National numbers with a trunk 0: `020 7946 0958`, `07700 900123`, `030 12345678`.
const PHONE_TRUNK: &str = r"(?-u:\b)0[1-9][0-9]{1,4}[ /-][0-9]{2,8}(?:[ -][0-9]{2,4}){0,3}(?-u:\b)";
/// `01 23 45 67 89`.
const PHONE_PAIRS: &str = r"(?-u:\b)0[1-9](?:[ .][0-9]{2}){4}(?-u:\b)";

/// The start of an IBAN; the validator walks the rest (its length depends on
/// the country), which keeps counted repetitions out of the automaton.
// Case-insensitive: `lower(iban)` must not slip past (the checksum keeps
// false positives rare).
const IBAN: &str = r"(?-u:\b)[A-Za-z]{2}[0-9]{2} ?[A-Za-z0-9]{4}";

const IPV4: &str = r"(?-u:\b)(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?-u:\b)";
/// Unbounded runs (no counted repetitions); `Ipv6Addr` decides.
const IPV6: &str = r"[0-9A-Fa-f]*:[0-9A-Fa-f]*:[0-9A-Fa-f:.]*";

// Case-insensitive: key ids are upper case, so `lower(key)` still reveals them.
const AWS_ACCESS_KEY: &str = r"(?-u:\b)(?i:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|APKA|AROA|ASCA)[A-Za-z0-9]{16}(?-u:\b)";
/// `aws_secret_access_key = …`, `"SecretAccessKey": "…"`: the 40 characters
/// after the key. A bare 40-character base64 string is not enough evidence on
/// its own (identifiers, hashes, blobs), and tracking one costs the automaton
/// dearly, so the key name is required.
const AWS_SECRET_KEYED: &str = r#"(?i:aws)?[_.-]?(?i:secret)[_.-]?(?i:access)?[_.-]?(?i:key)["']?[ \t]*[:=][ \t]*["']?[A-Za-z0-9/+]{40}"#;
const GITHUB: &str = r"(?-u:\b)(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{50,})";
const GITLAB: &str =
    r"(?-u:\b)(?:glpat|gldt|glrt|glptt|glcbt|glimt|glft|glsoat|gloas|glagent)-[A-Za-z0-9_.-]{20,}";
const SLACK_TOKEN: &str =
    r"(?-u:\b)(?:xox[abposre]-[A-Za-z0-9-]{10,}|xapp-[0-9]-[A-Za-z0-9-]{10,})";
const SLACK_WEBHOOK: &str =
    r"https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9/_-]{10,}";

/// Header `eyJ…` (base64url of `{"`), payload, optional signature. A
/// two-segment prefix is accepted so a token cut by a buffer edge is still seen.
const JWT: &str = r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{2,}(?:\.[A-Za-z0-9_-]*)?";

/// A PEM private key: the BEGIN line, base64 lines (or `Name: value` headers of
/// legacy encrypted keys) separated by newlines, escaped newlines (`\n` inside
/// JSON strings) or blanks, and the END line when present.
const PRIVATE_KEY: &str = concat!(
    r"-----BEGIN[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----",
    r"(?:(?:\r?\n|\\r|\\n|[ \t])+(?:[A-Za-z0-9+/=]+|[A-Za-z-]+:[ A-Za-z0-9,-]*))*",
    r"(?:(?:\r?\n|\\r|\\n|[ \t])*-----END[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----)?",
);

/// `scheme://user:SECRET@host`.
const URL_PASSWORD: &str =
    r#"[A-Za-z][A-Za-z0-9+.-]*://[^\x00-\x20:/@?#"'<>\\]*:[^\x00-\x20/@?#"'<>\\]+@"#;
/// `password=SECRET`, `PGPASSWORD=SECRET`, `Password='SECRET';` in connection strings.
const PASSWORD_KV: &str = r#"(?i:[A-Za-z0-9_.-]*(?:password|passwd|pwd))[ \t]*=[ \t]*(?:'[^'\r\n]+'|"[^"\r\n]+"|[^\x00-\x20;&'",)}\]]+)"#;
/// `"password": "SECRET"` in JSON text.
const PASSWORD_JSON: &str =
    r#""(?i:[A-Za-z0-9_.-]*(?:password|passwd))"[ \t]*:[ \t]*"(?:[^"\\\r\n]|\\.)+""#;

impl Builtin {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Builtin::Email => "email",
            Builtin::CreditCard => "credit_card",
            Builtin::UsSsn => "us_ssn",
            Builtin::Phone => "phone",
            Builtin::Iban => "iban",
            Builtin::Ipv4 => "ipv4",
            Builtin::Ipv6 => "ipv6",
            Builtin::AwsAccessKey => "aws_access_key",
            Builtin::AwsSecretKey => "aws_secret_key",
            Builtin::GithubToken => "github_token",
            Builtin::GitlabToken => "gitlab_token",
            Builtin::SlackToken => "slack_token",
            Builtin::Jwt => "jwt",
            Builtin::PrivateKey => "private_key",
            Builtin::UrlPassword => "url_password",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<Builtin> {
        ALL.iter().copied().find(|b| b.name() == name)
    }

    /// Opt-in detectors are not part of `"default"`.
    pub(crate) fn opt_in(self) -> bool {
        matches!(self, Builtin::Ipv4 | Builtin::Ipv6)
    }

    /// The detector's patterns; a candidate's index here is its "form".
    pub(crate) fn patterns(self) -> &'static [&'static str] {
        match self {
            Builtin::Email => &[EMAIL],
            Builtin::CreditCard => &[CARD],
            Builtin::UsSsn => &[SSN_DASH, SSN_SPACE],
            Builtin::Phone => &[
                PHONE_INTL,
                PHONE_NANP,
                PHONE_NANP_PAREN,
                PHONE_TRUNK,
                PHONE_PAIRS,
            ],
            Builtin::Iban => &[IBAN],
            Builtin::Ipv4 => &[IPV4],
            Builtin::Ipv6 => &[IPV6],
            Builtin::AwsAccessKey => &[AWS_ACCESS_KEY],
            Builtin::AwsSecretKey => &[AWS_SECRET_KEYED],
            Builtin::GithubToken => &[GITHUB],
            Builtin::GitlabToken => &[GITLAB],
            Builtin::SlackToken => &[SLACK_TOKEN, SLACK_WEBHOOK],
            Builtin::Jwt => &[JWT],
            Builtin::PrivateKey => &[PRIVATE_KEY],
            Builtin::UrlPassword => &[URL_PASSWORD, PASSWORD_KV, PASSWORD_JSON],
        }
    }

    pub(crate) fn partial(self) -> Partial {
        match self {
            Builtin::CreditCard | Builtin::UsSsn | Builtin::Phone | Builtin::Iban => {
                Partial::LastFour
            }
            Builtin::Email => Partial::EmailDomain,
            _ => Partial::Prefix,
        }
    }

    /// Whether a match can swallow the start of a following secret (digit
    /// groups run on), so the engine checks it against overlapping matches.
    pub(crate) fn runs_on(self) -> bool {
        matches!(self, Builtin::Phone | Builtin::CreditCard)
    }

    /// Whether [`Self::validate`] may return a hit that ends past the
    /// candidate it was given: an IBAN's pattern finds only its start.
    pub(crate) fn may_end_past_candidate(self) -> bool {
        matches!(self, Builtin::Iban)
    }

    /// Secrets that may be longer than the stream hold-back: when a match of
    /// this detector is cut by a buffer edge (`matched` is what was seen),
    /// the bytes of this class that follow belong to the same secret.
    pub(crate) fn continuation(self, matched: &[u8]) -> Option<fn(u8) -> bool> {
        match self {
            Builtin::Jwt => Some(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')),
            Builtin::PrivateKey if !matched.windows(8).any(|w| w == b"-----END") => Some(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'\r' | b'\n' | b'\\')
            }),
            _ => None,
        }
    }

    /// Checks a candidate `hay[start..end]` found by pattern `form`, with the
    /// text around it as context. `None` leaves it alone.
    pub(crate) fn validate(self, form: usize, hay: &[u8], start: usize, end: usize) -> Option<Hit> {
        let m = hay.get(start..end)?;
        match self {
            Builtin::Email => email(hay, start, end),
            Builtin::CreditCard => card(hay, start, end),
            Builtin::UsSsn => ssn(m).then(|| Hit::whole(start, end)),
            Builtin::Phone => phone(form, hay, start, end),
            Builtin::Iban => iban(hay, start),
            Builtin::Ipv4 => ipv4(hay, start, end).then(|| Hit::whole(start, end)),
            Builtin::Ipv6 => ipv6(hay, start, end),
            Builtin::AwsAccessKey | Builtin::GithubToken => Some(Hit::whole(start, end)),
            Builtin::AwsSecretKey => aws_secret(hay, start, end),
            Builtin::GitlabToken => {
                let trimmed = m.iter().rposition(|&b| b != b'.')? + 1;
                Some(Hit::whole(start, start + trimmed))
            }
            Builtin::SlackToken => match form {
                0 => Some(Hit::whole(start, end)),
                _ => {
                    let prefix = "https://hooks.slack.com/".len();
                    Some(Hit {
                        start,
                        end,
                        secret_start: start + prefix,
                        secret_end: end,
                        unjudged: false,
                    })
                }
            },
            Builtin::Jwt => jwt(hay, start, end),
            Builtin::PrivateKey => private_key(m).then(|| Hit::whole(start, end)),
            Builtin::UrlPassword => password(form, hay, start, end),
        }
    }
}

fn email(hay: &[u8], start: usize, end: usize) -> Option<Hit> {
    let m = &hay[start..end];
    let at = m.iter().position(|&b| b == b'@')?;
    // Leading dots belong to the sentence, not the address.
    let lead = m[..at].iter().take_while(|&&b| b == b'.').count();
    let local = &m[lead..at];
    let domain = &m[at + 1..];
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local.ends_with(b".")
        && !local.windows(2).any(|w| w == b"..");
    let domain_ok = domain.len() <= 253
        && domain
            .split(|&b| b == b'.')
            .all(|l| !l.is_empty() && l.len() <= 63 && !l.starts_with(b"-") && !l.ends_with(b"-"));
    (local_ok && domain_ok).then(|| Hit::whole(start + lead, end))
}

/// Luhn over ASCII digits.
pub(crate) fn luhn(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(d - b'0');
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

/// Issuer prefixes and lengths of the major networks.
fn card_issuer(d: &[u8]) -> bool {
    let n = d.len();
    let num = |k: usize| {
        d[..k]
            .iter()
            .fold(0u32, |acc, &b| acc * 10 + u32::from(b - b'0'))
    };
    match d[0] {
        b'4' => matches!(n, 13 | 16 | 19),
        b'2' => (2221..=2720).contains(&num(4)) && n == 16,
        b'5' => {
            let p2 = num(2);
            ((51..=55).contains(&p2) && n == 16) || p2 == 50 || (56..=59).contains(&p2)
        }
        b'3' => {
            let p2 = num(2);
            ((p2 == 34 || p2 == 37) && n == 15)
                || ((3528..=3589).contains(&num(4)) && n >= 16)
                || (((300..=305).contains(&num(3)) || p2 == 36 || p2 == 38 || p2 == 39) && n >= 14)
        }
        b'6' => true,
        _ => false,
    }
}

fn card(hay: &[u8], start: usize, end: usize) -> Option<Hit> {
    let m = &hay[start..end];
    // One separator throughout; another one ends the candidate.
    let sep = m.iter().copied().find(|b| !b.is_ascii_digit());
    // Group ends (exclusive byte offsets) with the digit count up to each.
    // Groups are 3 to 6 digits; a malformed group ends the candidate there.
    // At most 19 digits in at most 19 groups (the pattern's bound); no allocation.
    let mut ends = [(0usize, 0usize); 20];
    let mut n_ends = 0;
    let mut digits = [0u8; 19];
    let mut n_digits = 0;
    let mut group = 0;
    let mut whole = true;
    for (i, &b) in m.iter().enumerate() {
        if b.is_ascii_digit() {
            if n_digits == digits.len() {
                whole = false;
                break;
            }
            digits[n_digits] = b;
            n_digits += 1;
            group += 1;
        } else {
            // A complete unseparated number followed by another number counts
            // as one group of its own.
            let first_whole = n_ends == 0 && (13..=19).contains(&group);
            if !(3..=6).contains(&group) && !first_whole {
                whole = false;
                break;
            }
            ends[n_ends] = (i, n_digits);
            n_ends += 1;
            if first_whole || Some(b) != sep || n_ends == ends.len() {
                whole = false;
                break;
            }
            group = 0;
        }
    }
    if whole && (sep.is_none() || (3..=6).contains(&group)) {
        ends[n_ends] = (m.len(), n_digits);
        n_ends += 1;
    }
    // The whole candidate first, then shorter ones ending at a separator: a
    // card number followed by another number is still found.
    for &(at, count) in ends[..n_ends].iter().rev() {
        if !(13..=19).contains(&count) {
            continue;
        }
        let d = &digits[..count];
        if card_issuer(d) && luhn(d) {
            return Some(Hit::whole(start, start + at));
        }
    }
    None
}

fn ssn(m: &[u8]) -> bool {
    let d: Vec<u8> = m.iter().copied().filter(u8::is_ascii_digit).collect();
    if d.len() != 9 {
        return false;
    }
    let area = &d[..3];
    area != b"000" && area != b"666" && area[0] != b'9' && &d[3..5] != b"00" && &d[5..] != b"0000"
}

fn phone(form: usize, hay: &[u8], start: usize, end: usize) -> Option<Hit> {
    let m = &hay[start..end];
    // The loose national forms must not be a slice of a longer run of digit
    // groups (account numbers, IBANs written in blocks).
    if form >= 3 {
        let sep = |b: u8| matches!(b, b' ' | b'.' | b'-' | b'/');
        let before = start >= 2 && sep(hay[start - 1]) && hay[start - 2].is_ascii_digit();
        let after = hay.get(end).is_some_and(|&b| sep(b))
            && hay.get(end + 1).is_some_and(u8::is_ascii_digit);
        if before || after {
            return None;
        }
    }
    let digits = |m: &[u8]| m.iter().filter(|b| b.is_ascii_digit()).count();
    let balanced = |m: &[u8]| {
        m.iter().filter(|&&b| b == b'(').count() == m.iter().filter(|&&b| b == b')').count()
    };
    match form {
        // International: the longest prefix ending after a digit group with
        // 8 to 15 digits (numbers may follow a phone number).
        0 => {
            // One pass over the prefixes, counting as it goes; the last
            // that qualifies is the longest.
            let (mut n, mut open, mut close, mut longest) = (0usize, 0usize, 0usize, None);
            for (i, &b) in m.iter().enumerate() {
                n += usize::from(b.is_ascii_digit());
                open += usize::from(b == b'(');
                close += usize::from(b == b')');
                let group_end = (b.is_ascii_digit() || b == b')')
                    && m.get(i + 1).is_none_or(|c| !c.is_ascii_digit());
                if group_end && (8..=15).contains(&n) && open == close {
                    longest = Some(i + 1);
                }
            }
            longest.map(|e| Hit::whole(start, start + e))
        }
        1 | 2 => {
            let n = digits(m);
            let ok = balanced(m)
                && (n == 10 || (n == 11 && m.iter().find(|b| b.is_ascii_digit()) == Some(&b'1')));
            ok.then(|| Hit::whole(start, end))
        }
        3 => (9..=12)
            .contains(&digits(m))
            .then(|| Hit::whole(start, end)),
        _ => (digits(m) == 10).then(|| Hit::whole(start, end)),
    }
}

/// IBAN lengths by country (the SWIFT IBAN registry).
fn iban_length(country: &[u8]) -> Option<usize> {
    const LENGTHS: &[(&[u8; 2], usize)] = &[
        (b"AD", 24),
        (b"AE", 23),
        (b"AL", 28),
        (b"AT", 20),
        (b"AZ", 28),
        (b"BA", 20),
        (b"BE", 16),
        (b"BG", 22),
        (b"BH", 22),
        (b"BI", 27),
        (b"BR", 29),
        (b"BY", 28),
        (b"CH", 21),
        (b"CR", 22),
        (b"CY", 28),
        (b"CZ", 24),
        (b"DE", 22),
        (b"DJ", 27),
        (b"DK", 18),
        (b"DO", 28),
        (b"EE", 20),
        (b"EG", 29),
        (b"ES", 24),
        (b"FI", 18),
        (b"FK", 18),
        (b"FO", 18),
        (b"FR", 27),
        (b"GB", 22),
        (b"GE", 22),
        (b"GI", 23),
        (b"GL", 18),
        (b"GR", 27),
        (b"GT", 28),
        (b"HN", 28),
        (b"HR", 21),
        (b"HU", 28),
        (b"IE", 22),
        (b"IL", 23),
        (b"IQ", 23),
        (b"IS", 26),
        (b"IT", 27),
        (b"JO", 30),
        (b"KW", 30),
        (b"KZ", 20),
        (b"LB", 28),
        (b"LC", 32),
        (b"LI", 21),
        (b"LT", 20),
        (b"LU", 20),
        (b"LV", 21),
        (b"LY", 25),
        (b"MC", 27),
        (b"MD", 24),
        (b"ME", 22),
        (b"MK", 19),
        (b"MN", 20),
        (b"MR", 27),
        (b"MT", 31),
        (b"MU", 30),
        (b"NI", 28),
        (b"NL", 18),
        (b"NO", 15),
        (b"OM", 23),
        (b"PK", 24),
        (b"PL", 28),
        (b"PS", 29),
        (b"PT", 25),
        (b"QA", 29),
        (b"RO", 24),
        (b"RS", 22),
        (b"RU", 33),
        (b"SA", 24),
        (b"SC", 31),
        (b"SD", 18),
        (b"SE", 24),
        (b"SI", 19),
        (b"SK", 24),
        (b"SM", 27),
        (b"SO", 23),
        (b"ST", 25),
        (b"SV", 28),
        (b"TL", 23),
        (b"TN", 24),
        (b"TR", 26),
        (b"UA", 29),
        (b"VA", 22),
        (b"VG", 24),
        (b"XK", 20),
        (b"YE", 30),
    ];
    LENGTHS
        .iter()
        .find(|(c, _)| c.as_slice() == country)
        .map(|&(_, n)| n)
}

/// ISO 13616 check: move the first four characters to the end, letters to
/// 10..35, and the number mod 97 must be 1.
pub(crate) fn iban_checksum(chars: &[u8]) -> bool {
    let mut r = 0u32;
    for &c in chars[4..].iter().chain(&chars[..4]) {
        r = match c {
            b'0'..=b'9' => (r * 10 + u32::from(c - b'0')) % 97,
            b'A'..=b'Z' => (r * 100 + u32::from(c - b'A') + 10) % 97,
            _ => return false,
        };
    }
    r == 1
}

fn iban(hay: &[u8], start: usize) -> Option<Hit> {
    let country = hay.get(start..start + 2)?.to_ascii_uppercase();
    let want = iban_length(&country)?;
    let mut chars = Vec::with_capacity(want);
    let mut i = start;
    while chars.len() < want {
        match hay.get(i) {
            Some(&c) if c.is_ascii_alphanumeric() => chars.push(c.to_ascii_uppercase()),
            Some(b' ') if !chars.is_empty() && hay.get(i - 1) != Some(&b' ') => {}
            _ => return None,
        }
        i += 1;
    }
    // The IBAN must end here, not run into more letters or digits.
    if hay.get(i).is_some_and(u8::is_ascii_alphanumeric) {
        return None;
    }
    iban_checksum(&chars).then(|| Hit::whole(start, i))
}

fn ipv4(hay: &[u8], start: usize, end: usize) -> bool {
    let octets_ok = hay[start..end].split(|&b| b == b'.').all(|o| {
        let v = o
            .iter()
            .fold(0u32, |acc, &b| acc * 10 + u32::from(b - b'0'));
        v <= 255 && !(o.len() > 1 && o[0] == b'0')
    });
    // Not part of a longer dotted sequence such as a version number.
    let before = start > 0 && hay[start - 1] == b'.';
    let after = hay.get(end) == Some(&b'.') && hay.get(end + 1).is_some_and(u8::is_ascii_digit);
    octets_ok && !before && !after
}

fn ipv6(hay: &[u8], start: usize, mut end: usize) -> Option<Hit> {
    let word = |b: &u8| b.is_ascii_alphanumeric() || *b == b':' || *b == b'.';
    if start > 0 && word(&hay[start - 1]) {
        return None;
    }
    // Punctuation ending a sentence or a label ("address fe80::1: …", "… ::1.")
    // is not part of the address.
    while end > start && matches!(hay[end - 1], b'.' | b':') && !hay[..end].ends_with(b"::") {
        end -= 1;
    }
    if hay.get(end).is_some_and(u8::is_ascii_alphanumeric) {
        return None;
    }
    let text = std::str::from_utf8(&hay[start..end]).ok()?;
    let digit = text.bytes().any(|b| b.is_ascii_digit());
    (digit && Ipv6Addr::from_str(text).is_ok()).then(|| Hit::whole(start, end))
}

fn base64_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'/' || b == b'+'
}

fn aws_secret(hay: &[u8], start: usize, end: usize) -> Option<Hit> {
    if hay.get(end).is_some_and(|&b| base64_char(b) || b == b'=') {
        return None;
    }
    Some(Hit {
        start,
        end,
        secret_start: end - 40,
        secret_end: end,
        unjudged: false,
    })
}

/// Decodes unpadded base64url.
pub(crate) fn base64url_decode(s: &[u8]) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        }))
    };
    if s.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= value(c)? << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

fn jwt(hay: &[u8], start: usize, end: usize) -> Option<Hit> {
    // Not the tail of a longer token.
    if start > 0 {
        let b = hay[start - 1];
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
            return None;
        }
    }
    let m = &hay[start..end];
    let header = m.split(|&b| b == b'.').next()?;
    let json = base64url_decode(header)?;
    let value: serde_json::Value = serde_json::from_slice(&json).ok()?;
    value
        .get("alg")
        .is_some_and(serde_json::Value::is_string)
        .then(|| Hit::whole(start, end))
}

fn private_key(m: &[u8]) -> bool {
    // Enough key material after the BEGIN line to be a key, not a mention of one.
    let header_end = m
        .windows(5)
        .skip(10)
        .position(|w| w == b"-----")
        .map_or(m.len(), |p| p + 15);
    let body = &m[header_end.min(m.len())..];
    let body = match body.windows(8).position(|w| w == b"-----END") {
        Some(p) => &body[..p],
        None => body,
    };
    body.iter().filter(|&&b| base64_char(b)).count() >= 16
}

fn password(form: usize, hay: &[u8], start: usize, end: usize) -> Option<Hit> {
    let m = &hay[start..end];
    let (s, e) = match form {
        // scheme://user:SECRET@
        0 => {
            let authority = m.windows(3).position(|w| w == b"://")? + 3;
            let colon = authority + m[authority..].iter().position(|&b| b == b':')?;
            (colon + 1, m.len() - 1)
        }
        // key = SECRET | 'SECRET' | "SECRET"
        1 => {
            let eq = m.iter().position(|&b| b == b'=')?;
            let mut s = eq + 1;
            while m.get(s).is_some_and(|&b| b == b' ' || b == b'\t') {
                s += 1;
            }
            let mut e = m.len();
            if matches!(m.get(s), Some(b'\'' | b'"')) {
                s += 1;
                e -= 1;
            }
            (s, e)
        }
        // "key": "SECRET"
        _ => {
            let key_end = m[1..].iter().position(|&b| b == b'"')? + 1;
            let open = key_end + 1 + m[key_end + 1..].iter().position(|&b| b == b'"')?;
            (open + 1, m.len() - 1)
        }
    };
    (s < e).then_some(Hit {
        start,
        end,
        secret_start: start + s,
        secret_end: start + e,
        unjudged: false,
    })
}

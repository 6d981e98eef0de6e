//! Method-override fields found in a request body as it streams: the part
//! of a long `POST` body past what the gateway reads before judging is
//! checked piece by piece on its way upstream, with state carried across
//! pieces, so that a field split between two of them is still found.
//!
//! Each scanner reads the body from its first byte (the start already read
//! is pushed first) and answers as the whole-body check
//! ([`super::method_override_in_body`]) answers for its media type, or more
//! strictly where a byte-wise reading cannot tell (see each scanner):
//!
//! - a form or an untyped body: a pair's name (split on `&` and `;`, `+` and
//!   percent-decoded), as [`super::method_override_param`];
//! - JSON: a top-level key of an object (escapes decoded);
//! - multipart: every `name` parameter wherever it is, as the whole-body
//!   check reads them.

use super::{essence, is_json_type, is_override_name};

/// What a scanner found: a field naming a method override (its name,
/// decoded, as far as it is kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found(pub String);

/// A request body's method-override scanner, by its media type.
#[derive(Debug, Clone)]
pub struct BodyScanner {
    kind: Kind,
    /// Bytes pushed so far.
    seen: u64,
    /// Sticky: once found, every later call answers the same.
    found: Option<(Found, u64)>,
}

#[derive(Debug, Clone)]
enum Kind {
    Form(FormScan),
    Json(JsonScan),
    Multipart(MultipartScan),
}

impl BodyScanner {
    /// The scanner for a body of this media type, when frameworks read
    /// override fields from it (see [`super::may_carry_override`]): a form
    /// or no type (read as a form, as Rack does), JSON, multipart form data.
    pub fn for_type(content_type: Option<&str>) -> Option<BodyScanner> {
        let essence = essence(content_type);
        let kind = if essence.is_empty() || essence == "application/x-www-form-urlencoded" {
            Kind::Form(FormScan::default())
        } else if essence == "multipart/form-data" {
            Kind::Multipart(MultipartScan::default())
        } else if is_json_type(&essence) {
            Kind::Json(JsonScan::default())
        } else {
            return None;
        };
        Some(BodyScanner {
            kind,
            seen: 0,
            found: None,
        })
    }

    /// Reads the next piece of the body; what it found (with how many bytes
    /// of the body had been pushed before the piece holding it).
    pub fn push(&mut self, bytes: &[u8]) -> Option<(Found, u64)> {
        if self.found.is_none() {
            let found = match &mut self.kind {
                Kind::Form(s) => s.push(bytes),
                Kind::Json(s) => s.push(bytes),
                Kind::Multipart(s) => s.push(bytes),
            };
            self.found = found.map(|f| (f, self.seen));
            self.seen += bytes.len() as u64;
        }
        self.found.clone()
    }

    /// The body ended: what its last field, still open, is.
    pub fn finish(&mut self) -> Option<(Found, u64)> {
        if self.found.is_none() {
            let found = match &mut self.kind {
                Kind::Form(s) => s.finish(),
                Kind::Json(_) => None,
                Kind::Multipart(s) => s.finish(),
            };
            self.found = found.map(|f| (f, self.seen));
        }
        self.found.clone()
    }
}

/// Whitespace as `str::trim` reads it, in ASCII (`\x0B` included).
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\x0B' | b'\x0C' | b'\r')
}

/// How many bytes of a name are kept to judge it exactly (and to show it).
const HEAD: usize = 64;

/// A field name read byte by byte (decoded), judged as
/// [`is_override_name`] judges it whole: exactly while it is at most
/// [`HEAD`] bytes, and past that by what decides it (its first character
/// that is not whitespace, its letters and digits lowercased: equal to
/// `method`/`httpmethod`, or holding both `method` and `override`).
#[derive(Debug, Clone, Default)]
struct NameScan {
    head: Vec<u8>,
    /// Bytes of the name before any `[` (the part judged).
    len: usize,
    /// A `[` was seen: the rest is not judged.
    cut: bool,
    bare: [u8; 10],
    bare_len: usize,
    tail: [u8; 8],
    has_method: bool,
    has_override: bool,
}

impl NameScan {
    fn push(&mut self, b: u8) {
        if self.cut {
            return;
        }
        if b == b'[' {
            self.cut = true;
            return;
        }
        self.len += 1;
        if self.head.len() < HEAD {
            self.head.push(b);
        }
        if b.is_ascii_alphanumeric() {
            let l = b.to_ascii_lowercase();
            if let Some(slot) = self.bare.get_mut(self.bare_len) {
                *slot = l;
            }
            self.bare_len += 1;
            self.tail.copy_within(1.., 0);
            self.tail[7] = l;
            self.has_method |= self.tail.ends_with(b"method");
            self.has_override |= self.tail.ends_with(b"override");
        }
    }

    fn is_override(&self) -> bool {
        let head = String::from_utf8_lossy(&self.head);
        if self.len <= HEAD {
            return is_override_name(&head);
        }
        // A sigil is the first character that is not whitespace; a head of
        // whitespace only (or cut inside a character) is taken as one.
        let sigil = match head.trim_start().chars().next() {
            Some(c) => matches!(c, '_' | '$' | '.' | char::REPLACEMENT_CHARACTER),
            None => true,
        };
        let bare = self.bare.get(..self.bare_len).unwrap_or(&[]);
        (sigil && (bare == b"method" || bare == b"httpmethod"))
            || (self.has_method && self.has_override)
    }

    /// The name as shown in a refusal.
    fn shown(&self) -> String {
        String::from_utf8_lossy(&self.head).trim().to_string()
    }

    /// `Some(name)` when the name asks for another method.
    fn judge(&self) -> Option<Found> {
        self.is_override().then(|| Found(self.shown()))
    }
}

/// Percent-decoding byte by byte, as `percent_encoding::percent_decode`
/// reads a whole string: `%` and two hex digits is a byte; a `%` not
/// followed by two is itself.
#[derive(Debug, Clone, Copy, Default)]
enum Percent {
    #[default]
    Plain,
    Sign,
    Digit(u8),
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

impl Percent {
    fn push(&mut self, b: u8, out: &mut NameScan) {
        match *self {
            Percent::Plain => {
                if b == b'%' {
                    *self = Percent::Sign;
                } else {
                    out.push(b);
                }
            }
            Percent::Sign => {
                if hex(b).is_some() {
                    *self = Percent::Digit(b);
                } else {
                    out.push(b'%');
                    *self = Percent::Plain;
                    self.push(b, out);
                }
            }
            Percent::Digit(d) => match (hex(d), hex(b)) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    *self = Percent::Plain;
                }
                _ => {
                    out.push(b'%');
                    out.push(d);
                    *self = Percent::Plain;
                    self.push(b, out);
                }
            },
        }
    }

    fn flush(&mut self, out: &mut NameScan) {
        match std::mem::take(self) {
            Percent::Plain => {}
            Percent::Sign => out.push(b'%'),
            Percent::Digit(d) => {
                out.push(b'%');
                out.push(d);
            }
        }
    }
}

/// A form (or untyped) body: `name=value` pairs split on `&` and `;`.
#[derive(Debug, Clone, Default)]
struct FormScan {
    in_value: bool,
    percent: Percent,
    name: NameScan,
}

impl FormScan {
    fn push(&mut self, bytes: &[u8]) -> Option<Found> {
        let mut rest = bytes;
        while !rest.is_empty() {
            if self.in_value {
                match memchr::memchr2(b'&', b';', rest) {
                    Some(at) => {
                        self.in_value = false;
                        rest = rest.get(at + 1..).unwrap_or(&[]);
                    }
                    None => return None,
                }
                continue;
            }
            let Some((&b, more)) = rest.split_first() else {
                break;
            };
            rest = more;
            match b {
                b'&' | b';' | b'=' => {
                    let found = self.end_name();
                    if found.is_some() {
                        return found;
                    }
                    self.in_value = b == b'=';
                }
                // Spaces are written `+` (decoded before the percents).
                b'+' => self.percent.push(b' ', &mut self.name),
                _ => self.percent.push(b, &mut self.name),
            }
        }
        None
    }

    fn end_name(&mut self) -> Option<Found> {
        self.percent.flush(&mut self.name);
        let name = std::mem::take(&mut self.name);
        name.judge()
    }

    fn finish(&mut self) -> Option<Found> {
        if self.in_value {
            return None;
        }
        self.end_name()
    }
}

/// A JSON body: the keys of a top-level object. A string at depth 1 of an
/// object, followed by `:`, is a key (in valid JSON exactly the keys; in
/// broken JSON, whatever a lenient parser could take for one).
#[derive(Debug, Clone, Default)]
struct JsonScan {
    depth: usize,
    /// The value at depth 1 is an object.
    object: bool,
    string: Option<JsonString>,
    /// The string just closed at depth 1 names an override (`Some(name)`),
    /// should a `:` follow.
    pending: Option<Found>,
}

#[derive(Debug, Clone, Default)]
struct JsonString {
    /// Read as a possible key (at depth 1 of an object).
    key: bool,
    name: NameScan,
    escape: Escape,
    /// A high surrogate waiting for its low half.
    high: Option<u16>,
}

#[derive(Debug, Clone, Copy, Default)]
enum Escape {
    #[default]
    None,
    Backslash,
    /// `\u` and the hex digits read so far.
    Unicode(u16, u8),
}

impl JsonString {
    fn push_char(&mut self, c: char) {
        let mut buf = [0u8; 4];
        for &b in c.encode_utf8(&mut buf).as_bytes() {
            self.name.push(b);
        }
    }

    fn push_unit(&mut self, unit: u16) {
        let lone = char::REPLACEMENT_CHARACTER;
        match (self.high.take(), unit) {
            (None, 0xD800..=0xDBFF) => self.high = Some(unit),
            (Some(high), 0xDC00..=0xDFFF) => {
                let c = 0x10000 + ((u32::from(high) - 0xD800) << 10) + (u32::from(unit) - 0xDC00);
                self.push_char(char::from_u32(c).unwrap_or(lone));
            }
            (Some(_), _) => {
                self.push_char(lone);
                self.push_unit(unit);
            }
            (None, _) => self.push_char(char::from_u32(u32::from(unit)).unwrap_or(lone)),
        }
    }

    /// One byte of the string's content; `true` when it closed.
    fn push(&mut self, b: u8) -> bool {
        match self.escape {
            Escape::None => match b {
                b'"' => return true,
                b'\\' => self.escape = Escape::Backslash,
                _ if self.key => {
                    if self.high.take().is_some() {
                        self.push_char(char::REPLACEMENT_CHARACTER);
                    }
                    self.name.push(b);
                }
                _ => {}
            },
            Escape::Backslash => {
                self.escape = Escape::None;
                if !self.key {
                    return false;
                }
                let c = match b {
                    b'u' => {
                        self.escape = Escape::Unicode(0, 0);
                        return false;
                    }
                    b'b' => '\x08',
                    b'f' => '\x0C',
                    b'n' => '\n',
                    b'r' => '\r',
                    b't' => '\t',
                    other => other as char,
                };
                if self.high.take().is_some() {
                    self.push_char(char::REPLACEMENT_CHARACTER);
                }
                self.push_char(c);
            }
            Escape::Unicode(unit, n) => match hex(b) {
                Some(d) if n < 3 => self.escape = Escape::Unicode(unit << 4 | u16::from(d), n + 1),
                Some(d) => {
                    self.escape = Escape::None;
                    if self.key {
                        self.push_unit(unit << 4 | u16::from(d));
                    }
                }
                // Broken: read on as plain text.
                None => {
                    self.escape = Escape::None;
                    return self.push(b);
                }
            },
        }
        false
    }
}

impl JsonScan {
    fn push(&mut self, bytes: &[u8]) -> Option<Found> {
        let mut rest = bytes;
        while !rest.is_empty() {
            if let Some(s) = &mut self.string {
                if !s.key && matches!(s.escape, Escape::None) {
                    // A value: skip to its end.
                    match memchr::memchr2(b'"', b'\\', rest) {
                        Some(at) => rest = rest.get(at..).unwrap_or(&[]),
                        None => return None,
                    }
                }
                let Some((&b, more)) = rest.split_first() else {
                    break;
                };
                rest = more;
                if s.push(b) {
                    let s = self.string.take().unwrap_or_default();
                    if s.key {
                        self.pending = s.name.judge();
                    }
                }
                continue;
            }
            let Some((&b, more)) = rest.split_first() else {
                break;
            };
            rest = more;
            if is_space(b) {
                continue;
            }
            if let Some(found) = self.pending.take() {
                if b == b':' {
                    return Some(found);
                }
            }
            match b {
                b'"' => {
                    self.string = Some(JsonString {
                        key: self.depth == 1 && self.object,
                        ..Default::default()
                    });
                }
                b'{' | b'[' => {
                    if self.depth == 0 {
                        self.object = b == b'{';
                    }
                    self.depth += 1;
                }
                b'}' | b']' => self.depth = self.depth.saturating_sub(1),
                _ => {}
            }
        }
        None
    }
}

/// A multipart body: every `name` parameter (`name=`, `NAME =`, `name*=`),
/// wherever it is, as the whole-body check reads it: `name` not after a
/// letter, digit or `-`; then (extended) `*`s, blanks, `=`, blanks, quotes;
/// the value up to a quote, `;` or line end (extended: up to `"`, `;` or
/// line end, the part after its last `'`, percent-decoded). A `name`
/// inside another's value is one more. Bytes past ASCII are taken for
/// blanks between `name` and its value (stricter than the whole-body
/// check, which knows which are).
#[derive(Debug, Clone)]
struct MultipartScan {
    /// Letters of `name` matched so far, and whether the byte before the
    /// `n` allows one.
    matched: usize,
    start_ok: bool,
    prev_ok: bool,
    open: Vec<Param>,
}

impl Default for MultipartScan {
    fn default() -> Self {
        MultipartScan {
            matched: 0,
            start_ok: false,
            prev_ok: true,
            open: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Param {
    extended: bool,
    state: ParamState,
    percent: Percent,
    name: NameScan,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum ParamState {
    /// Right after `name`: `*`s may follow.
    #[default]
    Keyword,
    /// Blanks before `=`.
    Blanks,
    /// Blanks after `=`.
    ValueBlanks,
    /// Quotes before the value.
    Quotes,
    Value,
}

/// What one byte did to an open parameter.
enum Step {
    Open,
    Closed,
    Found(Found),
}

impl Param {
    fn push(&mut self, b: u8) -> Step {
        let blank = |b: u8| is_space(b) || !b.is_ascii();
        match self.state {
            ParamState::Keyword | ParamState::Blanks => {
                if b == b'*' && self.state == ParamState::Keyword {
                    self.extended = true;
                } else if b == b'=' {
                    self.state = ParamState::ValueBlanks;
                } else if blank(b) {
                    self.state = ParamState::Blanks;
                } else {
                    return Step::Closed;
                }
                Step::Open
            }
            ParamState::ValueBlanks if blank(b) => Step::Open,
            ParamState::ValueBlanks | ParamState::Quotes if b == b'"' || b == b'\'' => {
                self.state = ParamState::Quotes;
                Step::Open
            }
            ParamState::ValueBlanks | ParamState::Quotes | ParamState::Value => {
                self.state = ParamState::Value;
                self.value(b)
            }
        }
    }

    fn value(&mut self, b: u8) -> Step {
        match b {
            b'"' | b';' | b'\r' | b'\n' => self.end(),
            b'\'' if !self.extended => self.end(),
            b'\'' => {
                // RFC 5987: charset'language'value: the name is what follows.
                self.percent = Percent::Plain;
                self.name = NameScan::default();
                Step::Open
            }
            _ if self.extended => {
                self.percent.push(b, &mut self.name);
                Step::Open
            }
            _ => {
                self.name.push(b);
                if self.name.cut {
                    // The rest is not judged: the answer is known.
                    return self.end();
                }
                Step::Open
            }
        }
    }

    fn end(&mut self) -> Step {
        // Before its `=`, not a parameter.
        if matches!(self.state, ParamState::Keyword | ParamState::Blanks) {
            return Step::Closed;
        }
        self.percent.flush(&mut self.name);
        match self.name.judge() {
            Some(found) => Step::Found(found),
            None => Step::Closed,
        }
    }
}

/// A multipart field naming a method override in a whole body (or its
/// start), every `name` parameter read as [`MultipartScan`] reads them: in
/// time linear in the body, however many `name`s nest in values.
pub(super) fn multipart_override(body: &[u8]) -> Option<String> {
    let mut scan = MultipartScan::default();
    scan.push(body)
        .or_else(|| scan.finish())
        .map(|Found(name)| name)
}

impl MultipartScan {
    fn push(&mut self, bytes: &[u8]) -> Option<Found> {
        for &b in bytes {
            let mut found = None;
            self.open.retain_mut(|p| match p.push(b) {
                Step::Open => true,
                Step::Closed => false,
                Step::Found(f) => {
                    found.get_or_insert(f);
                    false
                }
            });
            if found.is_some() {
                return found;
            }
            let l = b.to_ascii_lowercase();
            if self.matched < 4 && l == b"name"[self.matched] {
                if self.matched == 0 {
                    self.start_ok = self.prev_ok;
                }
                self.matched += 1;
            } else if l == b'n' {
                self.start_ok = self.prev_ok;
                self.matched = 1;
            } else {
                self.matched = 0;
            }
            if self.matched == 4 {
                self.matched = 0;
                if self.start_ok {
                    self.drop_dominated();
                    self.open.push(Param::default());
                }
            }
            self.prev_ok = !(b.is_ascii_alphanumeric() || b == b'-');
        }
        None
    }

    /// A `name` inside the values of open parameters: each of them now
    /// holds `name`, so it can only be an override by holding both
    /// `method` and `override`. Of those that read on alike (to the same
    /// end), the oldest holds whatever a younger one does, so the younger
    /// are dropped: at most one plain and one extended value read on, and
    /// an extended one cut at `[` waits for a `'` or its end with its
    /// answer. (So few are open however many `name`s a value holds.)
    fn drop_dominated(&mut self) {
        let (mut plain, mut extended, mut cut) = (false, false, [false; 2]);
        self.open.retain(|p| {
            let seen = if !p.extended {
                &mut plain
            } else if !p.name.cut {
                &mut extended
            } else {
                &mut cut[usize::from(p.name.is_override())]
            };
            !std::mem::replace(seen, true)
        });
    }

    fn finish(&mut self) -> Option<Found> {
        let mut found = None;
        for p in &mut self.open {
            if let Step::Found(f) = p.end() {
                found.get_or_insert(f);
            }
        }
        self.open.clear();
        found
    }
}

#[cfg(test)]
mod tests {
    use super::super::{
        json_override, method_override_in_body, method_override_param,
        multipart_override_reference as multipart_override,
    };
    use super::*;

    const FORM: Option<&str> = Some("application/x-www-form-urlencoded");
    const JSON: Option<&str> = Some("application/json");
    const MULTI: Option<&str> = Some("multipart/form-data; boundary=x");

    /// The scanner's answer for `body` pushed in the pieces `cuts` makes.
    fn scan_cut(ctype: Option<&str>, body: &[u8], cuts: &[usize]) -> Option<Found> {
        let mut s = BodyScanner::for_type(ctype).unwrap();
        let mut from = 0;
        for &at in cuts.iter().chain([&body.len()]) {
            if let Some((found, _)) = s.push(&body[from..at]) {
                return Some(found);
            }
            from = at;
        }
        s.finish().map(|(found, _)| found)
    }

    fn scan(ctype: Option<&str>, body: &[u8]) -> Option<Found> {
        scan_cut(ctype, body, &[])
    }

    /// The answer is the same however the body is cut: in two at every
    /// offset, in three at every pair of offsets (short bodies), byte by byte.
    fn same_in_pieces(ctype: Option<&str>, body: &[u8]) -> Option<Found> {
        let whole = scan(ctype, body);
        let shown = || format!("{ctype:?} {:?}", String::from_utf8_lossy(body));
        for i in 0..=body.len() {
            assert_eq!(
                scan_cut(ctype, body, &[i]),
                whole,
                "cut at {i}: {}",
                shown()
            );
            if body.len() <= 80 {
                for j in i..=body.len() {
                    assert_eq!(
                        scan_cut(ctype, body, &[i, j]),
                        whole,
                        "cut at {i}, {j}: {}",
                        shown()
                    );
                }
            }
        }
        let bytes: Vec<usize> = (1..body.len()).collect();
        assert_eq!(
            scan_cut(ctype, body, &bytes),
            whole,
            "byte by byte: {}",
            shown()
        );
        whole
    }

    #[test]
    fn form_fields_split_anywhere() {
        let long = format!("a=1&_{}method=DELETE", "-".repeat(100));
        let long_dot = format!("a=1&.{}method=DELETE", "-".repeat(100));
        for body in [
            &b"a=1&_method=DELETE"[..],
            b"_method=DELETE",
            b"a=1;_METHOD=DELETE",
            b"a=1&%5Fmethod=DELETE",
            b"a=1&%5fmethod",
            b"a=1&_met%68od=DELETE",
            b"a=1&+_method=DELETE",
            b"a=1&_method[]=DELETE",
            b"a=1&$method=PUT",
            b"a=1&_httpMethod=PUT",
            b"a=1&x-http-method-override=PUT",
            b"a=1&_method",
            b"a=1&.method=DELETE",
            b"a=x%&_method=1",
            long.as_bytes(),
            long_dot.as_bytes(),
        ] {
            assert!(
                same_in_pieces(FORM, body).is_some(),
                "{}",
                String::from_utf8_lossy(body)
            );
            // An untyped body is read as a form.
            assert!(scan(None, body).is_some());
        }
        for body in [
            &b"method=card&page=2"[..],
            b"payment_method=card",
            b"a=_method",
            b"a=1&b=x_method=DELETE",
            b"%5Gmethod=1",
            b"a=%26_method%3DDELETE",
            b"",
        ] {
            assert_eq!(
                same_in_pieces(FORM, body),
                None,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let found = scan(FORM, b"a=1&%5FMethod=DELETE");
        assert_eq!(found, Some(Found("_Method".into())));
    }

    #[test]
    fn json_top_level_keys_split_anywhere() {
        for body in [
            &br#"{"_method":"DELETE"}"#[..],
            br#" { "a" : 1 , "_METHOD" : "DELETE" }"#,
            br#"{"\u005fmethod":1}"#,
            br#"{"_\u006Dethod":1}"#,
            br#"{"a":{"b":[1,{"c":"}"}]},"_method":1}"#,
            br#"{"a":"\"}\\","_method":1}"#,
            br#"{"x\\":1,"_method":2}"#,
            br#"{"_method"
                :"DELETE"}"#,
            br#"{"x_http_method_override":"DELETE"}"#,
        ] {
            assert!(
                same_in_pieces(JSON, body).is_some(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        for body in [
            &br#"{"nested":{"_method":"DELETE"}}"#[..],
            br#"[{"_method":"DELETE"}]"#,
            br#"{"a":"_method"}"#,
            br#"{"a":"x","b":"_method"}"#,
            br#"{"a":["_method",":"]}"#,
            br#"{"payment_method":"card"}"#,
            br#"{"\ud83d\ude00_method":1}"#,
            br#"{"a":"\"_method\":1"}"#,
            br#""_method":1"#,
        ] {
            assert_eq!(
                same_in_pieces(JSON, body),
                None,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn multipart_names_split_anywhere() {
        for body in [
            &b"--x\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--x--"[..],
            b"--x\r\ncontent-disposition: form-data; NAME=\"_method\"\r\n\r\nDELETE\r\n--x--",
            b"--x\r\nContent-Disposition: form-data;name=_method\r\n\r\nDELETE",
            b"--x\r\nContent-Disposition: form-data; Name = '_method'\r\n\r\nDELETE",
            b"--x\r\nContent-Disposition: form-data; name*=utf-8''%5Fmethod\r\n\r\nDELETE",
            b"--x\r\nContent-Disposition: form-data; name**  =\"utf-8'en'%5fMETHOD\"\r\n",
            b"--x\r\nContent-Disposition: form-data; filename=\"a name=_method\"\r\n",
            b"--x\r\nContent-Disposition: form-data; name=\"x name=_method\"\r\n",
            b"--x\r\nContent-Disposition: form-data; name=\"\"_method\"",
            b"name=_method",
        ] {
            assert!(
                same_in_pieces(MULTI, body).is_some(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        for body in [
            &b"--x\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\n_method\r\n--x--"[..],
            b"--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"_method\"\r\n\r\n_method=DELETE\r\n--x--",
            b"--x\r\nContent-Disposition: form-data; name *=_method\r\n",
            b"--x\r\nContent-Disposition: form-data; rename=_method\r\n",
            b"--x\r\nContent-Disposition: form-data; name-x=_method\r\n",
            b"--x\r\nContent-Disposition: form-data; name*=utf-8''_method'x\r\n",
        ] {
            assert_eq!(same_in_pieces(MULTI, body), None, "{}", String::from_utf8_lossy(body));
        }
        // Names inside names: few are followed at once, and the answer is
        // the whole-body check's.
        for (body, overrides) in [
            ("name=a ".repeat(2_000), false),
            ("name*=a ".repeat(2_000), false),
            ("name=a name*=b'x [ ".repeat(1_000), false),
            (format!("{}_method", "name=".repeat(2_000)), true),
            (format!("{}override", "name=method ".repeat(2_000)), true),
            (format!("name*=x'{}_method", "name*=".repeat(2_000)), true),
            (format!("name*=x'{}_method'", "name*=".repeat(2_000)), false),
        ] {
            let mut s = MultipartScan::default();
            for piece in body.as_bytes().chunks(7) {
                assert_eq!(s.push(piece), None);
                assert!(s.open.len() <= 5, "{}", s.open.len());
            }
            assert_eq!(s.finish().is_some(), overrides, "{}", &body[..40]);
            assert_eq!(
                multipart_override(&body).is_some(),
                overrides,
                "{}",
                &body[..40]
            );
        }
    }

    /// A first MiB crafted to nest `name`s in values (quadratic for the
    /// reference reading: minutes) is read in one pass: few parameters are
    /// followed per byte, and the gateway's check gives the answer.
    #[test]
    fn a_mib_of_nested_multipart_names_is_read_in_one_pass() {
        const MIB: usize = 1 << 20;
        let fill = |unit: &str, tail: &str| {
            let mut body = unit.repeat((MIB - tail.len()) / unit.len());
            body.push_str(tail);
            body
        };
        for (body, overrides) in [
            (fill("name=", ""), false),
            (fill("name*=", ""), false),
            (fill("name=\"", ""), false),
            (fill("; name = '", ""), false),
            (fill("name=a name*=b'x [ ", ""), false),
            (fill("name=", "_method"), true),
            (fill("name=method ", "override"), true),
            (format!("name*=x'{}", fill("name*=", "_method")), true),
        ] {
            let mut s = MultipartScan::default();
            for piece in body.as_bytes().chunks(4096) {
                assert_eq!(s.push(piece), None);
                // At most this many parameters read each byte.
                assert!(s.open.len() <= 5, "{}", s.open.len());
            }
            assert_eq!(s.finish().is_some(), overrides, "{}", &body[..40]);
            let found = method_override_in_body(MULTI, body.as_bytes());
            assert_eq!(found.is_some(), overrides, "{}", &body[..40]);
        }
    }

    #[test]
    fn other_types_are_not_scanned() {
        for ctype in ["application/octet-stream", "text/plain", "image/png"] {
            assert!(BodyScanner::for_type(Some(ctype)).is_none(), "{ctype}");
        }
    }

    #[test]
    fn what_was_found_and_where_stays_found() {
        let mut s = BodyScanner::for_type(FORM).unwrap();
        assert_eq!(s.push(b"a=1&b=2&_met"), None);
        let found = Some((Found("_method".into()), 12));
        assert_eq!(s.push(b"hod=DELETE"), found);
        assert_eq!(s.push(b"&c=3"), found);
        assert_eq!(s.finish(), found);
    }

    /// A deterministic generator (xorshift) for the differential tests.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn pick<'a, T>(&mut self, from: &'a [T]) -> &'a T {
            &from[(self.next() % from.len() as u64) as usize]
        }
    }

    fn random_body(rng: &mut Rng, pieces: &[&[u8]], max: u64) -> Vec<u8> {
        let n = rng.next() % max;
        let mut body = Vec::new();
        for _ in 0..n {
            let piece: &&[u8] = rng.pick(pieces);
            body.extend_from_slice(piece);
        }
        body
    }

    /// On ASCII bodies the scanners answer exactly as the whole-body check
    /// reads the same type; past ASCII they may refuse more, never less.
    #[test]
    fn scanners_agree_with_the_whole_body_check() {
        let ascii: &[&[u8]] = &[
            b"_method",
            b"method",
            b"override",
            b"name",
            b"NAME",
            b"name=",
            b"; name=",
            b"name*=",
            b"_method",
            b"=",
            b"&",
            b";",
            b"%5F",
            b"%",
            b"5",
            b"f",
            b"+",
            b" ",
            b"\"",
            b"'",
            b"*",
            b"\r\n",
            b"[",
            b"a",
            b"x-",
            b"$",
            b"http",
            b"\t",
            b"\x0B",
            b"-",
            b"_",
        ];
        let form_ascii: &[&[u8]] = &[
            b"_",
            b".",
            b"method",
            b"override",
            b"%5F",
            b"%5f",
            b"%",
            b"5",
            b"F",
            b"&",
            b";",
            b"=",
            b"+",
            b" ",
            b"[",
            b"$",
            b"http",
            b"x-",
            b"a",
            b"-",
            b"\t",
            b"%6D",
            b"ethod",
        ];
        let wide: &[&[u8]] = &[
            b"\xc2\xa0",
            b"\xff",
            b"\xe2\x80\x80",
            b"%C2%A0",
            b"\xc3\xa9",
        ];
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let (mut forms, mut multis) = (0, 0);
        for round in 0..20_000 {
            let mut pieces = ascii.to_vec();
            let mut form_pieces = form_ascii.to_vec();
            let non_ascii = round % 2 == 1;
            if non_ascii {
                pieces.extend_from_slice(wide);
                form_pieces.extend_from_slice(wide);
            }
            let form_body = random_body(&mut rng, &form_pieces, 10);
            let form_text = String::from_utf8_lossy(&form_body).into_owned();
            let form_whole = method_override_param(&form_text).is_some();
            let form = scan(FORM, &form_body).is_some();
            if round % 50 == 0 {
                same_in_pieces(FORM, &form_body);
            }
            let body = random_body(&mut rng, &pieces, 14);
            let text = String::from_utf8_lossy(&body);
            let multi_whole = multipart_override(&text).is_some();
            let multi = scan(MULTI, &body).is_some();
            forms += usize::from(form_whole);
            multis += usize::from(multi_whole);
            if non_ascii {
                assert!(form || !form_whole, "form {form_text:?}");
                assert!(multi || !multi_whole, "multipart {text:?}");
            } else {
                assert_eq!(form, form_whole, "form {form_text:?}");
                assert_eq!(multi, multi_whole, "multipart {text:?}");
            }
            if round % 50 == 0 {
                same_in_pieces(MULTI, &body);
            }
        }
        assert!((500..19_500).contains(&forms), "{forms}");
        assert!((300..19_700).contains(&multis), "{multis}");
    }

    /// Names inside names (the multipart scanner follows few at once).
    #[test]
    fn nested_multipart_names_agree_with_the_whole_body_check() {
        let pieces: &[&[u8]] = &[
            b"name",
            b"name=",
            b"name*=",
            b"=",
            b"*",
            b"'",
            b"\"",
            b"[",
            b"_",
            b"method",
            b"override",
            b" ",
            b"x",
            b"%5F",
            b";",
            b"$",
        ];
        let mut rng = Rng(0x2545_F491_4F6C_DD1D);
        let mut found = 0;
        for round in 0..20_000 {
            let body = random_body(&mut rng, pieces, 40);
            let text = String::from_utf8_lossy(&body);
            let whole = multipart_override(&text).is_some();
            assert_eq!(scan(MULTI, &body).is_some(), whole, "{text:?}");
            found += usize::from(whole);
            if round % 100 == 0 {
                same_in_pieces(MULTI, &body);
            }
        }
        // Both answers are well represented.
        assert!((1_000..19_000).contains(&found), "{found}");
    }

    #[test]
    fn json_scanner_agrees_with_the_whole_body_check() {
        let keys = [
            "_method",
            "method",
            "a",
            "_METHOD",
            " _method",
            "$method",
            "x\"y",
            "b\\",
            "\u{1F600}",
            "_method_override",
            "my_method",
            "_method[]",
            "\u{a0}_method",
            "é",
        ];
        let mut rng = Rng(0xD1B5_4A32_D192_ED03);
        fn value(rng: &mut Rng, keys: &[&str], depth: u32) -> serde_json::Value {
            match rng.next() % if depth > 2 { 3 } else { 5 } {
                0 => serde_json::Value::from(*rng.pick(keys)),
                1 => serde_json::Value::from(rng.next() % 100),
                2 => serde_json::Value::Null,
                3 => (0..rng.next() % 3)
                    .map(|_| value(rng, keys, depth + 1))
                    .collect(),
                _ => object(rng, keys, depth + 1),
            }
        }
        fn object(rng: &mut Rng, keys: &[&str], depth: u32) -> serde_json::Value {
            let map: serde_json::Map<String, serde_json::Value> = (0..rng.next() % 4)
                .map(|_| (rng.pick(keys).to_string(), value(rng, keys, depth)))
                .collect();
            serde_json::Value::Object(map)
        }
        let mut found = 0;
        for round in 0..3_000 {
            let doc = if round % 5 == 0 {
                value(&mut rng, &keys, 0)
            } else {
                object(&mut rng, &keys, 0)
            };
            let mut body = if round % 2 == 0 {
                serde_json::to_vec(&doc).unwrap()
            } else {
                serde_json::to_vec_pretty(&doc).unwrap()
            };
            // Keys written with escapes, as a client may.
            if round % 3 == 0 {
                body = String::from_utf8(body)
                    .unwrap()
                    .replace("_m", "\\u005fm")
                    .into_bytes();
            }
            let whole = json_override(&body).is_some();
            let streamed = scan(JSON, &body).is_some();
            assert_eq!(streamed, whole, "{}", String::from_utf8_lossy(&body));
            found += usize::from(whole);
            if round % 20 == 0 {
                same_in_pieces(JSON, &body);
            }
        }
        assert!((150..2_850).contains(&found), "{found}");
    }
}

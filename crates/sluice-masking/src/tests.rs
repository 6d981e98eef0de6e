//! Data-driven tests of the masking engine.

use super::*;
use crate::detectors::{base64url_decode, iban_checksum, luhn};
use crate::engine::compile_unoptimized;
use serde_json::json;
use std::borrow::Cow;

const KEY: &[u8] = b"test-key-0123456789abcdef";

const JWT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
const PEM: &str = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\nVTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u+qKhbwKfBstIs+bMY2Zkp18gnTxK\n-----END RSA PRIVATE KEY-----";

fn config(toml_text: &str) -> MaskingConfig {
    toml::from_str(toml_text).unwrap()
}

fn engine(toml_text: &str) -> MaskingEngine {
    compile(&config(toml_text), Some(KEY)).unwrap()
}

fn all_detectors() -> MaskingEngine {
    engine(r#"detectors = ["default", "ipv4", "ipv6"]"#)
}

fn mask(e: &MaskingEngine, text: &str) -> String {
    e.mask_text(text).0.into_owned()
}

/// (detector, input, expected with `redact`). An expected equal to the input
/// is a near miss that must be left alone.
const DETECTOR_TABLE: &[(&str, &str, &str)] = &[
    // email
    ("email", "mail john.doe@example.com now", "mail [email] now"),
    ("email", "a+tag@sub.example.co.uk", "[email]"),
    ("email", "Kontakt: jürgen.müller@beispiel.de.", "Kontakt: [email]."),
    ("email", "...john@example.com", "...[email]"),
    ("email", "<JOHN@EXAMPLE.ORG>", "<[email]>"),
    ("email", "user@localhost", "user@localhost"),
    ("email", "a@b.c", "a@b.c"),
    ("email", "@example.com", "@example.com"),
    // An invalid local part: the valid address at its end is still masked.
    ("email", "john..doe@example.com", "john..[email]"),
    ("email", "john@-example.com", "john@-example.com"),
    // credit_card: Luhn and issuer prefixes
    ("credit_card", "card 4111 1111 1111 1111 exp", "card [credit_card] exp"),
    ("credit_card", "4111-1111-1111-1111", "[credit_card]"),
    ("credit_card", "4111111111111111", "[credit_card]"),
    ("credit_card", "5555555555554444", "[credit_card]"),
    ("credit_card", "2223003122003222", "[credit_card]"),
    ("credit_card", "378282246310005", "[credit_card]"),
    ("credit_card", "3782 822463 10005", "[credit_card]"),
    ("credit_card", "6011111111111117", "[credit_card]"),
    ("credit_card", "3530111333300000", "[credit_card]"),
    ("credit_card", "30569309025904", "[credit_card]"),
    ("credit_card", "4111111111111111 12", "[credit_card] 12"),
    ("credit_card", "(4111111111111111)", "([credit_card])"),
    ("credit_card", "4111111111111112", "4111111111111112"),
    ("credit_card", "4111 1111 1111 1112", "4111 1111 1111 1112"),
    ("credit_card", "4111 1111-1111 1111", "4111 1111-1111 1111"),
    ("credit_card", "0000000000000000", "0000000000000000"),
    ("credit_card", "id 79927398713", "id 79927398713"),
    ("credit_card", "41111111111111111111", "41111111111111111111"),
    ("credit_card", "x4111111111111111", "x4111111111111111"),
    ("credit_card", "41 11 11 11 11 11 11 11", "41 11 11 11 11 11 11 11"),
    // us_ssn: area, group and serial rules
    ("us_ssn", "ssn 123-45-6789.", "ssn [us_ssn]."),
    ("us_ssn", "078 05 1120", "[us_ssn]"),
    ("us_ssn", "000-12-3456", "000-12-3456"),
    ("us_ssn", "666-12-3456", "666-12-3456"),
    ("us_ssn", "912-34-5678", "912-34-5678"),
    ("us_ssn", "123-00-4567", "123-00-4567"),
    ("us_ssn", "123-45-0000", "123-45-0000"),
    ("us_ssn", "123456789", "123456789"),
    ("us_ssn", "123-45-67890", "123-45-67890"),
    ("us_ssn", "1123-45-6789", "1123-45-6789"),
    // phone: E.164 and national formats
    ("phone", "call +1 415 555 2671 now", "call [phone] now"),
    ("phone", "+14155552671", "[phone]"),
    ("phone", "+44 20 7946 0958", "[phone]"),
    ("phone", "+49 30 12345678", "[phone]"),
    ("phone", "+1 (415) 555-2671", "[phone]"),
    ("phone", "(415) 555-2671", "[phone]"),
    ("phone", "415-555-2671", "[phone]"),
    ("phone", "415.555.2671", "[phone]"),
    ("phone", "1-415-555-2671", "[phone]"),
    ("phone", "020 7946 0958", "[phone]"),
    ("phone", "07700 900123", "[phone]"),
    ("phone", "01 23 45 67 89", "[phone]"),
    ("phone", "4155552671", "4155552671"),
    ("phone", "2024-01-15", "2024-01-15"),
    ("phone", "05-10-2023", "05-10-2023"),
    ("phone", "v1.2.3", "v1.2.3"),
    ("phone", "+1 23", "+1 23"),
    ("phone", "123-456-7890", "123-456-7890"),
    ("phone", "12:30:45", "12:30:45"),
    ("phone", "+1234567890123456789", "+1234567890123456789"),
    // iban: country length and mod-97
    ("iban", "IBAN DE89 3704 0044 0532 0130 00.", "IBAN [iban]."),
    ("iban", "DE89370400440532013000", "[iban]"),
    ("iban", "GB82 WEST 1234 5698 7654 32", "[iban]"),
    ("iban", "FR1420041010050500013M02606", "[iban]"),
    ("iban", "NL91ABNA0417164300", "[iban]"),
    ("iban", "DE89370400440532013000 EUR", "[iban] EUR"),
    ("iban", "DE89 3704 0044 0532 0130 01", "DE89 3704 0044 0532 0130 01"),
    ("iban", "XX89370400440532013000", "XX89370400440532013000"),
    ("iban", "DE8937040044053201300", "DE8937040044053201300"),
    ("iban", "DE893704004405320130001", "DE893704004405320130001"),
    // aws_access_key
    ("aws_access_key", "key=AKIAIOSFODNN7EXAMPLE;", "key=[aws_access_key];"),
    ("aws_access_key", "ASIAY34FZKBOKMUTVV7A", "[aws_access_key]"),
    ("aws_access_key", "AKIAIOSFODNN7EXAMPL", "AKIAIOSFODNN7EXAMPL"),
    ("aws_access_key", "XAKIAIOSFODNN7EXAMPLE", "XAKIAIOSFODNN7EXAMPLE"),
    // aws_secret_key: the value after a key name
    (
        "aws_secret_key",
        "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "aws_secret_access_key = [aws_secret_key]",
    ),
    (
        "aws_secret_key",
        r#"{"SecretAccessKey": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}"#,
        r#"{"SecretAccessKey": "[aws_secret_key]"}"#,
    ),
    (
        "aws_secret_key",
        "export AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "export AWS_SECRET_ACCESS_KEY=[aws_secret_key]",
    ),
    (
        "aws_secret_key",
        "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEYX",
        "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEYX",
    ),
    // Without a key name, 40 base64 characters are not enough evidence.
    (
        "aws_secret_key",
        "secret: 9dQz7Xk2LmP4vR8sT1wY6bN3cF5hJ0gA/eU+iO2q end",
        "secret: 9dQz7Xk2LmP4vR8sT1wY6bN3cF5hJ0gA/eU+iO2q end",
    ),
    (
        "aws_secret_key",
        "sha1 da39a3ee5e6b4b0d3255bfef95601890afd80709",
        "sha1 da39a3ee5e6b4b0d3255bfef95601890afd80709",
    ),
    // github_token
    ("github_token", "token ghp_A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8", "token [github_token]"),
    (
        "github_token",
        "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123",
        "[github_token]",
    ),
    ("github_token", "ghp_short", "ghp_short"),
    ("github_token", "xghp_A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8", "xghp_A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"),
    // gitlab_token
    ("gitlab_token", "glpat-Ab3dEf6hIj9kLm2nOp5q.", "[gitlab_token]."),
    ("gitlab_token", "glrt-t1_Ab3dEf6hIj9kLm2nOp5q", "[gitlab_token]"),
    ("gitlab_token", "glpat-short", "glpat-short"),
    // slack_token
    ("slack_token", "xoxb-1234567890-0987654321-AbCdEfGhIjKl", "[slack_token]"),
    ("slack_token", "xapp-1-A0123456789-0123456789-abcdef", "[slack_token]"),
    (
        "slack_token",
        "https://hooks.slack.com/services/T0000/B0000/XXXXXXXXXXXXXXXX",
        "https://hooks.slack.com/[slack_token]",
    ),
    ("slack_token", "xoxb-123", "xoxb-123"),
    // jwt: base64url header with "alg"
    ("jwt", "Authorization: Bearer JWT_TOKEN", "Authorization: Bearer [jwt]"),
    (
        "jwt",
        "eyJub3RhIjoiand0In0.eyJhIjoxfQ.c2lnbmF0dXJl",
        "eyJub3RhIjoiand0In0.eyJhIjoxfQ.c2lnbmF0dXJl",
    ),
    ("jwt", "eyJxQ2Zz9Pk1mR7.eyJhIjoxfQ.abc", "eyJxQ2Zz9Pk1mR7.eyJhIjoxfQ.abc"),
    ("jwt", "keyJhbGciOiJIUzI1NiJ9.eyJhIjoxfQ.c2ln", "keyJhbGciOiJIUzI1NiJ9.eyJhIjoxfQ.c2ln"),
    // private_key
    ("private_key", "key:\nPEM_BLOCK\ndone", "key:\n[private_key]\ndone"),
    (
        "private_key",
        "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAu1SU1LfVLPHCozMxH2Mo\n-----END PUBLIC KEY-----",
        "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAu1SU1LfVLPHCozMxH2Mo\n-----END PUBLIC KEY-----",
    ),
    (
        "private_key",
        "if line == \"-----BEGIN PRIVATE KEY-----\" {",
        "if line == \"-----BEGIN PRIVATE KEY-----\" {",
    ),
    (
        "private_key",
        r#"{"key": "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7\n-----END PRIVATE KEY-----\n"}"#,
        r#"{"key": "[private_key]\n"}"#,
    ),
    // url_password: only the secret part
    (
        "url_password",
        "postgres://app:s3cr3t@db.internal:5432/app",
        "postgres://app:[url_password]@db.internal:5432/app",
    ),
    (
        "url_password",
        "redis://:hunter2@cache:6379",
        "redis://:[url_password]@cache:6379",
    ),
    (
        "url_password",
        "host=db user=app password=s3cr3t dbname=app",
        "host=db user=app password=[url_password] dbname=app",
    ),
    (
        "url_password",
        "Server=db;User Id=sa;Password='p@ss;word';",
        "Server=db;User Id=sa;Password='[url_password]';",
    ),
    ("url_password", "PGPASSWORD=hunter2 psql", "PGPASSWORD=[url_password] psql"),
    (
        "url_password",
        r#"{"db_password": "hunter2", "user": "app"}"#,
        r#"{"db_password": "[url_password]", "user": "app"}"#,
    ),
    ("url_password", "https://example.com/a:b@c", "https://example.com/a:b@c"),
    ("url_password", "postgres://app@db/app", "postgres://app@db/app"),
    ("url_password", "password=", "password="),
    // ipv4 / ipv6 (opt-in)
    ("ipv4", "from 10.0.0.1 port", "from [ipv4] port"),
    ("ipv4", "192.168.1.254/24", "[ipv4]/24"),
    ("ipv4", "version 1.2.3.4.5", "version 1.2.3.4.5"),
    ("ipv4", "256.1.1.1", "256.1.1.1"),
    ("ipv4", "01.2.3.4", "01.2.3.4"),
    ("ipv6", "addr 2001:db8::8a2e:370:7334 ok", "addr [ipv6] ok"),
    ("ipv6", "fe80::1", "[ipv6]"),
    ("ipv6", "gateway fe80::1.", "gateway [ipv6]."),
    ("ipv6", "at fe80::1: down", "at [ipv6]: down"),
    ("ipv6", "[::1]:8080", "[[ipv6]]:8080"),
    ("ipv6", "::ffff:192.0.2.128", "[ipv6]"),
    ("ipv6", "12:30:45", "12:30:45"),
    ("ipv6", "use std::net::Ipv6Addr", "use std::net::Ipv6Addr"),
    ("ipv6", "a::b", "a::b"),
    ("ipv6", "00:1a:2b:3c:4d:5e", "00:1a:2b:3c:4d:5e"),
];

fn expand(s: &str) -> String {
    s.replace("JWT_TOKEN", JWT).replace("PEM_BLOCK", PEM)
}

#[test]
fn detector_table_alone() {
    // Each detector on its own: its true positives and near misses.
    let mut failures = Vec::new();
    for (detector, input, expected) in DETECTOR_TABLE {
        let e = engine(&format!("detectors = [{detector:?}]"));
        let (input, expected) = (expand(input), expand(expected));
        let (out, counts) = e.mask_text(&input);
        let masked = expected.matches(&format!("[{detector}]")).count() as u64;
        if out != expected || counts.get(detector) != masked || counts.total() != masked {
            failures.push(format!(
                "{detector}: {input:?} -> {out:?} {counts:?}, want {expected:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn detector_table_together() {
    // All detectors at once: no other detector claims a near miss or steals a match.
    let e = all_detectors();
    let mut failures = Vec::new();
    for (detector, input, expected) in DETECTOR_TABLE {
        let (input, expected) = (expand(input), expand(expected));
        let out = mask(&e, &input);
        if out != expected {
            failures.push(format!(
                "{detector}: {input:?} -> {out:?}, want {expected:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn validators() {
    assert!(luhn(b"4111111111111111"));
    assert!(luhn(b"79927398713"));
    assert!(!luhn(b"4111111111111112"));
    assert!(iban_checksum(b"DE89370400440532013000"));
    assert!(!iban_checksum(b"DE89370400440532013001"));
    assert_eq!(
        base64url_decode(b"eyJhbGciOiJub25lIn0").unwrap(),
        br#"{"alg":"none"}"#
    );
    assert_eq!(base64url_decode(b"YQ").unwrap(), b"a");
    assert!(base64url_decode(b"a").is_none());
    assert!(base64url_decode(b"a+b/").is_none());
}

/// An independent HMAC-SHA256 (RFC 2104) over sha2, to check the `hash` style.
fn reference_hash(key: &[u8], data: &[u8]) -> String {
    use sha2_011::{Digest, Sha256};
    let mut k = [0u8; 64];
    k[..key.len()].copy_from_slice(key);
    let mut inner = Sha256::new();
    inner.update(k.iter().map(|b| b ^ 0x36).collect::<Vec<_>>());
    inner.update(data);
    let mut outer = Sha256::new();
    outer.update(k.iter().map(|b| b ^ 0x5c).collect::<Vec<_>>());
    outer.update(inner.finalize());
    hex::encode(outer.finalize())[..12].to_string()
}

#[test]
fn styles() {
    let h = |v: &str| reference_hash(KEY, v.as_bytes());
    // (style, detector, input, expected)
    let table: Vec<(&str, &str, &str, String)> = vec![
        (
            "redact",
            "email",
            "to john.doe@example.com",
            "to [email]".into(),
        ),
        (
            "partial",
            "email",
            "to john.doe@example.com",
            "to ****@example.com".into(),
        ),
        (
            "partial",
            "credit_card",
            "4111 1111 1111 1111",
            "**** **** **** 1111".into(),
        ),
        (
            "partial",
            "credit_card",
            "4111111111111111",
            "************1111".into(),
        ),
        (
            "partial",
            "credit_card",
            "3782-822463-10005",
            "****-******-*0005".into(),
        ),
        ("partial", "us_ssn", "123-45-6789", "***-**-6789".into()),
        (
            "partial",
            "phone",
            "+1 (415) 555-2671",
            "+* (***) ***-2671".into(),
        ),
        (
            "partial",
            "iban",
            "DE89 3704 0044 0532 0130 00",
            "**** **** **** **** **30 00".into(),
        ),
        (
            "partial",
            "github_token",
            "ghp_A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8",
            "ghp_…".into(),
        ),
        (
            "partial",
            "url_password",
            "postgres://app:s3cr3t@db/app",
            "postgres://app:s3…@db/app".into(),
        ),
        (
            "hash",
            "email",
            "to john.doe@example.com",
            format!("to [email:{}]", h("john.doe@example.com")),
        ),
        (
            "hash",
            "url_password",
            "password=hunter2",
            format!("password=[url_password:{}]", h("hunter2")),
        ),
        (
            "hash",
            "credit_card",
            "4111 1111 1111 1111",
            format!("[credit_card:{}]", h("4111 1111 1111 1111")),
        ),
        // `null` inside free text reads as the placeholder.
        (
            "null",
            "email",
            "to john.doe@example.com",
            "to [email]".into(),
        ),
        ("null", "us_ssn", "ssn 123-45-6789", "ssn [us_ssn]".into()),
    ];
    for (style, detector, input, expected) in table {
        let e = engine(&format!("detectors = [{detector:?}]\nstyle = {style:?}"));
        assert_eq!(mask(&e, input), expected, "{style} {detector}: {input:?}");
        // The same through `styles`, with another default.
        let e = engine(&format!(
            "detectors = [{detector:?}]\nstyle = \"redact\"\nstyles = {{ {detector} = {style:?} }}"
        ));
        assert_eq!(mask(&e, input), expected, "styles.{detector} = {style}");
    }
}

#[test]
fn hash_is_stable_and_keyed() {
    let cfg = config(
        "detectors = [\"email\"]\nstyle = \"hash\"\nhash_key = { env = \"SLUICE_TEST_MASK_KEY\" }",
    );
    let a = compile(&cfg, Some(KEY)).unwrap();
    let b = compile(&cfg, Some(KEY)).unwrap();
    let other = compile(&cfg, Some(b"another-key-0123456789")).unwrap();
    let text = "x@example.com y@example.com x@example.com";
    let out = mask(&a, text);
    let parts: Vec<&str> = out.split(' ').collect();
    assert_eq!(parts[0], parts[2], "equal values hash alike");
    assert_ne!(parts[0], parts[1]);
    assert_eq!(out, mask(&b, text), "stable across engines with one key");
    assert_ne!(out, mask(&other, text), "keyed");
    assert_eq!(parts[0].len(), "[email:]".len() + 12);
}

#[test]
fn mask_value_styles() {
    let e = engine("columns = [{ columns = [\"ssn\"] }]");
    let h = reference_hash(KEY, b"123-45-6789");
    for (style, value, expected) in [
        (
            Style::Redact,
            "123-45-6789",
            Masked::Text("[masked]".into()),
        ),
        (
            Style::Partial,
            "123-45-6789",
            Masked::Text("***-**-6789".into()),
        ),
        (
            Style::Partial,
            "jane@example.org",
            Masked::Text("****@example.org".into()),
        ),
        (
            Style::Partial,
            "hunter2-secret",
            Masked::Text("hunt…".into()),
        ),
        (Style::Partial, "abc", Masked::Text("a…".into())),
        (Style::Partial, "", Masked::Text("…".into())),
        (
            Style::Hash,
            "123-45-6789",
            Masked::Text(format!("[masked:{h}]")),
        ),
        (Style::Null, "123-45-6789", Masked::Null),
    ] {
        assert_eq!(
            e.mask_value(value, Some(style)),
            expected,
            "{style} {value:?}"
        );
    }
    assert_eq!(
        e.mask_value("x", None),
        Masked::Text("[masked]".into()),
        "default style"
    );
    assert_eq!(
        e.mask_value_as("ssn-columns", "123-45-6789", Style::Hash),
        Masked::Text(format!("[ssn-columns:{h}]"))
    );
    // A column hash lines up with the detector hash of the same value.
    let d = engine("detectors = [\"us_ssn\"]\nstyle = \"hash\"");
    assert_eq!(mask(&d, "123-45-6789"), format!("[us_ssn:{h}]"));
}

#[test]
fn mask_field_null() {
    let e = engine("detectors = [\"email\", \"us_ssn\"]\nstyles = { email = \"null\" }");
    // A value that is entirely a null-styled match is NULL.
    let (v, c) = e.mask_field("ann@example.com");
    assert_eq!((v, c.get("email")), (None, 1));
    // Inside other text, the placeholder.
    let (v, _) = e.mask_field("mail ann@example.com");
    assert_eq!(v.as_deref(), Some("mail [email]"));
    let (v, c) = e.mask_field("078-05-1120");
    assert_eq!((v.as_deref(), c.get("us_ssn")), (Some("[us_ssn]"), 1));
    assert!(matches!(e.mask_field("nothing").0, Some(Cow::Borrowed(_))));
    // In JSON, such a string becomes null.
    let mut doc =
        json!({"email": "ann@example.com", "note": "ann@example.com!", "ssn": "078-05-1120"});
    let counts = e.mask_json(&mut doc, &[]);
    assert_eq!(
        doc,
        json!({"email": null, "note": "[email]!", "ssn": "[us_ssn]"})
    );
    assert_eq!(counts.total(), 3);
}

#[test]
fn overlaps() {
    let e = all_detectors();
    for (input, expected) in [
        // The URL's password, not an email made of `hunter2@db.example.com`.
        (
            "postgres://admin:hunter2@db.example.com/app",
            "postgres://admin:[url_password]@db.example.com/app",
        ),
        // Longest wins at one start: a card, not a phone number inside it.
        ("4111 1111 1111 1111", "[credit_card]"),
        // An email whose local part is a card number is an email.
        ("4111111111111111@example.com", "[email]"),
        // Adjacent matches.
        ("a@b.io,c@d.io", "[email],[email]"),
        ("123-45-6789 4111111111111111", "[us_ssn] [credit_card]"),
        // Earliest wins: the IBAN starts before the digit groups inside it.
        ("DE89 3704 0044 0532 0130 00", "[iban]"),
        // An IP address is not a phone number, and a phone not an IP.
        ("10.0.0.1 and 415.555.2671", "[ipv4] and [phone]"),
        // A phone number that ran on into the next secret is cut back.
        ("+44 20 7946 0958 078-05-1120", "[phone] [us_ssn]"),
        ("+1 415 555 2671 4111111111111111", "[phone] [credit_card]"),
        // A JWT in a URL's query.
        (
            "https://x.io/cb?token=JWT_TOKEN&a=1",
            "https://x.io/cb?token=[jwt]&a=1",
        ),
    ] {
        assert_eq!(mask(&e, &expand(input)), expected, "{input:?}");
    }
    // Custom detectors win ties with built-ins; longer built-ins still win.
    let e = engine(
        r#"
        detectors = ["us_ssn", "credit_card"]
        [[custom]]
        name = "internal_id"
        regex = "[0-9]{3}-[0-9]{2}-[0-9]{4}"
        [[custom]]
        name = "bin"
        regex = "4111"
        "#,
    );
    assert_eq!(mask(&e, "123-45-6789"), "[internal_id]");
    assert_eq!(mask(&e, "4111111111111111"), "[credit_card]");
    assert_eq!(mask(&e, "bin 4111 x"), "bin [bin] x");
    // A match that runs on into an IBAN is cut back before it, even when
    // it covers all of the IBAN's candidate (its pattern finds only the
    // start; the validator walks the rest): the whole IBAN is masked.
    let e = engine(
        r#"
        detectors = ["iban"]
        [[custom]]
        name = "ref"
        regex = "REF-(?:[A-Z]{2}[0-9]{2} [0-9]{4})?"
        "#,
    );
    assert_eq!(
        mask(&e, "REF-DE89 3704 0044 0532 0130 00 ok"),
        "[ref][iban] ok"
    );
}

#[test]
fn unicode_around_matches() {
    let e = all_detectors();
    for (input, expected) in [
        ("😀john@example.com😀", "😀[email]😀"),
        (
            "名前: 田中 電話: +81 3-1234-5678 メール: tanaka@example.jp",
            "名前: 田中 電話: [phone] メール: [email]",
        ),
        ("café 4111 1111 1111 1111 naïve", "café [credit_card] naïve"),
        ("«123-45-6789»", "«[us_ssn]»"),
        (
            "שלום AKIAIOSFODNN7EXAMPLE עולם",
            "שלום [aws_access_key] עולם",
        ),
        (
            "Ünïcödé without secrets stays borrowed",
            "Ünïcödé without secrets stays borrowed",
        ),
    ] {
        assert_eq!(mask(&e, input), expected, "{input:?}");
    }
    // Partial keeps multi-byte text intact.
    let e = engine("detectors = [\"email\"]\nstyle = \"partial\"");
    assert_eq!(mask(&e, "→ jürgen@bücher.de ←"), "→ ****@bücher.de ←");
}

#[test]
fn fast_path_borrows() {
    let e = all_detectors();
    let text = "nothing to see here: 42, 3.14, 2024-01-15, v1.2.3";
    let (out, counts) = e.mask_text(text);
    assert!(matches!(out, Cow::Borrowed(_)));
    assert!(counts.is_empty());
    let (out, _) = e.mask_bytes(b"\xff\xfe binary \x00 data");
    assert!(matches!(out, Cow::Borrowed(_)));
    // Masking off: everything is borrowed.
    let off = compile(&<MaskingConfig>::default(), None).unwrap();
    assert!(!off.is_active());
    assert!(matches!(
        off.mask_text("john@example.com").0,
        Cow::Borrowed(_)
    ));
}

#[test]
fn counts_merge() {
    let e = all_detectors();
    let (_, mut a) = e.mask_text("a@b.io c@d.io 123-45-6789");
    let (_, b) = e.mask_text("e@f.io");
    assert_eq!((a.get("email"), a.get("us_ssn")), (2, 1));
    a.merge(&b);
    assert_eq!((a.get("email"), a.total()), (3, 4));
    assert_eq!(
        serde_json::to_value(&a).unwrap(),
        json!({"email": 3, "us_ssn": 1})
    );
}

#[test]
fn custom_detectors() {
    let e = engine(
        r#"
        style = "redact"
        [[custom]]
        name = "employee_id"
        regex = "EMP-[0-9]{6}"
        style = "hash"
        [[custom]]
        name = "project"
        words = ["Project Falcon", "Project Osprey", "Falcon"]
        [[custom]]
        name = "symbols"
        words = ["c++ (legacy)", "a.b*"]
        "#,
    );
    let h = reference_hash(KEY, b"EMP-004211");
    for (input, expected) in [
        ("by EMP-004211.", format!("by [employee_id:{h}].")),
        ("EMP-12345", "EMP-12345".into()),
        (
            "about project falcon and PROJECT OSPREY",
            "about [project] and [project]".into(),
        ),
        // Longest word wins; word boundaries hold.
        ("Project Falcon", "[project]".into()),
        ("Falconry", "Falconry".into()),
        ("the falcon", "the [project]".into()),
        // Regex metacharacters in words are literal.
        ("uses c++ (legacy) code", "uses [symbols] code".into()),
        ("a.b* and aXb*", "[symbols] and aXb*".into()),
    ] {
        assert_eq!(mask(&e, input), expected, "{input:?}");
    }
}

#[test]
fn column_rules() {
    let e = engine(
        r#"
        style = "redact"
        styles = { secrets = "hash" }
        [[columns]]
        name = "ssn-columns"
        connections = ["appdb"]
        columns = ["users.ssn", "public.customers.tax_id"]
        style = "null"
        [[columns]]
        name = "secrets"
        columns = ["*.password*", "api_key", "tok?n"]
        [[columns]]
        columns = ["billing.*.card_number"]
        "#,
    );
    // (connection, table, column, expected rule and style)
    type Row<'a> = (&'a str, Option<&'a str>, &'a str, Option<(&'a str, Style)>);
    let table: &[Row] = &[
        (
            "appdb",
            Some("users"),
            "ssn",
            Some(("ssn-columns", Style::Null)),
        ),
        (
            "appdb",
            Some("public.users"),
            "ssn",
            Some(("ssn-columns", Style::Null)),
        ),
        (
            "appdb",
            Some("Audit.USERS"),
            "SSN",
            Some(("ssn-columns", Style::Null)),
        ),
        ("appdb", Some("users"), "ssn_hash", None),
        ("appdb", Some("accounts"), "ssn", None),
        ("otherdb", Some("users"), "ssn", None),
        ("appdb", None, "ssn", None),
        (
            "appdb",
            Some("public.customers"),
            "tax_id",
            Some(("ssn-columns", Style::Null)),
        ),
        (
            "appdb",
            Some("customers"),
            "tax_id",
            Some(("ssn-columns", Style::Null)),
        ),
        ("appdb", Some("staging.customers"), "tax_id", None),
        (
            "otherdb",
            Some("users"),
            "password_hash",
            Some(("secrets", Style::Hash)),
        ),
        (
            "otherdb",
            Some("s.users"),
            "PasswordReset",
            Some(("secrets", Style::Hash)),
        ),
        ("otherdb", Some("s.users"), "db_password", None),
        ("otherdb", None, "password", None),
        ("otherdb", None, "API_KEY", Some(("secrets", Style::Hash))),
        (
            "otherdb",
            Some("vault.keys"),
            "api_key",
            Some(("secrets", Style::Hash)),
        ),
        ("otherdb", None, "token", Some(("secrets", Style::Hash))),
        ("otherdb", None, "tokens", None),
        (
            "x",
            Some("billing.cards"),
            "card_number",
            Some(("columns[2]", Style::Redact)),
        ),
        (
            "x",
            Some("cards"),
            "card_number",
            Some(("columns[2]", Style::Redact)),
        ),
        ("x", Some("public.cards"), "card_number", None),
    ];
    for (conn, tbl, col, expected) in table {
        assert_eq!(
            e.column_rule(conn, *tbl, col),
            *expected,
            "{conn} {tbl:?} {col}"
        );
    }
}

/// Pushes `chunks` through a stream masker; returns the output and counts.
fn stream_all(e: &MaskingEngine, chunks: &[&[u8]]) -> (Vec<u8>, MaskCounts) {
    let mut s = e.stream();
    let mut out = Vec::new();
    for c in chunks {
        out.extend(s.push(c));
        assert!(s.pending() <= e.holdback(), "hold-back bound");
    }
    let (tail, counts) = s.finish_counted();
    out.extend(tail);
    (out, counts)
}

/// A tiny deterministic PRNG (xorshift64*), to avoid a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn stream_split_at_every_offset() {
    let e = all_detectors();
    let text = expand(
        "user jane.doe@example.com paid with 4111 1111 1111 1111; token JWT_TOKEN, \
         db postgres://app:s3cr3t@db:5432/app from 10.1.2.3 — ok ✓",
    );
    let (expected, counts) = e.mask_text(&text);
    let bytes = text.as_bytes();
    for k in 0..=bytes.len() {
        let (out, c) = stream_all(&e, &[&bytes[..k], &bytes[k..]]);
        assert_eq!(String::from_utf8_lossy(&out), expected, "split at {k}");
        assert_eq!(c, counts, "counts, split at {k}");
    }
    // Three pieces, and one byte at a time.
    for k in (0..bytes.len()).step_by(7) {
        let m = (k + 13).min(bytes.len());
        let (out, _) = stream_all(&e, &[&bytes[..k], &bytes[k..m], &bytes[m..]]);
        assert_eq!(
            String::from_utf8_lossy(&out),
            expected,
            "split at {k} and {m}"
        );
    }
    let singles: Vec<&[u8]> = bytes.chunks(1).collect();
    assert_eq!(
        String::from_utf8_lossy(&stream_all(&e, &singles).0),
        expected
    );
}

#[test]
fn stream_holdback_bound() {
    // With unbounded detectors (emails, JWTs, …) the bound is the cap.
    let e = all_detectors();
    assert_eq!(e.holdback(), MAX_HOLDBACK);
    let line = b"plain log line without anything sensitive in it\n";
    let mut s = e.stream();
    let mut released = 0;
    for i in 1..=400 {
        released += s.push(line).len();
        assert!(s.pending() <= MAX_HOLDBACK);
        assert_eq!(
            released + s.pending(),
            i * line.len(),
            "nothing lost or duplicated"
        );
    }
    assert!(released >= 400 * line.len() - MAX_HOLDBACK);
    assert_eq!(s.flush().len() + released, 400 * line.len());
    assert_eq!(s.pending(), 0);
    // With bounded detectors only, the bound is their longest match.
    let e = engine(r#"detectors = ["credit_card", "us_ssn"]"#);
    assert_eq!(
        e.holdback(),
        128,
        "the overlap look-ahead; their longest match is 37"
    );
    let mut s = e.stream();
    let data = "0123456789 ".repeat(30);
    let out = s.push(data.as_bytes());
    assert_eq!(s.pending(), 128);
    assert_eq!(out, &data.as_bytes()[..data.len() - 128]);
    assert_eq!(s.finish(), &data.as_bytes()[data.len() - 128..]);
    // Masking off: nothing is held.
    let off = MaskingEngine::default();
    let mut s = off.stream();
    assert_eq!(s.push(b"john@example.com"), b"john@example.com");
}

#[test]
fn stream_keeps_binary_bytes() {
    let e = all_detectors();
    let mut input = vec![0xff, 0xfe, 0x00, b' '];
    input.extend_from_slice(b"john@example.com");
    input.extend_from_slice(&[0xc3, b' ', 0x80, 0x81]);
    input.extend_from_slice("é 123-45-6789".as_bytes());
    input.extend_from_slice(&[0xf0, 0x9f]);
    let mut expected = vec![0xff, 0xfe, 0x00, b' '];
    expected.extend_from_slice(b"[email]");
    expected.extend_from_slice(&[0xc3, b' ', 0x80, 0x81]);
    expected.extend_from_slice("é [us_ssn]".as_bytes());
    expected.extend_from_slice(&[0xf0, 0x9f]);
    assert_eq!(e.mask_bytes(&input).0.as_ref(), expected.as_slice());
    for k in 0..=input.len() {
        assert_eq!(
            stream_all(&e, &[&input[..k], &input[k..]]).0,
            expected,
            "split at {k}"
        );
    }
}

#[test]
fn stream_long_secrets_past_the_holdback() {
    let e = all_detectors();
    // A 9 KB JWT and an 8 KB PEM key: longer than the hold-back.
    let payload: String = (0..9000).map(|i| (b'A' + (i % 26) as u8) as char).collect();
    let jwt = format!("eyJhbGciOiJIUzI1NiJ9.{payload}.c2lnbmF0dXJlc2lnbmF0dXJl");
    let body: String = (0..100)
        .map(|i| {
            format!(
                "{}\n",
                "MIIJQgIBADANBgkqhkiG9w0BAQEFAASCCSwwggkoAgEAAoICAQC7".to_string() + &i.to_string()
            )
        })
        .collect();
    let pem = format!("-----BEGIN PRIVATE KEY-----\n{body}-----END PRIVATE KEY-----");
    let text = format!("a {jwt} b\n{pem}\nc john@example.com d");
    for chunk in [1000, 4096, 4097, 333] {
        let chunks: Vec<&[u8]> = text.as_bytes().chunks(chunk).collect();
        let (out, counts) = stream_all(&e, &chunks);
        let out = String::from_utf8_lossy(&out);
        assert!(
            !out.contains("ABCDEFGHIJ"),
            "JWT payload leaked with {chunk}-byte chunks"
        );
        assert!(
            !out.contains("MIIJQgIBADAN"),
            "key material leaked with {chunk}-byte chunks"
        );
        assert!(
            out.starts_with("a [jwt]"),
            "{chunk}: {}",
            &out[..40.min(out.len())]
        );
        assert!(out.ends_with("c [email] d"), "{chunk}");
        assert_eq!(counts.get("email"), 1);
    }
}

#[test]
fn stream_random_planted_secrets() {
    // Random filler with planted secrets, cut at random places: no secret
    // survives, and the output equals masking the whole text at once.
    let e = all_detectors();
    let secrets = [
        "jane.roe@example.org",
        "4111111111111111",
        "5555-5555-5555-4444",
        "078-05-1120",
        "+44 20 7946 0958",
        "DE89370400440532013000",
        "AKIAIOSFODNN7EXAMPLE",
        "ghp_A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8",
        JWT,
        "xoxb-1234567890-0987654321-AbCdEfGhIjKl",
    ];
    let words = [
        "the ",
        "quick ",
        "brown ",
        "fox ",
        "ünïcode ",
        "42 ",
        "\n",
        "—",
        ", ",
        "id=7 ",
    ];
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    for round in 0..200 {
        let mut text = String::new();
        let mut planted = Vec::new();
        for _ in 0..(20 + rng.below(200)) {
            if rng.below(10) == 0 {
                let secret = secrets[rng.below(secrets.len())];
                text.push_str(secret);
                planted.push(secret);
                text.push(' ');
            } else {
                text.push_str(words[rng.below(words.len())]);
            }
        }
        let bytes = text.as_bytes();
        let mut cuts: Vec<usize> = (0..rng.below(6))
            .map(|_| rng.below(bytes.len() + 1))
            .collect();
        cuts.sort_unstable();
        let mut chunks = Vec::new();
        let mut at = 0;
        for c in cuts {
            chunks.push(&bytes[at..c]);
            at = c;
        }
        chunks.push(&bytes[at..]);
        let (out, counts) = stream_all(&e, &chunks);
        let out = String::from_utf8(out).unwrap();
        for secret in &planted {
            assert!(
                !out.contains(secret),
                "round {round}: {secret} leaked in {out:?}"
            );
        }
        assert_eq!(counts.total(), planted.len() as u64, "round {round}: {out}");
        assert_eq!(out, e.mask_text(&text).0, "round {round}");
    }
}

#[test]
fn stream_flush_and_counts() {
    let e = all_detectors();
    let mut s = e.stream();
    assert!(s.push(b"$ echo john@example.com\n").is_empty(), "held back");
    assert_eq!(s.flush(), b"$ echo [email]\n");
    assert_eq!(s.push(b"$ "), b"");
    assert_eq!(s.flush(), b"$ ");
    assert_eq!(s.take_counts().get("email"), 1);
    assert!(s.counts().is_empty());
    s.push(b"ssn 123-45-");
    s.push(b"6789 done");
    assert_eq!(s.finish(), b"ssn [us_ssn] done");
}

#[test]
fn json_paths_parse() {
    for ok in [
        "$.customers[*].ssn",
        "$..password",
        "$.data.token",
        "$[0].a",
        "$['a b'].c",
        "$.*.x",
        "$..*secret*",
    ] {
        assert_eq!(JsonPath::parse(ok).unwrap().as_str(), ok);
    }
    for (bad, why) in [
        ("customers.ssn", "starts with `$`"),
        ("$", "whole document"),
        ("$.", "needs a key"),
        ("$..", "needs a key"),
        ("$[x]", "not `[*]`"),
        ("$[0", "not closed"),
        ("$a", "unexpected"),
    ] {
        let e = JsonPath::parse(bad).unwrap_err();
        assert_eq!(e.key, bad);
        assert!(e.message.contains(why), "{bad}: {}", e.message);
    }
    let p: JsonPath = serde_json::from_value(json!("$..ssn")).unwrap();
    assert_eq!(p.to_string(), "$..ssn");
    assert!(serde_json::from_value::<JsonPath>(json!("ssn")).is_err());
}

#[test]
fn json_masking() {
    let e = engine(r#"detectors = ["email", "us_ssn"]"#);
    let mut doc = json!({
        "customers": [
            {"name": "Ann", "ssn": "078-05-1120", "email": "ann@example.com", "age": 41},
            {"name": "Bob", "ssn": 123456789, "note": "mail bob@example.com"},
            {"name": "Cy", "ssn": null}
        ],
        "data": {"token": "abc", "nested": {"password": "hunter2", "deeper": [{"Password": {"x": 1}}]}},
        "index": {"jane@example.com": 1},
        "list": ["a", "b", "c"]
    });
    let paths = [
        JsonPath::parse("$.customers[*].ssn")
            .unwrap()
            .with_style(Style::Null),
        JsonPath::parse("$..password").unwrap(),
        JsonPath::parse("$.data.token")
            .unwrap()
            .with_style(Style::Partial),
        JsonPath::parse("$.list[1]").unwrap(),
    ];
    let counts = e.mask_json(&mut doc, &paths);
    assert_eq!(
        doc,
        json!({
            "customers": [
                {"name": "Ann", "ssn": null, "email": "[email]", "age": 41},
                {"name": "Bob", "ssn": null, "note": "mail [email]"},
                {"name": "Cy", "ssn": null}
            ],
            "data": {"token": "a…", "nested": {"password": "[password]", "deeper": [{"Password": "[password]"}]}},
            "index": {"[email]": 1},
            "list": ["a", "[masked]", "c"]
        })
    );
    assert_eq!(
        counts.get("$.customers[*].ssn"),
        2,
        "null stays null, uncounted"
    );
    assert_eq!(counts.get("$..password"), 2);
    assert_eq!(counts.get("$.data.token"), 1);
    assert_eq!(counts.get("email"), 3);
    assert_eq!(counts.get("us_ssn"), 0, "masked by path first");
    // Keys that mask alike keep both values.
    let mut doc = json!({"a@x.io": 1, "b@x.io": 2});
    e.mask_json(&mut doc, &[]);
    let obj = doc.as_object().unwrap();
    assert_eq!(obj.len(), 2);
    assert!(obj.contains_key("[email]") && obj.contains_key("[email]~2"));
    // Arrays are looked through by `.key`, and `[*]` covers object members.
    let mut doc =
        json!({"customers": [{"ssn": "1"}, {"ssn": "2"}], "m": {"a": {"k": 1}, "b": {"k": 2}}});
    let counts = e.mask_json(
        &mut doc,
        &[
            JsonPath::parse("$.customers.ssn").unwrap(),
            JsonPath::parse("$.m[*].k").unwrap(),
        ],
    );
    assert_eq!(counts.total(), 4);
    assert_eq!(
        doc,
        json!({"customers": [{"ssn": "[ssn]"}, {"ssn": "[ssn]"}], "m": {"a": {"k": "[k]"}, "b": {"k": "[k]"}}})
    );
}

#[test]
fn config_errors() {
    // (config, key, message fragment)
    let table = [
        (r#"detectors = ["email", "emial"]"#, "masking.detectors", "unknown detector \"emial\""),
        ("style = \"hash\"\ndetectors = [\"email\"]", "masking.hash_key", "needs a key"),
        ("styles = { email = \"hash\" }\ndetectors = [\"email\"]", "masking.hash_key", "needs a key"),
        ("styles = { emial = \"partial\" }", "masking.styles.emial", "no built-in detector"),
        ("[[custom]]\nname = \"x\"\nregex = \"(unclosed\"", "masking.custom.0.regex", "invalid regex"),
        ("[[custom]]\nname = \"x\"\nregex = \"a*\"", "masking.custom.0.regex", "empty string"),
        ("[[custom]]\nname = \"x\"\nwords = []", "masking.custom.0.words", "at least one word"),
        ("[[custom]]\nname = \"x\"\nwords = [\"a\", \" \"]", "masking.custom.0.words", "must not be empty"),
        ("[[custom]]\nname = \"x\"\nregex = \"a\"\nwords = [\"a\"]", "masking.custom.0.regex", "not both"),
        ("[[custom]]\nname = \"x\"", "masking.custom.0", "needs `regex` or `words`"),
        ("[[custom]]\nname = \"email\"\nregex = \"a\"", "masking.custom.0.name", "built-in"),
        ("[[custom]]\nname = \"bad name\"\nregex = \"a\"", "masking.custom.0.name", "not a valid"),
        (
            "[[custom]]\nname = \"x\"\nregex = \"a\"\n[[custom]]\nname = \"x\"\nregex = \"b\"",
            "masking.custom.1.name",
            "duplicate",
        ),
        ("[[columns]]\ncolumns = []", "masking.columns.0.columns", "at least one"),
        ("[[columns]]\ncolumns = [\"users.\"]", "masking.columns.0.columns", "is not `column`"),
        ("[[columns]]\ncolumns = [\"a\"]\nconnections = []", "masking.columns.0.connections", "at least one"),
        ("[[columns]]\nname = \"us_ssn\"\ncolumns = [\"a\"]", "masking.columns.0.name", "already the name"),
        (
            "[[columns]]\nname = \"r\"\ncolumns = [\"a\"]\n[[columns]]\nname = \"r\"\ncolumns = [\"b\"]",
            "masking.columns.1.name",
            "duplicate",
        ),
        ("[[columns]]\ncolumns = [\"a\"]\nstyle = \"hash\"", "masking.hash_key", "needs a key"),
    ];
    for (text, key, fragment) in table {
        let cfg = config(text);
        let e = compile(&cfg, None).unwrap_err();
        assert_eq!(e.key, key, "{text}");
        assert!(e.message.contains(fragment), "{text}: {e}");
        assert!(e.to_string().starts_with(key));
    }
    // A short key is refused; validate() needs no key value.
    let cfg = config("style = \"hash\"\ndetectors = [\"email\"]\nhash_key = { env = \"X\" }");
    assert_eq!(
        compile(&cfg, Some(b"short")).unwrap_err().key,
        "masking.hash_key"
    );
    assert!(cfg.validate().is_ok());
    assert!(config("detectors = [\"emial\"]").validate().is_err());
    // Serde-level errors: unknown keys and styles.
    assert!(toml::from_str::<MaskingConfig>("detector = []").is_err());
    let e = toml::from_str::<MaskingConfig>("style = \"scramble\"").unwrap_err();
    assert!(e.to_string().contains("scramble"), "{e}");
    assert!(toml::from_str::<MaskingConfig>("[[custom]]\nname = \"x\"\nregexp = \"a\"").is_err());
}

/// Each engine searches with its own cache on each thread, more engines than
/// a thread keeps caches for included (a reload compiles a new one).
#[test]
fn engines_taking_turns_on_threads_each_mask_as_alone() {
    let text =
        "mail a@example.com, card 4111 1111 1111 1111, ip 10.1.2.3, key AKIAIOSFODNN7EXAMPLE";
    let kinds = [
        "email",
        "credit_card",
        "ipv4",
        "aws_access_key",
        "phone",
        "us_ssn",
    ];
    let expected: Vec<String> = kinds
        .iter()
        .map(|k| mask(&engine(&format!("detectors = [{k:?}]")), text))
        .collect();
    let engines: Vec<MaskingEngine> = kinds
        .iter()
        .map(|k| engine(&format!("detectors = [{k:?}]")))
        .collect();
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                for _ in 0..3 {
                    for (e, want) in engines.iter().zip(&expected) {
                        assert_eq!(&mask(e, text), want);
                    }
                }
            });
        }
    });
    assert_ne!(expected[0], expected[1], "the detectors differ");
}

#[test]
fn engine_is_shareable() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<MaskingEngine>();
    fn assert_send<T: Send>() {}
    assert_send::<StreamMasker>();
    let e = all_detectors();
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let e = e.clone();
            std::thread::spawn(move || mask(&e, &format!("user{i}@example.com")))
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), "[email]");
    }
    assert!(format!("{e:?}").contains("email"));
}

/// 1 MB of log-like text with a few secrets: all masked, the rest unchanged.
fn megabyte() -> (String, String) {
    let filler = "2024-06-01T12:00:00Z INFO request id=4821 path=/api/v1/orders status=200 took=12ms user_agent=\"curl/8.4\"\n";
    let mut text = String::with_capacity(1 << 20);
    let mut expected = String::with_capacity(1 << 20);
    let mut i = 0;
    while text.len() < (1 << 20) {
        text.push_str(filler);
        expected.push_str(filler);
        i += 1;
        if i % 2000 == 0 {
            text.push_str("ERROR login failed for jane@example.com card 4111111111111111 key AKIAIOSFODNN7EXAMPLE\n");
            expected.push_str(
                "ERROR login failed for [email] card [credit_card] key [aws_access_key]\n",
            );
        }
    }
    (text, expected)
}

#[test]
fn one_megabyte() {
    let e = all_detectors();
    let (text, expected) = megabyte();
    let (out, counts) = e.mask_text(&text);
    assert_eq!(out, expected);
    let planted = text.matches("ERROR").count() as u64;
    assert!(planted >= 4);
    assert_eq!(counts.get("email"), planted);
    assert_eq!(counts.get("credit_card"), planted);
    assert_eq!(counts.total(), 3 * planted);
    // The same through the stream masker in 16 KiB chunks.
    let chunks: Vec<&[u8]> = text.as_bytes().chunks(16 << 10).collect();
    assert_eq!(
        String::from_utf8(stream_all(&e, &chunks).0).unwrap(),
        expected
    );
}

/// Throughput, for the record: `cargo test --release -p sluice-core
/// masking::tests::throughput -- --ignored --nocapture`.
#[test]
#[ignore]
fn throughput() {
    use std::time::Instant;
    let (text, _) = megabyte();
    let rows: String = (0..20_000)
        .map(|i| format!("{i}\tCustomer {i}\tcustomer{i}@example.com\t+1 415 555 {:04}\t2024-01-{:02}\t{}.{:02}\tactive\n", i % 10_000, i % 28 + 1, i * 7 % 1000, i % 100))
        .collect();
    let clean: String = text
        .lines()
        .filter(|l| !l.starts_with("ERROR"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut rng = Rng(7);
    let alphabet: &[u8] =
        b" \n0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-_@:/+=,;'";
    let noise: String = (0..1 << 20)
        .map(|_| alphabet[rng.below(alphabet.len())] as char)
        .collect();
    let b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".as_bytes();
    let base64: String = (0..1 << 20)
        .map(|i| {
            if i % 77 == 76 {
                '\n'
            } else {
                b64[rng.below(64)] as char
            }
        })
        .collect();
    let numbers: String = (0..1 << 18)
        .map(|_| format!("{} ", rng.below(10_000)))
        .collect();
    let hexdump: String = (0..1 << 16)
        .map(|i| {
            format!(
                "{:08x}: {:04x} {:04x} {:04x} {:04x}\n",
                i * 16,
                rng.below(65536),
                rng.below(65536),
                rng.below(65536),
                rng.below(65536)
            )
        })
        .collect();
    for (name, e) in [
        ("default", engine(r#"detectors = ["default"]"#)),
        ("all", all_detectors()),
    ] {
        for (what, data) in [
            ("log, few secrets", &text),
            ("log, none", &clean),
            ("rows, email+phone each", &rows),
            ("random ASCII", &noise),
            ("base64 blob", &base64),
            ("numbers", &numbers),
            ("hex dump", &hexdump),
        ] {
            if std::env::var("MASK_BENCH").is_ok_and(|w| !what.starts_with(&w)) {
                continue;
            }
            let start = Instant::now();
            let mut n = 0;
            let rounds = std::env::var("MASK_ROUNDS")
                .ok()
                .and_then(|r| r.parse().ok())
                .unwrap_or(5);
            for _ in 0..rounds {
                n += e.mask_text(data).1.total();
            }
            let secs = start.elapsed().as_secs_f64();
            let mbs = (data.len() * rounds) as f64 / secs / 1e6;
            println!(
                "{name:8} {what:24} {mbs:8.1} MB/s ({} masked per pass)",
                n / rounds as u64
            );
            let start = Instant::now();
            let mut s = e.stream();
            let mut out = Vec::with_capacity(data.len());
            for c in data.as_bytes().chunks(16 << 10) {
                out.extend(s.push(c));
            }
            out.extend(s.finish());
            let mbs = data.len() as f64 / start.elapsed().as_secs_f64() / 1e6;
            println!("{name:8} {what:24} {mbs:8.1} MB/s stream (16 KiB chunks)");
            assert!(
                out == e.mask_text(data).0.as_bytes(),
                "{what}: stream and text differ"
            );
        }
        // The database path: each column value masked on its own.
        let fields: Vec<&str> = rows.split(['\t', '\n']).collect();
        let start = Instant::now();
        let mut n = 0;
        for f in &fields {
            n += e.mask_field(f).1.total();
        }
        let mbs = rows.len() as f64 / start.elapsed().as_secs_f64() / 1e6;
        println!(
            "{name:8} {:24} {mbs:8.1} MB/s ({n} masked per pass)",
            "rows, field by field"
        );
    }
}

#[test]
#[ignore]
fn throughput_per_detector() {
    use std::time::Instant;
    let mut rng = Rng(7);
    let alphabet: &[u8] =
        b" \n0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-_@:/+=,;'";
    let noise: String = (0..1 << 20)
        .map(|_| alphabet[rng.below(alphabet.len())] as char)
        .collect();
    for b in super::detectors::ALL {
        let e = engine(&format!("detectors = [{:?}]", b.name()));
        let start = Instant::now();
        let n = e.mask_text(&noise).1.total();
        let mbs = noise.len() as f64 / start.elapsed().as_secs_f64() / 1e6;
        println!("{:16} {mbs:8.1} MB/s ({n} masked)", b.name());
    }
}

/// Column lineage (PostgreSQL `sql::lineage`) labels a computed column with
/// the ruled source it derives from; these are the questions it asks.
#[test]
fn masking_rules_answer_lineage_questions() {
    let e = engine(
        r#"
        [[columns]]
        name = "ids"
        connections = ["appdb"]
        columns = ["customers.national_id", "public.users.ssn"]
        [[columns]]
        name = "secrets"
        columns = ["*.password*"]
        "#,
    );
    // A whole-row reference: a column name the rule matches, or none.
    assert_eq!(
        e.ruled_column_of("appdb", "customers"),
        Some("national_id".into())
    );
    assert_eq!(
        e.ruled_column_of("appdb", "public.customers"),
        Some("national_id".into())
    );
    assert_eq!(
        e.ruled_column_of("appdb", "other.users"),
        Some("password*".into())
    );
    assert_eq!(
        e.ruled_column_of("other", "customers"),
        Some("password*".into())
    );
    let only_ids = engine(
        r#"
        [[columns]]
        columns = ["customers.national_id"]
        "#,
    );
    assert_eq!(only_ids.ruled_column_of("appdb", "orders"), None);
    // The answer names a column the rule masks (a glob matches its own text).
    for table in ["customers", "users", "orders"] {
        let column = e.ruled_column_of("appdb", table).unwrap();
        assert!(
            e.column_rule("appdb", Some(table), &column).is_some(),
            "{table}.{column}"
        );
    }
}

/// Line-wise streams (maskers without an engine): a value split across
/// chunks within a line is masked whole; a line longer than the bound is cut
/// at a blank, not inside a value; nothing is dropped.
#[test]
fn line_streams_mask_values_split_across_chunks() {
    use std::sync::Arc;
    let mask: TextMask = Arc::new(|piece: &[u8]| {
        let text = String::from_utf8_lossy(piece);
        text.contains("SECRET-123").then(|| {
            (
                text.replace("SECRET-123", "[masked]").into_bytes(),
                MaskCounts::default(),
            )
        })
    });
    let mut s = StreamMasker::lines(mask.clone(), 64);
    let mut out = s.push(b"one SECR");
    out.extend(s.push(b"ET-123 two\nthree"));
    out.extend(s.flush());
    assert_eq!(String::from_utf8(out).unwrap(), "one [masked] two\nthree");
    // 80 bytes with no newline: cut at the blank before the value.
    let long = format!("{} SECRET-123 tail", "x".repeat(50));
    let mut s = StreamMasker::lines(mask, 64);
    let mut out = s.push(long.as_bytes());
    out.extend(s.flush());
    let text = String::from_utf8(out).unwrap();
    assert_eq!(text, long.replace("SECRET-123", "[masked]"));
}

/// An idle pause in the middle of a line does not split a value: only
/// complete lines are released by `flush_lines`.
#[test]
fn flush_lines_keeps_an_unfinished_line() {
    let config: MaskingConfig = toml::from_str(r#"detectors = ["email"]"#).unwrap();
    let engine = compile(&config, None).unwrap();
    let mut s = engine.stream();
    let mut out = s.push(b"data: first\ndata: contact ada@exam");
    out.extend(s.flush_lines());
    let released = String::from_utf8(out.clone()).unwrap();
    assert!(released.ends_with("data: first\n"), "{released:?}");
    out.extend(s.push(b"ple.com\n\n"));
    out.extend(s.flush());
    let text = String::from_utf8(out).unwrap();
    assert!(!text.contains("ada@"), "{text}");
    assert!(text.contains("data: contact [email]"), "{text}");
}

/// Pieces the differential inputs are built from: runs that detectors
/// start on, the separators they span, near misses and real secrets.
fn adversarial_piece(rng: &mut Rng) -> String {
    const SEPARATORS: &[&str] = &[
        " ", "-", ".", "/", "(", ")", "+", ":", "=", "@", "_", "\t", "\n", ",", ";", "'", "\"",
        "\\n", "#", "%",
    ];
    const UNICODE: &[&str] = &["é", "中文", "😀", "\u{2028}", "ß", "Ω", "\u{a0}", "«"];
    const WORDS: &[&str] = &[
        "password",
        "PGPASSWORD",
        "aws_secret_access_key",
        "SecretAccessKey",
        "eyJ",
        "://",
        "ghp_",
        "github_pat_",
        "glpat-",
        "xoxb-",
        "xapp-1-",
        "-----BEGIN RSA PRIVATE KEY-----",
        "-----END RSA PRIVATE KEY-----",
        "https://hooks.slack.com/services/",
        "AKIA",
        "ASIA",
        "GB82",
        "DE89",
        "::",
        "fe80",
        "TKT-",
        "REF-é",
        "ref-AB12",
        "Blue Falcon",
        "x-ray",
    ];
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let run = |rng: &mut Rng, alphabet: &[u8], max: usize| -> String {
        let n = 1 + rng.below(max);
        (0..n)
            .map(|_| alphabet[rng.below(alphabet.len())] as char)
            .collect()
    };
    match rng.below(12) {
        0 => run(rng, b"0123456789", 24),
        // Long runs: together, past the stream hold-back now and then.
        11 if rng.below(6) == 0 => {
            let alphabets: [&[u8]; 3] = [b"0123456789 ", b"abcXYZ019._-", B64];
            let alphabet = alphabets[rng.below(3)];
            run(rng, alphabet, 6000)
        }
        // Digit groups: phone, SSN and card shapes that overlap.
        1 | 9 => {
            let sep = [" ", "-", ".", "", " "][rng.below(5)];
            let groups: Vec<String> = (0..1 + rng.below(6))
                .map(|_| run(rng, b"0123456789", 5))
                .collect();
            groups.join(sep)
        }
        2 => SEPARATORS[rng.below(SEPARATORS.len())].to_string(),
        3 => run(rng, b"abcdefxyzABCDEFXYZ", 12),
        4 => UNICODE[rng.below(UNICODE.len())].to_string(),
        5 => run(rng, B64, 60),
        6 => WORDS[rng.below(WORDS.len())].to_string(),
        7 | 10 | 11 => run(rng, b"0123456789 -.()+/", 30),
        // A number run on into a secret, which may start inside it.
        8 => {
            let numbers = [
                "4111 1111 1111 1111",
                "+44 20 7946 0958",
                "415-555-2671",
                "0123 ",
            ];
            let ibans = ["DE89 3704 0044 0532 0130 00", "GB82 WEST 1234 5698 7654 32"];
            let secret = match rng.below(3) {
                0 => ibans[rng.below(ibans.len())],
                _ => DETECTOR_TABLE[rng.below(DETECTOR_TABLE.len())].1,
            };
            format!("{}{}", numbers[rng.below(numbers.len())], expand(secret))
        }
        _ => {
            let (_, input, _) = DETECTOR_TABLE[rng.below(DETECTOR_TABLE.len())];
            expand(input)
        }
    }
}

/// The optimized engine masks exactly what the plain full scan masks:
/// text, fields and streams split at random, on random and adversarial
/// inputs. It fails if a shortcut skips or changes a single match.
#[test]
fn optimized_path_masks_exactly_what_the_plain_scan_masks() {
    let configs = [
        r#"detectors = ["default"]"#,
        r#"detectors = ["default", "ipv4", "ipv6"]"#,
        r#"detectors = ["credit_card"]"#,
        r#"
        detectors = ["default"]
        [[custom]]
        name = "ticket"
        regex = "TKT-[0-9]{4,}"
        [[custom]]
        name = "codename"
        words = ["Blue Falcon", "x-ray"]
        "#,
        // Custom matches that run on, look-around, Unicode and case folding
        // in the facts read off patterns; IBANs (validated past their
        // candidate) next to numbers.
        r#"
        detectors = ["iban", "credit_card", "phone", "email"]
        [[custom]]
        name = "ref"
        regex = "(?i)\\bref-[a-zé]{2,}[0-9]*"
        [[custom]]
        name = "acct"
        regex = "[0-9]{4}(?: [A-Z]{2}[0-9]{2} [0-9A-Z]{4})?"
        "#,
    ];
    let mut rng = Rng(0x5eed);
    let mut past_holdback = 0;
    for toml_text in configs {
        let fast = engine(toml_text);
        let plain = compile_unoptimized(&config(toml_text), Some(KEY)).unwrap();
        for _ in 0..1000 {
            let pieces = 1 + rng.below(12);
            let input: String = (0..pieces).map(|_| adversarial_piece(&mut rng)).collect();
            past_holdback += usize::from(input.len() > MAX_HOLDBACK);
            let want = plain.mask_text(&input);
            assert_eq!(fast.mask_text(&input), want, "{toml_text}: {input:?}");
            assert_eq!(
                fast.mask_field(&input),
                plain.mask_field(&input),
                "{input:?}"
            );
            // Bytes that are not UTF-8 go through `mask_bytes` and streams.
            let mut bytes = input.into_bytes();
            for _ in 0..rng.below(3) {
                let at = rng.below(bytes.len() + 1);
                bytes.insert(at, [0xFF, 0xC3, 0x80][rng.below(3)]);
            }
            assert_eq!(
                fast.mask_bytes(&bytes),
                plain.mask_bytes(&bytes),
                "{bytes:?}"
            );
            let chunks = random_chunks(&mut rng, &bytes);
            let streamed = stream_all(&fast, &chunks);
            assert_eq!(
                streamed,
                stream_all(&plain, &chunks),
                "{bytes:?} {chunks:?}"
            );
        }
    }
    assert!(
        past_holdback > 10,
        "{past_holdback} inputs past the hold-back"
    );
}

fn random_chunks<'a>(rng: &mut Rng, mut bytes: &'a [u8]) -> Vec<&'a [u8]> {
    let mut chunks = Vec::new();
    while !bytes.is_empty() {
        let max = [40, 5000][rng.below(2)];
        let n = (1 + rng.below(max)).min(bytes.len());
        let (chunk, rest) = bytes.split_at(n);
        chunks.push(chunk);
        bytes = rest;
    }
    chunks
}

/// Values shaped so that a detector's candidate is found and rejected at
/// every byte (an email local part longer than 64, a run of `eyJ` that is
/// never a JWT, colons that are never an IPv6 address) would cost quadratic
/// time: a scan stops judging past its budget and masks the rest, so each
/// is masked in linear work (at 256 KiB, a quadratic scan would take tens of
/// minutes here) and nothing of the value is shown.
#[test]
fn values_shaped_for_endless_rejection_are_masked_in_linear_work() {
    let e = engine(r#"detectors = ["email", "jwt", "ipv6"]"#);
    let n = 256 * 1024;
    for (name, value) in [
        ("email", format!("{}@example.com", "a".repeat(n))),
        (
            "dotted email",
            format!("{}x@example.com", "a.".repeat(n / 2)),
        ),
        ("jwt", format!("{}.ab", "eyJ".repeat(n / 3))),
        ("ipv6", ":".repeat(n)),
        ("ipv6 digits", "1:".repeat(n / 2)),
    ] {
        let (masked, counts) = e.mask_text(&value);
        assert!(counts.total() > 0, "{name}: nothing masked");
        let middle = &value[value.len() / 2..value.len() / 2 + 64];
        assert!(
            !masked.contains(middle),
            "{name}: the middle of the value is still shown"
        );
    }
    // What the scan stopped judging is redacted whole, even where the style
    // is partial (which would show a domain, or last digits, of the text).
    let partial = engine("style = \"partial\"\ndetectors = [\"email\", \"aws_access_key\"]");
    let hostile = format!("{}@example.com AKIAIOSFODNN7EXAMPLE", "a".repeat(n));
    let (masked, _) = partial.mask_text(&hostile);
    assert!(
        !masked.contains("example.com") && !masked.contains("AKIA"),
        "{}",
        &masked[masked.len().saturating_sub(200)..]
    );
    // Ordinary text is judged as before: one address among many rejections.
    let ordinary = format!("{} bob@example.com {}", "x.".repeat(2000), "1:".repeat(50));
    let (masked, _) = e.mask_text(&ordinary);
    assert!(
        !masked.contains("bob@example.com") && masked.contains("x.x.x."),
        "{masked}"
    );
}

#[test]
fn the_leading_bytes_of_a_match_are_read_off_its_pattern() {
    use crate::prefilter::Facts;
    let ssn = Facts::of(r"[0-9]{3}-[0-9]{2}");
    assert!(ssn.may_start_at(b"123-45", 0, 6));
    assert!(ssn.may_start_at(b"x 123-45", 2, 8));
    assert!(!ssn.may_start_at(b"123 45", 0, 6));
    assert!(!ssn.may_start_at(b"12a-45", 0, 6));
    // The leading bytes must lie within the searched range.
    assert!(!ssn.may_start_at(b"123-45", 0, 3));
    assert!(!ssn.may_start_at(b"12", 0, 2));
    // A match may end after one byte: nothing is known past it.
    let short = Facts::of("ab?");
    assert!(short.may_start_at(b"a", 0, 1));
    assert!(short.may_start_at(b"ax", 0, 2));
    assert!(!short.may_start_at(b"xa", 0, 2));
    // Look-around is assumed to hold, and each offset's set is the union
    // over the alternatives: an over-approximation, never a miss.
    let alt = Facts::of(r"\bab|\bcd");
    assert!(alt.may_start_at(b"ab", 0, 2) && alt.may_start_at(b"cd", 0, 2));
    assert!(alt.may_start_at(b"ad", 0, 2));
    assert!(!alt.may_start_at(b"ax", 0, 2));
}

#[test]
fn what_every_match_contains_is_read_off_its_pattern() {
    use crate::prefilter::Facts;
    let email = Facts::of(r"[a-z]+@[a-z]+\.(?:com|io)");
    assert_eq!(email.min_len, 6);
    assert!(email.required.contains(&b'@') && email.required.contains(&b'.'));
    // Each alternative has an `o`, no other letter is in both.
    assert!(email.required.contains(&b'o') && !email.required.contains(&b'c'));
    assert!(email.bytes.contains(b'q') && !email.bytes.contains(b' '));
    // Whether a match can start in `from..at` and contain `hay[at]`: at 13
    // (`|`) no match byte; at 8 (`@`) the run of match bytes around it is
    // `ex@y.io`, a possible match, unless its `@` is missing, it does not
    // fit before the bound, or no match can start in it.
    let hay = b"ab cd ex@y.io|";
    assert!(!email.may_span(hay, 1, 13, hay.len()));
    assert!(email.may_span(hay, 1, 8, hay.len()));
    assert!(
        email.may_span(b"x@y.io|", 0, 1, 7),
        "as short as a match can be"
    );
    assert!(!email.may_span(b"ab cd exy.io|", 1, 8, 13));
    assert!(!email.may_span(hay, 1, 8, 10));
    assert!(!email.may_span(hay, 8, 8, hay.len()));
    assert!(!email.may_span(b"ab cd ..@y.io|", 1, 8, 14));
    // Look-around is assumed to hold: never a miss.
    let card = Facts::of(r"(?-u:\b)[0-9](?:[ -]?[0-9]){12,18}(?-u:\b)");
    assert_eq!(card.min_len, 13);
    assert!(card.required.is_empty());
    assert!(card.may_span(b"x 4111 1111 1111 1111 x", 0, 10, 23));
}

#[test]
fn a_number_filling_its_value_is_masked_as_within_text() {
    let e = engine(r#"detectors = ["credit_card", "phone"]"#);
    for (value, within) in [
        ("4111 1111 1111 1111", "card 4111 1111 1111 1111 ok"),
        ("+1 202-555-0123", "call +1 202-555-0123 now"),
    ] {
        let alone = mask(&e, value);
        assert_ne!(alone, value);
        assert_eq!(mask(&e, within), within.replace(value, &alone));
    }
}

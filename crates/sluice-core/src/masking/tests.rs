//! The masking position with the engine in it: the `[masking]` section as
//! the gateway's configuration reads it, and `EngineMasker` planning rows.

use super::*;
use crate::model::Column;

const KEY: &[u8] = b"test-key-0123456789abcdef";

fn engine(toml_text: &str) -> MaskingEngine {
    let config: MaskingConfig = toml::from_str(toml_text).unwrap();
    compile(&config, Some(KEY)).unwrap()
}

fn mask(e: &MaskingEngine, text: &str) -> String {
    e.mask_text(text).0.into_owned()
}

#[test]
fn gateway_config_section() {
    let text = r#"
[masking]
detectors = ["email", "credit_card", "us_ssn", "phone", "iban", "aws_access_key", "aws_secret_key", "github_token", "gitlab_token", "slack_token", "jwt", "private_key", "url_password"]
style = "redact"
hash_key = { env = "SLUICE_MASK_KEY" }

[masking.styles]
email = "partial"

[[masking.custom]]
name = "employee_id"
regex = "EMP-[0-9]{6}"
style = "hash"

[[masking.custom]]
name = "projects"
words = ["Project Falcon", "Project Osprey"]

[[masking.columns]]
name = "ssn-columns"
connections = ["appdb"]
columns = ["users.ssn", "*.password*", "api_key"]
style = "null"
"#;
    let cfg = crate::config::Config::from_toml_str(text, "test.toml").unwrap();
    assert_eq!(cfg.masking.detectors.len(), 13);
    assert!(cfg.masking.hash_key.is_some());
    let e = compile(&cfg.masking, Some(KEY)).unwrap();
    assert_eq!(mask(&e, "ann@example.com"), "****@example.com");
    assert_eq!(
        e.column_rule("appdb", Some("users"), "ssn"),
        Some(("ssn-columns", Style::Null))
    );
    // Absent section: masking off.
    let cfg = crate::config::Config::from_toml_str("", "empty.toml").unwrap();
    let e = compile(&cfg.masking, None).unwrap();
    assert!(!e.is_active());
    // Unknown keys in the section are refused with their path.
    let err =
        crate::config::Config::from_toml_str("[masking]\ndetectorz = []", "t.toml").unwrap_err();
    assert!(err.to_string().contains("masking"), "{err}");
}

/// Column lineage (PostgreSQL `sql::lineage`) labels a computed column with
/// a ruled source; through the masker it is masked whole, with a value valid
/// for its type, and exempt groups see it unmasked.
#[test]
fn computed_columns_of_ruled_sources_are_masked_whole() {
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
    let masker = EngineMasker::new(e).with_exempt_groups(vec!["dba".into()]);
    let session = |groups: &[&str]| crate::pipeline::SessionInfo {
        id: "s1".into(),
        identity: crate::testing::person("ann", groups),
        connection: "appdb".into(),
        protocol: crate::model::Protocol::Postgres,
        client_addr: "127.0.0.1:1".into(),
    };
    let agent = session(&["agents"]);
    assert!(masker.column_ruled(&agent, "customers", "national_id"));
    assert!(masker.column_ruled(&agent, "public.customers", "NATIONAL_ID"));
    assert!(!masker.column_ruled(&agent, "customers", "name"));
    assert!(!masker.column_ruled(&session(&["dba"]), "customers", "national_id"));
    assert_eq!(
        masker.ruled_column_of(&session(&["dba"]), "customers"),
        None
    );
    let computed = |name: &str, type_oid: u32| Column {
        name: name.into(),
        table_oid: 0,
        column_number: 0,
        type_oid,
        binary: false,
        table: Some("customers".into()),
        source_column: Some("national_id".into()),
    };
    // reverse(national_id) (text), length(national_id) (int4).
    let columns = [computed("reverse", 25), computed("length", 23)];
    let mut rows = masker.plan(&agent, &columns).unwrap();
    let mut row = vec![Some(b"9876-54-321".to_vec()), Some(b"11".to_vec())];
    assert_eq!(rows.mask_row(&mut row), 2);
    assert_eq!(row, vec![Some(b"[ids]".to_vec()), None]);
}

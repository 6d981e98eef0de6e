//! Claim paths: `groups`, `realm_access.roles`, `https://example.com/groups`.
//!
//! A path is looked up whole first (claim names may contain dots, such as
//! namespaced URLs), then as nested objects split at each dot.

use serde_json::Value;

/// The value at `path`.
pub fn claim<'a>(claims: &'a Value, path: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    let obj = claims.as_object()?;
    // Every split point, so that `a.b.c` also finds {"a.b": {"c": …}}.
    for (i, _) in path.match_indices('.') {
        if let Some(inner) = obj.get(&path[..i]) {
            if let Some(v) = claim(inner, &path[i + 1..]) {
                return Some(v);
            }
        }
    }
    None
}

/// A string claim (numbers are accepted as their text, e.g. numeric subjects).
pub fn claim_string(claims: &Value, path: &str) -> Option<String> {
    match claim(claims, path)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Groups at `path`: an array of strings (kept as they are; other items are
/// skipped), or one string. One string is ONE group (`Domain Admins`) unless
/// the provider names a `separator` (`groups_separator`), at which it is
/// split, each piece trimmed. `None` when the claim is absent; other shapes
/// count as no groups.
pub fn claim_groups(claims: &Value, path: &str, separator: Option<&str>) -> Option<Vec<String>> {
    let value = claim(claims, path)?;
    Some(match value {
        Value::Array(items) => items
            .iter()
            .filter_map(|v| v.as_str())
            .map(str::to_string)
            .filter(|s| !s.is_empty())
            .collect(),
        Value::String(s) => match separator.filter(|sep| !sep.is_empty()) {
            Some(sep) => s
                .split(sep)
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
            None if s.is_empty() => Vec::new(),
            None => vec![s.clone()],
        },
        _ => Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths() {
        let c = json!({
            "sub": "u1",
            "groups": ["a", "b", 3],
            "realm_access": {"roles": ["dba"]},
            "https://example.com/groups": "x y,z",
            "resource_access": {"sluice": {"roles": ["r"]}},
            "num": 42,
            "obj": {}
        });
        assert_eq!(
            claim_groups(&c, "groups", None),
            Some(vec!["a".into(), "b".into()])
        );
        assert_eq!(
            claim_groups(&c, "realm_access.roles", None),
            Some(vec!["dba".into()])
        );
        assert_eq!(
            claim_groups(&c, "https://example.com/groups", Some(",")),
            Some(vec!["x y".into(), "z".into()])
        );
        assert_eq!(
            claim_groups(&c, "resource_access.sluice.roles", None),
            Some(vec!["r".into()])
        );
        assert_eq!(claim_groups(&c, "missing", None), None);
        assert_eq!(claim_groups(&c, "realm_access.missing", None), None);
        assert_eq!(claim_groups(&c, "obj", None), Some(vec![]));
        assert_eq!(claim_string(&c, "sub").as_deref(), Some("u1"));
        assert_eq!(claim_string(&c, "num").as_deref(), Some("42"));
        assert_eq!(claim_string(&c, "groups"), None);
    }

    #[test]
    fn one_string_is_one_group_unless_a_separator_is_configured() {
        let c = json!({
            "g": "Domain Admins",
            "list": " admins, Domain Users ,,ops ",
            "arr": ["Domain Admins", "a,b"],
            "empty": ""
        });
        let g = |path: &str, sep: Option<&str>| claim_groups(&c, path, sep).unwrap();
        // No separator: the whole string, spaces, commas and all.
        assert_eq!(g("g", None), ["Domain Admins"]);
        assert_eq!(g("list", None), [" admins, Domain Users ,,ops "]);
        assert_eq!(g("empty", None), Vec::<String>::new());
        // An empty separator splits nothing either.
        assert_eq!(g("g", Some("")), ["Domain Admins"]);
        // A separator splits only at itself; pieces are trimmed.
        assert_eq!(g("g", Some(",")), ["Domain Admins"]);
        assert_eq!(g("list", Some(",")), ["admins", "Domain Users", "ops"]);
        assert_eq!(g("g", Some(" ")), ["Domain", "Admins"]);
        // Arrays are never split.
        for sep in [None, Some(","), Some(" ")] {
            assert_eq!(g("arr", sep), ["Domain Admins", "a,b"]);
        }
    }
}

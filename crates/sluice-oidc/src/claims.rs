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

/// Groups at `path`: an array of strings, or one string (space- or
/// comma-separated lists are common for single-string claims). `None` when
/// the claim is absent; other shapes count as no groups.
pub fn claim_groups(claims: &Value, path: &str) -> Option<Vec<String>> {
    let value = claim(claims, path)?;
    Some(match value {
        Value::Array(items) => items
            .iter()
            .filter_map(|v| v.as_str())
            .map(str::to_string)
            .filter(|s| !s.is_empty())
            .collect(),
        Value::String(s) => s
            .split([',', ' '])
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
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
            claim_groups(&c, "groups"),
            Some(vec!["a".into(), "b".into()])
        );
        assert_eq!(
            claim_groups(&c, "realm_access.roles"),
            Some(vec!["dba".into()])
        );
        assert_eq!(
            claim_groups(&c, "https://example.com/groups"),
            Some(vec!["x".into(), "y".into(), "z".into()])
        );
        assert_eq!(
            claim_groups(&c, "resource_access.sluice.roles"),
            Some(vec!["r".into()])
        );
        assert_eq!(claim_groups(&c, "missing"), None);
        assert_eq!(claim_groups(&c, "realm_access.missing"), None);
        assert_eq!(claim_groups(&c, "obj"), Some(vec![]));
        assert_eq!(claim_string(&c, "sub").as_deref(), Some("u1"));
        assert_eq!(claim_string(&c, "num").as_deref(), Some("42"));
        assert_eq!(claim_string(&c, "groups"), None);
    }
}

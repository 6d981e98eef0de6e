//! Tidy checks on the embedded pages: the security rules of the console
//! that a reviewer would otherwise have to remember.

use super::*;

fn text(asset: &Asset) -> &'static str {
    std::str::from_utf8(asset.body).unwrap()
}

#[test]
fn pages_never_insert_html() {
    for asset in ASSETS {
        for banned in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
            "setTimeout('",
            "javascript:",
        ] {
            assert!(
                !text(asset).contains(banned),
                "{} uses {banned}",
                asset.path
            );
        }
    }
}

#[test]
fn no_inline_script_or_style() {
    let html = text(&ASSETS[0]);
    assert_eq!(ASSETS[0].path, "/console/");
    for (i, _) in html.match_indices("<script") {
        let tag = &html[i..i + html[i..].find('>').unwrap()];
        assert!(tag.contains(" src=\"/console/"), "inline script: {tag}");
        assert!(html[i..].starts_with(&format!("{tag}></script>")), "{tag}");
    }
    assert!(!html.contains("<style"));
    assert!(!html.contains(" style="));
    for handler in [
        " onclick=",
        " onload=",
        " onerror=",
        " onsubmit=",
        " oninput=",
    ] {
        assert!(!html.contains(handler), "{handler}");
    }
    assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));
    assert!(CONTENT_SECURITY_POLICY.contains("script-src 'self'"));
}

#[test]
fn first_load_is_small() {
    let total: usize = ASSETS.iter().map(|a| a.body.len()).sum();
    assert!(total < 200 * 1024, "{total} bytes");
}

use super::*;
use sluice_core::approval::ReviewMode;

fn who(subject: &str, issuer: &str, groups: &[&str]) -> Identity {
    Identity {
        subject: subject.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        issuer: issuer.into(),
        token_id: "t".into(),
        expires_at: std::time::SystemTime::now(),
        connections: None,
    }
}

fn request(state: ApprovalState) -> ApprovalRequest {
    ApprovalRequest {
        id: "a1".into(),
        session_id: "s1".into(),
        command_id: 1,
        subject: "agent".into(),
        issuer: "sluice".into(),
        connection: "appdb".into(),
        command: "delete from t where id = 1".into(),
        kind: None,
        context: Vec::new(),
        rule: "reviewed".into(),
        message: None,
        approvers: vec!["dba".into()],
        mode: ReviewMode::Hold,
        requested_at_ms: 0,
        expires_at_ms: u64::MAX,
        state,
        decided_by: None,
        decided_at_ms: None,
        reason: None,
    }
}

/// The button follows `ApprovalService::decide`: pending, an approver, not
/// the requester (same subject at the same issuer).
#[test]
fn the_button_follows_the_services_rules() {
    let pending = request(ApprovalState::Pending);
    assert!(can_decide(&pending, &who("dana", "sluice", &["dba"])));
    assert!(!can_decide(&pending, &who("eve", "sluice", &["agents"])));
    assert!(!can_decide(&pending, &who("agent", "sluice", &["dba"])));
    // The same name at another issuer is another person.
    assert!(can_decide(&pending, &who("agent", "https://idp", &["dba"])));
    for state in [
        ApprovalState::Approved,
        ApprovalState::Denied,
        ApprovalState::Expired,
    ] {
        assert!(!can_decide(
            &request(state),
            &who("dana", "sluice", &["dba"])
        ));
    }
}

#[test]
fn events_are_one_line_of_data() {
    let data = serde_json::json!({"command": "select 1;\nselect '\r\n'"}).to_string();
    let e = event("state", &data);
    let text = std::str::from_utf8(&e).unwrap();
    assert!(text.starts_with("event: state\ndata: {"));
    assert!(text.ends_with("}\n\n"));
    assert_eq!(text.matches('\n').count(), 3, "{text}");
}

#[test]
fn a_person_has_a_bounded_number_of_streams() {
    let counts = SubjectCounts::default();
    let key = || ("sluice".to_string(), "agent".to_string());
    let slots: Vec<SubjectSlot> = (0..crate::console::MAX_EVENT_STREAMS_PER_SUBJECT)
        .map(|_| SubjectSlot::take(&counts, key()).unwrap())
        .collect();
    assert!(SubjectSlot::take(&counts, key()).is_none());
    // Someone else is not affected.
    assert!(SubjectSlot::take(&counts, ("sluice".into(), "dana".into())).is_some());
    drop(slots);
    assert!(SubjectSlot::take(&counts, key()).is_some());
    assert!(counts.locked().get(&key()).is_none_or(|n| *n == 0));
}

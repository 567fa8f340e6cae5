use super::*;
use crate::config::JiraConfig;

#[test]
fn error_body_summary() {
    let body = br#"{"errorMessages":["Issue does not exist or you do not have permission to see it."],"errors":{"summary":"required"}}"#;
    assert_eq!(
        summarize_error_body(body),
        "Issue does not exist or you do not have permission to see it.; summary: required"
    );
    let long = "x".repeat(5000);
    assert!(summarize_error_body(long.as_bytes()).chars().count() <= ERROR_SUMMARY_CHARS + 1);
    assert_eq!(summarize_error_body(b""), "(no details)");
    // Jira's error shape with nothing in it (a bare 401/403/404 as documented,
    // https://developer.atlassian.com/cloud/jira/platform/rest/v3/intro/#status-codes): no JSON in the message.
    assert_eq!(
        summarize_error_body(br#"{"errorMessages":[],"errors":{}}"#),
        "(no details)"
    );
    assert_eq!(
        summarize_error_body(br#"{"errorMessages":[""],"errors":{}}"#),
        "(no details)"
    );
    assert_eq!(
        summarize_error_body(b"<html>\n\tBad\n</html>"),
        "<html> Bad </html>"
    );
}

#[test]
fn retry_after_parsing() {
    let mut h = HeaderMap::new();
    assert_eq!(parse_retry_after(&h), None);
    h.insert(RETRY_AFTER, HeaderValue::from_static("7"));
    assert_eq!(parse_retry_after(&h), Some(Duration::from_secs(7)));
    h.insert(RETRY_AFTER, HeaderValue::from_static("99999999"));
    assert_eq!(parse_retry_after(&h), Some(MAX_RETRY_AFTER));
    h.insert(
        RETRY_AFTER,
        HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
    );
    assert_eq!(parse_retry_after(&h), Some(Duration::ZERO));
    let later = (chrono::Utc::now() + chrono::Duration::seconds(120)).to_rfc2822();
    h.insert(RETRY_AFTER, HeaderValue::from_str(&later).unwrap());
    let d = parse_retry_after(&h).unwrap();
    assert!(
        d > Duration::from_secs(100) && d <= Duration::from_secs(120),
        "{d:?}"
    );
    h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
    assert_eq!(parse_retry_after(&h), None);
}

#[test]
fn retryable_classification() {
    let e = |s: u16| {
        status_error(
            StatusCode::from_u16(s).unwrap(),
            None,
            "x",
            Some("A-1"),
            "m".into(),
        )
    };
    assert!(e(500).is_retryable());
    assert!(e(503).is_retryable());
    assert!(e(429).is_retryable());
    for s in [400, 401, 403, 404, 409, 302] {
        assert!(!e(s).is_retryable(), "{s}");
    }
    assert!(matches!(e(404), JiraError::NotFound { .. }));
    assert!(!JiraError::InvalidKey("x".into()).is_retryable());
}

#[test]
fn echoed_credentials_are_scrubbed() {
    use crate::config::Secret;
    let c = JiraClient::new(&JiraConfig {
        base_url: "https://x.atlassian.net".into(),
        bot_account_id: "bot".into(),
        bot_username: None,
        flavor: crate::config::JiraFlavor::Cloud,
        auth: JiraAuth::Basic {
            email: "bot@example.com".into(),
            token: Secret::new("tok-123456").into(),
        },
        acceptance_criteria_fields: Vec::new(),
    })
    .unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode("bot@example.com:tok-123456");
    let out = c.scrub(&format!("bad token tok-123456 in header Basic {b64}"));
    assert_eq!(out, "bad token [redacted] in header Basic [redacted]");
}

#[test]
fn client_rejects_bad_config() {
    use crate::config::Secret;
    let cfg = |url: &str, token: &str| JiraConfig {
        base_url: url.into(),
        bot_account_id: "bot".into(),
        bot_username: None,
        flavor: crate::config::JiraFlavor::Cloud,
        auth: JiraAuth::Basic {
            email: "bot@example.com".into(),
            token: Secret::new(token).into(),
        },
        acceptance_criteria_fields: Vec::new(),
    };
    assert!(JiraClient::new(&cfg("https://x.atlassian.net/", "t")).is_ok());
    assert_eq!(
        JiraClient::new(&cfg("https://x.atlassian.net/", "t"))
            .unwrap()
            .base_url(),
        "https://x.atlassian.net"
    );
    for bad in [
        "ftp://x",
        "not a url",
        "https://u:p@x.atlassian.net",
        "https://x?y=1",
    ] {
        assert!(
            matches!(JiraClient::new(&cfg(bad, "t")), Err(JiraError::Config(_))),
            "{bad}"
        );
    }
    let err = JiraClient::new(&JiraConfig {
        auth: JiraAuth::Bearer {
            token: Secret::new("sec\nret").into(),
        },
        ..cfg("https://x", "t")
    })
    .unwrap_err();
    assert!(!err.to_string().contains("sec"), "{err}");
}

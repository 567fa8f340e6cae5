//! Stand-ins for what cannot be reached from here (Jira, GitHub, the model providers), as small HTTP servers that
//! follow the public API shapes, and an in-memory sandbox executor (`executor.rs`). Shared by the integration tests
//! and by `examples/demo.rs`.
#![allow(dead_code)]

pub mod executor;
pub mod git;
pub mod github;
pub mod harness;
pub mod jira;
pub mod model;
pub mod postgres;
pub mod sandbox;

/// Held by every test that runs a `drafter serve` worker pool (`serve.rs`, `policy_serve.rs`): one pool saturates
/// this machine's cores, and a test's short leases must not starve behind another pool's burst.
pub static POOL_SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

use axum::http::{HeaderMap, Method, Uri};
use serde_json::Value;

/// One request a stand-in received, kept so tests can assert on what drafter sent, not only on what came back.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// `GET`, `POST`, ...
    pub method: String,
    /// Path without the query string.
    pub path: String,
    /// The query string, if any.
    pub query: Option<String>,
    /// Headers in arrival order, names lower-case, values lossily decoded.
    pub headers: Vec<(String, String)>,
    /// The exact body bytes (git packs are binary; receipts hash these).
    pub body: Vec<u8>,
}

impl RecordedRequest {
    /// Records a request from its parts.
    pub fn new(method: &Method, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> RecordedRequest {
        RecordedRequest {
            method: method.to_string(),
            path: uri.path().to_string(),
            query: uri.query().map(str::to_string),
            headers: headers
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body: body.to_vec(),
        }
    }

    /// The first value of a header (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON, if it is JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The body as text (lossy).
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

//! Stand-ins for what cannot be reached from here (Jira, GitHub, the model providers), as small HTTP servers that
//! follow the public API shapes, and an in-memory sandbox executor (`executor.rs`). Shared by the integration tests
//! and by `examples/demo.rs`.
#![allow(dead_code)]

pub mod executor;
pub mod git;
pub mod github;
pub mod github_app;
pub mod github_fork;
pub mod github_review;
pub mod harness;
pub mod jira;
pub mod model;
pub mod postgres;
pub mod sandbox;

/// Held by every test that runs a `drafter serve` worker pool (`serve.rs`, `policy_serve.rs`): one pool saturates
/// this machine's cores, and a test's short leases must not starve behind another pool's burst.
pub static POOL_SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Held by the tests that set off fork, memory and output bombs (`abuse.rs`) and by the one whose command must beat
/// the executor's 2 s disk check (`sandbox::the_returning_workspace_is_budgeted_on_the_host`): in separate binaries
/// they never overlapped, and a bomb's load makes that command too slow.
pub static BOMBS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Who may sweep orphaned containers now: `drafter run` and `serve` do at start-up, and
/// `sandbox::remove_orphans_after_a_crash` plants a crashed runner's container that it must sweep up itself.
struct Sweeps {
    /// [`Sweeping`]s held.
    live: usize,
    /// Whether a [`SweepAlone`] is held.
    alone: bool,
}

static SWEEPS: std::sync::Mutex<Sweeps> = std::sync::Mutex::new(Sweeps {
    live: 0,
    alone: false,
});

fn sweeps() -> std::sync::MutexGuard<'static, Sweeps> {
    // A test that panicked holding a guard still counts it down.
    SWEEPS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Held while `drafter run` or `serve` may start (by each [`harness::Stack`] and the README test). Waits only for a
/// [`SweepAlone`], never for another `Sweeping`, so one test may hold several.
pub struct Sweeping(());

/// Waits until no [`SweepAlone`] is held.
pub async fn sweeping() -> Sweeping {
    loop {
        {
            let mut s = sweeps();
            if !s.alone {
                s.live += 1;
                return Sweeping(());
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

impl Drop for Sweeping {
    fn drop(&mut self) {
        sweeps().live -= 1;
    }
}

/// Held by the test that sweeps orphans itself: no `drafter run` or `serve` of this process starts meanwhile.
pub struct SweepAlone(());

/// Waits until no [`Sweeping`] is held, and keeps new ones waiting until this is dropped.
pub async fn sweep_alone() -> SweepAlone {
    loop {
        {
            let mut s = sweeps();
            if s.live == 0 && !s.alone {
                s.alone = true;
                return SweepAlone(());
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

impl Drop for SweepAlone {
    fn drop(&mut self) {
        sweeps().alone = false;
    }
}

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
    /// When it was recorded (arrival, after the body was read): the stage clock of `benches/path.rs`.
    pub at: std::time::SystemTime,
    /// When the answer left the stand-in, where a stand-in notes it (the model's: per-turn runner overhead).
    pub answered: Option<std::time::SystemTime>,
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
            at: std::time::SystemTime::now(),
            answered: None,
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

//! Stand-ins for what cannot be reached from here (Jira, GitHub, the model providers), as small HTTP servers that
//! follow the public API shapes. Shared by the integration tests and by `examples/demo.rs`.
#![allow(dead_code)]

pub mod github;
pub mod harness;
pub mod jira;
pub mod model;

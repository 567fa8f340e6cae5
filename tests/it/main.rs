//! The integration tests, as one binary: the stand-ins in `support/` compile once, and each file here is a module
//! of it (run one with `cargo test --test it serve::`). Cargo runs the tests of a binary in parallel, so anything
//! process-wide is set up once ([`PLANT_SECRETS`]) and tests that need the machine to themselves share a lock in
//! `support` ([`support::POOL_SERIAL`]).

mod support;

mod abuse;
mod agent;
mod cli;
mod e2e;
mod finish;
mod fork;
mod github_app;
mod jira;
mod merge_preflight;
mod mirror;
mod model;
mod panel;
mod policy;
mod policy_serve;
mod pr_state;
mod provider_shapes;
mod queue;
mod readme;
mod repo_forge;
mod review;
mod sandbox;
mod serve;
mod verify;
mod webhooks;

/// Puts [`support::sandbox::SECRETS`] into the environment before `main`, while the process has one thread:
/// `set_var` from a test would race with the others reading the environment (libc's `getenv` takes no lock).
#[used]
#[cfg_attr(target_os = "linux", link_section = ".init_array")]
static PLANT_SECRETS: extern "C" fn() = plant_secrets;

extern "C" fn plant_secrets() {
    for (k, v) in support::sandbox::SECRETS {
        std::env::set_var(k, v);
    }
}

//! drafter: a self-hosted, sandboxed coding-agent runner for Jira tickets.
//!
//! A ticket assigned to the bot becomes a job; the job clones only allowlisted repositories, runs a model tool-use
//! loop inside a locked-down Docker container, records every model call as a signed receipt, and opens a **draft**
//! pull request through a service account that cannot merge.
//!
//! # Layout
//! Data flows one way: intake -> worker -> (repo, sandbox, agent, forge, jira) -> proof.
//! - [`config`]: the TOML file, environment overrides, secrets by reference.
//! - [`jira`]: Jira Cloud REST v3: tickets in (ADF to Markdown), comments out (ADF).
//! - [`repo`]: git through libgit2: clone, branch, commit, push, with the token only in the credential callback.
//! - [`sandbox`]: one hardened Docker container per job, workspace in and out as tar streams; tool calls through
//!   `drafter-sandboxd` inside it (or `docker exec`); a warm pool.
//! - [`sandboxd`]: the container side: the executor daemon, its wire protocol, the egress proxy.
//! - [`bench`]: `drafter bench`, the sandbox against the Docker CLI.
//! - [`model`]: provider encodings (Anthropic, OpenAI-compatible) behind one receipt-emitting client.
//! - [`proof`]: the runner key, the receipt chain and its verification.
//! - [`agent`]: the tool-use loop and its tools; talks to the sandbox, never to Docker.
//! - [`forge`]: GitHub: the can't-merge check and the draft pull request.
//! - [`intake`]: Jira webhook payloads and JQL poll hits -> queue jobs (who triggered, dedup keys), and the poll loop.
//! - [`queue`]: the durable job queue (SQLite embedded, PostgreSQL for many hosts): dedup, leases, retries.
//! - [`server`]: HTTP: Jira webhooks in, health and readiness out.
//! - [`worker`]: one job's lifecycle, emitting typed events that the CLI and the ticket listen to.
#![deny(missing_docs)]

pub mod agent;
pub mod bench;
pub mod config;
pub mod forge;
pub mod intake;
pub mod jira;
pub mod model;
pub mod policy;
pub mod proof;
pub mod queue;
pub mod repo;
pub mod sandbox;
pub mod sandboxd;
pub mod server;
pub mod worker;
